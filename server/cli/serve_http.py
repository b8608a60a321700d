"""``key4u-mcp --transport http``: the server as a Streamable HTTP service (uvicorn, at ``/mcp``).

With ``--workers N`` (POSIX), this process binds the port once and forks N workers that serve it
together (each accepts from the one listening socket, as gunicorn's and uvicorn's workers do): a
process runs on one core, and N use N. Each worker is a whole server with its own conversations
store connection; their SQLite file (or PostgreSQL database) is shared, and a conversation claimed
by one is continued by whichever worker a follow-up reaches. The parent only supervises: it passes
SIGTERM and SIGINT on, starts a worker again in place of one that dies (after a pause that doubles,
up to ``MAX_RESTART_PAUSE``, while workers keep dying soon after they start), and exits once they have
all stopped. The key stays in memory: nothing is added to a worker's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import anyio

from server import startup
from server.cli.serve import servers_file_ok
from server.config import Settings
from server.errors import ConfigError
from server.transports.http import LIFESPAN_FAILED_EXIT, serve_http

logger = logging.getLogger(__name__)

#: A worker that dies sooner than this after it started counts towards the restart pause.
QUICK_DEATH = 10.0
#: The longest pause before a worker is started again in place of one that keeps dying.
MAX_RESTART_PAUSE = 30.0


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not servers_file_ok(settings):
        return 2
    workers: int = getattr(args, "workers", 1)
    if workers > 1:
        if not args.stateless:
            print(
                "key4u-mcp: --workers needs --stateless: an MCP session lives in the worker that opened it, "
                "and the next request may reach another",
                file=sys.stderr,
            )
            return 2
        if not hasattr(os, "fork"):
            print("key4u-mcp: --workers needs a POSIX system (fork); run one process per port instead", file=sys.stderr)
            return 2
        return _supervise(settings, args, workers)
    return _serve(settings, args)


def _serve(settings: Settings, args: argparse.Namespace, sock: socket.socket | None = None) -> int:
    try:
        anyio.run(
            lambda: serve_http(
                settings, args.host, args.port, stateless=args.stateless, json_response=args.json_response, sock=sock
            )
        )
    except ConfigError as exc:
        print(f"key4u-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _supervise(settings: Settings, args: argparse.Namespace, count: int) -> int:
    """Bind, fork ``count`` workers on the socket, and wait for them; the exit status of the service."""
    try:
        sock = socket.create_server((args.host, args.port), backlog=2048)
    except OSError as exc:
        print(f"key4u-mcp: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    logger.info("%d workers serving http://%s:%d/mcp", count, args.host, sock.getsockname()[1])
    startup.settle()  # before the forks: each worker starts from the frozen imports, collecting
    workers: dict[int, float] = {}  # pid: when it started
    stopping: list[int] = []  # the signal that stops the service, once one came
    quick_deaths = 0

    def worker() -> int:
        pid = os.fork()
        if pid == 0:  # the worker: serve until told to stop, then leave without the parent's cleanup
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _die_with_parent()
                code = _serve(settings, args, sock)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                logger.exception("worker %d crashed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = time.monotonic()
        return pid

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for _ in range(count):
            worker()
        while workers:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            started = workers.pop(pid, time.monotonic())
            code = os.waitstatus_to_exitcode(raw)
            if stopping:
                continue
            if code == LIFESPAN_FAILED_EXIT:  # it could not start: another would fail alike
                logger.error("worker %d could not start (exit %d); stopping the others", pid, code)
                status = code
                stop(signal.SIGTERM, None)
                continue
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH else 0
            pause = min(MAX_RESTART_PAUSE, 2.0 ** (quick_deaths - 1)) if quick_deaths else 0.0
            logger.warning(
                "worker %d exited (status %d); starting another in its place%s",
                pid,
                code,
                f" in {pause:g} s" if pause else "",
            )
            deadline = time.monotonic() + pause
            while not stopping and time.monotonic() < deadline:  # a signal ends the pause at once
                time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
            if not stopping:
                worker()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    return status


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM if the supervisor dies without stopping it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        logger.debug("PR_SET_PDEATHSIG unavailable", exc_info=True)
