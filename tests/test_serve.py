"""The real `authdb serve` process, over a socket, as a user runs it."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.cli import AUTHDB, run_cli, subprocess_env, wait_healthy
from tests.conftest import PASSWORD, free_port, pg_database


@contextmanager
def serving(cwd: Path, env: dict[str, str], *extra: str) -> Iterator[str]:
    """Start `authdb serve` and yield its base URL; stop it (by PID) afterwards."""
    port = free_port()
    log = (cwd / f"serve-{port}.log").open("w")
    process = subprocess.Popen(
        [AUTHDB, "serve", "--port", str(port), *extra],
        cwd=cwd,
        env=subprocess_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, cwd / f"serve-{port}.log")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_serve_with_zero_configuration(tmp_path: Path) -> None:
    # Only serve and migrate create the database; createuser in an empty folder would refuse.
    assert run_cli(["migrate"], env={}, cwd=tmp_path).returncode == 0
    created = run_cli(
        ["createuser", "--username", "alice", "--email", "alice@example.com", "--password-stdin"],
        env={},
        stdin=PASSWORD + "\n",
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    with serving(tmp_path, {}) as base:
        assert (tmp_path / "authdb.db").exists()
        response = httpx.post(f"{base}/token", data={"username": "Alice", "password": PASSWORD})
        assert response.status_code == 200
        token = response.json()["access_token"]
        me = httpx.get(f"{base}/users/me/", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "alice"
        assert me.json()["is_verified"] is True
        assert httpx.get(f"{base}/readyz").status_code == 200
        docs = httpx.get(f"{base}/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = httpx.get(f"{base}/openapi.json").json()
        flows = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        assert flows["password"]["tokenUrl"] == "/token"
        _huge_heads_are_refused_with_431(base)
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert "AUTHDB_SECRET_KEY is not set" in log
    # The generated key was kept in the database: a restart honours old tokens.
    with serving(tmp_path, {}) as base:
        me = httpx.get(f"{base}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200


async def test_serve_refuses_postgres_schema_that_is_behind(tmp_path: Path) -> None:
    async with pg_database() as url:
        env = {"AUTHDB_DATABASE_URL": url, "AUTHDB_SECRET_KEY": "k" * 40}
        result = subprocess.run(
            [AUTHDB, "serve", "--port", str(free_port())],
            env=subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert "authdb migrate" in result.stderr
        assert "Traceback" not in result.stderr
        assert run_cli(["migrate"], env=env).returncode == 0
        with serving(tmp_path, env, "--workers", "2") as base:
            assert httpx.get(f"{base}/readyz").status_code == 200


def _huge_heads_are_refused_with_431(base: str) -> None:
    """Through the real server: a 4 MB header is cut off with 431, and the server stays up."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        answer = b""
        with contextlib.suppress(OSError):  # the server closes while we still send
            for _ in range(64):
                sock.sendall(b"a" * 65536)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert json.loads(body) == {"detail": "Request headers too large"}
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_links_follow_the_port_served_on_when_public_url_is_unset(tmp_path: Path) -> None:
    """Without AUTHDB_PUBLIC_URL, emailed links point at the address `serve` listens on."""
    with serving(tmp_path, {}) as base:
        registered = httpx.post(
            f"{base}/register",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        assert registered.status_code == 201
        port = base.rsplit(":", 1)[1]
        log = tmp_path / f"serve-{port}.log"
        deadline = time.monotonic() + 20
        while "/verify?token=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"{base}/verify?token=" in log.read_text()


def test_listening_url_names_a_reachable_address() -> None:
    from authdb.cli.main import listening_url

    assert listening_url("127.0.0.1", 8001) == "http://127.0.0.1:8001"
    assert listening_url("0.0.0.0", 80) == "http://127.0.0.1:80"  # noqa: S104
    assert listening_url("::", 8000) == "http://[::1]:8000"
    assert listening_url("::1", 8000) == "http://[::1]:8000"
    assert listening_url("auth.example.com", 8443) == "http://auth.example.com:8443"
