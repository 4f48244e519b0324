"""Where settings come from: the environment, ``.env`` files, defaults; which ``AUTHDB_*``
variables are no setting at all (a typo is otherwise ignored without a word); and each
setting's value fit to show, secrets masked."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import SecretStr
from pydantic_settings.sources import DotenvType

from authdb import settings_oauth
from authdb.settings import Settings
from authdb.settings_checks import variable

log = logging.getLogger("authdb")

PREFIX = "AUTHDB_"
# Variables that start with AUTHDB_ without being settings: the test suite's own
# (AUTHDB_TEST_PG_DSN, AUTHDB_TEST_ARTIFACTS).
NOT_SETTINGS_PREFIXES = ("AUTHDB_TEST_",)
# Shown as this when set; never the value, nor its length.
MASK = "********"
SECRET_SETTINGS = frozenset({"secret_key", "secret_key_fallbacks", "smtp_password"})
# Query parameters whose value is masked: drivers read the key percent-decoded, so it is
# decoded before the test (``pass%77ord`` is a password to asyncpg and redis-py).
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "cred")
# A provider's settings that only GitHub (a provider without an issuer) reads.
_GITHUB_ONLY = ("github_url", "api_url")


def _mask_query(query: str) -> str:
    """``a=1&password=x&pass%77ord=y`` → ``a=1&password=***&pass%77ord=***``."""
    shown = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        secret = any(word in unquote_plus(name).lower() for word in _SECRET_WORDS)
        shown.append(f"{name}=***" if equals and secret else part)
    return "&".join(shown)


def known_variables() -> frozenset[str]:
    """Every ``AUTHDB_*`` variable that is a setting."""
    return frozenset(variable(field) for field in Settings.model_fields)


def dotenv_variables(env_file: DotenvType | None) -> dict[str, str]:
    """``AUTHDB_*`` names in the .env file(s), upper-cased, each to the file that sets it last
    (pydantic-settings lets a later file win)."""
    found: dict[str, str] = {}
    for path in settings_oauth.env_paths(env_file):
        if path.is_file():
            for name in dotenv_values(path):
                if name.upper().startswith(PREFIX):
                    found[name.upper()] = path.name
    return found


def environment_variables() -> dict[str, str]:
    """``AUTHDB_*`` names in the environment, upper-cased (settings ignore case), to the name
    as written."""
    return {name.upper(): name for name in os.environ if name.upper().startswith(PREFIX)}


@dataclass(frozen=True, slots=True)
class UnknownSetting:
    """An ``AUTHDB_*`` variable that no setting reads: ``where`` is "environment" or the .env
    file's name, ``suggestion`` the closest known variable (or None)."""

    name: str
    where: str
    suggestion: str | None
    # Why it is ignored, when that is known better than by a close name.
    reason: str | None = None

    @property
    def message(self) -> str:
        """``unknown setting AUTHDB_SMTP_HOSTNAME (did you mean AUTHDB_SMTP_HOST?)``."""
        place = "" if self.where == "environment" else f" in {self.where}"
        hint = f"did you mean {self.suggestion}?" if self.suggestion else "ignored"
        return f"unknown setting {self.name}{place} ({self.reason or hint})"


def unknown_settings(
    env_file: DotenvType | None = ".env", providers: list[str] | None = None
) -> list[UnknownSetting]:
    """The ``AUTHDB_*`` variables of the environment and of ``env_file`` that are no setting.

    ``providers``: the sign-in providers in use (default: AUTHDB_OAUTH_PROVIDERS as the
    environment or ``env_file`` gives it), whose AUTHDB_OAUTH_<NAME>_* variables are settings.
    """
    known = known_variables()
    named = [(name, "environment") for name in environment_variables().values()]
    named += list(dotenv_variables(env_file).items())
    if providers is None:
        providers = _listed_providers(env_file)
    unknown: list[UnknownSetting] = []
    for name, where in named:
        upper = name.upper()
        if upper in known or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if settings_oauth.is_provider_variable(upper, providers):
            continue
        provider = settings_oauth.provider_of(upper)
        if provider is not None:
            reason = f"ignored: provider {provider!r} is not in AUTHDB_OAUTH_PROVIDERS"
            unknown.append(UnknownSetting(name, where, None, reason))
            continue
        unknown.append(UnknownSetting(name, where, _closest(upper, known)))
    return unknown


def _listed_providers(env_file: DotenvType | None) -> list[str]:
    """AUTHDB_OAUTH_PROVIDERS as the environment or the .env file(s) give it."""
    listed = settings_oauth.sources({}, env_file).get("AUTHDB_OAUTH_PROVIDERS", "")
    return [item.strip() for item in listed.split(",") if item.strip()]


def _closest(name: str, known: Iterable[str]) -> str | None:
    # Compared without the shared prefix, which would make every name look alike.
    stems = {item.removeprefix(PREFIX): item for item in known}
    match = difflib.get_close_matches(name.removeprefix(PREFIX), list(stems), n=1, cutoff=0.6)
    return stems[match[0]] if match else None


# Names already reported by this process (the CLI prints them, and Auth then stays quiet).
_reported: set[tuple[str, str]] = set()


def mark_reported(unknown: Iterable[UnknownSetting]) -> None:
    """Note ``unknown`` as reported, so ``log_unknown`` does not repeat it."""
    _reported.update((item.name, item.where) for item in unknown)


def log_unknown(settings: Settings) -> None:
    """Log a warning (logger "authdb") for each unknown variable not yet reported."""
    fresh = [
        item
        for item in unknown_settings(settings.env_file, settings.oauth_providers)
        if (item.name, item.where) not in _reported
    ]
    for item in fresh:
        log.warning("%s", item.message)
    mark_reported(fresh)


def fields(settings: Settings) -> list[str]:
    """Every setting of ``settings`` by field name: the declared ones, then each sign-in
    provider's ``oauth_<name>_<suffix>`` (variable ``AUTHDB_OAUTH_<NAME>_<SUFFIX>``, the name
    it takes as an argument to ``Settings()``); GitHub's URLs only for a provider without an
    issuer, which is the only kind that reads them."""
    names = list(type(settings).model_fields)
    for name, provider in settings.oauth.items():
        names += [
            f"oauth_{name}_{suffix}"
            for suffix in settings_oauth.FIELDS
            if provider.kind == "github" or suffix not in _GITHUB_ONLY
        ]
    return names


def provider_field(
    settings: Settings, field: str
) -> tuple[settings_oauth.ProviderSettings, str] | None:
    """``(provider, suffix)`` when ``field`` is one of a configured provider's settings."""
    for name, provider in settings.oauth.items():
        for suffix in settings_oauth.FIELDS:
            if field == f"oauth_{name}_{suffix}":
                return provider, suffix
    return None


def source(settings: Settings, field: str) -> str:
    """Where ``field`` came from: "environment", the .env file's name, "argument" (given to
    ``Settings()`` in code or by a command-line option) or "default". ``field`` may be a
    provider's (``oauth_corp_client_id``, see ``fields``)."""
    if field in settings.arguments:
        return "argument"
    name = variable(field)
    if name in environment_variables():
        return "environment"
    from_file = dotenv_variables(settings.env_file).get(name)
    if from_file is not None:
        return from_file
    return "default"


def mask_url(url: str) -> str:
    """``url`` with any password in it (``user:PASSWORD@`` or ``?password=``) masked."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    masked = parts
    if at and ":" in userinfo:
        masked = masked._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}")
    masked = masked._replace(query=_mask_query(parts.query))
    # Rebuilt only when something was masked: urlunsplit would mangle "sqlite:///./x.db"
    # (and "postgresql:///db?..."), so a masked query goes back into the text as it was.
    if masked == parts:
        return url
    if masked.netloc == parts.netloc:
        base, mark, rest = url.partition("?")
        _query, hash_mark, fragment = rest.partition("#")
        return base + mark + masked.query + hash_mark + fragment
    return urlunsplit(masked)


def url_secrets(url: str | None) -> list[str]:
    """The secrets inside a URL (its password, secret-looking query values), as written and
    percent-decoded, for scrubbing messages that a library may have built from them."""
    if not url:
        return []
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    for part in parts.query.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and any(w in unquote_plus(name).lower() for w in _SECRET_WORDS):
            found.append(value)
    return [text for secret in found for text in dict.fromkeys((secret, unquote_plus(secret)))]


def shown(settings: Settings, field: str) -> Any:
    """The value of ``field`` fit to print: JSON types, secrets masked, URLs without passwords.
    A provider's client secret is masked like every secret; its scopes are a list."""
    found = provider_field(settings, field)
    if found is not None:
        provider, suffix = found
        if suffix == "client_secret":
            return MASK
        if suffix == "scopes":
            return list(provider.scopes)
        return getattr(provider, suffix)
    value = getattr(settings, field)
    if field in SECRET_SETTINGS:
        if isinstance(value, list):
            return [MASK for _ in value]
        return None if value is None else MASK
    if isinstance(value, SecretStr):  # a secret setting added later, masked all the same
        return MASK
    if field in ("database_url", "redis_url") and value is not None:
        return mask_url(value)
    return value


def as_text(value: Any) -> str:
    """A shown value as in a .env file: lists comma-separated, booleans lower case, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(as_text(item) for item in value)
    return str(value)
