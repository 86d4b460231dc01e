"""The values the trace store takes and gives back: spans, run summaries, run traces.

A run is identified by its root span: the ``invoke_agent`` span that carries
``tether.run.id`` and has no parent among that run's spans. The root carries
the run's totals as attributes, so a run's summary is read from that one span.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tether import semconv

__all__ = ["RunSummary", "RunTrace", "SpanRecord", "summarize"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, as stored.

    Attributes:
        trace_id: 32 lowercase hex digits.
        span_id: 16 lowercase hex digits.
        parent_span_id: the parent's span id, None for a trace root.
        run_id: the span's ``tether.run.id`` attribute, None outside a run.
        name: the span name, e.g. ``chat claude-sonnet-4``.
        operation: the span's ``gen_ai.operation.name``, None if it has none.
        start_ns: start time, nanoseconds since the Unix epoch.
        end_ns: end time, nanoseconds since the Unix epoch.
        status: ``"unset"``, ``"ok"`` or ``"error"``.
        status_message: the status description, if any.
        attributes: JSON-safe attribute values (str, bool, int, float or lists of those).
        events: each a dict with ``name``, ``time_ns`` and ``attributes``.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    run_id: str | None
    name: str
    operation: str | None
    start_ns: int
    end_ns: int
    status: str
    status_message: str | None
    attributes: dict[str, Any]
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's totals, read from its root span.

    Attributes:
        cost_usd: None when the price of any model call was unknown
            (the root's ``tether.cost_known`` is False) or no cost was recorded.
        started_at: the root span's start, timezone-aware UTC.
        duration_s: the root span's duration in seconds.
        status: the root span's status (``"unset"``, ``"ok"`` or ``"error"``).
    """

    run_id: str
    trace_id: str
    agent: str
    stop_reason: str | None
    turns: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    started_at: datetime
    duration_s: float
    simulated: bool
    task: str | None
    status: str


@dataclass(frozen=True, slots=True)
class RunTrace:
    """A run's summary and all its spans, ordered by start time (then span id)."""

    summary: RunSummary
    spans: list[SpanRecord]


def _int(value: object) -> int:
    # bool is an int subclass; a True token count would be a bug upstream, not 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _cost(attributes: dict[str, Any]) -> float | None:
    if attributes.get(semconv.TETHER_COST_KNOWN) is False:
        return None
    cost = attributes.get(semconv.TETHER_COST_USD)
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return float(cost)
    return None


def ns_to_datetime(ns: int) -> datetime:
    """Nanoseconds since the epoch → aware UTC datetime (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(moment: datetime) -> int:
    """Aware datetime → nanoseconds since the epoch; a naive one is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def summarize(root: SpanRecord) -> RunSummary:
    """Build a run's summary from its root span.

    Raises:
        ValueError: the span carries no run id.
    """
    if root.run_id is None:
        raise ValueError(f"span {root.span_id} is not part of a run (no {semconv.TETHER_RUN_ID})")
    attrs = root.attributes
    return RunSummary(
        run_id=root.run_id,
        trace_id=root.trace_id,
        agent=_str(attrs.get(semconv.GEN_AI_AGENT_NAME)) or "",
        stop_reason=_str(attrs.get(semconv.TETHER_STOP_REASON)),
        turns=_int(attrs.get(semconv.TETHER_TURNS)),
        tool_calls=_int(attrs.get(semconv.TETHER_TOOL_CALLS)),
        input_tokens=_int(attrs.get(semconv.GEN_AI_USAGE_INPUT_TOKENS)),
        output_tokens=_int(attrs.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS)),
        cache_read_tokens=_int(attrs.get(semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)),
        cache_write_tokens=_int(attrs.get(semconv.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS)),
        cost_usd=_cost(attrs),
        started_at=ns_to_datetime(root.start_ns),
        duration_s=max(root.end_ns - root.start_ns, 0) / 1e9,
        simulated=attrs.get(semconv.TETHER_SIMULATED) is True,
        task=_str(attrs.get(semconv.TETHER_TASK)),
        status=root.status,
    )
