"""A real API process: ``uvicorn local.app:app`` in a subprocess, for tests that need a second
process sharing Redis or a process whose memory they can measure."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from local.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


class ApiProcess(NamedTuple):
    base_url: str
    pid: int


@contextmanager
def api_process(env: dict[str, str], *, timeout: float = 30) -> Iterator[ApiProcess]:
    """Started with ``env`` as every deployment starts it (uvicorn's proxy headers off), once
    ``/health/live`` answers; terminated (killed if it lingers) afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "local.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--no-proxy-headers"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API process did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield ApiProcess(base, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
