"""One settings class read from the environment, so every function and the worker agree."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"


def running_in_lambda() -> bool:
    """Lambda sets this variable in every function environment."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_env: Literal["development", "test", "production"] = "development"

    database_url: str = "postgresql://postgres@127.0.0.1:5432/ticketing"
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
    # psycopg prepares after N runs; empty or "none" disables it (PgBouncer transaction
    # pooling, RDS Proxy connection sharing).
    db_prepare_threshold: int | None = 5

    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_ttl_seconds: int = Field(default=3600, ge=60)
    jwt_issuer: str = "ticketing-backend"

    # argon2id cost; tests lower it so fixtures that create many users stay fast.
    password_hash_time_cost: int = Field(default=3, ge=1)
    password_hash_memory_kib: int = Field(default=65536, ge=8)
    password_min_length: int = Field(default=3, ge=1)

    max_tickets_per_booking: int = Field(default=10, ge=1, description="default; events may override")
    # Booked plus actively held tickets one customer may have of one event (never below the
    # event's per-booking maximum); events may override. Twice a full booking: room for a
    # group and a second purchase, while one account cannot take a sale.
    max_tickets_per_customer: int = Field(default=20, ge=1, le=1_000_000)
    # Long-running servers coalesce concurrent bookings of one event into one transaction
    # (shared/coalescing.py); Lambda (one request per environment) never does.
    booking_coalesce: bool = True
    booking_batch_max: int = Field(default=128, ge=1, description="bookings per coalesced transaction")
    booking_lane_wait_seconds: float = Field(
        default=5.0, gt=0, description="a booking waiting this long for its turn gets 503 contention, unbooked"
    )

    # Seat holds and idempotency keys (booking depth).
    hold_ttl_seconds: int = Field(default=600, ge=1, description="default hold lifetime")
    hold_ttl_max_seconds: int = Field(default=3600, ge=1, le=86_400, description="events may override")
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, description="how long a key replays")
    # Longer than any booking can take, so a claim this old cannot still commit. Worst case
    # with the defaults: lane wait 5 s + a batch (pool 5 s + 2 statements of 10 s) + the
    # one-request path (pool 5 s + up to 3 claims, each statement, diagnosis and reclaim
    # bounded by 10 s) is about 150 s; 300 s leaves a margin for thread-pool waits.
    idempotency_lock_seconds: int = Field(default=300, ge=1)

    # Operations (issue 6): logs and rate limits. A limit is "COUNT/SECONDS".
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    rate_limit_enabled: bool = True
    rate_limit_key_prefix: str = "rl"
    rate_limit_login_per_ip: str = Field(default="30/60", pattern=r"^\d+/\d+$")
    rate_limit_login_per_account: str = Field(default="10/60", pattern=r"^\d+/\d+$")
    rate_limit_failed_login_per_account: str = Field(default="5/900", pattern=r"^\d+/\d+$")
    rate_limit_booking_per_user: str = Field(default="20/60", pattern=r"^\d+/\d+$")
    rate_limit_booking_per_ip: str = Field(default="300/60", pattern=r"^\d+/\d+$")
    # Client IP from X-Forwarded-For only behind this many trusted proxies (0: the peer).
    rate_limit_trusted_proxies: int = Field(default=0, ge=0)
    rate_limit_redis_timeout: float = Field(default=0.2, gt=0)

    # Notifications (issue 3): outbox publishing, the notify worker and its channels.
    notify_queue: str = "notify"
    notify_channel: str = Field(default="console", description="console | ses | module:attr")
    ses_sender: str = "no-reply@example.com"
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

    @field_validator("db_prepare_threshold", mode="before")
    @classmethod
    def _empty_means_never_prepare(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off"):
            return None
        return value

    @model_validator(mode="after")
    def _production_needs_real_secret(self) -> Settings:
        if self.app_env == "production" and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError("JWT_SECRET must be set in production")
        return self

    @property
    def pool_bounds(self) -> tuple[int, int]:
        if running_in_lambda():
            return 1, 1
        return min(self.db_pool_min, self.db_pool_max), self.db_pool_max


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # Values referenced as *_SECRET_ARN / *_SSM_PARAM come from AWS (boto3 only if set).
    from shared.aws_config import remote_overrides

    return Settings.model_validate(remote_overrides())
