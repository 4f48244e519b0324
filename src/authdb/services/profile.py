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
  turn an infinity in an ``Any`` or extra field into null); nor may objects and arrays nest
  deeper than ``MAX_DEPTH``.
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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
    WrapValidator,
)

from authdb.errors import InvalidInput

if TYPE_CHECKING:
    from authdb.services.core import Core
    from authdb.settings import Settings

NO_PROFILE_FIELDS = "This service has no profile fields"
# Tab and line breaks are ordinary in an address or a biography; every other control is not.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Objects and arrays within a profile: far beyond any form, well within what Pydantic dumps.
MAX_DEPTH = 64


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
    later changes; so are unknown keys inside stored nested objects (the change itself may
    hold none). Raises ``InvalidInput`` as :func:`clean_profile` does, for instance when a
    required field is absent from both.
    """
    model = core.profile_model
    if model is None:
        raise InvalidInput(NO_PROFILE_FIELDS, field="profile")
    given = _partial(model, changes)  # its keys by alias, its values as given
    keys = _keys(model)
    kept = dict(current or {})
    if model.model_config.get("extra") != "allow":
        kept = {key: value for key, value in kept.items() if key in keys.to_input}
    merged = {**kept, **given}
    raw = {keys.to_input.get(key, key): value for key, value in merged.items()}
    return _validated(model, raw, checked={keys.to_input.get(key, key) for key in given})


def _partial(model: type[BaseModel], value: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """The keys of ``value`` in the stored form, with their values as given, once they pass
    the model (absent required fields aside)."""
    _refuse_non_finite(value)
    if isinstance(value, model):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw = _mapping(model, value)
    try:
        _validating(model).model_validate(raw)
    except ValidationError as exc:
        problem = _first_problem(exc, given=set(raw))
        if problem is not None:
            raise problem from None
    to_stored = _keys(model).to_stored
    return {to_stored.get(key, key): item for key, item in raw.items()}


def _validated(
    model: type[BaseModel],
    value: Mapping[str, Any] | BaseModel,
    *,
    checked: Collection[str] | None = None,
) -> dict[str, Any]:
    """``value`` validated whole by ``model``, as stored. ``checked``: the top-level keys whose
    nested objects may not hold unknown keys (default: all); a stored nested object from an
    older model is trimmed instead, as Pydantic does."""
    _refuse_non_finite(value)
    if isinstance(value, model):
        # Built by the application itself, hence validated already.
        return _storable(value.model_dump(mode="json", by_alias=True))
    raw = _mapping(model, value)
    try:
        validated = _validating(model).model_validate(raw)
    except ValidationError as exc:
        problem = _first_problem(exc, given=None)
        raise problem or InvalidInput("refused by the profile model", field="profile") from None
    given = raw if checked is None else {k: v for k, v in raw.items() if k in checked}
    _refuse_unknown_nested_keys(validated, given)
    _refuse_non_finite(validated)  # what the model's own validators made of the input
    return _storable(validated.model_dump(mode="json", by_alias=True))


def _mapping(model: type[BaseModel], value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidInput(
            f"profile must be an object with the fields of {model.__name__}", field="profile"
        )
    return dict(value)


def check_profile_change(core: Core, value: object) -> None:
    """Refuse, before any work, a ``PATCH``'s ``profile`` that no stored profile could make
    valid: null (send the fields to change instead), not an object, unknown or ill-typed
    fields. Raises ``InvalidInput`` as :func:`clean_profile` does."""
    if value is None:
        raise InvalidInput("profile cannot be null: send the fields to change", field="profile")
    model = core.profile_model
    if model is None:
        raise InvalidInput(NO_PROFILE_FIELDS, field="profile")
    # Anything else that is not a mapping or the model: _partial says what it must be.
    _partial(model, cast(Mapping[str, Any], value))


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
    would drop them without a word, as ``/register`` once dropped ``company``). Nested models
    get the same rule from :func:`_refuse_unknown_nested_keys`."""
    if model.model_config.get("extra") is not None:
        return model
    config: ConfigDict = {**model.model_config, "extra": "forbid"}
    return type(model.__name__, (model,), {"model_config": config, "__module__": model.__module__})


def _refuse_unknown_nested_keys(validated: BaseModel, raw: Mapping[str, Any]) -> None:
    """InvalidInput naming the first key of ``raw`` (the input ``validated`` was made from)
    that a nested model without an ``extra`` setting dropped.

    The validated tree says which model each nested object became (whatever the union or
    container); the raw tree says which keys were sent. Where a model's or a field's own
    ``before``/``wrap``/``plain`` validator reshapes the input, its keys are its business."""
    stack: list[tuple[object, object, str]] = [(validated, raw, "profile")]
    while stack:
        item, given, path = stack.pop()
        if isinstance(item, BaseModel):
            cls = type(item)
            if not isinstance(given, Mapping) or _reshapes(cls, None):
                continue  # an instance the application built, or its validator's business
            names = _keys(cls).to_name
            refuse = cls.model_config.get("extra") is None
            for key, child in given.items():
                name = names.get(key)
                if name is None and refuse:
                    raise InvalidInput("Extra inputs are not permitted", field=f"{path}.{key}")
                if name is not None and not _reshapes(cls, name):
                    stack.append((getattr(item, name, None), child, f"{path}.{key}"))
        elif isinstance(item, list | tuple) and isinstance(given, list | tuple):
            if len(item) == len(given):
                pairs = zip(item, given, strict=True)
                stack.extend((a, b, f"{path}.{n}") for n, (a, b) in enumerate(pairs))
        elif isinstance(item, dict) and isinstance(given, Mapping) and len(item) == len(given):
            pairs_by_key = zip(item.values(), given.items(), strict=True)
            stack.extend((a, b, f"{path}.{key}") for a, (key, b) in pairs_by_key)


@cache
def _reshapes(cls: type[BaseModel], field: str | None) -> bool:
    """Whether a validator of ``cls`` (``field`` None) or of its ``field`` sees the raw input."""
    decorators = cls.__pydantic_decorators__
    if field is None:
        return any(d.info.mode in ("before", "wrap") for d in decorators.model_validators.values())
    if any(
        d.info.mode != "after" and (field in d.info.fields or "*" in d.info.fields)
        for d in decorators.field_validators.values()
    ):
        return True
    metadata = cls.model_fields[field].metadata
    return any(isinstance(m, BeforeValidator | WrapValidator | PlainValidator) for m in metadata)


@dataclass(frozen=True)
class _Keys:
    # Each key that validation takes for a field -> the key the model dumps it under.
    to_stored: dict[str, str]
    # Each dumped key -> a key that validation takes for the same field.
    to_input: dict[str, str]
    # Each key that validation takes for a field -> the field's name.
    to_name: dict[str, str]


@cache
def _keys(model: type[BaseModel]) -> _Keys:
    """How ``model`` names its fields going in (names, aliases) and coming out (by alias)."""
    config = model.model_config
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    by_alias = config.get("validate_by_alias", True)
    to_stored: dict[str, str] = {}
    to_input: dict[str, str] = {}
    to_name: dict[str, str] = {}
    for name, field in model.model_fields.items():
        stored = field.serialization_alias or field.alias or name
        aliases: list[str] = []
        if isinstance(field.validation_alias, str):
            aliases = [field.validation_alias]
        elif isinstance(field.validation_alias, AliasChoices):
            aliases = [a for a in field.validation_alias.choices if isinstance(a, str)]
        elif field.validation_alias is None and field.alias is not None:
            aliases = [field.alias]
        accepted = aliases if by_alias else []
        if by_name or not by_alias or (field.validation_alias is None and field.alias is None):
            accepted = [*accepted, name]
        for key in accepted:
            to_stored[key] = stored
            to_name[key] = name
        if accepted:
            to_input[stored] = stored if stored in accepted else accepted[0]
    return _Keys(to_stored, to_input, to_name)


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


def _refuse_non_finite(value: object) -> None:
    """InvalidInput naming the place of the first infinity or NaN in ``value``: raw input
    (mappings, sequences, sets) or a model instance, at any depth; or of nesting deeper than
    ``MAX_DEPTH`` (Pydantic cannot dump it, and a cycle never ends). Every path checks the
    input before validation: Pydantic dumps a non-finite number in an ``Any`` or extra field
    as null, which would store something other than what was sent."""
    stack: list[tuple[object, str, int]] = [(value, "profile", 0)]
    while stack:  # iterative: the library's input has no depth bound
        item, path, depth = stack.pop()
        if isinstance(item, float | Decimal):
            if not item.is_finite() if isinstance(item, Decimal) else not math.isfinite(item):
                raise InvalidInput("must be a finite number", field=path)
            continue
        if isinstance(item, BaseModel):
            children: Iterable[tuple[object, object]] = {
                **vars(item),
                **(item.__pydantic_extra__ or {}),
            }.items()
        elif isinstance(item, Mapping):
            children = item.items()
        elif isinstance(item, list | tuple | set | frozenset):
            children = enumerate(item)
        else:
            continue
        if depth >= MAX_DEPTH:
            raise InvalidInput(f"must not nest deeper than {MAX_DEPTH} levels", field=path)
        stack.extend((child, f"{path}.{key}", depth + 1) for key, child in children)


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    """What to store for ``value`` so that SQLite and PostgreSQL read back the same;
    InvalidInput naming the place if either cannot store it.

    PostgreSQL's jsonb keeps a number as the decimal its JSON text spells, and sorts keys:
    a float of 1e16 or more (spelled ``1e+16``) comes back an integer, ``-0.0`` as ``0.0``. So
    such a float becomes that integer here, and keys take jsonb's order, on both databases."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, str]] = [(value, root, 0, "profile")]
    while stack:  # iterative: the request body's depth is bounded, but not this function's input
        item, parent, slot, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            item = int(item)
        elif isinstance(item, float):
            item = _as_both_read_it(item, path)
        elif isinstance(item, Mapping):
            for key in item:
                if not isinstance(key, str):
                    raise InvalidInput("keys must be strings", field=path)
                _check_text(key, f"{path}.{key}")
            # Keys in jsonb's order: filled in later, a dict keeps its first order.
            keys = sorted(item, key=_jsonb_key_order)
            mapping_copy: dict[str, Any] = dict.fromkeys(keys)
            stack.extend((item[key], mapping_copy, key, f"{path}.{key}") for key in keys)
            item = mapping_copy
        elif isinstance(item, list | tuple):
            items_copy: list[Any] = [None] * len(item)
            stack.extend((child, items_copy, n, f"{path}.{n}") for n, child in enumerate(item))
            item = items_copy
        else:
            raise InvalidInput(f"cannot be stored as JSON ({type(item).__name__})", field=path)
        parent[slot] = item
    stored: dict[str, Any] = root[0]
    return stored


def _as_both_read_it(number: float, path: str) -> float | int:
    if not math.isfinite(number):
        raise InvalidInput("must be a finite number", field=path)
    if number == 0:
        return 0.0  # jsonb's numeric has no negative zero
    if abs(number) >= 1e16:
        # json spells it with an exponent (1e+16), which jsonb reads as an exact integer.
        return int(Decimal(repr(number)))
    return number


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode("utf-8", "surrogatepass")
    return len(encoded), encoded


def _check_text(text: str, path: str) -> None:
    for char in text:
        if char in _ALLOWED_CONTROLS:
            continue
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidInput(
                f"must not contain control characters (found U+{ord(char):04X})", field=path
            )
