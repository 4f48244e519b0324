"""Outgoing email: rendered from templates, sent by SMTP (aiosmtplib) or, in development, logged.

Templates come in threes per message, e.g. ``verify.subject.txt``, ``verify.txt`` and
``verify.html``; a file of the same name in ``settings.templates_dir`` overrides the built-in one.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol

import aiosmtplib
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from authdb.settings import Settings

log = logging.getLogger("authdb.mail")

# Context values that carry a secret; they are blanked out of any error text we log.
_SECRET_KEYS = ("link", "token")


def template_environment(templates_dir: str | None = None) -> Environment:
    """Jinja2 templates: the application's folder first, then authdb's own.

    HTML is autoescaped (a username like ``<b>`` stays text); plain text is not, since it is
    never interpreted. Undefined names fail loudly so that a typo in an override is noticed.
    """
    loaders: list[FileSystemLoader | PackageLoader] = [PackageLoader("authdb", "templates")]
    if templates_dir:
        loaders.insert(0, FileSystemLoader(templates_dir))
    return Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


class EmailSender(Protocol):
    """Delivers rendered messages: ``Auth(..., email_sender=...)`` replaces SMTP with it.

    ``send`` may raise; authdb logs the failure (without the message, which holds a live
    token) and carries on.
    """

    async def send(self, message: EmailMessage) -> None: ...


class Mailer:
    """Renders a template and sends it; failures are logged, never raised to the caller."""

    def __init__(self, settings: Settings, *, sender: EmailSender | None = None) -> None:
        self.settings = settings
        # The application's sender, if it gave one; otherwise SMTP or the log (see send).
        self.sender = sender
        self.templates = template_environment(settings.templates_dir)

    def render(self, to: str, template: str, **context: object) -> EmailMessage:
        """Build the multipart/alternative message (text/plain, then text/html) for ``to``."""
        values = {"public_url": self.settings.public_url, "to": to, **context}
        subject = self.templates.get_template(f"{template}.subject.txt").render(values)
        text = self.templates.get_template(f"{template}.txt").render(values)
        html = self.templates.get_template(f"{template}.html").render(values)
        message = EmailMessage()
        # Collapsing whitespace keeps a template's stray newline from breaking the header.
        message["Subject"] = " ".join(subject.split())
        message["From"] = self.settings.mail_from
        message["To"] = to
        message["Date"] = formatdate(usegmt=True)
        # An explicit domain: make_msgid's default asks DNS for our FQDN, which can stall.
        domain = parseaddr(self.settings.mail_from)[1].rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid(domain=domain)
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message

    async def send(self, to: str, template: str, **context: object) -> None:
        """Render and deliver one email; without ``smtp_host`` it is written to the log.

        Never raises: callers run this after their response, and a mail problem must neither
        turn into a 500 nor tell a client whether an account exists.
        """
        secrets = [str(context[key]) for key in _SECRET_KEYS if context.get(key)]
        try:
            message = self.render(to, template, **context)
        except Exception as exc:
            log.error("could not render the %r email: %s", template, _redact(str(exc), secrets))
            return
        if not self.settings.smtp_host:
            self._log_instead(message)
            return
        try:
            await self._deliver(message)
        except Exception as exc:
            # Name the failure, never the message: its body holds a live token.
            log.error(
                "could not send the %r email to %s: %s: %s",
                template,
                to,
                type(exc).__name__,
                _redact(str(exc), secrets),
            )
        else:
            log.info("sent the %r email to %s", template, to)

    async def _deliver(self, message: EmailMessage) -> None:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password,
            # Explicit, not aiosmtplib's "upgrade if offered": the operator decides.
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
        )

    @staticmethod
    def _log_instead(message: EmailMessage) -> None:
        # Development mode (the spec's "printed to the log"): WARNING, so that it shows even
        # where only Python's last-resort handler is listening (a library app under uvicorn).
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        log.warning(
            "AUTHDB_SMTP_HOST is not set, so this email was not sent:\nTo: %s\nSubject: %s\n\n%s",
            message["To"],
            message["Subject"],
            text.rstrip(),
            # authdb's text log lines escape line breaks; this message keeps them, so that a
            # developer can read it and click its link (JSON logs still get one line).
            extra={"authdb_verbatim": True},
        )


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text
