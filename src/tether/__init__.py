"""tether — the control plane for LLM agents in production.

Every run traced, budgeted, bounded and evaluated. The public API is what this
module exports; everything else is reached through it.
"""

from importlib.metadata import version as _version

from tether.config import Settings, load_settings
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
from tether.gateway.config import GatewayConfig
from tether.gateway.cost import Cost, price_usage
from tether.gateway.gateway import CallContext, Gateway, GatewayModel
from tether.guard.approvals import ApprovalStore
from tether.guard.audit import StoreGuardRecorder
from tether.guard.credentials import CredentialBroker
from tether.guard.detectors import RuleScanner
from tether.guard.durable import DurableRuns
from tether.guard.guard import Guard
from tether.guard.killswitch import KillSwitch
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
from tether.models import Model, PriceRef, ProviderConfig, resolve_model
from tether.runtime import Agent, Limits, RunResult, RunState, Tool, ToolContext, tool
from tether.store import TraceStore, open_store
from tether.trace.setup import Tracing, configure_tracing

__version__ = _version("tether")

__all__ = [
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
