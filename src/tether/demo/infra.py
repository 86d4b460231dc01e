"""A small simulated production estate for the on-call agent to act on.

Each incident sets up the state the tools read and change: firing alerts,
recent log lines per service, runbooks. Restarting a service resolves an alert
only when the restart really addresses its cause, so the outcome of a run can
be checked on the final state (which services were restarted, who was paged),
not only on what the agent said.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from tether.runtime.tools import Tool, tool

__all__ = ["Alert", "Incident", "Infra", "make_tools"]


@dataclass(frozen=True)
class Alert:
    name: str
    service: str
    severity: str
    summary: str
    fixed_by_restart: str | None = None


@dataclass(frozen=True)
class Incident:
    """One incident: what fires, what the logs say, what the runbook says."""

    key: str
    title: str
    alerts: tuple[Alert, ...]
    logs: dict[str, tuple[str, ...]]
    runbooks: dict[str, str]
    expect_restart: tuple[str, ...] = ()
    expect_page: str | None = None


@dataclass
class Infra:
    """Mutable state of the estate during one run (locked: a caller may still use it from threads)."""

    incident: Incident
    restarted: list[str] = field(default_factory=list)
    pages: list[tuple[str, str]] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    SERVICES = ("api", "checkout", "payments", "search", "auth", "db", "log-shipper", "search-cache")

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.incident.alerts if a.name not in self.resolved]

    def firing_critical_unfixed(self) -> bool:
        """An alert a restart would fix is still firing."""
        return any(a.fixed_by_restart is not None for a in self.firing)

    def restart_would_fix(self, service: str) -> bool:
        """What the on-call human checks on the dashboard before approving a restart."""
        return any(a.fixed_by_restart == service for a in self.firing)


def make_tools(infra: Infra, *, tool_latency_s: float = 0.0) -> list[Tool]:
    """The on-call tool set, bound to one run's estate."""

    async def pause() -> None:
        if tool_latency_s:
            await asyncio.sleep(tool_latency_s)

    @tool
    async def list_alerts() -> list[dict[str, str]]:
        """List the alerts that are firing now."""
        await pause()
        return [
            {"alert": a.name, "service": a.service, "severity": a.severity, "summary": a.summary} for a in infra.firing
        ]

    @tool(untrusted_output=True)  # log lines carry whatever users and upstreams wrote: reading them taints the run
    async def query_logs(service: str, pattern: str = "", minutes: int = 15) -> str:
        """Search a service's recent logs.

        Args:
            service: service name, e.g. checkout.
            pattern: only lines containing this text (case-insensitive); empty for all.
            minutes: how far back to look, 1 to 120.
        """
        await pause()
        if service not in Infra.SERVICES:
            raise ValueError(f"unknown service {service!r}; services: {', '.join(Infra.SERVICES)}")
        if not 1 <= minutes <= 120:
            raise ValueError("minutes must be between 1 and 120")
        lines = infra.incident.logs.get(service, ())
        hits = [line for line in lines if pattern.lower() in line.lower()]
        return "\n".join(hits) if hits else f"no log lines for {service} matching {pattern!r} in the last {minutes} min"

    @tool
    async def read_runbook(alert: str) -> str:
        """Read the runbook for an alert.

        Args:
            alert: the alert name, e.g. HighErrorRate.
        """
        await pause()
        return infra.incident.runbooks.get(alert, f"no runbook for {alert!r}: escalate to the owning team")

    # Async like the others: run on the event loop, not in worker threads, so a seed replays the same runs
    # whatever the machine's load (threads finishing in another order would reorder the gateway's calls).
    @tool(risk="irreversible")  # a person approves each restart
    async def restart_service(service: str) -> str:
        """Restart a service (rolling restart of all its pods). Irreversible: in-flight requests are dropped.

        Args:
            service: service name, e.g. checkout.
        """
        if service not in Infra.SERVICES:
            raise ValueError(f"unknown service {service!r}; services: {', '.join(Infra.SERVICES)}")
        with infra._lock:
            infra.restarted.append(service)
            for a in infra.incident.alerts:
                if a.fixed_by_restart == service:
                    infra.resolved.add(a.name)
        return f"{service}: rolling restart complete, 6/6 pods ready"

    @tool(risk="write")
    async def page_human(team: str, summary: str) -> str:
        """Page the on-call human of a team.

        Args:
            team: team to page: platform, payments, dba, security, search.
            summary: what is wrong and what you found, in one or two sentences.
        """
        with infra._lock:
            infra.pages.append((team, summary))
        return f"paged {team} on-call; incident channel #inc-{infra.incident.key} opened"

    return [list_alerts, query_logs, read_runbook, restart_service, page_human]
