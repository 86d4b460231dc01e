"""Money as integer nano-dollars (1e-9 USD): amounts round up, limits down, so sums are exact."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Final

_NANOS_PER_USD: Final = 9  # decimal places of a nano-dollar


def _to_nanos(usd: Decimal, rounding: str) -> int:
    # A wide context: the scaling must be exact before the one rounding we choose.
    with localcontext(prec=60):
        return int(usd.scaleb(_NANOS_PER_USD).to_integral_value(rounding=rounding))


def _to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-_NANOS_PER_USD)


def _check_amounts(usd: Decimal, tokens: int) -> None:
    if not isinstance(usd, Decimal) or not usd.is_finite() or usd < 0:
        raise ValueError(f"a budget amount must be a finite Decimal >= 0, got {usd!r}")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"a token count must be an int >= 0, got {tokens!r}")
