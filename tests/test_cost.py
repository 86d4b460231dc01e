"""Cost from genai-prices: cache tokens priced, unknown prices unknown."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tether.messages import Usage
from tether.pricing import PRICE_DATA_VERSION, PriceRef, price_usage

SONNET = PriceRef("anthropic", "claude-sonnet-4-5")


def test_cache_reads_are_cheaper_and_cache_writes_dearer_than_plain_input() -> None:
    plain = price_usage(SONNET, Usage(input_tokens=10_000)).usd
    read = price_usage(SONNET, Usage(input_tokens=10_000, cache_read_tokens=10_000)).usd
    write = price_usage(SONNET, Usage(input_tokens=10_000, cache_write_tokens=10_000)).usd
    assert plain == Decimal("0.03")
    assert read == Decimal("0.003")
    assert write == Decimal("0.0375")


def test_unknown_model_has_unknown_cost_not_zero() -> None:
    cost = price_usage(PriceRef("anthropic", "claude-imaginary-9"), Usage(input_tokens=100))
    assert cost.usd is None and not cost.known
    assert "claude-imaginary-9" in (cost.reason or "")


def test_no_price_reference_is_unknown() -> None:
    assert price_usage(None, Usage(input_tokens=1)).usd is None


def test_the_price_data_version_is_recorded() -> None:
    assert price_usage(SONNET, Usage()).price_version == PRICE_DATA_VERSION
    assert PRICE_DATA_VERSION.startswith("genai-prices==")


def test_the_long_context_tier_applies_above_200k_input_tokens() -> None:
    below = price_usage(SONNET, Usage(input_tokens=200_000)).usd
    above = price_usage(SONNET, Usage(input_tokens=200_001)).usd
    assert below == Decimal("0.6")
    assert above is not None and above > Decimal("1.2")  # $6/M once the prompt passes 200k


@given(
    uncached=st.integers(0, 66_000),
    read=st.integers(0, 66_000),
    write=st.integers(0, 66_000),
    out=st.integers(0, 10**5),
)
def test_below_the_long_context_tier_price_is_linear_in_each_kind_of_token(
    uncached: int, read: int, write: int, out: int
) -> None:
    usage = Usage(
        input_tokens=uncached + read + write, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
    )
    expected = (
        Decimal(uncached) * Decimal("3") + Decimal(read) * Decimal("0.3") + Decimal(write) * Decimal("3.75")
        + Decimal(out) * Decimal("15")
    ) / Decimal(1_000_000)  # fmt: skip
    assert price_usage(SONNET, usage).usd == expected
