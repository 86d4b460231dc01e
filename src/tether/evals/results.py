"""Eval results in the store: one ``eval_runs`` row per eval, one ``eval_trials`` row per trial.

Trials are written as they finish, so an interrupted eval keeps what it did and
``--resume`` runs only what is missing. Money is kept in nano-dollars like the
cost ledger; an unknown cost is NULL, never 0.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy import Engine, RowMapping, delete, insert, select, tuple_, update

from tether.errors import UserError
from tether.evals.scorers import CheckResult
from tether.store.access import StoreAccess
from tether.store.bulk import insert_rows
from tether.store.schema import eval_runs, eval_trials

if TYPE_CHECKING:
    from tether.store import TraceStore

__all__ = ["EvalRecord", "EvalStore", "TrialRecord", "TrialStatus"]

TrialStatus = Literal["passed", "failed", "infra_error"]
_NANO = Decimal(1_000_000_000)
# Trials per DELETE when rows are replaced: two bound values each, well under SQLite's limit.
_DELETE_CHUNK = 4096


def _to_nano(value: Decimal | None) -> int | None:
    return None if value is None else int((value * _NANO).to_integral_value())


def _from_nano(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value) / _NANO


@dataclass(frozen=True)
class TrialRecord:
    """One trial of one case, as graded and stored.

    ``status`` is ``passed`` (every check passed), ``failed`` (the agent's failure) or
    ``infra_error`` (the provider, the judge or the harness failed: excluded from pass rates,
    but counted and shown). ``facts`` are what the safety scorecard reads (tool calls,
    hallucinated calls, irreversible calls without approval, injected actions…).
    """

    eval_id: str
    case_id: str
    trial: int
    status: TrialStatus
    score: float | None
    checks: tuple[CheckResult, ...]
    tags: tuple[str, ...]
    run_id: str | None
    trace_id: str | None
    stop_reason: str | None
    model: str | None
    cost_usd: Decimal | None
    judge_cost_usd: Decimal
    duration_s: float
    tokens: int
    facts: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def counted(self) -> bool:
        """Counts towards pass rates (not an infrastructure failure)."""
        return self.status != "infra_error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_id": self.eval_id,
            "case_id": self.case_id,
            "trial": self.trial,
            "status": self.status,
            "score": self.score,
            "checks": [c.to_dict() for c in self.checks],
            "tags": list(self.tags),
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "stop_reason": self.stop_reason,
            "model": self.model,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "judge_cost_usd": str(self.judge_cost_usd),
            "duration_s": self.duration_s,
            "tokens": self.tokens,
            "facts": dict(self.facts),
            "error": self.error,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class EvalRecord:
    """One eval: a suite run against one agent version, ``trials`` times per case."""

    eval_id: str
    suite: str
    suite_fingerprint: str
    agent_version: str
    trials: int
    seed: int
    status: str  # running | finished | interrupted | over_budget
    budget_usd: Decimal | None
    config: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_id": self.eval_id,
            "suite": self.suite,
            "suite_fingerprint": self.suite_fingerprint,
            "agent_version": self.agent_version,
            "trials": self.trials,
            "seed": self.seed,
            "status": self.status,
            "budget_usd": None if self.budget_usd is None else str(self.budget_usd),
            "config": dict(self.config),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def _eval_from_row(row: RowMapping) -> EvalRecord:
    return EvalRecord(
        eval_id=row["eval_id"],
        suite=row["suite"],
        suite_fingerprint=row["suite_fingerprint"],
        agent_version=row["agent_version"],
        trials=row["trials"],
        seed=row["seed"],
        status=row["status"],
        budget_usd=_from_nano(row["budget_nanousd"]),
        config=orjson.loads(row["config"]),
        started_at=_aware(row["started_at"]),
        finished_at=_aware(row["finished_at"]) if row["finished_at"] is not None else None,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _trial_from_row(row: RowMapping) -> TrialRecord:
    return TrialRecord(
        eval_id=row["eval_id"],
        case_id=row["case_id"],
        trial=row["trial"],
        status=row["status"],
        score=row["score"],
        checks=tuple(CheckResult.from_dict(c) for c in orjson.loads(row["checks"])),
        tags=tuple(orjson.loads(row["tags"])),
        run_id=row["run_id"],
        trace_id=row["trace_id"],
        stop_reason=row["stop_reason"],
        model=row["model"],
        cost_usd=_from_nano(row["cost_nanousd"]),
        judge_cost_usd=_from_nano(row["judge_cost_nanousd"]) or Decimal(0),
        duration_s=row["duration_s"],
        tokens=row["tokens"],
        facts=orjson.loads(row["facts"]),
        error=row["error"],
        created_at=_aware(row["created_at"]),
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _trial_row(trial: TrialRecord) -> dict[str, Any]:
    return {
        "eval_id": trial.eval_id,
        "case_id": trial.case_id,
        "trial": trial.trial,
        "status": trial.status,
        "score": trial.score,
        "checks": _dumps([c.to_dict() for c in trial.checks]),
        "tags": _dumps(list(trial.tags)),
        "run_id": trial.run_id,
        "trace_id": trial.trace_id,
        "stop_reason": trial.stop_reason,
        "model": trial.model,
        "cost_nanousd": _to_nano(trial.cost_usd),
        "judge_cost_nanousd": _to_nano(trial.judge_cost_usd),
        "duration_s": trial.duration_s,
        "tokens": trial.tokens,
        "facts": _dumps(dict(trial.facts)),
        "error": trial.error,
        "created_at": trial.created_at,
    }


class EvalStore(StoreAccess):
    """Evals and their trials in the store (SQLite or PostgreSQL)."""

    def __init__(self, store: TraceStore | Engine) -> None:
        super().__init__(store)

    def create(self, record: EvalRecord) -> None:
        with self._write("recording an eval") as connection:
            connection.execute(
                insert(eval_runs).values(
                    eval_id=record.eval_id,
                    suite=record.suite,
                    suite_fingerprint=record.suite_fingerprint,
                    agent_version=record.agent_version,
                    trials=record.trials,
                    seed=record.seed,
                    status=record.status,
                    budget_nanousd=_to_nano(record.budget_usd),
                    config=_dumps(record.config),
                    started_at=record.started_at,
                    finished_at=record.finished_at,
                )
            )

    def set_status(self, eval_id: str, status: str, *, finished: bool = False, trials: int | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": datetime.now(UTC) if finished else None}
        if trials is not None:
            values["trials"] = trials
        with self._write("updating an eval") as connection:
            connection.execute(update(eval_runs).where(eval_runs.c.eval_id == eval_id).values(**values))

    def add_trial(self, trial: TrialRecord) -> None:
        """Keep one trial; a trial run again (after an infrastructure failure) replaces the old row."""
        self.add_trials([trial])

    def add_trials(self, trials: Sequence[TrialRecord]) -> None:
        """Keep trials in one transaction; a trial run again replaces its old row.

        On SQLite the rows go in as multi-row INSERTs (``store/bulk.py``): the runner writes from a worker
        thread while the event loop is busy with trials, and a statement step per row would wait for the GIL
        once per row (measured: 3,000 trials took seconds to store, and the span writer timed out behind them).
        """
        if not trials:
            return
        rows = [_trial_row(t) for t in trials]
        with self._write("recording eval trials") as connection:
            for eval_id in {t.eval_id for t in trials}:
                keys = [(t.case_id, t.trial) for t in trials if t.eval_id == eval_id]
                for start in range(0, len(keys), _DELETE_CHUNK):
                    connection.execute(
                        delete(eval_trials).where(
                            eval_trials.c.eval_id == eval_id,
                            tuple_(eval_trials.c.case_id, eval_trials.c.trial).in_(keys[start : start + _DELETE_CHUNK]),
                        )
                    )
            dialect = connection.dialect
            if dialect.name == "sqlite":
                compiled = insert(eval_trials).compile(dialect=dialect, column_keys=[c.name for c in eval_trials.c])
                names = tuple(compiled.positiontup or ())
                # The multi-row path skips SQLAlchemy's type processing: apply it here (dates as SQLAlchemy
                # stores them, so queries compare like with like).
                processors = {c.name: c.type.bind_processor(dialect) for c in eval_trials.c}
                values = [
                    tuple(
                        processors[n](row[n]) if processors[n] is not None and row[n] is not None else row[n]  # type: ignore[misc]
                        for n in names
                    )
                    for row in rows
                ]
                insert_rows(connection, compiled.string, len(names), values)
            else:
                connection.execute(insert(eval_trials), rows)

    def get(self, eval_id: str) -> EvalRecord:
        """The eval with this id, or the only one starting with it.

        Raises:
            UserError: no eval (or more than one) matches.
        """
        with self._connect("reading an eval") as connection:
            rows = (
                connection.execute(
                    select(eval_runs).where(eval_runs.c.eval_id.startswith(eval_id, autoescape=True)).limit(2)
                )
                .mappings()
                .all()
            )
        if not rows:
            raise UserError(f"no eval {eval_id!r}: `tether eval list` shows the evals in this store")
        if len(rows) > 1 and rows[0]["eval_id"] != eval_id:
            raise UserError(f"eval id {eval_id!r} is ambiguous: give more of it")
        exact = [r for r in rows if r["eval_id"] == eval_id]
        return _eval_from_row(exact[0] if exact else rows[0])

    def trials(self, eval_id: str) -> builtins.list[TrialRecord]:
        with self._connect("reading eval trials") as connection:
            rows = connection.execute(
                select(eval_trials)
                .where(eval_trials.c.eval_id == eval_id)
                .order_by(eval_trials.c.case_id, eval_trials.c.trial)
            ).mappings()
            return [_trial_from_row(r) for r in rows]

    def list(
        self, *, suite: str | None = None, agent_version: str | None = None, limit: int = 50
    ) -> builtins.list[EvalRecord]:
        """Evals, newest first."""
        query = select(eval_runs).order_by(eval_runs.c.started_at.desc()).limit(limit)
        if suite is not None:
            query = query.where(eval_runs.c.suite == suite)
        if agent_version is not None:
            query = query.where(eval_runs.c.agent_version == agent_version)
        with self._connect("listing evals") as connection:
            return [_eval_from_row(r) for r in connection.execute(query).mappings()]

    def history(self, suite: str, agent_version: str | None = None, *, limit: int = 50) -> builtins.list[EvalRecord]:
        """Finished evals of a suite (optionally one agent version), oldest first: the drift history."""
        evals = [e for e in self.list(suite=suite, agent_version=agent_version, limit=limit) if e.finished_at]
        return sorted(evals, key=lambda e: e.started_at)


def cost_sum(values: Sequence[Decimal | None]) -> Decimal | None:
    """The sum, or None when any is unknown (an unknown cost is never 0)."""
    total = Decimal(0)
    for value in values:
        if value is None:
            return None
        total += value
    return total
