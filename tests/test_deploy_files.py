"""The files a deployment starts from: what they run must be what the tests run.

Images cannot be built on the test machine, so these tests check what can be checked without
a container engine: every command the Dockerfile and docker-compose.yml give authdb parses as
the real CLI parses it, every variable they set is a real setting, and the version and
licence agree everywhere they are stated.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
import yaml

import authdb
from authdb.cli.main import app as cli_app
from authdb.settings import Settings
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parent.parent


def _parse(args: list[str]) -> str:
    """Parse ``authdb ARGS`` as the console script would, running nothing; return the
    sub-command's name. An unknown command or option or a bad value raises a usage error."""
    # Typer (0.29) carries its own copy of click: its classes, not the installed click's.
    group: Any = typer.main.get_command(cli_app)
    with group.make_context("authdb", list(args)) as context:
        name, command, rest = group.resolve_command(
            context, [*context._protected_args, *context.args]
        )
        assert command is not None and name is not None
        command.make_context(name, rest, parent=context).close()
        return name


def _docker_json(instruction: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(rf"^{instruction} (\[.*\])$", text, re.MULTILINE)
    assert found is not None, f"no exec-form {instruction} in the Dockerfile"
    return list(json.loads(found.group(1)))


def _compose() -> dict[str, dict[str, object]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return dict(services)


def test_the_image_runs_authdb_serve_as_an_unprivileged_user() -> None:
    assert _docker_json("ENTRYPOINT") == ["authdb"]
    assert _parse(_docker_json("CMD")) == "serve"
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2  # multi-stage


def test_every_compose_command_parses_and_every_variable_is_a_setting() -> None:
    known = {f"AUTHDB_{name.upper()}" for name in Settings.model_fields}
    commands = []
    for name, service in _compose().items():
        if "build" not in service and service.get("image") != "authdb:local":
            continue
        commands.append(_parse(list(service["command"])))  # type: ignore[call-overload]
        environment = service.get("environment") or {}
        assert isinstance(environment, dict)
        unknown = set(environment) - known
        assert not unknown, f"{name}: {unknown}"
    assert sorted(commands) == ["migrate", "serve"]


@pytest.mark.parametrize(
    "args", [["serve", "--no-such-option"], ["serve", "--port", "http"], ["serv"]]
)
def test_the_parser_used_above_refuses_what_the_cli_refuses(args: list[str]) -> None:
    with pytest.raises(Exception) as refused:  # click's UsageError (vendored)
        _parse(args)
    assert getattr(refused.value, "exit_code", None) == 2  # a usage error


def test_version_and_licence_agree_everywhere() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == authdb.__version__
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert f"## {authdb.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    from authdb.app import create_app

    settings = Settings(_env_file=None, database_url="sqlite+aiosqlite:////tmp/never-opened.db")  # type: ignore[call-arg]
    assert create_app(settings).version == authdb.__version__


def test_behind_a_proxy_that_strips_a_prefix_links_keep_it(tmp_path: Path) -> None:
    """``serve --root-path /auth``: what a proxy forwarding /auth/* as /* needs."""
    from tests.test_serve import serving

    env = {"AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}"}
    with serving(tmp_path, env, "--root-path", "/auth/") as base:
        home = httpx.get(f"{base}/")
        assert home.status_code == 303 and home.headers["location"] == "/auth/account"
        account = httpx.get(f"{base}/account")
        assert account.headers["location"] == "/auth/login?next=/auth/account"
        login = httpx.get(f"{base}/login").text
        assert 'action="/auth/login"' in login and 'href="/auth/register"' in login
        docs = httpx.get(f"{base}/docs").text
        assert "/auth/openapi.json" in docs
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert "  root path:   /auth (the proxy in front strips it)" in log
    assert "warning: --root-path /auth without AUTHDB_PUBLIC_URL: emailed links" in log


def test_a_root_path_must_be_a_path(tmp_path: Path) -> None:
    from tests.cli import run_cli

    refused = run_cli(["serve", "--root-path", "auth?x"], env={}, cwd=tmp_path)
    assert refused.returncode == 2 and "not a path such as /auth" in refused.stderr
    assert not (tmp_path / "authdb.db").exists()


async def test_no_redirect_takes_its_host_from_the_request(harness: Harness) -> None:
    """Starlette's trailing-slash redirect would answer ``Location: http://<Host>/login``;
    the service does not redirect there at all (a 404), so a forged Host goes nowhere."""
    hostile = {"Host": "evil.example"}
    for path in ("/login/", "/account/", "/register/", "/token/", "/docs/", "/users/me/sessions/"):
        response = await harness.client.get(path, headers=hostile)
        assert response.status_code in (404, 405), (path, response.status_code)
        assert "evil.example" not in response.headers.get("location", ""), path
    # The tutorial's own trailing-slash route is a route, not a redirect.
    assert (await harness.client.get("/users/me/")).status_code == 401
