"""One settings class read from the environment, so every function and the worker agree."""

from __future__ import annotations

import os
import re
import secrets
import sys
from email.utils import parseaddr
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values this repository itself has used or shows as a JWT secret: refused everywhere but
# explicit development, whatever their length. Keep in one place (tests/platform/test_secrets.py
# proves every candidate string in the repository is refused).
REFUSED_JWT_SECRETS = frozenset({
    "dev-only-insecure-jwt-secret-change-me",
    "change-me-to-a-long-random-value",
    "change-me", "changeme", "secret", "jwt-secret", "test-secret", "package-test",
})
# A secret containing one of these words was typed by a person, not generated (a random
# 32-byte value contains none of them but by a chance far below one in a billion).
_PLACEHOLDER_WORDS = ("secret", "password", "change-me", "changeme", "change_me", "placeholder", "example", "insecure",
                      "dev-only", "replace-me", "your-secret", "not-a-secret", "secret-here")
JWT_SECRET_MIN_BYTES = 32
_MIN_DISTINCT_CHARS = 10
# What a generator gives (base64 or base64url, padding only at the end): no spaces, URLs or
# the punctuation of code and prose, so no sentence, path or line of this repository fits.
_GENERATED_SHAPE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_CLASSES = (re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]"))
# Words joined into a path or a slug (``a-Long-Path/With/Mixed-Case``): typed, not generated.
_WORDY = re.compile(r"(?:[A-Za-z][a-z]{2,}[-/_.+]){3}")
# What ``openssl rand -hex 32`` prints: 32 random bytes as 64 hex digits (one case).
_GENERATED_HEX = re.compile(r"[0-9a-f]{64,}|[0-9A-F]{64,}")


def generate_jwt_secret() -> str:
    """48 random bytes, URL-safe base64 (64 characters), drawn until the rules accept them:
    one draw in ~50,000 has no digit and would be refused."""
    while True:
        secret = secrets.token_urlsafe(48)
        if jwt_secret_problem(secret) is None:
            return secret


class InsecureSecretError(ValueError):
    """The JWT secret is missing or guessable; the process must not sign or accept tokens."""


def jwt_secret_problem(secret: str) -> str | None:
    """Why ``secret`` must not sign tokens, or None when it is acceptable."""
    if not secret:
        return "JWT_SECRET is not set"
    if len(secret.encode("utf-8", "surrogatepass")) < JWT_SECRET_MIN_BYTES:
        return f"JWT_SECRET is shorter than {JWT_SECRET_MIN_BYTES} bytes"
    lowered = secret.lower()
    if lowered in REFUSED_JWT_SECRETS or any(word in lowered for word in _PLACEHOLDER_WORDS):
        return "JWT_SECRET is a placeholder value"
    if len(set(secret)) < _MIN_DISTINCT_CHARS or secret in (secret + secret)[1:-1]:  # or a repeated run
        return "JWT_SECRET has too little variety to be random"
    if _GENERATED_HEX.fullmatch(secret):
        return None
    if not _GENERATED_SHAPE.fullmatch(secret):
        return (
            "JWT_SECRET must be generated: base64 (letters, digits and + / _ - only) or 64+ hex digits "
            "(no spaces, URLs, punctuation)"
        )
    if _WORDY.search(secret):
        return "JWT_SECRET reads like words or a path, not a generated secret"
    if not all(cls.search(secret) for cls in _CLASSES):
        return "JWT_SECRET must mix upper- and lower-case letters and digits, as a generated one does"
    return None


# Generated once per process when explicit development mode has no secret: never a constant.
_process_dev_secret = generate_jwt_secret()


# Domains reserved for documentation and testing (RFC 2606, RFC 6761): SES can deliver no
# mail from them, so a sender there means every notification is retried, then dead-lettered.
_RESERVED_MAIL_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_MAIL_TLDS = ("example", "invalid", "test", "localhost")


def ses_sender_problem(sender: str) -> str | None:
    """Why ``sender`` cannot send through SES, or None (accepts ``Name <addr@domain>``)."""
    if not sender.strip():
        return "SES_SENDER is not set"
    _, address = parseaddr(sender)
    local, at, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not (local and at and "." in domain):
        return f"SES_SENDER {sender!r} is not an email address"
    reserved = domain.rsplit(".", 1)[-1] in _RESERVED_MAIL_TLDS or any(
        domain == name or domain.endswith("." + name) for name in _RESERVED_MAIL_DOMAINS
    )
    if reserved:
        return f"SES_SENDER {sender!r} is in the reserved domain {domain}, which SES cannot send from"
    return None


def database_url_with_password_file(url: str, password_file: str) -> str:
    """``url`` (a URL or key=value conninfo) with the password read from ``password_file``."""
    from psycopg.conninfo import make_conninfo

    try:
        password = Path(password_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"DATABASE_PASSWORD_FILE {password_file} cannot be read ({exc.strerror})") from exc
    if not password:
        raise ValueError(f"DATABASE_PASSWORD_FILE {password_file} is empty")
    return make_conninfo(url, password=password)


def running_in_lambda() -> bool:
    """Lambda sets this variable in every function environment."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Unset means production: development conveniences (a random per-process JWT secret,
    # the dev stack's weak demo passwords) are switched on explicitly, never by omission.
    app_env: Literal["development", "test", "production"] = "production"

    database_url: str = "postgresql://postgres@127.0.0.1:5432/ticketing"
    # A file holding the database password (compose generates one into a volume): put into
    # DATABASE_URL when the settings load, so the URL itself carries no secret and every
    # consumer of database_url (pool, migrate, readiness) gets it with no code of its own.
    database_password_file: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Pool: Lambda handles one request per environment, so one connection is enough there.
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=20, ge=1)
    db_pool_timeout: float = Field(default=5.0, gt=0, description="seconds to wait for a connection")
    db_connect_timeout: int = Field(default=5, ge=1)
    db_check_after_idle: float = Field(
        default=1.0, ge=0, description="probe a pooled connection idle this long before lending it"
    )
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    # Client-side bound on each database step (wait for a connection, probe, statements,
    # commit): the server's statement_timeout never fires on a server that stopped
    # answering. Above statement_timeout, so a slow statement on a live server ends with
    # the server's own definite error, never a client cut whose outcome is unknown.
    db_request_deadline_seconds: float = Field(default=12.0, gt=0)
    # TCP: notice a dead host or a broken network (not a stopped process on a live host).
    db_keepalives_idle: int = Field(default=30, ge=1, description="seconds idle before probing")
    db_keepalives_interval: int = Field(default=10, ge=1)
    db_keepalives_count: int = Field(default=3, ge=1)
    db_tcp_user_timeout_ms: int = Field(default=15_000, ge=0, description="unacknowledged data; 0: OS default")
    # psycopg prepares after N runs; empty or "none" disables it (PgBouncer transaction
    # pooling, RDS Proxy connection sharing).
    db_prepare_threshold: int | None = 5
    # Send statement_timeout as a startup option of each connection. PgBouncer before 1.20
    # refuses any connection carrying one ("unsupported startup parameter: options"):
    # behind it set this false and give the role the timeout instead
    # (ALTER ROLE ... SET statement_timeout = '10s'), or let the pooler set it.
    db_startup_options: bool = True

    # No default: JWT_SECRET, or JWT_SECRET_FILE (a mounted file), or JWT_SECRET_SSM_PARAM /
    # JWT_SECRET_SECRET_ARN (shared/platform/aws_config.py). Read it through signing_secret().
    jwt_secret: SecretStr = SecretStr("")
    jwt_secret_file: str = ""
    _signing_secret: str | None = PrivateAttr(default=None)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    # Access tokens are short: revocation (shared/accounts/sessions.py) is enforced through Redis,
    # and when Redis is unreachable this lifetime bounds how long a revoked token works.
    jwt_ttl_seconds: int = Field(default=900, ge=60, le=86_400, description="access token lifetime")
    jwt_issuer: str = "ticketing-backend"
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300, description="clock skew tolerated on iat/exp")
    refresh_token_ttl_seconds: int = Field(default=14 * 86_400, ge=300, description="refresh token lifetime")
    session_redis_timeout: float = Field(default=0.2, gt=0, description="revocation check, seconds")

    # argon2id cost; tests lower it so fixtures that create many users stay fast.
    password_hash_time_cost: int = Field(default=3, ge=1)
    password_hash_memory_kib: int = Field(default=65536, ge=8)
    password_min_length: int = Field(default=8, ge=1)
    # Refuse the 30,000 most common passwords. Only a development stack may turn it off
    # (local/stack.py does, with PASSWORD_MIN_LENGTH=3, for the README's password "123").
    password_check_common: bool = True
    # Each hash holds PASSWORD_HASH_MEMORY_KIB: at most this many run at once per process
    # (peak extra memory = concurrency x memory), at most PASSWORD_HASH_QUEUE wait, each for
    # at most PASSWORD_HASH_WAIT_SECONDS; the rest get 503 `busy` with Retry-After.
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_queue: int = Field(default=16, ge=0)
    password_hash_wait_seconds: float = Field(default=2.0, gt=0)

    max_tickets_per_booking: int = Field(default=10, ge=1, description="default; events may override")
    # Booked plus actively held tickets one customer may have of one event (never below the
    # event's per-booking maximum); events may override. Twice a full booking: room for a
    # group and a second purchase, while one account cannot take a sale.
    max_tickets_per_customer: int = Field(default=20, ge=1, le=1_000_000)
    # An event's available tickets are spread over this many rows (shared/ticketing/inventory.py),
    # fixed when it is created: concurrent grants each take an unlocked row instead of queueing
    # on one row's lock (the Lambda path cannot coalesce). Small events get fewer rows, none
    # with fewer than INVENTORY_SHARD_MIN_TICKETS (an event of 10 tickets has one row), so a
    # sale does not end in many near-empty rows that send requests to the exact, all-rows path.
    inventory_shards: int = Field(default=16, ge=1, le=256, description="rows per event, at most")
    inventory_shard_min_tickets: int = Field(default=20, ge=1, description="tickets per row, at least")
    # Long-running servers coalesce concurrent bookings of one event into one transaction
    # (shared/ticketing/coalescing.py); Lambda (one request per environment) never does.
    booking_coalesce: bool = True
    booking_batch_max: int = Field(default=128, ge=1, description="bookings per coalesced transaction")
    booking_lane_wait_seconds: float = Field(
        default=5.0, gt=0, description="a booking waiting this long for its turn gets 503 contention, unbooked"
    )

    # Seat holds and idempotency keys (booking depth).
    hold_ttl_seconds: int = Field(default=600, ge=1, description="default hold lifetime")
    hold_ttl_max_seconds: int = Field(default=3600, ge=1, le=86_400, description="events may override")
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, description="how long a key replays")
    # Longer than any booking can take, so a lease this old cannot still commit. Worst case
    # with the defaults: lane wait 5 s + a batch (one step, DB_REQUEST_DEADLINE_SECONDS
    # 12 s) + the one-request path (one step, 12 s) is about 30 s; 300 s leaves a wide
    # margin. One exception no client bound covers: a statement cut off at its deadline by
    # a server that stopped answering runs when that server resumes, however late.
    idempotency_lock_seconds: int = Field(default=300, ge=1)

    # Request bodies above this many bytes get 413 before they are parsed (shared/web/body_limit.py).
    # The largest legitimate body (a registration with the longest email, password and name,
    # every character \u-escaped) is under 10 KiB; 64 KiB leaves room for new fields, and a
    # JSON body this size parses into a few MB at most (30 MB took a process to 855 MB).
    max_body_bytes: int = Field(default=65_536, ge=1)
    # A body announced but trickled or stalled (slowloris) is cut off after this: 408.
    body_read_timeout_seconds: float = Field(default=10.0, gt=0)
    rate_limit_refresh_per_ip: str = Field(default="60/60", pattern=r"^\d+/\d+$")

    # Operations (issue 6): logs and rate limits. A limit is "COUNT/SECONDS".
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    rate_limit_enabled: bool = True
    rate_limit_key_prefix: str = "rl"
    rate_limit_login_per_ip: str = Field(default="30/60", pattern=r"^\d+/\d+$")
    rate_limit_login_per_account: str = Field(default="10/60", pattern=r"^\d+/\d+$")
    # Failed logins: tight per (account, address); looser per account from everywhere, and
    # an address that signed in to the account lately is exempt from that one (see ratelimit).
    rate_limit_failed_login_per_account_ip: str = Field(default="5/900", pattern=r"^\d+/\d+$")
    rate_limit_failed_login_per_account: str = Field(default="20/900", pattern=r"^\d+/\d+$")
    rate_limit_login_known_ip_seconds: int = Field(default=30 * 86_400, ge=60)
    # Redis unreachable: the same limits per process, over at most this many keys.
    rate_limit_local_max_keys: int = Field(default=100_000, ge=100)
    rate_limit_booking_per_user: str = Field(default="20/60", pattern=r"^\d+/\d+$")
    rate_limit_booking_per_ip: str = Field(default="300/60", pattern=r"^\d+/\d+$")
    rate_limit_register_per_ip: str = Field(default="20/600", pattern=r"^\d+/\d+$")
    # Invalid access codes (a booking, a hold, an event read) per client IP and per customer,
    # per ten minutes: codes cannot be guessed faster than this (shared/web/ratelimit.py).
    access_code_attempts: int = Field(default=10, ge=1)
    # Replaced by TRUSTED_PROXIES; a hop count trusted whoever connected. Refused if set.
    rate_limit_trusted_proxies: int = Field(default=0, ge=0)
    rate_limit_redis_timeout: float = Field(default=0.2, gt=0)
    # Proxies allowed to say who the client is (X-Forwarded-For): comma-separated IPs or
    # CIDRs; empty trusts none. The one rule for rate limits and logs (shared/web/client_ip.py).
    trusted_proxies: str = ""
    # /metrics answers only `Authorization: Bearer <token>`; no token: 404 (not served).
    # METRICS_TOKEN_FILE names a file holding it (read per scrape, so it can rotate).
    metrics_token: str = ""
    metrics_token_file: str = ""

    # Notifications (issue 3): outbox publishing, the notify worker and its channels.
    notify_queue: str = "notify"
    notify_channel: str = Field(default="console", description="console | ses | module:attr")
    # No default: the SES-verified sender of your own domain (the worker refuses to start
    # with NOTIFY_CHANNEL=ses without one, see require_safe_worker_start).
    ses_sender: str = ""
    aws_region: str = "us-east-1"
    # background: a publisher thread batches pushes (long-running processes); inline: pushed
    # before the request answers (always the case under Lambda).
    outbox_publish: Literal["background", "inline"] = "background"
    outbox_publish_timeout: float = Field(default=0.25, gt=0, description="seconds, per Redis call")
    outbox_publish_pause: float = Field(default=5.0, ge=0, description="skip Redis after a failure")
    outbox_relay_grace: float = Field(default=2.0, ge=0, description="relay skips younger rows")
    relay_interval: float = Field(default=10.0, gt=0)
    relay_batch_size: int = Field(default=500, ge=1)
    notify_max_attempts: int = Field(default=6, ge=1)
    notify_retry_base: float = Field(default=2.0, ge=0, description="first backoff, seconds")
    notify_retry_max: float = Field(default=300.0, ge=0)
    notify_fanout_chunk: int = Field(default=500, ge=1, description="users per sub-task")
    notify_fanout_page: int = Field(default=100, ge=1, description="users per query in a chunk")
    # Longer than any notify task runs (a fan-out chunk over SES included), shorter than
    # anyone would wait for a lost confirmation.
    notify_visibility_timeout: int = Field(default=900, ge=1)
    notify_restore_interval: int = Field(default=30, ge=1, description="seconds between unacked sweeps")
    # Notification work waits on the database and the mail service: threads, one process,
    # so the worker's Prometheus counters live in one registry.
    notify_worker_concurrency: int = Field(default=8, ge=1)
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535, description="0: no metrics server")
    # The worker's /metrics has no token: loopback unless a deployment opens it on purpose
    # where only its Prometheus can reach it (compose sets 0.0.0.0 on its private network).
    worker_metrics_addr: str = "127.0.0.1"

    # Email verification (security item 9). Unset: required unless APP_ENV is explicitly
    # development; either value may be set explicitly. See verified_email_required.
    require_verified_email: bool | None = None
    email_verification_ttl_seconds: int = Field(default=86_400, ge=60, description="token lifetime")
    email_verification_url: str = Field(
        default="",
        description="https link with {token} in its #fragment mailed for verification; empty: the code only",
    )
    rate_limit_verification_resend: str = Field(default="3/3600", pattern=r"^\d+/\d+$")
    rate_limit_verify_per_ip: str = Field(default="30/60", pattern=r"^\d+/\d+$")

    @field_validator("db_prepare_threshold", mode="before")
    @classmethod
    def _empty_means_never_prepare(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off"):
            return None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        trusted_networks(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("rate_limit_trusted_proxies")
    @classmethod
    def _hop_count_is_gone(cls, value: int) -> int:
        if value:
            raise ValueError(
                "RATE_LIMIT_TRUSTED_PROXIES (a hop count) was replaced by TRUSTED_PROXIES: "
                "the proxies' IP addresses or CIDRs, comma-separated"
            )
        return value

    @field_validator("email_verification_url")
    @classmethod
    def _verification_url_keeps_the_token_private(cls, value: str, info: ValidationInfo) -> str:
        problem = verification_url_problem(value, info.data.get("app_env", "production"))
        if problem:
            raise ValueError(f"EMAIL_VERIFICATION_URL {problem}")
        return value

    @field_validator("worker_metrics_addr")
    @classmethod
    def _metrics_addr_is_an_ip(cls, value: str) -> str:
        from ipaddress import ip_address

        try:
            ip_address(value)
        except ValueError as exc:
            raise ValueError(f"WORKER_METRICS_ADDR must be an IP address, not {value!r}") from exc
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_is_long(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("METRICS_TOKEN must be at least 16 characters (or empty: /metrics off)")
        return value

    @model_validator(mode="after")
    def _database_password_from_file(self) -> Settings:
        if self.database_password_file:
            self.database_url = database_url_with_password_file(
                self.database_url, self.database_password_file
            )
        return self

    def signing_secret(self) -> str:
        """The JWT secret, validated; raises InsecureSecretError outside explicit development.

        Explicit development without a secret gets a random per-process one, so no string
        written anywhere can sign a token it accepts. Resolved once per settings object.
        """
        if self._signing_secret is None:
            self._signing_secret = self._resolve_signing_secret()
        return self._signing_secret

    def _resolve_signing_secret(self) -> str:
        secret = self.jwt_secret.get_secret_value()
        if not secret and self.jwt_secret_file:
            try:
                secret = Path(self.jwt_secret_file).read_text().strip()
            except OSError as exc:
                raise InsecureSecretError(
                    f"JWT_SECRET_FILE {self.jwt_secret_file} cannot be read ({exc.strerror})"
                ) from exc
        if self.app_env == "development":
            # Lenient, but never a value published here (an old `.env` copied from the
            # repository's example must not keep signing tokens).
            if secret.lower() in REFUSED_JWT_SECRETS:
                raise InsecureSecretError("JWT_SECRET is a placeholder value")
            return secret or _process_dev_secret
        problem = jwt_secret_problem(secret)
        if problem:
            raise InsecureSecretError(problem)
        return secret

    def password_policy_problem(self) -> str | None:
        """Why the registration policy is too weak for this environment, or None.

        Only an explicit development stack may relax it (``dev.py up`` does, for the
        README's password ``123``); the test suite's own mode may too.
        """
        if self.app_env != "production":
            return None
        if not self.password_check_common:
            return "PASSWORD_CHECK_COMMON=false is for development only"
        if self.password_min_length < 8:
            return "PASSWORD_MIN_LENGTH below 8 is for development only"
        return None

    @property
    def verified_email_required(self) -> bool:
        """Mail other than the verification goes only to verified addresses (safe unless dev)."""
        if self.require_verified_email is not None:
            return self.require_verified_email
        return self.app_env != "development"

    @property
    def pool_bounds(self) -> tuple[int, int]:
        if running_in_lambda():
            return 1, 1
        return min(self.db_pool_min, self.db_pool_max), self.db_pool_max


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def verification_url_problem(template: str, app_env: str) -> str | None:
    """Why a verification link template would leak its token, or None if it is safe.

    The token must sit in the URL fragment (``#...{token}``): browsers never send a
    fragment to a server, so it stays out of access logs, proxies and Referer headers.
    The link must be https (plain http only to this machine, in explicit development).
    """
    if not template:
        return None
    if any(c.isspace() for c in template):
        return "must not contain whitespace"
    head, _, fragment = template.partition("#")
    if "{token}" not in fragment or "{token}" in head:
        return ("must carry {token} in its #fragment, never in the path or query "
                "(e.g. https://tickets.example/verify#token={token})")
    parts = urlsplit(head)
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in _LOOPBACK and app_env == "development":
        return None
    return ("must be an https:// link (http:// only to localhost or 127.0.0.1, and only with "
            "APP_ENV=development)")


def require_safe_start() -> None:
    """At an HTTP app's start: a usable secret and password policy, or a clear message and exit 2.

    Only the HTTP apps sign or verify tokens and register users; migrations, the relay and
    the worker touch neither, so they start without a secret.
    """
    settings = get_settings()
    try:
        settings.signing_secret()
    except InsecureSecretError as exc:
        _refuse_to_start(
            f"{exc}.\n"
            "  Set JWT_SECRET (or JWT_SECRET_FILE) to at least 32 random bytes, e.g.\n"
            "    python3 -c 'import secrets; print(secrets.token_urlsafe(48))'\n"
            "  or set APP_ENV=development explicitly for a throwaway per-process secret."
        )
    problem = settings.password_policy_problem()
    if problem:
        _refuse_to_start(f"{problem}: unset it outside development.")


def require_safe_worker_start() -> None:
    """At the notify worker's start: a channel that can deliver, or one line and exit 2.

    An SES sender that is missing or in a reserved domain fails every mail only once it
    is sent (retried, then dead-lettered), so it is refused before the worker consumes.
    """
    settings = get_settings()
    if settings.notify_channel == "ses":
        problem = ses_sender_problem(settings.ses_sender)
        if problem:
            _refuse_to_start(f"{problem} (NOTIFY_CHANNEL=ses): set SES_SENDER to an SES-verified "
                             "address of your own domain.")


def _refuse_to_start(problem: str) -> NoReturn:
    print(f"ticketing: refusing to start (APP_ENV={get_settings().app_env}): {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # Values referenced as *_SECRET_ARN / *_SSM_PARAM come from AWS (boto3 only if set).
    from shared.platform.aws_config import remote_overrides

    return Settings.model_validate(remote_overrides())


Network = IPv4Network | IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(spec: str) -> tuple[Network, ...]:
    """Parse ``TRUSTED_PROXIES`` (comma-separated IPs or CIDRs); ValueError on a bad entry."""
    networks = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an IP address or CIDR") from exc
    return tuple(networks)
