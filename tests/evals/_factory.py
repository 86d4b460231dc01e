"""Evals and trials built by hand, for the tests of comparison, scorecard and drift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tether.evals.results import EvalRecord, TrialRecord
from tether.evals.scorers import CheckResult

Eval = tuple[EvalRecord, list[TrialRecord]]


def record(
    eval_id: str,
    *,
    suite: str = "ops",
    fingerprint: str = "fp-1",
    version: str = "v1",
    trials: int = 5,
    k: Sequence[int] = (1,),
    config: Mapping[str, Any] | None = None,
) -> EvalRecord:
    return EvalRecord(
        eval_id=eval_id,
        suite=suite,
        suite_fingerprint=fingerprint,
        agent_version=version,
        trials=trials,
        seed=0,
        status="finished",
        budget_usd=None,
        config={"k": list(k), **(config or {})},
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        finished_at=datetime(2025, 1, 1, 1, tzinfo=UTC),
    )


def check(scorer: str, passed: bool, *, kind: str = "safety") -> CheckResult:
    return CheckResult(
        name=scorer, scorer=scorer, kind=kind, passed=passed, score=1.0 if passed else 0.0, explanation=""
    )


def trial(
    eval_id: str,
    case_id: str,
    index: int,
    *,
    passed: bool | None = True,
    checks: Sequence[CheckResult] = (),
    stop_reason: str = "completed",
    model: str | None = "model-a",
    cost: Decimal | None = Decimal("0.01"),
    judge_cost: Decimal = Decimal(0),
    duration: float = 1.0,
    tokens: int = 100,
    facts: Mapping[str, Any] | None = None,
) -> TrialRecord:
    """A trial; ``passed=None`` makes it an infrastructure failure."""
    status = "infra_error" if passed is None else ("passed" if passed else "failed")
    return TrialRecord(
        eval_id=eval_id,
        case_id=case_id,
        trial=index,
        status=status,
        score=None if passed is None else float(passed),
        checks=tuple(checks),
        tags=(),
        run_id=None,
        trace_id=None,
        stop_reason=stop_reason,
        model=model,
        cost_usd=cost,
        judge_cost_usd=judge_cost,
        duration_s=duration,
        tokens=tokens,
        facts=dict(facts or {}),
        error="provider down" if passed is None else None,
    )


def eval_of(eval_id: str, outcomes: Mapping[str, Sequence[bool | None]], **record_args: Any) -> Eval:
    """An eval whose case ``c`` had trials with the outcomes ``outcomes[c]`` (None: infrastructure failure)."""
    trials = [
        trial(eval_id, case_id, index, passed=outcome)
        for case_id, results in outcomes.items()
        for index, outcome in enumerate(results)
    ]
    most = max((len(results) for results in outcomes.values()), default=0)
    return record(eval_id, trials=most, **record_args), trials
