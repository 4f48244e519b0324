"""The report: one table in sections, then the issue's targets with PASS or MISS.

Each cell is the median over the rounds with the range in brackets, ``2512 [2480-2540]``
(one round: the value alone). Ratios are taken round by round, then summarised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchkit.results import Results, Summary, percentile

DASH = "-"


def cell(summary: Summary | None, digits: int = 0, suffix: str = "", scale: float = 1.0) -> str:
    if summary is None:
        return DASH

    def num(value: float) -> str:
        return f"{value * scale:.{digits}f}"

    text = num(summary.median) + suffix
    if summary.n > 1:
        text += f" [{num(summary.low)}-{num(summary.high)}]"
    return text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        first = r[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), *(line(r) for r in rows)]


@dataclass(frozen=True)
class Fmt:
    """How a target's figures are shown: decimals, unit, scale (100 for a percentage)."""

    digits: int = 0
    suffix: str = ""
    scale: float = 1.0

    def cell(self, summary: Summary | None) -> str:
        return cell(summary, self.digits, self.suffix, self.scale)


# Targets show a percentage to one decimal, so that a median just under its limit reads so.
PERCENT, TIMES, MS, MB, FRACTION = (
    Fmt(1, "%", 100),
    Fmt(2, "x"),
    Fmt(1, " ms"),
    Fmt(1, " MB"),
    Fmt(2),
)


@dataclass(frozen=True)
class Target:
    """A target of the issue, judged on a summary's median by ``ok``."""

    name: str
    wanted: str
    summary: Summary | None
    ok: Callable[[float], bool]
    fmt: Fmt

    def verdict(self) -> str:
        if self.summary is None:
            return "n/a"
        return "PASS" if self.ok(self.summary.median) else "MISS"


@dataclass
class Report:
    results: Results
    labels: dict[str, str]  # row key → label

    def label(self, key: str, section: str = "") -> str:
        """The row's label, or its label in ``section`` (key ``KEY@SECTION``) if it has one."""
        return self.labels.get(f"{key}@{section}", self.labels.get(key, key))

    def present(self, keys: list[str], metric: str) -> list[str]:
        return [k for k in keys if self.results.has(k, metric)]

    def s(self, key: str, metric: str) -> Summary | None:
        return self.results.summary(key, metric)

    # ---- derived figures, round by round ------------------------------------------------

    def vs_bare(self, key: str) -> Summary | None:
        return self.results.ratio(("bare", "me_cpu_us"), (key, "me_cpu_us"))

    def of_limit(self, key: str) -> Summary | None:
        """Logins/s over the hashing limit (1 / CPU seconds of one verify), round by round."""
        rate, verify = self.results.get(key, "login_rate"), self.results.get(key, "verify_ms")
        return Summary.of([rate[r] * verify[r] / 1e3 for r in rate.keys() & verify.keys()])

    def non_hash(self, key: str) -> Summary | None:
        """Server CPU per login less one verify's, in ms, round by round."""
        cpu, verify = self.results.get(key, "login_cpu_ms"), self.results.get(key, "verify_ms")
        return Summary.of([cpu[r] - verify[r] for r in cpu.keys() & verify.keys()])

    def threads(self, key: str) -> Summary | None:
        """CPU per login off the event loop (the hashing thread, the SQLite writer), in ms,
        round by round."""
        cpu, loop = self.results.get(key, "login_cpu_ms"), self.results.get(key, "login_loop_ms")
        return Summary.of([cpu[r] - loop[r] for r in cpu.keys() & loop.keys()])

    # ---- sections -----------------------------------------------------------------------

    def users_me(self, keys: list[str], connections: int) -> list[str]:
        rows = [
            [
                self.label(k),
                cell(self.s(k, "me_rate")),
                cell(self.s(k, "me_cpu_us")),
                cell(self.vs_bare(k), 0, "%", 100),
                cell(self.s(k, "me_pg_us")),
                cell(self.s(k, "me_p99"), 1),
                cell(self.s(k, "me_cores"), 2),
                cell(self.s(k, "me_others"), 2),
                cell(self.s(k, "me_wrk_cores"), 2),
            ]
            for k in self.present(keys, "me_rate")
        ]
        header = [
            f"GET /users/me, idle, {connections} connections",
            "req/s",
            "µs CPU/req",
            "vs bare",
            "pg µs/req",
            "p99 ms",
            "srv cores",
            "others",
            "wrk cores",
        ]
        return table(header, rows) if rows else []

    def logins(self, keys: list[str], connections: int) -> list[str]:
        rows = [
            [
                self.label(k),
                cell(self.s(k, "login_rate"), 1),
                cell(self.of_limit(k), 2),
                cell(self.s(k, "login_cpu_ms"), 1),
                cell(self.s(k, "verify_ms"), 1),
                cell(self.non_hash(k), 1),
                cell(self.s(k, "login_loop_ms"), 2),
                cell(self.threads(k), 1),
                cell(self.s(k, "login_pg_ms"), 2),
                cell(self.s(k, "login_p99")),
                cell(self.s(k, "login_cores"), 2),
                cell(self.s(k, "login_others"), 2),
            ]
            for k in self.present(keys, "login_rate")
        ]
        header = [
            f"Logins, {connections} connections",
            "logins/s",
            "of limit",
            "ms CPU/login",
            "hash ms",
            "non-hash ms",
            "loop ms",
            "threads ms",
            "pg ms/login",
            "p99 ms",
            "srv cores",
            "others",
        ]
        return table(header, rows) if rows else []

    def mixed(self, keys: list[str]) -> list[str]:
        r = self.results
        rows = [
            [
                self.label(k),
                cell(self.s(k, "login_rate"), 1),
                cell(self.s(k, "mix_login_rate"), 1),
                cell(r.ratio((k, "mix_login_rate"), (k, "login_rate")), 0, "%", 100),
                cell(self.s(k, "me_p99"), 1),
                cell(self.s(k, "mix_me_p99"), 1),
                cell(r.ratio((k, "mix_me_p99"), (k, "me_p99")), 2, "x"),
                cell(self.s(k, "mix_me_rate")),
                cell(self.s(k, "mix_loop_share"), 0, "%", 100),
                cell(self.s(k, "mix_threads_ms"), 1),
            ]
            for k in self.present(keys, "mix_login_rate")
        ]
        header = [
            "Flood of GET /users/me + logins",
            "logins/s alone",
            "in flood",
            "kept",
            "me p99 idle",
            "in storm",
            "x idle",
            "me req/s",
            "loop share",
            "threads ms/login",
        ]
        return table(header, rows) if rows else []

    def storm(self, keys: list[str]) -> list[str]:
        r = self.results
        rows = [
            [
                self.label(k),
                cell(self.s(k, "probe_p50"), 2),
                cell(self.s(k, "probe_p99"), 2),
                cell(self.s(k, "storm_probe_p50"), 2),
                cell(self.s(k, "storm_probe_p99"), 2),
                cell(r.ratio((k, "storm_probe_p99"), (k, "probe_p99")), 2, "x"),
                cell(self.s(k, "storm_login_rate"), 1),
            ]
            for k in self.present(keys, "storm_probe_p99")
        ]
        header = [
            "Light GET /users/me client + login storm",
            "p50 ms alone",
            "p99 alone",
            "p50 in storm",
            "p99 in storm",
            "x idle",
            "logins/s",
        ]
        return table(header, rows) if rows else []

    def scale(self, pairs: list[tuple[str, str]]) -> list[str]:
        r = self.results
        rows = []
        for small, large in pairs:
            if not r.has(large, "me_rate"):
                continue
            for key, base in ((small, None), (large, small)):
                if not r.has(key, "me_rate"):
                    continue
                me = r.ratio((key, "me_cpu_us"), (base, "me_cpu_us")) if base else None
                lg = r.ratio((key, "login_cpu_ms"), (base, "login_cpu_ms")) if base else None
                rows.append(
                    [
                        self.label(key, "scale"),
                        cell(self.s(key, "me_rate")),
                        cell(self.s(key, "me_cpu_us")),
                        cell(me, 2, "x") if base else "",
                        cell(self.s(key, "login_rate"), 1),
                        cell(self.s(key, "login_cpu_ms"), 1),
                        cell(lg, 2, "x") if base else "",
                    ]
                )
        header = [
            "Users in the table",
            "me req/s",
            "µs CPU/req",
            "vs fewer",
            "logins/s",
            "ms CPU/login",
            "vs fewer",
        ]
        return table(header, rows) if rows else []

    def workers(self, pairs: list[tuple[str, str]]) -> list[str]:
        r = self.results
        rows = []
        for one, two in pairs:
            if not r.has(two, "me_rate") and not r.has(two, "login_rate"):
                continue
            for key, base in ((one, None), (two, one)):
                rows.append(
                    [
                        self.label(key),
                        cell(self.s(key, "me_rate")),
                        cell(r.ratio((key, "me_rate"), (base, "me_rate")), 2, "x") if base else "",
                        cell(self.s(key, "me_cpu_us")),
                        cell(self.s(key, "me_cores"), 2),
                        cell(self.s(key, "login_rate"), 1),
                        cell(r.ratio((key, "login_rate"), (base, "login_rate")), 2, "x")
                        if base
                        else "",
                        cell(self.s(key, "login_cores"), 2),
                    ]
                )
        header = [
            "Workers",
            "me req/s",
            "vs 1",
            "µs CPU/req",
            "srv cores",
            "logins/s",
            "vs 1",
            "srv cores",
        ]
        return table(header, rows) if rows else []

    def rss(self, keys: list[str]) -> list[str]:
        rows = [
            [
                self.label(k),
                cell(self.s(k, "rss_requests")),
                cell(self.s(k, "rss_before_mb"), 1),
                cell(self.s(k, "rss_after_mb"), 1),
                cell(self.s(k, "rss_peak_mb"), 1),
            ]
            for k in self.present(keys, "rss_after_mb")
        ]
        header = ["Memory of the worker", "requests", "RSS MB before", "after", "peak"]
        return table(header, rows) if rows else []

    def revocation(self, keys: list[str]) -> list[str]:
        rows = []
        for k in keys:
            delays = self.results.samples.get((k, "revocation_ms"), [])
            stale = self.results.samples.get((k, "revocation_stale"), [])
            if delays:
                rows.append(
                    [
                        self.label(k),
                        str(len(delays)),
                        f"{percentile(delays, 0.5):.1f}",
                        f"{percentile(delays, 0.95):.1f}",
                        f"{max(delays):.1f}",
                        f"{max(stale):.0f}",
                    ]
                )
        header = [
            "Revocation: revoke in A, poll B",
            "trials",
            "median ms",
            "p95 ms",
            "max ms",
            "stale 200s",
        ]
        return table(header, rows) if rows else []


def revocation_max(results: Results, key: str) -> Summary | None:
    delays = results.samples.get((key, "revocation_ms"), [])
    return Summary(max(delays), min(delays), max(delays), 1) if delays else None


def target_lines(targets: list[Target]) -> list[str]:
    rows = [
        [
            t.name,
            t.wanted,
            t.fmt.cell(t.summary),
            t.verdict(),
        ]
        for t in targets
    ]
    return table(["Target", "wanted", "measured (median [range])", ""], rows)


def ok_all(targets: list[Target]) -> bool:
    return all(t.verdict() != "MISS" for t in targets)
