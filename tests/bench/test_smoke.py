"""The benchmark harness still runs and still checks: a seconds-long run, not a measurement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import floor, loadgen, pgbench_booking, wrk_booking, wrk_crowd

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_report(server_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    cmd = [sys.executable, "-m", "bench", "--quick", "--duration", "1", "--clients", "4", "--spread-clients", "4",
           "--sellout-tickets", "40", "--users", "300", "--database-url", server_urls["database"],
           "--redis-url", server_urls["redis"], "--out", str(out),
           # The fallback generator here; wrk has a test of its own below (when installed).
           "--generator", "python"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bookings/s" in proc.stdout and "framework floor" in proc.stdout  # the tables
    assert "three ticket types vs one type" in proc.stdout
    report: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return report


def test_quick_run_reports_every_figure_with_the_oversell_check_at_zero(quick_report: dict[str, Any]) -> None:
    rush = quick_report["rush"]
    assert quick_report["ok"] is True
    assert quick_report["machine"]["nproc"] >= 1 and quick_report["machine"]["cpu_model"]
    assert quick_report["servers"]["fsync"] in ("on", "off")
    pg = rush["pgbench"]
    assert [r["clients"] for r in pg["hot"]] == [1, 4] and pg["peak"]["tps"] > 0
    assert pg["hot_check"]["oversold"] == 0 and pg["hot_check"]["ok"]
    assert pg["hot_check"]["bookings_rows"] == pg["hot_check"]["pgbench_transactions"] > 0
    assert rush["reference"]["ceiling"]["per_s"] > 0 and rush["reference"]["hello"]["per_s"] > 0
    kinds = [s["kind"] for s in rush["scenarios"]]
    assert kinds == ["hot", "three_types", "idempotent", "spread", "sellout", "workers"]
    assert [s["workers"] for s in rush["scenarios"]] == [1, 1, 1, 1, 1, 2]
    for s in rush["scenarios"]:
        assert s["per_s"] > 0 and s["errors_5xx"] == 0 and s["generator"] == "python"
        assert set(s["latency_ms"]) == {"p50", "p99", "max"}
        check = s["check"]
        assert check["oversold"] == 0 and check["events_sold_ne_booked"] == 0 and check["ok"]
        assert check["quotas_sold_ne_taken"] == 0 and check["orders_quantity_ne_lines"] == 0
        assert check["client_successes"] == check["bookings_rows"] == check["outbox_rows"] > 0
        assert check["booking_lines_rows"] == check["bookings_rows"]  # one line per bench order
        assert check["rate_limited"] == 0 and check["problems"] == [] and check["client_ids_distinct"]
    keyed = rush["scenarios"][2]["check"]
    assert keyed["idempotency_keys_201"] == keyed["bookings_rows"]  # every booking made under its own key
    sellout = rush["scenarios"][4]
    assert sellout["successes"] == 40 and sellout["check"]["sold_out_exactly"]
    assert set(sellout["error_codes"]) <= {"sold_out"}
    assert all(v > 0 for v in rush["ratios"].values())
    # Production defaults, behind a trusted load balancer; cheap hashing for the setup only.
    server = rush["server"]
    assert server["production_defaults"]["APP_ENV"] == "production"
    assert server["production_defaults"]["RATE_LIMIT_ENABLED"] == "true"
    assert server["production_defaults"]["RATE_LIMIT_BOOKING_PER_USER"] == "20/60"
    assert server["deployment"] == {"TRUSTED_PROXIES": "127.0.0.1"} and server["changed_defaults"] == {}
    assert rush["crowd"]["customers"] >= 4 and [g["met"] for g in rush["goals"]][-1] is True
    # The three-type event: every quota's stock down by what its types' lines took, the VIP
    # quota by the VIP and lounge tickets only, and the answers' types matching the lines.
    typed = rush["scenarios"][1]
    event = rush["three_types"]["events"][0]
    types = {t["id"]: t for t in event["types"]}
    assert [t["weight"] for t in event["types"]] == [50, 30, 20] and sum(t["vip"] for t in event["types"]) == 2
    quotas = {q["event_quota"]: q for q in typed["check"]["per_quota"]}
    assert len(quotas) == 2 and quotas[False]["id"] == event["vip_quota_id"]
    by_type = {int(k): v for k, v in typed["check"]["lines_by_type"].items()}
    assert by_type == {int(k): v for k, v in typed["check"]["client_successes_by_type"].items()}
    assert set(by_type) <= set(types) and sum(by_type.values()) == typed["successes"]
    assert quotas[True]["gone"] == quotas[True]["sold"] == typed["successes"]
    assert quotas[False]["gone"] == quotas[False]["sold"] == sum(n for t, n in by_type.items() if types[t]["vip"])
    assert f"{typed['name']} / hot event, 4 connections" in rush["ratios"]
    fan = quick_report["fanout"]
    assert fan["ok"] and fan["delivery_keys"] == fan["distinct_users"] == 300 and fan["channels"] == ["console"]


def test_quick_run_serves_every_floor_app_under_production_settings(quick_report: dict[str, Any]) -> None:
    report = quick_report["floor"]
    assert report["ok"] and report["generator"] == "python" and report["generator_note"]
    server_env = report["server"]["env"]
    assert server_env["APP_ENV"] == "production" and server_env["RATE_LIMIT_ENABLED"] == "true"
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["ceiling", "hello", "local", "fastapi_health", "create_app_health"]
    for row in rows.values():
        assert row["requests_per_s"] > 0 and row["p99_ms"] > 0 and row["errors"] == {}
        assert row["generator"] == "python"
    assert rows["hello"]["ratio"] == 1.0 and rows["local"]["ratio"] > 0 and rows["ceiling"]["ratio"] is None
    assert report["goal"]["met"] == (rows["local"]["ratio"] >= floor.GOAL)


WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:36783/health/live
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    69.84us  178.89us   4.62ms   99.06%
    Req/Sec    55.98k     2.20k   59.51k    72.73%
  Latency Distribution
     50%   55.00us
     75%   64.00us
     90%   72.00us
     99%    1.21ms
  61242 requests in 1.10s, 5.02MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 0
Requests/sec:  55697.99
Transfer/sec:      4.57MB
"""


def test_wrk_output_gives_rate_p99_in_ms_and_errors() -> None:
    measured = floor.parse_wrk(WRK_OUTPUT)
    assert measured.requests_per_s == 55698.0 and measured.requests == 61242
    assert measured.p99_ms == 1.21
    assert measured.errors == {"non_2xx": 3, "read": 2}
    assert floor.parse_wrk(WRK_OUTPUT.replace("1.21ms", "210.00us")).p99_ms == 0.21


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_drives_the_canned_server() -> None:
    with loadgen.canned_server() as port:
        measured = floor.run_wrk(port, connections=4, duration=1)
    assert measured.generator == "wrk" and measured.requests_per_s > 0 and measured.errors == {}
    assert measured.p99_ms is not None and measured.p99_ms > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_booking_script_rotates_customers_and_reports_what_it_counted(tmp_path: Path) -> None:
    fixtures = tmp_path / "crowd.txt"
    fixtures.write_text("tok-a 10.0.0.1\ntok-b 10.0.0.2\n")
    with loadgen.canned_server() as port:
        measured = wrk_booking.run(port, fixtures, [5, 6], connections=4, duration=1, key_prefix="k-", start=7,
                                   ticket_types=[(11, 50), (12, 30), (13, 20)])
    assert measured.statuses and set(measured.statuses) == {200} and measured.codes == Counter()
    assert measured.successes == measured.answered > 0 and measured.sent >= measured.answered
    assert measured.turn_end == 7 + measured.sent and measured.p99_ms is not None and measured.p99_ms > 0
    assert measured.distinct_ids == 0 and measured.duplicate_ids == 0  # the canned answer has no id


def test_wrk_booking_json_counts_refusals_by_code() -> None:
    line = ('BENCH_JSON {"statuses":{"201":5,"409":2,"429":1},"codes":{"sold_out":2,"rate_limited":1},'
            '"types":{"11":3,"12":2},'
            '"sent":10,"answered":8,"distinct_ids":5,"duplicate_ids":0,"turn_end":10,"duration_us":2000000,'
            '"socket_errors":{"connect":0,"read":1},"latency_us":{"p50":1500,"p99":42000,"max":90000}}')
    r = wrk_booking.parse("Running 2s test\n" + line + "\n", connections=4)
    assert r.successes == 5 and r.unanswered == 2 and r.statuses[429] == 1 and r.codes["sold_out"] == 2
    assert (r.p50_ms, r.p99_ms, r.max_ms) == (1.5, 42.0, 90.0) and r.socket_errors == {"read": 1}
    assert r.duration_s == 2.0 and r.types == Counter({11: 3, 12: 2})


def test_ticket_types_are_drawn_by_their_weights_in_both_generators() -> None:
    weights = [(5, 50), (6, 30), (7, 20)]
    assert wrk_booking.weights_arg(weights) == "5:5,6:3,7:2" and wrk_booking.weights_arg(None) == "-"
    spec = loadgen.Spec(host="h", port=1, method="POST", path="/bookings", event_ids=(9,), ticket_types=tuple(weights))
    out: dict[str, Any] = {}
    tails = loadgen._Connection(spec, 0, 1, out).tails
    bodies = Counter(json.loads(t.split(b"\r\n\r\n", 1)[1])["lines"][0]["ticket_type_id"] for t in tails)
    assert bodies == Counter({5: 5, 6: 3, 7: 2})
    default = loadgen._Connection(loadgen.Spec(host="h", port=1, method="POST", path="/b", event_ids=(9,)), 0, 1, out)
    assert [json.loads(t.split(b"\r\n\r\n", 1)[1]) for t in default.tails] == [{"event_id": 9, "quantity": 1}]
    with pytest.raises(ValueError, match="positive"):
        loadgen.reduced_weights([(5, 0)])


def test_crowd_is_sized_so_the_per_customer_limit_never_refuses() -> None:
    # 1,000 bookings/s for 60 s: each customer may take 20 at once and 20 more per 60 s.
    assert wrk_crowd.crowd_size(1000, 60, "20/60") == 1500
    assert wrk_crowd.customer_address(0) == "10.0.0.1" and wrk_crowd.customer_address(256) == "10.0.1.1"
    assert len({wrk_crowd.customer_address(i) for i in range(70_000)}) == 70_000
    assert wrk_crowd.contiguous_ids([9, 3, 4, 5, 7, 8]) == (3, 5)


def test_pgbench_script_is_the_booking_statement_with_variables() -> None:
    script = pgbench_booking.translate(
        pgbench_booking.book_sql(),
        {"event_id": "7", "user_id": "random(1, 9)", "quantity": "1", "default_max": "10", "customer_max": "20"},
        {"now": "2026-01-01T00:00:00+00:00"},
    )
    assert "\\set event_id 7" in script and "\\set user_id random(1, 9)" in script
    assert "\\set now" not in script and ":now" in script  # given with -D: pgbench cannot make a time
    assert "%(" not in script and ":event_id" in script and script.rstrip().endswith(";")


def test_pgbench_translation_refuses_a_parameter_it_cannot_fill() -> None:
    with pytest.raises(pgbench_booking.ScriptError, match="hold_id"):
        pgbench_booking.translate("SELECT %(hold_id)s", {})


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile([], 99) is None


def test_the_open_file_limit_is_raised_for_1024_connections() -> None:
    # In a child: lower the soft limit as a default shell has it, then raise it as the rush does.
    code = ("import resource; from bench import environment; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "note = environment.raise_fd_limit(512); "
            "print(note, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert proc.stdout.split() == ["None", "512"]
