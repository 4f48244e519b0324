"""New-device alerts after a sign-in (``AUTHDB_NEW_DEVICE_ALERTS``), for every sign-in route.

The check and its email run as a background task once the response has gone out: a sign-in
never waits for them, and never fails because of them. With the setting off nothing is queued
and nothing is queried.
"""

from __future__ import annotations

import logging

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.responses import Response

from authdb.errors import TooManyRequests
from authdb.http.dependencies import AuthDeps
from authdb.mail import Mailer
from authdb.ratelimit import RateLimits
from authdb.services import new_device
from authdb.services.core import Core

log = logging.getLogger("authdb.accounts")


def check_later(background: BackgroundTasks, deps: AuthDeps, session_id: int) -> None:
    """Queue the new-device check of the sign-in that opened ``session_id``, if alerts are on."""
    if deps.core.settings.new_device_alerts:
        background.add_task(_check_and_send, deps.core, deps.limits, deps.mailer, session_id)


def checked_later(response: Response, deps: AuthDeps, session_id: int) -> Response:
    """``response``, with the new-device check of ``session_id`` queued after it (pages)."""
    if deps.core.settings.new_device_alerts:
        tasks = BackgroundTasks()
        if isinstance(response.background, BackgroundTask):
            tasks.add_task(response.background)  # keep what the response already had to do
        check_later(tasks, deps, session_id)
        response.background = tasks
    return response


async def _check_and_send(core: Core, limits: RateLimits, mailer: Mailer, session_id: int) -> None:
    # After the answer has gone out a failure can only be logged.
    try:
        mail = await new_device.alert_for(core, session_id)
        if mail is None:
            return
        await limits.hit("new_device_alert", mail.to.lower())
    except TooManyRequests:
        log.warning("new-device alerts for an account are over AUTHDB_RATE_LIMIT_EMAIL_REQUESTS")
        return
    except Exception:
        log.exception("could not check a sign-in for a new device")
        return
    await mailer.send(mail.to, mail.template, **mail.context)
