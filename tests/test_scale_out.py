"""Scale-out: two authdb hosts, each ``authdb serve --workers 2``, share one PostgreSQL and one
Redis, and agree on revocation, lockout, rate limits and signing keys.

The hosts are Linux network namespaces (``tests/netns.py``, needs root and iproute2) joined
by veth pairs to a bridge in the root namespace, all on a /24 of 10.213.0.0/16 that nothing
else on the machine uses. PostgreSQL and Redis listen on loopback only and are left as they
are: a TCP forwarder in this process relays the bridge's address (ports 5432 and 6379) to
them, so every worker of both hosts reaches the same database and the same Redis (database
14, under a key prefix unique to the run; only those keys are deleted afterwards).

Why a bridge: the per-address rate limits count by the client address a host sees. With one
veth pair per host the test would reach each host from a different address and two budgets
would be spent, which proves nothing. On the bridge, a client address of the root namespace
is the same address for both hosts, with no proxy headers to trust, so a budget spent half
on each host is one budget only if the hosts really share it. Each test takes an address of
its own (``Lan.add_address``), so no test spends another's budget.

Which worker answers: every check goes through ``Route``s, HTTP clients whose one keep-alive
connection a given worker process accepted (``ss`` inside the namespace names the process
holding it), so "both workers of both hosts" is checked, not left to chance. Every wait is a
poll with a deadline; times are only reported in failure messages, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis

from tests.cli import AUTHDB, run_cli, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, pg_database
from tests.netns import (
    Forwarder,
    Lan,
    Namespace,
    NetnsError,
    connection_owners,
    lan,
    listening_pids,
)
from tests.test_multiprocess import prepare

SECRET = "scale-out-test-secret-key-0123456789abcdef"
WRONG = "not the right password"
REDIS_URL = "redis://127.0.0.1:6379/14"
PORT = 8000  # each host has its own address, so both use the same port
WORKERS = 2
MAX_FAILURES = 4
LOGIN_FAILURE_BUDGET = 20
DEADLINE_SECONDS = 15.0
# uvicorn closes a connection idle for 5 s; one idle longer than this is checked first.
IDLE_SECONDS = 2.0
CONNECT_TRIES = 200
USERS = ("alice", "bob", "xavier", "yvonne", "carol", "kim")


@dataclass
class Host:
    """One ``authdb serve --workers 2`` in its namespace; ``workers`` are its worker PIDs."""

    name: str
    namespace: Namespace
    process: subprocess.Popen[bytes]
    log: Path
    workers: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.namespace.address}:{PORT}"


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    address = response.extensions["network_stream"].get_extra_info("client_addr")
    return int(address[1])


class Route:
    """One worker of one host, reached from the client address ``source``: an HTTP client
    whose one keep-alive connection that worker accepted. A request that left on another
    connection (the server closed the old one) fails the test unless the same worker took the
    new one too, so each answer is known to come from ``pid``."""

    def __init__(self, host: Host, pid: int, source: str) -> None:
        self.host, self.pid, self.source = host, pid, source
        self.name = f"{host.name} worker {pid}"
        self._client: httpx.Client | None = None
        self._port = 0
        self._used = 0.0
        self._connect()

    def _owner(self, port: int) -> int | None:
        return connection_owners(self.host.namespace.name, PORT).get((self.source, port))

    def _connect(self) -> None:
        """A new connection, until the wanted worker accepts one (the kernel picks)."""
        for _ in range(CONNECT_TRIES):
            self.close()
            self._client = httpx.Client(
                base_url=self.host.base,
                transport=httpx.HTTPTransport(local_address=self.source),
                timeout=30,
            )
            response = self._client.get("/healthz")
            assert response.status_code == 200, response.text
            self._port = _local_port(response)
            if self._owner(self._port) == self.pid:
                self._used = time.monotonic()
                return
        raise AssertionError(f"{CONNECT_TRIES} connections from {self.source}, none to {self.name}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``method path`` answered by this worker (httpx keyword arguments)."""
        assert self._client is not None
        if time.monotonic() - self._used > IDLE_SECONDS:
            # The server may have closed the idle connection: a cheap request finds out.
            port = _local_port(self._client.get("/healthz"))
            if port != self._port and self._owner(port) != self.pid:
                self._connect()
            elif port != self._port:
                self._port = port
        response = self._client.request(method, path, **kwargs)
        port = _local_port(response)
        if port != self._port:
            owner = self._owner(port)
            assert owner == self.pid, f"{method} {path} meant for {self.name} went to {owner}"
            self._port = port
        self._used = time.monotonic()
        return response

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class Cluster:
    """The LAN, the two hosts, and the settings of a CLI run in the root namespace."""

    net: Lan
    hosts: list[Host]
    cli_env: dict[str, str]
    redis_prefix: str

    def routes(self, source: str) -> list[Route]:
        """One route from ``source`` to every worker: host 1's, then host 2's."""
        return [Route(host, pid, source) for host in self.hosts for pid in host.workers]


def _host_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "AUTHDB_DATABASE_URL": database_url,
        "AUTHDB_SECRET_KEY": SECRET,
        "AUTHDB_REDIS_URL": redis_url,
        "AUTHDB_REDIS_KEY_PREFIX": prefix,
        "AUTHDB_REDIS_TIMEOUT_SECONDS": "5",  # a loaded machine is no outage
        "AUTHDB_JWT_ALGORITHM": "ES256",
        "AUTHDB_JWT_KEYS_REFRESH_SECONDS": "1",
        "AUTHDB_LOGIN_MAX_FAILURES": str(MAX_FAILURES),
        "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": f"{LOGIN_FAILURE_BUDGET}/minute",
        # A rotated refresh token presented again is reuse at once, not within a grace period.
        "AUTHDB_REFRESH_REUSE_INTERVAL_SECONDS": "0",
        "AUTHDB_DATABASE_POOL_SIZE": "4",  # four workers, on a PostgreSQL other tests share
    }


def _start(name: str, namespace: Namespace, env: dict[str, str], log_dir: Path) -> Host:
    log = log_dir / f"{namespace.name}.log"
    serve = [AUTHDB, "serve", "--host", namespace.address, "--port", str(PORT)]
    with log.open("w") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace.name, *serve, "--workers", str(WORKERS)],
            env=subprocess_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
    return Host(name, namespace, process, log)


def _find_workers(host: Host) -> None:
    """Fill ``host.workers``: the processes besides the parent on the listening socket."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = listening_pids(host.namespace.name, PORT) - {host.process.pid}
        if len(pids) == WORKERS:
            host.workers = sorted(pids)
            return
        time.sleep(0.2)
    raise AssertionError(f"{host.name}: not {WORKERS} workers: {host.log.read_text()[-2000:]}")


def _stop(host: Host) -> None:
    """Stop the host's server by PID, then any of its workers still there (by PID too)."""
    host.process.terminate()
    try:
        host.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        host.process.kill()
        host.process.wait(timeout=5)
    for pid in host.workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def _forget_redis_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    finally:
        client.close()


def _network(stack: ExitStack) -> Lan:
    try:
        return stack.enter_context(lan(f"so{os.getpid() % 1_000_000}", hosts=2))
    except NetnsError as exc:
        pytest.fail(f"the scale-out test needs root and iproute2 (ip netns, veth, bridge): {exc}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two hosts on a fresh PostgreSQL database with the test users and the first signing
    keys (as `authdb migrate`, `authdb createuser` and `authdb keys rotate` make them)."""
    log_dir = tmp_path_factory.mktemp("scale-out")
    prefix = f"authdb-so-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        database = pg_database()
        url = asyncio.run(database.__aenter__())
        stack.callback(lambda: asyncio.run(database.__aexit__(None, None, None)))
        stack.callback(_forget_redis_keys, prefix)
        cli_env = _host_env(url, REDIS_URL, prefix)
        asyncio.run(prepare(cli_env, *USERS, first_keys=True))

        net = _network(stack)
        forwarder = Forwarder(
            {(net.gateway, 5432): ("127.0.0.1", 5432), (net.gateway, 6379): ("127.0.0.1", 6379)}
        ).start()
        stack.callback(forwarder.stop)
        lan_url = url.replace("@127.0.0.1:5432/", f"@{net.gateway}:5432/")
        env = _host_env(lan_url, f"redis://{net.gateway}:6379/14", prefix)
        hosts = []
        for number, namespace in enumerate(net.namespaces, start=1):
            hosts.append(_start(f"host {number}", namespace, env, log_dir))
            stack.callback(_stop, hosts[-1])
        for host in hosts:
            wait_healthy(host.base, host.process, host.log)
            _find_workers(host)
        yield Cluster(net, hosts, cli_env, prefix)


@pytest.fixture
def routes(cluster: Cluster) -> Iterator[list[Route]]:
    """From a client address of the test's own, one route to each worker, alternating hosts:
    host 1 worker 1, host 2 worker 1, host 1 worker 2, host 2 worker 2."""
    made = cluster.routes(cluster.net.add_address())
    yield [made[0], made[2], made[1], made[3]]
    for route in made:
        route.close()


def _login(route: Route, username: str, password: str = PASSWORD) -> httpx.Response:
    return route.request("POST", "/token", data={"username": username, "password": password})


def _tokens(route: Route, username: str) -> dict[str, str]:
    response = _login(route, username)
    assert response.status_code == 200, f"{route.name}: {response.text}"
    return dict(response.json())


def _refresh(route: Route, refresh_token: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return route.request("POST", "/token", data=form)


def _me(route: Route, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}"}
    return route.request("GET", "/users/me", headers=headers).status_code


def _refuses(route: Route, access_token: str) -> bool:
    return _me(route, access_token) == 401


def _signs_with(route: Route, kid: str) -> bool:
    return _kid(_tokens(route, "kim")["access_token"]) == kid


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _jwks(route: Route) -> dict[str, Any]:
    response = route.request("GET", "/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _poll(condition: Callable[[], bool], what: str, since: float) -> float:
    """Wait until ``condition()``; the seconds since ``since`` when it held. AssertionError
    naming ``what`` after DEADLINE_SECONDS."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - since


def test_each_route_reaches_its_own_worker(cluster: Cluster, routes: list[Route]) -> None:
    """Four routes, four distinct worker processes, two per host, all serving."""
    assert {route.pid for route in routes} == {pid for h in cluster.hosts for pid in h.workers}
    assert len({route.pid for route in routes}) == 2 * WORKERS
    for route in routes:
        assert route.request("GET", "/readyz").status_code == 200, route.name


def test_a_session_ended_on_one_host_ends_on_every_worker(routes: list[Route]) -> None:
    """A token from host 1 works everywhere; its logout on host 1 ends it on both workers of
    host 2 (and host 1's other worker), as does its refresh token."""
    first = routes[0]
    tokens = _tokens(first, "alice")
    for route in routes:
        assert _me(route, tokens["access_token"]) == 200, route.name
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert first.request("POST", "/logout", headers=headers).status_code == 204
    ended = time.monotonic()
    took: dict[str, str] = {}
    for route in routes[1:]:  # host 2, host 1's other worker, host 2
        seconds = _poll(
            partial(_refuses, route, tokens["access_token"]),
            f"{route.name} refuses the access token of a session ended on {first.name} "
            f"(others took {took})",
            ended,
        )
        took[route.name] = f"{seconds:.2f} s"
    refused = _refresh(routes[3], tokens["refresh_token"])
    assert refused.status_code == 401, f"{refused.text} (revocation reached them in {took})"
    assert refused.json()["error"] == "invalid_grant"


def test_a_refresh_token_spent_on_one_host_is_spent_on_the_other(routes: list[Route]) -> None:
    """Rotated on host 1, the old refresh token is spent on host 2: presenting it there is
    reuse, which ends the session everywhere (its successor and access tokens too)."""
    h1, h2, h1_other, h2_other = routes
    tokens = _tokens(h2, "bob")
    rotated = _refresh(h1, tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    for route in routes:
        assert _me(route, new["access_token"]) == 200, route.name

    reused = _refresh(h2_other, tokens["refresh_token"])
    assert reused.status_code == 401, reused.text
    assert reused.json()["error"] == "invalid_grant"
    ended = time.monotonic()
    assert _refresh(h1_other, new["refresh_token"]).status_code == 401, "the session ended"
    for route in routes:
        _poll(
            partial(_refuses, route, new["access_token"]),
            f"{route.name} refuses the access token of a session ended by reuse on {h2_other.name}",
            ended,
        )


def test_failed_logins_on_both_hosts_add_up_to_one_lockout(routes: list[Route]) -> None:
    """AUTHDB_LOGIN_MAX_FAILURES wrong passwords in total, spread over both hosts and all
    four workers, lock the account on all of them; one fewer does not."""
    for route in routes[: MAX_FAILURES - 1]:
        assert _login(route, "xavier", WRONG).status_code == 401, route.name
    assert _login(routes[-1], "xavier").status_code == 200, "one failure short: not locked"

    spread = [routes[i % len(routes)] for i in range(MAX_FAILURES)]
    for number, route in enumerate(spread, start=1):
        assert _login(route, "yvonne", WRONG).status_code == 401, f"failure {number}, {route.name}"
    for route in routes:
        for password in (PASSWORD, WRONG):
            locked = _login(route, "yvonne", password)
            assert locked.status_code == 429, f"{route.name}: {locked.text}"
            assert int(locked.headers["retry-after"]) > 60, "a lock, not a rate limit"


def test_an_address_budget_spent_on_both_hosts_is_one_budget(
    cluster: Cluster, routes: list[Route]
) -> None:
    """The login-failure budget of one client address, spent half on each host (a quarter on
    each worker), is exhausted on both: each host alone saw half of it. Another address still
    has its own."""
    source = routes[0].source
    for number in range(LOGIN_FAILURE_BUDGET):
        route = routes[number % len(routes)]
        # A name per attempt: no account lock, only the address budget is spent.
        failed = _login(route, f"nobody-{number}", WRONG)
        assert failed.status_code == 401, f"attempt {number + 1} on {route.name}: {failed.text}"
    for route in routes:
        limited = _login(route, "carol")  # right password, account unlocked: the address is over
        assert limited.status_code == 429, f"{route.name}: {limited.text}"
        assert 0 < int(limited.headers["retry-after"]) <= 60

    other = cluster.routes(cluster.net.add_address())
    try:
        assert all(_login(route, "carol").status_code == 200 for route in other)
    finally:
        for route in other:
            route.close()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{cluster.redis_prefix}:*")]
    finally:
        client.close()
    assert [key for key in keys if f"login_failures/{source}" in key], keys


def test_both_hosts_sign_and_verify_with_the_same_keys(
    cluster: Cluster, routes: list[Route]
) -> None:
    """Tokens of either host verify on both; the JWKS is the same document everywhere;
    after `authdb keys rotate` every worker signs with the new key and still accepts tokens
    of the old one."""
    old_token = _tokens(routes[0], "kim")["access_token"]
    old_kid = _kid(old_token)
    published = _jwks(routes[0])
    assert old_kid in {key["kid"] for key in published["keys"]}
    for route in routes:
        assert _jwks(route) == published, route.name
        assert _me(route, old_token) == 200, route.name
        assert _kid(_tokens(route, "kim")["access_token"]) == old_kid, route.name

    rotated = run_cli(["keys", "rotate"], env=cluster.cli_env)
    assert rotated.returncode == 0, rotated.stderr
    match = re.fullmatch(r"new current signing key (\S+) \(ES256\)\n", rotated.stdout)
    assert match, rotated.stdout
    new_kid = match.group(1)
    assert new_kid in {key["kid"] for key in published["keys"]}, "published as the next key"
    since = time.monotonic()

    for route in routes:
        _poll(
            partial(_signs_with, route, new_kid),
            f"{route.name} signs with the new key {new_kid}",
            since,
        )

    def same_keys_everywhere() -> bool:
        documents = [_jwks(route) for route in routes]
        kids = {key["kid"] for key in documents[0]["keys"]}
        return all(doc == documents[0] for doc in documents) and {old_kid, new_kid} <= kids

    _poll(same_keys_everywhere, "every worker publishes the same keys", since)
    new_token = _tokens(routes[3], "kim")["access_token"]
    for route in routes:
        assert _me(route, old_token) == 200, f"{route.name}: a token of the replaced key"
        assert _me(route, new_token) == 200, route.name
