"""Response hardening for the standalone service (placeholder, filled by the abuse work)."""

from fastapi import FastAPI

from authdb.settings import Settings


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add authdb's middleware to the service application."""
