"""Password hashing (pwdlib: argon2id, legacy bcrypt) and the password policy (NIST 800-63B)."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import logging
import secrets
import time
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from authdb import metrics
from authdb.hash_threads import HashThreads
from authdb.hashers import FOREIGN_HASHERS, hash_problem
from authdb.names import control_character
from authdb.settings import PasswordHashPriority, Settings

if TYPE_CHECKING:
    from authdb.services.core import PasswordValidator

log = logging.getLogger("authdb.passwords")

MIN_LENGTH = 8
# What the person is told when an application's validator fails rather than answers: the
# password is refused (a broken rule must not let every password through), without a 500.
VALIDATOR_FAILED = "Password could not be checked against this site's rules; try again later"
MAX_LENGTH = 1024
_BCRYPT_MAX_BYTES = 72
# Stored hashes that are plain bcrypt of the password (authdb's legacy hashes, Django's
# "bcrypt$"), which sees only its first 72 bytes.
_BCRYPT_PREFIXES = ("$2", "bcrypt$")
_T = TypeVar("_T")


def _timed(work: Callable[..., _T], *args: str) -> tuple[_T, float]:
    """``work(*args)`` and the seconds it took (for authdb_password_hash_seconds)."""
    started = time.perf_counter()
    return work(*args), time.perf_counter() - started


class _TimedFailure(Exception):
    """``error``, raised by password work after ``seconds``: carried back to the event loop
    so that a failed hash is timed too."""

    def __init__(self, error: Exception, seconds: float) -> None:
        super().__init__(error)
        self.error, self.seconds = error, seconds


def _timed_job(work: Callable[..., _T], *args: str) -> tuple[_T, float]:
    """``_timed`` on a hashing thread; raises _TimedFailure for an exception of ``work``."""
    started = time.perf_counter()
    try:
        value = work(*args)
    except Exception as exc:
        raise _TimedFailure(exc, time.perf_counter() - started) from exc
    return value, time.perf_counter() - started


def normalize_password(password: str) -> str:
    """The form a password is hashed and checked in: NFKC (NIST SP 800-63B 5.1.1.2).

    A password typed on another keyboard or system (NFD on macOS, full-width forms) then
    matches the one registered.
    """
    return unicodedata.normalize("NFKC", password)


# The start of a stored hash that no password matches (Django's convention): accounts made
# through another provider have one until a password is set through a reset link.
UNUSABLE_PREFIX = "!"


def unusable_password() -> str:
    """A stored hash that matches no password: ``!`` and random text."""
    return UNUSABLE_PREFIX + secrets.token_urlsafe(30)


def is_usable(hashed: str) -> bool:
    """False for ``unusable_password()``'s hashes (they verify nothing, at a hash's cost)."""
    return not hashed.startswith(UNUSABLE_PREFIX)


def _encodable(password: str) -> bool:
    """True unless ``password`` holds a lone surrogate, which UTF-8 cannot encode."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Hasher:
    """Hashes and verifies off the event loop, with bounded CPU use: at most ``concurrency``
    hashes at once, on threads of the hasher's own (argon2 releases the GIL).

    Waiting hashes queue at those threads, not on the event loop: a thread that finishes one
    starts the next at once, so that a loop kept busy by other requests (a ``/users/me``
    flood) does not leave the hashing thread idle between two logins. With ``priority``
    ``"idle"`` the threads give way to everything else and are rescued when starved
    (authdb.hash_threads).

    Argon2id is the current algorithm; bcrypt hashes (the tutorial's) and those imported from
    other systems (authdb.hashers: Django, Keycloak) verify and are upgraded.
    Passwords are NFKC-normalized first; a hash stored before that rule (of the password as
    typed) still verifies, and is replaced by one of the normalized form.
    """

    def __init__(
        self,
        concurrency: int = 1,
        *,
        time_cost: int = 2,
        memory_kib: int = 19456,
        parallelism: int = 1,
        priority: PasswordHashPriority = "idle",
    ) -> None:
        argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._hash = PasswordHash((argon2, BcryptHasher(), *FOREIGN_HASHERS))
        self._concurrency, self._priority = concurrency, priority
        self._single_lane = parallelism == 1  # argon2 then hashes on the calling thread
        self._threads: HashThreads | None = None  # made at first use
        # Verified in place of a missing user's hash, so unknown names cost the same time.
        self._dummy_hash, self._hash_seconds = _timed(self._hash.hash, secrets.token_urlsafe(16))
        # A stored hash that starts so costs what a new one does (same algorithm, parameters).
        # ("$argon2id$v=19$m=19456,t=2,p=1$": the PHC string format before the salt.)
        self._current_prefix = "$".join(self._dummy_hash.split("$")[:4]) + "$"
        # Hash verifications run so far (real and dummy alike): lets tests check that unknown
        # and known names cost the same work without timing anything.
        self.verifications = 0

    async def hash(self, password: str) -> str:
        """An argon2id hash of the normalized ``password``."""
        normalized = normalize_password(password)
        return await self._off_loop("hash", self._hash.hash, normalized)

    async def _off_loop(
        self, op: str, work: Callable[..., _T], *args: str, typical: bool = True
    ) -> _T:
        """``work(*args)`` on one of the hasher's threads; a cancelled caller's call is
        dropped if it has not started yet. Its seconds are reported as password work ``op``
        once answered, here: a rescued job runs twice but counts once. ``typical=False``: it
        costs more or less than one hash of the current parameters (authdb.hash_threads)."""
        if self._threads is None:
            self._threads = HashThreads(
                self._concurrency,
                self._priority,
                cost=self._hash_seconds,
                single_threaded=self._single_lane,
            )
        try:
            answer: tuple[_T, float] = await asyncio.wrap_future(
                self._threads.submit(_timed_job, work, *args, typical=typical)
            )
        except _TimedFailure as failure:
            metrics.password_hashed(op, failure.seconds)
            raise failure.error from None
        result, seconds = answer
        metrics.password_hashed(op, seconds)
        return result

    def close(self) -> None:
        """End the hashing threads once their queued work is done (without waiting for it);
        the next hash starts them again."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown()

    def hash_many(
        self, passwords: Sequence[str], *, workers: int, done: Callable[[], None]
    ) -> list[str]:
        """argon2id hashes of the normalized ``passwords``, in order, on ``workers`` threads
        (argon2 releases the GIL); blocking, for imports. ``done`` is called after each."""

        def one(password: str) -> str:
            hashed, seconds = _timed(self._hash.hash, normalize_password(password))
            metrics.password_hashed("hash", seconds)
            done()
            return hashed

        with ThreadPoolExecutor(max(1, workers)) as pool:
            return list(pool.map(one, passwords))

    async def verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """Check ``password``; returns (ok, new hash if the stored one should be replaced).

        With ``hashed=None`` (no such user) a dummy hash is still verified, so that an unknown
        name costs the same time as a wrong password.
        """
        encodable = _encodable(password)
        # One verification of the current parameters (else a legacy hash, or two checks).
        typical = encodable and normalize_password(password) == password
        if hashed is None or not encodable:
            # A lone surrogate (only a library caller can pass one) matches no stored password.
            candidate = password if encodable else secrets.token_urlsafe(16)
            verified = await self._off_loop(
                "verify", self._verify_dummy, candidate, typical=typical
            )
            self.verifications += verified
            return False, None
        typical = typical and hashed.startswith(self._current_prefix)
        checked = await self._off_loop(
            "verify", self._verify_and_update, password, hashed, typical=typical
        )
        ok, new_hash, performed = checked
        # Counted here, not on the hashing thread: a rescued job runs twice but counts once.
        self.verifications += performed
        return ok, new_hash

    def _verify_and_update(self, password: str, hashed: str) -> tuple[bool, str | None, int]:
        """(ok, new hash or None, verifications performed)."""
        normalized = normalize_password(password)
        ok, new_hash = self._verify_one(normalized, hashed)
        if ok or normalized == password:
            return ok, new_hash, 1
        # A hash from before normalization holds the password as it was typed then.
        ok, _ = self._verify_one(password, hashed)
        return ok, (self._hash.hash(normalized) if ok else None), 2

    def _verify_one(self, password: str, hashed: str) -> tuple[bool, str | None]:
        if (
            hashed.startswith(_BCRYPT_PREFIXES)
            and len(password.encode(errors="surrogatepass")) > _BCRYPT_MAX_BYTES
        ):
            # bcrypt sees only 72 bytes; accepting would let distinct passwords collide. The
            # dummy is verified instead, so the refusal takes as long as a wrong password.
            self._hash.verify(password, self._dummy_hash)
            return False, None
        try:
            return self._hash.verify_and_update(password, hashed)
        except Exception:  # an unrecognized or corrupt stored hash is a failed login, not a 500
            self._hash.verify(password, self._dummy_hash)  # and costs what a wrong one does
            return False, None

    def _verify_dummy(self, password: str) -> int:
        # As many verifications as a wrong password for a real account costs.
        candidates = {normalize_password(password), password}
        for candidate in candidates:
            self._hash.verify(candidate, self._dummy_hash)
        return len(candidates)

    @classmethod
    def from_settings(cls, settings: Settings) -> Hasher:
        return cls(
            settings.password_hash_concurrency,
            time_cost=settings.password_hash_time_cost,
            memory_kib=settings.password_hash_memory_kib,
            parallelism=settings.password_hash_parallelism,
            priority=settings.password_hash_priority,
        )

    @staticmethod
    def stored_hash_problem(hashed: str) -> str | None:
        """Why ``hashed`` may not be stored as a user's hash (authdb.hashers), or None."""
        return hash_problem(hashed)


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of ~20,000 common passwords (from Django, BSD licence), loaded once."""
    data = resources.files("authdb").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(data).decode().split())


def password_problem(
    password: str,
    *,
    username: str | None,
    email: str | None,
    validators: Sequence[PasswordValidator] = (),
) -> str | None:
    """Why ``password`` is not acceptable for this user, or None. One policy for every path.

    Rules apply to the normalized form, the one that is hashed; lengths count characters.
    The application's ``validators`` run after authdb's own rules pass, in order, on that
    normalized form; the first problem wins. A validator that raises (or returns anything but
    None or a sentence) is logged with its traceback, the password redacted, and the password
    is refused with VALIDATOR_FAILED.
    """
    normalized = normalize_password(password)
    problem = _own_problem(normalized, username=username, email=email)
    if problem is not None:
        return problem
    for validator in validators:
        problem = _ask(validator, normalized, username=username, email=email, typed=password)
        if problem is not None:
            return problem
    return None


def _own_problem(password: str, *, username: str | None, email: str | None) -> str | None:
    if control_character(password) is not None:
        return "Password must not contain control characters"
    if len(password) < MIN_LENGTH:
        return f"Password must be at least {MIN_LENGTH} characters long"
    if len(password) > MAX_LENGTH:
        return f"Password must be at most {MAX_LENGTH} characters long"
    folded = password.casefold()
    if folded in common_passwords() or password.lower().strip() in common_passwords():
        return "Password is too common"
    if username and folded == username.casefold():
        return "Password must not be the same as the username"
    if email and folded in (email.casefold(), email.split("@", 1)[0].casefold()):
        return "Password must not be the same as the email address"
    return None


def _ask(
    validator: PasswordValidator,
    password: str,
    *,
    username: str | None,
    email: str | None,
    typed: str,
) -> str | None:
    """One validator's answer; a failure of the validator itself refuses the password."""
    name = _name(validator)
    try:
        answer: object = validator(password, username=username, email=email)
    except Exception as exc:
        text = "".join(traceback.format_exception(exc))
        for secret in {password, typed}:
            text = text.replace(secret, "[redacted]")
        log.error("password validator %s raised, so the password was refused:\n%s", name, text)
        return VALIDATOR_FAILED
    if answer is None:
        return None
    if isinstance(answer, str) and answer.strip():
        return answer
    if inspect.iscoroutine(answer):
        answer.close()  # never awaited: no "coroutine was never awaited" warning
        why = "is async; validators must be plain functions"
    else:
        why = f"returned a {type(answer).__name__}, not None or a sentence"
    log.error("password validator %s %s, so the password was refused", name, why)
    return VALIDATOR_FAILED


def _name(validator: object) -> str:
    qualname = getattr(validator, "__qualname__", None) or type(validator).__qualname__
    module = getattr(validator, "__module__", None) or type(validator).__module__
    return f"{module}.{qualname}"
