"""Placeholder: routes for this surface are being written."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register this surface's routes."""
