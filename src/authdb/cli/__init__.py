"""The ``authdb`` command line. Commands are thin: they call the same services as the routes."""

from authdb.cli.main import app, main

__all__ = ["app", "main"]
