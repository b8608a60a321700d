from __future__ import annotations

import getpass
import os
import platform
import socket

from tools.system_info import system_info


def test_reports_os_runtime_cpu_and_memory() -> None:
    info = system_info()
    assert info.os == platform.system()
    assert info.python_version == platform.python_version()
    assert info.cpu_count and info.cpu_count >= 1
    assert 0 < info.memory.available_bytes <= info.memory.total_bytes
    assert 0 <= info.memory.used_percent <= 100
    assert info.uptime_seconds is None or info.uptime_seconds >= 0
    if hasattr(os, "getloadavg"):
        assert info.load_average is not None and len(info.load_average) == 3


def test_reveals_no_host_user_path_or_environment() -> None:
    text = info_text = system_info().model_dump_json() + system_info().summary()
    assert socket.gethostname() not in text or socket.gethostname() in {"localhost", ""}
    assert getpass.getuser() not in info_text.replace("Linux", "")
    assert os.getcwd() not in text
    assert "PATH" not in text and os.path.expanduser("~") not in text
