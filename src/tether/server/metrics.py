"""The proxy's ``/metrics``: Prometheus text exposition (format 0.0.4), no client library.

Every label value comes from a bounded set — the configured routes and
deployments (an unknown route the client typed is counted as ``route="-"``),
the two APIs, HTTP statuses and fixed token kinds — so the series, and the
memory they take, cannot grow with traffic.

Metrics (all prefixed ``tether_gateway_``):

- ``requests_total{api,route,status}``: requests answered, by HTTP status.
- ``request_duration_seconds{route}``: histogram, whole request (a stream until its end).
- ``in_flight_requests``: requests being handled now.
- ``tokens_total{route,kind}``: kind = input (total, cache included), output, cache_read, cache_write.
- ``usage_estimated_total{route}``: calls billed on an estimate (a stream cut or abandoned before usage arrived).
- ``cost_usd_total{route}``: known cost; ``cost_unknown_total{route}``: calls whose price is unknown (never $0).
- ``response_cache_total{route,result}``: result = hit | miss, routes with the response cache on.
- ``upstream_calls_total{deployment,outcome}``: every attempt, retries and fallbacks included; outcome = ok | error.
- ``stream_interruptions_total{route}``, ``client_disconnects_total{route}``.
- ``budget_overruns_total{route}``: calls billed more than their budget reservation (the bound did not hold).
- ``breaker_state{deployment,state}``: 1 for the breaker's current state, 0 for the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Final

from tether.gateway.breaker import BreakerState
from tether.messages import Usage

__all__ = ["BUCKETS", "Metrics"]

BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PREFIX: Final = "tether_gateway_"
UNKNOWN_ROUTE: Final = "-"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
                break


class Metrics:
    """Counters the proxy updates on each request, rendered on demand.

    Args:
        routes: the configured routes (any other name is counted as ``-``).
        deployments: the configured deployments.
    """

    def __init__(self, routes: Iterable[str], deployments: Iterable[str]) -> None:
        self._routes = frozenset(routes)
        self._deployments = frozenset(deployments)
        self.in_flight = 0
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.durations: dict[str, _Histogram] = {}
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.usage_estimated: Counter[str] = Counter()
        self.cost_usd: dict[str, Decimal] = {}
        self.cost_unknown: Counter[str] = Counter()
        self.response_cache: Counter[tuple[str, str]] = Counter()
        self.upstream_calls: Counter[tuple[str, str]] = Counter()
        self.stream_interruptions: Counter[str] = Counter()
        self.client_disconnects: Counter[str] = Counter()
        self.budget_overruns: Counter[str] = Counter()

    def route(self, name: str | None) -> str:
        """The label for a route name: itself if configured, ``-`` otherwise."""
        return name if name is not None and name in self._routes else UNKNOWN_ROUTE

    def request(self, api: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (``route`` already a label)."""
        self.requests[(api, route, status)] += 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = _Histogram()
        histogram.observe(seconds)

    def usage(self, route: str, usage: Usage, cost_usd: Decimal | None, *, estimated: bool) -> None:
        """Count a settled call's tokens and cost (unknown cost counted apart, never as $0)."""
        tokens = self.tokens
        tokens[(route, "input")] += usage.input_tokens
        tokens[(route, "output")] += usage.output_tokens
        tokens[(route, "cache_read")] += usage.cache_read_tokens
        tokens[(route, "cache_write")] += usage.cache_write_tokens
        if estimated:
            self.usage_estimated[route] += 1
        if cost_usd is None:
            self.cost_unknown[route] += 1
        else:
            self.cost_usd[route] = self.cost_usd.get(route, Decimal(0)) + cost_usd

    def upstream_call(self, deployment: str, ok: bool) -> None:
        """Count one attempt on a deployment."""
        if deployment in self._deployments:
            self.upstream_calls[(deployment, "ok" if ok else "error")] += 1

    def render(self, breakers: Mapping[str, Mapping[str, object]]) -> bytes:
        """Everything, in the Prometheus text format; ``breakers`` is ``BreakerRegistry.snapshot()``."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> str:
            full = _PREFIX + name
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            return full

        name = family("requests_total", "counter", "Requests answered, by API, route and HTTP status.")
        for (api, route, status), value in sorted(self.requests.items()):
            lines.append(f"{name}{_labels((('api', api), ('route', route), ('status', str(status))))} {value}")

        name = family("request_duration_seconds", "histogram", "Time to answer a request (a stream until its end).")
        for route, histogram in sorted(self.durations.items()):
            cumulative = 0
            for bound, count in zip(BUCKETS, histogram.buckets, strict=True):
                cumulative += count
                lines.append(f"{name}_bucket{_labels((('route', route), ('le', repr(bound))))} {cumulative}")
            lines.append(f"{name}_bucket{_labels((('route', route), ('le', '+Inf')))} {histogram.count}")
            lines.append(f"{name}_sum{_labels((('route', route),))} {histogram.total!r}")
            lines.append(f"{name}_count{_labels((('route', route),))} {histogram.count}")

        name = family("in_flight_requests", "gauge", "Requests being handled now.")
        lines.append(f"{name} {self.in_flight}")

        name = family(
            "tokens_total", "counter", "Tokens by kind: input (total, cache included), output, cache_read, cache_write."
        )
        for (route, kind), value in sorted(self.tokens.items()):
            lines.append(f"{name}{_labels((('route', route), ('kind', kind)))} {value}")

        simple: list[tuple[str, str, Mapping[str, int]]] = [
            ("usage_estimated_total", "Calls billed on an estimate because usage never arrived.", self.usage_estimated),
            ("cost_unknown_total", "Calls whose price is unknown (not counted as $0).", self.cost_unknown),
            ("stream_interruptions_total", "Streams the upstream cut or failed mid-answer.", self.stream_interruptions),
            ("client_disconnects_total", "Streams the client abandoned before the end.", self.client_disconnects),
            ("budget_overruns_total", "Calls billed more than their budget reservation.", self.budget_overruns),
        ]
        for metric, help_text, values in simple:
            name = family(metric, "counter", help_text)
            for route, value in sorted(values.items()):
                lines.append(f"{name}{_labels((('route', route),))} {value}")

        name = family("cost_usd_total", "counter", "Known cost of settled calls, in USD.")
        for route, usd in sorted(self.cost_usd.items()):
            lines.append(f"{name}{_labels((('route', route),))} {float(usd)!r}")

        name = family("response_cache_total", "counter", "Response-cache lookups, by result (hit or miss).")
        for (route, result), value in sorted(self.response_cache.items()):
            lines.append(f"{name}{_labels((('route', route), ('result', result)))} {value}")

        name = family("upstream_calls_total", "counter", "Attempts on each deployment, retries and fallbacks included.")
        for (deployment, outcome), value in sorted(self.upstream_calls.items()):
            lines.append(f"{name}{_labels((('deployment', deployment), ('outcome', outcome)))} {value}")

        name = family("breaker_state", "gauge", "Circuit breaker state per deployment (1 = current state).")
        for deployment, snapshot in sorted(breakers.items()):
            current = snapshot.get("state")
            for state in BreakerState:
                flag = 1 if current == state.value else 0
                lines.append(f"{name}{_labels((('deployment', deployment), ('state', state.value)))} {flag}")
        return ("\n".join(lines) + "\n").encode()
