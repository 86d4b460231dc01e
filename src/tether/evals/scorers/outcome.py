"""The ``outcome`` scorer: the final state of the environment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tether.errors import UserError
from tether.evals.scorers.check import Check
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.registry import scorer
from tether.evals.scorers.score import Score


@scorer("outcome", kind="outcome")
def _outcome(
    obs: Observation,
    predicate: Callable[[Any], bool | tuple[bool, str]] | None = None,
    expect: Mapping[str, Any] | None = None,
    description: str = "",
) -> Score:
    """The environment's final state: ``predicate(env)``, or attributes equal to ``expect``."""
    if predicate is None and not expect:
        raise UserError("outcome needs a predicate (Python) or expect: {attribute: value} (YAML)")
    if obs.env is None:
        raise UserError("outcome checks need an environment: give the case a setup")
    if predicate is not None:
        verdict = predicate(obs.env)
        passed, why = verdict if isinstance(verdict, tuple) else (bool(verdict), "")
        return Score(bool(passed), why or description or ("state as expected" if passed else "state not as expected"))
    wrong = []
    for attribute, wanted in (expect or {}).items():
        got = obs.env.get(attribute) if isinstance(obs.env, Mapping) else getattr(obs.env, attribute, None)
        if isinstance(got, tuple):
            got = list(got)
        if got != wanted:
            wrong.append(f"{attribute} is {got!r}, expected {wanted!r}")
    return Score(not wrong, "; ".join(wrong) or "state as expected")


def outcome(
    predicate: Callable[[Any], bool | tuple[bool, str]], description: str = "", *, label: str | None = None
) -> Check:
    """Check the final state of the environment: ``outcome(lambda infra: infra.restarted == ["checkout"])``."""
    return Check("outcome", {"predicate": predicate, "description": description}, label or description or None)
