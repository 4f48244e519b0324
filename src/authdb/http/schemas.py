"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class UserRead(BaseModel):
    """A user as clients see it: never a hash or a token."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str | None
    full_name: str | None
    disabled: bool
    is_verified: bool
    is_superuser: bool
    created_at: datetime
    last_login_at: datetime | None = None


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


class SessionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    current: bool = False


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(None, max_length=512)


class UserCreate(BaseModel):
    username: str = Field(max_length=256)
    email: EmailStr
    password: str = Field(max_length=4096)
    full_name: str | None = Field(None, max_length=256)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(None, max_length=256)
    email: EmailStr | None = None
    full_name: str | None = Field(None, max_length=256)


class EmailRequest(BaseModel):
    email: EmailStr


class TokenRequest(BaseModel):
    token: str = Field(min_length=1, max_length=512)


class PasswordReset(BaseModel):
    token: str = Field(min_length=1, max_length=512)
    password: str = Field(max_length=4096)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=4096)
    new_password: str = Field(max_length=4096)


class PasswordConfirm(BaseModel):
    password: str = Field(max_length=4096)


class AdminUserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(None, max_length=256)
    email: EmailStr | None = None
    full_name: str | None = Field(None, max_length=256)
    password: str | None = Field(None, max_length=4096)
    disabled: bool | None = None
    is_verified: bool | None = None
    is_superuser: bool | None = None


class UserPage(BaseModel):
    items: list[UserRead]
    total: int
