"""tether's settings: one model, read from ``tether.toml`` and ``TETHER_*`` variables.

Precedence (highest first): explicit arguments, environment variables,
``tether.toml`` in the working directory (or the file named by
``TETHER_CONFIG``), defaults.

Environment variables:

=========================  ===========================================================
``TETHER_CONFIG``          path of the config file (default ``./tether.toml``)
``TETHER_DATABASE_URL``    store URL: ``sqlite:///path.db`` or
                           ``postgresql+psycopg://user@host:5432/db``
                           (default ``sqlite:///.tether/tether.db``)
``TETHER_TRACE_PAYLOAD_CHARS``  cap on tool input/output text kept on spans by the CLI's
                           agents (default 4096; in code, ``Agent(payload_chars=...)``)
``TETHER_REDIS_URL``       Redis for shared rate limits and budgets and kill signals
                           (= ``[gateway] redis_url``; e.g. ``redis://127.0.0.1:6379/0``)
``TETHER_KILL_FILE``       a file an operator touches to kill runs: empty or ``all``
                           kills every run; lines ``run:<id>`` / ``agent:<name>`` kill
                           those (read by ``tether.guard.killswitch.KillSwitch``)
=========================  ===========================================================

The standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, protocol)
are read by the OpenTelemetry exporter itself; when ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, spans are also sent there.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.errors import ConfigError
from tether.gateway.config import GatewayConfig

__all__ = ["ServerSettings", "Settings", "StoreSettings", "TraceSettings", "load_settings"]

DEFAULT_DATABASE_URL = "sqlite:///.tether/tether.db"


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = DEFAULT_DATABASE_URL


class TraceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload_chars: int = Field(default=4096, ge=0)


class ServerSettings(BaseModel):
    """``[server]``: where ``tether serve`` listens (its ``--host`` / ``--port`` override these)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)


class Settings(GatewayConfig):
    """Everything tether reads from its configuration.

    The gateway's tables (``[providers.*]``, ``[deployments.*]``, ``[routes.*]``,
    ``[prices.*]``, ``[budgets]``, ``[gateway]``) are documented in
    ``tether.gateway.config``.
    """

    store: StoreSettings = StoreSettings()
    trace: TraceSettings = TraceSettings()
    server: ServerSettings = ServerSettings()


_ENV: dict[str, tuple[str, str]] = {
    "TETHER_DATABASE_URL": ("store", "url"),
    "TETHER_TRACE_PAYLOAD_CHARS": ("trace", "payload_chars"),
    "TETHER_REDIS_URL": ("gateway", "redis_url"),
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or point TETHER_CONFIG elsewhere") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None


def _describe(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: [{where}] {message}{more}" if where else f"{source}: {message}{more}"


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Read settings from the config file and the environment.

    Raises:
        ConfigError: the file is not valid TOML, or a value is of the wrong kind.
    """
    explicit = config_path or os.environ.get("TETHER_CONFIG")
    path = Path(explicit) if explicit else Path("tether.toml")
    data: dict[str, Any] = {}
    if path.exists():
        data = _read_toml(path)
    elif explicit:
        raise ConfigError(f"config file {path} does not exist: create it or unset TETHER_CONFIG")
    source = str(path)
    for var, (section, key) in _ENV.items():
        value = os.environ.get(var)
        if value is not None and value != "":
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"{source}: [{section}] must be a table")
            data[section][key] = value
            source = f"{path} / {var}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
