"""Every error code is documented from one definition: shared/web/error_docs.py CATALOGUE.

The codes the code base raises are read from its sources (an ``AppError`` subclass built
with a literal code), so a new refusal cannot reach a client undocumented; the OpenAPI
documents of every app must state each code under the catalogue's status, in its words.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from shared.web.error_docs import CATALOGUE, EVERY_ROUTE, WITH_BODY

ROOT = Path(__file__).resolve().parents[2]
APPS = ["local.app", "functions.users.app", "functions.events.app", "functions.booking.app"]
_LINE = re.compile(r"^- `([a-z_]+)`: (.*)$")


def _sources() -> list[ast.Module]:
    return [ast.parse(path.read_text()) for top in ("shared", "functions") for path in (ROOT / top).rglob("*.py")]


def _error_classes(modules: list[ast.Module]) -> set[str]:
    """``AppError`` and every class that derives from it, by name, across the sources."""
    classes = [node for module in modules for node in ast.walk(module) if isinstance(node, ast.ClassDef)]
    found = {"AppError"}
    while True:
        more = {
            cls.name
            for cls in classes
            if any((base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)) in found
                   for base in cls.bases)
        }
        if more <= found:
            return found
        found |= more


def _literal_code(call: ast.Call) -> str | None:
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "code"), None)
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def raised_codes() -> dict[str, set[str]]:
    """code -> the error classes it is built with: ``Conflict("x", ...)`` and ``super().__init__("x", ...)``."""
    modules = _sources()
    errors = _error_classes(modules)
    codes: dict[str, set[str]] = {}
    for module in modules:
        for cls in [n for n in ast.walk(module) if isinstance(n, ast.ClassDef)] + [module]:  # type: ignore[list-item]
            for node in ast.walk(cls):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "__init__" and isinstance(cls, ast.ClassDef) and cls.name in errors:
                    name = cls.name
                if name in errors and (code := _literal_code(node)) is not None:
                    codes.setdefault(code, set()).add(name)
    return codes


def test_every_code_the_code_base_raises_is_in_the_catalogue() -> None:
    raised = raised_codes()
    assert len(raised) > 30  # the scan sees the code base (it found the refusals, the 401s, ...)
    missing = sorted(set(raised) - CATALOGUE.keys())
    assert not missing, f"add these to shared/web/error_docs.py CATALOGUE: {missing}"


def test_the_catalogue_holds_only_codes_that_are_answered() -> None:
    # The factory answers its own codes (shared/web/app.py); the rest must be raised somewhere.
    stale = sorted(CATALOGUE.keys() - raised_codes().keys() - {*EVERY_ROUTE, *WITH_BODY})
    assert not stale, stale


def test_each_code_has_one_status_and_the_error_classes_agree() -> None:
    statuses = {
        "BadRequest": 400, "Unauthorized": 401, "Forbidden": 403, "NotFound": 404, "Conflict": 409,
        "Gone": 410, "Unprocessable": 422, "TooManyRequests": 429, "ServiceUnavailable": 503,
        "OutcomeUnknown": 503, "DeadlineExceeded": 503,
    }
    for code, classes in raised_codes().items():
        for cls in classes & statuses.keys():
            assert statuses[cls] == CATALOGUE[code].status, (code, cls)


def _documented(module: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(method, path) -> status -> the codes its error responses name."""
    openapi: dict[str, Any] = importlib.import_module(module).app.openapi()
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                for line in response["description"].splitlines():
                    if match := _LINE.match(line):
                        code, meaning = match.groups()
                        assert code in CATALOGUE, (method, path, code)
                        assert (int(status), meaning) == (CATALOGUE[code].status, CATALOGUE[code].meaning), line
                        found.setdefault((method, path), {}).setdefault(status, []).append(code)
    return found


@pytest.mark.parametrize("module", APPS)
def test_the_openapi_states_each_code_as_the_catalogue_does(module: str) -> None:
    documented = _documented(module)
    assert documented
    for (method, path), by_status in documented.items():
        codes = [code for found in by_status.values() for code in found]
        assert len(codes) == len(set(codes)), (method, path)  # each code once per operation


def test_every_code_in_the_catalogue_is_documented_on_some_route() -> None:
    documented = {code for by_status in _documented("local.app").values() for f in by_status.values() for code in f}
    assert not sorted(CATALOGUE.keys() - documented)


def test_routes_declare_what_their_service_refuses_with() -> None:
    """Spot checks of declarations a route could forget: the refusals behind its one call."""
    documented = _documented("local.app")
    expect = {
        ("post", "/bookings"): {"sold_out", "customer_limit_exceeded", "event_ended", "contention",
                                "request_in_progress", "idempotency_key_reused", "rate_limited"},
        ("post", "/holds/{hold_id}/confirm"): {"hold_expired", "hold_released", "sold_out", "idempotency_key_reused"},
        ("put", "/events/{event_id}"): {"capacity_below_sold", "not_event_owner", "invalid_time_range"},
        ("post", "/users/verify"): {"verification_invalid", "verification_used", "verification_expired"},
        ("post", "/auth/refresh"): {"invalid_refresh_token", "refresh_token_reused"},
    }
    for operation, codes in expect.items():
        got = {code for found in documented[operation].values() for code in found}
        assert codes <= got, (operation, sorted(codes - got))


def test_order_routes_document_a_type_listed_twice_and_the_confirmation_what_an_expired_hold_can_meet() -> None:
    documented = _documented("local.app")
    codes = {op: {code for found in by_status.values() for code in found} for op, by_status in documented.items()}
    for route in ("/bookings", "/book/{user_id}", "/events/{event_id}/holds"):
        assert "duplicate_ticket_type" in codes[("post", route)], route
    confirm = codes[("post", "/holds/{hold_id}/confirm")]
    # A hold's lines name each type once; an expired hold is granted again with its code, which may be
    # no longer valid (tests/ticketing/test_order_lines.py: ..._says_its_code_is_no_longer_valid).
    assert "duplicate_ticket_type" not in confirm and "access_code_invalid" in confirm
