"""The Celery protocol v2 message of one task call, as kombu's Redis transport LPUSHes it.

Built here with the standard library so the HTTP functions and the relay Lambda publish
without celery or kombu installed; ``tests/notifications/test_outbox.py`` compares
it with the envelope Celery itself builds. Every publisher (the outbox, dead-letter
replay) goes through :func:`task_message`.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any


def task_message(
    task: str, kwargs: dict[str, Any], *, queue: str, task_id: str | None = None
) -> dict[str, Any]:
    """The kombu/Celery protocol v2 envelope of one task call, JSON-serialised."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}])
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": repr(kwargs),
            "origin": f"{os.getpid()}@{socket.gethostname()}",
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


