"""Settings values held in AWS Secrets Manager or SSM Parameter Store, read once per container.

A deployed function gets a reference instead of a plain value, e.g.::

    DATABASE_URL_SECRET_ARN=arn:aws:secretsmanager:...   (RDS-style JSON or a plain URL)
    JWT_SECRET_SSM_PARAM=/ticketing/prod/jwt-secret      (SecureString, decrypted)

For each setting in ``REMOTE_FIELDS`` the variables ``<NAME>_SECRET_ARN`` (Secrets Manager)
and ``<NAME>_SSM_PARAM`` (Parameter Store) are recognised. The values are fetched at the
first ``get_settings()`` of a container (the cold start) and cached for its lifetime.
boto3 is imported only when such a variable is set, so a function configured with plain
values never pays for importing it.

An RDS or RDS Proxy secret holds ``username``/``password`` (and the instance's ``host``).
Behind RDS Proxy the function must connect to the proxy endpoint instead, so
``DATABASE_HOST`` / ``DATABASE_PORT`` / ``DATABASE_NAME`` / ``DATABASE_SSLMODE`` override
the secret's parts when the URL is built.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any
from urllib.parse import quote

# Settings fields that may come from AWS (field name; env prefix is its upper-case form).
REMOTE_FIELDS = ("database_url", "jwt_secret", "redis_url")

SECRET_SUFFIX = "_SECRET_ARN"
SSM_SUFFIX = "_SSM_PARAM"


class RemoteConfigError(RuntimeError):
    """A configured secret or parameter could not be read or understood."""


def references(environ: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Map field -> ("secretsmanager"|"ssm", id) for every reference set in the environment."""
    env = os.environ if environ is None else environ
    found: dict[str, tuple[str, str]] = {}
    for field in REMOTE_FIELDS:
        prefix = field.upper()
        secret = env.get(prefix + SECRET_SUFFIX, "").strip()
        param = env.get(prefix + SSM_SUFFIX, "").strip()
        if secret and param:
            raise RemoteConfigError(f"set only one of {prefix}{SECRET_SUFFIX} and {prefix}{SSM_SUFFIX}")
        if secret:
            found[field] = ("secretsmanager", secret)
        elif param:
            found[field] = ("ssm", param)
    return found


def database_url_from_secret(raw: str, environ: dict[str, str] | None = None) -> str:
    """A plain URL, or an RDS-style JSON secret combined with the DATABASE_* overrides."""
    env = os.environ if environ is None else environ
    text = raw.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return text
    try:
        data: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise RemoteConfigError("database secret is neither a postgresql:// URL nor JSON") from exc
    if not isinstance(data, dict):
        raise RemoteConfigError("database secret JSON must be an object")
    for key in ("url", "database_url"):
        if isinstance(data.get(key), str):
            return str(data[key])
    try:
        user, password = str(data["username"]), str(data["password"])
    except KeyError as exc:
        raise RemoteConfigError(f"database secret has no {exc.args[0]!r}") from exc
    host = env.get("DATABASE_HOST") or data.get("host")
    if not host:
        raise RemoteConfigError("no database host: set DATABASE_HOST (the RDS Proxy endpoint)")
    port = env.get("DATABASE_PORT") or data.get("port") or 5432
    name = env.get("DATABASE_NAME") or data.get("dbname") or "ticketing"
    url = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{name}"
    sslmode = env.get("DATABASE_SSLMODE")
    return f"{url}?sslmode={sslmode}" if sslmode else url


def _fetch(kind: str, ident: str) -> str:
    import boto3  # only here: functions without references never import it

    try:
        if kind == "secretsmanager":
            secret = boto3.client("secretsmanager").get_secret_value(SecretId=ident)
            value = secret.get("SecretString")
        else:
            param = boto3.client("ssm").get_parameter(Name=ident, WithDecryption=True)
            value = param["Parameter"]["Value"]
    except Exception as exc:  # botocore errors: say which reference failed, never the value
        raise RemoteConfigError(f"cannot read {kind} {ident}: {type(exc).__name__}") from exc
    if not isinstance(value, str) or not value:
        raise RemoteConfigError(f"{kind} {ident} holds no string value")
    return value


@lru_cache(maxsize=1)
def remote_overrides() -> dict[str, str]:
    """Settings values fetched from AWS, once per process; empty when nothing is configured."""
    refs = references()
    values: dict[str, str] = {}
    for field, (kind, ident) in refs.items():
        raw = _fetch(kind, ident)
        values[field] = database_url_from_secret(raw) if field == "database_url" else raw.strip()
    return values
