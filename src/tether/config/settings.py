"""tether's settings: one model of the whole of ``tether.toml``, with ``TETHER_*`` variables on top.

Tables: ``[store]``, ``[trace]``, ``[server]`` (here); ``[providers.*]``, ``[deployments.*]``,
``[routes.*]``, ``[prices.*]``, ``[budgets]``, ``[gateway]`` (``tether.config.gateway``);
``[guard]`` (``tether.config.guard``); ``[workers]`` (here: ``tether worker`` processes and the
embedded worker); ``[console]`` is reserved (accepted only empty, so a file written for a later
tether is refused rather than half-read).

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
``TETHER_WORKERS_REDIS_URL``  Redis whose streams carry submitted runs (= ``[workers] redis_url``;
                           default ``[gateway] redis_url``)
``TETHER_KILL_FILE``       a file an operator touches to kill runs: empty or ``all``
                           kills every run; lines ``run:<id>`` / ``agent:<name>`` kill
                           those (read by ``tether.guard.kill.KillSwitch``)
=========================  ===========================================================

The standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, protocol)
are read by the OpenTelemetry exporter itself; when ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, spans are also sent there.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, ValidationError

from tether.config.base import Strict
from tether.config.gateway import GatewayConfig
from tether.config.guard import GuardSettings
from tether.config.problems import SettingsError, describe_errors
from tether.errors import ConfigError

__all__ = [
    "ConsoleSettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TraceSettings",
    "WorkersSettings",
    "load_settings",
]

DEFAULT_DATABASE_URL = "sqlite:///.tether/tether.db"


class StoreSettings(Strict):
    """``[store]``: where runs, spans, costs and budgets are kept."""

    url: str = DEFAULT_DATABASE_URL


class TraceSettings(Strict):
    """``[trace]``: what spans keep."""

    payload_chars: int = Field(default=4096, ge=0)


class ServerSettings(Strict):
    """``[server]``: where ``tether serve`` listens (its ``--host`` / ``--port`` override these)."""

    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)


class WorkersSettings(Strict):
    """``[workers]``: how submitted runs are carried and worked (``tt.submit``, ``tether worker``).

    Attributes:
        concurrency: runs one worker process works at once.
        agents: per-agent limits on runs at once in one worker (``{ oncall = 8 }``).
        lease_s: how long a worker's lease on a run lasts without renewal (renewed every third of it);
            a worker paused longer than this loses the run to another and cannot write for it any more.
        claim_idle_s: a run delivered to a worker that has not touched it for this long is taken over
            by another (Redis ``XAUTOCLAIM``): how long a dead worker's runs wait.
        max_deliveries: a run delivered this many times (its workers died each time) is dead-lettered.
        max_failures: a run whose agent cannot be loaded this many times is dead-lettered.
        refeed_s: how often the runs table is compared with the stream, so a run whose entry was lost
            (Redis restarted without persistence) is published again.
        embedded: run submissions in this process (one worker on a background thread). None (default):
            only with no Redis; true: with Redis too; false: never (``tether worker`` processes run them).
        redis_url: the Redis whose streams carry the work (default ``[gateway] redis_url``); with
            neither, an in-process bus.
        prefix: the prefix of the stream keys (``<prefix>:runs``…), so several deployments share a Redis.
    """

    concurrency: int = Field(default=64, ge=1, le=10_000)
    agents: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    lease_s: float = Field(default=30.0, gt=0)
    claim_idle_s: float = Field(default=60.0, gt=0)
    max_deliveries: int = Field(default=20, ge=1)
    max_failures: int = Field(default=3, ge=1)
    refeed_s: float = Field(default=5.0, gt=0)
    embedded: bool | None = None
    redis_url: str | None = None
    prefix: str = Field(default="tether", min_length=1, max_length=100)


class ConsoleSettings(Strict):
    """``[console]``: reserved for the web console; no keys yet (any key is refused)."""


class Settings(GatewayConfig):
    """Everything tether reads from its configuration.

    The gateway's tables (``[providers.*]``, ``[deployments.*]``, ``[routes.*]``,
    ``[prices.*]``, ``[budgets]``, ``[gateway]``) are documented in
    ``tether.config.gateway``, ``[guard]`` in ``tether.config.guard``.
    """

    store: StoreSettings = StoreSettings()
    trace: TraceSettings = TraceSettings()
    server: ServerSettings = ServerSettings()
    guard: GuardSettings = GuardSettings()
    workers: WorkersSettings = WorkersSettings()
    console: ConsoleSettings = ConsoleSettings()
    _source: str = PrivateAttr(default="defaults")
    _text: str | None = PrivateAttr(default=None)

    @property
    def kills_redis_url(self) -> str | None:
        """The Redis kills are published and heard on: ``[gateway] redis_url``, else ``[workers] redis_url``."""
        return self.gateway.redis_url or self.workers.redis_url

    @property
    def source(self) -> str:
        """The file these settings were read from, for messages ("defaults" without one)."""
        return self._source

    @property
    def source_text(self) -> str | None:
        """The text of the file they were read from (for line numbers in messages); None without a file."""
        return self._text


_ENV: dict[str, tuple[str, str]] = {
    "TETHER_DATABASE_URL": ("store", "url"),
    "TETHER_TRACE_PAYLOAD_CHARS": ("trace", "payload_chars"),
    "TETHER_REDIS_URL": ("gateway", "redis_url"),
    "TETHER_WORKERS_REDIS_URL": ("workers", "redis_url"),
}


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), text
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or point TETHER_CONFIG elsewhere") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Read settings from the config file and the environment.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
        SettingsError: a key is unknown, missing or of the wrong kind, or a reference is dangling
            (``problems`` lists each, one line apiece).
    """
    explicit = config_path or os.environ.get("TETHER_CONFIG")
    path = Path(explicit) if explicit else Path("tether.toml")
    data: dict[str, Any] = {}
    text: str | None = None
    if path.exists():
        data, text = _read_toml(path)
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
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, Settings, source)) from None
    settings._source = str(path) if text is not None else source
    settings._text = text
    return settings
