"""``/v1/approvals``: list approval requests and decide one (admin keys only)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tether.errors import StoreError
from tether.guard.approvals import ApprovalAlreadyDecided, ApprovalStatus, ApprovalStore, UnknownApproval
from tether.server.auth import admin_caller
from tether.server.http import answer, json_body, refuse

__all__ = ["approval_routes"]

logger = logging.getLogger(__name__)


def approval_routes(approvals: ApprovalStore, *, keys: Any = None, prefix: str = "/v1/approvals") -> list[Any]:
    """The approvals HTTP API, on the gateway's port with its virtual keys (``tether serve``).

    - ``GET  /v1/approvals[?status=pending|approved|denied|expired|all]`` → the requests, oldest first.
    - ``POST /v1/approvals/{id}/approve`` and ``…/deny`` with an optional ``{"reason": "…"}`` → 200 with the
      decided request; 404 for an unknown id; 409 when it was decided (or expired) already — a request is
      decided once.
    - Every one needs an admin virtual key (``tether keys create NAME --admin``): 401 without a valid key,
      403 for a model key — so the key a run calls models with can never decide that run's approvals.
      ``keys`` None accepts everyone (``--no-auth``, local development only). ``decided_by`` records the
      admin key's name (``key:<name>``).

    Args:
        approvals: where requests live.
        keys: a ``KeyVerifier`` (the gateway's virtual keys), or None.
        prefix: where to mount them.
    """
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def listing(request: Request) -> Response:
        who = await admin_caller(request, keys)
        if not isinstance(who, str):
            return who
        wanted = request.query_params.get("status", "pending")
        if wanted != "all" and wanted not in {s.value for s in ApprovalStatus}:
            return refuse(400, "invalid_request", "status must be pending, approved, denied, expired or all")
        status = None if wanted == "all" else ApprovalStatus(wanted)
        try:
            found = await asyncio.to_thread(approvals.list, status=status)
        except StoreError as exc:
            # The error names the database's host, port, user and name: the log's, never the client's.
            logger.error("GET %s: listing approvals failed: %s", prefix, exc)
            return refuse(503, "store_unavailable", "the approval store is unavailable: retry later")
        return answer(200, [a.to_json() for a in found])

    def deciding(approve: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            who = await admin_caller(request, keys)
            if not isinstance(who, str):
                return who
            body = await json_body(request, empty_ok=True)
            if not isinstance(body, dict):
                return body
            reason = body.get("reason", "")
            if not isinstance(reason, str) or set(body) - {"reason"}:
                return refuse(400, "invalid_request", 'the body may only hold {"reason": "..."}')
            try:
                decided = await asyncio.to_thread(
                    approvals.decide, request.path_params["approval_id"], approve=approve, by=who, reason=reason
                )
            except UnknownApproval as exc:
                return refuse(404, "not_found", str(exc))
            except ApprovalAlreadyDecided as exc:
                return refuse(409, "already_decided", str(exc))
            except StoreError as exc:
                logger.error("POST %s: deciding an approval failed: %s", request.url.path, exc)
                return refuse(503, "store_unavailable", "the approval store is unavailable: retry later")
            return answer(200, decided.to_json())

        return endpoint

    return [
        Route(prefix, listing, methods=["GET"]),
        Route(f"{prefix}/{{approval_id}}/approve", deciding(True), methods=["POST"]),
        Route(f"{prefix}/{{approval_id}}/deny", deciding(False), methods=["POST"]),
    ]
