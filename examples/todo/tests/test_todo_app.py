"""The todo app end to end, served by uvicorn on SQLite and on PostgreSQL, with a real SMTP
server: sign-up with a profile, the welcome and verification emails, todos, account deletion,
the OpenAPI document."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

from .conftest import PASSWORD, Client, query, unique


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _link(message: EmailMessage, public_url: str) -> str:
    return next(word for word in _text(message).split() if word.startswith(public_url))


async def test_register_welcome_verify_sign_in(client: Client) -> None:
    """Register with a profile → a welcome email (the app's callback) and a verification link
    under /auth → confirm → sign in → the profile is on the user and can change."""
    http, mailbox = client.http, client.app.mailbox
    name = unique("alice")
    address = f"{name}@example.com"
    profile = {"company": "Initech", "newsletter": True}
    alice = await client.register(name, profile=profile)
    assert alice["profile"] == profile
    assert alice["is_verified"] is False

    await mailbox.wait_for(address, 2)
    welcome = mailbox.one(address, "Welcome to Todos")
    assert f"Hello {name}," in _text(welcome)
    assert "everyone at Initech" in _text(welcome)
    assert "newsletter" in _text(welcome)
    assert welcome["From"] == "Todos <hello@todo.test>"

    link = _link(mailbox.one(address, "Confirm"), client.app.server.url)
    parts = urlsplit(link)
    assert parts.path == "/auth/verify"  # emailed links follow the router's prefix
    page = await http.get(f"{parts.path}?{parts.query}")
    assert page.status_code == 200  # the page whose button confirms
    token = parse_qs(parts.query)["token"][0]
    verified = await http.post("/auth/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["is_verified"] is True

    headers = await client.bearer(name)
    me = await http.get("/auth/users/me", headers=headers)
    assert me.json()["profile"] == profile
    changed = await http.patch(
        "/auth/users/me",
        json={"profile": {"company": "Initrode", "newsletter": False}},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["profile"] == {"company": "Initrode", "newsletter": False}
    # Registration alone welcomes: nothing more arrived for this address.
    assert len(mailbox.to(address)) == 2


async def test_without_a_profile_the_models_defaults_apply(client: Client) -> None:
    name = unique("dave")
    user = await client.register(name)
    assert user["profile"] == {"company": None, "newsletter": False}
    await client.app.mailbox.wait_for(f"{name}@example.com", 2)
    welcome = client.app.mailbox.one(f"{name}@example.com", "Welcome to Todos")
    assert "everyone at" not in str(welcome) and "newsletter" not in str(welcome)


async def test_profile_is_validated_by_the_apps_model(client: Client) -> None:
    name = unique("bob")
    refused = await client.http.post(
        "/auth/register",
        json={
            "username": name,
            "email": f"{name}@example.com",
            "password": PASSWORD,
            "profile": {"newsletter": "every day please"},
        },
    )
    assert refused.status_code == 422
    assert "newsletter" in refused.text
    assert (
        await client.http.post("/auth/token", data={"username": name, "password": PASSWORD})
    ).status_code == 401


async def test_todos_belong_to_their_owner(client: Client) -> None:
    http = client.http
    alice_name, bob_name = unique("alice"), unique("bob")
    await client.register(alice_name)
    await client.register(bob_name)
    alice, bob = await client.bearer(alice_name), await client.bearer(bob_name)

    assert (await http.get("/todos")).status_code == 401
    created = await http.post("/todos", json={"title": "buy milk"}, headers=alice)
    assert created.status_code == 201, created.text
    milk = created.json()
    assert milk["title"] == "buy milk" and milk["done"] is False
    # An aware UTC time, the same from POST (the object written) as from GET (the row read
    # back): authdb's UTCDateTime, on SQLite too.
    created_at = datetime.fromisoformat(milk["created_at"])
    assert created_at.utcoffset() == timedelta(0), milk
    fetched = (await http.get(f"/todos/{milk['id']}", headers=alice)).json()
    assert datetime.fromisoformat(fetched["created_at"]) == created_at, (milk, fetched)
    await http.post("/todos", json={"title": "call mum"}, headers=alice)
    await http.post("/todos", json={"title": "bob's own"}, headers=bob)

    listed = await http.get("/todos", headers=alice)
    assert [t["title"] for t in listed.json()] == ["buy milk", "call mum"]
    assert [t["title"] for t in (await http.get("/todos", headers=bob)).json()] == ["bob's own"]

    done = await http.patch(f"/todos/{milk['id']}", json={"done": True}, headers=alice)
    assert done.status_code == 200 and done.json()["done"] is True
    assert (await http.get(f"/todos/{milk['id']}", headers=alice)).json()["done"] is True

    # Bob can neither see, change nor delete Alice's todo: for him it does not exist.
    for method, body in (("GET", None), ("PATCH", {"done": False}), ("DELETE", None)):
        response = await http.request(method, f"/todos/{milk['id']}", json=body, headers=bob)
        assert response.status_code == 404, (method, response.text)
        assert response.json() == {"detail": "Todo not found"}

    # Bad input is a 422 naming the problem, never a 500.
    for title in ("", "x" * 201, "nul\x00byte"):
        refused = await http.post("/todos", json={"title": title}, headers=alice)
        assert refused.status_code == 422, (title, refused.text)
        assert "title" in refused.text
    assert (await http.get(f"/todos/{2**63}", headers=alice)).status_code == 422
    unknown = await http.patch(f"/todos/{milk['id']}", json={"owner_id": 2}, headers=alice)
    assert unknown.status_code == 422 and "owner_id" in unknown.text

    deleted = await http.delete(f"/todos/{milk['id']}", headers=alice)
    assert deleted.status_code == 204
    assert (await http.get(f"/todos/{milk['id']}", headers=alice)).status_code == 404
    remaining = (await http.get("/todos", headers=alice)).json()
    assert [t["title"] for t in remaining] == ["call mum"]


async def _todo_count(url: str, owner_id: int) -> int:
    rows = await query(url, "SELECT count(*) FROM todos WHERE owner_id = :id", id=owner_id)
    return int(rows[0][0])


async def test_deleting_an_account_deletes_its_todos(client: Client) -> None:
    """The app chose ON DELETE CASCADE for todos.owner_id: the account goes, its todos too."""
    http, url = client.http, client.app.database_url
    alice_name, bob_name = unique("alice"), unique("bob")
    alice_id = (await client.register(alice_name))["id"]
    bob_id = (await client.register(bob_name))["id"]
    alice, bob = await client.bearer(alice_name), await client.bearer(bob_name)
    for title in ("one", "two"):
        await http.post("/todos", json={"title": title}, headers=alice)
    await http.post("/todos", json={"title": "bob's"}, headers=bob)
    assert await _todo_count(url, alice_id) == 2

    gone = await http.request(
        "DELETE", "/auth/users/me", json={"password": PASSWORD}, headers=alice
    )
    assert gone.status_code == 204, gone.text
    assert await _todo_count(url, alice_id) == 0
    assert await _todo_count(url, bob_id) == 1
    assert (await http.get("/todos", headers=alice)).status_code == 401


async def test_openapi_names_the_token_url_under_auth(client: Client) -> None:
    http = client.http
    schema = (await http.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert {s["flows"]["password"]["tokenUrl"] for s in schemes.values()} == {"/auth/token"}
    assert {"/todos", "/todos/{todo_id}", "/auth/register", "/auth/token"} <= set(schema["paths"])
    assert "/token" not in schema["paths"]
    # The app's profile model is in the document.
    assert {"company", "newsletter"} <= set(
        schema["components"]["schemas"]["Profile"]["properties"]
    )
    # And the token URL it names issues tokens that the app's own routes accept.
    name = unique("erin")
    await client.register(name)
    assert (await http.get("/todos", headers=await client.bearer(name))).status_code == 200
