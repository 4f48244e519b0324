"""The systems under test and how to start, log in to and load each of them.

A ``System`` is one server configuration (an app, a database, its settings, its CPUs); a row
of the report. ``prepare_*`` make each one's database and user once per run. Every server
listens on 127.0.0.1 and runs without an access log (``authdb serve``'s default; the others
under ``uvicorn --no-access-log``).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import databases, httpcall
from benchkit.procs import HOST, BenchError

BENCH_DIR = Path(__file__).resolve().parent.parent
AUTHDB = str(Path(sys.executable).with_name("authdb"))
PASSWORD = f"bench-{secrets.token_urlsafe(18)}"  # every user's, in every app
ORIGINAL = "bench"  # the user ``authdb createuser`` makes, copied by the seeding
FU_EMAIL = "bench@example.com"


@dataclass(frozen=True)
class Login:
    """A correct-password login: where to post which form."""

    path: str
    form: dict[str, str]


@dataclass
class System:
    """One server configuration: a row of the report."""

    key: str  # unique, e.g. "authdb-sqlite-large"
    label: str  # shown in the report
    app: str  # "authdb", "bare", "tutorial" or "fastapi-users"
    database: str | None  # "SQLite", "PostgreSQL", or None (the bare app)
    url: str | None  # its database's SQLAlchemy URL
    argv: Callable[[int], list[str]]  # the command line for a port
    env: dict[str, str]
    me_path: str
    # The bearer token for GET me_path from a running server on a port.
    token: Callable[[int], str]
    login: Login | None = None  # the login the logins phase sends
    other_login: Login | None = None  # a second user's, sent while GET me_path is loaded
    workers: int = 1
    cpus: str | None = None  # taskset list for the server; None: the run's server CPUs

    @property
    def postgres(self) -> bool:
        return self.database == "PostgreSQL"


def uvicorn(python: str, app: str, port: int, workers: int = 1) -> list[str]:
    return [
        python,
        "-m",
        "uvicorn",
        "--app-dir",
        str(BENCH_DIR),
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def run_checked(argv: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    result = subprocess.run(
        argv, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(argv[:3])} failed: " + " / ".join(message))
    return result.stdout


# --------------------------------------------------------------------------------------------
# authdb
# --------------------------------------------------------------------------------------------


def snapshot_authdb(workdir: Path) -> tuple[Path, str]:
    """Copy the ``authdb`` package being benchmarked into ``workdir``; returns the directory
    to put first on PYTHONPATH, and which source it is (commit, and whether src/ differs).

    Every authdb process of the run imports this copy, so the run measures one version of
    the code even while someone edits the working tree (the install is editable).
    """
    import authdb

    package = Path(authdb.__file__).resolve().parent
    target = workdir / "authdb-src"
    shutil.copytree(package, target / "authdb", ignore=shutil.ignore_patterns("__pycache__"))
    return target, describe_source(package)


def describe_source(package: Path) -> str:
    """``commit abc1234`` (plus ``, src/ modified`` when the working tree differs), read-only."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", str(package))
    return f"commit {commit}" + (", src/ modified" if dirty else "")


def prepare_authdb(url: str, users: int, env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """Migrate ``url``, create ``ORIGINAL`` and copy it to ``users`` users in all.

    Returns two usernames near the middle of the table: the one whose token loads
    ``/users/me``, and another one that logs in meanwhile (a login updates its own user,
    which empties that user's cached sessions; another user's login must not).
    """
    env = {**env, "AUTHDB_DATABASE_URL": url}
    run_checked([AUTHDB, "migrate"], env, cwd)
    run_checked(
        [AUTHDB, "createuser", "--username", ORIGINAL, "--email", FU_EMAIL, "--password-stdin"],
        env,
        cwd,
        stdin=PASSWORD + "\n",
    )
    seeded = users - 1
    databases.seed_users(url, ORIGINAL, seeded)
    if seeded < 2:
        return ORIGINAL, ORIGINAL
    middle = max(1, seeded // 2)
    return databases.seed_name(middle), databases.seed_name(middle + 1)


def authdb_token(port: int, username: str) -> str:
    answer = httpcall.call(
        port, "POST", "/token", form={"username": username, "password": PASSWORD}
    )
    return str(httpcall.expect(answer, 200, f"authdb login as {username}").json()["access_token"])


def authdb_system(
    key: str,
    label: str,
    *,
    database: str,
    url: str,
    env: dict[str, str],
    users: tuple[str, str],
    workers: int = 1,
    cpus: str | None = None,
) -> System:
    def argv(port: int) -> list[str]:
        return [AUTHDB, "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]

    def login(username: str) -> Login:
        return Login("/token", {"username": username, "password": PASSWORD})

    return System(
        key=key,
        label=label,
        app="authdb",
        database=database,
        url=url,
        argv=argv,
        env={**env, "AUTHDB_DATABASE_URL": url},
        me_path="/users/me",
        token=lambda port: authdb_token(port, users[0]),
        login=login(users[0]),
        other_login=login(users[1]),
        workers=workers,
        cpus=cpus,
    )


# --------------------------------------------------------------------------------------------
# The bare app: decodes authdb's token, no database
# --------------------------------------------------------------------------------------------


def bare_system(env: dict[str, str], token: Callable[[], str]) -> System:
    """``token`` gives an access token that an authdb of the same secret key issued."""
    return System(
        key="bare",
        label="bare app (JWT decode only)",
        app="bare",
        database=None,
        url=None,
        argv=lambda port: uvicorn(sys.executable, "bare_app:app", port),
        env=env,
        me_path="/users/me",
        token=lambda _port: token(),
    )


# --------------------------------------------------------------------------------------------
# The reference apps, in bench/.peers-venv
# --------------------------------------------------------------------------------------------


def prepare_tutorial(python: str, url: str, env: dict[str, str], cwd: Path) -> None:
    script = str(BENCH_DIR / "tutorial_app.py")
    run_checked(
        [python, script, ORIGINAL], {**env, "TUTORIAL_DATABASE_URL": url}, cwd, PASSWORD + "\n"
    )


def tutorial_system(python: str, database: str, url: str, env: dict[str, str]) -> System:
    login = Login("/token", {"username": ORIGINAL, "password": PASSWORD})

    def token(port: int) -> str:
        answer = httpcall.call(port, "POST", login.path, form=login.form)
        return str(httpcall.expect(answer, 200, "tutorial login").json()["access_token"])

    return System(
        key=f"tutorial-{database.lower()}",
        label=f"FastAPI tutorial app, {database}",
        app="tutorial",
        database=database,
        url=url,
        argv=lambda port: uvicorn(python, "tutorial_app:app", port),
        env={**env, "TUTORIAL_DATABASE_URL": url, "TUTORIAL_SECRET_KEY": secrets.token_hex(32)},
        me_path="/users/me/",
        token=token,
        login=login,
    )


def fastapi_users_system(python: str, database: str, url: str, env: dict[str, str]) -> System:
    login = Login("/auth/jwt/login", {"username": FU_EMAIL, "password": PASSWORD})

    def token(port: int) -> str:
        answer = httpcall.call(port, "POST", login.path, form=login.form)
        if answer.status == 400:  # not registered yet: the first start on this database
            registered = httpcall.call(
                port, "POST", "/auth/register", json_body={"email": FU_EMAIL, "password": PASSWORD}
            )
            httpcall.expect(registered, 201, "fastapi-users register")
            answer = httpcall.call(port, "POST", login.path, form=login.form)
        return str(httpcall.expect(answer, 200, "fastapi-users login").json()["access_token"])

    return System(
        key=f"fastapi-users-{database.lower()}",
        label=f"fastapi-users 15, {database}",
        app="fastapi-users",
        database=database,
        url=url,
        argv=lambda port: uvicorn(python, "fastapi_users_app:app", port),
        env={**env, "FU_DATABASE_URL": url, "FU_SECRET": secrets.token_hex(32)},
        me_path="/users/me",
        token=token,
        login=login,
    )
