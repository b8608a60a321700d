"""A real PostgreSQL server for the tests, started by the suite itself: ``initdb`` and ``pg_ctl`` in a
temporary directory, on a free loopback port, with password authentication over TCP.

PostgreSQL refuses to run as root; under root the server runs as the ``postgres`` user (which the
Debian package creates). Where no server is installed the tests that need one are skipped, saying how
to install it (``.ci/run`` installs it).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

USER = "key4u"
PASSWORD = "pg-test-" + secrets.token_hex(8)


def binaries() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when PostgreSQL's server is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One running server: its data directory, port and superuser; ``url(db)`` for a database on it."""

    root: Path
    bin: Path
    port: int
    user: str | None  # the OS user the server runs as (None: this one)
    #: PostgreSQL's own durability (fsync, synchronous commits); off for the tests, which need speed only.
    durable: bool = False

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user,
            cwd=self.root,
            check=False,
        )

    def start(self) -> None:
        log = self.root / "server.log"
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            + ("" if self.durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"),
            "start",
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{log.read_text() if log.exists() else ''}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database ``name``; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # a name the tests make
        return self.url(name)


def start_server(root: Path, *, durable: bool = False) -> PostgresServer:
    """initdb and start a server in ``root`` (which it may chown to the ``postgres`` user)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL's server is not installed (apt-get install postgresql)")
    user = "postgres" if os.geteuid() == 0 else None
    root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(root, user)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD)
    if user is not None:
        shutil.chown(pwfile, user)
    server = PostgresServer(root, bin_dir, _free_port(), user, durable)
    done = server._run(
        "initdb",
        "-D",
        str(root / "data"),
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "-E",
        "UTF8",
        "--no-instructions",
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr}")
    server.start()
    return server
