"""A fresh `authdb serve` without SMTP prints the emailed links in its output, ready to follow."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.conftest import PASSWORD
from tests.test_serve import serving

NEW_PASSWORD = "a different, long passphrase"


def _link_in_log(cwd: Path, base: str, kind: str, seen: int = 0) -> str:
    """Wait for the (seen+1)-th ``kind`` link to ``base`` (the served address: without
    AUTHDB_PUBLIC_URL, links follow --host/--port) in the serve log; return its token."""
    pattern = re.compile(rf"{re.escape(base)}/{kind}\?token=([A-Za-z0-9_\-]+)")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        log = "".join(path.read_text() for path in cwd.glob("serve-*.log"))
        tokens = pattern.findall(log)
        if len(tokens) > seen:
            return str(tokens[seen])
        time.sleep(0.1)
    raise AssertionError(f"no {kind} link in the serve log:\n{log}")


def test_fresh_serve_logs_the_links_and_they_work(tmp_path: Path) -> None:
    with serving(tmp_path, {}) as base:
        registered = httpx.post(
            f"{base}/register",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        assert registered.status_code == 201, registered.text
        token = _link_in_log(tmp_path, base, "verify")
        verified = httpx.post(f"{base}/verify", json={"token": token})
        assert verified.status_code == 200
        assert verified.json()["is_verified"] is True

        forgot = httpx.post(f"{base}/password/forgot", json={"email": "alice@example.com"})
        assert forgot.status_code == 202
        token = _link_in_log(tmp_path, base, "reset-password")
        reset = httpx.post(
            f"{base}/password/reset", json={"token": token, "password": NEW_PASSWORD}
        )
        assert reset.status_code == 204
        login = httpx.post(f"{base}/token", data={"username": "alice", "password": NEW_PASSWORD})
        assert login.status_code == 200
    log = "".join(path.read_text() for path in tmp_path.glob("serve-*.log"))
    assert "AUTHDB_SMTP_HOST is not set" in log
    assert "Traceback" not in log
