"""The client's address, believing ``X-Forwarded-For`` only from trusted proxies."""

from __future__ import annotations

import ipaddress
from functools import cached_property

from fastapi import Request

from authdb.services.core import ClientInfo

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientResolver:
    def __init__(self, trusted_proxies: list[str]) -> None:
        self._trusted_spec = trusted_proxies

    @cached_property
    def _trusted(self) -> list[_Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self._trusted_spec]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def address(self, request: Request) -> str | None:
        peer = request.client.host if request.client else None
        if peer is None or not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        # Walk from the nearest hop outwards; the first untrusted one is the client.
        for hop in reversed([h for h in hops if h]):
            if not self._is_trusted(hop):
                return hop[:64]
        return peer

    def __call__(self, request: Request) -> ClientInfo:
        agent = request.headers.get("user-agent")
        return ClientInfo(
            ip_address=self.address(request), user_agent=agent[:512] if agent else None
        )
