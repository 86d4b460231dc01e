"""A budget's limits as tether.toml writes them: ``BudgetLimit``."""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A BIGINT holds 9.2e18 nano-dollars; a limit of at most $1e9 leaves room for overspend on top.
_MAX_USD: Final = Decimal(1_000_000_000)
_MAX_TOKENS: Final = 10**15


class BudgetLimit(BaseModel):
    """A budget's limits, as written in tether.toml: ``{usd = 50, tokens = 2_000_000, period = "day"}``.

    Attributes:
        usd: the most that may be spent, in US dollars; None for no USD limit.
        tokens: the most tokens (input + output) that may be used; None for no token limit.
        period: ``"day"`` or ``"month"`` (UTC calendar periods); None for a lifetime budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd: Decimal | None = Field(default=None, gt=0, le=_MAX_USD, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, le=_MAX_TOKENS)
    period: Literal["day", "month"] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> Self:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs usd, tokens or both, e.g. {usd = 50, period = 'day'}")
        return self
