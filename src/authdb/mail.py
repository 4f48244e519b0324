"""Outgoing email: SMTP through aiosmtplib, or the log in development."""

from __future__ import annotations

import logging

from authdb.settings import Settings

log = logging.getLogger("authdb.mail")


class Mailer:
    """Renders a template and sends it; failures are logged, never raised to the caller."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, to: str, template: str, **context: object) -> None:
        raise NotImplementedError
