"""The scorer registry: ``@scorer`` registers a function by name, ``lookup`` finds it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tether.errors import UserError
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.score import Score

Kind = Literal["outcome", "answer", "trajectory", "judge", "safety"]
ScoreFn = Callable[..., Score | Awaitable[Score]]


@dataclass(frozen=True)
class ScorerDef:
    name: str
    kind: Kind
    fn: ScoreFn
    signature: inspect.Signature

    def bind(self, params: Mapping[str, Any]) -> None:
        """Check parameters against the scorer's signature.

        Raises:
            UserError: a parameter it does not take, or a required one missing.
        """
        try:
            self.signature.bind(None, **params)
        except TypeError as exc:
            accepted = [p for p in list(self.signature.parameters)[1:]]
            raise UserError(f"scorer {self.name!r}: {exc}; it takes {', '.join(accepted) or 'no parameters'}") from None

    async def score(self, observation: Observation, params: Mapping[str, Any]) -> Score:
        value = self.fn(observation, **params)
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, Score):
            raise TypeError(f"scorer {self.name!r} returned {type(value).__name__}, not a Score")
        return value


#: Every registered scorer, by name.
SCORERS: dict[str, ScorerDef] = {}


def scorer(name: str, *, kind: Kind = "outcome") -> Callable[[ScoreFn], ScoreFn]:
    """Register a scorer: ``@scorer("restarted_only", kind="outcome")``.

    The function takes the ``Observation`` first and its parameters as keyword
    arguments, and returns a ``Score`` (it may be async).

    Raises:
        ValueError: the name is taken.
    """

    def register(fn: ScoreFn) -> ScoreFn:
        if name in SCORERS and SCORERS[name].fn is not fn:
            raise ValueError(f"a scorer named {name!r} is registered already; pick another name")
        SCORERS[name] = ScorerDef(name, kind, fn, inspect.signature(fn))
        return fn

    return register


def lookup(name: str) -> ScorerDef:
    """The scorer registered as ``name``.

    Raises:
        UserError: no scorer has that name (the message lists the known ones).
    """
    found = SCORERS.get(name)
    if found is None:
        raise UserError(f"unknown scorer {name!r}: use one of {', '.join(sorted(SCORERS))} or register it with @scorer")
    return found
