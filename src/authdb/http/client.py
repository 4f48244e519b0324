"""The client's address, believing ``X-Forwarded-For`` only from trusted proxies.

Each proxy appends the address it received the request from, so the list is read from the
right: hops are peeled off while they are trusted proxies, and the first untrusted one is
the client. Everything to the left of it was written by the client and may be forged.
"""

from __future__ import annotations

import ipaddress

from fastapi import Request

from authdb.names import control_character
from authdb.services.core import ClientInfo

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(value: str) -> _Address | None:
    """An IP address from a peer or a forwarded hop (``[v6]:port`` and ``v4:port`` too)."""
    value = value.strip()
    if value.startswith("["):  # "[2001:db8::1]:443"
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # "192.0.2.1:443"; bare IPv6 has several colons
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # A zone ("fe80::1%eth0") names an interface of the sender, not the client, and its
        # text is anything a forwarder wrote: dropped, so it never reaches a stored address.
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(value.split("%", 1)[0])
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; compare them as IPv4.
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


class ClientResolver:
    """Turns a request into a ``ClientInfo`` (address and user agent)."""

    def __init__(self, trusted_proxies: list[str]) -> None:
        # Parsed now, so a bad entry fails when the app is built, not on the first request.
        self._trusted: list[_Network] = [
            ipaddress.ip_network(item.strip(), strict=False) for item in trusted_proxies
        ]

    def _is_trusted(self, address: _Address) -> bool:
        return any(address in network for network in self._trusted)

    def address(self, request: Request) -> str | None:
        """The client's address: the peer, or with a trusted peer the forwarded origin."""
        raw_peer = request.client.host if request.client else None
        if raw_peer is None:
            return None
        peer = parse_address(raw_peer)
        if peer is None:  # not an IP (a Unix socket, a test client): use as it is
            return raw_peer[:64]
        if not self._is_trusted(peer):
            return str(peer)
        # Several X-Forwarded-For lines form one list (RFC 9110 5.3); reading only the first
        # would let a client's own header hide the one its proxy added.
        header = ",".join(request.headers.getlist("x-forwarded-for"))
        hops = [hop for hop in (h.strip() for h in header.split(",")) if hop]
        client = peer
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                # The proxy in front wrote something that is not an address; nothing
                # further left can be trusted, so the last address we could believe stands.
                break
            client = address
            if not self._is_trusted(address):
                break
        return str(client)

    def __call__(self, request: Request) -> ClientInfo:
        agent = request.headers.get("user-agent")
        return ClientInfo(
            ip_address=self.address(request), user_agent=_printable(agent[:512]) if agent else None
        )


def _printable(text: str) -> str:
    """``text`` with control characters (C1 ones arrive as Latin-1 bytes) made visible as U+FFFD.

    The user agent lands in the session list and the audit trail, read in terminals.
    """
    return "".join("\ufffd" if control_character(char) else char for char in text)
