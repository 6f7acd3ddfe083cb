"""Settings from Secrets Manager / SSM at cold start (moto), fetched once per container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from shared.platform import aws_config
from shared.platform.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
REF_VARS = [
    f"{field.upper()}{suffix}"
    for field in aws_config.REMOTE_FIELDS
    for suffix in (aws_config.SECRET_SUFFIX, aws_config.SSM_SUFFIX)
]


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clean caches and AWS env around a test, so other tests keep their own settings."""
    for name in [*REF_VARS, "DATABASE_HOST", "DATABASE_PORT", "DATABASE_NAME", "DATABASE_SSLMODE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws_config.remote_overrides.cache_clear()
    get_settings.cache_clear()
    yield
    aws_config.remote_overrides.cache_clear()
    get_settings.cache_clear()


@mock_aws
def test_rds_secret_and_ssm_jwt_feed_settings(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm = boto3.client("secretsmanager")
    arn = sm.create_secret(
        Name="ticketing/db",
        SecretString=json.dumps(
            {"username": "app", "password": "p@ss/word", "host": "db.internal", "port": 5432}
        ),
    )["ARN"]
    boto3.client("ssm").put_parameter(
        Name="/ticketing/jwt", Value="jwt-from-ssm", Type="SecureString"
    )
    monkeypatch.setenv("DATABASE_URL_SECRET_ARN", arn)
    monkeypatch.setenv("DATABASE_HOST", "proxy.example.internal")  # RDS Proxy endpoint wins
    monkeypatch.setenv("DATABASE_NAME", "ticketing")
    monkeypatch.setenv("DATABASE_SSLMODE", "require")
    monkeypatch.setenv("JWT_SECRET_SSM_PARAM", "/ticketing/jwt")

    settings = get_settings()
    assert settings.database_url == (
        "postgresql://app:p%40ss%2Fword@proxy.example.internal:5432/ticketing?sslmode=require"
    )
    assert settings.jwt_secret.get_secret_value() == "jwt-from-ssm"

    # Once per container: deleting the values afterwards changes nothing for this process.
    sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    boto3.client("ssm").delete_parameter(Name="/ticketing/jwt")
    get_settings.cache_clear()
    assert get_settings().jwt_secret.get_secret_value() == "jwt-from-ssm"


@mock_aws
def test_plain_url_secret_and_secretsmanager_jwt(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm = boto3.client("secretsmanager")
    db = sm.create_secret(Name="db-url", SecretString="postgresql://u:p@h:6432/x")["ARN"]
    jwt = sm.create_secret(Name="jwt", SecretString="  s3cret \n")["ARN"]
    monkeypatch.setenv("DATABASE_URL_SECRET_ARN", db)
    monkeypatch.setenv("JWT_SECRET_SECRET_ARN", jwt)
    settings = get_settings()
    assert settings.database_url == "postgresql://u:p@h:6432/x"
    assert settings.jwt_secret.get_secret_value() == "s3cret"


@mock_aws
def test_missing_secret_fails_loudly_without_leaking(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET_SSM_PARAM", "/does/not/exist")
    with pytest.raises(aws_config.RemoteConfigError, match="/does/not/exist"):
        get_settings()


def test_both_references_for_one_field_is_an_error(fresh_settings: None) -> None:
    env = {"JWT_SECRET_SECRET_ARN": "arn:x", "JWT_SECRET_SSM_PARAM": "/x"}
    with pytest.raises(aws_config.RemoteConfigError, match="only one"):
        aws_config.references(env)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "neither"),
        ('{"password": "x", "host": "h"}', "username"),
        ('{"username": "u", "password": "x"}', "DATABASE_HOST"),
        ("[1]", "object"),
    ],
)
def test_bad_database_secrets_are_explained(raw: str, message: str) -> None:
    with pytest.raises(aws_config.RemoteConfigError, match=message):
        aws_config.database_url_from_secret(raw, environ={})


def _imports_after_get_settings(extra_env: dict[str, str]) -> list[str]:
    code = (
        "import sys\n"
        "from shared.platform.settings import get_settings\n"
        "try:\n    get_settings()\nexcept Exception as exc:\n    print('error', type(exc).__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'boto3', 'botocore'})[:1])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in REF_VARS}
    env.update(extra_env)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout
    return out.split()


def test_boto3_not_imported_without_references() -> None:
    assert _imports_after_get_settings({})[-1] == "[]"


def test_boto3_imported_when_a_reference_is_set() -> None:
    # No credentials/endpoint: the fetch fails, but only after boto3 was imported for it.
    out = _imports_after_get_settings(
        {"JWT_SECRET_SSM_PARAM": "/x", "AWS_DEFAULT_REGION": "eu-west-1",
         "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
         "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    )
    assert "RemoteConfigError" in out
    assert out[-1] != "[]"
