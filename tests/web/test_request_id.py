"""X-Request-ID: a caller's id is echoed and logged only when it is plain ASCII."""

from __future__ import annotations

import pytest

from tests.support.clients import HttpClient


@pytest.mark.parametrize("given", ["r\u00e9q-\u00ff\u00c0", "\u00aa\u00b5\u00ba", "id-\u00e9"])
def test_a_non_ascii_request_id_is_replaced_not_echoed(http_client: HttpClient, given: str) -> None:
    r = http_client.request("GET", "/events", headers={"X-Request-ID": given.encode("latin-1")})
    assert r.status_code == 200
    echoed = r.headers["x-request-id"]
    assert echoed.isascii() and len(echoed) == 32 and given not in echoed


def test_a_plain_request_id_is_still_echoed(http_client: HttpClient) -> None:
    r = http_client.request("GET", "/events", headers={"X-Request-ID": "trace-42.a:b@c/d+e=f"})
    assert r.headers["x-request-id"] == "trace-42.a:b@c/d+e=f"
