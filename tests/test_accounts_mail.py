"""The mailer on its own: templates, overrides, escaping, delivery and failures that stay quiet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from authdb import Settings
from authdb import mail as mail_module
from authdb.mail import Mailer
from tests.conftest import Mailbox, free_port

LINK = "http://auth.example.test/verify?token=SECRET-TOKEN-123"
CONTEXT: dict[str, Any] = {
    "username": "alice",
    "token": "SECRET-TOKEN-123",
    "link": LINK,
    "expires": "24 hours",
}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_url": "http://auth.example.test",
        "mail_from": "authdb <auth@example.com>",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_messages_are_multipart_alternative_text_then_html() -> None:
    message = Mailer(settings()).render("alice@example.com", "verify", **CONTEXT)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["To"] == "alice@example.com"
    assert message["From"] == "authdb <auth@example.com>"
    assert message["Subject"] == "Confirm your email address"
    assert message["Message-ID"].endswith("@example.com>")
    text = message.get_body(("plain",))
    assert text is not None and LINK in text.get_content()
    assert "24 hours" in text.get_content()


@pytest.mark.parametrize("template", ["verify", "reset", "email_changed"])
def test_every_builtin_template_renders(template: str) -> None:
    message = Mailer(settings()).render(
        "alice@example.com", template, new_email="alice@new.example", **CONTEXT
    )
    assert message["Subject"]
    html = message.get_body(("html",))
    assert html is not None and "<html" in html.get_content()


def test_html_is_autoescaped_and_text_is_not() -> None:
    context = {**CONTEXT, "username": "<script>x</script> & co"}
    message = Mailer(settings()).render("alice@example.com", "verify", **context)
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    assert "<script>" not in html.get_content()
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in html.get_content()
    assert "<script>x</script> & co" in text.get_content()


def test_templates_dir_overrides_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "verify.subject.txt").write_text("Welcome to Example, {{ username }}\n")
    (tmp_path / "verify.txt").write_text("Click {{ link }} (from {{ public_url }})\n")
    message = Mailer(settings(templates_dir=str(tmp_path))).render(
        "alice@example.com", "verify", **CONTEXT
    )
    assert message["Subject"] == "Welcome to Example, alice"
    text = message.get_body(("plain",))
    assert text is not None
    assert text.get_content().strip() == f"Click {LINK} (from http://auth.example.test)"
    html = message.get_body(("html",))  # not overridden: the built-in one
    assert html is not None and "Confirm email address" in html.get_content()


async def test_send_delivers_through_smtp(smtp_server: tuple[int, Mailbox]) -> None:
    port, mailbox = smtp_server
    await Mailer(settings(smtp_host="127.0.0.1", smtp_port=port)).send(
        "alice@example.com", "reset", **CONTEXT
    )
    [message] = await mailbox.wait_for(1)
    assert message["Subject"] == "Reset your password"
    text = message.get_body(("plain",))
    assert text is not None and LINK in text.get_content()


async def test_without_smtp_host_the_message_is_logged_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await Mailer(settings()).send("alice@example.com", "verify", **CONTEXT)
    [record] = [r for r in caplog.records if r.name == "authdb.mail"]
    # WARNING: Python's last-resort handler shows it even where nobody configured logging.
    assert record.levelno == logging.WARNING
    assert LINK in record.getMessage()
    assert "alice@example.com" in record.getMessage()


async def test_unreachable_server_is_logged_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mailer = Mailer(settings(smtp_host="127.0.0.1", smtp_port=free_port()))
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await mailer.send("alice@example.com", "verify", **CONTEXT)  # does not raise
    [record] = [r for r in caplog.records if r.name == "authdb.mail"]
    assert record.levelno == logging.ERROR
    assert "alice@example.com" in record.getMessage()
    assert "SECRET-TOKEN" not in record.getMessage()


async def test_a_server_error_echoing_the_token_is_redacted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(message: Any, **kwargs: Any) -> None:
        text = message.get_body(("plain",)).get_content()
        assert LINK in text
        raise mail_module.aiosmtplib.SMTPDataError(554, f"rejected: {text}")

    monkeypatch.setattr(mail_module.aiosmtplib, "send", refuse)
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await Mailer(settings(smtp_host="127.0.0.1")).send("alice@example.com", "verify", **CONTEXT)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SMTPDataError" in logged
    assert "SECRET-TOKEN" not in logged


async def test_smtp_settings_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def capture(message: Any, **kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(mail_module.aiosmtplib, "send", capture)
    mailer = Mailer(
        settings(
            smtp_host="smtp.example.test",
            smtp_port=587,
            smtp_username="mailer",
            smtp_password="hunter2-but-longer",
            smtp_starttls=True,
            smtp_timeout_seconds=3.5,
        )
    )
    await mailer.send("alice@example.com", "verify", **CONTEXT)
    assert seen == {
        "hostname": "smtp.example.test",
        "port": 587,
        "username": "mailer",
        "password": "hunter2-but-longer",
        "use_tls": False,
        "start_tls": True,
        "tls_context": None,  # aiosmtplib's own: the system's CAs, verified
        "timeout": 3.5,
    }


async def test_a_broken_override_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "verify.txt").write_text("Hello {{ no_such_variable }}\n")
    with caplog.at_level(logging.INFO, logger="authdb.mail"):
        await Mailer(settings(templates_dir=str(tmp_path))).send(
            "alice@example.com", "verify", **CONTEXT
        )
    [record] = [r for r in caplog.records if r.name == "authdb.mail"]
    assert record.levelno == logging.ERROR
    assert "no_such_variable" in record.getMessage()
