"""Cost of a model call, priced with genai-prices.

Never a hand-written price table. A model with no known price has an
*unknown* cost (``Cost.usd is None``), never $0. The price-data version is
kept with every cost so a figure can be traced back to the prices it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from importlib.metadata import version
from typing import TYPE_CHECKING

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from tether.messages import Usage

if TYPE_CHECKING:
    from tether.config import PriceConfig

__all__ = ["CONFIGURED_PRICE_VERSION", "PRICE_DATA_VERSION", "Cost", "CostRecord", "PriceRef", "Pricer", "price_usage"]

PRICE_DATA_VERSION = f"genai-prices=={version('genai-prices')}"
CONFIGURED_PRICE_VERSION = "tether.toml"
_MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class PriceRef:
    """Which price list entry a model's usage is billed at (genai-prices ids)."""

    provider_id: str
    model_ref: str


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


@dataclass(frozen=True, slots=True)
class CostRecord:
    """One settled model call, as ``tether cost`` reports it.

    ``cost_usd`` is None when the price is unknown (never $0); ``price_version``
    says which prices were used (a genai-prices release, or ``tether.toml``).
    """

    time_ns: int
    route: str
    deployment: str
    provider: str
    model: str
    agent: str | None
    key: str | None
    run_id: str | None
    usage: Usage
    cost_usd: Decimal | None
    price_version: str


class Pricer:
    """Prices usage: configured prices first (``[prices."<model>"]``), genai-prices otherwise.

    Args:
        prices: configured prices by model name (the deployment's model).
    """

    def __init__(self, prices: Mapping[str, PriceConfig] | None = None) -> None:
        self._prices = dict(prices or {})

    def has_price(self, ref: PriceRef | None, model: str) -> bool:
        """Whether a call to ``model`` can be priced at all."""
        return model in self._prices or price_usage(ref, Usage(input_tokens=1)).known

    def price(self, ref: PriceRef | None, model: str, usage: Usage) -> Cost:
        """The cost of ``usage``; unknown (``usd=None``) when neither source has a price."""
        configured = self._prices.get(model)
        if configured is None:
            return price_usage(ref, usage)
        read = (
            configured.cache_read_per_mtok if configured.cache_read_per_mtok is not None else configured.input_per_mtok
        )
        write = (
            configured.cache_write_per_mtok
            if configured.cache_write_per_mtok is not None
            else configured.input_per_mtok
        )
        usd = (
            Decimal(usage.uncached_input_tokens) * configured.input_per_mtok
            + Decimal(usage.cache_read_tokens) * read
            + Decimal(usage.cache_write_tokens) * write
            + Decimal(usage.output_tokens) * configured.output_per_mtok
        ) / _MTOK
        return Cost(usd=usd, price_version=CONFIGURED_PRICE_VERSION)

    def max_cost(self, ref: PriceRef | None, model: str, *, input_tokens: int, max_output_tokens: int) -> Cost:
        """The most a call can cost: every input token uncached, every allowed output token used.

        This is what a budget reserves before the call (and settles to the real
        cost after), so a call that would not fit is refused before it is made.
        """
        # A cache write costs more than plain input (or the same where a model has no
        # cache-write price), so the worst case bills the whole prompt as a cache write.
        if input_tokens < 0 or max_output_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {input_tokens} and {max_output_tokens}")
        # Built without validation (checked above; on every call's path, validation was 3 % of the proxy's CPU).
        worst = Usage.model_construct(
            input_tokens=input_tokens, output_tokens=max_output_tokens, cache_write_tokens=input_tokens
        )
        return self.price(ref, model, worst)
