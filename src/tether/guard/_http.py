"""What the guard's HTTP endpoints share: admin-key auth, JSON bodies and errors.

Every guard endpoint (approvals, kills) is an admin endpoint: it takes an
admin virtual key (``tether keys create NAME --admin``) and refuses a model key
with 403, so no key an agent holds to call models can decide its own approvals
or stop other agents' runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import orjson

from tether.errors import StoreError
from tether.redaction import default_scrubber

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from tether.gateway.keys import KeyVerifier

MAX_BODY: Final = 64 * 1024
NEEDS_ADMIN: Final = "this needs an admin key: create one with tether keys create NAME --admin"


def answer(status: int, body: Any) -> Response:
    from starlette.responses import Response

    # Rows are scrubbed when written; this covers what a secret registered since then would show.
    content = default_scrubber().scrub_bytes(orjson.dumps(body))
    return Response(content, status_code=status, media_type="application/json")


def refuse(status: int, kind: str, message: str) -> Response:
    return answer(status, {"error": {"type": kind, "message": message}})


def secret_of(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def caller(request: Request, keys: KeyVerifier | None) -> str | Response:
    """Which admin key is asking (``key:<name>``, or ``http (no auth)``), or the 401/403/503 answer to send.

    No key, or an unknown or revoked one, is a 401; a valid model key is a 403.
    """
    if keys is None:
        return "http (no auth)"
    secret = secret_of(request)
    if secret is None:
        return refuse(
            401, "authentication_error", "missing API key: send a tether virtual key as 'Authorization: Bearer <key>'"
        )
    try:
        key = await keys.verify(secret)
    except StoreError as exc:
        # The error's text names the database's address: the log's, never the client's.
        logger.error("tether gateway: cannot verify a key: %s", exc)
        return refuse(503, "store_unavailable", "cannot verify the key: the key store is unavailable, retry")
    if key is None:
        return refuse(401, "authentication_error", "invalid API key: unknown or revoked tether virtual key")
    if not key.is_admin:
        return refuse(403, "permission_error", NEEDS_ADMIN)
    return f"key:{key.name}"


async def json_body(request: Request, *, empty_ok: bool = False) -> dict[str, Any] | Response:
    """The request's JSON object, or the 400/413 answer to send."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return refuse(413, "invalid_request", f"the body is larger than {MAX_BODY // 1024} KiB")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip() and empty_ok:
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return refuse(400, "invalid_request", "the body must be a JSON object")
    return data
