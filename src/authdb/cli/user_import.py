"""``authdb users import``: users from authdb's JSON Lines or another system's export.

Reading is ``authdb.importers``' job, checking and writing ``authdb.services.importing``'s;
this module picks the reader, shows progress on a terminal and reports in lines a person can act
on: every bad line (the first ``SHOWN``), what was skipped and which usernames were replaced.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TimeRemainingColumn
from rich.progress import Progress as Bars

from authdb.auth import Auth
from authdb.cli.common import fail, run
from authdb.importers import FORMATS, BadLine, Reading, UnreadableExport, read_text
from authdb.services.core import CLI_CLIENT
from authdb.services.importing import (
    ImportOptions,
    ImportPlan,
    ImportRefused,
    NoProgress,
    Progress,
    import_users,
    plan,
)

# Bad lines, skipped users and renamed users listed one a line before "... and N more".
SHOWN = 20


class Source(StrEnum):
    """The systems whose exports ``--from`` reads."""

    jsonl = "jsonl"
    django = "django"
    fastapi_users = "fastapi-users"
    supabase = "supabase"
    keycloak = "keycloak"


# What each export calls the password hash, so that an error names the field in the file.
HASH_FIELDS = {
    Source.django: "password",
    Source.supabase: "encrypted_password",
    Source.keycloak: "the password credential",
}


def import_command(
    file: Annotated[Path, typer.Argument(help="The export file (see --from).")],
    source: Annotated[
        Source,
        typer.Option(
            "--from",
            help="The system the file comes from: jsonl (authdb's own, one user a line), "
            "django (manage.py dumpdata auth.user), fastapi-users (its user table as CSV or "
            "JSON Lines), supabase (auth.users as CSV), keycloak (a realm export).",
        ),
    ] = Source.jsonl,
    mark_verified: Annotated[
        bool,
        typer.Option(
            "--mark-verified",
            help="Count every imported email address as verified (the source system "
            "verified them), whatever the file says.",
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip users whose username or email authdb already has, instead of refusing "
            "the file (for importing again after new sign-ups in the old system).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the whole file against the database; write nothing."),
    ] = False,
    id_map: Annotated[
        Path | None,
        typer.Option(
            "--id-map",
            help="Write a CSV of each user's id in the source system and in authdb "
            "(line, source_id, authdb_id, username), to update the application's own tables.",
        ),
    ] = None,
) -> None:
    """Import users, keeping their passwords; a file with any bad line imports nothing and
    names every bad line."""
    try:
        reading = FORMATS[source.value](read_text(file))
    except UnreadableExport as exc:
        fail(f"{file.name}: {exc}")
    if not reading.users and not reading.errors:
        fail(f"{file.name} holds no users to import")
    options = ImportOptions(
        mark_verified=mark_verified,
        skip_existing=skip_existing,
        strict_usernames=source is Source.jsonl,
        source=source.value,
        hash_field=HASH_FIELDS.get(source, "hashed_password"),
    )
    outcome = run(lambda auth: _work(auth, reading, options, dry_run=dry_run))
    if isinstance(outcome, list):
        _refuse(file, outcome)
    _report(outcome, dry_run=dry_run)
    if id_map is not None and not dry_run:
        _write_id_map(id_map, outcome)


async def _work(
    auth: Auth, reading: Reading, options: ImportOptions, *, dry_run: bool
) -> ImportPlan | list[BadLine]:
    """The import's plan (written unless ``dry_run``), or its bad lines."""
    with _progress() as progress:
        try:
            if dry_run:
                checked = await plan(auth.core, reading, options, progress=progress)
                return checked.errors or checked
            return await import_users(
                auth.core, reading, options, client=CLI_CLIENT, progress=progress
            )
        except ImportRefused as exc:
            return list(exc.errors)


@contextmanager
def _progress() -> Iterator[Progress]:
    """A progress bar per stage on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield NoProgress()
        return
    bars = Bars(
        "{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    with bars:
        yield _Bars(bars)


class _Bars:
    """``Progress`` on rich's bars (safe to advance from the hashing threads)."""

    def __init__(self, bars: Bars) -> None:
        self._bars = bars
        self._task: TaskID | None = None

    def stage(self, description: str, total: int) -> None:
        self._task = self._bars.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._bars.advance(self._task, steps)


def _refuse(file: Path, errors: Sequence[BadLine]) -> NoReturn:
    """Every bad line (the first SHOWN), then why nothing was imported; exits 1."""
    ordered = sorted(errors, key=lambda e: e.line)
    if len(ordered) == 1:
        fail(f"{file.name} line {ordered[0].line}: {ordered[0].message}; nothing imported")
    for error in ordered[:SHOWN]:
        typer.echo(f"error: {file.name} line {error.line}: {error.message}", err=True)
    more = f" (the first {SHOWN} shown)" if len(ordered) > SHOWN else ""
    fail(f"{len(ordered)} bad lines{more}; nothing imported")


def _report(result: ImportPlan, *, dry_run: bool) -> None:
    notes = [f"line {s.line}: skipped: {s.reason}" for s in result.skipped]
    notes += [f"line {n.line}: {n.text}" for n in result.notes]
    notes += [
        f"line {u.source.line}: username {u.renamed_from!r} is not allowed in authdb; "
        f"imported as {u.username!r}"
        for u in result.users
        if u.renamed_from is not None
    ]
    for note in notes[:SHOWN]:
        typer.echo(f"note: {note}", err=True)
    if len(notes) > SHOWN:
        typer.echo(f"note: ... and {len(notes) - SHOWN} more", err=True)
    count, skipped = len(result.users), len(result.skipped)
    tail = f", skipped {skipped}" if skipped else ""
    if dry_run:
        typer.echo(f"checked: {count} users would be imported{tail}; nothing written (--dry-run)")
    else:
        typer.echo(f"imported {count} user{'' if count == 1 else 's'}{tail}")


def _write_id_map(path: Path, result: ImportPlan) -> None:
    try:
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["line", "source_id", "authdb_id", "username"])
            for user in result.users:
                row = [user.source.line, user.source.source_id or "", user.user_id, user.username]
                writer.writerow(row)
    except OSError as exc:
        fail(f"the users were imported, but the id map could not be written to {path}: {exc}")
