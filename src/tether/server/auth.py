"""The one key check of tether's server: the key header, verification, and the ``model`` / ``admin`` scopes.

A key comes as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; ``KeyVerifier.verify`` says
whose it is. ``model`` keys call routes; ``admin`` keys decide approvals and kills and list incidents —
and refuse to call models, so the key a run calls models with can never decide that run's approvals.
``keys=None`` is ``--no-auth`` (local development): everyone is accepted.

(The model API's hot path, ``tether.server.proxy``, reads the same two headers from the raw ASGI
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

    from tether.gateway.keys import KeyVerifier, VirtualKey

__all__ = ["NEEDS_ADMIN", "NO_AUTH_CALLER", "admin_caller", "model_key", "presented_key", "secret_of"]

logger = logging.getLogger(__name__)

NEEDS_ADMIN: Final = "this needs an admin key: create one with tether keys create NAME --admin"
#: Who is recorded as deciding or killing when auth is off.
NO_AUTH_CALLER: Final = "http (no auth)"


def presented_key(authorization: str | None, api_key: str | None, *, x_api_key_first: bool = False) -> str | None:
    """The key a request presents in ``Authorization: Bearer`` or ``x-api-key``, or None.

    ``x_api_key_first``: the Anthropic wire's own header wins (its SDKs send ``x-api-key``);
    elsewhere the bearer token does.
    """
    bearer = None
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            bearer = token
    first, second = (api_key, bearer) if x_api_key_first else (bearer, api_key)
    return first or second or None


def secret_of(request: Request) -> str | None:
    """The key the request presents (``Authorization: Bearer`` first, then ``x-api-key``), or None."""
    return presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))


async def model_key(keys: KeyVerifier, secret: str | None) -> VirtualKey | tuple[int, str]:
    """The ``model`` key calling a route, or the (status, message) to refuse with: 401 or, for an admin key, 403.

    Admin keys decide approvals and kills; one that could also call models would let a run's own key
    approve that run. (The scope is part of the cached key: no extra lookup.) A ``KeyStore`` bounds its
    own database lookups (``lookup_timeout_s``); a cache hit pays for no timer.
    """
    if secret is None:
        return 401, (
            "missing API key: send your tether virtual key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        )
    key = await keys.verify(secret)
    if key is None:
        return 401, "invalid API key: this tether virtual key is unknown or has been revoked"
    if key.is_admin:
        return 403, (
            "this is an admin key: it decides approvals and kills but cannot call models — "
            "use a model key (tether keys create NAME --route ROUTE)"
        )
    return key


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
