"""infra/package.py really builds packages, and each imports its handler in a clean virtualenv.

Built for this machine's architecture and Python (the zip's bytecode must match the
interpreter that imports it); pip downloads are cached in the temp dir between runs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

import pytest

from infra import package

ROOT = Path(__file__).resolve().parents[2]
HOST_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
ARCH = package.host_arch()
PYC_TAG = sys.implementation.cache_tag  # e.g. cpython-311
BUILD_TIMEOUT_S = 600

# Run inside the clean virtualenv: import the handler, check what was (not) imported, and
# for HTTP functions send one API Gateway v2 event that fails before touching the database.
CHECK = r"""
import importlib, importlib.util, json, sys
handler_path, event = sys.argv[1], json.loads(sys.argv[2])
module_name, _, attr = handler_path.rpartition(".")
module = importlib.import_module(module_name)
handler = getattr(module, attr)
header = open(importlib.util.cache_from_source(module.__file__), "rb").read(8)
out = {
    "callable": callable(handler),
    "magic_ok": header[:4] == importlib.util.MAGIC_NUMBER,
    "unchecked_hash": int.from_bytes(header[4:8], "little") == 1,
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "file": module.__file__,
}
if event:
    response = handler(event, None)
    out["status"] = response["statusCode"]
    out["body"] = json.loads(response["body"])
print(json.dumps(out))
"""


def _event(method: str, path: str) -> dict[str, object]:
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "api.example.com", "accept": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "198.51.100.7", "userAgent": "test"},
            "requestId": "r1",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "isBase64Encoded": False,
    }


# (function, event or None, expected status)
CASES = [
    ("users", _event("GET", "/users/me"), 401),
    ("events", _event("GET", "/events/0"), 422),
    ("booking", _event("GET", "/bookings"), 401),
    ("relay", None, None),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("lambda")
    cache = Path(tempfile.gettempdir()) / "ticketing-pip-cache"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "package.py"), "--arch", ARCH,
         "--python-version", HOST_PY, "--out", str(out), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv without pip or site packages: only the package can satisfy imports."""
    env_dir = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    return env_dir / "bin" / "python"


def test_sizes_are_printed_for_every_package(built: tuple[Path, str]) -> None:
    out, stdout = built
    for name in package.FUNCTIONS:
        line = next(ln for ln in stdout.splitlines() if ln.startswith(f"{name}-{ARCH}.zip"))
        assert "MB" in line
        assert (out / f"{name}-{ARCH}.zip").stat().st_size > 100_000


@pytest.mark.parametrize("name", list(package.FUNCTIONS))
def test_package_holds_only_its_function_and_bytecode(built: tuple[Path, str], name: str) -> None:
    out, _ = built
    with zipfile.ZipFile(out / f"{name}-{ARCH}.zip") as zf:
        names = zf.namelist()
    tops = {n.split("/")[0].removesuffix(".py") for n in names}
    assert not tops & set(package.FORBIDDEN)
    assert "shared" in tops and "tests" not in tops and "local" not in tops
    function_dirs = {
        n.split("/")[1] for n in names if n.startswith("functions/") and n.count("/") > 1
    } - {"__pycache__"}
    assert function_dirs == {name}
    sources = [n for n in names if n.endswith(".py")]
    compiled = set(names)
    for src in sources:
        folder, _, file = src.rpartition("/")
        pyc = f"__pycache__/{file[:-3]}.{PYC_TAG}.pyc"
        assert (f"{folder}/{pyc}" if folder else pyc) in compiled, f"{src} has no bytecode"


@pytest.mark.parametrize(("name", "event", "status"), CASES)
def test_package_imports_its_handler_in_a_clean_virtualenv(
    built: tuple[Path, str], clean_python: Path, tmp_path: Path,
    name: str, event: dict[str, object] | None, status: int | None,
) -> None:
    out, _ = built
    with zipfile.ZipFile(out / f"{name}-{ARCH}.zip") as zf:
        zf.extractall(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1", "APP_ENV": "test", "JWT_SECRET": secrets.token_urlsafe(48),
           "AWS_LAMBDA_FUNCTION_NAME": f"ticketing-{name}", "RATE_LIMIT_ENABLED": "false"}
    proc = subprocess.run(
        [str(clean_python), "-c", CHECK, package.FUNCTIONS[name].handler, json.dumps(event)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["callable"]
    assert result["file"].startswith(str(tmp_path))  # imported from the package, not the repo
    assert result["magic_ok"] and result["unchecked_hash"]
    assert not set(result["modules"]) & {"celery", "kombu", "boto3", "botocore", "uvicorn"}
    if status is None:
        assert "fastapi" not in result["modules"]
    else:
        assert result["status"] == status
        assert isinstance(result["body"]["code"], str)


def test_template_code_uris_and_handlers_match_the_packages() -> None:
    """Each template function deploys the zip package.py builds, with the same handler."""
    from infra import sam

    deployed = {}
    for props in sam.functions(sam.load_template()).values():
        name, _, arch = Path(props["CodeUri"]).stem.rpartition("-")
        assert Path(props["CodeUri"]).parent.name == "lambda" and arch in package.ARCHES
        assert arch == props["Architectures"][0]
        deployed[name] = props["Handler"]
        assert props["Runtime"] == f"python{package.DEFAULT_PYTHON}"
    assert deployed == {name: spec.handler for name, spec in package.FUNCTIONS.items()}
