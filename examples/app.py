"""authdb mounted into your own FastAPI application.

Run it:  AUTHDB_SECRET_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(48))") \\
         uvicorn examples.app:app --reload
then open http://127.0.0.1:8000/register (or create a user from the shell with
`AUTHDB_DATABASE_URL=sqlite+aiosqlite:///./app.db authdb createuser --username alice
--email alice@example.com`), sign in at http://127.0.0.1:8000/login?next=/items, or use the API
at http://127.0.0.1:8000/docs. The app's database is APP_DATABASE_URL (default ./app.db).
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI

from authdb import Auth, Settings
from authdb.db.models import User

auth = Auth(
    Settings(database_url=os.environ.get("APP_DATABASE_URL", "sqlite+aiosqlite:///./app.db"))
)
app = FastAPI(title="My app", lifespan=auth.lifespan)
# The hosted pages (/login, /register, /account...) first: their form posts share some paths
# with the API. Signed in through /login, a browser reaches /items with its session cookie.
app.include_router(auth.pages_router)
app.include_router(auth.router)

CurrentUser = Annotated[User, Depends(auth.current_active_user)]
Superuser = Annotated[User, Depends(auth.current_superuser)]


@app.get("/items")
async def items(user: CurrentUser) -> dict[str, object]:
    """Only signed-in, active users see their items."""
    return {"owner": user.username, "items": ["apple", "pear"]}


@app.get("/admin/stats")
async def stats(user: Superuser) -> dict[str, str]:
    """Superusers only; everyone else gets 403."""
    return {"checked_by": user.username}
