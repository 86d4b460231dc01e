"""The budgets a call draws on: ``BudgetScope`` (a run, agent, route or key, with its limits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tether.config import BudgetLimit

ScopeKind = Literal["run", "agent", "route", "key"]


@dataclass(frozen=True)
class BudgetScope:
    """One budget a call draws on.

    Attributes:
        kind: what the budget belongs to: a run, an agent, a route or a virtual key.
        name: which one, e.g. the route's name.
        limit: its limits; read at each reservation, so a changed tether.toml applies at once.
    """

    kind: ScopeKind
    name: str
    limit: BudgetLimit

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"a {self.kind} budget needs a name")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def _check_scopes(scopes: Sequence[BudgetScope]) -> None:
    names = [str(s) for s in scopes]
    if len(set(names)) != len(names):
        raise ValueError(f"a budget scope appears twice in {names}: each may be charged once per call")
