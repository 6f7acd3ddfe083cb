"""The three-type hot event of the rush: one event, three ticket types, a VIP quota inside the event quota.

Issue 14's scenario. The event is created as an organizer would, through the API:
``POST /events`` (its default type, "General admission", free, in the event quota of
``total_tickets``), then ``POST /events/{id}/ticket-types`` for "VIP" and "VIP lounge"
(priced), then ``POST /events/{id}/quotas`` for a "VIP" quota listing both. A VIP or lounge
ticket so takes one unit of two quotas (the event's and the VIP one) in one grant; a general
ticket one unit of the event quota. Every request books one ticket of a type drawn per
request by :data:`TYPES`' weights: half of the bookings claim two quotas.

Neither quota runs out within a rush (like the one-type hot event): what is measured is the
cost of claiming several quotas, not of refusing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from bench.wrk_crowd import ORGANIZER_ADDRESS, call, create_events


@dataclass(frozen=True)
class TypeSpec:
    name: str
    price_minor: int
    weight: int  # share of the requests, in percent
    vip: bool  # in the VIP quota


# The default type first: POST /events made it; the others are created here.
TYPES = (
    TypeSpec("General admission", 0, 50, vip=False),
    TypeSpec("VIP", 12_900, 30, vip=True),
    TypeSpec("VIP lounge", 19_900, 20, vip=True),
)
VIP_QUOTA = "VIP"
VIP_QUOTA_SIZE = 400_000  # inside the event quota's 1,000,000: neither runs out in a rush


def describe() -> str:
    """The scenario in one line, for the table."""
    mix = ", ".join(f"{t.name} {t.weight}%" for t in TYPES)
    vip = " + ".join(t.name for t in TYPES if t.vip)
    return (f"types drawn per request: {mix}; {vip} share a {VIP_QUOTA} quota of {VIP_QUOTA_SIZE:,} "
            "inside the event quota")


@dataclass(frozen=True)
class ThreeTypeEvent:
    event_id: int
    type_ids: tuple[int, ...]  # in TYPES' order
    vip_quota_id: int

    @property
    def weights(self) -> list[tuple[int, int]]:
        """(type id, weight) pairs, what the generators draw from."""
        return [(type_id, spec.weight) for type_id, spec in zip(self.type_ids, TYPES, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "vip_quota_id": self.vip_quota_id,
                "types": [{"id": i, "name": t.name, "price_minor": t.price_minor, "weight": t.weight, "vip": t.vip}
                          for i, t in zip(self.type_ids, TYPES, strict=True)]}


def create(api: httpx.Client, token: str, tickets: int, per_customer: int, title: str) -> ThreeTypeEvent:
    """One three-type event, through the API as its organizer."""
    auth = {"Authorization": f"Bearer {token}"}
    event_id = create_events(api, token, 1, tickets, title, per_customer=per_customer)[0]
    shown = call(api, "GET", f"/events/{event_id}", ORGANIZER_ADDRESS, headers=auth).json()
    default = [t["id"] for t in shown["ticket_types"]]
    if len(default) != 1:
        raise RuntimeError(f"a new event should show its one default type, not {shown['ticket_types']}")
    type_ids = [int(default[0])]
    for spec in TYPES[1:]:
        r = call(api, "POST", f"/events/{event_id}/ticket-types", ORGANIZER_ADDRESS, headers=auth,
                 json={"name": spec.name, "price_minor": spec.price_minor})
        type_ids.append(int(r.json()["id"]))
    vip = [type_id for type_id, spec in zip(type_ids, TYPES, strict=True) if spec.vip]
    r = call(api, "POST", f"/events/{event_id}/quotas", ORGANIZER_ADDRESS, headers=auth,
             json={"name": VIP_QUOTA, "size": VIP_QUOTA_SIZE, "ticket_type_ids": vip})
    return ThreeTypeEvent(event_id, tuple(type_ids), int(r.json()["id"]))
