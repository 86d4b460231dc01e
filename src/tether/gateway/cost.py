"""Cost of a model call, priced with genai-prices.

Never a hand-written price table. A model with no known price has an
*unknown* cost (``Cost.usd is None``), never $0. The price-data version is
kept with every cost so a figure can be traced back to the prices it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib.metadata import version

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from tether.messages import Usage
from tether.models.base import PriceRef

__all__ = ["PRICE_DATA_VERSION", "Cost", "price_usage"]

PRICE_DATA_VERSION = f"genai-prices=={version('genai-prices')}"


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one call; ``usd`` is None when the price is unknown."""

    usd: Decimal | None
    price_version: str = PRICE_DATA_VERSION
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.usd is not None


@lru_cache(maxsize=4096)
def _price(provider_id: str, model_ref: str, inp: int, out: int, cr: int, cw: int) -> Decimal | str:
    try:
        calc = calc_price(
            PriceUsage(input_tokens=inp, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw),
            model_ref=model_ref,
            provider_id=provider_id,
        )
    except LookupError:
        return f"no price known for {provider_id}:{model_ref} in {PRICE_DATA_VERSION}"
    return Decimal(calc.total_price)


def price_usage(ref: PriceRef | None, usage: Usage) -> Cost:
    """Price ``usage`` at ``ref``'s list price, including cache reads and writes.

    genai-prices counts cache tokens inside ``input_tokens``, exactly as
    tether's ``Usage`` does, so the fields pass through unchanged.
    """
    if ref is None:
        return Cost(usd=None, reason="model has no price reference")
    result = _price(
        ref.provider_id,
        ref.model_ref,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
    )
    if isinstance(result, str):
        return Cost(usd=None, reason=result)
    return Cost(usd=result)
