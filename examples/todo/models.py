"""The todo app's own tables.

They sit on authdb's metadata, so ``ForeignKey("users.id")`` finds authdb's ``users`` table;
the app's own Alembic migrations (``migrations/``) create them, never ``authdb migrate``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from authdb.db.schema import Base, User, UTCDateTime


def _now() -> datetime:
    return datetime.now(UTC)


class Todo(Base):
    """One todo, owned by one user; deleting the user deletes their todos (ON DELETE CASCADE)."""

    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # BIGINT like users.id. CASCADE is this app's choice: without it authdb refuses to delete
    # an account that still owns todos (409).
    owner_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE", name="fk_todos_owner_id_users"),
        index=True,
    )
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # authdb's type: an aware UTC datetime back on SQLite too (DateTime(timezone=True) gives
    # naive ones there); in the database the same column as DateTime(timezone=True).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    # authdb's User in a relationship: one way only, authdb's model is not touched.
    owner: Mapped[User] = relationship(lazy="raise")
