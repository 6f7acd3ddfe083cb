"""No known secret ever signs tokens: no default, placeholder or string from this repository
works as the JWT secret, processes refuse to start without a real one, and tokens have a
bounded lifetime."""

from __future__ import annotations

import ast
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from shared.platform.errors import Unauthorized
from shared.platform.settings import (
    REFUSED_JWT_SECRETS,
    InsecureSecretError,
    Settings,
    generate_jwt_secret,
    get_settings,
    jwt_secret_problem,
)
from tests.support.clients import Client
from tests.support.factories import account
from tests.support.settings_env import restore_env, set_env

# Signing with short repository strings is the point here, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ROOT = Path(__file__).resolve().parents[2]
# A fresh process sets none of these (the suite relaxes the password policy for old flows).
_AUTH_VARS = ("APP_ENV", "JWT_SECRET", "JWT_SECRET_FILE", "PASSWORD_MIN_LENGTH", "PASSWORD_CHECK_COMMON")


def _repo_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 1_000_000:
            try:
                path.read_text()
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


_QUOTED = re.compile(r"""(?<![\w\\])(['"])((?:(?!\1)[^\\\n]){1,300})\1""")
# A value in a secret-looking position: FOO_SECRET=..., jwt_secret: ..., password = "...".
_ASSIGNED = re.compile(
    r"""(?i)\b\w*(?:secret|password|token|key)\w*['"]?\s*[:=]\s*['"]?([^\s'"#,;)}]+)"""
)


# Pieces of a long token a secret could be copied from: FOO=<value>, "key": "<value>", ...
_TOKEN_PARTS = re.compile(r"""[\s'"`=:,;()\[\]{}<>.@]+""")


def _python_strings(text: str) -> set[str]:
    """Every string constant of a Python file (f-string parts and docstrings too)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value}


def _long_tokens(text: str) -> set[str]:
    """Every whitespace-separated token of 32+ bytes, and its pieces of 32+ bytes."""
    tokens = {token for token in text.split() if len(token.encode("utf-8", "surrogatepass")) >= 32}
    parts = {part for token in tokens for part in _TOKEN_PARTS.split(token)}
    return tokens | {part for part in parts if len(part.encode("utf-8", "surrogatepass")) >= 32}


def _candidates() -> tuple[set[str], set[str]]:
    """(every string literal, quoted string, long token and assigned value, those assigned
    to a secret-looking name)."""
    quoted: set[str] = set()
    assigned: set[str] = set()
    for path in _repo_text_files():
        text = path.read_text()
        quoted.update(m.group(2) for m in _QUOTED.finditer(text))
        quoted.update(_long_tokens(text))
        if path.suffix == ".py":
            quoted.update(_python_strings(text))
        assigned.update(m.group(1) for m in _ASSIGNED.finditer(text))
    # Code on the right of an "=" (a call) is not a value anyone could copy as a secret.
    assigned = {value for value in assigned if value and "(" not in value}
    return quoted | assigned, assigned


ALL_CANDIDATES, ASSIGNED_CANDIDATES = _candidates()


@pytest.fixture
def no_auth_env() -> Iterator[None]:
    """The environment of a process started with no APP_ENV and no secret at all."""
    saved = {k: os.environ.pop(k, None) for k in _AUTH_VARS}
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
        get_settings.cache_clear()


def _token(secret: str, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "1", "role": "organizer", "iat": now, "exp": now + 60, "iss": "ticketing-backend",
            "jti": "j", "sid": "s", **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def test_the_scan_found_the_repositorys_strings() -> None:
    """Guards the scanner itself: it must see the values that used to be secrets."""
    assert len(ALL_CANDIDATES) > 1000
    assert {"change-me-to-a-long-random-value", "dev-only-insecure-jwt-secret-change-me"} <= REFUSED_JWT_SECRETS
    assert "ticketing" in ASSIGNED_CANDIDATES  # POSTGRES_PASSWORD=ticketing
    assert "Sessions: short access tokens, rotating refresh tokens, and revocation without a DB read." in (
        ALL_CANDIDATES)  # a docstring
    assert "postgresql://postgres@127.0.0.1:5432/ticketing" in ALL_CANDIDATES  # a token in .env.example


def test_no_string_in_the_repository_is_accepted_as_a_production_secret() -> None:
    """Every literal, quoted string and long token of every tracked file is refused, whatever
    its name or place: a strong-looking example copied from a test or a doc never signs."""
    accepted = sorted(c for c in ALL_CANDIDATES if jwt_secret_problem(c) is None)
    assert accepted == []


def test_generated_secrets_are_accepted() -> None:
    """``dev.py up``'s and the suite's generator always; a bare ``token_urlsafe(48)`` (the
    command the start-up message shows) almost always: one in ~50,000 lacks a digit."""
    assert all(jwt_secret_problem(generate_jwt_secret()) is None for _ in range(2000))
    refused = sum(jwt_secret_problem(secrets.token_urlsafe(48)) is not None for _ in range(10_000))
    assert refused <= 3


@pytest.mark.parametrize("secret", [
    "https://Example0ne.test/a-Long-Path/With/Mixed-Case/9",
    "The Quick Brown Fox Jumps Over 13 Lazy Dogs Twice",
    "argparse.RawDescriptionHelpFormatter2024",
    "${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000",
    "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
    "policy/service-role/AmazonECSTaskExecutionRolePolicy",
    "0123456789abcdef0123456789abcdef0123456789abcdef",
    "test/a-Long-Path/With/Mixed-Case/9",
])
def test_structured_text_is_refused_however_varied(secret: str) -> None:
    assert jwt_secret_problem(secret) is not None


def test_a_hex_secret_of_32_random_bytes_is_accepted_but_not_a_repeated_pattern() -> None:
    """What ``openssl rand -hex 32`` prints is a generated secret too."""
    assert jwt_secret_problem(secrets.token_hex(32)) is None
    assert jwt_secret_problem(secrets.token_hex(32).upper()) is None
    assert jwt_secret_problem(secrets.token_hex(31)) is not None  # 62 digits: 31 bytes
    assert jwt_secret_problem("0123456789abcdef" * 4) is not None
    assert jwt_secret_problem(secrets.token_urlsafe(12) * 4) is not None


def test_unset_app_env_means_production_and_no_secret_refuses(no_auth_env: None) -> None:
    settings = get_settings()
    assert settings.app_env == "production"
    with pytest.raises(InsecureSecretError, match="not set"):
        settings.signing_secret()


def test_a_token_signed_with_any_string_in_the_repository_is_refused(no_auth_env: None) -> None:
    """The default configurations: none starts (production), or a random per-process secret
    (explicit development). Either way no string from the repository signs a valid token."""
    from shared.accounts.tokens import _verify

    with pytest.raises(InsecureSecretError):
        get_settings().signing_secret()
    saved = set_env({"APP_ENV": "development"})
    try:
        secret = get_settings().signing_secret()
        assert len(secret) >= 48 and secret not in ALL_CANDIDATES
        for candidate in sorted(ALL_CANDIDATES):
            try:
                candidate.encode()
            except UnicodeEncodeError:
                continue  # a lone surrogate (a test's input): no key can be made of it
            with pytest.raises(Unauthorized) as refused:
                _verify(_token(candidate))
            assert refused.value.code == "invalid_token", candidate
    finally:
        restore_env(saved)


@pytest.mark.parametrize("app_env", ["production", "test"])
def test_every_secret_value_written_in_the_repository_is_refused_as_a_secret(app_env: str) -> None:
    """Copying any value the repository assigns to a secret-looking name does not start."""
    accepted = [c for c in ASSIGNED_CANDIDATES if jwt_secret_problem(c) is None]
    assert accepted == []
    for candidate in sorted(ASSIGNED_CANDIDATES | REFUSED_JWT_SECRETS):
        settings = Settings(app_env=app_env, jwt_secret=candidate)  # type: ignore[arg-type]
        with pytest.raises(InsecureSecretError):
            settings.signing_secret()


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("", "not set"),
        ("x", "shorter than 32 bytes"),
        ("a" * 31, "shorter than 32 bytes"),
        ("a" * 64, "too little variety"),
        ("abababababababababababababababababab", "too little variety"),
        ("please-change-me-to-a-long-random-value-0123456789", "placeholder"),
        ("my-INSECURE-dev-secret-for-production-use-1234567", "placeholder"),
    ],
)
def test_weak_secrets_are_refused_outside_development(secret: str, why: str) -> None:
    for env in ("production", "test"):
        with pytest.raises(InsecureSecretError, match=why):
            Settings(app_env=env, jwt_secret=secret).signing_secret()  # type: ignore[arg-type]
    strong = generate_jwt_secret()
    assert Settings(app_env="production", jwt_secret=strong).signing_secret() == strong  # type: ignore[arg-type]


def test_development_refuses_the_placeholders_this_repository_published() -> None:
    for placeholder in REFUSED_JWT_SECRETS:
        with pytest.raises(InsecureSecretError, match="placeholder"):
            Settings(app_env="development", jwt_secret=placeholder).signing_secret()  # type: ignore[arg-type]
    assert Settings(app_env="development", jwt_secret="short").signing_secret() == "short"  # type: ignore[arg-type]


def test_development_without_a_secret_gets_a_random_one_per_process() -> None:
    code = "from shared.platform.settings import Settings; print(Settings(app_env='development').signing_secret())"
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=True, timeout=60).stdout.strip() for _ in range(2)}
    assert len(outs) == 2 and all(len(s) >= 48 for s in outs)


def test_secret_file_is_read_and_checked(tmp_path: Path, no_auth_env: None) -> None:
    path = tmp_path / "jwt-secret"
    strong = generate_jwt_secret()
    path.write_text(strong + "\n")
    settings = Settings(app_env="production", jwt_secret_file=str(path))  # type: ignore[arg-type]
    assert settings.signing_secret() == strong
    path.write_text("change-me\n")
    with pytest.raises(InsecureSecretError, match="shorter"):
        Settings(app_env="production", jwt_secret_file=str(path)).signing_secret()  # type: ignore[arg-type]
    with pytest.raises(InsecureSecretError, match="cannot be read"):
        Settings(app_env="production", jwt_secret_file=str(tmp_path / "none")).signing_secret()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("local.app", {}),
        ("functions.booking.app", {"APP_ENV": "production", "JWT_SECRET": "dev-only-insecure-jwt-secret-change-me"}),
        ("functions.users.handler", {"APP_ENV": "test", "JWT_SECRET": "short"}),
    ],
)
def test_apps_refuse_to_start_with_a_clear_message_and_no_traceback(module: str, extra: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    env.update(extra)
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to start" in proc.stderr and "JWT_SECRET" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_processes_that_never_touch_tokens_start_without_a_secret() -> None:
    """Migrations, the relay and the worker do not need JWT_SECRET (k8s Job, compose)."""
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    code = "import shared.platform.migrate, functions.relay.handler, functions.notify.worker"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_shipped_configurations_carry_no_secret_value() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"JWT_SECRET\s*:\s*[^\s/]", compose.replace("JWT_SECRET_FILE: /run", ""))
    assert "${JWT_SECRET" not in compose
    env_example = (ROOT / ".env.example").read_text()
    assert re.search(r"^JWT_SECRET=$", env_example, re.M)
    assert not re.search(r"^APP_ENV=development", env_example, re.M)
    template = (ROOT / "infra" / "template.yaml").read_text()
    assert "JWT_SECRET:" not in template and "JWT_SECRET_SSM_PARAM" in template
    assert "JWT_SECRET" not in "".join(p.read_text() for p in (ROOT / "infra" / "k8s").glob("*.yaml")
                                       if "kubectl create secret" not in p.read_text())


def test_api_is_published_on_loopback_by_default() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert '"${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"' in compose


# --- bounded lifetime --------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) + 100 * 365 * 86400}, id="100-year"),
        pytest.param({"iat": int(time.time()) + 5, "exp": int(time.time()) + 906}, id="ttl-plus-one"),
        pytest.param({"iat": int(time.time()) + 600, "exp": int(time.time()) + 1200}, id="issued-in-future"),
        pytest.param({"jti": None}, id="no-jti"),
        pytest.param({"sid": None}, id="no-sid"),
        pytest.param({"iat": None}, id="no-iat"),
        pytest.param({"sid": 7}, id="bad-sid"),
    ],
)
def test_tokens_beyond_the_configured_lifetime_or_missing_claims_are_refused(
    client: Client, claims: dict[str, object]
) -> None:
    user, _ = account(client, "customer")
    body = {k: v for k, v in {"sub": str(user["id"]), "role": "customer", **claims}.items() if v is not None}
    token = _token(get_settings().signing_secret(), **{k: v for k, v in body.items()})
    for key in [k for k, v in claims.items() if v is None]:
        decoded = jwt.decode(token, options={"verify_signature": False})
        decoded.pop(key, None)
        token = jwt.encode(decoded, get_settings().signing_secret(), algorithm="HS256")
    r = client.request("GET", "/users/me", token=token)
    assert r.status_code == 401 and r.json()["code"] == "invalid_token", r.text


def test_a_token_within_the_lifetime_signed_with_the_real_secret_works(client: Client) -> None:
    user, _ = account(client, "customer")
    token = _token(get_settings().signing_secret(), sub=str(user["id"]), role="customer",
                   exp=int(time.time()) + 900)
    assert client.request("GET", "/users/me", token=token).status_code == 200
