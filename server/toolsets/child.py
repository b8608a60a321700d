"""A guard that a downstream server's command is started through, so that it dies with the bridge.

On Linux the hub runs ``python -I -S child.py <bridge pid> <LC_CTYPE> <command> <args...>``. The
guard asks the kernel to SIGKILL it when the bridge dies (``prctl(PR_SET_PDEATHSIG)``, kept across
``exec``), however the bridge dies, even by SIGKILL, and even when the command ignores SIGTERM; it
puts itself in its own session and process group, unless the spawner already did; then it
``exec``s the command, which keeps the guard's pid, working directory and environment.

``<LC_CTYPE>`` is ``=value`` or ``unset``: the environment's ``LC_CTYPE`` as the hub meant it, since
Python's own start-up (PEP 538) may have set it in the guard. ``<bridge pid>`` closes the race of a
bridge that died before the ``prctl``.

The death signal comes when the *thread* that spawned the guard ends: the hub spawns from its
event loop's thread, which lives as long as the hub.

Where ``prctl`` does not exist (not Linux) the command is run directly: ``guarded`` returns it
unchanged. This module uses only the standard library, and runs in isolated mode (``-I``) from
any working directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

#: From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
_UNSET = "unset"


def supported() -> bool:
    """Whether commands are started through the guard here: Linux, from a real interpreter."""
    return sys.platform.startswith("linux") and bool(sys.executable) and os.path.isfile(__file__)


def guarded(command: str, args: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    """The command and arguments that run ``command args`` through the guard (unchanged where unsupported)."""
    if not supported():
        return command, list(args)
    lc_ctype = f"={env['LC_CTYPE']}" if "LC_CTYPE" in env else _UNSET
    return sys.executable, ["-I", "-S", os.path.abspath(__file__), str(os.getpid()), lc_ctype, command, *args]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: child.py <parent pid> <=LC_CTYPE|unset> <command> [args...]\n")
        return 2
    parent, lc_ctype, command = int(argv[0]), argv[1], argv[2]
    try:
        _die_with_parent()
    except (OSError, AttributeError) as exc:  # no prctl: the command still runs, without the guarantee
        sys.stderr.write(f"key4u-mcp: cannot tie {command!r} to the bridge's lifetime: {exc}\n")
    if os.getppid() != parent:
        return 1  # the bridge is already gone
    with contextlib.suppress(OSError):  # already a session (and group) leader: the spawner made it one
        os.setsid()
    if lc_ctype == _UNSET:
        os.environ.pop("LC_CTYPE", None)
    else:
        os.environ["LC_CTYPE"] = lc_ctype.removeprefix("=")
    try:
        os.execvp(command, [command, *argv[3:]])
    except OSError as exc:
        sys.stderr.write(f"key4u-mcp: cannot run {command!r}: {exc}\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
