"""Which parts of authdb an application mounts: ``Auth(..., features={"admin": False})``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Features:
    """Each flag says whether its routes (and pages) are mounted; all are on by default.

    ``oauth``: sign-in with other providers (``/oauth/...`` and the ``/account`` section),
    which also needs AUTHDB_OAUTH_PROVIDERS and the pages.
    """

    register: bool = True
    admin: bool = True
    pages: bool = True
    mfa: bool = True
    passkeys: bool = True
    oauth: bool = True

    @classmethod
    def from_mapping(cls, flags: Mapping[str, bool] | None) -> Features:
        """Features from ``{"name": bool}``; an unknown name or a non-bool value raises
        ValueError naming it and the known names."""
        if not flags:
            return cls()
        known = [f.name for f in fields(cls)]
        for name, value in flags.items():
            if name not in known:
                raise ValueError(f"unknown authdb feature {name!r}; known: {', '.join(known)}")
            if not isinstance(value, bool):
                raise ValueError(f"authdb feature {name!r} must be True or False, not {value!r}")
        return cls(**dict(flags))
