"""``authdb users import``: users from authdb's JSON Lines or another system's export.

Reading is ``authdb.importers``' job, checking and writing ``authdb.services.importing``'s;
this module picks the reader, shows progress on a terminal and reports in lines a person can act
on: every bad line (the first ``SHOWN``), what was skipped and which usernames were replaced.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TimeRemainingColumn
from rich.progress import Progress as Bars

from authdb.auth import Auth
from authdb.cli.common import fail, run
from authdb.importers import FORMATS, BadLine, Reading, UnreadableExport, django, read_text
from authdb.importers.guess import looks_like
from authdb.services.core import CLI_CLIENT
from authdb.services.importing import (
    ALREADY_REGISTERED,
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
            "(line, source_id, source_username, authdb_id, username), to update the "
            "application's own tables. "
            "A new file: an existing one is never overwritten.",
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Django only: the user model's label (app_label.modelname) for a custom user "
            "model; records of every other model are passed over.",
        ),
    ] = django.DEFAULT_MODEL,
) -> None:
    """Import users, keeping their passwords; a file with any bad line imports nothing and
    names every bad line."""
    text, reading = _read(file, source, model)
    # Made before anything is written: a map that cannot be written must not be lost after.
    map_file = _id_map_file(id_map, dry_run=dry_run)
    options = ImportOptions(
        mark_verified=mark_verified,
        skip_existing=skip_existing,
        strict=source is Source.jsonl,
        source=source.value,
        hash_field=HASH_FIELDS.get(source, "hashed_password"),
    )
    try:
        outcome = run(lambda auth: _work(auth, reading, options, dry_run=dry_run))
        if isinstance(outcome, list):
            wrong_format = not reading.users and _hint(text, source)
            _refuse(file, outcome, wrong_format or _existing_hint(outcome, skip_existing))
    except BaseException:
        if map_file is not None and id_map is not None:
            map_file.close()
            id_map.unlink(missing_ok=True)  # nothing was imported: no map either
        raise
    _report(outcome, dry_run=dry_run)
    if map_file is not None:
        _write_id_map(map_file, outcome)


def _read(file: Path, source: Source, model: str) -> tuple[str, Reading]:
    """The file's text and what ``source``'s reader found in it; one-line errors otherwise."""
    if model != django.DEFAULT_MODEL and source is not Source.django:
        fail("--model applies to --from django only")
    text = ""
    try:
        text = read_text(file)
        reading = (
            django.read(text, model=model) if source is Source.django else FORMATS[source](text)
        )
    except UnreadableExport as exc:
        fail(f"{file.name}: {exc}{_hint(text, source)}")
    if not reading.users and not reading.errors:
        fail(f"{file.name} holds no users to import")
    return text, reading


def _id_map_file(id_map: Path | None, *, dry_run: bool) -> TextIO | None:
    """The new --id-map file, open; a dry run only checks that it does not exist yet."""
    if id_map is None:
        return None
    if not dry_run:
        return _open_new(id_map)
    if id_map.exists() or id_map.is_symlink():
        fail(f"--id-map {id_map} exists already: give a new file name")
    return None


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


def _hint(text: str, source: Source) -> str:
    """`` (it looks like a --from X export)`` when the file seems to be another format's."""
    guess = looks_like(text)
    return f" (it looks like a --from {guess} export)" if guess and guess != source else ""


def _existing_hint(errors: Sequence[BadLine], skip_existing: bool) -> str:
    """A pointer to --skip-existing when users authdb has are among the bad lines."""
    if skip_existing or not any(e.message.endswith(ALREADY_REGISTERED) for e in errors):
        return ""
    return " (--skip-existing skips the users authdb already has)"


def _refuse(file: Path, errors: Sequence[BadLine], hint: str = "") -> NoReturn:
    """Every bad line (the first SHOWN), then why nothing was imported; exits 1."""
    ordered = sorted(errors, key=lambda e: e.line)
    if len(ordered) == 1:
        fail(f"{file.name} line {ordered[0].line}: {ordered[0].message}; nothing imported{hint}")
    for error in ordered[:SHOWN]:
        typer.echo(f"error: {file.name} line {error.line}: {error.message}", err=True)
    more = f" (the first {SHOWN} shown)" if len(ordered) > SHOWN else ""
    fail(f"{len(ordered)} bad lines{more}; nothing imported{hint}")


def _report(result: ImportPlan, *, dry_run: bool) -> None:
    notes = [f"line {s.line}: skipped: {s.reason}" for s in result.skipped]
    notes += [f"line {n.line}: {n.text}" for n in result.notes]
    notes += [f"line {u.source.line}: {u.note}" for u in result.users if u.note]
    notes += [
        f"line {u.source.line}: username {u.renamed_from!r} is not allowed in authdb; "
        f"{'would be imported' if dry_run else 'imported'} as {u.username!r}"
        for u in result.users
        if u.renamed_from is not None
    ]
    for note in notes[:SHOWN]:
        typer.echo(f"note: {note}", err=True)
    if len(notes) > SHOWN:
        typer.echo(f"note: ... and {len(notes) - SHOWN} more", err=True)
    superusers = [u.username for u in result.users if u.source.is_superuser]
    if superusers:
        shown = ", ".join(superusers[:SHOWN]) + (" ..." if len(superusers) > SHOWN else "")
        typer.echo(f"note: superusers ({len(superusers)}): {shown}", err=True)
    count, skipped = len(result.users), len(result.skipped)
    tail = f", skipped {skipped}" if skipped else ""
    users = f"{count} user{'' if count == 1 else 's'}"
    if dry_run:
        typer.echo(f"checked: {users} would be imported{tail}; nothing written (--dry-run)")
    else:
        typer.echo(f"imported {users}{tail}")


def _open_new(path: Path) -> TextIO:
    """``path`` created for writing: never an existing file, never through a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.fdopen(os.open(path, flags, 0o600), "w", newline="", encoding="utf-8")
    except FileExistsError:
        fail(f"--id-map {path} exists already: give a new file name")
    except OSError as exc:
        fail(f"cannot create the --id-map file {path}: {exc.strerror}")


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _write_id_map(out: TextIO, result: ImportPlan) -> None:
    with out:
        writer = csv.writer(out)
        writer.writerow(["line", "source_id", "source_username", "authdb_id", "username"])
        for user in result.users:
            source = user.source
            row = (source.line, source.source_id, source.username, user.user_id, user.username)
            writer.writerow([_cell(value) for value in row])
