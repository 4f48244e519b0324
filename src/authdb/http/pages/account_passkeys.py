"""The "Passkeys" section of ``/account``: the list, and removing one with the password.

Adding a passkey needs the browser's WebAuthn API, so the page's script does it through the
API (``POST /users/me/passkeys/options`` then ``POST /users/me/passkeys``, with the session
cookie and the CSRF header); removing one is a plain form.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.background import BackgroundTasks
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.db.models import Passkey
from authdb.http.dependencies import AuthDeps
from authdb.http.mailing import send_later
from authdb.http.pages.forms import REQUIRED, Refusal, Section, parse, refusal
from authdb.http.pages.render import Pages, text
from authdb.http.params import id_parser
from authdb.http.schemas import PasswordConfirm
from authdb.services import passkeys
from authdb.services.sessions import Authenticated

FORM = "passkeys"
# The API's own reading of a passkey id (canonical digits, 1..2**63-1).
_passkey_id = id_parser("passkey")


def _when(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else None


def passkey_view(passkey: Passkey) -> dict[str, Any]:
    """What the list shows of a passkey."""
    return {
        "id": passkey.id,
        "name": passkey.name,
        "created": _when(passkey.created_at),
        "last_used": _when(passkey.last_used_at),
    }


def removing(request: Request) -> int | None:
    """The passkey whose remove form was posted (its errors show next to it)."""
    try:
        return _passkey_id(request.path_params.get("passkey_id", ""))
    except (ValueError, errors.NotFound):
        return None


def sections(deps: AuthDeps, pages: Pages) -> list[tuple[str, str, str, Section]]:
    """The section's forms as (path, route name, form name, handler) for ``/account``."""
    core = deps.core

    async def remove(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        passkey_id = removing(request)
        if passkey_id is None:
            raise Refusal(404, {}, passkeys.NOT_FOUND)
        body, problems = parse(PasswordConfirm, {"password": text(form, "password")})
        if body is None or not body.password:
            raise Refusal(422, problems or {"password": REQUIRED})
        try:
            notice = await passkeys.remove(
                core,
                deps.limits,
                auth.user,
                passkey_id,
                body.password,
                deps.client_resolver(request),
            )
        except errors.NotFound as exc:
            raise Refusal(404, {}, exc.detail) from None
        except errors.AuthError as exc:
            raise refusal(exc, "password", password_field="password") from None
        response = pages.redirect(pages.url(request, "account") + "?notice=passkey_removed")
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [notice])
        return response

    return [
        (
            "/account/passkeys/{passkey_id}/delete",
            "authdb_page_account_passkey_delete",
            FORM,
            remove,
        )
    ]
