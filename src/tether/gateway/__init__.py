"""The gateway every model call passes: routing across tiers, retries and fallbacks, circuit breakers,
rate limits, budgets that fail closed, fault injection, the cost ledger and the HTTP proxy.

The gateway itself is ``tether.gateway.gateway.Gateway`` (``tether.Gateway``; ``tether.open().gateway``
builds it from ``[routes]``); each concern is a module of this package. The package re-exports only the
price names below, for code written when it held cost accounting alone.
"""

# Imported on first use (PEP 562): ``tether.pricing`` loads the price data (genai-prices, httpx), which
# every CLI command (and every importer of ``tether.gateway.retry`` and the like) would otherwise pay for.
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.pricing import PRICE_DATA_VERSION, Cost, price_usage

__all__ = ["PRICE_DATA_VERSION", "Cost", "price_usage"]


if not TYPE_CHECKING:  # type checkers see the import above; a visible __getattr__ would let any name through

    def __getattr__(name: str) -> object:
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module("tether.pricing"), name)
        globals()[name] = value  # later lookups find it without coming here again
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
