"""A private network of Linux network namespaces for tests that need several "hosts".

``lan(tag, hosts)`` builds, with iproute2 (root only): a bridge in the root namespace holding
the LAN's first address (``10.213.N.1/24``, N chosen so that nothing on this machine uses
that /24), and ``hosts`` network namespaces, each joined to the bridge by a veth pair and
holding one address (``.2``, ``.3``, ...) with its loopback up. More root-namespace addresses
for clients can be added to the bridge (``Lan.add_address``); every namespace sees a client
by that one address. Everything is deleted on leaving, whatever happened.

``Forwarder`` relays TCP from an address of the LAN to a service that listens on loopback
only (PostgreSQL, Redis), so the namespaces reach it without its configuration changing.
``connection_owners`` and ``listening_pids`` ask ``ss`` inside a namespace which process
holds a socket, so a test can tell which worker process serves a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message names the command and its error output."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its output. Raises NetnsError (command and stderr) if it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def _used_subnets() -> set[int]:
    """The N of every 10.213.N.0/24 that an address or a route of the root namespace touches."""
    text = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
    used = {int(n) for n in re.findall(r"\b10\.213\.(\d+)\.\d+", text)}
    # A wider network (10.0.0.0/8, 10.213.0.0/16) covering the LAN would capture its traffic.
    for net in re.findall(r"\b(10\.\d+\.\d+\.\d+/\d+)", text):
        network = ipaddress.ip_network(net, strict=False)
        if network.prefixlen < 24 and ipaddress.ip_address("10.213.0.0") in network:
            raise NetnsError(f"{net} on this machine covers 10.213.0.0/16: no private LAN")
    return used


def _free_subnet() -> int:
    """A /24 of 10.213.0.0/16 in use nowhere here; the start depends on the PID, so that two
    test runs at once are unlikely to race for the same one."""
    used = _used_subnets()
    start = os.getpid() % 200 + 20
    for offset in range(236):
        candidate = 20 + (start - 20 + offset) % 236
        if candidate not in used:
            return candidate
    raise NetnsError("every 10.213.N.0/24 with N in 20..255 is in use")


@dataclass(frozen=True)
class Namespace:
    """A network namespace of the LAN: its name and its one address."""

    name: str
    address: str


@dataclass
class Lan:
    """The bridge (``gateway`` is its first address) and the namespaces joined to it."""

    tag: str
    subnet: int
    bridge: str
    namespaces: list[Namespace] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    _next_client: int = 100

    @property
    def gateway(self) -> str:
        return f"10.213.{self.subnet}.1"

    def add_address(self) -> str:
        """A new address of the root namespace on the LAN (.100, .101, ...), e.g. for an HTTP
        client whose address the servers must tell apart from another client's."""
        address = f"10.213.{self.subnet}.{self._next_client}"
        self._next_client += 1
        ip("addr", "add", f"{address}/32", "dev", self.bridge)
        return address


def _add_namespace(net: Lan, index: int) -> None:
    name = f"authdb-{net.tag}-h{index}"
    address = f"10.213.{net.subnet}.{index + 1}"
    outside, inside = f"{net.bridge[:-1]}{index}o", f"{net.bridge[:-1]}{index}i"
    ip("netns", "add", name)
    net.namespaces.append(Namespace(name, address))
    ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
    net.veths.append(outside)
    ip("link", "set", outside, "master", net.bridge)
    ip("link", "set", outside, "up")
    ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
    ip("-n", name, "link", "set", inside, "up")
    ip("-n", name, "link", "set", "lo", "up")


def _remove(net: Lan) -> list[str]:
    """Delete what ``lan`` made, as far as it got; the errors, if any, as lines."""
    errors: list[str] = []
    for step in (
        *(("netns", "del", ns.name) for ns in net.namespaces),
        *(("link", "del", veth) for veth in net.veths),  # gone with its namespace, usually
        ("link", "del", net.bridge),
    ):
        if step[0] == "link" and not os.path.exists(f"/sys/class/net/{step[2]}"):
            continue
        try:
            ip(*step)
        except NetnsError as exc:
            # The kernel removes a deleted namespace's veth peers asynchronously: one still
            # listed in /sys a moment ago may be gone by the time it is deleted here.
            if not (step[0] == "link" and "Cannot find device" in str(exc)):
                errors.append(str(exc))
    return errors


@contextlib.contextmanager
def lan(tag: str, hosts: int) -> Iterator[Lan]:
    """A bridge and ``hosts`` namespaces named ``authdb-TAG-h1``...; ``tag`` (a few letters
    and digits, at most 8) also names the interfaces, so it must be unique on the machine.

    Raises NetnsError naming the failed ``ip`` command (not root, no iproute2, ...).
    """
    if not re.fullmatch(r"[a-z0-9]{1,8}", tag):
        raise ValueError(f"tag must be 1 to 8 lowercase letters or digits: {tag!r}")
    net = Lan(tag=tag, subnet=_free_subnet(), bridge=f"ad{tag}b")
    try:
        ip("link", "add", net.bridge, "type", "bridge")
        ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        for index in range(1, hosts + 1):
            _add_namespace(net, index)
        yield net
    finally:
        errors = _remove(net)
        if errors:
            raise NetnsError("cleaning up the test network: " + "; ".join(errors))


class Forwarder:
    """Relays TCP connections to ``listen`` (host, port) pairs on to their targets, in a thread
    with its own event loop, until ``stop()``.

    ``start()`` returns once every address listens (or raises the OSError of the one that
    cannot); ``stop()`` closes the listeners and cuts every open connection.
    """

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        self.routes = routes
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="netns-forwarder", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._failure is not None:
            raise self._failure
        if not self._ready.is_set():
            raise NetnsError("the TCP forwarder did not start")
        return self

    def stop(self) -> None:
        if self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start(), or lost at stop: a test ends then
            self._failure = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        servers = []
        try:
            for (host, port), target in self.routes.items():
                handler = self._handler(target)
                servers.append(await asyncio.start_server(handler, host, port))
            self._ready.set()
            await self._stopping.wait()
        finally:
            for server in servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for server in servers:
                await server.wait_closed()

    def _handler(
        self, target: tuple[str, int]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.transport.abort()
                self._writers.discard(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for end in (writer, up_writer):
                    end.transport.abort()
                    self._writers.discard(end)

        return relay


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of stream, then pass the end on."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _ss(namespace: str, *args: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-H", "-n", "-p", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise NetnsError(f"ss in {namespace} failed: {result.stderr.strip()}")
    return result.stdout


def connection_owners(namespace: str, port: int) -> dict[tuple[str, int], int]:
    """``{(client address, client port): pid}`` for the TCP connections established to local
    ``port`` in ``namespace``: which process holds each accepted connection."""
    owners: dict[tuple[str, int], int] = {}
    lines = _ss(namespace, "-t", "state", "established", f"( sport = :{port} )")
    for line in lines.splitlines():
        found = re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)\s+users:\(\(\"[^\"]*\",pid=(\d+)", line)
        if found:
            owners[(found.group(1), int(found.group(2)))] = int(found.group(3))
    return owners


def listening_pids(namespace: str, port: int) -> set[int]:
    """The PIDs of every process holding the TCP socket listening on ``port`` in
    ``namespace`` (a pre-forking server's parent and its workers share it)."""
    lines = _ss(namespace, "-t", "-l", f"( sport = :{port} )")
    return {int(pid) for pid in re.findall(r"pid=(\d+)", lines)}
