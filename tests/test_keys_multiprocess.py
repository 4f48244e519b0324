"""Signing keys across real ``authdb serve`` processes sharing one database.

A rotation or a retirement made by ``authdb keys`` reaches every process (each re-reads the
keys every ``AUTHDB_JWT_KEYS_REFRESH_SECONDS``, and at once for a token naming a kid it does
not know; the key a rotation makes current was published as the next key before, so every
process verifies its tokens at once); processes starting together on a fresh database settle
on one current key and one next key. Every wait is a poll with a deadline, never a timing
assertion.

The commands under test (`keys rotate`, `keys retire`) run through the console script; the
database is prepared, and the keys looked at, in-process (``prepare``, ``_states``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import jwt

from authdb import Auth
from authdb.services import signing_keys
from tests.cli import run_cli
from tests.conftest import PASSWORD, pg_database
from tests.test_multiprocess import prepare, serving, settings_of

SECRET = "keys-multiprocess-test-secret-0123456789abcdef"
DEADLINE_SECONDS = 30.0


def _env(url: str, refresh_seconds: int = 1) -> dict[str, str]:
    return {
        "AUTHDB_DATABASE_URL": url,
        "AUTHDB_SECRET_KEY": SECRET,
        "AUTHDB_JWT_ALGORITHM": "ES256",
        "AUTHDB_JWT_KEYS_REFRESH_SECONDS": str(refresh_seconds),
    }


def _ok(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    result = run_cli(args, env=env, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _token(base: str) -> str:
    response = httpx.post(f"{base}/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


def _kid(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def _jwks_kids(base: str) -> set[str]:
    response = httpx.get(f"{base}/.well-known/jwks.json")
    assert response.status_code == 200
    return {key["kid"] for key in response.json()["keys"]}


def _me(base: str, token: str) -> int:
    return httpx.get(f"{base}/users/me/", headers={"Authorization": f"Bearer {token}"}).status_code


def _signs_with(base: str, kid: str, published: set[str]) -> bool:
    return _kid(_token(base)) == kid and _jwks_kids(base) == published


def _refuses(base: str, token: str, published: set[str]) -> bool:
    return _me(base, token) == 401 and _jwks_kids(base) == published


async def _states(env: dict[str, str]) -> dict[str, str]:
    """``{kid: state}`` of every key, as `keys list` reads them, read in-process."""
    auth = Auth(settings_of(env))
    try:
        return {key.kid: key.state for key in await signing_keys.list_keys(auth.core)}
    finally:
        await auth.shutdown()


async def _next(env: dict[str, str]) -> str:
    """The published next key's kid."""
    (kid,) = [kid for kid, state in (await _states(env)).items() if state == "next"]
    return kid


def _rotate(env: dict[str, str]) -> str:
    """`authdb keys rotate`; the new current kid it printed."""
    out = _ok(["keys", "rotate"], env)
    match = re.fullmatch(r"new current signing key (\S+) \(ES256\)\n", out)
    assert match, out
    return match.group(1)


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.2)


async def _poll_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        await asyncio.sleep(0.2)


async def test_rotation_and_retirement_reach_both_processes(tmp_path: Path) -> None:
    """`keys rotate` makes both processes sign with the key they already published as the
    next one, old tokens still work on both, either accepts the other's new tokens; `keys
    retire` ends the old ones."""
    async with pg_database() as url:
        env = _env(url)
        await prepare(env, "alice", first_keys=True)  # the first keys, before any process starts
        with serving(env, tmp_path, 2) as (a, b):
            old_token = _token(a)
            old_kid = _kid(old_token)
            upcoming = await _next(env)
            assert _jwks_kids(a) == _jwks_kids(b) == {old_kid, upcoming}
            assert _kid(_token(b)) == old_kid

            new_kid = _rotate(env)
            assert new_kid == upcoming
            newer = await _next(env)

            fresh: list[str] = []

            def a_signs_with_the_new_key() -> bool:
                fresh.append(_token(a))
                return _kid(fresh[-1]) == new_kid

            _poll(a_signs_with_the_new_key, "A signs with the new key")
            # B may not have re-read the keys yet: it knew the new key as the next one.
            assert _me(b, fresh[-1]) == 200
            new_token = fresh[-1]

            for base in (a, b):
                _poll(
                    partial(_signs_with, base, new_kid, {old_kid, new_kid, newer}),
                    f"{base} signs with the new key and publishes the new next key",
                )
            for base in (a, b):
                assert _me(base, old_token) == 200, "a token of the replaced key still works"
                assert _me(base, new_token) == 200

            retired = _ok(["keys", "retire", old_kid], env)
            assert retired.strip() == f"retired {old_kid}"
            for base in (a, b):
                _poll(
                    partial(_refuses, base, old_token, {new_kid, newer}),
                    f"{base} refuses and unpublishes the retired key",
                )
                assert _me(base, new_token) == 200
                assert _kid(_token(base)) == new_kid

        assert await _states(env) == {newer: "next", new_kid: "current", old_kid: "retired"}


async def test_a_process_catches_up_on_an_unknown_kid(tmp_path: Path) -> None:
    """With a long refresh interval, a process still learns a key it has never seen the
    moment a token signed with it arrives: two rotations after its start (the second makes
    current a key published after the process read the keys), tokens from a process started
    later. Requests that arrive together with that kid all succeed."""
    async with pg_database() as url:
        env = _env(url, refresh_seconds=300)
        await prepare(env, "alice", first_keys=True)
        with serving(env, tmp_path, 1) as (old_process,):
            old_token = _token(old_process)
            old_kid = _kid(old_token)
            known = _jwks_kids(old_process)
            middle_kid = _rotate(env)
            assert middle_kid in known, "the first rotation's key was published before"
            new_kid = _rotate(env)
            assert new_kid not in known, "the second rotation's key is new to the process"
            newest = await _next(env)
            # Nothing tells the running process yet (its next refresh is minutes away).
            assert _kid(_token(old_process)) == old_kid
            assert _jwks_kids(old_process) == known

            with serving(env, tmp_path, 1) as (new_process,):
                new_token = _token(new_process)
                assert _kid(new_token) == new_kid
                assert _jwks_kids(new_process) == {old_kid, middle_kid, new_kid, newest}
                assert _me(new_process, old_token) == 200

                # Its first sight of the new kid is a burst of requests (many clients moving
                # to the new key at once): every one is answered after the one catch-up.
                with ThreadPoolExecutor(max_workers=20) as pool:
                    statuses = list(pool.map(lambda _: _me(old_process, new_token), range(20)))
                assert statuses == [200] * 20, "the unknown kid made it catch up"
                assert _kid(_token(old_process)) == new_kid
                assert _jwks_kids(old_process) == {old_kid, middle_kid, new_kid, newest}
                # A made-up kid is simply refused.
                forged = jwt.encode(
                    jwt.decode(new_token, options={"verify_signature": False}),
                    "x" * 32,
                    algorithm="HS256",
                    headers={"kid": "made-up"},
                )
                assert _me(old_process, forged) == 401


async def test_processes_starting_together_agree_on_one_key(
    database_url: str, tmp_path: Path
) -> None:
    """Two processes starting at once on a database without any key end up signing with, and
    publishing, the same single current key, and publishing the same single next key."""
    env = _env(database_url)
    await prepare(env)
    assert await _states(env) == {}, "no key before the start"
    with serving(env, tmp_path, 2) as (a, b):
        await prepare(env, "alice")

        async def agreed() -> bool:
            kids = {_kid(_token(a)), _kid(_token(b))}
            states = await _states(env)
            current = [kid for kid, state in states.items() if state == "current"]
            return len(kids) == 1 and current == list(kids) and kids <= _jwks_kids(a)

        await _poll_async(agreed, "both processes sign with the one current key")
        (kid,) = {_kid(_token(a)), _kid(_token(b))}
        token = _token(a)
        assert _me(b, token) == 200 and _me(a, _token(b)) == 200
        assert kid in _jwks_kids(b)
        rows = await _states(env)
        states = list(rows.values())
        assert states.count("current") == 1, rows
        assert states.count("next") == 1, rows
        (upcoming,) = [kid for kid, state in rows.items() if state == "next"]
        _poll(
            lambda: _jwks_kids(a) == _jwks_kids(b) == {kid, upcoming},
            "both processes publish the current and the next key",
        )
        # Further keys only if start-up made too many; never two current or next ones.
        assert all(state in ("current", "next", "retiring", "retired") for state in states)


async def test_retiring_the_current_key_from_an_hs256_shell_still_ends_it(
    tmp_path: Path,
) -> None:
    """An operator retiring a leaked key from a shell without AUTHDB_JWT_ALGORITHM (so HS256):
    either the command refuses in one line, or the running processes really stop accepting
    that key's tokens and sign with another key. It must never report "retired" while the
    processes go on with the leaked key."""
    async with pg_database() as url:
        env = _env(url)
        await prepare(env, "alice", first_keys=True)
        with serving(env, tmp_path, 1) as (base,):
            leaked_token = _token(base)
            leaked = _kid(leaked_token)
            shell = {**env, "AUTHDB_JWT_ALGORITHM": "HS256"}
            result = run_cli(["keys", "retire", leaked], env=shell)
            if result.returncode != 0:
                assert result.returncode == 1 and "Traceback" not in result.stderr
                assert len(result.stderr.strip().splitlines()) == 1, result.stderr
                assert "AUTHDB_JWT_ALGORITHM" in result.stderr
                return
            assert result.stdout.strip().startswith(f"retired {leaked}")
            _poll(lambda: _me(base, leaked_token) == 401, "the leaked key's token is refused")
            _poll(lambda: _kid(_token(base)) != leaked, "tokens are signed with another key")
            assert leaked not in _jwks_kids(base)
