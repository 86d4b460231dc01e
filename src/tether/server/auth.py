"""The one key check of tether's server: the key header, verification, and the ``model`` / ``admin`` scopes.

A key comes as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; ``KeyVerifier.verify`` says
whose it is. ``model`` keys call routes; ``admin`` keys decide approvals and kills and list incidents —
and refuse to call models, so the key a run calls models with can never decide that run's approvals.
``keys=None`` is ``--no-auth`` (local development): everyone is accepted.

(The model API's hot path, ``tether.gateway.proxy``, reads the same two headers from the raw ASGI
scope without building a ``Request``; it moves here with the proxy.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from tether.errors import StoreError
from tether.server.http import refuse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from tether.gateway.keys import KeyVerifier

__all__ = ["NEEDS_ADMIN", "NO_AUTH_CALLER", "admin_caller", "secret_of"]

logger = logging.getLogger(__name__)

NEEDS_ADMIN: Final = "this needs an admin key: create one with tether keys create NAME --admin"
#: Who is recorded as deciding or killing when auth is off.
NO_AUTH_CALLER: Final = "http (no auth)"


def secret_of(request: Request) -> str | None:
    """The key the request presents (``Authorization: Bearer`` first, then ``x-api-key``), or None."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def admin_caller(request: Request, keys: KeyVerifier | None) -> str | Response:
    """Which admin key is asking (``key:<name>``, or ``http (no auth)``), or the 401/403/503 answer to send.

    No key, or an unknown or revoked one, is a 401; a valid model key is a 403.
    """
    if keys is None:
        return NO_AUTH_CALLER
    secret = secret_of(request)
    if secret is None:
        return refuse(
            401, "authentication_error", "missing API key: send a tether virtual key as 'Authorization: Bearer <key>'"
        )
    try:
        key = await keys.verify(secret)
    except StoreError as exc:
        # The error's text names the database's address: the log's, never the client's.
        logger.error("tether server: cannot verify a key: %s", exc)
        return refuse(503, "store_unavailable", "cannot verify the key: the key store is unavailable, retry")
    if key is None:
        return refuse(401, "authentication_error", "invalid API key: unknown or revoked tether virtual key")
    if not key.is_admin:
        return refuse(403, "permission_error", NEEDS_ADMIN)
    return f"key:{key.name}"
