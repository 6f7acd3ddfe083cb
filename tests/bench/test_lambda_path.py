"""The Lambda-path bench still runs and still checks: a seconds-long run, not a measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import lambda_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_report(server_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("lambda-path")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    cmd = [sys.executable, "-m", "bench.lambda_path", "--quick", "--database-url", server_urls["database"],
           "--redis-url", server_urls["redis"], "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| what | figure | ratio | p99 | notes |" in proc.stdout  # the table
    report: dict[str, Any] = json.loads(next(out.glob("lambda-path-*.json")).read_text())["lambda_path"]
    return report


def test_cpu_per_invocation_compares_201s_with_hello_world(quick_report: dict[str, Any]) -> None:
    cpu = quick_report["cpu"]
    assert cpu["all_201"] and cpu["booking"]["statuses"] == {"201": 180}  # warm-up and measured: limits refuse none
    assert cpu["hello"]["cpu_us"] > 0 and cpu["booking"]["cpu_us"] > 0 and cpu["ratio"] > 0
    assert cpu["met"] == (cpu["ratio"] <= lambda_path.GOAL_CPU_RATIO)


def test_environments_book_one_hot_event_with_nothing_oversold(quick_report: dict[str, Any]) -> None:
    assert quick_report["ok"] is True
    (scenario,) = quick_report["envs"]["scenarios"]
    assert scenario["envs"] == 4 and scenario["per_s"] > 0 and scenario["errors_5xx"] == 0
    assert set(scenario["statuses"]) == {"201"} and set(scenario["latency_ms"]) == {"p50", "p95", "p99", "max"}
    check = scenario["check"]
    assert check["ok"] and check["oversold"] == 0 and check["client_ids_distinct"]
    assert check["client_successes"] == check["bookings_rows"] == check["outbox_rows"] > 0
    assert quick_report["pgbench"]["peak"]["tps"] > 0 and scenario["ratio"] > 0
    if lambda_path.Pooler.available():  # through PgBouncer: the pooled settings work end to end
        assert scenario["via"].startswith("pgbouncer")
        assert quick_report["envs"]["pooler"]["DB_STARTUP_OPTIONS"] == "false"
    else:
        assert scenario["via"] == "direct" and any("no pooler" in n for n in quick_report["notes"])


def test_table_has_a_row_per_figure(quick_report: dict[str, Any]) -> None:
    rows = lambda_path.table(quick_report).splitlines()
    assert rows[0] == "| what | figure | ratio | p99 | notes |"
    assert any("CPU per invocation" in r and "hello-world" in r for r in rows)
    assert any("4 environments" in r and "bookings/s" in r for r in rows)
