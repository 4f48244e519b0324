"""Sign-in with another provider, for browsers: ``GET /oauth/{provider}/authorize`` sends the
browser to the provider, ``GET /oauth/{provider}/callback`` brings it back signed in; the
``/account`` section links and unlinks providers (SPEC, "Sign in with another provider").

Every failure lands on a page that says what happened in words (declined, expired, tampered
with, provider down): 400, 404 for an unknown provider, 409 for an identity that may not
sign in here as it is, 502 when the provider failed. Never a 500.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.background import BackgroundTasks
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from authdb import errors
from authdb.db.models import User
from authdb.http.dependencies import AuthDeps
from authdb.http.errors import retry_after
from authdb.http.mailing import send_later
from authdb.http.pages import oauth_state
from authdb.http.pages.forms import REQUIRED, Refusal, Section, refusal, waiting_message
from authdb.http.pages.oauth_state import Flow
from authdb.http.pages.render import Pages, PageState, text
from authdb.http.pages.signin import (
    login_form,
    refused_account,
    safe_landing,
    signed_in,
    to_second_factor,
)
from authdb.http.signin_alerts import checked_later
from authdb.links import url as public_url_of
from authdb.oauth import CLIENT_REFUSED, Identity, ProviderDenied, ProviderFailed, error_code
from authdb.passwords import is_usable
from authdb.ratelimit import client_key
from authdb.sealing import Sealer
from authdb.services import audit, oauth_accounts, passkey_challenges
from authdb.services.core import ClientInfo, Core
from authdb.services.guard import confirm_password, spend_failure
from authdb.services.oauth_accounts import NewAccountUnverified
from authdb.services.sessions import Authenticated, start_browser_session
from authdb.settings_oauth import variable

if TYPE_CHECKING:
    from authdb.oauth.providers import Provider

log = logging.getLogger("authdb.oauth")

AUTHORIZE_ROUTE = "authdb_page_oauth_authorize"
CALLBACK_ROUTE = "authdb_page_oauth_callback"
FORM = "oauth"
# The page's words for each way a callback fails before the provider is asked anything.
STALE = (
    "This sign-in could not be completed: it expired, was already used, or was started in "
    "another browser. Please start again."
)


class OAuthPages:
    """The configured providers and the page plumbing they share."""

    def __init__(self, deps: AuthDeps, pages: Pages) -> None:
        self.deps, self.pages = deps, pages
        self.core: Core = deps.core
        # The client speaks HTTP (the oauth extra, which Auth() checked): imported only here,
        # so that a deployment without providers runs without the extra.
        from authdb.oauth.providers import Provider

        self.providers = {
            name: Provider(config) for name, config in self.core.settings.oauth.items()
        }
        pages.add_form_targets(self._origins)

    def _origins(self) -> list[str]:
        return [origin for p in self.providers.values() for origin in p.origins]

    def buttons(self, request: Request, next_: str) -> list[dict[str, str]]:
        """``{label, href}`` of each provider's sign-in link, ``next`` passed along."""
        query = f"?{urlencode({'next': next_})}" if next_ else ""
        return [
            {"name": p.name, "label": p.label, "href": self.authorize_path(request, p.name) + query}
            for p in self.providers.values()
        ]

    def authorize_path(self, request: Request, name: str) -> str:
        return self.pages.route_path(request, AUTHORIZE_ROUTE, provider=name)

    def redirect_uri(self, request: Request, name: str) -> str:
        """The callback's absolute URL on PUBLIC_URL: what the provider must have registered."""
        path = self.pages.route_path(request, CALLBACK_ROUTE, provider=name)
        return public_url_of(self.core.settings.public_url, path)

    def provider(self, name: str) -> Provider:
        found = self.providers.get(name)
        if found is None:
            raise errors.NotFound("No such sign-in provider.")
        return found

    async def start(
        self, request: Request, state: PageState, name: str, next_: str, link_user: int | None
    ) -> Response:
        """The redirect to the provider, with the flow's cookie."""
        provider = self.provider(name)
        flow = Flow.start(
            name,
            self.redirect_uri(request, name),
            self.core.clock(),
            next_=safe_landing(self.pages, next_) or "",
            link_user=link_user,
        )
        try:
            target = await provider.authorization_url(flow, flow.redirect_uri)
        except ProviderFailed as exc:
            log.warning(
                "sign-in with %s could not start: %s (check %s; `authdb doctor` tells more)",
                name,
                exc,
                variable(name, "issuer" if provider.settings.issuer else "github_url"),
            )
            linking = link_user is not None
            return self.failure(
                request, state, provider, "unreachable", status=502, linking=linking
            )
        response = self.pages.redirect(target, state)
        oauth_state.set_cookie(response, self.core.settings, flow.seal(self.sealer))
        return response

    @property
    def sealer(self) -> Sealer:
        """The sealer of flow cookies, under the deployment secret."""
        return self.core.sealer(oauth_state.SEAL_PURPOSE)

    def failure(
        self,
        request: Request,
        state: PageState,
        provider: Provider | None,
        why: str,
        *,
        status: int = 400,
        clear: bool = True,
        linking: bool = False,
    ) -> Response:
        """The error page for a failed flow (its cookie cleared unless ``clear`` is off);
        ``linking``: the flow was linking a signed-in account, which the page goes back to."""
        label = provider.label if provider else "the provider"
        goal = "link your account" if linking else "sign you in here"
        messages = {
            "stale": STALE,
            "denied": f"You did not allow {label} to {goal}. Nothing has changed.",
            "refused": f"{label} did not confirm it was you. Please start again.",
            "unreachable": f"{label} could not be reached or answered in a way we could not "
            "trust. Please try again later.",
            "signed_out": "You were signed out before the provider answered, so nothing was "
            "linked. Sign in and try again.",
        }
        back = "account" if linking else "login"
        response = _page(self.pages, request, state, status, messages[why], back=back)
        if clear:
            oauth_state.clear_cookie(response, self.core.settings)
        return response


def add_routes(router: APIRouter, deps: AuthDeps, oauth: OAuthPages) -> None:
    """``/oauth/{provider}/authorize`` and ``/oauth/{provider}/callback`` on ``router``."""
    pages, core = oauth.pages, oauth.core

    @router.get("/oauth/{provider}/authorize", name=AUTHORIZE_ROUTE)
    async def authorize(request: Request, provider: str) -> Response:
        state = pages.state(request)
        next_ = request.query_params.get("next", "")[:2048]
        return await oauth.start(request, state, provider, next_, None)

    @router.get("/oauth/{provider}/callback", name=CALLBACK_ROUTE)
    async def callback(request: Request, provider: str) -> Response:
        state = pages.state(request)
        chosen = oauth.provider(provider)
        client = deps.client_resolver(request)
        # A callback costs a database write and calls to the provider: under the same failure
        # budget as a password, so that forged callbacks cannot be sent without end.
        try:
            async with deps.limits.attempt("login_failures", client_key(client, core.settings)):
                response = await _callback(deps, oauth, request, state, chosen, client)
        except errors.TooManyRequests as exc:
            return _waiting(pages, request, state, exc, "")
        return response


async def _callback(
    deps: AuthDeps,
    oauth: OAuthPages,
    request: Request,
    state: PageState,
    chosen: Provider,
    client: ClientInfo,
) -> Response:
    core, name = oauth.core, chosen.name
    flow, problem = await _flow_of(core, oauth, request, name)
    if flow is None:
        await _failed(deps, name, problem, client, spend=True)
        # A wrong state may be an attacker's, a cookie another provider's flow: the browser's
        # own flow stays usable. Only a spent flow's cookie is of no more use.
        return oauth.failure(request, state, chosen, "stale", clear=problem == "replayed")
    linking = flow.link_user is not None
    error = request.query_params.get("error")
    code = request.query_params.get("code")
    if error or not code:
        said = error_code(error) if error else "no code"
        # Declining costs a failure too: each callback writes the trail.
        await _failed(deps, name, f"provider said {said}", client, spend=True)
        why = "denied" if error else "refused"
        return oauth.failure(request, state, chosen, why, linking=linking)
    try:
        identity = await chosen.identity(flow, code[:4096], flow.redirect_uri)
    except ProviderDenied as exc:
        if exc.error in CLIENT_REFUSED:  # the deployment's fault, not the person's
            log.warning(
                "sign-in with %s: the provider refused the client (%s): check %s and %s",
                name,
                exc.error,
                variable(name, "client_id"),
                variable(name, "client_secret"),
            )
            await _failed(deps, name, str(exc), client, spend=False)
            return oauth.failure(request, state, chosen, "unreachable", status=502, linking=linking)
        await _failed(deps, name, str(exc), client, spend=True)
        return oauth.failure(request, state, chosen, "refused", linking=linking)
    except ProviderFailed as exc:
        log.warning("sign-in with %s failed: %s (`authdb doctor` checks the provider)", name, exc)
        await _failed(deps, name, str(exc), client, spend=False)
        return oauth.failure(request, state, chosen, "unreachable", status=502, linking=linking)
    if linking:
        response = await _finish_link(deps, oauth, request, state, flow, identity)
    else:
        response = await _finish_sign_in(deps, oauth, request, state, flow, identity)
    oauth_state.clear_cookie(response, core.settings)
    return response


async def _flow_of(
    core: Core, oauth: OAuthPages, request: Request, provider: str
) -> tuple[Flow | None, str]:
    """The browser's flow for this callback, spent; or None and why not ("cookie", "state",
    "replayed")."""
    value = oauth_state.read(request, core.settings)
    now = core.clock()
    flow = Flow.open(oauth.sealer, value, provider, now) if value else None
    if flow is None:
        return None, "cookie"
    presented = request.query_params.get("state", "")
    if not hmac.compare_digest(presented.encode(), flow.state.encode()):
        return None, "state"
    expires = datetime.fromtimestamp(flow.expires_at, tz=now.tzinfo)
    if not await passkey_challenges.spend(core, b"oauth-state:" + flow.state.encode(), expires):
        return None, "replayed"
    return flow, ""


async def _failed(
    deps: AuthDeps, provider: str, reason: str, client: ClientInfo, *, spend: bool
) -> None:
    """Audit a failed callback; ``spend`` one failure of the client's budget (a forged or
    replayed callback: not the person declining, nor the provider being down)."""
    core = deps.core
    async with core.sessionmaker.begin() as db:
        audit.record(
            db, "oauth_failed", client=client, now=core.clock(), provider=provider, reason=reason
        )
    if spend:
        await spend_failure(core, deps.limits, client)


async def _finish_sign_in(
    deps: AuthDeps,
    oauth: OAuthPages,
    request: Request,
    state: PageState,
    flow: Flow,
    identity: Identity,
) -> Response:
    pages, core = oauth.pages, oauth.core
    label = oauth.provider(flow.provider).label
    client = deps.client_resolver(request)
    try:
        result = await oauth_accounts.sign_in(
            core, deps.limits, identity, client, start_browser_session
        )
    except errors.MFARequired as exc:
        return to_second_factor(pages, request, state, exc.mfa_token, flow.next)
    except errors.TooManyRequests as exc:
        return _waiting(pages, request, state, exc, flow.next)
    except (errors.InactiveUser, errors.EmailNotVerified) as exc:
        response = refused_account(pages, request, state, exc, next=flow.next)
        if isinstance(exc, NewAccountUnverified):
            response.background = BackgroundTasks()
            send_later(response.background, deps.mailer, [exc.mail])
        return response
    except errors.OAuthAccountExists:
        message = (
            f"An account with the email address {label} gave us already exists. Sign in to it "
            f"here, then link {label} from your account page."
        )
        return login_form(pages, request, state, status=409, error=message, next=flow.next)
    except errors.RegistrationClosed:
        return _page(
            pages,
            request,
            state,
            403,
            f"No account here is linked to that {label} account, and registration is closed.",
        )
    except errors.OAuthEmailMissing:
        return _page(
            pages,
            request,
            state,
            400,
            f"{label} did not share your email address, "
            "which an account here needs. Allow it there, or register with a password.",
        )
    except (errors.Conflict, errors.InvalidInput) as exc:
        return _page(
            pages, request, state, 409 if isinstance(exc, errors.Conflict) else 422, exc.detail
        )
    response = await signed_in(core, pages, request, result.session, flow.next)
    if result.mail is not None:
        response.background = BackgroundTasks()
        send_later(response.background, deps.mailer, [result.mail])
    return checked_later(response, deps, result.session.session_id)


async def _finish_link(
    deps: AuthDeps,
    oauth: OAuthPages,
    request: Request,
    state: PageState,
    flow: Flow,
    identity: Identity,
) -> Response:
    pages = oauth.pages
    auth = await deps.optional_session(request)
    if auth is None or auth.user.id != flow.link_user:
        provider = oauth.provider(flow.provider)
        return oauth.failure(request, state, provider, "signed_out", linking=True)
    try:
        await oauth_accounts.link(oauth.core, auth.user.id, identity, deps.client_resolver(request))
    except (errors.Conflict, errors.NotFound) as exc:
        return _page(pages, request, state, 409, exc.detail, back="account")
    return pages.redirect(pages.url(request, "account") + "?notice=oauth_linked", state)


def _waiting(
    pages: Pages, request: Request, state: PageState, exc: errors.TooManyRequests, next_: str
) -> Response:
    """The sign-in page, 429, saying how long to wait."""
    return login_form(
        pages,
        request,
        state,
        status=429,
        error=waiting_message(exc),
        headers=retry_after(exc),
        next=next_,
    )


def _page(
    pages: Pages,
    request: Request,
    state: PageState,
    status: int,
    message: str,
    *,
    back: str = "login",
) -> Response:
    text = "Back to your account" if back == "account" else "Back to sign in"
    return pages.render(
        request,
        state,
        "error",
        title="Sign-in failed" if back == "login" else "Not linked",
        status=status,
        error=message,
        link={"href": pages.url(request, back), "text": text},
    )


# --- the /account section ------------------------------------------------------------------


async def account_view(oauth: OAuthPages, request: Request, user: User) -> dict[str, Any]:
    """What ``/account`` shows: each provider (linked or not) and whether the account has a
    password."""
    linked = {row.provider: row for row in await oauth_accounts.linked(oauth.core, user.id)}
    base = oauth.pages.url(request, "account_oauth")
    shown = []
    for provider in oauth.providers.values():
        row = linked.get(provider.name)
        shown.append(
            {
                "name": provider.name,
                "label": provider.label,
                "linked": row is not None,
                "email": row.email if row else None,
                "action": f"{base}/{provider.name}/{'unlink' if row else 'link'}",
            }
        )
    return {
        "providers": shown,
        "has_password": is_usable(user.hashed_password),
        # The provider whose form was posted (its field carries the error), if any.
        "posted": request.path_params.get("provider"),
    }


def sections(deps: AuthDeps, oauth: OAuthPages) -> list[tuple[str, str, str, Section]]:
    """The section's forms as (path, route name, form name, handler) for ``/account``."""

    async def link(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        name = str(request.path_params.get("provider", ""))
        if name not in oauth.providers:
            raise Refusal(404, {}, "No such sign-in provider.")
        # A new way in, as a passkey is: confirmed with the password, where there is one (an
        # account without one was opened through a provider moments ago, or a reset link).
        if is_usable(auth.user.hashed_password):
            password = text(form, "password")
            if not password or len(password) > 4096:
                raise Refusal(422, {"password": REQUIRED}, "Enter your password to link it.")
            client = deps.client_resolver(request)
            try:
                await confirm_password(oauth.core, deps.limits, auth.user, password, client)
            except errors.AuthError as exc:
                said = refusal(exc, "password", password_field="password")
                # The section's forms share one alert: it says what went wrong in words.
                words = said.error or next(iter(said.errors.values()), None)
                raise Refusal(said.status, said.errors, words, said.headers) from None
        return await oauth.start(request, oauth.pages.state(request), name, "", auth.user.id)

    async def unlink(request: Request, form: FormData, auth: Authenticated) -> Response | None:
        name = str(request.path_params.get("provider", ""))
        try:
            await oauth_accounts.unlink(
                oauth.core, auth.user.id, name, deps.client_resolver(request)
            )
        except errors.NotFound as exc:
            raise Refusal(404, {}, exc.detail) from None
        except errors.LastSignInMethod as exc:
            raise Refusal(409, {}, exc.detail) from None
        target = oauth.pages.url(request, "account") + "?notice=oauth_unlinked"
        return oauth.pages.redirect(target)

    return [
        ("/account/oauth/{provider}/link", "authdb_page_account_oauth_link", FORM, link),
        ("/account/oauth/{provider}/unlink", "authdb_page_account_oauth_unlink", FORM, unlink),
    ]
