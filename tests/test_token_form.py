"""``POST /token``'s form, read in one pass (authdb.http.token_form): the same answers as
FastAPI's per-field ``Form`` reading, on both databases."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authdb.http.token_form import MAX_FIELDS, MFA_GRANT, TokenForm
from tests.conftest import PASSWORD, Harness

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _issues(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request", body  # RFC 6749 5.2, as every /token error
    return list(body["detail"])


async def test_an_urlencoded_login_and_a_multipart_one_both_sign_in(harness: Harness) -> None:
    await harness.create_user()
    plain = await harness.client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert plain.status_code == 200, plain.text
    fields = {"username": (None, "alice"), "password": (None, PASSWORD)}
    multipart = await harness.client.post("/token", files=fields)
    assert multipart.status_code == 200, multipart.text
    assert plain.json()["access_token"] != multipart.json()["access_token"]


async def test_percent_and_plus_encoding_and_utf8_are_decoded(harness: Harness) -> None:
    password = "späß & sœurs + 100%=ok"
    await harness.create_user(username="zoë", password=password)
    body = "username=zo%C3%AB&password=sp%C3%A4%C3%9F+%26+s%C5%93urs+%2B+100%25%3Dok"
    response = await harness.client.post("/token", content=body, headers=FORM)
    assert response.status_code == 200, response.text


async def test_an_empty_value_counts_as_absent(harness: Harness) -> None:
    await harness.create_user()
    # grant_type= is the default grant (password), as FastAPI reads an empty form field.
    body = f"grant_type=&username=alice&password={PASSWORD}&otp="
    assert (await harness.client.post("/token", content=body, headers=FORM)).status_code == 200
    [issue] = _issues(
        await harness.client.post("/token", content="username=&password=x", headers=FORM)
    )
    assert issue == {"type": "missing", "loc": ["body", "username"], "msg": "Field required"}


async def test_the_last_of_a_repeated_field_wins_and_unknown_fields_are_ignored(
    harness: Harness,
) -> None:
    await harness.create_user()
    body = f"username=bob&username=alice&password=wrong&password={PASSWORD}&client_id=x&foo"
    assert (await harness.client.post("/token", content=body, headers=FORM)).status_code == 200
    # Even an empty last value: it counts as absent, as FastAPI reads a form.
    body = f"username=alice&username=&password={PASSWORD}"
    [issue] = _issues(await harness.client.post("/token", content=body, headers=FORM))
    assert issue["loc"] == ["body", "username"]


async def test_every_too_long_field_is_named_in_one_422(harness: Harness) -> None:
    data = {"username": "u" * 1025, "password": "p" * 4097, "otp": "1" * 65, "scope": "s"}
    issues = _issues(await harness.client.post("/token", data=data))
    assert sorted(tuple(i["loc"]) for i in issues) == [
        ("body", "otp"), ("body", "password"), ("body", "username"),
    ]  # fmt: skip
    assert {i["type"] for i in issues} == {"string_too_long"}


async def test_a_file_in_place_of_a_field_is_a_422_naming_it(harness: Harness) -> None:
    files = {"username": ("name.txt", b"alice", "text/plain"), "password": (None, PASSWORD)}
    [issue] = _issues(await harness.client.post("/token", files=files))
    assert issue["loc"] == ["body", "username"] and issue["type"] == "string_type"


async def test_a_form_of_too_many_fields_is_a_422(harness: Harness) -> None:
    body = "&".join(f"f{i}=x" for i in range(MAX_FIELDS + 1))
    for response in (
        await harness.client.post("/token", content=body, headers=FORM),
        await harness.client.post(
            "/token", files={f"f{i}": (None, "x") for i in range(MAX_FIELDS + 1)}
        ),
    ):
        [issue] = _issues(response)
        assert issue["loc"] == ["body"], issue


async def test_a_body_that_is_no_form_reads_as_an_empty_one(harness: Harness) -> None:
    await harness.create_user()
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {}):
        response = await harness.client.post(
            "/token", content=f'{{"username": "alice", "password": "{PASSWORD}"}}', headers=headers
        )
        issues = _issues(response)
        assert ["body", "username"] in [i["loc"] for i in issues], issues


async def test_the_openapi_document_declares_the_form(harness: Harness) -> None:
    document = (await harness.client.get("/openapi.json")).json()
    body = document["paths"]["/token"]["post"]["requestBody"]["content"]
    schema = body["application/x-www-form-urlencoded"]["schema"]
    assert set(schema["properties"]) == set(TokenForm.model_fields)
    assert schema["properties"]["password"]["anyOf"][0]["maxLength"] == 4096


_NAMES = st.sampled_from([*sorted(TokenForm.model_fields), "client_id", "x"])
_VALUES = (
    st.sampled_from(["", "password", "refresh_token", MFA_GRANT, "alice"])
    | st.text(max_size=80)
    | (st.text(min_size=1020, max_size=1100))
)
_LIMITS = {
    name: next(m.max_length for m in field.metadata if hasattr(m, "max_length"))
    for name, field in TokenForm.model_fields.items()
}


def _expected(pairs: list[tuple[str, str]]) -> tuple[set[int], set[str]]:
    """The statuses a form may get, and the fields a 422 of them names."""
    last = {name: value for name, value in pairs if name in _LIMITS}
    given = {name: value for name, value in last.items() if value}
    too_long = {name for name, value in given.items() if len(value) > _LIMITS[name]}
    if too_long:
        return {422}, too_long
    grant = given.get("grant_type", "password")
    needs = {"password": ("username", "password"), "refresh_token": ("refresh_token",)}.get(grant)
    if grant == MFA_GRANT:
        if "mfa_token" not in given:
            return {422}, {"mfa_token"}
        if ("otp" in given) == ("recovery_code" in given):
            return {422}, {"otp"}  # exactly one of the two
        return {401}, set()  # no such MFA token
    if needs is None:
        return {400}, set()  # unsupported_grant_type
    missing = [name for name in needs if name not in given]
    if missing:
        return {422}, set(missing[:1])  # the first missing field is the one named
    # A wrong password or refresh token (429 once the failures' rate limit is reached), or a
    # login name the name rules refuse (422 naming it).
    return {400, 401, 422, 429}, {needs[0]}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
async def test_any_form_gets_the_answer_its_fields_call_for(
    harness: Harness, pairs: list[tuple[str, str]]
) -> None:
    response = await harness.client.post("/token", content=urlencode(pairs), headers=FORM)
    statuses, named = _expected(pairs)
    assert response.status_code in statuses, (pairs, response.text)
    assert "error" in response.json()  # an OAuth error answer, whatever the status
    if response.status_code == 422:
        assert {tuple(i["loc"]) for i in response.json()["detail"]} == {
            ("body", name) for name in named
        }, (pairs, response.text)
