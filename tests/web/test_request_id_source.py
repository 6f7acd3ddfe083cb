"""New request ids: the shape of a uuid4 hex, distinct within a process and across a fork."""

from __future__ import annotations

import os
import re

from shared.web.telemetry import new_request_id

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_32_hex_characters_and_distinct() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert all(_HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave without pytest's teardown
        try:
            os.write(write, new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent_id = new_request_id()
    assert _HEX32.match(child_id)
    assert child_id[:16] != parent_id[:16]  # a prefix of its own, not the parent's next count
