"""Profile fields (``Auth(settings, profile=Model)``), on SQLite and PostgreSQL.

The application's own fields are accepted as ``"profile"`` by ``POST /register``,
``PATCH /users/me`` (merged key by key) and the admin ``PATCH``; returned under ``"profile"``;
validated by the model with 422s naming the field; stored in ``users.profile`` without an
application migration; shown in OpenAPI; and present (as a dict) on the user that authdb's
dependencies inject into the application's own routes. Without a model, a profile is refused
rather than dropped, and so is any unknown top-level field of ``/register``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select, text, update

from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.db.models import AuditEvent, User
from authdb.errors import InvalidInput
from authdb.services import accounts
from authdb.services.core import ClientInfo, Core
from authdb.services.profile import NO_PROFILE_FIELDS, clean_profile, merge_profile
from tests.cli import run_cli
from tests.conftest import PASSWORD, Harness, Mailbox
from tests.test_pages import Browser, Site


class Address(BaseModel):
    city: str = Field(max_length=100)
    zip: str = Field(pattern=r"^\d{5}$")


class CompanyProfile(BaseModel):
    """The profile an application adds to its users."""

    company: str = Field(min_length=1, max_length=100)
    employees: int = Field(0, ge=0)
    newsletter: bool = False
    address: Address | None = None


class OptionalProfile(BaseModel):
    """A model whose every field has a default, extra keys kept."""

    model_config = ConfigDict(extra="allow")

    theme: str = "light"


DEFAULTS = {"employees": 0, "newsletter": False, "address": None}
SECRET = "test-secret-key-that-is-long-enough-for-hs256-0123456789"

MakeApp = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_app(make_settings: Callable[..., Settings]) -> AsyncIterator[MakeApp]:
    """``await make_app(profile=Model, **settings)``: the service app with that profile model,
    started, and a client; plus ``/whoami``, an application route using authdb's user."""
    async with AsyncExitStack() as stack:

        async def _make(
            profile: type[BaseModel] | None = CompanyProfile, **overrides: Any
        ) -> Harness:
            auth = Auth(make_settings(**overrides), profile=profile)
            app = create_app(auth=auth)
            _add_whoami(app, auth)
            await migrate.upgrade(auth.core.engine)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            )
            await stack.enter_async_context(client)
            return Harness(auth, client)

        yield _make


def _add_whoami(app: FastAPI, auth: Auth) -> None:
    @app.get("/whoami")
    async def whoami(user: User = Depends(auth.current_active_user)) -> dict[str, Any]:
        return {"type": type(user.profile).__name__, "profile": user.profile}


@pytest.fixture
async def app(make_app: MakeApp) -> Harness:
    return await make_app()


def register_body(name: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"username": name, "email": f"{name}@example.com", "password": PASSWORD, **extra}


def loc(response: httpx.Response) -> list[Any]:
    """The loc of a 422's (first) error."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    return list(detail[0]["loc"])


async def stored_profile(app: Harness, username: str) -> Any:
    async with app.auth.core.sessionmaker() as db:
        return await db.scalar(select(User.profile).where(User.username == username))


# --- registration -------------------------------------------------------------------------------


async def test_register_stores_the_profile_and_every_read_returns_it(app: Harness) -> None:
    body = register_body(profile={"company": "Acme", "address": {"city": "Ulm", "zip": "89073"}})
    created = await app.client.post("/register", json=body)
    assert created.status_code == 201, created.text
    expected = {**DEFAULTS, "company": "Acme", "address": {"city": "Ulm", "zip": "89073"}}
    assert created.json()["profile"] == expected
    assert await stored_profile(app, "alice") == expected

    headers = await app.bearer("alice")
    me = await app.client.get("/users/me", headers=headers)
    assert me.json()["profile"] == expected
    # The user authdb injects into the application's own routes, read by the per-request
    # reader (stdlib sqlite3 or asyncpg), has the profile as a dict too.
    whoami = await app.client.get("/whoami", headers=headers)
    assert whoami.json() == {"type": "dict", "profile": expected}


async def test_register_refuses_a_bad_profile_naming_the_field(app: Harness) -> None:
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (register_body(), ["body", "profile"]),  # the model has required fields
        (register_body(profile={}), ["body", "profile", "company"]),
        (register_body(profile={"company": ""}), ["body", "profile", "company"]),
        (
            register_body(profile={"company": "A", "employees": "many"}),
            ["body", "profile", "employees"],
        ),
        (
            register_body(profile={"company": "A", "employees": -1}),
            ["body", "profile", "employees"],
        ),
        (
            register_body(profile={"company": "A", "address": {"city": "Ulm", "zip": "1"}}),
            ["body", "profile", "address", "zip"],
        ),
        (register_body(profile={"company": "A", "colour": "red"}), ["body", "profile", "colour"]),
        (register_body(profile={"company": "A\x00"}), ["body", "profile", "company"]),
        (register_body(profile={"company": "A\u202e"}), ["body", "profile", "company"]),
        (register_body(profile="Acme"), ["body", "profile"]),
        (register_body(profile=["Acme"]), ["body", "profile"]),
        # A field at the top level is not quietly dropped either.
        (register_body(company="Acme", profile={"company": "A"}), ["body", "company"]),
    ]
    for body, where in cases:
        response = await app.client.post("/register", json=body)
        assert loc(response) == where, (body, response.text)
        assert "input" not in response.json()["detail"][0]  # never echoed
    # Nothing was created along the way.
    async with app.auth.core.sessionmaker() as db:
        assert await db.scalar(select(User.id)) is None
    tab_and_newline = {"company": "Acme\tGmbH\nUlm"}  # ordinary in an address
    ok = await app.client.post("/register", json=register_body(profile=tab_and_newline))
    assert ok.status_code == 201, ok.text


async def test_a_model_with_defaults_only_fills_them_in(make_app: MakeApp) -> None:
    app = await make_app(profile=OptionalProfile)
    created = await app.client.post("/register", json=register_body())
    assert created.status_code == 201, created.text
    assert created.json()["profile"] == {"theme": "light"}
    # extra="allow" in the model: unknown keys are the application's choice to keep.
    kept = await app.client.post(
        "/register", json=register_body("bob", profile={"theme": "dark", "beta": True})
    )
    assert kept.json()["profile"] == {"theme": "dark", "beta": True}


# --- changes ------------------------------------------------------------------------------------


async def test_patch_me_merges_the_given_keys_and_validates_the_whole(app: Harness) -> None:
    body = register_body(profile={"company": "Acme", "employees": 3})
    assert (await app.client.post("/register", json=body)).status_code == 201
    headers = await app.bearer("alice")

    changed = await app.client.patch(
        "/users/me", json={"profile": {"employees": 5, "newsletter": True}}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    expected = {**DEFAULTS, "company": "Acme", "employees": 5, "newsletter": True}
    assert changed.json()["profile"] == expected

    refusals: list[tuple[Any, list[Any]]] = [
        ({"employees": -1}, ["body", "profile", "employees"]),
        ({"company": None}, ["body", "profile", "company"]),
        ({"colour": "red"}, ["body", "profile", "colour"]),
        ({"address": {"city": "Ulm"}}, ["body", "profile", "address", "zip"]),
        (None, ["body", "profile"]),
        ("Acme", ["body", "profile"]),
    ]
    for profile, where in refusals:
        response = await app.client.patch("/users/me", json={"profile": profile}, headers=headers)
        assert loc(response) == where, (profile, response.text)
    assert await stored_profile(app, "alice") == expected

    # Profile and other fields in one request; the audit trail names fields, never values.
    both = await app.client.patch(
        "/users/me",
        json={"full_name": "Alice A.", "profile": {"company": "Initech"}},
        headers=headers,
    )
    assert both.status_code == 200, both.text
    assert both.json()["full_name"] == "Alice A."
    assert both.json()["profile"]["company"] == "Initech"
    detail = await last_audit_detail(app, "account_updated")
    assert set(detail["fields"]) == {"full_name", "profile"}
    assert "Initech" not in json.dumps(detail)


async def test_admin_patch_merges_and_is_refused_alike(app: Harness) -> None:
    await app.create_user("root", is_superuser=True)
    bob = await app.create_user("bob")  # made without a profile (as by the CLI or the pages)
    admin = await app.bearer("root")
    assert (await app.client.get(f"/users/{bob.id}", headers=admin)).json()["profile"] is None

    # A stored profile of None has no company yet: the change must bring one.
    missing = await app.client.patch(
        f"/users/{bob.id}", json={"profile": {"employees": 7}}, headers=admin
    )
    assert loc(missing) == ["body", "profile", "company"]
    null = await app.client.patch(f"/users/{bob.id}", json={"profile": None}, headers=admin)
    assert loc(null) == ["body", "profile"]

    changed = await app.client.patch(
        f"/users/{bob.id}", json={"profile": {"company": "Hooli", "employees": 7}}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["profile"] == {**DEFAULTS, "company": "Hooli", "employees": 7}
    merged = await app.client.patch(
        f"/users/{bob.id}", json={"profile": {"newsletter": True}}, headers=admin
    )
    assert merged.json()["profile"] == {
        **DEFAULTS,
        "company": "Hooli",
        "employees": 7,
        "newsletter": True,
    }
    detail = await last_audit_detail(app, "admin_user_updated")
    assert detail["fields"] == ["profile"]
    assert "Hooli" not in json.dumps(detail)

    listed = await app.client.get("/users", headers=admin)
    by_name = {item["username"]: item for item in listed.json()["items"]}
    assert by_name["bob"]["profile"]["company"] == "Hooli"
    assert by_name["root"]["profile"] is None

    bob_headers = await app.bearer("bob")
    whoami = await app.client.get("/whoami", headers=bob_headers)
    assert whoami.json()["profile"]["newsletter"] is True


async def last_audit_detail(app: Harness, event: str) -> dict[str, Any]:
    async with app.auth.core.sessionmaker() as db:
        detail = await db.scalar(
            select(AuditEvent.detail)
            .where(AuditEvent.event == event)
            .order_by(AuditEvent.id.desc())
            .limit(1)
        )
    assert detail is not None
    return dict(detail)


# --- without a profile model --------------------------------------------------------------------


async def test_without_a_model_a_profile_is_refused_not_dropped(make_app: MakeApp) -> None:
    app = await make_app(profile=None)
    refused = await app.client.post("/register", json=register_body(profile={"company": "A"}))
    assert loc(refused) == ["body", "profile"]
    assert refused.json()["detail"][0]["msg"] == NO_PROFILE_FIELDS
    created = await app.client.post("/register", json=register_body())
    assert created.status_code == 201, created.text
    assert "profile" not in created.json()

    await app.create_user("root", is_superuser=True)
    headers = await app.bearer("alice")
    patch = await app.client.patch("/users/me", json={"profile": {"a": 1}}, headers=headers)
    assert loc(patch) == ["body", "profile"]
    admin = await app.client.patch(
        f"/users/{created.json()['id']}",
        json={"profile": {"a": 1}},
        headers=await app.bearer("root"),
    )
    assert loc(admin) == ["body", "profile"]
    assert admin.json()["detail"][0]["msg"] == NO_PROFILE_FIELDS
    assert "profile" not in (await app.client.get("/users/me", headers=headers)).json()

    schemas = (await app.client.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("UserCreate", "UserUpdate", "AdminUserUpdate", "UserRead"):
        assert "profile" not in schemas[name]["properties"], name
    assert schemas["UserCreate"]["additionalProperties"] is False


# --- OpenAPI ------------------------------------------------------------------------------------


async def test_openapi_shows_the_model(app: Harness) -> None:
    schemas = (await app.client.get("/openapi.json")).json()["components"]["schemas"]
    model = schemas["CompanyProfile"]
    assert set(model["properties"]) == {"company", "employees", "newsletter", "address"}
    assert model["required"] == ["company"]
    ref = {"$ref": "#/components/schemas/CompanyProfile"}
    assert schemas["UserCreate"]["properties"]["profile"].items() >= ref.items()
    assert "profile" in schemas["UserCreate"]["required"]
    # A PATCH takes some of the fields, never null: <Model>Update, none required.
    change = {"$ref": "#/components/schemas/CompanyProfileUpdate"}
    for name in ("UserUpdate", "AdminUserUpdate"):
        profile = schemas[name]["properties"]["profile"]
        assert profile.items() >= change.items(), name
        assert "anyOf" not in profile and "default" not in profile, name
    partial = schemas["CompanyProfileUpdate"]
    assert set(partial["properties"]) == set(model["properties"])
    assert "required" not in partial
    assert partial["additionalProperties"] is False  # unknown keys are refused
    shown = schemas["UserRead"]["properties"]["profile"]["anyOf"][0]
    assert set(shown["properties"]) == {"company", "employees", "newsletter", "address"}
    assert schemas["UserPage"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/UserRead"
    }


# --- robustness ---------------------------------------------------------------------------------


async def test_a_stored_profile_the_model_no_longer_accepts_still_reads(app: Harness) -> None:
    """Reading never validates again: a model changed since must not turn reads into 500s."""
    user = await app.create_user("alice")
    stale = {"company": 42, "retired_field": "x"}
    async with app.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == user.id).values(profile=stale))
    headers = await app.bearer("alice")
    me = await app.client.get("/users/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["profile"] == stale
    assert (await app.client.get("/whoami", headers=headers)).json()["profile"] == stale
    # The next write applies the model to the whole profile again: a stored value it refuses
    # must be given anew, and a key it no longer has is dropped (it cannot block changes).
    fix = await app.client.patch("/users/me", json={"profile": {"employees": 1}}, headers=headers)
    assert loc(fix) == ["body", "profile", "company"]
    retired = await app.client.patch(
        "/users/me", json={"profile": {"company": "Acme", "retired_field": None}}, headers=headers
    )
    assert loc(retired) == ["body", "profile", "retired_field"]
    fixed = await app.client.patch(
        "/users/me", json={"profile": {"company": "Acme"}}, headers=headers
    )
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["profile"] == {**DEFAULTS, "company": "Acme"}


async def test_no_profile_is_sql_null_and_the_column_needs_no_app_migration(
    app: Harness,
) -> None:
    await app.create_user("alice")
    async with app.auth.core.engine.connect() as connection:
        row = (await connection.execute(text("SELECT profile IS NULL FROM users"))).one()
    assert bool(row[0]) is True
    headers = await app.bearer("alice")
    assert (await app.client.get("/whoami", headers=headers)).json() == {
        "type": "NoneType",
        "profile": None,
    }


async def test_the_hosted_register_page_works_with_a_required_profile(
    make_settings: Callable[..., Settings], smtp_server: tuple[int, Mailbox]
) -> None:
    """The pages show no profile fields: their accounts start without a profile."""
    auth = Auth(make_settings(), profile=CompanyProfile)
    app = create_app(auth=auth)
    await migrate.upgrade(auth.core.engine)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        site = Site(auth, app, stack, smtp_server[1])
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=auth.settings.public_url
        )
        await stack.enter_async_context(client)
        browser = Browser(client, site)
        form = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        created = await browser.submit("/register", form)
        assert created.status_code == 303, created.text[:2000]
        async with auth.core.sessionmaker() as db:
            user = await db.scalar(select(User).where(User.username == "alice"))
        assert user is not None and user.profile is None
        await browser.signed_in("alice")
        account = await browser.client.get("/account")
        assert account.status_code == 200
        saved = await browser.submit(
            "/account", {"username": "alice2", "full_name": "A"}, action="/account/profile"
        )
        assert saved.status_code == 303, saved.text[:2000]


# --- the library --------------------------------------------------------------------------------


def _core(model: type[BaseModel] | None) -> Core:
    # clean_profile reads nothing but the model.
    return cast(Core, type("FakeCore", (), {"profile_model": model})())


def test_clean_profile_semantics() -> None:
    core = _core(CompanyProfile)
    assert clean_profile(core, None) is None
    assert clean_profile(core, {"company": "A", "employees": "3"}) == {
        **DEFAULTS,
        "company": "A",
        "employees": 3,
    }
    assert clean_profile(core, CompanyProfile(company="B")) == {**DEFAULTS, "company": "B"}
    # Partial: only the keys given, absent required fields are the merge's business.
    assert clean_profile(core, {"employees": 4}, partial=True) == {"employees": 4}
    with pytest.raises(InvalidInput) as refused:
        clean_profile(core, {"employees": -4}, partial=True)
    assert refused.value.field == "profile.employees"
    with pytest.raises(InvalidInput) as refused:
        clean_profile(core, {"company": "A", "employees": float("nan")})
    assert refused.value.field == "profile.employees"
    with pytest.raises(InvalidInput, match=NO_PROFILE_FIELDS):
        clean_profile(_core(None), {"company": "A"})
    assert merge_profile(core, {**DEFAULTS, "company": "A"}, {"newsletter": True}) == {
        **DEFAULTS,
        "company": "A",
        "newsletter": True,
    }
    with pytest.raises(InvalidInput) as refused:
        merge_profile(core, None, {"newsletter": True})
    assert refused.value.field == "profile.company"


async def test_the_service_takes_a_model_instance(app: Harness) -> None:
    user, _mail = await accounts.register(
        app.auth.core,
        app.auth.limits,
        username="carol",
        email="carol@example.com",
        password=PASSWORD,
        full_name=None,
        profile=CompanyProfile(company="Globex", employees=2),
        client=ClientInfo(),
    )
    assert user.profile == {**DEFAULTS, "company": "Globex", "employees": 2}
    assert await stored_profile(app, "carol") == user.profile


# --- the standalone service: AUTHDB_PROFILE_MODEL -----------------------------------------------


PROFILE_MODULE = """
from pydantic import BaseModel

class TeamProfile(BaseModel):
    team: str
    seats: int = 1

NOT_A_MODEL = 3
"""


@pytest.fixture
def profile_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real module on sys.path, as the service's application package would be."""
    folder = tmp_path / "app_pkg"
    folder.mkdir()
    (folder / "authdb_test_profiles.py").write_text(textwrap.dedent(PROFILE_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "authdb_test_profiles", raising=False)
    return str(folder)


async def test_the_setting_names_a_model_for_the_standalone_service(
    profile_module: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(profile_model="authdb_test_profiles:TeamProfile")
    auth = Auth(settings)
    assert auth.core.profile_model is not None
    assert auth.core.profile_model.__name__ == "TeamProfile"
    app = create_app(auth=auth)
    await migrate.upgrade(auth.core.engine)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        created = await client.post("/register", json=register_body(profile={"team": "ops"}))
        assert created.status_code == 201, created.text
        assert created.json()["profile"] == {"team": "ops", "seats": 1}
        bad = await client.post("/register", json=register_body("bob", profile={"seats": 2}))
        assert loc(bad) == ["body", "profile", "team"]
    # An explicit model wins over the setting.
    assert Auth(settings, profile=CompanyProfile).core.profile_model is CompanyProfile


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("authdb_test_profiles", "package.module:ClassName"),
        ("authdb_test_profiles:", "package.module:ClassName"),
        ("authdb_test_no_such_module:TeamProfile", "cannot import"),
        ("authdb_test_profiles:Missing", "has no 'Missing'"),
        ("authdb_test_profiles:NOT_A_MODEL", "not a Pydantic model class"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(profile_module: str, value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, profile_model=value)  # type: ignore[call-arg]
    errors = refused.value.errors()
    assert [error["loc"][0] for error in errors] == ["profile_model"]
    assert reason in errors[0]["msg"]
    assert "AUTHDB_PROFILE_MODEL" in str(refused.value)


async def test_the_cli_names_the_variable(profile_module: str, tmp_path: Path) -> None:
    env = {
        "AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}",
        "AUTHDB_SECRET_KEY": SECRET,
        "AUTHDB_PROFILE_MODEL": "authdb_test_profiles:Missing",
        "PYTHONPATH": profile_module,
    }
    result = await asyncio.to_thread(run_cli, ["config"], env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "AUTHDB_PROFILE_MODEL" in result.stderr
    assert "Traceback" not in result.stderr
    env["AUTHDB_PROFILE_MODEL"] = "authdb_test_profiles:TeamProfile"
    shown = await asyncio.to_thread(run_cli, ["config"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "authdb_test_profiles:TeamProfile" in shown.stdout


# --- numbers, aliases, nested keys (review of issue 10) -----------------------------------------


class Tag(BaseModel):
    name: str


class Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")

    a: int = 0


class FreeformProfile(BaseModel):
    """Fields whose values Pydantic does not check: where an infinity could slip through."""

    model_config = ConfigDict(extra="allow")

    company: str = "Acme"
    data: Any = None
    meta: dict[str, Any] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list)
    loose: Loose | None = None


class AliasedProfile(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    company: str = Field(alias="companyName")
    seats: int = Field(1, alias="seatCount")


async def test_non_finite_numbers_are_refused_on_every_path(make_app: MakeApp) -> None:
    """Pydantic dumps an infinity in an ``Any``/extra field as null: every path refuses it
    before validation instead of storing null (POST /register once did)."""
    app = await make_app(profile=FreeformProfile)
    spellings = ["1e999", "-1e999", "Infinity", "NaN"]
    places: list[tuple[str, list[Any]]] = [
        ('{"data": %s}', ["body", "profile", "data"]),
        ('{"data": [1, {"x": %s}]}', ["body", "profile", "data", "1", "x"]),
        ('{"meta": {"k": %s}}', ["body", "profile", "meta", "k"]),
        ('{"extra_key": %s}', ["body", "profile", "extra_key"]),
    ]
    assert (await app.client.post("/register", json=register_body())).status_code == 201
    headers = {**await app.bearer("alice"), "Content-Type": "application/json"}
    for spelling in spellings:
        for template, where in places:
            profile = template % spelling
            body = json.dumps(register_body("bob"))[:-1] + f', "profile": {profile}}}'
            created = await app.client.post(
                "/register", content=body, headers={"Content-Type": "application/json"}
            )
            assert loc(created) == where, (profile, created.text)
            assert "finite" in created.json()["detail"][0]["msg"]
            patched = await app.client.patch(
                "/users/me", content=f'{{"profile": {profile}}}', headers=headers
            )
            assert loc(patched) == where, (profile, patched.text)
    async with app.auth.core.sessionmaker() as db:
        assert await db.scalar(select(User.id).where(User.username == "bob")) is None

    # The library: a dict or a model instance, through auth.users.create / update.
    for profile_value in (
        {"data": [float("inf")]},
        {"meta": {"k": float("nan")}},
        FreeformProfile(data={"x": float("-inf")}),
        {"loose": {"a": 1}, "extra_key": Decimal("Infinity")},
    ):
        with pytest.raises(InvalidInput, match="finite") as refused:
            await app.auth.users.create(
                username="carol",
                email="carol@example.com",
                password=PASSWORD,
                profile=profile_value,
            )
        assert refused.value.field is not None and refused.value.field.startswith("profile.")
    # Library input nesting deeper than Pydantic can dump (a ValueError once; HTTP bodies
    # have their own, lower bound), and a cycle, are refused alike.
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(InvalidInput, match="deeper"):
        await app.auth.users.create(
            username="dave", email="dave@example.com", password=PASSWORD, profile={"data": deep}
        )
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidInput, match="deeper"):
        merge_profile(_core(FreeformProfile), None, {"data": cyclic})

    alice = await app.auth.users.get_by_login("alice")
    with pytest.raises(InvalidInput, match="finite"):
        await app.auth.users.update(alice.id, profile={"data": float("inf")})
    assert (await stored_profile(app, "alice"))["data"] is None


async def test_numbers_and_key_order_read_back_the_same_on_both_databases(
    make_app: MakeApp,
) -> None:
    """jsonb keeps numbers as decimals (1e30 -> 10**30, -0.0 -> 0.0) and sorts keys; what is
    stored is normalised so that SQLite reads back exactly what PostgreSQL does."""
    app = await make_app(profile=FreeformProfile)
    numbers = [1e30, 1e308, -0.0, 1e16, -1.5e20, 1e15, 0.1, 5e-324, 2.5, 2**70, 7, True]
    expected_numbers = [
        10**30,
        int(Decimal("1e308")),
        0.0,
        10**16,
        -150_000_000_000_000_000_000,
        1e15,
        0.1,
        5e-324,
        2.5,
        2**70,
        7,
        True,
    ]
    meta = {"zebra": 1, "b": 2, "aa": 3, "é": 4, "a": 5}
    body = register_body(profile={"data": numbers, "meta": meta})
    created = await app.client.post("/register", json=body)
    assert created.status_code == 201, created.text
    profile = created.json()["profile"]
    assert profile["data"] == expected_numbers
    assert [type(n) for n in profile["data"]] == [type(n) for n in expected_numbers]
    # jsonb's order: shorter keys first (in UTF-8 bytes), then by bytes.
    assert list(profile["meta"]) == ["a", "b", "aa", "é", "zebra"]

    headers = await app.bearer("alice")
    exact = json.dumps(profile)
    me = (await app.client.get("/users/me", headers=headers)).json()["profile"]
    whoami = (await app.client.get("/whoami", headers=headers)).json()["profile"]
    stored = await stored_profile(app, "alice")
    for read in (me, whoami, stored):
        assert json.dumps(read) == exact  # same types, same spelling, same order

    # A PATCH normalises alike.
    patched = await app.client.patch(
        "/users/me", json={"profile": {"data": {"big": 1e20}}}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["profile"]["data"] == {"big": 10**20}
    assert json.dumps(await stored_profile(app, "alice")) == json.dumps(patched.json()["profile"])


async def test_patch_by_field_name_for_an_aliased_model(make_app: MakeApp) -> None:
    """populate_by_name: a change may name a field by its name or its alias; it is stored by
    alias (as the model dumps), never under both."""
    app = await make_app(profile=AliasedProfile)
    created = await app.client.post("/register", json=register_body(profile={"company": "A"}))
    assert created.status_code == 201, created.text
    assert created.json()["profile"] == {"companyName": "A", "seatCount": 1}
    headers = await app.bearer("alice")

    by_name = await app.client.patch(
        "/users/me", json={"profile": {"company": "B", "seats": 3}}, headers=headers
    )
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["profile"] == {"companyName": "B", "seatCount": 3}
    by_alias = await app.client.patch(
        "/users/me", json={"profile": {"companyName": "C"}}, headers=headers
    )
    assert by_alias.json()["profile"] == {"companyName": "C", "seatCount": 3}
    await app.create_user("root", is_superuser=True)
    alice_id = created.json()["id"]
    admin = await app.client.patch(
        f"/users/{alice_id}", json={"profile": {"seats": 9}}, headers=await app.bearer("root")
    )
    assert admin.json()["profile"] == {"companyName": "C", "seatCount": 9}
    assert await stored_profile(app, "alice") == {"companyName": "C", "seatCount": 9}
    both = await app.client.patch(
        "/users/me", json={"profile": {"company": "D", "companyName": "E"}}, headers=headers
    )
    assert both.status_code == 422, both.text

    # Without populate_by_name a field's name is an unknown key, as Pydantic has it.
    core = _core(CompanyProfileAliasOnly)
    with pytest.raises(InvalidInput) as refused:
        merge_profile(core, {"companyName": "A"}, {"company": "B"})
    assert refused.value.field == "profile.company"
    assert merge_profile(core, {"companyName": "A"}, {"companyName": "B"}) == {"companyName": "B"}


class CompanyProfileAliasOnly(BaseModel):
    company: str = Field(alias="companyName")


class Renamed(BaseModel):
    """A nested model whose own validator reshapes its input: its keys are its business."""

    city: str

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "town" in data:
            return {"city": data["town"]}
        return data


class NestedProfile(BaseModel):
    company: str = "Acme"
    address: Address | None = None
    tags: list[Tag] = Field(default_factory=list)
    loose: Loose | None = None
    renamed: Renamed | None = None


async def test_unknown_keys_are_refused_at_every_level(make_app: MakeApp) -> None:
    app = await make_app(profile=NestedProfile)
    address = {"city": "Ulm", "zip": "89073"}
    refusals: list[tuple[dict[str, Any], list[Any]]] = [
        ({"address": {**address, "colour": "red"}}, ["body", "profile", "address", "colour"]),
        ({"tags": [{"name": "a"}, {"name": "b", "x": 1}]}, ["body", "profile", "tags", "1", "x"]),
    ]
    for profile, where in refusals:
        response = await app.client.post("/register", json=register_body(profile=profile))
        assert loc(response) == where, (profile, response.text)
        assert response.json()["detail"][0]["msg"] == "Extra inputs are not permitted"
    # A nested model's own extra setting, or its own before-validator, decides.
    fine = {"loose": {"a": 1, "dropped": 2}, "renamed": {"town": "Bonn"}, "address": address}
    created = await app.client.post("/register", json=register_body(profile=fine))
    assert created.status_code == 201, created.text
    assert created.json()["profile"]["loose"] == {"a": 1}
    assert created.json()["profile"]["renamed"] == {"city": "Bonn"}

    headers = await app.bearer("alice")
    for profile, where in refusals:
        response = await app.client.patch("/users/me", json={"profile": profile}, headers=headers)
        assert loc(response) == where, (profile, response.text)
    # The merge is shallow: a nested object given replaces the stored one whole.
    partial = await app.client.patch(
        "/users/me", json={"profile": {"address": {"city": "Bonn"}}}, headers=headers
    )
    assert loc(partial) == ["body", "profile", "address", "zip"]
    # A stored nested object from an older model (a key since removed) never blocks a change
    # elsewhere: it is trimmed, as Pydantic trims it.
    user_id = created.json()["id"]
    stale = {**created.json()["profile"], "address": {**address, "removed": 1}}
    async with app.auth.core.sessionmaker.begin() as db:
        await db.execute(update(User).where(User.id == user_id).values(profile=stale))
    changed = await app.client.patch(
        "/users/me", json={"profile": {"company": "Initech"}}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["profile"]["address"] == address
    assert changed.json()["profile"]["company"] == "Initech"


async def test_openapi_of_a_patch_for_a_model_keeping_extra_keys(make_app: MakeApp) -> None:
    app = await make_app(profile=OptionalProfile)
    schemas = (await app.client.get("/openapi.json")).json()["components"]["schemas"]
    partial = schemas["OptionalProfileUpdate"]
    assert partial.get("additionalProperties") is not False  # extra="allow": kept, not refused
    assert "required" not in partial
    headers_app = await make_app(profile=AliasedProfile)
    aliased = (await headers_app.client.get("/openapi.json")).json()["components"]["schemas"]
    assert set(aliased["AliasedProfileUpdate"]["properties"]) == {"companyName", "seatCount"}
    assert "required" not in aliased["AliasedProfileUpdate"]
