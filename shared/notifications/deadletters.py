"""Dead letters: notification tasks that failed every attempt, kept in PostgreSQL.

Redis has no dead-letter queue, so the worker records the task name and its keyword
arguments here. Replaying publishes the same call again; it keeps its ``outbox_id``, so
users already reached by an earlier attempt are skipped by their delivery keys.

    python -m shared.notifications.deadletters list [--all]
    python -m shared.notifications.deadletters replay ID [ID ...] | --all
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from shared.notifications.outbox import push
from shared.platform.db import connection

COLUMNS = "id, task, kwargs, task_id, attempts, error, failed_at, replayed_at"


def record(*, task: str, kwargs: dict[str, Any], task_id: str | None, attempts: int,
           error: str) -> int:
    """Store a task that will not be retried any more; returns the dead letter's id."""
    with connection() as conn:
        row = conn.execute(
            """INSERT INTO notification_dead_letters (task, kwargs, task_id, attempts, error)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
            (task, Jsonb(kwargs), task_id, attempts, error[:2000]),
        ).fetchone()
    assert row is not None
    return int(row["id"])


def list_dead_letters(*, include_replayed: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    where = "TRUE" if include_replayed else "replayed_at IS NULL"
    with connection() as conn:
        return conn.execute(
            f"SELECT {COLUMNS} FROM notification_dead_letters WHERE {where} ORDER BY id LIMIT %s",
            (limit,),
        ).fetchall()


def replay(ids: Sequence[int] | None = None) -> list[int]:
    """Publish dead letters again (all pending ones when ``ids`` is None); returns their ids.

    Rows are locked while pushed and marked only after Redis took them, so a failed
    replay leaves them pending; Redis errors propagate to the caller.
    """
    condition, params = "replayed_at IS NULL", []
    if ids is not None:
        condition += " AND id = ANY(%s)"
        params.append(list(ids))
    with connection() as conn, conn.transaction():
        rows = conn.execute(
            f"""SELECT id, task, kwargs FROM notification_dead_letters WHERE {condition}
                ORDER BY id FOR UPDATE SKIP LOCKED""",
            params,
        ).fetchall()
        push((row["task"], row["kwargs"]) for row in rows)
        replayed = [row["id"] for row in rows]
        conn.execute(
            "UPDATE notification_dead_letters SET replayed_at = now() WHERE id = ANY(%s)",
            (replayed,),
        )
    return replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.notifications.deadletters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("list", help="show dead letters not replayed yet")
    show.add_argument("--all", action="store_true", help="include replayed ones")
    show.add_argument("--limit", type=int, default=100)
    again = commands.add_parser("replay", help="publish dead letters again")
    again.add_argument("ids", nargs="*", type=int)
    again.add_argument("--all", action="store_true", help="every dead letter not replayed yet")
    args = parser.parse_args(argv)

    if args.command == "list":
        for row in list_dead_letters(include_replayed=args.all, limit=args.limit):
            print(json.dumps(row, default=str))
        return 0
    if not args.ids and not args.all:
        parser.error("replay needs dead letter ids or --all")
    replayed = replay(None if args.all else args.ids)
    print(f"replayed {len(replayed)} dead letters: {replayed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
