"""Response bodies of the security timeline (``GET /users/me/events``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class SecurityEventRead(BaseModel):
    """One security event of the caller's own account: never a token, hash or secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Pass as `before` to get the page after this event")
    time: datetime = Field(description="When it happened (ISO 8601, UTC)")
    event: str = Field(examples=["login_ok", "password_changed", "passkey_registered"])
    ip_address: str | None = Field(
        description="The client's address; null for a change an administrator made"
    )
    device: str | None = Field(
        examples=["Firefox on Linux"],
        description="A name for the device, from its User-Agent; null for an administrator's "
        "change",
    )
    detail: dict[str, str | int | bool | list[str] | None] = Field(
        default_factory=dict,
        examples=[{"session_id": 12, "mfa": "totp"}],
        description="A few fields that depend on the event (e.g. `session_id`, `mfa`, "
        "`passkey_id`, `method`, `fields`, `by_administrator`)",
    )
