"""Where a notification goes: the console (default) or email through Amazon SES.

``NOTIFY_CHANNEL`` picks one: ``console``, ``ses``, or ``package.module:attribute`` naming
a channel object (or a zero-argument factory) for anything else.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from shared.platform.settings import get_settings, ses_sender_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Email:
    recipient: str
    subject: str
    body: str


class Channel(Protocol):
    name: str
    # How many sends a fan-out may commit together. A worker killed mid-commit resends
    # that many at most; a slow channel (SES) gains nothing from more than 1.
    sends_per_commit: int

    def send(self, email: Email) -> None:
        """Deliver or raise; raising makes the task retry."""


class ConsoleChannel:
    name = "console"
    sends_per_commit = 100  # a log line: microseconds, so the commit is what costs

    def send(self, email: Email) -> None:
        # The body is the local developer's mailbox (the verification code is in it); any
        # other environment logs no body, so logs never hold a usable token.
        if get_settings().app_env == "development":
            log.info("✉️  to=%s subject=%r\n%s", email.recipient, email.subject, email.body)
        else:
            log.info("✉️  to=%s subject=%r", email.recipient, email.subject)


class SesChannel:
    """Plain-text email with boto3's SES client; the sender must be a verified identity.

    Deliberately no HTML part: nothing user-supplied can become markup, and the text is
    already free of links (functions/notify/messages.py).
    """

    name = "ses"
    sends_per_commit = 1  # ~100 ms each: one commit per email keeps the crash window to one

    def __init__(self, *, sender: str, region: str) -> None:
        import boto3  # only the worker pays for boto3

        self.sender = sender
        self.client: Any = boto3.client("ses", region_name=region)

    def send(self, email: Email) -> None:
        self.client.send_email(
            Source=self.sender,
            Destination={"ToAddresses": [email.recipient]},
            Message={
                "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                "Body": {"Text": {"Data": email.body, "Charset": "UTF-8"}},
            },
        )


_channel: Channel | None = None
_override: Channel | None = None


def build_channel(spec: str) -> Channel:
    settings = get_settings()
    if spec == "console":
        return ConsoleChannel()
    if spec == "ses":
        problem = ses_sender_problem(settings.ses_sender)
        if problem:  # the worker refuses to start on this; any other caller fails here
            raise ValueError(problem)
        return SesChannel(sender=settings.ses_sender, region=settings.aws_region)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"NOTIFY_CHANNEL must be console, ses or module:attribute, not {spec!r}")
    target = getattr(importlib.import_module(module_name), attribute)
    return target if hasattr(target, "send") else target()


def get_channel() -> Channel:
    """The configured channel, built once per process (or the one a test installed)."""
    global _channel
    if _override is not None:
        return _override
    if _channel is None:
        _channel = build_channel(get_settings().notify_channel)
    return _channel


def use_channel(channel: Channel | None) -> None:
    """Install a channel in place of the configured one (None: back to configuration)."""
    global _override, _channel
    _override, _channel = channel, None
