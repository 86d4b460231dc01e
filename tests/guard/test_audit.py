"""The guard's records in the store: an audit row per decision, incidents, and quarantine shared by processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from opentelemetry.trace import INVALID_SPAN

from tests.store import conftest as store_fixtures
from tether import semconv as sc
from tether.errors import StoreUnavailable
from tether.guard.audit import GuardStore, NotQuarantined, StoreGuardRecorder, quarantine_reason
from tether.guard.credentials import Scrubber, default_scrubber
from tether.guard.guard import Guard, GuardRecorder, RunGuard
from tether.guard.policy import AgentPolicy, Policy, ToolRule
from tether.guard.types import Decision, Finding, Verdict
from tether.runtime import Agent
from tether.runtime.tools import tool
from tether.store import TraceStore, open_store
from tether.testing import ScriptedModel, SpanCapture, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
SECRET = "pd-token-5f2a9c1e7b"
POLICY = Policy(
    agents={"oncall": AgentPolicy(tools={"read_logs": ToolRule(), "scale": ToolRule(when=("replicas <= 5",))})},
    quarantine_after=3,
    quarantine_window_s=3600,
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def scrubber() -> Iterator[Scrubber]:
    """The process-wide scrubber with one secret registered, emptied afterwards."""
    default = default_scrubber()
    default.clear()
    default.register("pagerduty", SECRET)
    yield default
    default.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


Recorders = Callable[..., StoreGuardRecorder]


@pytest.fixture
def recorders(store: TraceStore, clock: Clock) -> Iterator[Recorders]:
    """Make recorders on the test's store (each one like another process), closed after the test."""
    made: list[StoreGuardRecorder] = []

    def make(policy: Policy = POLICY, **options: Any) -> StoreGuardRecorder:
        options.setdefault("clock", clock)
        recorder = StoreGuardRecorder(store, policy, **options)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close()


def finding(kind: str = "hallucinated_tool", severity: str = "medium", **changes: Any) -> Finding:
    fields: dict[str, Any] = {"detector": "loop", "kind": kind, "severity": severity, "message": f"{kind} seen"}
    fields.update(changes)
    return Finding(**fields)


def run(agent: str = "oncall", run_id: str = "run-1") -> RunGuard:
    return RunGuard(run_id=run_id, agent=agent)


def until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- the audit ---------------------------------------------------------------------------------------------


def test_every_verdict_is_an_audit_row_with_scrubbed_arguments_and_the_span(
    recorders: Recorders, scrubber: Scrubber
) -> None:
    recorder = recorders()
    capture = SpanCapture()
    with capture.tracer.start_as_current_span("execute_tool scale") as span:
        for i, verdict in enumerate(Verdict):
            decision = Decision(verdict, f"{verdict.value} because token {SECRET}", rule=f"rule.{i}")
            recorder.decision(run(), "scale", f"call-{i}", {"token": SECRET, "replicas": 3}, decision, span)
    recorder.decision(run(), "scale", "call-x", {"b": 1, "a": 2}, Decision(Verdict.ALLOWED, "ok"), INVALID_SPAN)

    assert recorder.flush()
    rows = recorder.audit(run_id="run-1")
    by_call = {row.call_id: row for row in rows}
    assert [row.call_id for row in rows] == ["call-x", "call-4", "call-3", "call-2", "call-1", "call-0"]  # newest first
    assert [by_call[f"call-{i}"].decision for i in range(5)] == [v.value for v in Verdict]
    for i in range(5):
        row = by_call[f"call-{i}"]
        assert SECRET not in row.reason and SECRET not in (row.arguments or "")
        assert orjson.loads(row.arguments or "") == {"replicas": 3, "token": "[secret:pagerduty]"}
        assert row.reason.endswith("token [secret:pagerduty]") and row.rule == f"rule.{i}"
        context = span.get_span_context()
        assert (row.trace_id, row.span_id) == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
    unrecorded = by_call["call-x"]
    assert unrecorded.arguments == '{"a":2,"b":1}'  # sorted keys
    assert (unrecorded.trace_id, unrecorded.span_id) == (None, None)
    assert recorder.audit(agent="someone-else") == []


def test_large_arguments_are_capped_as_json_after_scrubbing(recorders: Recorders, scrubber: Scrubber) -> None:
    recorder = recorders()
    arguments = {"body": ("x" * 10 + SECRET) * 1_000}
    recorder.decision(run(), "post", "call-1", arguments, Decision(Verdict.DENIED, "too big"), None)

    [row] = recorder.audit()
    assert row.arguments is not None and len(row.arguments) <= 4_096
    assert SECRET not in row.arguments and "[secret:pagerduty]" in orjson.loads(row.arguments)["_truncated"]


def test_a_store_outage_keeps_audit_rows_queued_and_never_reaches_the_run(
    recorders: Recorders, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = recorders()
    real = recorder.store.write_audit

    def down(rows: object) -> None:
        raise StoreUnavailable("cannot reach the database")

    monkeypatch.setattr(recorder.store, "write_audit", down)
    recorder.decision(run(), "read_logs", "call-1", {}, Decision(Verdict.ALLOWED, "granted"), None)
    assert not recorder.flush()
    assert recorder.pending == 1

    monkeypatch.setattr(recorder.store, "write_audit", real)
    assert recorder.flush()
    assert [row.call_id for row in recorder.audit()] == ["call-1"]


# --- incidents and quarantine -----------------------------------------------------------------------------


def test_a_finding_is_an_open_incident_with_scrubbed_evidence(recorders: Recorders, scrubber: Scrubber) -> None:
    recorder = recorders()
    capture = SpanCapture()
    with capture.tracer.start_as_current_span("execute_tool fetch") as span:
        injection = finding(
            "prompt_injection", "high", message=f"instruction in tool:fetch ({SECRET})", evidence=f"send {SECRET}"
        )
        recorder.finding(run(), "fetch", injection, span)

    [incident] = recorder.incidents()
    assert (incident.kind, incident.severity, incident.status, incident.tool) == (
        "prompt_injection",
        "high",
        "open",
        "fetch",
    )
    assert (incident.run_id, incident.agent, incident.created_at) == ("run-1", "oncall", T0)
    assert incident.summary == "instruction in tool:fetch ([secret:pagerduty])"
    assert incident.evidence == "send [secret:pagerduty]"
    assert incident.trace_id == format(span.get_span_context().trace_id, "032x")
    assert recorder.quarantined("oncall") is None  # one incident is not enough


def test_n_incidents_within_the_window_quarantine_the_agent_at_once_and_in_the_store(
    recorders: Recorders, clock: Clock
) -> None:
    recorder = recorders()
    for kind in ("prompt_injection", "hallucinated_tool", "policy_violation"):
        recorder.finding(run(), "scale", finding(kind, "high"), None)
        clock.advance(minutes=20)

    why = "3 incidents in the last hour: prompt_injection, hallucinated_tool, policy_violation"
    assert recorder.quarantined("oncall") == why  # decided on the finding, before anything was written
    assert recorder.quarantined("someone-else") is None
    assert recorder.flush()
    [stored] = recorder.store.quarantines()
    assert (stored.agent, stored.reason, stored.active) == ("oncall", why, True)
    assert recorder.quarantined("oncall") == why


def test_n_incidents_spread_wider_than_the_window_do_not_quarantine(recorders: Recorders, clock: Clock) -> None:
    recorder = recorders()
    for _ in range(3):
        recorder.finding(run(), "scale", finding(), None)
        clock.advance(minutes=40)

    assert recorder.quarantined("oncall") is None
    assert recorder.flush()
    assert recorder.store.quarantines() == []
    assert len(recorder.incidents()) == 3


def test_low_severity_findings_do_not_count(recorders: Recorders) -> None:
    recorder = recorders()
    for _ in range(5):
        recorder.finding(run(), "fetch", finding("hidden_characters", "low"), None)
    assert recorder.flush()
    assert recorder.quarantined("oncall") is None and recorder.store.quarantines() == []


def test_repeated_kinds_are_counted_in_the_reason() -> None:
    assert quarantine_reason(["a", "b", "a"], 600) == "3 incidents in the last 10 minutes: a (2), b"
    assert quarantine_reason(["a"] * 4, 7200) == "4 incidents in the last 2 hours: a (4)"


def test_incidents_of_several_processes_add_up_and_every_process_sees_the_quarantine(
    recorders: Recorders, clock: Clock
) -> None:
    first, second = recorders(refresh_s=0.02), recorders(refresh_s=0.02)
    assert first.quarantined("oncall") is None and second.quarantined("oncall") is None

    first.finding(run(run_id="run-a"), "scale", finding("hallucinated_tool"), None)
    first.finding(run(run_id="run-a"), "scale", finding("policy_violation", "high"), None)
    assert first.flush()
    clock.advance(minutes=1)
    second.finding(run(run_id="run-b"), "scale", finding("invalid_arguments"), None)
    assert second.flush()

    # The second process counted the first one's incidents in the store when it wrote its own.
    why = "3 incidents in the last hour: hallucinated_tool, policy_violation, invalid_arguments"
    assert second.quarantined("oncall") == why
    until(lambda: first.quarantined("oncall") == why)  # after the first process's refresh


def test_a_new_recorder_reads_existing_quarantines_on_its_first_call(recorders: Recorders) -> None:
    first = recorders()
    for _ in range(3):
        first.finding(run(), "scale", finding(), None)
    assert first.flush()

    later = recorders(refresh_s=3600)
    assert later.quarantined("oncall") == "3 incidents in the last hour: hallucinated_tool (3)"


def test_release_lets_the_agent_act_and_its_incidents_stop_counting(recorders: Recorders, clock: Clock) -> None:
    recorder = recorders()
    for _ in range(3):
        recorder.finding(run(), "scale", finding(), None)
    assert recorder.quarantined("oncall") is not None
    clock.advance(minutes=5)

    released = recorder.release("oncall", by="alice", reason="false positive, fixed the prompt")

    assert recorder.quarantined("oncall") is None
    assert (released.quarantine.released_by, released.quarantine.released_at) == ("alice", T0 + timedelta(minutes=5))
    assert released.incidents_released == 3
    assert recorder.incidents() == [] and {i.status for i in recorder.incidents(status=None)} == {"released"}
    [entry] = recorder.audit(agent="oncall")
    assert entry.decision == "released" and "released by alice: false positive, fixed the prompt" in entry.reason
    # The released incidents never count again: two more are not three.
    clock.advance(minutes=1)
    for _ in range(2):
        recorder.finding(run(run_id="run-2"), "scale", finding(), None)
    assert recorder.flush()
    assert recorder.quarantined("oncall") is None and recorder.store.quarantines() == []
    # A third one is.
    recorder.finding(run(run_id="run-2"), "scale", finding(), None)
    assert recorder.quarantined("oncall") is not None
    assert recorder.flush()
    assert [q.agent for q in recorder.store.quarantines()] == ["oncall"]


def test_releasing_an_agent_that_is_not_quarantined_is_an_error(recorders: Recorders) -> None:
    recorder = recorders()
    with pytest.raises(NotQuarantined, match="'oncall' is not quarantined, so there is nothing to release"):
        recorder.release("oncall", by="alice")
    for _ in range(3):
        recorder.finding(run(), "scale", finding(), None)
    recorder.release("oncall", by="alice")
    with pytest.raises(NotQuarantined, match="released by alice at 2026-11-21 09:00:00 UTC"):
        recorder.release("oncall", by="bob")


def test_a_release_elsewhere_reaches_a_process_after_its_refresh(recorders: Recorders, store: TraceStore) -> None:
    recorder = recorders(refresh_s=0.02)
    for _ in range(3):
        recorder.finding(run(), "scale", finding(), None)
    assert recorder.flush()

    GuardStore(store).release("oncall", by="bob")  # as the CLI does

    until(lambda: recorder.quarantined("oncall") is None)
    # Its own earlier incidents were released too: one more finding does not quarantine again.
    recorder.finding(run(run_id="run-2"), "scale", finding(), None)
    assert recorder.quarantined("oncall") is None


def test_it_is_a_guard_recorder(recorders: Recorders) -> None:
    recorder: GuardRecorder = recorders()
    assert recorder.quarantined("oncall") is None


# --- through the agent loop ----------------------------------------------------------------------------------

RAN: list[str] = []


@tool
def read_logs(service: str) -> str:
    """Read a service's logs."""
    RAN.append(f"read_logs:{service}")
    return "all quiet"


@tool(risk="write")
def scale(service: str, replicas: int) -> str:
    """Scale a service."""
    RAN.append(f"scale:{service}:{replicas}")
    return "scaled"


def test_an_agent_that_misbehaves_is_quarantined_until_released(recorders: Recorders) -> None:
    recorder = recorders()
    guard = Guard(POLICY, recorder=recorder)

    def agent_run(*calls: tuple[str, dict[str, Any]]) -> SpanCapture:
        RAN.clear()
        capture = SpanCapture()
        model = ScriptedModel([tool_response(call) for call in calls])
        Agent("oncall", model, tools=[read_logs, scale], tracer=capture.tracer, guard=guard).run_sync("fix checkout")
        return capture

    capture = agent_run(
        ("restart_everything", {}),  # hallucinated tool
        ("scale", {"service": "checkout", "replicas": 50}),  # outside the policy
        ("read_logs", {"services": "checkout"}),  # invalid arguments: the third incident
        ("scale", {"service": "checkout", "replicas": 3}),  # within the policy, but the agent is quarantined now
        ("read_logs", {"service": "checkout"}),  # reading is still allowed
    )

    assert RAN == ["read_logs:checkout"]  # scale never ran
    spans = [dict(s.attributes or {}) for s in capture.spans if s.name.startswith("execute_tool scale")]
    assert spans[-1][sc.TETHER_GUARD_DECISION] == "denied"
    why = "3 incidents in the last hour: hallucinated_tool, policy_violation, invalid_arguments"
    assert (
        why in spans[-1][sc.TETHER_GUARD_REASON]
        and "tether incidents release oncall" in spans[-1][sc.TETHER_GUARD_REASON]
    )
    assert recorder.flush()
    assert [i.kind for i in recorder.incidents()] == ["invalid_arguments", "policy_violation", "hallucinated_tool"]
    assert [(a.tool, a.decision, a.rule) for a in reversed(recorder.audit())] == [
        ("scale", "denied", "agents.oncall.tools.scale"),
        ("scale", "denied", "quarantine"),
        ("read_logs", "allowed", "agents.oncall.tools.read_logs"),
    ]

    recorder.release("oncall", by="alice", reason="prompt fixed")
    agent_run(("scale", {"service": "checkout", "replicas": 3}))
    assert RAN == ["scale:checkout:3"]
