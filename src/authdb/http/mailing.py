"""Mail sent after the response: shared by the API's account routes and the pages.

Emails are handed to background tasks, which run after the response has gone out: a slow or
broken mail server neither delays nor fails the request. Requests that must not tell whether an
address has an account (forgot password, resend verification) look the address up in the
background too, so that their answer, and the time it takes, is the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from starlette.background import BackgroundTasks

from authdb.mail import Mailer
from authdb.services.core import ClientInfo, Core
from authdb.services.email_tokens import Mail

log = logging.getLogger("authdb.accounts")

# request_verification or request_password_reset: the mail to send, if any.
Prepare = Callable[[Core, str, ClientInfo], Awaitable[Mail | None]]


def send_later(background: BackgroundTasks, mailer: Mailer, mails: Iterable[Mail | None]) -> None:
    """Send ``mails`` (None entries skipped) once the response has gone out."""
    for mail in mails:
        if mail is not None:
            background.add_task(mailer.send, mail.to, mail.template, **mail.context)


async def prepare_and_send(
    core: Core, mailer: Mailer, prepare: Prepare, email: str, client: ClientInfo
) -> None:
    """Run ``prepare`` for ``email`` and send what it returns; for a background task."""
    # Runs after the answer has gone out, so a failure can only be logged.
    try:
        mail = await prepare(core, email, client)
    except Exception:
        log.exception("could not prepare the email for a %s request", prepare.__name__)
        return
    if mail is not None:
        await mailer.send(mail.to, mail.template, **mail.context)
