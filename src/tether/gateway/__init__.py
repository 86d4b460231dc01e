"""The gateway every model call passes: cost accounting (routing, budgets and the proxy come later)."""

from tether.gateway.cost import PRICE_DATA_VERSION, Cost, price_usage

__all__ = ["PRICE_DATA_VERSION", "Cost", "price_usage"]
