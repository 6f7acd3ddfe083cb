"""Who the client is: one rule for the rate limits and the request log.

The peer (the socket's address; under Mangum, API Gateway's ``sourceIp``) is the client,
unless it is a proxy listed in ``TRUSTED_PROXIES``. Then ``X-Forwarded-For`` is walked
from the right, each hop having been written by the (trusted) hop after it; trusted
hops are skipped and the first untrusted one is the client. Anything that is not an IP
address stops the walk at the last address known good, so a header value never becomes
a rate-limit key or a log field. Neither does an IPv6 zone id (``fe80::1%<text>`` parses
with ``ipaddress``), nor any non-ASCII or overlong text: refused before parsing.

Per-address limits count a *network*, :func:`limit_key`: an IPv4 address, but an IPv6 /64,
since one subscriber (one home, one cloud VM) holds a whole /64 and would otherwise be
2**64 clients. Logs keep the full address.

Wherever we start uvicorn it runs with ``--no-proxy-headers``: uvicorn would otherwise
rewrite the peer from the same header (it trusts 127.0.0.1 by default), and there would
be two rules, one of them invisible to this module.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING

from shared.platform.settings import Network, get_settings, trusted_networks

if TYPE_CHECKING:
    from starlette.types import Scope

Address = IPv4Address | IPv6Address

_SCOPE_KEY = "ticketing.client_ip"
_MAX_TEXT = 64
IPV6_LIMIT_PREFIX = 64
_HEADER = b"x-forwarded-for"


def parse_ip(text: str) -> Address | None:
    """An IP address from a peer or a forwarded hop (``1.2.3.4:56`` and ``[::1]:56`` too).

    None for anything else, and for an IPv6 with a zone id: its free text must not reach
    the logs or a limit key.
    """
    if len(text) > _MAX_TEXT or not text.isascii():
        return None
    text = text.strip()
    if not text or "%" in text:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        if text.startswith("[") and "]" in text:
            text = text[1:text.index("]")]
        elif text.count(":") == 1:
            text = text.split(":", 1)[0]
        else:
            return None
        try:
            address = ip_address(text)
        except ValueError:
            return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4, one rate-limit key
    return address


@lru_cache(maxsize=4096)
def limit_key(ip: str | None) -> str:
    """What a per-address limit counts for this client address: the IPv4 address itself, or
    the IPv6 address's /64 network (one subscriber's allocation). ``unknown`` for None."""
    address = parse_ip(ip) if ip else None
    if address is None:
        return "unknown"
    if isinstance(address, IPv4Address):
        return str(address)
    return str(IPv6Network((int(address) >> (128 - IPV6_LIMIT_PREFIX) << (128 - IPV6_LIMIT_PREFIX),
                            IPV6_LIMIT_PREFIX)))


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


@lru_cache(maxsize=4096)
def _peer(peer: str) -> tuple[Address, str] | None:
    # Every request pays this (the hot booking path too): parsing and formatting an address
    # costs ~10 us, a cache hit well under 1 us, and peers repeat (clients, proxies).
    address = parse_ip(peer)
    return None if address is None else (address, str(address))


def resolve(peer: str | None, forwarded_for: list[str], networks: tuple[Network, ...]) -> str | None:
    """The client's address, or None when the peer itself is not an IP address."""
    known = _peer(peer) if peer else None
    if known is None:
        return None
    address, text = known
    if not networks or not _trusted(address, networks):
        return text
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_address = parse_ip(hop)
        if hop_address is None:
            break  # garbage: the client is the last hop we could trust to tell us
        address = hop_address
        if not _trusted(address, networks):
            break
    return str(address)


def client_ip(scope: Scope) -> str | None:
    """The client's IP address for this request, decided once and kept in the scope."""
    if _SCOPE_KEY in scope:
        return scope[_SCOPE_KEY]
    client = scope.get("client")
    peer = str(client[0]) if client else None
    networks = trusted_networks(get_settings().trusted_proxies)
    forwarded = (
        [value.decode("latin-1") for name, value in scope.get("headers") or () if name == _HEADER]
        if networks else []
    )
    ip = resolve(peer, forwarded, networks)
    scope[_SCOPE_KEY] = ip
    return ip
