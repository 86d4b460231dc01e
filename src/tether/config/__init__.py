"""tether's configuration: one settings model of the whole of tether.toml.

A leaf: it imports pydantic, the standard library and ``tether.errors`` only, so
reading settings loads no database driver, no OpenTelemetry SDK and no HTTP client.
``load_settings()`` reads the file and the ``TETHER_*`` variables into ``Settings``;
the section models are the tables, one module per area.
"""

from __future__ import annotations

from tether.config.gateway import (
    BudgetsConfig,
    DeploymentConfig,
    GatewayConfig,
    GatewaySettings,
    PriceConfig,
    ProviderSettings,
    RouteConfig,
    RouteRule,
    StepDown,
)
from tether.config.guard import GuardAgentSettings, GuardSettings, GuardToolSettings
from tether.config.limits import BreakerConfig, BudgetLimit, FaultConfig, RateLimit, RetryPolicy
from tether.config.problems import SettingsError, closest, describe_errors
from tether.config.settings import (
    DEFAULT_DATABASE_URL,
    ConsoleSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    TraceSettings,
    WorkersSettings,
    load_settings,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "BreakerConfig",
    "BudgetLimit",
    "BudgetsConfig",
    "ConsoleSettings",
    "DeploymentConfig",
    "FaultConfig",
    "GatewayConfig",
    "GatewaySettings",
    "GuardAgentSettings",
    "GuardSettings",
    "GuardToolSettings",
    "PriceConfig",
    "ProviderSettings",
    "RateLimit",
    "RetryPolicy",
    "RouteConfig",
    "RouteRule",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "StepDown",
    "StoreSettings",
    "TraceSettings",
    "WorkersSettings",
    "closest",
    "describe_errors",
    "load_settings",
]
