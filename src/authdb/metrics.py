"""Prometheus metrics (the ``metrics`` extra): the metric objects, multi-process set-up, rendering.

Nothing here costs anything until :func:`enable` runs (the service calls it when
``AUTHDB_METRICS_ENABLED=true``): until then prometheus-client is not even imported, and the
recording functions return at once.

Several worker processes (``authdb serve --workers N``) report one truth through
prometheus-client's multi-process mode: the serve parent makes a private directory
(:func:`create_multiprocess_dir`) before the workers start, each worker writes its values
to its own files there, and a scrape of any worker adds up every worker's files.
prometheus-client decides between that mode and plain in-memory values when it is first
imported, from ``PROMETHEUS_MULTIPROC_DIR``: hence the lazy import.

The metrics are global to the process, created once, so that several ``Auth`` instances in one
process (tests, an application with two) share them instead of registering them twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from authdb import extras

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily

    from authdb.services.audit import SecurityEvent

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format, which generate_latest writes whatever the client version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Security events that end (or pause) a sign-in, and the outcome they count as. A sign-in
# with a second factor counts mfa_required, then ok (or mfa_failed).
LOGIN_OUTCOMES: dict[str, str] = {
    "login_ok": "ok",
    "login_failed": "failed",
    "login_locked": "locked",
    "login_refused": "refused",  # right password, but the account is disabled or unverified
    "login_mfa_required": "mfa_required",
    "mfa_failed": "mfa_failed",
    "passkey_failed": "passkey_failed",
}
LOCKOUT_EVENT = "lockout"
# The budgets of authdb.ratelimit.RateLimits, shown at 0 before their first refusal.
RATE_LIMITS = ("login_failures", "register", "email", "email_address", "new_device_alert")
# Argon2id at the default cost takes 50-100 ms; bcrypt and cheap test settings far less.
_HASH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class _Metrics:
    registry: CollectorRegistry | None  # None in multi-process mode: the files are the truth
    multiprocess_dir: str | None
    requests: Counter
    request_seconds: Histogram
    logins: Counter
    lockouts: Counter
    rate_limited: Counter
    password_hash_seconds: Histogram
    password_hash_rescues: Counter


_metrics: _Metrics | None = None
_lock = threading.Lock()


def require() -> None:
    """MissingExtra naming ``pip install 'authdb[metrics]'`` without prometheus-client."""
    extras.require("prometheus_client", feature="Metrics (AUTHDB_METRICS_ENABLED)", extra="metrics")


def enable() -> None:
    """Create this process's metrics (once) and start counting security events.

    In multi-process mode when ``PROMETHEUS_MULTIPROC_DIR`` names a directory. Raises
    MissingExtra without the ``metrics`` extra.
    """
    global _metrics
    require()
    with _lock:
        if _metrics is not None:
            return
        _metrics = _create()
    # Imported here: the services import the hasher, which records into this module.
    from authdb.services import audit

    audit.subscribe(count_event)


def _create() -> _Metrics:
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    path = os.environ.get(MULTIPROC_ENV) or None
    if path and not getattr(values.ValueClass, "_multiprocess", False):
        # The client chose in-memory values when first imported: each worker would count alone.
        raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_ENV} was set")
    registry = None if path else CollectorRegistry()
    requests = Counter(
        "authdb_http_requests_total",
        "HTTP requests answered, by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    request_seconds = Histogram(
        "authdb_http_request_duration_seconds",
        "Time from a request's arrival to the end of its answer, by method and route template.",
        ["method", "route"],
        registry=registry,
    )
    logins = Counter(
        "authdb_logins_total",
        "Sign-in attempts by outcome (password, second factor or passkey).",
        ["outcome"],
        registry=registry,
    )
    lockouts = Counter(
        "authdb_lockouts_total",
        "Accounts locked after too many failed sign-ins.",
        registry=registry,
    )
    rate_limited = Counter(
        "authdb_rate_limited_total",
        "Requests refused (429) because a rate-limit budget was spent, by budget.",
        ["limit"],
        registry=registry,
    )
    hash_seconds = Histogram(
        "authdb_password_hash_seconds",
        "Time spent hashing passwords (op=hash) and checking (op=verify).",
        ["op"],
        buckets=_HASH_BUCKETS,
        registry=registry,
    )
    hash_rescues = Counter(
        "authdb_password_hash_rescues_total",
        "Password hashes run again on a normal-priority thread because the idle-priority "
        "hashing thread was starved of CPU (AUTHDB_PASSWORD_HASH_PRIORITY=idle).",
        registry=registry,
    )
    # Series that exist from the start: rate() over a series that appears late misses its start.
    for outcome in dict.fromkeys(LOGIN_OUTCOMES.values()):
        logins.labels(outcome)
    for limit in RATE_LIMITS:
        rate_limited.labels(limit)
    for op in ("hash", "verify"):
        hash_seconds.labels(op)
    return _Metrics(
        registry,
        path,
        requests,
        request_seconds,
        logins,
        lockouts,
        rate_limited,
        hash_seconds,
        hash_rescues,
    )


# --- recording ------------------------------------------------------------------------------------


def request_children(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and duration histogram of one label set (the caller caches them:
    labels are bounded, and a lookup takes prometheus-client's lock)."""
    metrics = _required()
    return (
        metrics.requests.labels(method, route, str(status)),
        metrics.request_seconds.labels(method, route),
    )


def count_event(event: SecurityEvent) -> None:
    """An audit subscriber: sign-in outcomes and lockouts."""
    metrics = _metrics
    if metrics is None:
        return
    outcome = LOGIN_OUTCOMES.get(event.name)
    if outcome is not None:
        metrics.logins.labels(outcome).inc()
    elif event.name == LOCKOUT_EVENT:
        metrics.lockouts.inc()


def rate_limited(limit: str) -> None:
    """A request refused by the rate-limit budget ``limit``."""
    if _metrics is not None:
        _metrics.rate_limited.labels(limit).inc()


def password_hashed(op: str, seconds: float) -> None:
    """``seconds`` spent on one password ``op`` ("hash" or "verify")."""
    if _metrics is not None:
        _metrics.password_hash_seconds.labels(op).observe(seconds)


def password_hash_rescued() -> None:
    """A starved idle-priority hash was taken over by its rescuer (authdb.hash_threads)."""
    if _metrics is not None:
        _metrics.password_hash_rescues.inc()


# --- exposition -----------------------------------------------------------------------------------


def render(live_sessions: int | None) -> bytes:
    """Every metric in the Prometheus text format, all workers added up, with the
    ``authdb_live_sessions`` gauge set to ``live_sessions`` (counted by the caller; None
    when the database could not count them: the gauge is left out)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics = _required()
    if metrics.registry is not None:
        registry = metrics.registry
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics.multiprocess_dir)  # type: ignore[no-untyped-call]
    if live_sessions is None:
        return generate_latest(registry)
    gauge = GaugeMetricFamily(
        "authdb_live_sessions",
        "Sessions neither revoked nor expired (counted in the database at scrape time).",
        value=live_sessions,
    )
    return generate_latest(registry) + generate_latest(_Fixed(gauge))


class _Fixed:
    """A collector of one ready-made metric family."""

    def __init__(self, family: GaugeMetricFamily) -> None:
        self.family = family

    def collect(self) -> list[GaugeMetricFamily]:
        return [self.family]


def _required() -> _Metrics:
    if _metrics is None:
        raise RuntimeError("metrics are not enabled: call authdb.metrics.enable() first")
    return _metrics


# --- the serve parent -----------------------------------------------------------------------------


def create_multiprocess_dir() -> str:
    """A new private directory (mode 0700) for the workers' metric files, set as
    ``PROMETHEUS_MULTIPROC_DIR`` for the workers to inherit. Raises MissingExtra.

    Always a fresh one, even when the variable is already set: files left by an earlier run
    would be added to this one's counts.
    """
    require()
    path = tempfile.mkdtemp(prefix="authdb-metrics-")  # mkdtemp: owner-only, 0700
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    """Delete the directory made by :func:`create_multiprocess_dir` once the workers are gone."""
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)
