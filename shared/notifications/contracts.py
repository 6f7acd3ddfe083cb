"""Notification contracts: each notification's task name and payload, defined once.

Producers write an instance to the outbox (:func:`shared.notifications.outbox.write`, or
:func:`shared.notifications.outbox.insert_select_sql` inside a statement); the notify
worker registers one task per contract under :attr:`Notification.name` (and its
:attr:`Notification.aliases`) and reads its keyword arguments back with
:meth:`Notification.parse`. The task name is also the delivery ``kind`` recorded per user
and the ``task`` label of the notification metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

N = TypeVar("N", bound="Notification")

# Task names go into SQL as literals (insert_select_sql): only these characters.
_NAME = re.compile(r"[a-z][a-z0-9_.]*")


@dataclass(frozen=True)
class Notification:
    """Base of every contract: a subclass sets ``name`` and declares its payload fields."""

    name: ClassVar[str]
    # Names this notification was published under before; the worker still accepts them
    # (outbox rows, queued messages and dead letters written by an older API).
    aliases: ClassVar[tuple[str, ...]] = ()
    # The task name producers write (outbox rows, so the relay publishes it too): ``name``,
    # unless a rename is rolling out. Then it stays the old name, one of ``aliases``, until
    # no worker older than the rename runs: an API deployed before its workers must not
    # publish a name they do not register (Celery drops it as unregistered).
    published_as: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):
            return  # a base of several contracts, not published itself
        if "published_as" not in vars(cls):
            cls.published_as = cls.name
        if cls.published_as not in (cls.name, *cls.aliases):
            raise ValueError(f"{cls.__name__} publishes {cls.published_as!r}, a name its workers do not register")
        for name in (cls.name, *cls.aliases):
            if not _NAME.fullmatch(name):
                raise ValueError(f"notification name {name!r} must match {_NAME.pattern}")

    def payload(self) -> dict[str, Any]:
        """The outbox row's JSON payload (the task's keyword arguments, less ``outbox_id``)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def parse(cls: type[N], kwargs: Mapping[str, Any]) -> N:
        """The contract from a task's keyword arguments; keys it does not declare are ignored,
        so a producer may add a field before every worker knows it."""
        known = cls.field_names()
        return cls(**{key: value for key, value in kwargs.items() if key in known})


@dataclass(frozen=True)
class EmailVerification(Notification):
    """Mail a fresh verification token to the user's address."""

    name: ClassVar[str] = "email_verification"
    user_id: int


@dataclass(frozen=True)
class _BookingNotification(Notification):
    """What every notification about one booking carries."""

    booking_id: int
    event_id: int
    user_id: int
    quantity: int


@dataclass(frozen=True)
class BookingConfirmation(_BookingNotification):
    """Tell the customer what they booked (``quantity`` as booked, whatever happens later)."""

    name: ClassVar[str] = "booking_confirmation"
    hold_id: int | None = None
    # [{ticket_type_id, name, quantity}]; empty in payloads written before ticket types.
    lines: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class BookingCancelled(_BookingNotification):
    """Tell the customer ``quantity`` of their tickets are cancelled, ``remaining`` left."""

    name: ClassVar[str] = "booking_cancelled"
    remaining: int
    # The lines tickets were cancelled of: [{ticket_type_id, name, quantity}]; empty in older payloads.
    lines: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EventNotification(Notification):
    """What every notification about one event carries (the worker fans these out)."""

    event_id: int


@dataclass(frozen=True)
class EventUpdate(EventNotification):
    """Fan an event's changed fields (``{field: {"old": ..., "new": ...}}``) out to its customers."""

    name: ClassVar[str] = "event_update"
    aliases: ClassVar[tuple[str, ...]] = ("notify_event_update",)  # its task name until issue 12
    # Workers before issue 12 register only the old name: publish it for one more release.
    published_as: ClassVar[str] = "notify_event_update"
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class EventCancelled(EventNotification):
    """Fan an event's cancellation out to every customer whose booking it cancelled."""

    name: ClassVar[str] = "event_cancelled"
    bookings_cancelled: int


NOTIFICATIONS: Mapping[str, type[Notification]] = {
    contract.name: contract
    for contract in (EmailVerification, BookingConfirmation, BookingCancelled, EventUpdate,
                     EventCancelled)
}
