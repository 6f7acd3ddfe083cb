"""The whole system on one machine with one command: ``python3 dev.py up``.

PostgreSQL and Redis come from DATABASE_URL / REDIS_URL when set (environment or ``.env``),
otherwise real embedded servers start with their data in ``.local-data/`` (kept between
restarts). Then migrations run, the Celery worker starts with its beat schedule (the
outbox relay), and uvicorn serves every function's routes on one port, either directly
(fast path) or through the Lambda handlers (``--emulate-lambda`` / LAMBDA_EMULATION=1).

Every child runs in its own process group (local/processes.py), so Ctrl-C in the terminal
reaches this process only and it stops the children in order: API, worker, Redis,
PostgreSQL. A lock file held with ``flock`` (released by the kernel, never stale) keeps two
stacks off one data folder; a pid file lets the next start stop anything a hard-killed
stack left.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from local.embedded import DEFAULT_DATA_DIR, REPO_ROOT, Server, free_port
from local.processes import Child, PidFile, port_in_use, spawn, wait_http_ok

# Stable preferred ports so the printed URLs stay the same from one start to the next.
PREFERRED_PG_PORT = 54329
PREFERRED_REDIS_PORT = 56379
DATABASE_NAME = "ticketing"
WORKER_APP = "functions.notify.worker"
WORKER_READY_MARK = " ready."  # Celery prints "celery@host ready." once consuming
# Written while the stack runs: the URLs of its services, for local.invoke.
STACK_ENV_FILE = "stack.env"
# The dev stack's JWT signing secret: random, generated once per data folder, so tokens
# survive restarts and no string written anywhere signs one.
JWT_SECRET_FILE = "jwt-secret"

_console = threading.Lock()
_TTY = sys.stdout.isatty()


class StackError(RuntimeError):
    """Start-up failed in a way the user can act on; the message says how."""


class Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM/SIGHUP."""


def say(text: str = "") -> None:
    with _console:
        if _TTY:
            sys.stdout.write("\r\x1b[K")
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


@contextlib.contextmanager
def progress(label: str) -> Iterator[None]:
    """Show what is starting (a spinner with elapsed time on a terminal) and how long it took."""
    started = time.monotonic()
    done = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            if done.wait(0.1):
                return
            with _console:
                sys.stdout.write(f"\r\x1b[K{frame} {label} ({time.monotonic() - started:.1f}s)")
                sys.stdout.flush()

    if _TTY:
        threading.Thread(target=spin, daemon=True).start()
    else:
        say(f"… {label}")
    try:
        yield
    except BaseException:
        done.set()
        say(f"✗ {label} failed after {time.monotonic() - started:.1f}s")
        raise
    done.set()
    say(f"✓ {label} ({time.monotonic() - started:.1f}s)")


def readable(line: str) -> str:
    """A JSON log line as ``time LEVEL message`` for the console; the log file keeps the JSON."""
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
        stamp = str(entry["ts"])[11:19]
        return f"{stamp} {entry['level']:<7} {entry['message']}"
    except (ValueError, KeyError, TypeError):
        return line


def _echo(name: str) -> Callable[[str], None]:
    """Print a child's lines on the console, prefixed with its name."""
    prefix = f"[{name}]".ljust(9)
    return lambda line: say(f"{prefix} {readable(line)}")


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One stack per data folder; flock dies with the process, so it never goes stale."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(data_dir / "stack.lock", "w")  # noqa: SIM115 - held for the run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(
                f"another local stack is running with data in {data_dir}; stop it first, "
                "or pass --data-dir to run a second one"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


# --- configuration ----------------------------------------------------------------------


def configured_urls() -> tuple[str | None, str | None]:
    """DATABASE_URL and REDIS_URL from the environment, else from the project's ``.env``."""
    values: dict[str, str | None] = {}
    dotenv = REPO_ROOT / ".env"
    if dotenv.exists():
        try:
            from dotenv import dotenv_values

            values = dict(dotenv_values(dotenv))
        except ImportError:
            pass
    return (
        os.environ.get("DATABASE_URL") or values.get("DATABASE_URL"),
        os.environ.get("REDIS_URL") or values.get("REDIS_URL"),
    )


def ensure_jwt_secret(data_dir: Path) -> Path:
    """The data folder's signing secret file (mode 0600), created on first use."""
    from shared.platform.secret_file import ensure_secret

    path = data_dir / JWT_SECRET_FILE
    ensure_secret(path)
    return path


def _on_free_port(preferred: int, start: Callable[[int], Server]) -> Server:
    """Start a server on ``preferred`` if free; if another process grabs that port between
    the check and the bind (two stacks starting at once), retry once on a random port."""
    port = free_port(preferred)
    try:
        return start(port)
    except RuntimeError:
        if port != preferred or not port_in_use("127.0.0.1", port):
            raise
        return start(free_port())


def ensure_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the embedded server if missing; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# --- the stack --------------------------------------------------------------------------


@dataclass
class Options:
    host: str
    port: int
    data_dir: Path
    emulate_lambda: bool
    worker: bool
    startup_timeout: float


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python3 dev.py up",
        description="Start PostgreSQL, Redis, migrations, the worker (with the outbox relay) "
        "and the API on one machine. Ctrl-C stops everything.",
    )
    parser.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"),
                        help="interface the API listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")),
                        help="API port (default 8000)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="embedded servers' data, logs and lock (default .local-data/)")
    parser.add_argument("--emulate-lambda", action="store_true",
                        default=os.environ.get("LAMBDA_EMULATION", "") not in ("", "0", "false"),
                        help="send every request through the functions' Mangum handlers as "
                        "API Gateway v2 events (also LAMBDA_EMULATION=1)")
    parser.add_argument("--no-worker", dest="worker", action="store_false",
                        help="do not start the Celery worker")
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    return Options(args.host, args.port, args.data_dir.resolve(), args.emulate_lambda,
                   args.worker, args.startup_timeout)


class Stack:
    """Starts the pieces in order and stops them in reverse, whatever happens in between."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.servers: list[Server] = []
        self.children: list[Child] = []
        self.logs = opts.data_dir / "logs"
        self.pids = PidFile(opts.data_dir / "stack.pids")
        self.env_file = opts.data_dir / STACK_ENV_FILE

    def start(self) -> None:
        opts = self.opts
        self.logs.mkdir(parents=True, exist_ok=True)
        left = self.pids.reap_leftovers()
        if left:
            say(f"! stopped processes left by a previous run: {', '.join(left)}")
        if port_in_use(opts.host, opts.port):
            raise StackError(f"port {opts.port} is already in use; pass --port to pick another")

        database_url, redis_url = configured_urls()
        self.database_source = "configured" if database_url else "embedded"
        self.redis_source = "configured" if redis_url else "embedded"
        if not database_url:
            from local.embedded import start_postgres

            with progress("PostgreSQL (embedded) starting"):
                pg = _on_free_port(PREFERRED_PG_PORT, lambda port: start_postgres(
                    opts.data_dir / "postgres", port, durable=True,
                    timeout=opts.startup_timeout))
                self.servers.append(pg)
                self.pids.add("postgres", pg.process.pid)
                database_url = ensure_database(pg.url, DATABASE_NAME)
        if not redis_url:
            from local.embedded import start_redis

            with progress("Redis (embedded) starting"):
                rd = _on_free_port(PREFERRED_REDIS_PORT, lambda port: start_redis(
                    opts.data_dir / "redis", port, durable=True, timeout=opts.startup_timeout))
                self.servers.append(rd)
                self.pids.add("redis", rd.process.pid)
                redis_url = rd.url
        self.database_url, self.redis_url = database_url, redis_url
        # A development stack, said explicitly (an unset APP_ENV means production), signing
        # with the data folder's own random secret unless one is configured.
        auth_env = {"APP_ENV": os.environ.get("APP_ENV") or "development"}
        if not (os.environ.get("JWT_SECRET") or os.environ.get("JWT_SECRET_FILE")):
            auth_env["JWT_SECRET_FILE"] = str(ensure_jwt_secret(opts.data_dir))
        # Lets `python3 dev.py invoke` reach this stack's services with no configuration.
        self.env_file.write_text("".join(
            f"{name}={value}\n"
            for name, value in {"DATABASE_URL": database_url, "REDIS_URL": redis_url, **auth_env}.items()
        ))

        from shared.platform.migrate import migrate

        with progress("migrations"):
            applied = migrate(database_url)
        say(f"  {len(applied)} migration(s) applied" if applied else "  schema is current")

        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
               "PYTHONUNBUFFERED": "1", **auth_env}
        if env["APP_ENV"] == "development":
            # The README's seed flow registers with password "123" and is mailed before its
            # customer verifies: development conveniences, switched on here explicitly.
            env.setdefault("PASSWORD_MIN_LENGTH", "3")
            env.setdefault("PASSWORD_CHECK_COMMON", "false")
            env.setdefault("REQUIRE_VERIFIED_EMAIL", "false")
        worker = None
        if opts.worker:
            worker = self._spawn("worker", [
                sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "--beat",
                "--loglevel=INFO", f"--schedule={opts.data_dir / 'celerybeat-schedule'}",
            ], env)
        app = "local.emulate:app" if opts.emulate_lambda else "local.app:app"
        api = self._spawn("api", [
            sys.executable, "-m", "uvicorn", app, "--host", opts.host, "--port", str(opts.port),
            "--lifespan", "off", "--timeout-graceful-shutdown", "10",
            "--no-proxy-headers",  # TRUSTED_PROXIES alone names the client (shared/web/client_ip.py)
        ], env)
        if worker is not None:
            with progress("Celery worker + relay schedule starting"):
                worker.wait_for_line(WORKER_READY_MARK, opts.startup_timeout)
        with progress("API starting"):
            wait_http_ok(f"http://{self._client_host()}:{opts.port}/health/ready", api,
                         opts.startup_timeout)

    def _client_host(self) -> str:
        return "127.0.0.1" if self.opts.host in ("0.0.0.0", "::", "") else self.opts.host

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        child = spawn(name, cmd, env, self.logs / f"{name}.log", on_line=_echo(name))
        self.children.append(child)
        self.pids.add(name, child.process.pid)
        return child

    def banner(self) -> str:
        opts = self.opts
        base = f"http://{self._client_host()}:{opts.port}"
        mode = ("Lambda emulation: API Gateway v2 events -> Mangum handlers" if opts.emulate_lambda
                else "fast path: routers called directly (--emulate-lambda for Lambda events)")
        logs = [str(c.log_path) for c in self.children] + [str(s.log_path) for s in self.servers]
        rows = [
            ("API", base),
            ("Docs", f"{base}/docs"),
            ("Health", f"{base}/health/ready"),
            ("Mode", mode),
            ("PostgreSQL", f"{self.database_url} ({self.database_source})"),
            ("Redis", f"{self.redis_url} ({self.redis_source})"),
            ("Worker", "celery worker --beat (outbox relay on its schedule)"
             if opts.worker else "not started (--no-worker)"),
            ("Data", str(opts.data_dir)),
            ("Logs", "\n             ".join(logs)),
        ]
        lines = ["", "Ticketing stack is up:"]
        lines += [f"  {name:<10} {value}" for name, value in rows]
        lines += ["Press Ctrl-C to stop everything.", ""]
        return "\n".join(lines)

    def watch(self) -> int:
        """Block until a signal (exit 0) or until a child dies on its own (exit 1)."""
        while True:
            for child in self.children:
                if child.process.poll() is not None:
                    say(f"✗ {child.name} exited with {child.process.returncode}; "
                        f"see {child.log_path}")
                    return 1
            for server in self.servers:
                if server.process.poll() is not None:
                    say(f"✗ {server.name} exited; see {server.log_path}")
                    return 1
            time.sleep(0.3)

    def stop(self) -> None:
        for child in reversed(self.children):
            with progress(f"stopping {child.name}"):
                child.stop()
        for server in reversed(self.servers):
            with progress(f"stopping {server.name}"):
                server.stop()
        self.pids.clear()
        self.env_file.unlink(missing_ok=True)


def _raise_stop(signum: int, _frame: Any) -> None:
    raise Stop(signal.Signals(signum).name)


def _stopping_already(_signum: int, _frame: Any) -> None:
    say("  (stopping; children get SIGKILL if they do not exit in time)")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    stack = Stack(opts)
    code = 0
    try:
        with data_dir_lock(opts.data_dir):
            try:
                stack.start()
                say(stack.banner())
                code = stack.watch()
            except Stop as received:
                say(f"\nReceived {received}, stopping…")
            except (StackError, RuntimeError, OSError) as exc:
                say(f"error: {exc}")
                code = 1
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, _stopping_already)
                stack.stop()
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    say("Stopped cleanly." if code == 0 else "Stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
