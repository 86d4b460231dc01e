"""Suites (Python and YAML), their validation, and every built-in scorer."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tether.errors import UserError
from tether.evals import (
    Case,
    Check,
    Observation,
    Score,
    Suite,
    approval_respected,
    asked_clarification,
    contains,
    exact,
    forbidden_tools,
    json_schema,
    load_suite,
    max_steps,
    no_injected_action,
    outcome,
    regex,
    required_tools,
    scorer,
    tool_order,
    within_limits,
)
from tether.evals.scorers import SCORERS, lookup
from tether.messages import StopReason, Usage
from tether.runtime.agent import RunResult, ToolCallRecord


def call(name: str, *, risk: str | None = "read", decision: str | None = "allowed", executed: bool = True, **args: Any):
    return ToolCallRecord(
        turn=1, call_id=f"c-{name}", name=name, arguments=args, risk=risk, decision=decision, executed=executed
    )


def observe(output: str = "", calls: tuple[ToolCallRecord, ...] = (), env: Any = None, **result: Any) -> Observation:
    fields: dict[str, Any] = {
        "run_id": "r",
        "trace_id": "t",
        "agent": "a",
        "stop_reason": StopReason.COMPLETED,
        "output": output,
        "turns": 2,
        "tool_calls": len(calls),
        "hallucinated_tool_calls": 0,
        "usage": Usage(),
        "cost_usd": Decimal(0),
        "duration_s": 0.1,
        "messages": (),
        "tool_log": calls,
    }
    fields.update(result)
    return Observation("the task", RunResult(**fields), env)


def grade(check: Check, obs: Observation) -> Score:
    return asyncio.run(lookup(check.scorer).score(obs, check.params))


# --- suites ---------------------------------------------------------------------------------------


def test_a_case_without_checks_is_refused_with_its_id() -> None:
    with pytest.raises(UserError, match="case 'quiet': no checks"):
        Suite("s", [Case("quiet", "x", [])])


def test_an_unknown_scorer_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"case 'c': unknown scorer 'vibes': use one of .*contains"):
        Suite("s", [Case("c", "x", [Check("vibes")])])


def test_parameters_a_scorer_does_not_take_are_refused() -> None:
    with pytest.raises(UserError, match=r"scorer 'contains'.*it takes texts, any_of, case_sensitive"):
        Suite("s", [Case("c", "x", [Check("contains", {"text": "x"})])])


def test_duplicate_case_ids_and_check_names_are_refused() -> None:
    with pytest.raises(UserError, match="two cases have this id"):
        Suite("s", [Case("c", "x", [contains("a")]), Case("c", "y", [contains("b")])])
    with pytest.raises(UserError, match="two checks are named 'contains'"):
        Suite("s", [Case("c", "x", [contains("a"), contains("b")])])
    with pytest.raises(UserError, match="no cases"):
        Suite("s", [])


def test_the_fingerprint_changes_with_what_a_case_asks_or_checks() -> None:
    base = Suite("s", [Case("c", "x", [contains("a")])])
    assert base.fingerprint == Suite("s", [Case("c", "x", [contains("a")])]).fingerprint
    assert base.fingerprint != Suite("s", [Case("c", "y", [contains("a")])]).fingerprint
    assert base.fingerprint != Suite("s", [Case("c", "x", [contains("b")])]).fingerprint


def test_a_yaml_suite_loads_with_every_parameter_form(tmp_path: Path) -> None:
    path = tmp_path / "faq.yaml"
    path.write_text(
        """
suite: faq
description: refunds
cases:
  - id: refund-window
    input: How long do I have to ask for a refund?
    tags: [policy]
    checks:
      - contains: "30 days"
      - forbidden_tools: [issue_refund]
      - regex: {pattern: "^you have", ignore_case: true, label: starts politely}
      - within_limits: null
""",
        encoding="utf-8",
    )
    suite = load_suite(path)
    assert suite.name == "faq" and suite.description == "refunds"
    (case,) = suite.cases
    assert case.tags == ("policy",)
    assert [(c.scorer, dict(c.params), c.name) for c in case.checks] == [
        ("contains", {"texts": "30 days"}, "contains"),
        ("forbidden_tools", {"tools": ["issue_refund"]}, "forbidden_tools"),
        ("regex", {"pattern": "^you have", "ignore_case": True}, "starts politely"),
        ("within_limits", {}, "within_limits"),
    ]
    obs = observe("You have 30 days.")
    assert all(grade(c, obs).passed for c in case.checks)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("cases: [{id: a, input: x, checks: [{vibes: 1}]}]", "case 'a': unknown scorer 'vibes'"),
        ("cases: [{id: a, input: x, checks: []}]", "case 'a': no checks"),
        ("cases: [{id: a, input: x, checks: [{contains: x}], colour: red}]", "case #1: unknown key"),
        ("cases: [{input: x, checks: [{contains: x}]}]", "case #1: id and input are required"),
        ("cases:\n  - id: a\n   input: x", "line 3: not valid YAML"),
        ("suite: s", "a list under `cases:`"),
        ("cases: [{id: a, input: x, checks: [{within_limits: 3}]}]", "takes no parameters"),
        ("cases: [{id: a, input: x, setup: nowhere.module:fn, checks: [{contains: x}]}]", "cannot import nowhere"),
    ],
)
def test_a_bad_yaml_suite_is_refused_with_where_and_why(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_suite(path)


def test_a_python_suite_loads_by_reference() -> None:
    suite = load_suite("tests.evals.test_suite:example_suite")
    assert suite.name == "example"
    with pytest.raises(UserError, match="must be written module:attribute"):
        load_suite("tests.evals.test_suite")
    with pytest.raises(UserError, match="has no 'nothing'"):
        load_suite("tests.evals.test_suite:nothing")
    with pytest.raises(UserError, match=r"not a tether\.evals\.Suite"):
        load_suite("tests.evals.test_suite:SONG")


SONG = "not a suite"


def example_suite() -> Suite:
    return Suite("example", [Case("c", "x", [contains("x")])])


# --- scorers --------------------------------------------------------------------------------------


def test_outcome_reads_the_final_state() -> None:
    env = {"restarted": ["api"]}
    passed = grade(outcome(lambda e: e["restarted"] == ["api"], "api only"), observe(env=env))
    failed = grade(outcome(lambda e: (False, "db restarted too")), observe(env=env))
    assert passed.passed and not failed.passed and failed.explanation == "db restarted too"
    expect = Check("outcome", {"expect": {"restarted": ["db"]}})
    assert grade(expect, observe(env=env)).explanation == "restarted is ['api'], expected ['db']"
    with pytest.raises(UserError, match="need an environment"):
        grade(outcome(lambda e: True), observe())


def test_answer_scorers() -> None:
    obs = observe('Done.\n```json\n{"service": "api", "restarted": true}\n```')
    assert not grade(exact("Done."), obs).passed
    assert grade(exact("  hello "), observe("hello")).passed
    assert grade(exact("HELLO", case_sensitive=False), observe("hello")).passed
    assert grade(contains("DONE", "api"), obs).passed
    assert not grade(contains("db", "api"), obs).passed
    assert grade(contains("db", "api", any_of=True), obs).passed
    assert grade(regex(r"restarted.: true"), obs).passed
    schema = {
        "type": "object",
        "required": ["service", "restarted"],
        "properties": {"service": {"enum": ["api", "db"]}, "restarted": {"type": "boolean"}},
    }
    assert grade(json_schema(schema), obs).passed
    wrong = grade(json_schema({**schema, "properties": {"service": {"enum": ["db"]}}}), obs)
    assert not wrong.passed and "first at service" in wrong.explanation
    assert "not JSON" in grade(json_schema(schema), observe("no json here")).explanation
    with pytest.raises(UserError, match="not a valid regular expression"):
        grade(regex("("), obs)


def test_trajectory_scorers_read_what_ran_not_what_was_asked() -> None:
    calls = (
        call("list_alerts"),
        call("restart_service", risk="irreversible", decision="denied", executed=False, service="db"),
        call("query_logs", service="api"),
        call("page_human", risk="write"),
    )
    obs = observe(calls=calls, tool_calls=4)
    assert grade(required_tools("list_alerts", "page_human"), obs).passed
    assert not grade(required_tools("restart_service"), obs).passed
    assert grade(forbidden_tools("restart_service"), obs).passed
    assert not grade(forbidden_tools("restart_service", attempted=True), obs).passed
    assert grade(tool_order("list_alerts", "query_logs", "page_human"), obs).passed
    assert not grade(tool_order("query_logs", "list_alerts"), obs).passed
    assert grade(max_steps(4), obs).passed and not grade(max_steps(3), obs).passed
    assert grade(max_steps(2, count="turns"), obs).passed


def test_safety_scorers() -> None:
    injected = (call("restart_service", risk="irreversible", decision="allowed", service="db"),)
    blocked = (call("restart_service", risk="irreversible", decision="rejected", executed=False, service="db"),)
    approved = (call("restart_service", risk="irreversible", decision="approved", service="api"),)

    assert not grade(no_injected_action("restart_service", service="db"), observe(calls=injected)).passed
    kept = grade(no_injected_action("restart_service", service="db"), observe(calls=blocked))
    assert kept.passed and kept.details["attempted"]
    assert grade(no_injected_action("restart_service", service="db"), observe(calls=approved)).passed

    assert not grade(approval_respected(), observe(calls=injected)).passed
    assert grade(approval_respected(), observe(calls=approved)).passed

    assert grade(asked_clarification(), observe("Which service do you mean: api or search?")).passed
    assert not grade(asked_clarification(), observe("Restarted search.")).passed
    acted = grade(asked_clarification(), observe("Which one?", calls=approved))
    assert not acted.passed and "acted on an ambiguous request" in acted.explanation

    assert grade(within_limits(), observe()).passed
    looped = grade(within_limits(), observe(stop_reason=StopReason.LOOP_DETECTED, error="x called 3 times"))
    assert not looped.passed and "loop_detected" in looped.explanation


def test_custom_scorers_register_by_name_and_names_are_unique() -> None:
    @scorer("mentions_ticket", kind="answer")
    def mentions_ticket(obs: Observation, prefix: str = "CHK-") -> Score:
        return Score(prefix in obs.output)

    try:
        assert grade(Check("mentions_ticket"), observe("see CHK-4411")).passed
        Suite("s", [Case("c", "x", [Check("mentions_ticket", {"prefix": "OPS-"})])])
        with pytest.raises(ValueError, match="registered already"):
            scorer("mentions_ticket")(lambda obs: Score(True))
    finally:
        del SCORERS["mentions_ticket"]


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    import os
    import subprocess
    import sys

    code = "from tether.demo.evals import suite; print(suite().fingerprint)"
    prints = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(prints) == 1


def test_a_yaml_judge_names_its_model_by_reference(tmp_path: Path) -> None:
    path = tmp_path / "judged.yaml"
    path.write_text(
        "cases:\n  - id: a\n    input: x\n    checks:\n"
        "      - judge: {rubric: polite, samples: 1, model: 'sim:claude-haiku-4-5'}\n",
        encoding="utf-8",
    )
    (case,) = load_suite(path).cases
    # The simulated judge has no scenario: it answers without a score, which is the judge failing.
    with pytest.raises(Exception, match="without a 'SCORE: <0-10>' line"):
        grade(case.checks[0], observe("thank you"))
    with pytest.raises(UserError, match="unknown provider 'nowhere'"):
        grade(Check("judge", {"rubric": "r", "model": "nowhere:x"}), observe("x"))
