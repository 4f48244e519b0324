"""Naming devices from their User-Agent: see ``authdb.devices`` (kept here for the routes)."""

from __future__ import annotations

from authdb.devices import device_name, recognised_device

__all__ = ["device_name", "recognised_device"]
