"""Mail as an application extends it: its own sender, templates checked at start-up, and SMTP
over implicit TLS (port 465) or STARTTLS with a private CA."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import ipaddress
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import authdb
from authdb import Auth, Settings
from authdb.app import create_app
from authdb.db import migrate
from authdb.doctor import examine
from authdb.mail import (
    COMMON_VARIABLES,
    EMAIL_PARTS,
    EMAIL_TEMPLATES,
    Mailer,
    TemplateProblem,
    check_templates,
    unused_overrides,
)
from authdb.services import email_tokens, mfa, new_device, passkeys
from authdb.settings_checks import InvalidSettings
from tests.cli import run_cli
from tests.conftest import PASSWORD, Mailbox, _Handler, free_port
from tests.test_pages import csrf_field, link_token

SRC = Path(authdb.__file__).parent
CONTEXT: dict[str, Any] = {
    "username": "alice",
    "token": "SECRET-TOKEN-123",
    "link": "http://auth.example.test/verify?token=SECRET-TOKEN-123",
    "expires": "24 hours",
}


class Outbox:
    """An application's email sender that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.messages.append(message)

    async def wait_for(self, count: int) -> list[EmailMessage]:
        for _ in range(500):
            if len(self.messages) >= count:
                return self.messages
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} message(s), got {len(self.messages)}")


class BrokenSender:
    def __init__(self) -> None:
        self.calls = 0

    async def send(self, message: EmailMessage) -> None:
        self.calls += 1
        body = message.get_body(("plain",))
        assert body is not None
        raise ConnectionError(f"provider said no to: {body.get_content()}")


Started = tuple[Auth, httpx.AsyncClient]


@pytest.fixture
async def start(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    running: list[Started] = []

    async def _start(sender: Any, **overrides: Any) -> Started:
        auth = Auth(make_settings(**overrides), email_sender=sender)
        app = create_app(auth=auth)
        await migrate.upgrade(auth.core.engine)
        await auth.startup()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=auth.settings.public_url
        )
        running.append((auth, client))
        return auth, client

    yield _start
    for auth, client in running:
        await client.aclose()
        await auth.shutdown()


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


# --- the application's sender (both databases) ------------------------------------------------


async def test_the_sender_gets_verify_and_reset_mails_instead_of_smtp(
    start: Callable[..., Awaitable[Started]], mailbox: Mailbox
) -> None:
    outbox = Outbox()
    _, client = await start(outbox)
    body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
    assert (await client.post("/register", json=body)).status_code == 201
    [verify] = await outbox.wait_for(1)
    assert verify["To"] == "alice@example.com"
    assert verify["Subject"] == "Confirm your email address"
    assert link_token(verify, "verify")
    forgot = await client.post("/password/forgot", json={"email": "alice@example.com"})
    assert forgot.status_code == 202
    _, reset = await outbox.wait_for(2)
    assert reset["Subject"] == "Reset your password"
    token = link_token(reset, "reset-password")
    done = await client.post("/password/reset", json={"token": token, "password": "new pass 123x"})
    assert done.status_code == 204
    await asyncio.sleep(0.1)
    assert mailbox.messages == []  # not also sent by SMTP


async def test_a_failing_sender_is_logged_without_the_token_and_the_request_succeeds(
    start: Callable[..., Awaitable[Started]], caplog: pytest.LogCaptureFixture
) -> None:
    sender = BrokenSender()
    _, client = await start(sender)
    body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        assert (await client.post("/register", json=body)).status_code == 201
        for _ in range(500):
            if any(r.levelno == logging.ERROR for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    assert sender.calls == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "ConnectionError" in record.getMessage() and "alice@example.com" in record.getMessage()
    assert "token=" not in record.getMessage()
    assert "[redacted]" in record.getMessage()


async def test_pages_do_not_claim_the_mail_was_logged(
    start: Callable[..., Awaitable[Started]],
) -> None:
    outbox = Outbox()
    _, client = await start(outbox, smtp_host=None)
    page = await client.get("/register")
    form = {
        "csrf_token": csrf_field(page.text),
        "username": "alice",
        "email": "alice@example.com",
        "password": PASSWORD,
    }
    registered = await client.post("/register", data=form)
    assert registered.status_code == 303, registered.text
    notice = await client.get(registered.headers["location"])
    assert "We sent a link" in notice.text
    assert "written to the server's log" not in notice.text
    await outbox.wait_for(1)


async def test_the_sender_replaces_the_development_log(caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox()
    mailer = Mailer(Settings(_env_file=None), sender=outbox)  # type: ignore[call-arg]
    assert not mailer.logs_instead
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await mailer.send("alice@example.com", "verify", **CONTEXT)
    assert [m["To"] for m in outbox.messages] == ["alice@example.com"]
    assert "SECRET-TOKEN" not in caplog.text  # the log says it was sent, not what
    assert Mailer(Settings(_env_file=None)).logs_instead  # type: ignore[call-arg]


# --- the template table and the call sites ---------------------------------------------------


def test_each_template_of_the_table_ships_its_three_files() -> None:
    shipped = {p.name for p in (SRC / "templates").iterdir()}
    for name in EMAIL_TEMPLATES:
        for part in EMAIL_PARTS:
            assert f"{name}.{part}" in shipped


def test_every_template_named_in_the_code_is_in_the_table() -> None:
    pattern = re.compile(
        r'template="(\w+)"|_notice\(\w+, "(\w+)"|^TEMPLATE = "(\w+)"|purpose=(VERIFY|RESET)'
    )
    named = set()
    for path in (SRC / "services").glob("*.py"):
        for match in pattern.finditer(path.read_text(), re.MULTILINE):
            named.add(next(group for group in match.groups() if group).lower())
    assert named, "the pattern no longer finds the call sites"
    named |= {"verify", "reset"}
    assert named <= set(EMAIL_TEMPLATES)


def _keys(context: dict[str, Any]) -> set[str]:
    return set(context)


async def test_the_call_sites_give_exactly_the_tables_variables(tmp_path: Path) -> None:
    auth = Auth(_settings(tmp_path))
    try:
        _check_call_sites(auth)
    finally:
        await auth.shutdown()


def _check_call_sites(auth: Auth) -> None:
    core = auth.core
    user = SimpleNamespace(username="alice", email="alice@example.com")
    for purpose in ("verify", "reset"):
        mail = email_tokens.link_mail(core, user, purpose, "tok")  # type: ignore[arg-type]
        assert (mail.template, _keys(mail.context)) == (purpose, set(EMAIL_TEMPLATES[purpose]))
    mfa_names = re.findall(r'_notice\(\w+, "(\w+)"\)', (SRC / "services/mfa.py").read_text())
    assert mfa_names
    for name in mfa_names:
        notice = mfa._notice(user, name)  # type: ignore[arg-type]
        assert notice is not None and _keys(notice.context) == set(EMAIL_TEMPLATES[name])
    for name in ("passkey_added", "passkey_removed"):
        notice = passkeys._notice(user, name, "laptop")  # type: ignore[arg-type]
        assert notice is not None and _keys(notice.context) == set(EMAIL_TEMPLATES[name])
    row = SimpleNamespace(
        created_at=dt.datetime.now(dt.UTC), user_agent="curl/8", ip_address="192.0.2.1"
    )
    alert = new_device._mail(core, user, row)  # type: ignore[arg-type]
    assert _keys(alert.context) == set(EMAIL_TEMPLATES[new_device.TEMPLATE])
    # email_changed's context is a dict literal in the service that builds it.
    tree = ast.parse((SRC / "services/accounts.py").read_text())
    [keys] = [
        {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "new_email" for k in node.value.keys)
    ]
    assert keys == set(EMAIL_TEMPLATES["email_changed"])
    assert "public_url" in COMMON_VARIABLES and "to" in COMMON_VARIABLES


# --- templates checked at start-up -----------------------------------------------------------


def _settings(tmp_path: Path, **values: Any) -> Settings:
    url = f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}"
    return Settings(_env_file=None, database_url=url, **values)  # type: ignore[call-arg]


async def test_an_unknown_variable_stops_startup_naming_file_line_and_variable(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "reset.txt").write_text("Hello {{ username }},\n\n{{ lnk }}\n")
    auth = Auth(_settings(tmp_path, templates_dir=str(folder)))
    try:
        with pytest.raises(TemplateProblem) as problem:
            await auth.startup()
    finally:
        await auth.shutdown()
    message = str(problem.value)
    assert f"{folder / 'reset.txt'}, line 3: 'lnk' is undefined" in message
    assert "link" in message  # the variables it does get
    assert not (tmp_path / "authdb.db").exists()  # checked before anything else


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("verify.html", "<p>{{ link }</p>", "verify.html, line 1: unexpected '}'"),
        ("verify.subject.txt", "{% if username %}Hi", "verify.subject.txt, line 1: Unexpected end"),
        ("pages/login.html", "{% block %}", "pages/login.html, line 1:"),
        ("_footer.html", "{{ 1 + }}", "_footer.html, line 1:"),
        ("email_changed.txt", "{{ new_email.nope }}", "email_changed.txt, line 1: 'str object'"),
        ("new_device.html", '{% include "_missing.html" %}', "_missing.html"),
    ],
)
def test_broken_overrides_are_found(tmp_path: Path, name: str, text: str, expected: str) -> None:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
    with pytest.raises(TemplateProblem, match=re.escape(expected)):
        check_templates(_settings(tmp_path, templates_dir=str(tmp_path)))


def test_good_overrides_and_partials_pass(tmp_path: Path) -> None:
    (tmp_path / "_sig.txt").write_text("-- {{ public_url }}\n")
    (tmp_path / "verify.txt").write_text(
        '{{ username }} {{ link }} {{ expires }} {{ to }}\n{% include "_sig.txt" %}'
    )
    (tmp_path / "notes.md").write_text("{{ not a template")  # not .txt/.html: ignored
    check_templates(_settings(tmp_path, templates_dir=str(tmp_path)))


def test_a_missing_templates_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match=r"AUTHDB_TEMPLATES_DIR .*is not an existing folder"):
        _settings(tmp_path, templates_dir=str(tmp_path / "nope"))
    gone = tmp_path / "gone"
    gone.mkdir()
    settings = _settings(tmp_path, templates_dir=str(gone))
    gone.rmdir()  # removed after the settings were read
    with pytest.raises(TemplateProblem, match=r"^AUTHDB_TEMPLATES_DIR: .*not an existing folder"):
        check_templates(settings)


def test_serve_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "verify.txt").write_text("{{ usrname }}\n")
    result = run_cli(
        ["serve", "--port", str(free_port())],
        env={
            "AUTHDB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}",
            "AUTHDB_TEMPLATES_DIR": str(tmp_path),
        },
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot start: template {tmp_path / 'verify.txt'}, line 1:")
    assert "'usrname' is undefined" in line
    assert not (tmp_path / "authdb.db").exists()


async def test_doctor_reports_a_broken_template(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "verify.txt").write_text("{{ usrname }}\n")
    (folder / "verfy.html").write_text("typo in the name\n")
    results = await examine(_settings(tmp_path, templates_dir=str(folder)))
    [found] = [r for r in results if r.name == "templates"]
    assert found.status == "error" and "'usrname' is undefined" in found.message
    (folder / "verify.txt").write_text("{{ link }}\n")
    results = await examine(_settings(tmp_path, templates_dir=str(folder)))
    [found] = [r for r in results if r.name == "templates"]
    assert found.status == "warn"
    assert "verfy.html in AUTHDB_TEMPLATES_DIR overrides none" in found.message


# --- SMTP over TLS against a real server ------------------------------------------------------


class Certificates:
    def __init__(self, folder: Path) -> None:
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authdb test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file = folder / "server.pem"
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file = folder / "server.key"
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture
def tls_server(certificates: Certificates) -> Iterator[tuple[int, Mailbox]]:
    """An SMTP server speaking TLS from the first byte (port 465 style)."""
    box = Mailbox()
    port = free_port()
    controller = Controller(
        _Handler(box), hostname="127.0.0.1", port=port, ssl_context=certificates.server_context()
    )
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(certificates: Certificates) -> Iterator[tuple[int, Mailbox]]:
    """An SMTP server that requires STARTTLS before mail."""
    box = Mailbox()
    port = free_port()
    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=port,
        server_kwargs={"tls_context": certificates.server_context(), "require_starttls": True},
    )
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


def _smtp_settings(port: int, **values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_seconds=5, **values
    )


async def test_implicit_tls_delivers_to_a_server_of_a_private_ca(
    tls_server: tuple[int, Mailbox], certificates: Certificates
) -> None:
    port, box = tls_server
    settings = _smtp_settings(port, smtp_tls="implicit", smtp_ca_file=str(certificates.ca_file))
    await Mailer(settings).send("alice@example.com", "verify", **CONTEXT)
    [message] = await box.wait_for(1)
    assert CONTEXT["link"] in plain(message)


async def test_starttls_with_a_private_ca(
    starttls_server: tuple[int, Mailbox], certificates: Certificates
) -> None:
    port, box = starttls_server
    settings = _smtp_settings(port, smtp_tls="starttls", smtp_ca_file=str(certificates.ca_file))
    await Mailer(settings).send("alice@example.com", "reset", **CONTEXT)
    [message] = await box.wait_for(1)
    assert message["Subject"] == "Reset your password"


async def test_an_untrusted_certificate_is_refused_not_ignored(
    tls_server: tuple[int, Mailbox], caplog: pytest.LogCaptureFixture
) -> None:
    port, box = tls_server
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await Mailer(_smtp_settings(port, smtp_tls="implicit")).send(
            "alice@example.com", "verify", **CONTEXT
        )
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate" in caplog.text.lower()
    assert "SECRET-TOKEN" not in caplog.text
    await asyncio.sleep(0.1)
    assert box.messages == []


async def test_doctor_speaks_the_same_tls(
    tls_server: tuple[int, Mailbox], certificates: Certificates, tmp_path: Path
) -> None:
    port, _ = tls_server
    url = f"sqlite+aiosqlite:///{tmp_path / 'authdb.db'}"
    good = _smtp_settings(
        port, smtp_tls="implicit", smtp_ca_file=str(certificates.ca_file), database_url=url
    )
    [smtp] = [r for r in await examine(good) if r.name == "smtp"]
    assert smtp.status == "ok" and smtp.message.endswith("answers (TLS, EHLO)")
    plain_text = _smtp_settings(port, smtp_tls="none", database_url=url)
    [smtp] = [r for r in await examine(plain_text) if r.name == "smtp"]
    assert smtp.status == "error"


def test_port_465_means_implicit_tls_unless_told_otherwise() -> None:
    assert _smtp_settings(465).smtp_tls_mode == "implicit"
    assert _smtp_settings(465, smtp_tls="none").smtp_tls_mode == "none"
    assert _smtp_settings(587, smtp_starttls=True).smtp_tls_mode == "starttls"
    assert _smtp_settings(25).smtp_tls_mode == "none"
    assert _smtp_settings(25, smtp_tls="STARTTLS").smtp_tls_mode == "starttls"


def test_only_stray_files_are_unused_overrides(tmp_path: Path) -> None:
    """A misspelt override is named; a complete set of an email's three parts is the app's own
    email (sent with ``auth.mailer.send``), and ``_`` files are its partials: neither is."""
    for name in ("verfy.txt", "welcome.subject.txt", "welcome.txt", "welcome.html", "_foot.html"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "promo.txt").write_text("x\n")  # no subject, no html: not an email of its own
    settings = Settings(templates_dir=str(tmp_path))
    assert unused_overrides(settings) == ["promo.txt", "verfy.txt"]


async def test_an_incomplete_email_of_the_apps_own_is_named_with_its_missing_part(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two of three parts: the start-up warning names all three, and a send says which
    template is missing (not just a file name)."""
    (tmp_path / "welcome.subject.txt").write_text("Welcome\n")
    (tmp_path / "welcome.txt").write_text("Hello {{ to }}\n")
    mailer = Mailer(Settings(templates_dir=str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="authdb.mail"):
        mailer.check_templates()
    assert "needs all of welcome.subject.txt, welcome.txt, welcome.html" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="authdb.mail"):
        await mailer.send("someone@example.com", "welcome")
    assert "could not render the 'welcome' email: no template welcome.html" in caplog.text
