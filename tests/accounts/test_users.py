"""Registration, login and profile."""

from __future__ import annotations

import jwt

from tests.support.clients import Client
from tests.support.factories import PASSWORD, login, register, unique_email


def test_register_returns_user_without_password(client: Client, sql) -> None:  # type: ignore[no-untyped-def]
    email = unique_email()
    r = client.request(
        "POST", "/users", json_body={"email": email, "password": PASSWORD, "role": "customer", "name": "Ann"}
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "email", "name", "role", "created_at", "email_verified_at"}
    assert body["email"] == email and body["name"] == "Ann" and body["role"] == "customer"
    stored = sql.execute("SELECT password_hash FROM users WHERE id = %s", (body["id"],)).fetchone()
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in stored["password_hash"]


def test_duplicate_email_is_409_whatever_the_case(client: Client) -> None:
    email = unique_email()
    register(client, "customer", email=email)
    r = client.request("POST", "/users", json_body={"email": email.upper(), "password": PASSWORD, "role": "organizer"})
    assert r.status_code == 409
    assert r.json()["code"] == "email_taken"


def test_login_issues_jwt_with_subject_role_and_expiry(client: Client) -> None:
    user = register(client, "organizer")
    r = client.request("POST", "/auth/token", form={"username": user["email"], "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(user["id"]) and claims["role"] == "organizer"
    assert claims["exp"] > claims["iat"]


def test_login_with_wrong_password_or_unknown_email_is_401(client: Client) -> None:
    user = register(client, "customer")
    for username, password in [(user["email"], "wrong"), (unique_email(), PASSWORD)]:
        r = client.request("POST", "/auth/token", form={"username": username, "password": password})
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_credentials"


def test_login_email_is_case_insensitive(client: Client) -> None:
    user = register(client, "customer")
    assert login(client, user["email"].upper())


def test_users_me(client: Client) -> None:
    user = register(client, "customer")
    token = login(client, user["email"])
    r = client.request("GET", "/users/me", token=token)
    assert r.status_code == 200
    assert r.json()["id"] == user["id"]


def test_a_password_with_a_tab_can_be_changed(client: Client) -> None:
    """Any password that registers and signs in is accepted as the current one too."""
    email, tabbed = unique_email(), "tab\tin-the-pass-9"
    r = client.request("POST", "/users", json_body={"email": email, "password": tabbed, "role": "customer"})
    assert r.status_code == 201, r.text
    token = login(client, email, tabbed)
    r = client.request("PUT", "/users/me/password", token=token,
                       json_body={"current_password": tabbed, "new_password": "n3w-pass-without-tab"})
    assert r.status_code == 204, r.text
    assert login(client, email, "n3w-pass-without-tab")
