"""Configuration: every knob, its default and why, read from ``AUTHDB_*`` variables or ``.env``."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """authdb settings; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="AUTHDB_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./authdb.db"
    # None means: generate once and keep it in the database, so every worker agrees on it.
    secret_key: SecretStr | None = None
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "authdb"
    jwt_audience: str = "authdb"
    access_token_expire_minutes: int = Field(30, ge=1)
    refresh_token_expire_days: int = Field(14, ge=1)
    verify_token_expire_hours: int = Field(24, ge=1)
    reset_token_expire_minutes: int = Field(60, ge=1)

    public_url: str = "http://127.0.0.1:8000"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "authdb <no-reply@localhost>"
    templates_dir: str | None = None

    redis_url: str | None = None
    # Rate-limit keys in Redis start with this, so deployments can share one Redis server.
    redis_key_prefix: str = Field("authdb", min_length=1)
    registration_enabled: bool = True
    require_verified_email: bool = False
    login_max_failures: int = Field(10, ge=1)
    login_lockout_minutes: int = Field(15, ge=1)
    rate_limit_login_failures: str = "20/minute"
    rate_limit_register: str = "10/minute"
    rate_limit_email_requests: str = "5/hour"
    rate_limit_email_requests_per_address: str = "20/minute"
    trusted_proxies: Annotated[list[str], NoDecode] = []
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    # Argon2 is CPU-bound; capping concurrent hashes leaves a core for the event loop.
    password_hash_concurrency: int = Field(1, ge=1)
    # argon2id cost: OWASP's recommended m=19 MiB, t=2, p=1. One lane keeps a hash on one core
    # (the limiter above leaves the other to the event loop). Changing them upgrades stored
    # hashes at each user's next login.
    password_hash_time_cost: int = Field(2, ge=1)
    password_hash_memory_kib: int = Field(19456, ge=8)
    password_hash_parallelism: int = Field(1, ge=1)
    # Spend-time cleanup: prune ended sessions on roughly one login in this many.
    prune_every_n_logins: int = Field(100, ge=1)

    @field_validator("trusted_proxies", "cors_origins", mode="before")
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
            raise ValueError("AUTHDB_SECRET_KEY must be at least 32 characters long")
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
