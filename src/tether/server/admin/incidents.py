"""``GET /v1/incidents``: the incidents the guard stored, newest first (admin keys only)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tether.errors import StoreError
from tether.server.auth import admin_caller
from tether.server.http import answer, refuse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tether.gateway.keys import KeyVerifier
    from tether.guard.audit import GuardStore

__all__ = ["incidents_route"]

logger = logging.getLogger(__name__)

_MAX_LIMIT = 1000


def incidents_route(guard: GuardStore, *, keys: KeyVerifier | None, path: str = "/v1/incidents") -> Route:
    """``GET /v1/incidents[?status=open|released|all][&agent=NAME][&limit=N]``: incidents as JSON, newest first.

    ``status`` defaults to ``open``; ``limit`` to 100 (at most 1,000). 400 for a bad query, 401/403 without
    an admin key (when ``keys`` is given), 503 when the store fails.
    """
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        who = await admin_caller(request, keys)
        if not isinstance(who, str):
            return who
        query = request.query_params
        unknown = sorted(set(query) - {"status", "agent", "limit"})
        if unknown:
            return refuse(
                400, "invalid_request", f"unknown parameter(s) {', '.join(unknown)}: use status, agent, limit"
            )
        wanted = query.get("status", "open")
        if wanted not in {"open", "released", "all"}:
            return refuse(400, "invalid_request", "status must be open, released or all")
        raw_limit = query.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MAX_LIMIT:
            return refuse(400, "invalid_request", f"limit must be a whole number from 1 to {_MAX_LIMIT}")
        try:
            found = await asyncio.to_thread(
                guard.incidents,
                agent=query.get("agent"),
                status=None if wanted == "all" else wanted,
                limit=int(raw_limit),
            )
        except StoreError as exc:
            # The error names the database's address: the log's, never the client's.
            logger.error("GET %s: listing incidents failed: %s", path, exc)
            return refuse(503, "store_unavailable", "the incident store is unavailable: retry later")
        return answer(200, [incident.to_dict() for incident in found])

    return Route(path, endpoint, methods=["GET"])
