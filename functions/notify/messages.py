"""The words of each notification: subject and plain-text body from database rows."""

from __future__ import annotations

from typing import Any

from functions.notify.channels import Email


def _greeting(user: dict[str, Any]) -> str:
    return f"Hi {user.get('name') or user['email']},"


def _when(event: dict[str, Any]) -> str:
    parts = [f"at {event['venue']}" if event.get("venue") else "",
             f"on {event['start_time']:%Y-%m-%d %H:%M %Z}" if event.get("start_time") else ""]
    return " ".join(p for p in parts if p)


def booking_confirmation(user: dict[str, Any], booking: dict[str, Any],
                         event: dict[str, Any]) -> Email:
    tickets = "ticket" if booking["quantity"] == 1 else "tickets"
    body = (f"{_greeting(user)}\n\nYour booking #{booking['id']} is confirmed: "
            f"{booking['quantity']} {tickets} for {event['title']} {_when(event)}.\n")
    return Email(user["email"], f"Booking confirmed: {event['title']}", body)


def booking_cancelled(user: dict[str, Any], booking: dict[str, Any],
                      event: dict[str, Any], quantity: int) -> Email:
    tickets = "ticket" if quantity == 1 else "tickets"
    body = (f"{_greeting(user)}\n\n{quantity} {tickets} of your booking #{booking['id']} "
            f"for {event['title']} {_when(event)} are cancelled.\n")
    return Email(user["email"], f"Booking cancelled: {event['title']}", body)


def event_updated(user: dict[str, Any], event: dict[str, Any],
                  changes: dict[str, dict[str, Any]]) -> Email:
    lines = "\n".join(f"  {field}: {change.get('old')} -> {change.get('new')}"
                      for field, change in sorted(changes.items()))
    body = (f"{_greeting(user)}\n\nAn event you booked has changed: {event['title']}\n"
            f"{lines}\n")
    return Email(user["email"], f"Event updated: {event['title']}", body)


def event_cancelled(user: dict[str, Any], event: dict[str, Any]) -> Email:
    body = (f"{_greeting(user)}\n\n{event['title']} {_when(event)} is cancelled. "
            "Your booking for it is cancelled too.\n")
    return Email(user["email"], f"Event cancelled: {event['title']}", body)
