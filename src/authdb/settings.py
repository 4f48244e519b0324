"""Configuration: every knob, its default and why, read from ``AUTHDB_*`` variables or ``.env``."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.sources import ENV_FILE_SENTINEL, DotenvType

from authdb import settings_checks as checks
from authdb import settings_oauth

# How password hashing threads are scheduled (authdb.hash_threads).
PasswordHashPriority = Literal["idle", "normal"]


class Settings(BaseSettings):
    """authdb settings; see the README's configuration table."""

    # Inputs stay out of error messages: they may be keys or passwords. The checks quote a
    # value themselves where that helps and cannot leak a secret.
    model_config = SettingsConfigDict(
        env_prefix="AUTHDB_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # The .env file(s) read (``_env_file=`` or the default), to look for unknown variables.
    _env_file: DotenvType | None = PrivateAttr(default=None)
    # The settings given to ``Settings()`` itself, which win over the environment.
    _arguments: frozenset[str] = PrivateAttr(default=frozenset())
    # Each provider of ``oauth_providers``, read from its own AUTHDB_OAUTH_<NAME>_* variables.
    _oauth: dict[str, settings_oauth.ProviderSettings] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # Each problem names its AUTHDB_ variable, in the library as in the CLI.
            raise checks.InvalidSettings.naming(exc) from None
        self._arguments = frozenset(name for name in values if not name.startswith("_"))
        env_file = values.get("_env_file", ENV_FILE_SENTINEL)
        self._env_file = (
            self.model_config.get("env_file") if env_file is ENV_FILE_SENTINEL else env_file
        )
        try:
            self._oauth = settings_oauth.load(self.oauth_providers, values, self._env_file)
        except ValueError as exc:
            raise checks.InvalidSettings.naming_one(str(exc)) from None

    @property
    def oauth(self) -> dict[str, settings_oauth.ProviderSettings]:
        """The sign-in providers of ``AUTHDB_OAUTH_PROVIDERS`` by name, in its order."""
        return dict(self._oauth)

    @property
    def env_file(self) -> DotenvType | None:
        """The .env file(s) these settings were read from (whether or not they exist)."""
        return self._env_file

    @property
    def arguments(self) -> frozenset[str]:
        """The settings given as arguments to ``Settings()``, rather than read."""
        return self._arguments

    database_url: str = "sqlite+aiosqlite:///./authdb.db"
    # None means: generate once and keep it in the database, so every worker agrees on it.
    secret_key: SecretStr | None = None
    # Earlier secret keys, still tried to open secrets sealed at rest (TOTP secrets) after a
    # rotation, as Django's SECRET_KEY_FALLBACKS. Comma-separated.
    secret_key_fallbacks: Annotated[list[SecretStr], NoDecode] = []
    # HS256/384/512 sign with the secret key; RS256, ES256 and EdDSA with key pairs that
    # authdb makes and publishes at /.well-known/jwks.json.
    jwt_algorithm: str = "HS256"
    # How often each process re-reads the signing keys (a rotation elsewhere reaches it then).
    jwt_keys_refresh_seconds: int = Field(10, ge=1, le=300)
    jwt_issuer: str = Field("authdb", min_length=1)
    jwt_audience: str = Field("authdb", min_length=1)
    # Upper bounds here and below catch unit mistakes and keep date arithmetic from overflowing.
    access_token_expire_minutes: int = Field(30, ge=1, le=30 * 24 * 60)
    refresh_token_expire_days: int = Field(14, ge=1, le=3650)
    # A rotated refresh token presented again this soon (two tabs refreshing at once) gets the
    # same successor instead of revoking the session; later reuse is treated as theft.
    refresh_reuse_interval_seconds: int = Field(10, ge=0, le=300)
    verify_token_expire_hours: int = Field(24, ge=1, le=30 * 24)
    reset_token_expire_minutes: int = Field(60, ge=1, le=7 * 24 * 60)

    public_url: str = "http://127.0.0.1:8000"
    smtp_host: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # TLS to the SMTP server: none, starttls (upgrade after connecting, usually port 587) or
    # implicit (TLS from the first byte, port 465). Unset: implicit on port 465, else
    # AUTHDB_SMTP_STARTTLS (the older spelling of starttls) decides. See smtp_tls_mode.
    smtp_tls: Literal["none", "starttls", "implicit"] | None = None
    smtp_starttls: bool = False
    # A PEM file of CA certificates for a server with a private CA, instead of the system's.
    smtp_ca_file: str | None = None
    smtp_timeout_seconds: float = Field(10.0, gt=0, le=600)
    mail_from: str = "authdb <no-reply@localhost>"
    templates_dir: str | None = None

    redis_url: str | None = None
    # Rate-limit keys in Redis start with this, so deployments can share one Redis server.
    redis_key_prefix: str = Field("authdb", min_length=1)
    # A Redis that does not answer this fast is treated as down (limits fail open), so no
    # request waits on it longer.
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)
    # Connections one process holds to the database, everything included.
    database_pool_size: int = Field(10, ge=2, le=1000)
    # PgBouncer in transaction-pooling mode: no server-side prepared statements kept.
    database_pgbouncer: bool = False
    # Live sessions each process keeps in memory (0: none); see authdb.db.session_cache.
    session_cache_size: int = Field(10_000, ge=0, le=1_000_000)
    registration_enabled: bool = True
    require_verified_email: bool = False
    login_max_failures: int = Field(10, ge=1, le=1000)
    login_lockout_minutes: int = Field(15, ge=1, le=30 * 24 * 60)
    rate_limit_login_failures: str = "20/minute"
    rate_limit_register: str = "10/minute"
    rate_limit_email_requests: str = "5/hour"
    rate_limit_email_requests_per_address: str = "20/minute"
    # IPv6 clients are rate-limited per network of this prefix length: one subscriber
    # usually holds a whole /64 and could otherwise rotate through its addresses.
    rate_limit_ipv6_prefix: int = Field(64, ge=1, le=128)
    trusted_proxies: Annotated[list[str], NoDecode] = []
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)

    # Hosted pages (/login, /register, /account...) and the browser session cookie.
    pages_enabled: bool = True
    site_name: str = Field("authdb", min_length=1, max_length=64)
    # Origins besides PUBLIC_URL's that ``next=`` may send a signed-in browser to.
    allowed_redirect_origins: Annotated[list[str], NoDecode] = []

    # Multi-factor authentication: the issuer authenticator apps show beside the account.
    mfa_issuer: str = Field("authdb", min_length=1, max_length=64)

    # Argon2 is CPU-bound; capping concurrent hashes leaves a core for the event loop.
    password_hash_concurrency: int = Field(1, ge=1, le=256)
    # "idle": hashing threads at the OS's idle priority, so other requests come first, each
    # rescued by a normal-priority thread when starved (authdb.hash_threads).
    password_hash_priority: PasswordHashPriority = "idle"
    # argon2id cost: OWASP's recommended m=19 MiB, t=2, p=1. One lane keeps a hash on one core
    # (the limiter above leaves the other to the event loop). Changing them upgrades stored
    # hashes at each user's next login.
    password_hash_time_cost: int = Field(2, ge=1, le=100)
    password_hash_memory_kib: int = Field(19456, ge=8, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(1, ge=1, le=64)
    # Spend-time cleanup: prune ended sessions on roughly one login in this many.
    prune_every_n_logins: int = Field(100, ge=1, le=1_000_000)

    # Operations: Prometheus metrics at /metrics (needs the `metrics` extra), log lines as
    # plain text or JSON objects, and an email when a sign-in comes from a new device.
    metrics_enabled: bool = False
    log_format: Literal["text", "json"] = "text"
    new_device_alerts: bool = False

    # Sign-in with other providers: their names (each configured by AUTHDB_OAUTH_<NAME>_*
    # variables, see settings_oauth), and whether an identity whose verified email is an
    # account's signs in to it without being linked first.
    oauth_providers: Annotated[list[str], NoDecode] = []
    oauth_link_verified_email: bool = False

    # The application's profile fields for the standalone service: "package.module:ClassName"
    # of a Pydantic model, imported at start (``Auth(profile=...)`` in library use wins).
    profile_model: str | None = None

    @field_validator(
        "trusted_proxies",
        "cors_origins",
        "allowed_redirect_origins",
        "secret_key_fallbacks",
        "oauth_providers",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        # Fail at start-up, not on the first request, when an entry is not an address or CIDR.
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 wants at least 256 bits; a short human-made key is brute-forceable offline.
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters long")
        return value

    @field_validator(
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "redis_url",
        "templates_dir",
        "smtp_tls",
        "smtp_ca_file",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `AUTHDB_SMTP_HOST=` in a .env file means "not set", not "a host named ''".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return checks.database_url(value)

    @field_validator("jwt_algorithm")
    @classmethod
    def _jwt_algorithm(cls, value: str) -> str:
        return checks.jwt_algorithm(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return checks.public_url(value)

    @field_validator("smtp_host")
    @classmethod
    def _smtp_host(cls, value: str | None) -> str | None:
        return None if value is None else checks.host(value)

    @field_validator("smtp_tls", mode="before")
    @classmethod
    def _smtp_tls_case(cls, value: object) -> object:
        # STARTTLS, Implicit: the words as providers' docs write them.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("smtp_ca_file")
    @classmethod
    def _smtp_ca_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Loaded now, so that a wrong path or a file of no certificates stops the start.
        try:
            ssl.create_default_context(cafile=value)
        except (OSError, ssl.SSLError) as exc:
            reason = str(exc.strerror or exc).split(" (_ssl.c")[0]
            raise ValueError(
                f"{value!r} is not a readable PEM file of CA certificates: {reason}"
            ) from None
        return value

    @property
    def smtp_tls_mode(self) -> Literal["none", "starttls", "implicit"]:
        """The TLS mode in effect: AUTHDB_SMTP_TLS, else implicit on port 465, else starttls
        if AUTHDB_SMTP_STARTTLS, else none."""
        if self.smtp_tls is not None:
            return self.smtp_tls
        if self.smtp_starttls:
            return "starttls"
        return "implicit" if self.smtp_port == 465 else "none"

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str) -> str:
        return checks.mail_from(value)

    @field_validator("templates_dir")
    @classmethod
    def _templates_dir(cls, value: str | None) -> str | None:
        return None if value is None else checks.folder(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return None if value is None else checks.redis_url(value)

    @field_validator(
        "rate_limit_login_failures",
        "rate_limit_register",
        "rate_limit_email_requests",
        "rate_limit_email_requests_per_address",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        return checks.rate_limit(value)

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, value: list[str]) -> list[str]:
        return checks.origins(value)

    @field_validator("allowed_redirect_origins")
    @classmethod
    def _redirect_origins(cls, value: list[str]) -> list[str]:
        return checks.redirect_origins(value)

    @field_validator("site_name")
    @classmethod
    def _site_name(cls, value: str) -> str:
        return checks.site_name(value)

    @field_validator("profile_model", mode="before")
    @classmethod
    def _profile_model(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # `AUTHDB_PROFILE_MODEL=` means "no profile fields"
        if isinstance(value, str):
            from authdb.services.profile import load_profile_model  # imports the app's code

            load_profile_model(value)
            return value.strip()
        return value

    @field_validator("oauth_providers")
    @classmethod
    def _oauth_providers(cls, value: list[str]) -> list[str]:
        return settings_oauth.check_names(value)

    @field_validator("mfa_issuer")
    @classmethod
    def _mfa_issuer(cls, value: str) -> str:
        # Google's Key URI format: the label is "issuer:account", so no colon in either.
        if ":" in value:
            raise ValueError("must not contain ':' (authenticator apps split the label on it)")
        return checks.site_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Checks between settings; each message names the variables involved."""
        key = self.secret_key.get_secret_value().encode() if self.secret_key else None
        # With a key pair the secret still seals the private keys: as strong as for HS256.
        shortest = checks.HMAC_ALGORITHMS.get(self.jwt_algorithm, 32)
        if key is not None and len(key) < shortest:
            raise ValueError(
                f"AUTHDB_JWT_ALGORITHM={self.jwt_algorithm} needs an AUTHDB_SECRET_KEY of at "
                f"least {shortest} bytes (RFC 7518 section 3.2)"
            )
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError(
                "AUTHDB_SMTP_USERNAME and AUTHDB_SMTP_PASSWORD must be set together or not at all"
            )
        self._check_smtp_tls()
        # argon2 needs at least 8 KiB per lane; fewer fails every hash (every login).
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ValueError(
                "AUTHDB_PASSWORD_HASH_MEMORY_KIB must be at least 8 times "
                "AUTHDB_PASSWORD_HASH_PARALLELISM"
            )
        return self

    def _check_smtp_tls(self) -> None:
        """AUTHDB_SMTP_STARTTLS (the older setting) must agree with AUTHDB_SMTP_TLS; a CA
        file needs TLS to be used at all."""
        tls = self.smtp_tls
        said_starttls = "smtp_starttls" in self.model_fields_set
        if tls is not None and said_starttls and self.smtp_starttls != (tls == "starttls"):
            raise ValueError(
                f"AUTHDB_SMTP_STARTTLS={str(self.smtp_starttls).lower()} contradicts "
                f"AUTHDB_SMTP_TLS={tls}: set only AUTHDB_SMTP_TLS"
            )
        if self.smtp_ca_file is not None and self.smtp_tls_mode == "none":
            raise ValueError(
                "AUTHDB_SMTP_CA_FILE is set but AUTHDB_SMTP_TLS is none: set AUTHDB_SMTP_TLS "
                "to starttls or implicit"
            )
