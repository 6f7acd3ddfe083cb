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
# Code points with the Unicode property Default_Ignorable_Code_Point: renderers show
# nothing and IDNA/UTS46 maps most of them to nothing, so `evil.\u034fcom` opens
# `evil.com`. Some are Mn or Lo, not Cf, so the category test alone misses them.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
_DROP = {cp: None for first, last in _IGNORABLE for cp in range(first, last + 1)}

# Schemes that open something without `//` and that prose never ends a word with.
_BARE_SCHEMES = (
    "mailto|javascript|data|vbscript|file|tel|sms|mms|callto|skype|tg|whatsapp|intent|"
    "magnet|news|nntp|sip|sips|irc|ircs|ftp|ftps|sftp|ssh|telnet|ldap|geo|market|itms|"
    "facetime|steam|zoommtg|slack|msteams|ms-[a-z0-9-]*|x-[a-z0-9-]*"
)
# A word is link-like if it contains any of these. Each is a search, never anchored at
# the word's end, so a word that is not link-like has no link-like prefix: truncation
# cannot turn a harmless word into a link.
_LINKISH = re.compile(
    rf"""(?ix)
      [a-z][a-z0-9+.\-]*:\S         # any scheme with something after it: https:host,
                                    # news:x, magnet:?xt (times like 20:00 start with a digit)
    | \b(?:{_BARE_SCHEMES}):         # well-known schemes, even with nothing after them
    | \b[a-z][a-z0-9]*[+.\-][a-z0-9+.\-]*:   # compound scheme names (ms-settings:, web+x:)
    | www\.                         # www.anything
    | @                             # emails and @mentions
    | \.(?:[^\W\d_]{{2}}|xn--)        # a dot then a top-level-domain-like label: evil.example
    | \b0x[0-9a-f]                  # hexadecimal IPv4 forms: 0x7f000001, 0x7f.1
    | \d{{8,}}                       # one decimal or octal number: 2130706433, 017700000001
    | (?<![\w.$€£¥₹])\d+(?:\.\d+)+  # dotted numbers (inet_aton reads 127.1, 10.1, 1.2.3.4)
    | ::                            # IPv6 shorthand: ::1, fe80::1, ::ffff:7f00:1
    | \[[0-9a-f.]*:                 # bracketed IPv6 host: [2001:db8...]
    | (?:[0-9a-f]{{1,4}}:){{4,}}        # full IPv6 (times have at most two colons)
    | [\\/]{{2}}                      # //host, \\\\host
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
    # Ignorables go before and after NFKC: folding can neither create nor hide one.
    text = unicodedata.normalize("NFKC", str(value).translate(_DROP)).translate(_DOTS)
    text = "".join(_visible(c) for c in text.translate(_DROP))
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
    """`` at VENUE on DATE`` with its leading space, or "" (no space before a full stop)."""
    parts = [f"at {safe_text(event['venue'])}" if event.get("venue") else "",
             f"on {event['start_time']:%Y-%m-%d %H:%M %Z}" if event.get("start_time") else ""]
    return "".join(f" {p}" for p in parts if p)


def _lines(lines: list[dict[str, Any]] | None) -> str:
    """An order's lines, one a line (``  2 x VIP``), or "" for a payload written before types."""
    return "".join(f"  {line['quantity']} x {safe_text(line.get('name') or 'tickets')}\n" for line in lines or [])


def booking_confirmation(user: dict[str, Any], booking: dict[str, Any],
                         event: dict[str, Any], lines: list[dict[str, Any]] | None = None) -> Email:
    tickets = "ticket" if booking["quantity"] == 1 else "tickets"
    body = (f"{_greeting(user)}\n\nYour booking #{booking['id']} is confirmed: "
            f"{booking['quantity']} {tickets} for {_title(event)}{_when(event)}.\n{_lines(lines)}")
    return Email(user["email"], f"Booking confirmed: {_title(event)}", body)


def booking_cancelled(user: dict[str, Any], booking: dict[str, Any],
                      event: dict[str, Any], quantity: int, lines: list[dict[str, Any]] | None = None) -> Email:
    tickets = "ticket" if quantity == 1 else "tickets"
    body = (f"{_greeting(user)}\n\n{quantity} {tickets} of your booking #{booking['id']} "
            f"for {_title(event)}{_when(event)} are cancelled.\n{_lines(lines)}")
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
    body = (f"{_greeting(user)}\n\n{_title(event)}{_when(event)} is cancelled. "
            "Your booking for it is cancelled too.\n")
    return Email(user["email"], f"Event cancelled: {_title(event)}", body)


def email_verification(recipient: str, token: str, *, link_template: str,
                       ttl_seconds: int) -> Email:
    """The verification mail: the token (and link) only, no user-supplied text at all."""
    hours = max(1, round(ttl_seconds / 3600))
    how = (f"Open this link to confirm it:\n\n    {link_template.replace('{token}', token)}\n\n"
           if link_template else "")
    body = ("Please confirm that this address should receive booking emails from us.\n\n"
            # Worded without a `token: value` shape, which the log redactor would mangle
            # in the development console (the local developer's mailbox).
            f"{how}Verification code (send it to POST /users/verify as the JSON field "
            "named token):\n\n"
            f"    {token}\n\n"
            f"It works once and expires in {hours} hour{'s' if hours != 1 else ''}. "
            "If you did not sign up, ignore this email.\n")
    return Email(recipient, "Confirm your email address", body)
