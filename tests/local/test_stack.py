"""``python3 dev.py up`` end to end: the real command in a subprocess, the seed's flow over
HTTP, the worker's lines in its output, then Ctrl-C and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from local.embedded import free_port
from local.processes import PidFile
from tests.support.databases import scratch_database, with_database

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIRMATION_LINE = "📧 Booking confirmation sent to user"
UPDATE_LINE = "🔔 Notified 1 users about event update"


class StackProcess:
    """``python -m local.stack`` as a child, its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "local.stack", "--port", str(self.port), *args],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"{text!r} not in the stack's output:\n{self.output}")
                self._changed.wait(min(remaining, 0.5))

    def wait_ready(self, timeout: float = 90) -> None:
        self.wait_for_output("Ticketing stack is up", timeout)
        r = httpx.get(f"{self.base_url}/health/ready", timeout=5)
        assert r.status_code == 200, r.text

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _gone(processes: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    """The processes still alive after ``timeout`` (zombies count as gone)."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def stack_env(server_urls: dict[str, str]) -> Iterator[dict[str, str]]:
    """The session's servers, with a database and a Redis db of the stack's own."""
    with scratch_database(server_urls["database"], "ticketing_stack") as database_url:
        yield _stack_env(database_url, server_urls["redis"])


def _stack_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a user starting the stack, pointed at these servers."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": with_database(redis_url, "7"),
        "RELAY_INTERVAL": "1",
        "NOTIFY_CHANNEL": "console",
        "PYTHONUNBUFFERED": "1",
    }
    # As a user starts it: no mode, secret or relaxed policy of the suite's; the stack itself
    # must be development and allow the README's password "123".
    for var in ("APP_ENV", "JWT_SECRET", "JWT_SECRET_FILE", "PASSWORD_MIN_LENGTH", "PASSWORD_CHECK_COMMON",
                "REQUIRE_VERIFIED_EMAIL"):
        env.pop(var, None)
    return env


def _token(http: httpx.Client, email: str, password: str) -> str:
    r = http.post("/auth/token", data={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def seed_flow(base_url: str) -> dict[str, Any]:
    """The seed README's flow: users, tokens, event, booking, update."""
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=base_url, timeout=30) as http:
        org = http.post("/users", json={"email": f"org-{tag}@test.com", "password": "123",
                                        "role": "organizer"})
        assert org.status_code == 201, org.text
        cust = http.post("/users", json={"email": f"cust-{tag}@test.com", "password": "123",
                                         "role": "customer"})
        assert cust.status_code == 201, cust.text
        org_token = _token(http, f"org-{tag}@test.com", "123")
        cust_token = _token(http, f"cust-{tag}@test.com", "123")
        event = http.post(f"/events/{org.json()['id']}",
                          json={"title": "Music Concert", "total_tickets": 50},
                          headers={"authorization": f"Bearer {org_token}"})
        assert event.status_code == 201, event.text
        booking = http.post(f"/book/{cust.json()['id']}", json={"event_id": event.json()["id"]},
                            headers={"authorization": f"Bearer {cust_token}"})
        assert booking.status_code == 201, booking.text
        update = http.put(f"/events/{event.json()['id']}", json={"title": "Music Concert (moved)"},
                          headers={"authorization": f"Bearer {org_token}"})
        assert update.status_code == 200, update.text
        return {"customer": cust.json(), "event": update.json(), "booking": booking.json()}


def test_stack_runs_the_seed_flow_with_worker_output_and_stops_clean(
        stack_env: dict[str, str], tmp_path: Path) -> None:
    stack = StackProcess("--data-dir", str(tmp_path / "data"), env=stack_env)
    try:
        stack.wait_ready()
        out = stack.output
        assert f"http://127.0.0.1:{stack.port}/docs" in out
        assert "(configured)" in out and "worker.log" in out
        assert httpx.get(f"{stack.base_url}/docs", timeout=5).status_code == 200
        children = stack.descendants()
        assert len(children) >= 3, children  # uvicorn, celery and its pool

        result = seed_flow(stack.base_url)

        stack.wait_for_output(f"{CONFIRMATION_LINE} {result['customer']['email']}", 30)
        stack.wait_for_output(UPDATE_LINE, 30)
        assert "[worker]" in stack.output

        assert stack.interrupt() == 0, stack.output
        assert "Stopped cleanly." in stack.output
        assert _gone(children) == []
        assert not (tmp_path / "data" / "stack.pids").exists()
    finally:
        stack.kill()


def test_embedded_servers_keep_data_across_restarts_and_leave_nothing_behind(
        tmp_path: Path) -> None:
    """No URLs: real embedded servers in --data-dir. A clean stop, a hard kill, a restart."""
    # Nothing configured at all, as a new user runs it: no URLs, no APP_ENV, no JWT_SECRET.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "TEST_DATABASE_URL", "TEST_REDIS_URL",
                        "APP_ENV", "JWT_SECRET", "JWT_SECRET_FILE")}
    data = tmp_path / "data"
    email = f"keep-{uuid.uuid4().hex[:8]}@test.com"

    try:
        _three_runs(data, env, email)
    finally:  # whatever failed, no server outlives the test
        PidFile(data / "stack.pids").reap_leftovers()


def _three_runs(data: Path, env: dict[str, str], email: str) -> None:
    first_token = ""
    first = StackProcess("--data-dir", str(data), "--no-worker", env=env)
    try:
        first.wait_ready()
        assert "(embedded)" in first.output
        r = httpx.post(f"{first.base_url}/users", timeout=10,
                       json={"email": email, "password": "123", "role": "customer"})
        assert r.status_code == 201, r.text
        with httpx.Client(base_url=first.base_url, timeout=10) as http:
            first_token = _token(http, email, "123")
        # The signing secret: random, generated once for this data folder, private.
        secret_file = data / "jwt-secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert len(secret_file.read_text().strip()) >= 48
        children = first.descendants()
        assert first.interrupt() == 0, first.output
        assert _gone(children) == []
        assert not (data / "postgres" / "pgdata" / "postmaster.pid").exists()
    finally:
        first.kill()

    # A stack killed outright cannot stop its children; its API dies with it (parent-death
    # signal) and the next start stops the servers it left, then reuses their data.
    second = StackProcess("--data-dir", str(data), "--no-worker", env=env)
    try:
        second.wait_ready()
        api = [p for p in second.descendants() if "uvicorn" in " ".join(p.cmdline())]
        second.kill()
        assert api and _gone(api) == []
    finally:
        second.kill()

    third = StackProcess("--data-dir", str(data), "--no-worker", "--emulate-lambda", env=env)
    try:
        third.wait_ready()
        assert "stopped processes left by a previous run" in third.output
        assert "Lambda emulation" in third.output
        with httpx.Client(base_url=third.base_url, timeout=10) as http:
            assert _token(http, email, "123")  # the user from the first run is still there
            # The same secret after restarts: the first run's token still works.
            me = http.get("/users/me", headers={"authorization": f"Bearer {first_token}"})
            assert me.status_code == 200, me.text
            r = http.get("/no/such/route")
            assert r.json() == {"message": "Not Found"}  # API Gateway's answer: emulated
        children = third.descendants()
        assert third.interrupt() == 0, third.output
        assert _gone(children) == []
    finally:
        third.kill()


def test_second_stack_on_the_same_data_dir_is_refused(tmp_path: Path,
                                                      stack_env: dict[str, str]) -> None:
    import fcntl

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "stack.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stack = StackProcess("--data-dir", str(data), "--no-worker", env=stack_env)
        try:
            assert stack.proc.wait(60) == 1
            assert "another local stack is running" in stack.output
        finally:
            stack.kill()


def test_busy_api_port_is_reported_not_crashed(tmp_path: Path, stack_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "local.stack", "--port", str(port), "--no-worker",
             "--data-dir", str(tmp_path / "data")],
            cwd=REPO_ROOT, env=stack_env, capture_output=True, text=True, timeout=60, check=False,
        )
    assert proc.returncode == 1
    assert f"port {port} is already in use" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_port_taken_between_check_and_bind_falls_back_to_a_random_port() -> None:
    """Two stacks starting at once both see the preferred port free; one must move."""
    import socket

    from local.stack import _on_free_port

    preferred = free_port()
    calls: list[int] = []
    with socket.socket() as rival:
        def start(port: int) -> Any:
            calls.append(port)
            if len(calls) == 1:  # the rival binds first; our server fails to listen
                rival.bind(("127.0.0.1", port))
                rival.listen()
                raise RuntimeError("could not bind")
            return f"server on {port}"

        assert _on_free_port(preferred, start) == f"server on {calls[1]}"
    assert calls[0] == preferred and calls[1] != preferred
