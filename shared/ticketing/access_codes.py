"""Access codes: a code unlocks hidden ticket types and opens their presale.

Only a SHA-256 digest of the normalized code is stored (:func:`digest`): a leaked table
names no code. Generated codes carry 80 random bits (16 base32 characters from
``secrets``); chosen ones have at least 8 characters. Codes compare case-insensitively and
ignore surrounding blanks. Uses are counted by the granting statements (the table's CHECK
``access_codes_within_max_uses``); here organizers create, list and change codes.

A code is read by grants like a type's window: creating or changing one takes the path of
every catalog writer (:func:`quotas.locked_for_change`: the event row, then every stock row,
bumping the gate), so a grant whose snapshot saw the code as it was re-reads it instead of
counting a use of a code deactivated a moment earlier (PostgreSQL re-checks only the join
key of the row it waited on). A cancelled event's codes are frozen (``event_cancelled``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime
from typing import Any

from shared.platform.db import Connection, connection
from shared.platform.errors import BadRequest, Conflict, NotFound, Unprocessable
from shared.ticketing.quotas import check_types, locked_for_change, own_event

GENERATED_BYTES = 10  # 80 bits: 16 base32 characters


def normalize(code: str) -> str:
    return code.strip().upper()


def digest(code: str) -> bytes:
    """What is stored and looked up: SHA-256 of the normalized code."""
    return hashlib.sha256(normalize(code).encode()).digest()


def generate() -> str:
    return base64.b32encode(secrets.token_bytes(GENERATED_BYTES)).decode()


def usable_sql(alias: str) -> str:
    """The code ``alias`` may be used at %(now)s: active and within its window (uses aside)."""
    return (
        f"{alias}.active AND coalesce({alias}.valid_from, '-infinity') <= %(now)s"
        f" AND coalesce({alias}.valid_until, 'infinity') > %(now)s"
    )


def invalid() -> BadRequest:
    """One answer whatever is wrong (unknown, inactive, outside its window): guessing learns nothing."""
    return BadRequest("access_code_invalid", "This access code is not valid for this event")


def unlocked_types(conn: Connection, event_id: int, code: str, now: datetime) -> list[int]:
    """The types a usable code of the event unlocks; ``access_code_invalid`` otherwise."""
    row = conn.execute(
        f"""SELECT array(SELECT act.ticket_type_id FROM access_code_types act
                          WHERE act.access_code_id = a.id ORDER BY 1) AS ticket_type_ids
              FROM access_codes a
             WHERE a.event_id = %(event_id)s AND a.code_digest = %(digest)s AND {usable_sql("a")}""",
        {"event_id": event_id, "digest": digest(code), "now": now},
    ).fetchone()
    if row is None:
        raise invalid()
    return list(row["ticket_type_ids"])


_COLUMNS = """a.id, a.event_id, a.label, a.uses, a.max_uses, a.valid_from, a.valid_until, a.active, a.created_at,
       array(SELECT act.ticket_type_id FROM access_code_types act
              WHERE act.access_code_id = a.id ORDER BY 1) AS ticket_type_ids"""


def _read(conn: Connection, event_id: int, code_id: int | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        f"""SELECT {_COLUMNS} FROM access_codes a
             WHERE a.event_id = %(event_id)s AND (%(id)s::bigint IS NULL OR a.id = %(id)s) ORDER BY a.id""",
        {"event_id": event_id, "id": code_id},
    ).fetchall()


def _check_window(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise Unprocessable("invalid_validity_window", "valid_until must be after valid_from")


def list_codes(*, event_id: int, organizer_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        own_event(conn, event_id, organizer_id, reading=True)
        return _read(conn, event_id)


def create_code(*, event_id: int, organizer_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A new code; the answer carries it in clear, the only time it is shown."""
    _check_window(fields.get("valid_from"), fields.get("valid_until"))
    code = fields.get("code") or generate()
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            types = check_types(conn, event_id, fields["ticket_type_ids"])
            row = conn.execute(
                """INSERT INTO access_codes (event_id, code_digest, label, max_uses, valid_from, valid_until)
                   VALUES (%(event_id)s, %(digest)s, %(label)s, %(max_uses)s, %(valid_from)s, %(valid_until)s)
                   ON CONFLICT (event_id, code_digest) DO NOTHING RETURNING id""",
                {
                    "event_id": event_id, "digest": digest(code), "label": fields.get("label"),
                    "max_uses": fields["max_uses"], "valid_from": fields.get("valid_from"),
                    "valid_until": fields.get("valid_until"),
                },
            ).fetchone()
            if row is None:
                raise Conflict("access_code_taken", "The event already has this access code")
            conn.execute(
                """INSERT INTO access_code_types (access_code_id, ticket_type_id, event_id)
                   SELECT %s, t, %s FROM unnest(%s::bigint[]) AS t""",
                (row["id"], event_id, types),
            )
        return {**_read(conn, event_id, row["id"])[0], "code": normalize(code)}


def update_code(*, event_id: int, organizer_id: int, code_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Deactivate, relabel, move the end of the window or change max_uses (never below its uses).

    After the event's and every stock row's locks (module docstring), the code's row is
    locked for the check and the write: a grant counting a use is counted first, so max_uses
    never passes below uses (the CHECK would refuse it too).
    """
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            current = conn.execute(
                "SELECT id, uses, max_uses, valid_from FROM access_codes WHERE id = %s AND event_id = %s FOR UPDATE",
                (code_id, event_id),
            ).fetchone()
            if current is None:
                raise NotFound("access_code_not_found", f"Access code {code_id} is not a code of event {event_id}")
            if "max_uses" in changes and changes["max_uses"] < current["uses"]:
                raise Conflict(
                    "max_uses_below_uses",
                    f"The code was used {current['uses']} times: max_uses cannot be lower",
                    uses=current["uses"],
                    requested=changes["max_uses"],
                )
            if "valid_until" in changes:
                _check_window(current["valid_from"], changes["valid_until"])
            sets = {k: v for k, v in changes.items() if k in ("active", "max_uses", "valid_until", "label")}
            if sets:
                conn.execute(
                    f"UPDATE access_codes SET {', '.join(f'{k} = %({k})s' for k in sets)} WHERE id = %(id)s",
                    {**sets, "id": code_id},
                )
        return _read(conn, event_id, code_id)[0]
