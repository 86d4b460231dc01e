"""``POST /v1/kill``: record a kill (admin keys only)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tether.errors import StoreError, UserError
from tether.guard.kill import KillStore, new_kill, one_target
from tether.server.auth import admin_caller
from tether.server.http import answer, json_body, refuse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.routing import Route

    from tether.gateway.keys import KeyVerifier

__all__ = ["kill_route"]

logger = logging.getLogger(__name__)


def kill_route(kills: KillStore, *, keys: KeyVerifier | None, path: str = "/v1/kill") -> Route:
    """``POST /v1/kill``: record a kill; every switch on the database acts on it within a poll.

    With a ``KillStore`` given ``redis_url`` (``tether serve`` makes one
    when ``[gateway] redis_url`` is set), the kill is also published on Redis
    and switches listening there act on it at once.

    Body: ``{"run_id": "…"}``, ``{"agent": "…"}`` or ``{"all": true}``, with an
    optional ``"reason"``. Answers 202 with the kill (``id``, ``target_kind``,
    ``target``, ``reason``, ``requested_by``, ``created_at``); 400 for a bad
    body; 401 without a valid virtual key and 403 for a model key (when
    ``keys`` is given: it needs an admin key, ``tether keys create NAME
    --admin``, as ``Authorization: Bearer`` or ``x-api-key``) — an agent's key
    cannot stop other agents' runs; 503 when the database fails.

    Args:
        kills: where kills are recorded.
        keys: verifies virtual keys; None accepts every request (``--no-auth``, local development only).
        path: where to mount it.
    """
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        requested_by = await admin_caller(request, keys)
        if not isinstance(requested_by, str):
            return requested_by
        data = await json_body(request)
        if not isinstance(data, dict):
            if data.status_code != 400:
                return data
            return refuse(
                400,
                "invalid_request",
                'the body must be a JSON object: {"run_id": "..."}, {"agent": "..."} or {"all": true}, '
                'with an optional "reason"',
            )
        unknown = sorted(set(data) - {"run_id", "agent", "all", "reason"})
        if unknown:
            return refuse(
                400, "invalid_request", f"unknown field(s) {', '.join(unknown)}: use run_id, agent or all, and reason"
            )
        run_id, agent, all_runs, reason = (
            data.get("run_id"),
            data.get("agent"),
            data.get("all", False),
            data.get("reason"),
        )
        for name, value in (("run_id", run_id), ("agent", agent), ("reason", reason)):
            if value is not None and not isinstance(value, str):
                return refuse(400, "invalid_request", f"{name} must be a string")
        if not isinstance(all_runs, bool):
            return refuse(400, "invalid_request", "all must be true or false")
        try:
            kind, target = one_target(run_id=run_id, agent=agent, all_runs=all_runs)
            kill = new_kill(kind, target, reason, requested_by)
        except UserError as exc:
            return refuse(400, "invalid_request", str(exc))
        try:
            ended = await asyncio.to_thread(kills.add, kill)
        except StoreError as exc:
            logger.error("POST %s: could not record a kill of %s: %s", path, kill.what, exc)
            # The error names the database's address: the log's (above), never the client's.
            return refuse(503, "store_unavailable", "the kill could not be recorded: the store is unavailable, retry")
        # The queued and parked runs it ended at once; running ones stop as their workers hear of it.
        return answer(202, {**kill.to_dict(), "ended_waiting": ended})

    return Route(path, endpoint, methods=["POST"])
