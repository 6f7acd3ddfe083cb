"""One normalization of emails: storage, lookup and look-alike refusal agree."""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.accounts.emails import email_skeleton, normalize_email, rekey
from shared.platform import migrate as migrations
from tests.support.clients import Client
from tests.support.databases import migrate_before, scratch_database
from tests.support.factories import PASSWORD, login, register

MIGRATION_0005 = next(m for m in migrations.discover() if m.version == 5)


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("ＡＮＮ@ｅｘａｍｐｌｅ.com", "ann@example.com"),  # fullwidth forms
        ("Straße@x.io", "strasse@x.io"),  # full case folding, not lower()
        ("\u0130nfo@x.io", "i\u0307nfo@x.io"),  # what PostgreSQL's lower() turned into "info"
        ("Victim@X.io.", "victim@x.io"),  # the fully qualified domain is the same domain
        ("victim@x.io\uff0e", "victim@x.io"),  # fullwidth full stop
        ("victim@x.io.. ", "victim@x.io"),
        ("no-at-sign.", "no-at-sign."),
    ],
)
def test_normalize_email(typed: str, key: str) -> None:
    assert normalize_email(typed) == key
    assert normalize_email(key) == key


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("paypal@x.io", "p\u0430yp\u0430l@x.io"),  # Cyrillic a
        ("info@x.io", "\u0130nfo@x.io"),  # dotted capital I
        ("info@x.io", "\u0131nfo@x.io"),  # dotless i
        ("google@x.io", "g00gle@x.io"),
        ("bill@x.io", "bi1l@x.io"),
        ("modern@x.io", "rnodern@x.io"),
        ("jose@x.io", "Jos\u00e9@x.io"),
        ("ann@example.com", "ＡＮＮ@ｅｘａｍｐｌｅ.com"),
    ],
)
def test_look_alikes_share_a_skeleton(one: str, other: str) -> None:
    assert email_skeleton(one) == email_skeleton(other)


def test_different_addresses_have_different_skeletons() -> None:
    assert email_skeleton("ann@x.io") != email_skeleton("anne@x.io")
    assert email_skeleton("a@x.io") != email_skeleton("b@x.io")


@pytest.mark.parametrize(
    "look_alike",
    [
        lambda e: e.upper(),
        lambda e: e.replace("a", "\u0430", 1),  # Cyrillic a
        lambda e: "\u0130" + e[1:],  # dotted capital I for the leading i
        lambda e: "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in e.split("@")[0]) + "@test.com",
    ],
)
def test_look_alike_registration_is_email_taken(client: Client, look_alike) -> None:  # type: ignore[no-untyped-def]
    email = f"ia-{uuid.uuid4().hex[:8]}@test.com"
    register(client, "customer", email=email)
    r = client.request("POST", "/users", json_body={"email": look_alike(email), "password": PASSWORD,
                                                    "role": "customer"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "email_taken"


def test_a_trailing_dot_on_the_domain_is_the_same_account(client: Client) -> None:
    """``victim@x.io.`` is ``victim@x.io``: taken at registration, and one login."""
    email = f"victim-{uuid.uuid4().hex[:8]}@test.com"
    user = register(client, "customer", email=email)
    r = client.request("POST", "/users", json_body={"email": email + ".", "password": PASSWORD, "role": "customer"})
    assert r.status_code == 409 and r.json()["code"] == "email_taken", r.text
    r = client.request("GET", "/users/me", token=login(client, email.upper() + "."))
    assert r.json()["id"] == user["id"]


def test_login_with_a_look_alike_reaches_no_account(client: Client) -> None:
    email = f"ia-{uuid.uuid4().hex[:8]}@test.com"
    user = register(client, "customer", email=email)
    assert login(client, "  " + email.upper()) and login(client, email)  # same key: same account
    for spelling in (email.replace("a", "\u0430", 1), "\u0130" + email[1:]):
        r = client.request("POST", "/auth/token", form={"username": spelling, "password": PASSWORD})
        assert r.status_code == 401, (spelling, r.text)
    r = client.request("GET", "/users/me", token=login(client, email.upper()))
    assert r.json()["id"] == user["id"] and r.json()["email"] == email  # shown as typed


def test_registration_stores_the_key_and_the_skeleton(client: Client, sql) -> None:  # type: ignore[no-untyped-def]
    email = f"Mixed-{uuid.uuid4().hex[:8]}@Test.com"
    user = register(client, "customer", email=email)
    row = sql.execute("SELECT email, email_key, email_skeleton FROM users WHERE id = %s", (user["id"],)).fetchone()
    assert row == {"email": email, "email_key": normalize_email(email), "email_skeleton": email_skeleton(email)}


def _sql_backfill(conn: psycopg.Connection, text: str) -> tuple[str, str]:
    """Migration 0005's expressions applied to one address."""
    sql = MIGRATION_0005.sql
    key_expr = "lower(normalize(btrim(%(e)s), NFKC))"
    assert f"SET email_key = {key_expr.replace('%(e)s', 'email')}" in sql
    skeleton_expr = sql.split("UPDATE users SET email_skeleton =", 1)[1].split(";", 1)[0].replace("%", "%%")
    row = conn.execute(
        f"SELECT k, {skeleton_expr.replace('email_key', 'k')} FROM (SELECT {key_expr} AS k) t",
        {"e": text},
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_migrations_sql_backfill_is_exact_for_ascii(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        for ch in string.printable.strip():
            address = f"Ab{ch}c@X.io"
            assert _sql_backfill(conn, address) == (normalize_email(address), email_skeleton(address)), ch


@pytest.fixture
def database_before_0005(server_urls: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A database migrated up to, not including, 0005."""
    with scratch_database(server_urls["database"], "emails_test") as url:
        migrate_before(url, 5, tmp_path / "migrations")
        yield url


def test_migration_backfills_keys_and_sets_aside_look_alike_duplicates(database_before_0005: str) -> None:
    legacy = ["Ann@Example.com", "ＡＮＮ@example.com", "bob@x.io", "b0b@x.io", "Stra\u00dfe@x.io"]
    with psycopg.connect(database_before_0005, autocommit=True) as conn:
        for email in legacy:
            conn.execute("INSERT INTO users (email, password_hash, role) VALUES (%s, 'x', 'customer')", (email,))
        migrations.migrate(database_before_0005)
        rows = conn.execute("SELECT email, email_key, email_skeleton FROM users ORDER BY id").fetchall()
    by_email = {email: (key, skeleton) for email, key, skeleton in rows}
    assert by_email["Ann@Example.com"] == ("ann@example.com", "ann@exarnple.corn")
    assert by_email["bob@x.io"] == ("bob@x.io", "bob@x.io")
    assert by_email["ＡＮＮ@example.com"] == (None, None)  # a later look-alike of Ann
    assert by_email["b0b@x.io"] == (None, None)  # and of bob
    assert by_email["Stra\u00dfe@x.io"][0] == "stra\u00dfe@x.io"  # lower(), not a case fold: rekey fixes it

    changed, unkeyed = rekey(database_before_0005)
    assert (changed, unkeyed) == (1, 2)
    with psycopg.connect(database_before_0005) as conn:
        key = conn.execute("SELECT email_key FROM users WHERE email = %s", ("Stra\u00dfe@x.io",)).fetchone()
    assert key == ("strasse@x.io",)
    assert rekey(database_before_0005) == (0, 2)  # idempotent


def test_racing_look_alike_registrations_leave_exactly_one_account(http_client: Client, sql) -> None:  # type: ignore[no-untyped-def]
    """The unique indexes decide, not a read-then-write check: 16 spellings at once, one wins."""
    from concurrent.futures import ThreadPoolExecutor

    local = f"race-{uuid.uuid4().hex[:6]}"
    spellings = [local.upper(), local.title(), local.replace("a", "\u0430"), local.replace("e", "\u0435"),
                 "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in local)]
    spellings += [local[:i] + local[i].upper() + local[i + 1:] for i in range(len(local)) if local[i].isalpha()]
    spellings = list(dict.fromkeys(spellings))[:16]
    bodies = [{"email": f"{s}@test.com", "password": PASSWORD, "role": "customer"} for s in spellings]
    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda b: http_client.request("POST", "/users", json_body=b).status_code, bodies))
    assert sorted(statuses) == [201] + [409] * (len(bodies) - 1), statuses
    skeleton = email_skeleton(f"{local}@test.com")
    assert sql.execute("SELECT count(*) AS n FROM users WHERE email_skeleton = %s", (skeleton,)).fetchone()["n"] == 1
