"""The library's public API: ``authdb.__all__`` resolves, is documented and typed."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest

import authdb


@pytest.mark.parametrize("name", authdb.__all__)
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(authdb, name)
    if name == "EVENTS":
        assert "user_registered" in value and "mfa_disabled" in value
        return
    assert inspect.getdoc(value), f"authdb.{name} has no docstring"


def test_public_callables_are_fully_typed() -> None:
    """Every parameter and return of the public classes' public methods has a type."""
    for name in authdb.__all__:
        value = getattr(authdb, name)
        if not inspect.isclass(value) or typing.get_origin(value) is not None:
            continue
        for attribute, member in vars(value).items():
            if attribute.startswith("_") and attribute != "__init__":
                continue
            function = inspect.unwrap(member) if callable(member) else None
            if function is None or not inspect.isfunction(function):
                continue
            signature = inspect.signature(function)
            for parameter in list(signature.parameters.values())[1:]:
                if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    continue
                assert parameter.annotation is not inspect.Parameter.empty, (
                    f"{name}.{attribute}({parameter.name}) has no type"
                )
            assert signature.return_annotation is not inspect.Signature.empty or (
                attribute == "__init__"
            ), f"{name}.{attribute} has no return type"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        authdb.Nope  # noqa: B018


def test_importing_authdb_loads_no_database_layer() -> None:
    """``import authdb`` stays light: other services verify tokens without SQLAlchemy."""
    code = "import sys, authdb; print('sqlalchemy' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
