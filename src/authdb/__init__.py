"""authdb: database-backed user authentication for FastAPI."""

from authdb.auth import Auth, SchemaOutOfDate
from authdb.settings import Settings

__all__ = ["Auth", "SchemaOutOfDate", "Settings"]
__version__ = "0.1.0"
