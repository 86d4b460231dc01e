"""``SpanRecord`` ↔ ``spans`` row: JSON encoding and the denormalised columns."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from sqlalchemy import RowMapping

from tether import semconv
from tether.redaction import default_scrubber
from tether.store.records import SpanRecord

__all__ = ["INSERT_COLUMNS", "build_row", "record_from_row", "row_from_record"]

_INT64_MAX: Final = 2**63 - 1
_SCRUBBER: Final = default_scrubber()

# The order of ``row_from_record``'s tuple: every column of ``spans``.
INSERT_COLUMNS: Final = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "run_id",
    "name",
    "operation",
    "start_ns",
    "end_ns",
    "duration_ns",
    "status",
    "status_message",
    "attributes",
    "events",
    "agent_name",
    "request_model",
    "tool_name",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "stop_reason",
    "simulated",
)


def _json(value: object) -> str:
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits; the standard library does not.
        return json.dumps(value, default=str, ensure_ascii=False)


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    # PostgreSQL text cannot hold NUL; JSON columns escape it, plain columns must not carry it.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64_MAX <= value <= _INT64_MAX:
        return value
    return None


def _cost(attributes: Mapping[str, Any]) -> float | None:
    value = attributes.get(semconv.TETHER_COST_USD)
    if attributes.get(semconv.TETHER_COST_KNOWN) is False or isinstance(value, bool):
        return None
    return float(value) if isinstance(value, int | float) else None


def build_row(
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    attrs: Mapping[str, Any],
    start_ns: int,
    end_ns: int,
    status: str,
    status_message: str | None,
    events: Sequence[Mapping[str, Any]],
) -> tuple[object, ...]:
    """The values of a ``spans`` row, in ``INSERT_COLUMNS`` order, from a span's parts.

    The one place a row is built: ``row_from_record`` and the tracing fast paths
    (``tether.trace.exporter.span_to_row``, the recorder) all call it. orjson
    encodes the SDK's attribute tuples as JSON arrays directly.

    Known secret values are scrubbed here, so no span reaches the store with
    one, whichever path built it (``tether.guard.credentials``). With none
    registered that costs one attribute check; with some, one search over the
    encoded row, and a rebuild only when it finds one.
    """
    attrs_json = _json(attrs)
    events_json = _json(events) if events else "[]"
    if _SCRUBBER.active and _SCRUBBER.contains_secret(
        f"{name}\x00{status_message or ''}\x00{attrs_json}\x00{events_json}"
    ):
        name = _SCRUBBER.scrub(name)
        status_message = _SCRUBBER.scrub(status_message) if status_message else status_message
        attrs = _SCRUBBER.scrub_mapping(attrs)
        events = [_SCRUBBER.scrub_mapping(event) for event in events]
        attrs_json = _json(attrs)
        events_json = _json(events) if events else "[]"
    simulated = attrs.get(semconv.TETHER_SIMULATED)
    return (
        trace_id,
        span_id,
        parent_span_id,
        _text(attrs.get(semconv.TETHER_RUN_ID)),
        _text(name) or "",
        _text(attrs.get(semconv.GEN_AI_OPERATION_NAME)),
        start_ns,
        end_ns,
        end_ns - start_ns,
        status,
        _text(status_message or None),
        attrs_json,
        events_json,
        _text(attrs.get(semconv.GEN_AI_AGENT_NAME)),
        _text(attrs.get(semconv.GEN_AI_REQUEST_MODEL)),
        _text(attrs.get(semconv.GEN_AI_TOOL_NAME)),
        _count(attrs.get(semconv.GEN_AI_USAGE_INPUT_TOKENS)),
        _count(attrs.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS)),
        _count(attrs.get(semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)),
        _count(attrs.get(semconv.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS)),
        _cost(attrs),
        _text(attrs.get(semconv.TETHER_STOP_REASON)),
        simulated if isinstance(simulated, bool) else None,
    )


def row_from_record(record: SpanRecord) -> tuple[object, ...]:
    """The values of a ``spans`` row, in ``INSERT_COLUMNS`` order."""
    return build_row(
        record.trace_id,
        record.span_id,
        record.parent_span_id,
        record.name,
        record.attributes,
        record.start_ns,
        record.end_ns,
        record.status,
        record.status_message,
        record.events,
    )


def record_from_row(row: RowMapping) -> SpanRecord:
    """Rebuild a ``SpanRecord`` from a selected ``spans`` row."""
    return SpanRecord(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        run_id=row["run_id"],
        name=row["name"],
        operation=row["operation"],
        start_ns=row["start_ns"],
        end_ns=row["end_ns"],
        status=row["status"],
        status_message=row["status_message"],
        attributes=orjson.loads(row["attributes"]),
        events=orjson.loads(row["events"]),
    )
