"""The notify tasks: one per notification contract (shared/notifications/contracts.py).

Each is registered under its contract's name and aliases and receives the outbox row's
payload plus ``outbox_id``, which identifies the notification in every delivery key; the
contract parses the payload (keys it does not know are ignored, so producers can add
fields without breaking older workers). ``fanout_chunk`` and ``relay_outbox`` are the
worker's own tasks: nothing outside the worker publishes them (bar a dead-letter replay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from celery import Task

from functions.notify import deliveries, messages
from functions.notify.celery_app import RELAY_TASK, app
from functions.notify.channels import Email, get_channel
from functions.notify.reliability import notify_task
from shared.jobs.schedule import relay_and_tidy
from shared.notifications.contracts import (
    BookingCancelled,
    BookingConfirmation,
    EmailVerification,
    EventCancelled,
    EventNotification,
    EventUpdate,
    Notification,
)
from shared.platform import metrics
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)

N = TypeVar("N", bound=Notification)
E = TypeVar("E", bound=EventNotification)


def notification_task(contract: type[N]) -> Callable[[Callable[[int, N], None]], Task]:
    """Register ``fn(outbox_id, notification)`` as the task of ``contract`` (and its aliases)."""

    def register(fn: Callable[[int, N], None]) -> Task:
        def run(*, outbox_id: int, **payload: Any) -> None:
            fn(outbox_id, contract.parse(payload))

        run.__name__ = run.__qualname__ = fn.__name__
        run.__doc__ = fn.__doc__
        metrics.label_notification(contract.name)
        return notify_task(contract.name, aliases=contract.aliases)(run)

    return register


def _unverified(user: dict[str, Any]) -> bool:
    """Whether mail to this user must wait: the setting is on and the address unverified."""
    return get_settings().verified_email_required and not user.get("email_verified_at")


def _send_to_one(*, outbox_id: int, user: dict[str, Any], kind: str, email: Email,
                 label: str) -> bool:
    """Mail one user once (or hold it until they verify); logs ``label`` sent or held."""
    channel = get_channel()
    if _unverified(user):
        held, recorded = deliveries.record_skipped(
            outbox_id=outbox_id, kind=kind, channel=channel.name,
            users=[(user["id"], email.recipient)])
        if recorded:
            metrics.notification_skipped(kind)
            log.info("📭 %s held for user %s: email not verified", label, user["email"])
        if user["id"] in held:
            return False
        # Verified since ``user`` was read: nothing would release a key now, so send.
    sent = deliveries.deliver_once(
        outbox_id=outbox_id, user_id=user["id"], kind=kind, channel=channel.name,
        recipient=email.recipient, send=lambda: channel.send(email),
    )
    if sent:
        metrics.notification_sent(kind)
        log.info("📧 %s sent to user %s", label, user["email"])
    return sent


@notification_task(EmailVerification)
def email_verification(outbox_id: int, notification: EmailVerification) -> None:
    """Mail a new single-use token to the address being verified, and only to it."""
    settings = get_settings()
    channel = get_channel()

    def send(recipient: str, token: str) -> None:
        channel.send(messages.email_verification(
            recipient, token, link_template=settings.email_verification_url,
            ttl_seconds=settings.email_verification_ttl_seconds))

    recipient = deliveries.deliver_verification(
        outbox_id=outbox_id, user_id=notification.user_id, channel=channel.name,
        ttl_seconds=settings.email_verification_ttl_seconds, send=send)
    if recipient is not None:
        metrics.notification_sent(EmailVerification.name)
        log.info("📧 Verification email sent to user %s", recipient)


@notification_task(BookingConfirmation)
def booking_confirmation(outbox_id: int, notification: BookingConfirmation) -> None:
    """Tell a customer their booking is confirmed (once, however often redelivered)."""
    booking, user, event = deliveries.booking_details(notification.booking_id)
    # What was booked, even if a cancellation has changed the row since.
    booking = {**booking, "quantity": notification.quantity}
    email = messages.booking_confirmation(user, booking, event, notification.lines)
    _send_to_one(outbox_id=outbox_id, user=user, kind=notification.name, email=email,
                 label="Booking confirmation")


@notification_task(BookingCancelled)
def booking_cancelled(outbox_id: int, notification: BookingCancelled) -> None:
    """Tell a customer (some of) their tickets are cancelled."""
    booking, user, event = deliveries.booking_details(notification.booking_id)
    email = messages.booking_cancelled(user, booking, event, notification.quantity, notification.lines)
    _send_to_one(outbox_id=outbox_id, user=user, kind=notification.name, email=email,
                 label="Booking cancellation")


Message = Callable[[dict[str, Any], dict[str, Any], E], Email]


@dataclass(frozen=True)
class Fanout(Generic[E]):
    """A notification that reaches many users of one event, a chunk of users per sub-task."""

    contract: type[E]
    # A query of user_id rows (repeats allowed) that may read %(event_id)s: whom it reaches.
    audience: str
    # Each user's mail from (user, event, notification).
    message: Message[E]
    # Logged once, by the chunk that completes the fan-out; %d is the users notified.
    done_line: str


FANOUTS: dict[str, Fanout[Any]] = {}
"""Every fan-out by its contract's name, the ``kind`` its chunks carry."""


def fanout_task(contract: type[E], *, audience: str, done_line: str) -> Callable[[Message[E]], Task]:
    """Declare ``contract`` a fan-out whose users each get ``message(user, event, notification)``.

    Registers the contract's task, which plans the audience's chunks and enqueues one
    :func:`fanout_chunk` per chunk; returns that task.
    """

    def register(message: Message[E]) -> Task:
        fanout = Fanout(contract, audience, message, done_line)
        FANOUTS[contract.name] = fanout

        def start(outbox_id: int, notification: E) -> None:
            _start_fanout(outbox_id, fanout, notification)

        start.__name__ = start.__qualname__ = message.__name__
        start.__doc__ = message.__doc__
        return notification_task(contract)(start)

    return register


def _start_fanout(outbox_id: int, fanout: Fanout[E], notification: E) -> None:
    planned = deliveries.plan_fanout(outbox_id=outbox_id, kind=notification.name,
                                     audience=fanout.audience, event_id=notification.event_id,
                                     chunk_size=get_settings().notify_fanout_chunk)
    if planned == 0:
        log.info(fanout.done_line, 0)
        return
    # Also after a redelivery (planned is None): chunks not done yet are sent again,
    # and chunks are idempotent, so a worker killed mid-fan-out loses nothing.
    for chunk_no in deliveries.pending_chunks(outbox_id):
        fanout_chunk.apply_async(kwargs={"outbox_id": outbox_id, "chunk_no": chunk_no,
                                         "kind": notification.name, **notification.payload()})


# Whom an event's fan-outs reach. An event cancellation also cancels its bookings, in the
# same transaction that sets events.updated_at, so those bookings still count.
CONFIRMED_BOOKERS = ("SELECT b.user_id FROM bookings b "
                     "WHERE b.event_id = %(event_id)s AND b.status = 'confirmed'")
CANCELLED_BOOKERS = (
    "SELECT b.user_id FROM bookings b WHERE b.event_id = %(event_id)s "
    "AND (b.status = 'confirmed' OR b.cancelled_at >= "
    "(SELECT updated_at FROM events WHERE id = %(event_id)s))"
)


@fanout_task(EventUpdate, audience=CONFIRMED_BOOKERS,
             done_line="🔔 Notified %d users about event update")
def event_update(user: dict[str, Any], event: dict[str, Any], notification: EventUpdate) -> Email:
    """Fan an event change out to every user with a confirmed booking."""
    return messages.event_updated(user, event, notification.changes)


@fanout_task(EventCancelled, audience=CANCELLED_BOOKERS,
             done_line="🔔 Notified %d users about event cancellation")
def event_cancelled(user: dict[str, Any], event: dict[str, Any],
                    notification: EventCancelled) -> Email:
    """Fan an event cancellation out to every user whose booking it cancelled."""
    return messages.event_cancelled(user, event)


@notify_task("fanout_chunk")
def fanout_chunk(*, outbox_id: int, chunk_no: int, kind: str, **payload: Any) -> None:
    """Notify one user-id range of a fan-out, a page at a time; the last chunk logs.

    ``payload`` is the notification's, as its fan-out task received it.
    """
    bounds = deliveries.chunk_range(outbox_id, chunk_no)
    if bounds is None:
        return  # done by an earlier copy of this message
    fanout = FANOUTS[kind]
    if not set(fanout.contract.field_names()) <= payload.keys():
        # Queued by a worker before issue 12, whose chunks carried only the event's id (and
        # changes): the rest of the payload is in the outbox row.
        payload = {**deliveries.outbox_payload(outbox_id), **payload}
    notification = fanout.contract.parse(payload)
    event = deliveries.event_details(notification.event_id)
    settings = get_settings()
    channel = get_channel()
    for page in deliveries.audience_pages(audience=fanout.audience,
                                          event_id=notification.event_id,
                                          page_size=settings.notify_fanout_page, **bounds):
        recipients = _skip_unverified(outbox_id, kind, channel.name, page)
        emails = [fanout.message(user, event, notification) for user in recipients]
        sent = deliveries.deliver_batch(
            outbox_id=outbox_id, kind=kind, channel=channel.name,
            sends_per_commit=getattr(channel, "sends_per_commit", 1),
            items=[(user["id"], email.recipient, partial(channel.send, email))
                   for user, email in zip(recipients, emails, strict=True)],
        )
        metrics.notification_sent(kind, sent)
    total = deliveries.complete_chunk(outbox_id, chunk_no)
    if total is not None:
        log.info(fanout.done_line, total)


def _skip_unverified(outbox_id: int, kind: str, channel: str,
                     page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's users who may be mailed; the others get a skipped key and a metric."""
    unverified = [user for user in page if _unverified(user)]
    if not unverified:
        return page
    held, skipped = deliveries.record_skipped(
        outbox_id=outbox_id, kind=kind, channel=channel,
        users=[(u["id"], u["email"]) for u in unverified])
    metrics.notification_skipped(kind, skipped)
    # Users verified since the page was read are mailed like the others.
    return [user for user in page if user["id"] not in held]


@app.task(name=RELAY_TASK, ignore_result=True)
def relay_outbox() -> int:
    """Beat's periodic outbox relay and tidy (the container stack's scheduled Lambda)."""
    return relay_and_tidy()["published"]
