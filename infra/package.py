"""Build one deployable Lambda zip per function and architecture, with compiled bytecode.

    .venv/bin/python infra/package.py                       # every function, arm64 + x86_64
    .venv/bin/python infra/package.py --arch arm64 --function booking

Each zip holds only what its function runs: ``functions/<name>/`` (HTTP functions),
``shared/`` and the function's runtime dependencies, fetched as manylinux wheels for the
target architecture and Python (``pip --platform ... --only-binary=:all: --target``).
Celery, boto3 and the worker code are not shipped. Every module is compiled to
``__pycache__/*.cpython-3XX.pyc`` with unchecked-hash invalidation: a Lambda package is
read-only, and without bytecode a cold start compiles everything (about 3x slower).
Versions are pinned to the ones installed in the running environment (the tested ones).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "lambda"
DEFAULT_PYTHON = "3.12"  # infra/template.yaml Runtime: python3.12
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}
# Amazon Linux 2023 (python3.12 runtime) has glibc 2.34. pip does not widen --platform to
# older glibc versions by itself, so every manylinux level up to 2.34 is listed.
GLIBC_LEVELS = ("2_34", "2_28", "2_27", "2_26", "2_24", "2_17")
# Never shipped in a function package, whatever pulls them in.
FORBIDDEN = ("celery", "kombu", "billiard", "boto3", "botocore", "uvicorn")
# Installed-but-useless for a function at run time.
STRIP_DIRS = ("bin",)
FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str
    code: tuple[str, ...]  # paths relative to ROOT (files or packages)
    # Distribution names taken from pyproject's [project.dependencies]; None means all of them.
    requirements: tuple[str, ...] | None = None
    extra_requirements: tuple[str, ...] = field(default=())


def _http(name: str) -> FunctionSpec:
    return FunctionSpec(
        name=name,
        handler=f"functions.{name}.handler.handler",
        code=("functions/__init__.py", f"functions/{name}", "shared"),
    )


FUNCTIONS: dict[str, FunctionSpec] = {
    "users": _http("users"),
    "events": _http("events"),
    "booking": _http("booking"),
    # The relay reads the outbox and writes Redis: no web framework, no Celery.
    "relay": FunctionSpec(
        name="relay",
        handler="functions.relay.handler.lambda_handler",
        code=("functions/__init__.py", "functions/relay", "shared"),
        requirements=("pydantic", "pydantic-settings", "psycopg", "psycopg-pool", "redis"),
    ),
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    if not match:
        raise ValueError(f"bad requirement {spec!r}")
    return _canonical(match.group(0))


def project_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def requirements_for(spec: FunctionSpec) -> list[str]:
    deps = project_dependencies()
    if spec.requirements is not None:
        wanted = {_canonical(n) for n in spec.requirements}
        deps = [d for d in deps if _req_name(d) in wanted]
        missing = wanted - {_req_name(d) for d in deps}
        if missing:
            raise SystemExit(f"{spec.name}: not in pyproject dependencies: {sorted(missing)}")
    return sorted([*deps, *spec.extra_requirements])


def installed_pins() -> list[str]:
    """name==version for every distribution of this environment (constraints, not installs)."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version and "+" not in version:
            pins[_canonical(name)] = f"{_canonical(name)}=={version}"
    pins.pop("ticketing-backend", None)
    return sorted(pins.values())


def bytecode_python(version: str, explicit: str | None) -> str:
    """An interpreter of the target version: bytecode is specific to one minor version."""
    if explicit:
        return explicit
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if not found:
        raise SystemExit(
            f"no python{version} on PATH to compile bytecode for the Lambda runtime; install it, "
            f"pass --bytecode-python PATH, or build for this interpreter with "
            f"--python-version {sys.version_info.major}.{sys.version_info.minor}"
        )
    return found


def _run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def install_dependencies(
    requirements: list[str], arch: str, python_version: str, work: Path, pin: bool,
    cache_dir: Path | None,
) -> Path:
    """pip-install the wheels for one target into a directory shared by equal requirement sets."""
    key = hashlib.sha256(
        "\n".join([*requirements, arch, python_version, str(pin)]).encode()
    ).hexdigest()[:16]
    target = work / f"deps-{key}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version,
        *[arg for level in GLIBC_LEVELS for arg in ("--platform", f"manylinux_{level}_{ARCHES[arch]}")],
        "--target", str(target), *requirements,
    ]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    if pin:
        constraints = work / f"constraints-{key}.txt"
        constraints.write_text("\n".join(installed_pins()) + "\n")
        cmd += ["--constraint", str(constraints)]
    _run(cmd)
    for name in STRIP_DIRS:
        shutil.rmtree(target / name, ignore_errors=True)
    (target / ".complete").touch()
    return target


def _copy_code(paths: Iterable[str], dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", ".*")
    for rel in paths:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=ignore, dirs_exist_ok=True)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def top_level_names(tree: Path) -> set[str]:
    return {p.name.removesuffix(".py") for p in tree.iterdir() if not p.name.endswith(".dist-info")}


def compile_tree(tree: Path, python: str) -> None:
    _run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
          "-d", "/var/task", str(tree)])


def write_zip(tree: Path, zip_path: Path) -> None:
    """Deterministic zip: sorted entries, fixed times, world-readable files."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    tmp.replace(zip_path)


@dataclass
class Built:
    function: str
    arch: str
    path: Path
    zip_bytes: int
    unzipped_bytes: int
    files: int


def build_one(
    spec: FunctionSpec, arch: str, python_version: str, out: Path, work: Path,
    bytecode: str, pin: bool, cache_dir: Path | None,
) -> Built:
    deps = install_dependencies(requirements_for(spec), arch, python_version, work, pin, cache_dir)
    tree = work / f"tree-{spec.name}-{arch}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(deps, tree, ignore=shutil.ignore_patterns(".complete"))
    shipped = top_level_names(tree)
    leaked = sorted(shipped & set(FORBIDDEN))
    if leaked:
        raise SystemExit(f"{spec.name}: dependencies pull in {leaked}; they must not ship")
    _copy_code(spec.code, tree)
    compile_tree(tree, bytecode)
    zip_path = out / f"{spec.name}-{arch}.zip"
    write_zip(tree, zip_path)
    files = [p for p in tree.rglob("*") if p.is_file()]
    built = Built(spec.name, arch, zip_path, zip_path.stat().st_size,
                  sum(p.stat().st_size for p in files), len(files))
    shutil.rmtree(tree, ignore_errors=True)
    return built


def host_arch() -> str:
    machine = platform.machine().lower()
    return "arm64" if machine in {"aarch64", "arm64"} else "x86_64"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--function", action="append", choices=sorted(FUNCTIONS),
                        help="build only this function (repeatable); default: all")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES),
                        help="target architecture (repeatable); default: arm64 and x86_64")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON,
                        help=f"target CPython minor version (default {DEFAULT_PYTHON}, the runtime)")
    parser.add_argument("--bytecode-python", help="interpreter of that version to compile with")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, help="pip download cache")
    parser.add_argument("--no-pin", action="store_true",
                        help="resolve newest versions instead of this environment's")
    args = parser.parse_args(argv)

    names = args.function or list(FUNCTIONS)
    arches = args.arch or ["arm64", "x86_64"]
    bytecode = bytecode_python(args.python_version, args.bytecode_python)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="ticketing-package-") as tmp:
        for arch in arches:
            for name in names:
                results.append(build_one(
                    FUNCTIONS[name], arch, args.python_version, args.out, Path(tmp),
                    bytecode, not args.no_pin, args.cache_dir,
                ))
    print(f"{'package':<26}{'zip':>10}{'unzipped':>12}{'files':>8}")
    for b in results:
        print(f"{b.path.name:<26}{b.zip_bytes / 1e6:>8.2f}MB{b.unzipped_bytes / 1e6:>10.2f}MB"
              f"{b.files:>8}")
    print(f"python {args.python_version}, {len(results)} packages in "
          f"{time.monotonic() - started:.1f}s -> {os.path.relpath(args.out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
