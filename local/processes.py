"""Child processes supervised from Python: the local stack's and the benchmarks'.

Every child runs in its own process group (``start_new_session``), so a terminal's Ctrl-C
reaches the supervisor only and it stops the children in order; on Linux a child also
gets SIGTERM if the supervisor dies, even by SIGKILL. Stopping is one rule for all: a
graceful signal to the leader, then SIGKILL to whatever is left in its group. A pid file
lets the next start stop what a hard-killed supervisor left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.embedded import REPO_ROOT

STOP_TIMEOUT_S = 15.0


class ProcessError(RuntimeError):
    """A child exited or did not get ready; the message names its log file."""


_libc_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, even by SIGKILL (Linux)."""
    if _libc_prctl is not None:
        _libc_prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A child process whose output goes to a log file.

    A followed child's output is read here line by line (a thread copies it to the log
    and to ``on_line``), so :meth:`wait_for_line` can wait for a mark; an unfollowed one
    writes its log itself, which costs the supervisor nothing (benchmarks).
    """

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    on_line: Callable[[str], None] | None = None
    _seen: list[str] = field(default_factory=list, repr=False)
    _line: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def pump(self) -> None:
        assert self.process.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in iter(self.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                with self._line:
                    self._seen.append(line)
                    del self._seen[:-200]
                    self._line.notify_all()
                if self.on_line is not None:
                    self.on_line(line)
        with self._line:
            self._line.notify_all()

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise ProcessError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")

    def wait_for_line(self, mark: str, timeout: float) -> None:
        """Block until the (followed) child prints a line containing ``mark``."""
        deadline = time.monotonic() + timeout
        with self._line:
            while not any(mark in line for line in self._seen):
                self._check_running()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")
                self._line.wait(min(remaining, 0.5))

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, *,
        subject: str = "", why_not: Callable[[], str] | None = None,
    ) -> None:
        """Poll ``ready`` until it says yes; fail as soon as the child exits, or at ``timeout``.

        The failure names ``subject`` (default: the child) and what ``why_not`` says.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            if ready():
                return
            time.sleep(0.1)
        reason = why_not() if why_not is not None else ""
        raise ProcessError(f"{subject or self.name} not ready after {timeout:.0f}s"
                           f"{f' ({reason})' if reason else ''}; see {self.log_path}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Graceful signal to the leader, then SIGKILL to whatever is left in its group."""
        stop_process_group(self.process.pid, self.process, timeout)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) of the child and its descendants, if psutil can tell."""
        return tree_cpu_seconds(self.process.pid)


def spawn(
    name: str, cmd: list[str], env: dict[str, str], log_path: Path, *,
    follow: bool = True, on_line: Callable[[str], None] | None = None,
) -> Child:
    """Start ``cmd`` in its own process group, its output to ``log_path`` (appended)."""
    common: dict[str, Any] = {
        "cwd": REPO_ROOT,
        "env": env,
        "stdin": subprocess.DEVNULL,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,  # own process group: the terminal's Ctrl-C reaches us only
        "preexec_fn": _die_with_parent,  # only an async-signal-safe prctl call
    }
    if not follow:
        with open(log_path, "ab") as log:
            return Child(name, subprocess.Popen(cmd, stdout=log, **common), log_path)
    child = Child(name, subprocess.Popen(cmd, stdout=subprocess.PIPE, **common), log_path, on_line)
    threading.Thread(target=child.pump, name=f"pump-{name}", daemon=True).start()
    return child


def stop_process_group(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        if process is None and not _alive(pid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # leftovers, e.g. a pool child whose parent was killed
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_http_ok(url: str, child: Child, timeout: float) -> None:
    """Block until ``url`` answers 200, failing early if ``child`` (its server) exits."""
    last = "no answer"

    def ok() -> bool:
        nonlocal last
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        return False

    child.wait_until(ok, timeout, subject=url, why_not=lambda: last)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def tree_cpu_seconds(pid: int, *, children: bool = True) -> float | None:
    """CPU time (user + system) of a process and, unless told not to, its descendants."""
    try:
        import psutil

        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if children else [root]
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass  # exited between the listing and the reading
        return total
    except Exception:
        return None


# --- leftovers of a hard-killed supervisor ----------------------------------------------


class PidFile:
    """Processes a supervisor started, so the next start can stop what a crash left behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []

    def add(self, name: str, pid: int) -> None:
        self.entries.append({"name": name, "pid": pid, "started": _start_time(pid)})
        self.path.write_text(json.dumps(self.entries))

    def clear(self) -> None:
        self.entries = []
        self.path.unlink(missing_ok=True)

    def reap_leftovers(self) -> list[str]:
        """Stop processes recorded by a previous run that are still the same processes."""
        if not self.path.exists():
            return []
        try:
            entries = json.loads(self.path.read_text())
        except ValueError:
            entries = []
        stopped = []
        for entry in reversed(entries):
            pid = int(entry.get("pid", 0))
            if pid > 0 and entry.get("started") and _start_time(pid) == entry["started"]:
                stop_process_group(pid, None, STOP_TIMEOUT_S)
                stopped.append(f"{entry.get('name')} (pid {pid})")
        self.path.unlink(missing_ok=True)
        return stopped


def _start_time(pid: int) -> float | None:
    """A process's start time: a pid alone may have been reused by an unrelated process."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        try:  # /proc fallback without psutil: field 22 of stat is the start time in ticks
            return float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            return None
