"""Password policy: the defaults refuse short and common passwords; only development relaxes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.settings import Settings, get_settings
from tests.support.clients import Client
from tests.support.factories import login

POLICY = ("PASSWORD_MIN_LENGTH", "PASSWORD_CHECK_COMMON")


@pytest.fixture
def default_policy(database: str) -> Iterator[None]:
    """The suite relaxes the minimum for older tests; these run with the shipped defaults."""
    saved = {name: os.environ.pop(name, None) for name in POLICY}
    get_settings.cache_clear()
    yield
    for name, value in saved.items():
        if value is not None:
            os.environ[name] = value
    get_settings.cache_clear()


def _register(client: Client, password: str) -> Any:
    email = f"pw-{uuid.uuid4().hex[:10]}@test.com"
    return email, client.request("POST", "/users", json_body={"email": email, "password": password,
                                                              "role": "customer"})


def _error_type(r: Any) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "validation_error"
    [error] = body["details"]["errors"]
    assert error["loc"] == ["body", "password"]
    return str(error["type"])


def test_defaults_refuse_passwords_under_8_characters(client: Client, default_policy: None) -> None:
    assert get_settings().password_min_length == 8
    for password in ("123", "Zq7#kP2"):
        assert _error_type(_register(client, password)[1]) == "password_too_short"


@pytest.mark.parametrize("password", ["12345678", "password", "PassWord", "QWERTYUIOP", "iloveyou1"])
def test_defaults_refuse_common_passwords_in_any_case(
    client: Client, default_policy: None, password: str
) -> None:
    assert _error_type(_register(client, password)[1]) == "password_too_common"


def test_an_uncommon_long_password_is_accepted(client: Client, default_policy: None) -> None:
    email, r = _register(client, "Tr1cky-Horse-42")
    assert r.status_code == 201, r.text
    assert login(client, email, "Tr1cky-Horse-42")


def test_login_is_not_held_to_the_registration_policy(client: Client, default_policy: None) -> None:
    """An account made under a laxer policy can still sign in (a wrong guess is 401, never 422)."""
    os.environ["PASSWORD_MIN_LENGTH"] = "3"
    get_settings.cache_clear()
    email, r = _register(client, "abc")
    assert r.status_code == 201, r.text
    del os.environ["PASSWORD_MIN_LENGTH"]
    get_settings.cache_clear()
    assert login(client, email, "abc")
    r = client.request("POST", "/auth/token", form={"username": email, "password": "ab"})
    assert r.status_code == 401


def test_only_development_may_relax_the_policy(default_policy: None) -> None:
    base = {"jwt_secret": "a-real-secret-" + uuid.uuid4().hex}
    weak = Settings(app_env="production", password_check_common=False, **base)
    assert "PASSWORD_CHECK_COMMON" in (weak.password_policy_problem() or "")
    short = Settings(app_env="production", password_min_length=3, **base)
    assert "PASSWORD_MIN_LENGTH" in (short.password_policy_problem() or "")
    relaxed = Settings(app_env="development", password_check_common=False, password_min_length=3, **base)
    assert relaxed.password_min_length == 3 and not relaxed.password_check_common
    assert relaxed.password_policy_problem() is None
    assert Settings(app_env="production", password_min_length=8, **base).password_policy_problem() is None


def test_an_http_app_with_a_relaxed_policy_refuses_to_start_outside_development() -> None:
    """The production check runs where the policy is applied: the HTTP apps' start."""
    import secrets
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in (*POLICY, "APP_ENV", "JWT_SECRET_FILE")}
    env.update(APP_ENV="production", JWT_SECRET=secrets.token_urlsafe(48), PASSWORD_MIN_LENGTH="3")
    proc = subprocess.run([sys.executable, "-c", "import functions.users.handler"],
                          cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "PASSWORD_MIN_LENGTH" in proc.stderr and "Traceback" not in proc.stderr
