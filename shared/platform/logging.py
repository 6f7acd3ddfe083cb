"""JSON logs, one object per line, with the request's correlation id and no secrets.

Every function, the container API and the worker call ``configure_logging()``; after it,
any ``logging`` call anywhere (ours, uvicorn's, Celery's) comes out as one JSON line on
stdout carrying the ids bound in the current context (``bind_context``): the request id
for a request, the task name and delivery key for a notification.

Redaction happens twice, because one layer alone leaks: structured fields whose *name*
says password/token/secret/authorization are replaced, and the final text (message,
exception, traceback) is scrubbed of bearer tokens, JWTs, ``password=...`` pairs and
credentials inside URLs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from types import MappingProxyType
from typing import Any

REDACTED = "[REDACTED]"

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)

# Field names whose values are never logged, whatever the value looks like.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authorization|api[-_]?key|cookie|credential|"
    r"private[-_]?key|signature",
    re.IGNORECASE,
)
# Secrets recognisable by their shape inside free text.
_SECRET_TEXT = [
    # JSON Web Tokens (header.payload.signature, base64url)
    (re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]{5,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w\-.~+/=]+"), rf"\1 {REDACTED}"),
    # key=value / key: value / "key": "value" pairs named like a secret
    (
        re.compile(
            r"""(?ix)
            (["']?\b[\w-]*(?:password|passwd|secret|token|api[-_]?key)[\w-]*["']?
             \s*[=:]\s*)
            ("[^"]*"|'[^']*'|[^\s,;&}\]]+)"""
        ),
        rf"\1{REDACTED}",
    ),
    # scheme://user:password@host
    (re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@"), rf"\1{REDACTED}@"),
]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


# One cheap scan decides whether the four patterns need to run at all (most lines: no).
_MAYBE_SECRET = re.compile(r"eyJ|(?i:bearer|basic|pass|secret|token|api[-_]?key)|://")


# Every redaction needs a secret-named key or a secret-shaped value, and both appear
# verbatim in the JSON line: if none of these words (a superset of what _SECRET_KEY and
# _MAYBE_SECRET match, lowercased) is in the line, nothing in it needs redacting.
_SENSITIVE_WORDS = (
    "eyj", "bearer", "basic", "pass", "secret", "token", "api", "://",
    "authorization", "cookie", "credential", "private", "signature",
)


def _maybe_sensitive(line: str) -> bool:
    lowered = line.lower()
    return any(word in lowered for word in _SENSITIVE_WORDS)


def redact_text(text: str) -> str:
    """Scrub secrets recognisable by their shape from free text."""
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


@lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Field names repeat on every line (method, route, status...): decide each once.
    return bool(_SECRET_KEY.search(key))


_PLAIN = (bool, int, float, type(None))


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-named fields replaced and strings scrubbed.

    Runs on every log line (a request line per booking), so the common types are
    tested first and by exact type.
    """
    if key and _is_secret_key(key):
        return REDACTED
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [redact(v) for v in value]
    if isinstance(value, str):  # a str subclass
        return redact_text(value)
    if isinstance(value, _PLAIN):  # an int or bool subclass (enums)
        return value
    return redact_text(str(value))


def current_context() -> Mapping[str, Any]:
    """Fields bound for the current request or task."""
    return _context.get()


@contextmanager
def bind_context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (request id, task, ...)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def set_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind fields until ``reset_context(token)``: for code that cannot use a with-block."""
    return _context.set({**_context.get(), **fields})


def reset_context(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, extras."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text

    def _timestamp(self, record: logging.LogRecord) -> str:
        # Lines come many per second (one per request): format each second once.
        # Threads share the formatter: one read of the pair, one write of a new pair.
        second, cached = int(record.created), self._second
        if second != cached[0]:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(current_context())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["error"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        try:
            text = json.dumps(entry, ensure_ascii=False)  # plain JSON types only: the common line
        except (TypeError, ValueError):
            text = None  # sets, UUIDs, non-str keys...: the full path renders them
        if text is not None and not _maybe_sensitive(text):
            return text  # no secret-like word in any key or value: nothing to redact
        return json.dumps(redact(entry), default=str, ensure_ascii=False)


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (Lambda and test captures swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


# Logger names: every module logs through ``logging.getLogger(__name__)``, so a line's
# ``logger`` field is the module that wrote it (``shared.web.telemetry``,
# ``functions.notify.tasks``) and a level can be set for a whole package by its prefix
# (``logging.getLogger("functions.notify").setLevel(...)``). The only levels pinned here are
# the root's (LOG_LEVEL) and the third-party ones below.
def configure_logging(level: str | None = None) -> None:
    """Route every logger through one JSON handler on stdout (idempotent).

    Replaces the root handlers, including the one the Lambda Python runtime installs,
    so a function's lines are JSON too. Calling it again re-installs the handler if
    something (Celery's root-logger hijack, ``basicConfig``) replaced it.
    """
    if level is None:
        from shared.platform.settings import get_settings

        level = get_settings().log_level
    root = logging.getLogger()
    root.setLevel(level)
    quiet_third_party()
    if any(isinstance(h, StdoutHandler) for h in root.handlers):
        return
    for handler in list(root.handlers):
        if not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    # Our per-request line replaces uvicorn's access log; its other lines come through root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = name != "uvicorn.access"
    # Mangum logs its own "POST /path 201" per invocation: the request line already says it.
    logging.getLogger("mangum.http").setLevel(logging.WARNING)


# Libraries whose DEBUG/INFO lines carry whole requests, responses or message bodies: an
# SES SendEmail request holds the mail (a verification token), a Celery task line its
# arguments and result, an HTTP client its URLs and headers. Our redactor only knows
# secrets by name or shape, so these never log below WARNING, whatever LOG_LEVEL says;
# their warnings and errors (retries, connection failures) still come through.
QUIET_LOGGERS = (
    "botocore", "boto3", "s3transfer", "urllib3", "aiobotocore",
    "httpx", "httpcore", "requests",
    "kombu", "amqp", "redis",
    "celery.worker.strategy", "celery.worker.request", "celery.app.trace",
    "celery.worker.consumer", "celery.beat",
)


def quiet_third_party() -> None:
    """Pin the chatty third-party loggers at WARNING or above (see QUIET_LOGGERS)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (0) inherits LOG_LEVEL: pin it
            logger.setLevel(logging.WARNING)
