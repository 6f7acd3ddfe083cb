"""Cold-start budget: import time of each function's handler vs a hello-world FastAPI+Mangum handler.

    .venv/bin/python bench/coldstart.py [--runs 9] [--package-dir build/lambda-unzipped]

Every sample is a fresh interpreter that imports one handler module and reports how long the
import took (interpreter start-up excluded: it is the same for every handler). Samples of all
handlers are interleaved, so drift on the machine hits them equally, and the medians are
compared with the hello-world measured in the same run. Goal: every function <= 1.25x.
Bytecode is compiled before measuring (a Lambda package ships it; see infra/package.py).
A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.25

HANDLERS = {
    "hello-world": "hello_handler.handler",
    "users": "functions.users.handler.handler",
    "events": "functions.events.handler.handler",
    "booking": "functions.booking.handler.handler",
    "relay": "functions.relay.handler.lambda_handler",
}

HELLO = '''"""The baseline: the smallest FastAPI app behind Mangum."""
from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


handler = Mangum(app, lifespan="off")
'''

PROBE = r"""
import json, sys, time
module, attr = sys.argv[1].rsplit(".", 1)
t0 = time.perf_counter()
mod = __import__(module, fromlist=[attr])
getattr(mod, attr)
elapsed = time.perf_counter() - t0
print(json.dumps({"ms": elapsed * 1000, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def sample(handler: str, pythonpath: str, python: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SECRET_ARN", "_SSM_PARAM"))}
    env.update(PYTHONPATH=pythonpath, AWS_LAMBDA_FUNCTION_NAME="coldstart-bench", APP_ENV="test",
               JWT_SECRET=secrets.token_urlsafe(48))
    proc = subprocess.run([python, "-c", PROBE, handler], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=120, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{handler} failed to import:\n{proc.stderr[-2000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="samples per handler (median used)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure with")
    parser.add_argument("--package-dir", type=Path,
                        help="measure unzipped packages: DIR/<function>/ (default: this tree)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--explain", action="store_true",
                        help="list each function's costliest imports that hello-world lacks")
    args = parser.parse_args(argv)
    if args.package_dir:
        args.package_dir = args.package_dir.resolve()

    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        hello_dir = Path(tmp)
        (hello_dir / "hello_handler.py").write_text(HELLO)
        paths = {}
        for name in HANDLERS:
            if name == "hello-world":
                base = str(args.package_dir / "users") if args.package_dir else str(ROOT)
                paths[name] = os.pathsep.join([str(hello_dir), base])
            else:
                paths[name] = str(args.package_dir / name) if args.package_dir else str(ROOT)
        # Warm-up: write bytecode and fill the OS page cache, as a deployed package would have.
        subprocess.run([args.python, "-m", "compileall", "-q", str(hello_dir),
                        *([] if args.package_dir else [str(ROOT / d) for d in ("shared", "functions")])],
                       check=True, capture_output=True)
        for name, handler in HANDLERS.items():
            sample(handler, paths[name], args.python)
        times: dict[str, list[float]] = {name: [] for name in HANDLERS}
        modules: dict[str, set[str]] = {}
        for _ in range(args.runs):
            for name, handler in HANDLERS.items():
                result = sample(handler, paths[name], args.python)
                times[name].append(float(result["ms"]))  # type: ignore[arg-type]
                modules[name] = set(result["modules"])  # type: ignore[call-overload]

    base = statistics.median(times["hello-world"])
    print(f"python {args.python}  runs={args.runs}  source="
          f"{args.package_dir or 'working tree'}")
    print(f"{'handler':<13}{'median ms':>10}{'min ms':>9}{'ratio':>8}  goal<={GOAL}x  extra packages")
    report = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        ratio = med / base
        extra = sorted(modules[name] - modules["hello-world"] - set(sys.stdlib_module_names))
        ok = "-" if name == "hello-world" else ("ok" if ratio <= GOAL else "OVER")
        print(f"{name:<13}{med:>10.1f}{min(samples):>9.1f}{ratio:>7.2f}x  {ok:<10}"
              f"{' '.join(e for e in extra if not e.startswith('_'))}")
        report[name] = {"median_ms": round(med, 1), "min_ms": round(min(samples), 1),
                        "ratio": round(ratio, 3)}
    if args.json:
        print(json.dumps(report))
    if args.explain:
        with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
            (Path(tmp) / "hello_handler.py").write_text(HELLO)
            hello_path = os.pathsep.join([tmp, paths["hello-world"].split(os.pathsep)[-1]])
            hello_costs = import_costs(HANDLERS["hello-world"], hello_path, args.python)
            for name, handler in HANDLERS.items():
                if name == "hello-world":
                    continue
                costs = import_costs(handler, paths[name], args.python)
                extra = sorted(((ms, mod) for mod, ms in costs.items() if mod not in hello_costs),
                               reverse=True)[:12]
                print(f"\n{name}: +{sum(ms for mod, ms in costs.items() if mod not in hello_costs):.0f}"
                      " ms self time in modules hello-world does not import; top:")
                for ms, mod in extra:
                    print(f"  {ms:7.1f} ms  {mod}")
    return 0


def import_costs(handler: str, pythonpath: str, python: str) -> dict[str, float]:
    """Module -> self import time (ms) from ``python -X importtime``."""
    env = {**os.environ, "PYTHONPATH": pythonpath, "AWS_LAMBDA_FUNCTION_NAME": "coldstart-bench",
           "APP_ENV": "test", "JWT_SECRET": secrets.token_urlsafe(48)}
    module = handler.rsplit(".", 1)[0]
    proc = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
                          timeout=120, check=True)
    costs = {}
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            costs[parts[2].strip()] = int(parts[0]) / 1000
    return costs


if __name__ == "__main__":
    sys.exit(main())
