"""``build_app``: tether's one ASGI app, from the settings and the parts it serves.

Mounted on one port::

    model API   POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic), GET /v1/models
    admin API   POST /v1/kill, GET /v1/approvals, POST /v1/approvals/{id}/approve|deny, GET /v1/incidents
                (admin keys only)
    ops         GET /healthz (liveness), /readyz (the store and Redis answered), /metrics (Prometheus)
    console     (to come) mounted under /console, through ``ServerParts.extra_routes``

Unknown paths and wrong methods answer 404 / 405 in the API's JSON error format (Anthropic's
under ``/v1/messages``, OpenAI's elsewhere). The model API is ``tether.server.proxy``; the
admin handlers are ``tether.server.admin`` (approvals, kills, incidents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer
    from starlette.routing import BaseRoute

    from tether.config import Settings
    from tether.gateway.gateway import Gateway
    from tether.gateway.keys import KeyVerifier
    from tether.guard.approvals import ApprovalStore
    from tether.guard.kill import KillStore
    from tether.server.proxy import ProxyApp
    from tether.store import TraceStore

__all__ = ["ServerParts", "build_app"]


@dataclass(frozen=True, slots=True)
class ServerParts:
    """What the server serves; each is built (and closed) by whoever owns it (``tether.server.run``).

    Attributes:
        store: the store (probed by ``/readyz``).
        gateway: every model call goes through it.
        keys: verifies virtual keys; None only with ``no_auth``.
        approvals: the approval requests ``/v1/approvals`` lists and decides.
        kills: where ``POST /v1/kill`` records a kill.
        tracer: where the ``chat`` spans go (OpenTelemetry's global tracer when None).
        no_auth: accept requests without a key, on the admin endpoints too (local development).
        extra_routes: more endpoints on the same port (the console's place).
    """

    store: TraceStore
    gateway: Gateway
    keys: KeyVerifier | None
    approvals: ApprovalStore
    kills: KillStore
    tracer: Tracer | None = None
    no_auth: bool = False
    extra_routes: Sequence[BaseRoute] = field(default_factory=tuple)


def build_app(settings: Settings, parts: ServerParts) -> ProxyApp:
    """The ASGI app serving ``parts``; see the module docstring.

    Raises:
        ConfigError: keys are required (``no_auth`` is False) but ``parts.keys`` is None.
    """
    from tether.guard.audit import GuardStore
    from tether.server.admin.approvals import approval_routes
    from tether.server.admin.incidents import incidents_route
    from tether.server.admin.kills import kill_route
    from tether.server.proxy import create_app

    del settings  # the gateway carries the configuration it was built from; kept for the console and workers
    keys = None if parts.no_auth else parts.keys
    return create_app(
        parts.gateway,
        keys=keys,
        require_keys=not parts.no_auth,
        tracer=parts.tracer,
        # Kills and approvals take admin keys only (checked in each route; none with no_auth).
        extra_routes=[
            kill_route(parts.kills, keys=keys),
            *approval_routes(parts.approvals, keys=keys),
            incidents_route(GuardStore(parts.store), keys=keys),
            *parts.extra_routes,
        ],
        store=parts.store,
    )
