"""The admin surface: a JSON API and a server-rendered page, behind the admin token."""

from __future__ import annotations

from starlette.routing import BaseRoute

from receiver.web.admin import backfills, failures, sync_settings, sync_settings_page
from receiver.web.admin.api import api_routes
from receiver.web.admin.page import page_routes


def admin_routes() -> list[BaseRoute]:
    """Routes under ``/admin``: the JSON API and the event-log page."""
    return [
        *api_routes(),
        *page_routes(),
        *sync_settings.routes(),
        *failures.routes(),
        *sync_settings_page.routes(),
        *backfills.backfill_routes(),
    ]
