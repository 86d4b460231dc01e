"""tether — the control plane for LLM agents in production.

Every run traced, budgeted, bounded and evaluated. The public API is what this
module exports; everything else is reached through it. ``tether.open()`` is the
way in: it wires the store, tracing, gateway, guard, kill switch and agents from
``tether.toml`` (see ``tether.app``).
"""

# The names below are imported on first use (PEP 562), not when ``tether`` is: importing the whole API
# costs over a second (SQLAlchemy, pydantic models, OpenTelemetry, price data), and every ``tether``
# command, ``tether kill`` in the middle of an incident included, would pay it before doing anything.
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    __version__: str

    from tether.app import Tether, open
    from tether.config import GatewayConfig, Settings, load_settings
    from tether.errors import (
        BudgetExceeded,
        ConfigError,
        GatewayError,
        MalformedResponseError,
        ModelConnectionError,
        ModelError,
        ModelHTTPError,
        ModelTimeoutError,
        NoDeploymentAvailable,
        RateLimited,
        StoreError,
        StoreUnavailable,
        StreamInterrupted,
        TetherError,
        ToolDefinitionError,
        UnknownModelError,
        UnknownPriceError,
        UnknownRouteError,
        UserError,
    )
    from tether.gateway.gateway import CallContext, Gateway, GatewayModel
    from tether.guard.approvals import ApprovalStore
    from tether.guard.audit import StoreGuardRecorder
    from tether.guard.credentials import CredentialBroker
    from tether.guard.detectors import RuleScanner
    from tether.guard.durable import DurableRuns
    from tether.guard.guard import Guard
    from tether.guard.kill import KillSwitch
    from tether.guard.policy import AgentPolicy, Policy, ToolRule
    from tether.messages import (
        FinishReason,
        Message,
        ModelRequest,
        ModelResponse,
        StopReason,
        TextBlock,
        ToolCall,
        ToolResult,
        ToolResultBlock,
        ToolSpec,
        ToolUseBlock,
        Usage,
    )
    from tether.models import Model, ProviderConfig, resolve_model
    from tether.pricing import Cost, PriceRef, price_usage
    from tether.runtime import Agent, Limits, RunResult, RunState, Tool, ToolContext, tool
    from tether.store import TraceStore, open_store
    from tether.trace.setup import Tracing, configure_tracing

__all__ = [
    "Tether",
    "open",
    "Agent",
    "AgentPolicy",
    "ApprovalStore",
    "CredentialBroker",
    "DurableRuns",
    "Guard",
    "KillSwitch",
    "Policy",
    "RuleScanner",
    "StoreGuardRecorder",
    "ToolRule",
    "BudgetExceeded",
    "CallContext",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewayModel",
    "NoDeploymentAvailable",
    "RateLimited",
    "UnknownPriceError",
    "UnknownRouteError",
    "ConfigError",
    "Cost",
    "FinishReason",
    "Limits",
    "MalformedResponseError",
    "Message",
    "Model",
    "ModelConnectionError",
    "ModelError",
    "ModelHTTPError",
    "ModelRequest",
    "ModelResponse",
    "ModelTimeoutError",
    "PriceRef",
    "ProviderConfig",
    "RunResult",
    "RunState",
    "Settings",
    "StopReason",
    "StoreError",
    "StoreUnavailable",
    "StreamInterrupted",
    "TetherError",
    "TextBlock",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolDefinitionError",
    "ToolResult",
    "ToolResultBlock",
    "ToolSpec",
    "ToolUseBlock",
    "TraceStore",
    "Tracing",
    "UnknownModelError",
    "Usage",
    "UserError",
    "configure_tracing",
    "load_settings",
    "open_store",
    "price_usage",
    "resolve_model",
    "tool",
    "__version__",
]

# Where each public name lives: ``tether.X`` imports the module on first access and keeps the value.
_MODULES: dict[str, tuple[str, ...]] = {
    "tether.app": ("Tether", "open"),
    "tether.config": ("GatewayConfig", "Settings", "load_settings"),
    "tether.errors": (
        "BudgetExceeded",
        "ConfigError",
        "GatewayError",
        "MalformedResponseError",
        "ModelConnectionError",
        "ModelError",
        "ModelHTTPError",
        "ModelTimeoutError",
        "NoDeploymentAvailable",
        "RateLimited",
        "StoreError",
        "StoreUnavailable",
        "StreamInterrupted",
        "TetherError",
        "ToolDefinitionError",
        "UnknownModelError",
        "UnknownPriceError",
        "UnknownRouteError",
        "UserError",
    ),
    "tether.pricing": ("Cost", "PriceRef", "price_usage"),
    "tether.gateway.gateway": ("CallContext", "Gateway", "GatewayModel"),
    "tether.guard.approvals": ("ApprovalStore",),
    "tether.guard.audit": ("StoreGuardRecorder",),
    "tether.guard.credentials": ("CredentialBroker",),
    "tether.guard.detectors": ("RuleScanner",),
    "tether.guard.durable": ("DurableRuns",),
    "tether.guard.guard": ("Guard",),
    "tether.guard.kill": ("KillSwitch",),
    "tether.guard.policy": ("AgentPolicy", "Policy", "ToolRule"),
    "tether.messages": (
        "FinishReason",
        "Message",
        "ModelRequest",
        "ModelResponse",
        "StopReason",
        "TextBlock",
        "ToolCall",
        "ToolResult",
        "ToolResultBlock",
        "ToolSpec",
        "ToolUseBlock",
        "Usage",
    ),
    "tether.models": ("Model", "ProviderConfig", "resolve_model"),
    "tether.runtime": ("Agent", "Limits", "RunResult", "RunState", "Tool", "ToolContext", "tool"),
    "tether.store": ("TraceStore", "open_store"),
    "tether.trace.setup": ("Tracing", "configure_tracing"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}


# Hidden from type checkers, which see the imports above instead: a visible module ``__getattr__``
# would make them accept any name, ``tether.Gatway`` included.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name == "__version__":
            from importlib.metadata import version

            value = version("tether")
        elif name in _EXPORTS:
            value = getattr(importlib.import_module(_EXPORTS[name]), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # later lookups find it without coming here again
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
