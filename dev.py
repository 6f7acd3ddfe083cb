#!/usr/bin/env python3
"""Project entry point that needs nothing but Python 3.11+.

    python3 dev.py up        start the whole system locally (embedded servers if no URLs)
    python3 dev.py test      run the test suite (embedded servers if no URLs)

It creates ``.venv`` and installs the project with its dev extras on first use (again
whenever pyproject.toml changes), then runs the command inside that environment.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

COMMANDS: dict[str, tuple[list[str], str]] = {
    "up": (["-m", "local.stack"], "start PostgreSQL, Redis, migrations, worker, relay and the API"),
    "test": (["-m", "pytest"], "run the test suite"),
    "migrate": (["-m", "shared.platform.migrate"], "apply database migrations to DATABASE_URL"),
    "invoke": (["-m", "local.invoke"], "invoke a function's Lambda handler with an API Gateway event"),
    "worker": (["-m", "celery", "-A", "functions.notify.worker", "worker", "--beat", "--loglevel=INFO"],
               "run the notify worker (Celery, with the relay schedule) against REDIS_URL"),
    "relay": (["-m", "functions.relay.handler"], "publish outbox rows that were not published yet"),
    "users": (["-m", "functions.users.admin"], "set-role EMAIL ROLE | sign-out EMAIL: ends the account's sessions"),
    "deadletters": (
        ["-m", "shared.notifications.deadletters"],
        "list or replay notifications that exhausted their retries",
    ),
    "bench": (["-m", "bench"], "run the benchmarks"),
    "lint": (["-m", "ruff", "check", "."], "ruff, then the import contracts (import-linter)"),
    "typecheck": (["-m", "mypy"], "mypy over the project"),
}


def _requirements_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]


def _create_venv() -> None:
    """A virtualenv with pip; Debian's python3 without python3-venv has no ensurepip."""
    print(f"creating virtualenv in {VENV}", flush=True)
    try:
        venv.EnvBuilder(with_pip=True).create(VENV)
        return
    except (subprocess.CalledProcessError, OSError):
        shutil.rmtree(VENV, ignore_errors=True)
    # No ensurepip: an empty venv, then the system pip installs pip into it.
    venv.EnvBuilder(with_pip=False).create(VENV)
    bootstrap = [sys.executable, "-m", "pip", "--python", str(PYTHON), "install", "pip"]
    if subprocess.call(bootstrap) != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        sys.exit(
            "Could not create a virtualenv with pip. Install your system's venv support "
            "(Debian/Ubuntu: apt install python3-venv) or pip, then run this again."
        )


def ensure_venv() -> None:
    stamp = VENV / f".installed-{_requirements_stamp()}"
    if stamp.exists():
        return
    if not PYTHON.exists():
        _create_venv()
    print("installing the project and its dev dependencies (first run only)...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check"]
    quiet = ["-q"] if os.environ.get("CI") else []
    subprocess.run([*pip, "install", *quiet, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", *quiet, "-e", f"{ROOT}[dev]"], check=True)
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


# Commands that talk to the database find a running `dev.py up` stack by themselves
# (`invoke` does so in Python, with more settings).
_STACK_AWARE = {"relay", "deadletters", "migrate", "users"}


def _use_running_stack() -> None:
    """DATABASE_URL / REDIS_URL of the stack `dev.py up` runs, unless configured already."""
    stack_env = ROOT / ".local-data" / "stack.env"
    dot_env = ROOT / ".env"
    configured = dot_env.exists() and any(
        line.startswith("DATABASE_URL=") for line in dot_env.read_text().splitlines()
    )
    if os.environ.get("DATABASE_URL") or configured or not stack_env.exists():
        return
    for line in stack_env.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.setdefault(name, value)
    print(f"using the running local stack's services ({stack_env})", file=sys.stderr)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"} or argv[0] not in COMMANDS:
        print(__doc__)
        for name, (_, text) in COMMANDS.items():
            print(f"    python3 dev.py {name:<10} {text}")
        return 0 if not argv or argv[0] in {"-h", "--help", "help"} else 2
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        print("Python 3.11 or newer is required", file=sys.stderr)
        return 2
    ensure_venv()
    args, _ = COMMANDS[argv[0]]
    if argv[0] in _STACK_AWARE:
        _use_running_stack()
    os.chdir(ROOT)
    cmd = [str(PYTHON), *args, *argv[1:]]
    if argv[0] == "lint":  # layer directions (pyproject's [tool.importlinter]) after ruff
        if subprocess.call(cmd) != 0:
            return 1
        cmd = [str(BIN / "lint-imports.exe")] if os.name == "nt" else [str(PYTHON), str(BIN / "lint-imports")]
    if os.name == "nt":
        return subprocess.call(cmd)
    os.execv(str(PYTHON), cmd)  # replace this process: signals go straight to the command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
