"""The database's own limit: pgbench running the project's exact booking statement.

The script is generated at run time from ``shared.ticketing.bookings.BOOK_SQL``: each psycopg
``%(name)s`` parameter becomes a pgbench ``:name`` variable set by ``\\set`` lines (or,
for values pgbench expressions cannot make such as the application's time, by ``-D``),
so whatever the booking statement becomes, pgbench measures that statement and not a copy.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.environment import Environment
from local.embedded import _pg_bin

_NAMED = re.compile(r"%\((\w+)\)s")


class ScriptError(ValueError):
    """BOOK_SQL has a parameter pgbench cannot be given a value for."""


def book_sql() -> str:
    from shared.ticketing.bookings import BOOK_SQL  # imported at run time: always the current statement

    return BOOK_SQL


def translate(sql: str, variables: dict[str, str], defines: dict[str, str] | None = None) -> str:
    """A pgbench script: ``\\set`` lines for ``variables``, then ``sql`` with ``:name`` parameters.

    ``variables`` maps each parameter to a pgbench expression (``1``, ``random(1, 1000)``);
    ``defines`` names parameters given as constant text to :func:`run` (``-D``).
    """
    names = [n for n in dict.fromkeys(_NAMED.findall(sql)) if n not in (defines or {})]
    missing = [n for n in names if n not in variables]
    if missing:
        raise ScriptError(f"BOOK_SQL parameters without a pgbench value: {', '.join(missing)}")
    body = _NAMED.sub(lambda m: f":{m.group(1)}", sql)
    if re.search(r"%[sbt]", body.replace("%%", "")):
        raise ScriptError("BOOK_SQL uses positional parameters; the translation needs %(name)s ones")
    body = body.replace("%%", "%").strip().rstrip(";")
    sets = [f"\\set {name} {variables[name]}" for name in names]
    return "\n".join([*sets, body + ";", ""])


@dataclass
class PgbenchRun:
    clients: int
    duration_s: float
    tps: float
    latency_avg_ms: float | None
    transactions: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def run(
    env: Environment, script: str, *, clients: int, duration: float, workdir: Path, label: str,
    defines: dict[str, str] | None = None,
) -> PgbenchRun:
    """One pgbench run of ``script``; ``-M prepared`` like psycopg after its prepare threshold."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"pgbench_{label}.sql"
    path.write_text(script)
    info = env.pg_conninfo
    threads = max(1, min(clients, os.cpu_count() or 1))
    cmd = [
        _pg_bin("pgbench"), "-n", "-M", "prepared", "-f", str(path),
        "-c", str(clients), "-j", str(threads), "-T", str(max(1, round(duration))),
        *[f"-D{name}={value}" for name, value in (defines or {}).items()],
        "-h", info["host"], "-p", info["port"], "-U", info["user"], info["dbname"],
    ]
    pg_env = {**os.environ, "PGPASSWORD": info["password"]} if info["password"] else None
    result = subprocess.run(cmd, capture_output=True, text=True, env=pg_env, timeout=duration + 120)
    out = result.stdout + result.stderr
    if result.returncode != 0 and "tps" not in out:
        raise RuntimeError(f"pgbench failed ({result.returncode}):\n{out[-2000:]}")
    tps = _number(r"tps = ([\d.]+) \(without initial connection time\)", out) or _number(r"tps = ([\d.]+)", out)
    if tps is None:
        raise RuntimeError(f"could not read pgbench output:\n{out[-2000:]}")
    return PgbenchRun(
        clients=clients,
        duration_s=float(max(1, round(duration))),
        tps=round(tps, 1),
        latency_avg_ms=_number(r"latency average = ([\d.]+) ms", out),
        transactions=int(_number(r"number of transactions actually processed: (\d+)", out) or 0),
        failed=int(_number(r"number of failed transactions: (\d+)", out) or 0),
    )
