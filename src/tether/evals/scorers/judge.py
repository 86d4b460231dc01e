"""The ``judge`` scorer: an LLM grades the answer against a rubric, several times."""

from __future__ import annotations

import re
import statistics
from decimal import Decimal
from typing import Any

import orjson

from tether.errors import ModelError, UserError
from tether.evals.scorers.check import Check
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.registry import scorer
from tether.evals.scorers.score import Score
from tether.messages import Message, ModelRequest
from tether.models.base import Model
from tether.pricing import price_usage


class JudgeFailed(ModelError):
    """The judge model failed or answered without a score: an infrastructure failure, not the agent's."""


_JUDGE_SYSTEM = """\
You grade the work of an AI agent against a rubric. Read the task, what the agent did and its final
answer, then grade how well the answer meets the rubric on a scale from 0 (not at all) to 10 (fully).
Reply with exactly two lines:
SCORE: <integer 0-10>
REASON: <one sentence>"""

_SCORE_LINE = re.compile(r"^\s*SCORE:\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$", re.MULTILINE | re.IGNORECASE)


def _judge_prompt(obs: Observation, rubric: str) -> str:
    steps = "\n".join(
        f"- {c.name}({orjson.dumps(c.arguments).decode()[:200]})" + (" [error]" if c.is_error else "")
        for c in obs.calls
    )
    return (
        f"RUBRIC:\n{rubric}\n\nTASK:\n{obs.task}\n\nTOOL CALLS:\n{steps or '(none)'}\n\n"
        f"FINAL ANSWER:\n{obs.output or '(empty)'}"
    )


@scorer("judge", kind="judge")
async def _judge(
    obs: Observation, rubric: str, samples: int = 3, threshold: float = 0.7, model: Model | str | None = None
) -> Score:
    """An LLM grades the answer ``samples`` times; passes when the mean grade (0-1) reaches ``threshold``.

    The spread of the grades (their standard deviation) is the judge's own variance, kept in
    the details. A judge that fails or answers without a ``SCORE:`` line raises ``JudgeFailed``:
    an infrastructure failure of the trial, not a failure of the agent.
    """
    if isinstance(model, str):  # a YAML suite names its judge: "anthropic:claude-haiku-4-5"
        model = _judge_named(model)
    judge_model = model or obs.judge_model
    if judge_model is None:
        raise UserError("judge check: no judge model; pass --judge-model (e.g. sim:claude-haiku-4-5) or model=")
    if samples < 1 or not 0 <= threshold <= 1:
        raise UserError("judge check: samples must be ≥ 1 and threshold between 0 and 1")
    request = ModelRequest(
        model=judge_model.model_name,
        system=_JUDGE_SYSTEM,
        messages=(Message.user(_judge_prompt(obs, rubric)),),
        max_tokens=200,
        metadata={"cache": "bypass", "purpose": "eval-judge"},
    )
    grades: list[float] = []
    reasons: list[str] = []
    for _ in range(samples):
        try:
            response = await judge_model.complete(request)
        except ModelError as exc:
            raise JudgeFailed(f"judge model failed: {exc}", provider=judge_model.provider) from None
        cost = (
            Decimal(response.cost_usd or 0)
            if response.priced
            else price_usage(judge_model.price_ref, response.usage).usd
        )
        obs.judge_spend.append(cost)
        found = _SCORE_LINE.search(response.text)
        if found is None:
            raise JudgeFailed(
                f"judge answered without a 'SCORE: <0-10>' line: {response.text[:120]!r}", provider=judge_model.provider
            )
        grades.append(min(10.0, float(found.group(1))) / 10)
        reason = response.text[found.end() :].strip().removeprefix("REASON:").strip()
        reasons.append(reason[:200])
    mean = statistics.fmean(grades)
    spread = statistics.pstdev(grades) if len(grades) > 1 else 0.0
    return Score(
        mean >= threshold,
        f"judge mean {mean:.2f} (threshold {threshold:.2f}, sd {spread:.2f} over {len(grades)})",
        value=mean,
        details={"grades": grades, "sd": spread, "reasons": reasons},
    )


_JUDGES: dict[str, Model] = {}


def _judge_named(ref: str) -> Model:
    """One model per reference for the whole process (its connections are reused across trials)."""
    if ref not in _JUDGES:
        from tether.models import resolve_model

        _JUDGES[ref] = resolve_model(ref)
    return _JUDGES[ref]


def judge(
    rubric: str, *, samples: int = 3, threshold: float = 0.7, model: Model | None = None, label: str | None = None
) -> Check:
    params: dict[str, Any] = {"rubric": rubric, "samples": samples, "threshold": threshold}
    if model is not None:
        params["model"] = model
    return Check("judge", params, label)
