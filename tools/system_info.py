"""system_info: operating system, Python runtime, CPU, memory, load and uptime.

Only facts about the machine's kind and state are reported: never host or user
names, paths, environment variables or anything else that could be secret.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

NAME = "system_info"
DESCRIPTION = "This machine's OS, Python runtime, CPU count, memory, load average and uptime."


class Memory(BaseModel):
    """Physical memory."""

    total_bytes: int
    available_bytes: int
    used_percent: float = Field(description="0 to 100")


class SystemInfo(BaseModel):
    """A snapshot of the machine this server runs on."""

    os: str = Field(description="Linux, Darwin, Windows, ...")
    os_release: str
    architecture: str
    python_version: str
    python_implementation: str
    cpu_count: int | None = Field(description="logical")
    cpu_physical_count: int | None
    memory: Memory
    load_average: list[float] | None = Field(description="1, 5, 15 min")
    uptime_seconds: int | None

    def summary(self) -> str:
        gib = 1024**3
        lines = [
            f"OS: {self.os} {self.os_release} ({self.architecture})",
            f"Python: {self.python_implementation} {self.python_version}",
            f"CPUs: {self.cpu_count} logical, {self.cpu_physical_count or 'unknown'} physical",
            f"Memory: {self.memory.available_bytes / gib:.1f} GiB available of {self.memory.total_bytes / gib:.1f} GiB "
            f"({self.memory.used_percent:.1f}% used)",
        ]
        if self.load_average is not None:
            lines.append("Load average: " + ", ".join(f"{x:.2f}" for x in self.load_average))
        if self.uptime_seconds is not None:
            days, rest = divmod(self.uptime_seconds, 86400)
            lines.append(f"Uptime: {days}d {rest // 3600}h {rest % 3600 // 60}m")
        return "\n".join(lines)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _uptime(boot_time: Callable[[], float]) -> int | None:
    try:
        return max(0, int(time.time() - boot_time()))
    except (OSError, RuntimeError):
        return None


def system_info() -> SystemInfo:
    """Return a snapshot of the operating system, runtime, CPU and memory."""
    # The one import inside a function in tools/: psutil costs ~18 ms, and serving needs it only here.
    import psutil

    vm = psutil.virtual_memory()
    return SystemInfo(
        os=platform.system() or "unknown",
        os_release=platform.release() or "unknown",
        architecture=platform.machine() or "unknown",
        python_version=platform.python_version(),
        python_implementation=platform.python_implementation(),
        cpu_count=psutil.cpu_count(logical=True),
        cpu_physical_count=psutil.cpu_count(logical=False),
        memory=Memory(total_bytes=vm.total, available_bytes=vm.available, used_percent=round(vm.percent, 1)),
        load_average=_load_average(),
        uptime_seconds=_uptime(psutil.boot_time),
    )
