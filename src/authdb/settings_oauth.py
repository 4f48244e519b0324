"""Settings of the sign-in providers (SPEC, "Sign in with another provider").

``AUTHDB_OAUTH_PROVIDERS=google,github,corp`` names them; each then reads its own variables,
``AUTHDB_OAUTH_<NAME>_CLIENT_ID``, ``..._CLIENT_SECRET`` and, for an OpenID Connect provider,
``..._ISSUER``. Their names depend on the list, so pydantic cannot declare them: they are read
here from the same places as every setting, in the same order (arguments to ``Settings()``,
then the environment, then the .env file(s)).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import SecretStr
from pydantic_settings.sources import DotenvType

from authdb import settings_checks as checks
from authdb.names import has_control_characters

# Lower case, as the spec says; it is a URL segment and part of variable names.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The per-provider variables: AUTHDB_OAUTH_<NAME>_<SUFFIX>.
FIELDS = ("client_id", "client_secret", "issuer", "scopes", "label", "github_url", "api_url")
_VARIABLE = re.compile(
    r"^AUTHDB_OAUTH_([A-Z][A-Z0-9_]{0,31})_(" + "|".join(f.upper() for f in FIELDS) + r")$"
)
GITHUB = "github"
GITHUB_URL = "https://github.com"
GITHUB_API_URL = "https://api.github.com"
OIDC_SCOPES = ("openid", "email", "profile")
# read:user for the profile, user:email for private and verified addresses.
GITHUB_SCOPES = ("read:user", "user:email")
_LABELS = {
    "google": "Google",
    "github": "GitHub",
    "microsoft": "Microsoft",
    "entra": "Microsoft",
    "gitlab": "GitLab",
    "apple": "Apple",
    "okta": "Okta",
    "keycloak": "Keycloak",
}
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One sign-in provider. ``issuer`` set: OpenID Connect (discovery at
    ``{issuer}/.well-known/openid-configuration``); None: GitHub's OAuth 2.0 at ``github_url``
    (web) and ``api_url`` (REST API), which GitHub Enterprise Server moves."""

    name: str
    client_id: str
    client_secret: SecretStr = field(repr=False)
    issuer: str | None
    scopes: tuple[str, ...]
    label: str
    github_url: str = GITHUB_URL
    api_url: str = GITHUB_API_URL

    @property
    def kind(self) -> Literal["oidc", "github"]:
        return "github" if self.issuer is None else "oidc"


def variable(name: str, suffix: str) -> str:
    """``AUTHDB_OAUTH_CORP_CLIENT_ID`` for provider ``corp``'s ``client_id``."""
    return f"AUTHDB_OAUTH_{name.upper()}_{suffix.upper()}"


def check_names(values: list[str]) -> list[str]:
    """The provider list: lower-case names, each once."""
    names = []
    for value in values:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a provider name: lower-case letters, digits and _, "
                "starting with a letter, at most 32"
            )
        if value in names:
            raise ValueError(f"{value!r} is listed twice")
        names.append(value)
    return names


def https_url(value: str) -> str:
    """An absolute https URL without query or fragment (http only on a loopback host, for
    development and tests); trailing slash dropped."""
    url = checks.public_url(value)
    host = (urlsplit(url).hostname or "").lower()
    if not url.startswith("https://") and host not in _LOOPBACK:
        raise ValueError("must be an https:// URL (http only on 127.0.0.1 or localhost)")
    return url


def load(
    names: list[str], arguments: Mapping[str, Any], env_file: DotenvType | None
) -> dict[str, ProviderSettings]:
    """Each listed provider's settings, from ``arguments`` (``oauth_corp_client_id=``), the
    environment, then ``env_file``. Raises ValueError whose first word is the variable at
    fault."""
    found = sources(arguments, env_file)
    providers = {}
    for name in names:
        values = {suffix: found.get(variable(name, suffix)) for suffix in FIELDS}
        providers[name] = _provider(name, values)
    return providers


def _provider(name: str, values: Mapping[str, str | None]) -> ProviderSettings:
    def required(suffix: str) -> str:
        value = (values.get(suffix) or "").strip()
        if not value:
            raise ValueError(f"{variable(name, suffix)} is not set (provider {name!r} is listed)")
        if has_control_characters(value):
            raise ValueError(f"{variable(name, suffix)} contains control characters")
        return value

    def url(suffix: str, default: str) -> str:
        raw = (values.get(suffix) or "").strip()
        try:
            return https_url(raw) if raw else default
        except ValueError as exc:
            raise ValueError(f"{variable(name, suffix)}: {exc}") from None

    issuer_raw = (values.get("issuer") or "").strip()
    missing = [s for s in ("client_id", "client_secret") if not (values.get(s) or "").strip()]
    if not issuer_raw and name != GITHUB:
        missing.append("issuer")
    if missing:
        names = " and ".join(", ".join(variable(name, s) for s in missing).rsplit(", ", 1))
        why = (
            " (only a provider named github may go without an issuer)"
            if ("issuer" in missing)
            else ""
        )
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(f"{names} {verb} not set: provider {name!r} is listed{why}")
    # Kept as written (a trailing slash included: Auth0's has one): the discovery document
    # must name exactly this issuer (OpenID Connect Discovery 1.0, section 4.3).
    issuer = issuer_raw if url("issuer", "") else None
    for suffix in ("github_url", "api_url"):
        if issuer is not None and values.get(suffix):
            raise ValueError(f"{variable(name, suffix)} is for GitHub, not an OpenID issuer")
    scopes = tuple((values.get("scopes") or "").replace(",", " ").split())
    if issuer is not None and scopes and "openid" not in scopes:
        raise ValueError(f"{variable(name, 'scopes')} must include openid")
    label = (values.get("label") or "").strip() or _LABELS.get(name, name.replace("_", " ").title())
    if has_control_characters(label) or len(label) > 64:
        raise ValueError(f"{variable(name, 'label')} must be printable, at most 64 characters")
    return ProviderSettings(
        name=name,
        client_id=required("client_id"),
        client_secret=SecretStr(required("client_secret")),
        issuer=issuer,
        scopes=scopes or (OIDC_SCOPES if issuer else GITHUB_SCOPES),
        label=label,
        github_url=url("github_url", GITHUB_URL),
        api_url=url("api_url", GITHUB_API_URL),
    )


def sources(arguments: Mapping[str, Any], env_file: DotenvType | None) -> dict[str, str]:
    """``AUTHDB_OAUTH_*`` values by upper-case name; earlier sources win."""
    found: dict[str, str] = {}
    for name, value in arguments.items():
        if name.lower().startswith("oauth_") and value is not None:
            found.setdefault(f"AUTHDB_{name.upper()}", _text(value))
    for name, value in os.environ.items():
        if name.upper().startswith("AUTHDB_OAUTH_"):
            found.setdefault(name.upper(), value)
    for path in reversed(env_paths(env_file)):  # the last file wins, as in pydantic-settings
        if path.is_file():
            for name, value in dotenv_values(path).items():
                if name.upper().startswith("AUTHDB_OAUTH_") and value is not None:
                    found.setdefault(name.upper(), value)
    return found


def _text(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def env_paths(env_file: DotenvType | None) -> list[Path]:
    """The .env file(s) ``env_file`` names, as pydantic-settings takes it."""
    if env_file is None:
        return []
    files = [env_file] if isinstance(env_file, str | os.PathLike) else list(env_file)
    return [Path(file).expanduser() for file in files]


def provider_of(name: str) -> str | None:
    """The provider an ``AUTHDB_OAUTH_<NAME>_<FIELD>`` variable configures, listed or not."""
    match = _VARIABLE.match(name.upper())
    return match.group(1).lower() if match else None


def is_provider_variable(name: str, providers: list[str]) -> bool:
    """True for ``AUTHDB_OAUTH_<NAME>_<FIELD>`` of a listed provider."""
    return any(name.upper() == variable(p, s) for p in providers for s in FIELDS)
