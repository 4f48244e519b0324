"""The baseline for ``bench_users_me.py``: a bare FastAPI app whose ``GET /users/me`` decodes a JWT.

It verifies the very token that authdb issued (same key, algorithm, issuer, audience and required
claims) and answers a small JSON user without touching any database: the floor that authdb's
``/users/me`` is compared with. Configured from the same ``AUTHDB_*`` variables as authdb::

    AUTHDB_SECRET_KEY=... python -m uvicorn --app-dir bench bare_app:app --no-access-log
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer

SECRET_KEY = os.environ["AUTHDB_SECRET_KEY"]
ISSUER = os.environ.get("AUTHDB_JWT_ISSUER", "authdb")
AUDIENCE = os.environ.get("AUTHDB_JWT_AUDIENCE", "authdb")
REQUIRED_CLAIMS = ["sub", "exp", "iat", "jti", "iss", "aud", "sid"]

app = FastAPI(title="bare JWT app")
bearer = OAuth2PasswordBearer(tokenUrl="token")


async def current_user_id(token: Annotated[str, Depends(bearer)]) -> int:
    try:
        claims = jwt.decode(
            token,
            SECRET_KEY,
            algorithms=["HS256"],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": REQUIRED_CLAIMS},
        )
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise HTTPException(
            401, "Could not validate credentials", headers={"WWW-Authenticate": "Bearer"}
        ) from exc


@app.get("/users/me")
async def read_me(user_id: Annotated[int, Depends(current_user_id)]) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": "bench",
        "email": "bench@example.com",
        "full_name": None,
        "disabled": False,
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
