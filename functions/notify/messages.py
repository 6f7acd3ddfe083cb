"""The words of each notification: subject and plain-text body from database rows.

Every piece of user-supplied text (a customer's name, an organizer's title or venue, the
values of an event change) goes through :func:`safe_text` before it is rendered, so the
platform cannot be made to mail a stranger a link, an address or forged lines: text is
length-limited, control characters become spaces and invisible ones go, and any word a mail
client could turn into a link is replaced by ``[link removed]``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from functions.notify.channels import Email

NAME_LIMIT = 40
TEXT_LIMIT = 100  # titles, venues, changed values
FIELD_LIMIT = 40
LINK_REMOVED = "[link removed]"

# Dots that IDNA (and so browsers) treat as a dot, left after NFKC folding.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": ".", "\u2024": ".", "\ufe52": "."})
# A word is link-like if it contains any of these. Each is a search, never anchored at
# the word's end, so a word that is not link-like has no link-like prefix: truncation
# cannot turn a harmless word into a link.
_LINKISH = re.compile(
    r"""(?ix)
      [a-z][a-z0-9+.\-]*:/          # scheme://, scheme:/
    | \b(?:mailto|javascript|data|vbscript|file|tel|sms|callto|skype|tg|whatsapp):
    | www\.                         # www.anything
    | @                             # emails and @mentions
    | \.(?:[^\W\d_]{2}|xn--)        # a dot then a top-level-domain-like label: evil.example
    | \d{1,3}(?:\.\d{1,3}){3}       # IPv4
    | [\\/]{2}                      # //host, \\\\host
    """,
)


def _visible(char: str) -> str:
    # Controls and separators (newlines, tabs, U+2028) become a space: one line. Invisible
    # ones (Cf: zero-width, bidi overrides; Co, Cs, Cn) go, so they cannot split a link
    # into words that each look harmless.
    category = unicodedata.category(char)
    if category == "Cc" or category[0] == "Z":
        return " "
    return "" if category[0] == "C" else char


def safe_text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """User-supplied text made safe to mail: one line, at most ``limit`` characters, no links."""
    text = unicodedata.normalize("NFKC", str(value)).translate(_DOTS)
    text = "".join(_visible(c) for c in text)
    words = [LINK_REMOVED if _LINKISH.search(word) else word for word in text.split()]
    text = " ".join(words)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _greeting(user: dict[str, Any]) -> str:
    # A name that carried a link is dropped whole: it was never a name.
    name = safe_text(user.get("name") or "", NAME_LIMIT)
    if not name or LINK_REMOVED in name:
        return "Hello,"
    return f"Hi {name},"


def _title(event: dict[str, Any]) -> str:
    return safe_text(event["title"])


def _when(event: dict[str, Any]) -> str:
    parts = [f"at {safe_text(event['venue'])}" if event.get("venue") else "",
             f"on {event['start_time']:%Y-%m-%d %H:%M %Z}" if event.get("start_time") else ""]
    return " ".join(p for p in parts if p)


def booking_confirmation(user: dict[str, Any], booking: dict[str, Any],
                         event: dict[str, Any]) -> Email:
    tickets = "ticket" if booking["quantity"] == 1 else "tickets"
    body = (f"{_greeting(user)}\n\nYour booking #{booking['id']} is confirmed: "
            f"{booking['quantity']} {tickets} for {_title(event)} {_when(event)}.\n")
    return Email(user["email"], f"Booking confirmed: {_title(event)}", body)


def booking_cancelled(user: dict[str, Any], booking: dict[str, Any],
                      event: dict[str, Any], quantity: int) -> Email:
    tickets = "ticket" if quantity == 1 else "tickets"
    body = (f"{_greeting(user)}\n\n{quantity} {tickets} of your booking #{booking['id']} "
            f"for {_title(event)} {_when(event)} are cancelled.\n")
    return Email(user["email"], f"Booking cancelled: {_title(event)}", body)


def event_updated(user: dict[str, Any], event: dict[str, Any],
                  changes: dict[str, dict[str, Any]]) -> Email:
    lines = "\n".join(
        f"  {safe_text(field, FIELD_LIMIT)}: {safe_text(change.get('old'))} -> "
        f"{safe_text(change.get('new'))}"
        for field, change in sorted(changes.items()))
    body = (f"{_greeting(user)}\n\nAn event you booked has changed: {_title(event)}\n"
            f"{lines}\n")
    return Email(user["email"], f"Event updated: {_title(event)}", body)


def event_cancelled(user: dict[str, Any], event: dict[str, Any]) -> Email:
    body = (f"{_greeting(user)}\n\n{_title(event)} {_when(event)} is cancelled. "
            "Your booking for it is cancelled too.\n")
    return Email(user["email"], f"Event cancelled: {_title(event)}", body)


def email_verification(recipient: str, token: str, *, link_template: str,
                       ttl_seconds: int) -> Email:
    """The verification mail: the token (and link) only, no user-supplied text at all."""
    hours = max(1, round(ttl_seconds / 3600))
    how = (f"Open this link to confirm it:\n\n    {link_template.replace('{token}', token)}\n\n"
           if link_template else "")
    body = ("Please confirm that this address should receive booking emails from us.\n\n"
            f"{how}Verification code (POST it to /users/verify as {{\"token\": \"...\"}}):\n\n"
            f"    {token}\n\n"
            f"It works once and expires in {hours} hour{'s' if hours != 1 else ''}. "
            "If you did not sign up, ignore this email.\n")
    return Email(recipient, "Confirm your email address", body)
