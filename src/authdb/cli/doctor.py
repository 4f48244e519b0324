"""``authdb doctor``: check a deployment, one line per check, non-zero exit on any error."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Annotated

import typer

from authdb.cli.common import fail, settings
from authdb.doctor import Result, Status, examine

# Each status, as one and as several, in the order the summary names them.
_SUMMARY_ORDER: tuple[tuple[Status, str, str], ...] = (
    ("error", "error", "errors"),
    ("warn", "warning", "warnings"),
    ("skip", "skipped", "skipped"),
    ("ok", "ok", "ok"),
)


def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object instead of lines of text.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(help="authdb worker processes on each host (`authdb serve --workers`)."),
    ] = 1,
    hosts: Annotated[int, typer.Option(help="Hosts running authdb against this database.")] = 1,
) -> None:
    """Check this deployment's settings, database (connections for --hosts x --workers
    processes included), Redis, SMTP, clock and sign-in providers (exit 1 on any error)."""
    for option, value in (("--workers", workers), ("--hosts", hosts)):
        if value < 1:  # one line, not Click's usage box
            fail(f"{option} must be at least 1, not {value}")
    # Missing extras are checks of their own here, not a reason to stop before checking.
    config = settings(extras=False)
    try:
        results = asyncio.run(examine(config, hosts=hosts, workers=workers))
    except Exception as exc:  # the checks catch their own failures; this is a last resort
        fail(f"doctor failed: {type(exc).__name__}")
    failed = any(result.status == "error" for result in results)
    if as_json:
        typer.echo(json.dumps(_as_json(results, failed), ensure_ascii=False))
    else:
        for result in results:
            typer.echo(f"{result.status:<7}{result.name}: {result.message}")
        typer.echo(summary(results))
    raise typer.Exit(1 if failed else 0)


def summary(results: list[Result]) -> str:
    """``11 checks: 1 error, 2 warnings, 8 ok`` (only the statuses that occur)."""
    counts = Counter(result.status for result in results)
    parts = [
        f"{counts[status]} {one if counts[status] == 1 else many}"
        for status, one, many in _SUMMARY_ORDER
        if counts[status]
    ]
    return f"{len(results)} checks: {', '.join(parts)}"


def _as_json(results: list[Result], failed: bool) -> dict[str, object]:
    return {
        "ok": not failed,
        "checks": [
            {"name": result.name, "status": result.status, "message": result.message}
            for result in results
        ],
    }
