"""Request and response bodies."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    create_model,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

from authdb.names import control_character

_Route = TypeVar("_Route", bound=Callable[..., Any])


def _no_control_characters(value: object) -> object:
    """Refuse NUL, other C0/C1 controls, bidi overrides and lone surrogates in any text.

    PostgreSQL cannot store NUL, terminals and logs obey escapes, and bidi overrides make one
    name display as another; the same rule holds on every backend and in every field.
    """
    if isinstance(value, str):
        char = control_character(value)
        if char is not None:
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
    return value


# Every text field of every request body is one of these.
Text = Annotated[str, AfterValidator(_no_control_characters)]
Email = Annotated[EmailStr, BeforeValidator(_no_control_characters)]


def _json_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    return value


# A profile in a request without a profile model: not in the OpenAPI schema, and refused by
# the service with "This service has no profile fields" rather than dropped or called extra.
NoProfile = SkipJsonSchema[dict[str, Any] | None]


class UserRead(BaseModel):
    """A user as clients see it: never a hash or a token."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str | None
    # A requested new address, not yet confirmed through the link mailed to it.
    pending_email: str | None = None
    full_name: str | None
    disabled: bool
    is_verified: bool
    is_superuser: bool
    # A second factor (TOTP) is required at sign-in.
    mfa_enabled: bool = False
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
    refresh_token: Text | None = Field(None, max_length=512)


class UserCreate(BaseModel):
    # A field the service does not know is refused (422 naming it), never silently dropped.
    model_config = ConfigDict(extra="forbid")

    username: Text = Field(max_length=256)
    email: Email
    password: Text = Field(max_length=4096)
    full_name: Text | None = Field(None, max_length=256)
    profile: NoProfile = None


class UserUpdate(BaseModel):
    """Changes to one's own account; a new ``email`` needs ``current_password`` too."""

    model_config = ConfigDict(extra="forbid")

    username: Text | None = Field(None, max_length=256)
    email: Email | None = None
    full_name: Text | None = Field(None, max_length=256)
    current_password: Text | None = Field(None, max_length=4096)
    profile: NoProfile = None


class EmailRequest(BaseModel):
    email: Email


class TokenRequest(BaseModel):
    token: Text = Field(min_length=1, max_length=512)


class PasswordReset(BaseModel):
    token: Text = Field(min_length=1, max_length=512)
    password: Text = Field(max_length=4096)


class PasswordChange(BaseModel):
    current_password: Text = Field(max_length=4096)
    new_password: Text = Field(max_length=4096)


class PasswordConfirm(BaseModel):
    password: Text = Field(max_length=4096)


class AdminUserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Text | None = Field(None, max_length=256)
    email: Email | None = None
    full_name: Text | None = Field(None, max_length=256)
    password: Text | None = Field(None, max_length=4096)
    disabled: bool | None = None
    is_verified: bool | None = None
    is_superuser: bool | None = None
    profile: NoProfile = None


class UserPage(BaseModel):
    items: list[UserRead]
    total: int


# --- profile fields (``Auth(profile=Model)``) ---------------------------------------------------


@dataclass(frozen=True)
class _ShownAs:
    """Shows a stored profile (a plain dict, not validated again on the way out, so that a
    model changed since never fails a read) as the application's model in OpenAPI."""

    model: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, _schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self.model.__pydantic_core_schema__)


def _profile_change(value: object) -> dict[str, Any]:
    if value is None:
        raise ValueError("cannot be null: send the fields to change")
    return _json_object(value)


@cache
def profile_update_model(profile_model: type[BaseModel]) -> type[BaseModel]:
    """``<Model>Update``: how OpenAPI shows a ``PATCH``'s ``profile``. The model's fields,
    none required (the others keep their values), and ``additionalProperties: false`` when
    unknown keys are refused (a model without an ``extra`` setting, or ``extra="forbid"``).
    For the schema only: the service validates (``authdb.services.profile``)."""
    config = profile_model.model_config
    own_extra = config.get("json_schema_extra")

    def none_required(schema: dict[str, Any], cls: type[BaseModel]) -> None:
        if isinstance(own_extra, dict):
            schema.update(own_extra)
        elif callable(own_extra):  # the model's own hook: (schema) or (schema, cls)
            hook: Callable[..., None] = own_extra
            if len(inspect.signature(hook).parameters) > 1:
                hook(schema, cls)
            else:
                hook(schema)
        schema.pop("required", None)

    name = f"{profile_model.__name__}Update"
    update_config: ConfigDict = {
        **config,
        "extra": config.get("extra") or "forbid",
        "title": name,
        "json_schema_extra": none_required,
    }
    namespace = {
        "model_config": update_config,
        "__module__": profile_model.__module__,
        "__doc__": f"Changes to {profile_model.__name__}: only the fields to change.",
    }
    return type(name, (profile_model,), namespace)


def _no_default(schema: dict[str, Any]) -> None:
    # Absent means "no change": a default of null would read as "null is sent".
    schema.pop("default", None)


@dataclass(frozen=True)
class UserSchemas:
    """The user bodies of one ``Auth``: with its profile model's fields, or authdb's own."""

    read: type[UserRead]
    create: type[UserCreate]
    update: type[UserUpdate]
    admin_update: type[AdminUserUpdate]
    page: type[UserPage]


@cache
def user_schemas(profile_model: type[BaseModel] | None) -> UserSchemas:
    """The bodies for ``profile_model`` (the same classes for the same model, so that the
    routers of one Auth share them and OpenAPI names each once).

    In requests ``profile`` is a JSON object shown as the model; the service validates it
    (``authdb.services.profile``), so that the API and the library share one set of rules and
    a ``PATCH`` can send only the keys that change (shown as ``<Model>Update``, never null).
    On ``/register`` it is required when the model has required fields.
    """
    if profile_model is None:
        return UserSchemas(UserRead, UserCreate, UserUpdate, AdminUserUpdate, UserPage)
    given = Annotated[
        dict[str, Any], PlainValidator(_json_object, json_schema_input_type=profile_model)
    ]
    stored = Annotated[dict[str, Any], _ShownAs(profile_model)]
    change = Annotated[
        dict[str, Any],
        PlainValidator(_profile_change, json_schema_input_type=profile_update_model(profile_model)),
    ]
    required = any(field.is_required() for field in profile_model.model_fields.values())
    changes = Field(
        None,
        description="Only the fields to change; the others keep their values. Not null.",
        json_schema_extra=_no_default,
    )
    read: Any = create_model(
        "UserRead", __base__=UserRead, __module__=__name__, profile=(stored | None, None)
    )
    create: Any = create_model(
        "UserCreate",
        __base__=UserCreate,
        __module__=__name__,
        profile=(given, ...) if required else (given | None, None),
    )
    update: Any = create_model(
        "UserUpdate", __base__=UserUpdate, __module__=__name__, profile=(change, changes)
    )
    admin_update: Any = create_model(
        "AdminUserUpdate",
        __base__=AdminUserUpdate,
        __module__=__name__,
        profile=(change, changes),
    )
    page: Any = create_model(
        "UserPage", __base__=UserPage, __module__=__name__, items=(list[read], ...)
    )
    return UserSchemas(read, create, update, admin_update, page)


def body_as(schema: type[BaseModel]) -> Callable[[_Route], _Route]:
    """Under a route decorator: FastAPI reads the route's ``body`` parameter as ``schema``,
    one Auth's subclass of the class it is declared with (``user_schemas``)."""

    def apply(route: _Route) -> _Route:
        signature = inspect.signature(route)
        parameters = [
            p.replace(annotation=schema) if p.name == "body" else p
            for p in signature.parameters.values()
        ]
        route.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return route

    return apply


class MFACode(BaseModel):
    """A code from the authenticator app (6 digits; spaces allowed)."""

    code: Text = Field(min_length=1, max_length=64)


class MFADisable(BaseModel):
    """The password, and a current TOTP code or an unused recovery code."""

    password: Text = Field(max_length=4096)
    code: Text = Field(min_length=1, max_length=64)


class TOTPSetupRead(BaseModel):
    """A pending authenticator, shown this once: scan ``qr_svg`` or type ``secret``."""

    secret: str
    otpauth_uri: str
    qr_svg: str


class RecoveryCodes(BaseModel):
    """Single-use codes that stand in for the authenticator; shown this once."""

    recovery_codes: list[str]


class JWKSet(BaseModel):
    """RFC 7517 section 5: the public keys whose tokens can still be valid."""

    keys: list[dict[str, str]]


class AuthorizationServerMetadata(BaseModel):
    """RFC 8414 section 2: where the endpoints are and what they accept."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]


# --- passkeys (WebAuthn Level 3 JSON encodings; see authdb.relying_party) -------------------


class PasskeyRead(BaseModel):
    """A registered passkey as its owner sees it: never the key or the credential id."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class PasskeyOptionsRequest(BaseModel):
    """Optional: the password, needed when the session signed in more than 10 minutes ago."""

    password: Text | None = Field(None, max_length=4096)


class PasskeyCreate(BaseModel):
    """``credential``: what ``navigator.credentials.create()`` gave, as RegistrationResponseJSON
    (``credential.toJSON()``); ``name``: how the list shows it (default: the device)."""

    credential: dict[str, Any]
    name: Text | None = Field(None, max_length=256)


class PasskeyDelete(BaseModel):
    password: Text = Field(max_length=4096)


class PasskeyLoginStart(BaseModel):
    """Optional: the account that must sign in (the options are the same either way)."""

    username: Text | None = Field(None, min_length=1, max_length=256)


class PasskeyLoginOptions(BaseModel):
    """``options`` go to ``navigator.credentials.get()``; ``flow_id`` comes back with the
    answer to ``POST /passkeys/login``."""

    flow_id: str
    options: dict[str, Any]


class PasskeyLogin(BaseModel):
    """``credential``: what ``navigator.credentials.get()`` gave, as AuthenticationResponseJSON;
    ``mfa_token``: from a password sign-in's 403, when the passkey is the second factor."""

    flow_id: Text = Field(max_length=4096)
    credential: dict[str, Any]
    mfa_token: Text | None = Field(None, max_length=1024)
