"""Profile fields: the application's own fields on each user, validated by its Pydantic model.

``Auth(settings, profile=MyProfile)`` (or ``AUTHDB_PROFILE_MODEL=package.module:MyProfile`` for
the standalone service) makes ``users.profile`` hold ``MyProfile``'s fields as JSON, by alias.
Every write goes through :func:`clean_profile`: the API, the admin API and the library's own
functions, so the rules are one set:

- The whole profile is validated against the model, and stored as the model dumps it (JSON
  mode, by alias, defaults included). A change (``PATCH``) is merged into the stored profile
  key by key (top-level keys only: a nested object given is replaced whole), its keys turned
  into the stored form first (a field's name becomes its alias, when the model accepts
  both), and the merged result is validated again: a change can never leave a profile the
  model would refuse.
- Unknown keys are refused unless the model says otherwise, at every level: a model (the
  profile model or a model nested in it) without an ``extra`` setting forbids them here
  (Pydantic would drop them silently); ``extra="ignore"`` drops them, ``extra="allow"``
  keeps them.
- Text may not hold NUL, other control characters except tab and line breaks, bidi overrides
  or lone surrogates (PostgreSQL cannot store some, and the others forge what is shown), and
  numbers must be finite anywhere in the input, checked before validation (Pydantic would
  turn an infinity in an ``Any`` or extra field into null).
- What is stored reads back the same on SQLite and PostgreSQL (whose jsonb keeps numbers as
  decimals and sorts keys): a float of magnitude 1e16 or more is stored as the integer its
  JSON spelling means (``1e+30`` -> ``10**30``), ``-0.0`` as ``0.0``, and object keys in
  jsonb's order (shorter first, then by UTF-8 bytes).
- Errors are ``InvalidInput`` with ``field="profile.<name>"`` (nested: ``profile.a.b``), which
  the HTTP layer answers as FastAPI's 422 with ``loc`` ``["body", "profile", "<name>"]``.

What is stored is what the model accepted at that time: reading does not validate again, so a
model that changes later never makes reading a user fail; the next write applies the new model.
"""

from __future__ import annotations

import importlib
import math
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from authdb.errors import InvalidInput

if TYPE_CHECKING:
    from authdb.services.core import Core
    from authdb.settings import Settings

NO_PROFILE_FIELDS = "This service has no profile fields"
# Tab and line breaks are ordinary in an address or a biography; every other control is not.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def clean_profile(
    core: Core, value: Mapping[str, Any] | BaseModel | None, *, partial: bool = False
) -> dict[str, Any] | None:
    """Validate a profile against ``core.profile_model``; returns what to store, or None.

    ``value``: a mapping (JSON-like, keys by alias, or by name where the model accepts
    names) or an instance of the model. None means "no profile given" and returns None.
    ``partial=True`` checks only the keys given (unknown names, wrong types), ignoring
    required fields that are absent, and returns those keys in the stored form (by alias)
    with their values as given; merge them with :func:`merge_profile` to get what to store.

    Raises ``InvalidInput`` (field ``"profile"`` or ``"profile.<name>"``): no profile model
    (``NO_PROFILE_FIELDS``), not a mapping, a non-finite number anywhere, or refused by the
    model.
    """
    if value is None:
        return None
    model = core.profile_model
    if model is None:
        raise InvalidInput(NO_PROFILE_FIELDS, field="profile")
    if partial:
        return _storable(_partial(model, value))
    return _validated(model, value)


def merge_profile(
    core: Core, current: Mapping[str, Any] | None, changes: Mapping[str, Any] | BaseModel
) -> dict[str, Any]:
    """The stored profile ``current`` with the keys of ``changes`` replaced, validated whole.

    This is ``PATCH``'s meaning: keys not given keep their values; a key given as null becomes
    null (if the model allows it); the merge is shallow (a nested object given replaces the
    stored one whole). A key of ``changes`` that names a field by its name is turned into the
    field's alias first, as the profile is stored. Stored keys the model no longer has are
    dropped (unless it keeps extra keys), so that a field removed from the model never blocks
    later changes. Raises ``InvalidInput`` as :func:`clean_profile` does, for instance when a
    required field is absent from both.
    """
    model = core.profile_model
    if model is None:
        raise InvalidInput(NO_PROFILE_FIELDS, field="profile")
    given = _partial(model, changes)
    keys = _keys(model)
    kept = dict(current or {})
    if model.model_config.get("extra") != "allow":
        kept = {key: value for key, value in kept.items() if key in keys.to_input}
    merged = {**kept, **given}
    raw = {keys.to_input.get(key, key): value for key, value in merged.items()}
    # Unknown nested keys are the change's fault only where the change put them: a stored
    # object from an older model is revalidated (and trimmed) without blocking the change.
    return _validated(model, raw, checked={keys.to_input.get(key, key) for key in given})


def _validated(
    model: type[BaseModel],
    value: Mapping[str, Any] | BaseModel,
    *,
    checked: set[str] | None = None,
) -> dict[str, Any]:
    """``value`` validated whole by ``model``, as stored. ``checked``: the top-level keys
    whose nested objects may not hold unknown keys (default: all)."""
    refuse_non_finite(value)
    if isinstance(value, model):
        # Built by the application itself, hence validated already.
        return _storable(value.model_dump(mode="json", by_alias=True))
    raw = _mapping(model, value)
    try:
        validated = _validator(model, strict_nested=False).validate_python(raw)
        nested = {key: item for key, item in raw.items() if checked is None or key in checked}
        _validator(model, strict_nested=True).validate_python(
            {**raw, **nested} if checked is None else _with_only(raw, nested)
        )
    except ValidationError as exc:
        problem = _first_problem(exc, given=None)
        assert problem is not None  # not partial: every error is a problem
        raise problem from None
    refuse_non_finite(validated)  # what the model's own validators made of the input
    return _storable(validated.model_dump(mode="json", by_alias=True))


def check_profile_change(core: Core, value: object) -> None:
    """Refuse, before any work, a ``PATCH``'s ``profile`` that no stored profile could make
    valid: null (send the fields to change instead), not an object, unknown or ill-typed
    fields. Raises ``InvalidInput`` as :func:`clean_profile` does."""
    if value is None:
        raise InvalidInput("profile cannot be null: send the fields to change", field="profile")
    # Anything else that is not a mapping or the model: clean_profile says what it must be.
    clean_profile(core, cast(Mapping[str, Any], value), partial=True)


def configured_profile_model(settings: Settings) -> type[BaseModel] | None:
    """The model ``AUTHDB_PROFILE_MODEL`` names (checked when the settings were read), or None."""
    return None if settings.profile_model is None else load_profile_model(settings.profile_model)


def load_profile_model(path: str) -> type[BaseModel]:
    """The Pydantic model named by ``"package.module:ClassName"`` (``AUTHDB_PROFILE_MODEL``).

    Raises ``ValueError`` with a one-line reason: malformed, not importable, no such
    attribute, or not a Pydantic model class.
    """
    module_name, sep, attribute = path.strip().partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not of the form package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the application's module while importing
        first_line = next(iter(str(exc).splitlines()), "")
        raise ValueError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {first_line}"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"module {module_name!r} has no {attribute!r}")
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise ValueError(f"{path!r} is not a Pydantic model class")
    return found


@cache
def _validating(model: type[BaseModel]) -> type[BaseModel]:
    """``model``, refusing unknown keys when it says nothing about them (Pydantic's default
    would drop them without a word, as ``/register`` once dropped ``company``)."""
    if model.model_config.get("extra") is not None:
        return model
    config: ConfigDict = {**model.model_config, "extra": "forbid"}
    return type(model.__name__, (model,), {"model_config": config, "__module__": model.__module__})


@cache
def _known_keys(model: type[BaseModel]) -> frozenset[str]:
    """Every key that can name one of ``model``'s fields: names and string aliases."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        keys.update(a for a in (field.alias, field.validation_alias) if isinstance(a, str))
    return frozenset(keys)


def _first_problem(exc: ValidationError, *, given: set[str] | None) -> InvalidInput | None:
    """The first error as InvalidInput naming its field; None if, in a partial check, every
    error is a required field that the change does not touch (or the model's own validator,
    which sees the whole profile only after the merge)."""
    for error in exc.errors():
        loc = error["loc"]
        if given is not None and (
            not loc or (error["type"] == "missing" and len(loc) == 1 and loc[0] not in given)
        ):
            continue
        path = ".".join(str(part) for part in ("profile", *loc))
        return InvalidInput(error["msg"], field=path)
    return None


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` if both databases store it as given; InvalidInput naming the place if not."""
    stack: list[tuple[Any, str]] = [(value, "profile")]
    while stack:  # iterative: the request body's depth is bounded, but not this function's input
        item, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput("must be a finite number", field=path)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidInput("keys must be strings", field=path)
                _check_text(key, f"{path}.{key}")
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}.{n}") for n, child in enumerate(item))
        elif item is not None and not isinstance(item, bool | int | float):
            raise InvalidInput(f"cannot be stored as JSON ({type(item).__name__})", field=path)
    return value


def _check_text(text: str, path: str) -> None:
    for char in text:
        if char in _ALLOWED_CONTROLS:
            continue
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(
                f"must not contain control characters (found U+{ord(char):04X})", field=path
            )
