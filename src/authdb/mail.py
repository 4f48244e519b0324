"""Outgoing email: rendered from templates, sent by the application's sender, by SMTP
(aiosmtplib) or, in development, logged.

Templates come in threes per message, e.g. ``verify.subject.txt``, ``verify.txt`` and
``verify.html``; a file of the same name in ``settings.templates_dir`` overrides the built-in one.
``check_templates`` renders them all at start-up, so a typo in an override stops the start
instead of dropping mails later.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from types import TracebackType
from typing import Protocol

import aiosmtplib
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)

from authdb.settings import Settings

log = logging.getLogger("authdb.mail")

# Context values that carry a secret; they are blanked out of any error text we log.
_SECRET_KEYS = ("link", "token")

# Every email authdb sends, with the variables its templates get besides COMMON_VARIABLES.
# check_templates renders each with exactly these; tests/test_mail_extension.py holds the
# call sites (the services building each Mail) to this table.
EMAIL_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "verify": ("username", "token", "link", "expires"),
    "reset": ("username", "token", "link", "expires"),
    "email_changed": ("username", "new_email"),
    "mfa_enabled": ("username",),
    "mfa_disabled": ("username",),
    "mfa_recovery_codes": ("username",),
    "mfa_reset": ("username",),
    "passkey_added": ("username", "passkey_name"),
    "passkey_removed": ("username", "passkey_name"),
    "new_device": ("username", "site_name", "time", "device", "ip_address", "account_url"),
}
# Variables every email template gets (see Mailer.render).
COMMON_VARIABLES = ("public_url", "to")
# The three files of one email: ``verify.subject.txt``, ``verify.txt``, ``verify.html``.
EMAIL_PARTS = ("subject.txt", "txt", "html")
# Files of a templates folder that are templates (not an editor's backup or .DS_Store).
_TEMPLATE_SUFFIXES = (".html", ".txt")


class TemplateProblem(RuntimeError):
    """A template that cannot be used: the message names the file, the line and the reason
    (``'usrname' is undefined``), or AUTHDB_TEMPLATES_DIR when the folder itself is missing."""


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


def check_templates(settings: Settings, templates: Environment | None = None) -> None:
    """Render every email template with its real variables, and compile every file in
    AUTHDB_TEMPLATES_DIR (page overrides included), under StrictUndefined.

    Raises TemplateProblem for a missing folder, a syntax error or an undefined variable.
    Page templates get different variables on each page, so only their syntax is checked.
    """
    folder = settings.templates_dir
    if folder is not None and not Path(folder).is_dir():
        raise TemplateProblem(f"AUTHDB_TEMPLATES_DIR: {folder!r} is not an existing folder")
    if folder is None and templates is None:
        _check_builtin_templates()  # once per process: they do not change
        return
    environment = templates or template_environment(folder)
    for name, keys in EMAIL_TEMPLATES.items():
        values = sample_context(settings, keys)
        for part in EMAIL_PARTS:
            _check(environment, f"{name}.{part}", values)
    if folder is not None:
        for name in FileSystemLoader(folder).list_templates():
            if name.endswith(_TEMPLATE_SUFFIXES) and not Path(name).name.startswith("."):
                _check(environment, name, None)


def unused_overrides(settings: Settings) -> list[str]:
    """Files in AUTHDB_TEMPLATES_DIR that override nothing (``verfy.txt``), so are never used.

    Files starting with ``_`` are taken for the application's own partials, and a complete set
    of one email's parts (``welcome.subject.txt``, ``welcome.txt``, ``welcome.html``) for the
    application's own email, which it sends with ``auth.mailer.send(to, "welcome", ...)``.
    """
    folder = settings.templates_dir
    if folder is None or not Path(folder).is_dir():
        return []
    ours = set(template_environment().list_templates())
    names = set(FileSystemLoader(folder).list_templates())
    return sorted(
        name
        for name in names
        if name.endswith(_TEMPLATE_SUFFIXES)
        and name not in ours
        and not Path(name).name.startswith(("_", "."))
        and not _complete_email(name, names)
    )


def _email_stem(name: str) -> str | None:
    """``welcome`` for ``welcome.subject.txt``, ``welcome.txt`` or ``welcome.html``."""
    for part in EMAIL_PARTS:
        if name.endswith(f".{part}"):
            return name.removesuffix(f".{part}")
    return None


def _complete_email(name: str, names: set[str]) -> bool:
    """Whether ``name`` is one part of an email whose every part is in ``names``."""
    stem = _email_stem(name)
    return stem is not None and all(f"{stem}.{part}" in names for part in EMAIL_PARTS)


def sample_context(settings: Settings, keys: tuple[str, ...]) -> dict[str, object]:
    """Stand-in values for one email's variables, as check_templates renders it."""
    values: dict[str, object] = {key: f"sample-{key}" for key in keys}
    values.update(public_url=settings.public_url, to="someone@example.com")
    return values


_builtin_checked = False


def _check_builtin_templates() -> None:
    global _builtin_checked
    if _builtin_checked:
        return
    environment = template_environment()
    for name, keys in EMAIL_TEMPLATES.items():
        values = sample_context(Settings.model_construct(), keys)
        for part in EMAIL_PARTS:
            _check(environment, f"{name}.{part}", values)
    _builtin_checked = True


def _check(environment: Environment, name: str, values: dict[str, object] | None) -> None:
    """Compile ``name`` and, given ``values``, render it; TemplateProblem on any failure."""
    filename = name
    try:
        template = environment.get_template(name)
        filename = template.filename or name
        if values is not None:
            template.render(values)
    except TemplateSyntaxError as exc:
        where = exc.filename or filename
        raise TemplateProblem(f"template {where}, line {exc.lineno}: {exc.message}") from None
    except Exception as exc:  # undefined variables, missing includes, a filter's TypeError
        where, line = _template_frame(exc.__traceback__, filename)
        at = f", line {line}" if line else ""
        reason = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
        known = ""
        if values is not None:
            known = f" (it gets {', '.join(sorted(values))})"
        raise TemplateProblem(f"template {where}{at}: {reason}{known}") from None


def _template_frame(tb: TracebackType | None, default: str) -> tuple[str, int | None]:
    """The template file and line a render failed in: Jinja rewrites the traceback so that
    template code shows as frames of the template file (the innermost one is the culprit)."""
    found: tuple[str, int | None] = (default, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(_TEMPLATE_SUFFIXES):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


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
        # A private CA for the SMTP server (AUTHDB_SMTP_CA_FILE); None: the system's CAs.
        self.tls_context = smtp_tls_context(settings)

    def check_templates(self) -> None:
        """``check_templates`` on this mailer's templates (compiled once, then reused)."""
        if self.settings.templates_dir is None:
            check_templates(self.settings)
            return
        check_templates(self.settings, self.templates)
        for name in unused_overrides(self.settings):
            stem = _email_stem(name)
            if stem is None or "/" in name:  # pages/...: a page template, not an email
                log.warning(
                    "AUTHDB_TEMPLATES_DIR: %s overrides none of authdb's templates, so is never "
                    "used",
                    name,
                )
            else:  # one part of an email of the app's own: the others are missing
                parts = ", ".join(f"{stem}.{part}" for part in EMAIL_PARTS)
                log.warning(
                    "AUTHDB_TEMPLATES_DIR: %s overrides none of authdb's templates (a typo?); an "
                    "email of your own (auth.mailer.send) needs all of %s",
                    name,
                    parts,
                )

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
        """Render and deliver one email: to the application's sender if it gave one, else by
        SMTP, else (no ``smtp_host``) to the log.

        Never raises: callers run this after their response, and a mail problem must neither
        turn into a 500 nor tell a client whether an account exists.
        """
        secrets = [str(context[key]) for key in _SECRET_KEYS if context.get(key)]
        try:
            message = self.render(to, template, **context)
        except Exception as exc:
            reason = f"no template {exc.name}" if isinstance(exc, TemplateNotFound) else str(exc)
            log.error("could not render the %r email: %s", template, _redact(reason, secrets))
            return
        if self.sender is None and not self.settings.smtp_host:
            self._log_instead(message)
            return
        try:
            if self.sender is not None:
                await self.sender.send(message)
            else:
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

    @property
    def logs_instead(self) -> bool:
        """True when mails go to the log (no sender given, AUTHDB_SMTP_HOST unset)."""
        return self.sender is None and not self.settings.smtp_host

    async def _deliver(self, message: EmailMessage) -> None:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        mode = settings.smtp_tls_mode
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password,
            # Explicit, not aiosmtplib's "upgrade if offered": the operator decides.
            use_tls=mode == "implicit",
            start_tls=mode == "starttls",
            tls_context=self.tls_context,
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


def smtp_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying TLS context trusting AUTHDB_SMTP_CA_FILE, or None for aiosmtplib's
    default (the system's CAs, certificate and host name verified). Verification is never
    turned off: a private CA is trusted by naming it."""
    if settings.smtp_ca_file is None:
        return None
    return ssl.create_default_context(cafile=settings.smtp_ca_file)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text
