"""One command for the benchmarks.

    python -m bench                 framework floor, rush, Lambda path and fan-out, one PostgreSQL
    python -m bench floor [...]     the framework floor only: /health/live vs hello-world (bench/floor.py)
    python -m bench rush [...]      the ticket rush only: pgbench vs the full stack under production defaults
    python -m bench lambda [...]    the Lambda path only: CPU per invocation, N environments (bench/lambda_path.py)
    python -m bench fanout [...]    the notification fan-out only
    python -m bench coldstart [...] handler import times (bench/coldstart.py)

Embedded PostgreSQL and Redis (durable: fsync on) start when DATABASE_URL / REDIS_URL are
unset (the floor alone needs neither). A table goes to stdout and the full report to bench/results/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import environment, fanout, floor, lambda_path, rush

RESULTS = Path(__file__).resolve().parent / "results"
FANOUT_USERS = 100_000
QUICK_FANOUT_USERS = 2_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for name, parts in (("all", ("floor", "rush", "lambda", "fanout")), ("floor", ("floor",)), ("rush", ("rush",)),
                        ("lambda", ("lambda",)), ("fanout", ("fanout",))):
        p = sub.add_parser(name, help=f"{', '.join(parts)} on one PostgreSQL" if name != "floor"
                           else "/health/live of the API vs a hello-world FastAPI app, same server")
        p.add_argument("--database-url", help="an existing server (a fresh database is created on it)")
        p.add_argument("--redis-url", help="an existing Redis (the bench uses queues of its own)")
        p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON report goes (bench/results/)")
        p.add_argument("--keep-data", action="store_true", help="keep the bench database and server data")
        if "rush" in parts:
            rush.add_arguments(p, generator="floor" not in parts)  # one --generator for both
        elif parts == ("lambda",):
            lambda_path.add_arguments(p)
        else:
            p.add_argument("--quick", action="store_true", help="tiny correctness run")
        if "lambda" in parts and "rush" in parts:
            p.add_argument("--lambda-envs", type=lambda text: [int(x) for x in text.split(",") if x],
                           help="Lambda environments (default 64,256)")
            p.add_argument("--skip-lambda", action="store_true", help="no Lambda-path scenarios")
        if "fanout" in parts:
            fanout.add_arguments(p)
        if "floor" in parts:
            floor.add_arguments(p, standalone=parts == ("floor",))
        p.set_defaults(parts=parts)
    sub.add_parser("coldstart", help="handler import times vs hello-world (its own options)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "coldstart":
        from bench import coldstart

        return coldstart.main(argv[1:])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all", *argv]
    args = _parser().parse_args(argv)
    started = time.time()
    report: dict[str, Any] = {
        "command": "python -m bench " + " ".join(argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": environment.machine(),
        # Other work on the machine skews every figure: the load average says how much there was.
        "loadavg_at_start": list(os.getloadavg()),
    }
    ok = True
    # The floor serves no route that reaches PostgreSQL or Redis: alone, it starts neither.
    needs_servers = args.parts != ("floor",)
    with (environment.prepared(args.database_url, args.redis_url, keep_data=args.keep_data) if needs_servers
          else contextlib.nullcontext()) as env:
        if env is not None:
            report["servers"] = {"postgres": env.postgres_source, "durable": True, **env.facts}
        print(f"{_servers_line(env)}{report['machine']['nproc']} cores, {report['machine']['cpu_model']}", flush=True)
        if "floor" in args.parts:
            report["floor"] = floor.run(floor.options_from(args), args.out,
                                        database_url=env.database_url if env else args.database_url,
                                        redis_url=env.redis_url if env else args.redis_url)
            ok = ok and report["floor"]["ok"]
        if env is not None and "rush" in args.parts:
            report["rush"] = rush.run(env, rush.options_from(args), args.out, floor_report=report.get("floor"))
            ok = ok and report["rush"].get("ok", True)
        if env is not None and "lambda" in args.parts and not getattr(args, "skip_lambda", False):
            report["lambda"] = lambda_path.run(env, _lambda_options(args, report), args.out)
            ok = ok and report["lambda"].get("ok", True)
        if env is not None and "fanout" in args.parts:
            users = args.users or (QUICK_FANOUT_USERS if args.quick else FANOUT_USERS)
            report["fanout"] = fanout.run(env, users, args.out, timeout=args.fanout_timeout)
            ok = ok and report["fanout"]["ok"]
    report["loadavg_at_end"] = list(os.getloadavg())
    report["seconds"] = round(time.time() - started, 1)
    report["ok"] = ok
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}.json"
    text = json.dumps(report, indent=2, default=str)
    path.write_text(text)
    (args.out / "latest.json").write_text(text)
    print()
    print(f"machine: {report['machine']['nproc']} x {report['machine']['cpu_model']}; "
          f"{_servers_line(env)}load average "
          f"{report['loadavg_at_start'][0]:.1f} at start, {report['loadavg_at_end'][0]:.1f} at end")
    # The rush leads: its headline rows are issue 13's container path; the Lambda path follows.
    tables = {"rush": rush.table, "lambda": lambda_path.table, "floor": floor.table, "fanout": fanout.table}
    print("\n\n".join(table(report[part]) for part, table in tables.items() if part in report))
    print(f"\nreport: {path}  ({report['seconds']} s){'' if ok else '  CHECKS FAILED'}")
    return 0 if ok else 1


def _lambda_options(args: argparse.Namespace, report: dict[str, Any]) -> lambda_path.Options:
    """The Lambda path's options; inside a full run it shares the rush's one-row pgbench peak."""
    if args.parts == ("lambda",):
        return lambda_path.options_from(args)
    opts = lambda_path.Options.quick() if args.quick else lambda_path.Options()
    if args.lambda_envs:
        opts.envs = args.lambda_envs
    peak = (((report.get("rush") or {}).get("pgbench") or {}).get("peak") or {}).get("tps")
    if peak:
        opts.pgbench_peak = peak
    return opts


def _servers_line(env: environment.Environment | None) -> str:
    if env is None:
        return ""
    return (f"PostgreSQL {env.facts['postgres_version']} ({env.postgres_source}), fsync={env.facts['fsync']}, "
            f"synchronous_commit={env.facts['synchronous_commit']}; ")


if __name__ == "__main__":
    sys.exit(main())
