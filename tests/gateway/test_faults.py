"""Fault injection: every fault at rates 0 and 1, cut streams, latency, reproducibility, config."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from tether.config import FaultConfig, RetryPolicy
from tether.errors import MalformedResponseError, ModelHTTPError, ModelTimeoutError, StreamInterrupted
from tether.gateway.faults import FaultyModel
from tether.gateway.retry import call_with_retries
from tether.messages import (
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolUseDelta,
)
from tether.models.base import Model
from tether.pricing import PriceRef
from tether.testing import FunctionModel, text_response

REQUEST = ModelRequest(model="test-model", messages=(Message.user("checkout is down"),), metadata={"run_id": "r1"})
WORDS = ("The ", "checkout ", "service ", "is ", "back ", "up.")


class Streaming(Model):
    """Streams ``WORDS`` (and optionally a tool call) as deltas, and notes whether its stream was closed."""

    provider = "test"
    model_name = "streamer"

    def __init__(self, words: tuple[str, ...] = WORDS, *, tool_call: bool = False) -> None:
        self.words = words
        self.tool_call = tool_call
        self.response = text_response("".join(words))
        self.streams_closed = 0
        self.closed = False

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return self.response

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        try:
            for word in self.words:
                yield TextDelta(text=word)
            if self.tool_call:
                yield ToolUseDelta(index=1, id="call_1", name="query_logs")
                yield ToolUseDelta(index=1, arguments_delta='{"service": "checkout"}')
            yield ResponseDone(response=self.response)
        finally:
            self.streams_closed += 1

    async def aclose(self) -> None:
        self.closed = True


def echo() -> FunctionModel:
    return FunctionModel(lambda request: text_response(f"answer to {request.messages[-1].text}"))


async def collect(model: Model, request: ModelRequest = REQUEST) -> list[StreamEvent]:
    return [event async for event in model.stream(request)]


async def stream_until_error(model: Model) -> tuple[list[StreamEvent], Exception]:
    """The events a stream delivered before it failed, and its error."""
    received: list[StreamEvent] = []
    try:
        async for event in model.stream(REQUEST):
            received.append(event)
    except Exception as exc:
        return received, exc
    raise AssertionError(f"the stream ended without an error after {received}")


async def outcomes(model: Model, calls: int) -> list[str]:
    """What each of ``calls`` successive calls did: ``ok`` or the injected error."""
    seen: list[str] = []
    for _ in range(calls):
        try:
            await model.complete(REQUEST)
        except ModelHTTPError as exc:
            seen.append(f"http {exc.status}")
        except ModelTimeoutError:
            seen.append("timeout")
        except MalformedResponseError:
            seen.append("malformed")
        else:
            seen.append("ok")
    return seen


# --- passing through -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        FaultConfig(),
        FaultConfig(error_rate=0.0, timeout_rate=0.0, malformed_rate=0.0, stream_cut_rate=0.0),
        FaultConfig(latency_ms=1),
    ],
    ids=["inactive", "all-rates-zero", "latency-only"],
)
async def test_requests_pass_through_unchanged_when_no_fault_fires(faults: FaultConfig) -> None:
    answer = text_response("all good")
    inner = FunctionModel(lambda request: answer)
    model = FaultyModel(inner, faults)

    assert await model.complete(REQUEST) is answer
    assert inner.requests == [REQUEST]
    assert inner.requests[0] is REQUEST


async def test_streams_pass_through_unchanged_when_no_cut_fires() -> None:
    inner = Streaming(tool_call=True)
    events = await collect(FaultyModel(inner, FaultConfig(stream_cut_rate=0.0, latency_ms=1)))
    assert events == await collect(inner)
    assert isinstance(events[-1], ResponseDone)


def test_the_wrapper_looks_like_the_model_it_wraps() -> None:
    inner = FunctionModel(lambda r: text_response("x"), model_name="claude-sonnet-4-5")
    inner.price_ref = PriceRef(provider_id="anthropic", model_ref="claude-sonnet-4-5")
    inner.simulated = True
    model = FaultyModel(inner, FaultConfig(error_rate=0.5))
    assert (model.provider, model.model_name, model.price_ref, model.simulated, model.ref) == (
        "test",
        "claude-sonnet-4-5",
        inner.price_ref,
        True,
        "test:claude-sonnet-4-5",
    )


async def test_aclose_closes_the_inner_model() -> None:
    inner = Streaming()
    await FaultyModel(inner, FaultConfig(error_rate=1.0)).aclose()
    assert inner.closed


# --- each fault at rate 1 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(429, 2.5), (503, 2.5), (529, 2.5), (500, None), (400, None)])
async def test_error_rate_one_raises_the_http_error_a_provider_would(status: int, retry_after: float | None) -> None:
    inner = echo()
    model = FaultyModel(inner, FaultConfig(error_rate=1.0, error_statuses=(status,), retry_after_s=2.5))

    with pytest.raises(ModelHTTPError) as raised:
        await model.complete(REQUEST)

    error = raised.value
    assert (error.status, error.retry_after, error.provider) == (status, retry_after, "test")
    assert error.retryable is (status != 400)
    body = json.loads(error.body)
    assert body["type"] == "error"
    assert "injected fault" in body["error"]["message"]
    assert inner.requests == []  # an injected failure never reaches the provider


async def test_http_error_bodies_follow_the_providers_format() -> None:
    inner = echo()
    inner.provider = "openai"
    model = FaultyModel(inner, FaultConfig(error_rate=1.0, error_statuses=(429,)))
    with pytest.raises(ModelHTTPError) as raised:
        await model.complete(REQUEST)
    assert json.loads(raised.value.body)["error"]["type"] == "rate_limit_exceeded"
    assert raised.value.provider == "openai"


async def test_statuses_are_drawn_from_error_statuses() -> None:
    model = FaultyModel(echo(), FaultConfig(error_rate=1.0, error_statuses=(429, 500, 503)))
    seen = set(await outcomes(model, 60))
    assert seen == {"http 429", "http 500", "http 503"}


async def test_timeout_rate_one_hangs_for_timeout_after_s_then_times_out() -> None:
    inner = echo()
    model = FaultyModel(inner, FaultConfig(timeout_rate=1.0, timeout_after_s=0.05))
    started = time.perf_counter()
    with pytest.raises(ModelTimeoutError) as raised:
        await model.complete(REQUEST)
    assert time.perf_counter() - started >= 0.04
    assert raised.value.retryable
    assert inner.requests == []


async def test_malformed_rate_one_raises_as_an_adapter_does_on_a_garbage_body() -> None:
    inner = echo()
    with pytest.raises(MalformedResponseError, match="not a JSON object") as raised:
        await FaultyModel(inner, FaultConfig(malformed_rate=1.0)).complete(REQUEST)
    assert (raised.value.retryable, raised.value.provider) == (True, "test")
    assert inner.requests == []


@pytest.mark.parametrize("fault", ["error_rate", "timeout_rate", "malformed_rate"])
async def test_call_faults_also_fail_a_stream_before_its_first_event(fault: str) -> None:
    received, error = await stream_until_error(FaultyModel(Streaming(), FaultConfig(**{fault: 1.0})))
    assert received == []
    assert isinstance(error, ModelHTTPError | ModelTimeoutError | MalformedResponseError)


# --- cut streams ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [0, 1, 3, 5])
async def test_a_cut_stream_breaks_after_exactly_stream_cut_after_events(after: int) -> None:
    inner = Streaming()
    model = FaultyModel(inner, FaultConfig(stream_cut_rate=1.0, stream_cut_after=after))

    received, error = await stream_until_error(model)

    assert received == [TextDelta(text=w) for w in WORDS[:after]]
    assert isinstance(error, StreamInterrupted)
    assert error.partial_text == "".join(WORDS[:after])
    assert error.retryable
    assert inner.streams_closed == (1 if after else 0)  # the inner stream is closed, not left to the GC


async def test_a_stream_shorter_than_the_cut_point_is_cut_before_its_response_done() -> None:
    model = FaultyModel(Streaming(("Hel", "lo")), FaultConfig(stream_cut_rate=1.0, stream_cut_after=10))
    received, error = await stream_until_error(model)
    assert received == [TextDelta(text="Hel"), TextDelta(text="lo")]
    assert isinstance(error, StreamInterrupted)
    assert error.partial_text == "Hello"


async def test_tool_call_deltas_count_as_events_but_not_as_partial_text() -> None:
    words = ("Checking ", "logs.")
    model = FaultyModel(Streaming(words, tool_call=True), FaultConfig(stream_cut_rate=1.0, stream_cut_after=3))
    received, error = await stream_until_error(model)
    assert [type(e) for e in received] == [TextDelta, TextDelta, ToolUseDelta]
    assert isinstance(error, StreamInterrupted)
    assert error.partial_text == "Checking logs."


async def test_stream_cut_rate_does_not_touch_complete() -> None:
    model = FaultyModel(echo(), FaultConfig(stream_cut_rate=1.0))
    assert (await model.complete(REQUEST)).text == "answer to checkout is down"


# --- latency -------------------------------------------------------------------------------------------------


async def test_latency_is_really_slept() -> None:
    model = FaultyModel(echo(), FaultConfig(latency_ms=50))
    started = time.perf_counter()
    await model.complete(REQUEST)
    assert time.perf_counter() - started >= 0.045


async def test_jitter_never_makes_latency_negative() -> None:
    model = FaultyModel(echo(), FaultConfig(latency_ms=1, latency_jitter_ms=5))
    assert await outcomes(model, 20) == ["ok"] * 20


# --- reproducibility -----------------------------------------------------------------------------------------


async def test_the_same_seed_and_call_order_give_the_same_faults() -> None:
    faults = FaultConfig(error_rate=0.3, timeout_rate=0.2, malformed_rate=0.2, seed=11)
    first = await outcomes(FaultyModel(echo(), faults), 100)
    again = await outcomes(FaultyModel(echo(), faults), 100)
    assert first == again
    assert {"ok", "http 429", "http 500", "http 503", "timeout", "malformed"} <= set(first)


async def test_another_seed_gives_another_sequence() -> None:
    seen = {tuple(await outcomes(FaultyModel(echo(), FaultConfig(error_rate=0.5, seed=s)), 40)) for s in range(3)}
    assert len(seen) == 3


async def test_deployments_sharing_a_seed_fail_independently() -> None:
    faults = FaultConfig(error_rate=0.5)
    a = FaultyModel(FunctionModel(lambda r: text_response("a"), model_name="model-a"), faults)
    b = FaultyModel(FunctionModel(lambda r: text_response("b"), model_name="model-b"), faults)
    assert await outcomes(a, 40) != await outcomes(b, 40)


async def test_rates_are_honoured_over_many_calls() -> None:
    results = await outcomes(FaultyModel(echo(), FaultConfig(error_rate=0.25, seed=3)), 2_000)
    failed = sum(r != "ok" for r in results) / len(results)
    assert 0.21 < failed < 0.29


async def test_turning_on_one_fault_does_not_move_another() -> None:
    errors_only = await outcomes(FaultyModel(echo(), FaultConfig(error_rate=0.3, seed=5)), 100)
    with_more = await outcomes(
        FaultyModel(echo(), FaultConfig(error_rate=0.3, malformed_rate=0.5, latency_jitter_ms=0.1, seed=5)), 100
    )
    assert [r.startswith("http") for r in errors_only] == [r.startswith("http") for r in with_more]
    assert "malformed" in with_more


async def test_a_retry_rolls_an_injected_fault_afresh() -> None:
    inner = echo()
    model = FaultyModel(inner, FaultConfig(error_rate=0.5, seed=1))
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    response = await call_with_retries(
        lambda: model.complete(REQUEST), RetryPolicy(max_retries=20), rng=random.Random(0), sleep=sleep
    )
    assert response.text == "answer to checkout is down"
    assert len(inner.requests) == 1
    assert len(sleeps) == (await outcomes(FaultyModel(echo(), FaultConfig(error_rate=0.5, seed=1)), 40)).index("ok")


# --- config -------------------------------------------------------------------------------------------------


def test_active_is_true_only_when_a_fault_is_configured() -> None:
    assert not FaultConfig().active
    assert not FaultConfig(seed=9, retry_after_s=3, timeout_after_s=1, stream_cut_after=1).active
    for field in ("latency_ms", "latency_jitter_ms", "error_rate", "timeout_rate", "malformed_rate", "stream_cut_rate"):
        assert FaultConfig(**{field: 0.5}).active, field


def test_config_loads_from_toml_shaped_data() -> None:
    faults = FaultConfig.model_validate({"error_rate": 0.1, "error_statuses": [503, 529], "retry_after_s": 1})
    assert (faults.error_statuses, faults.retry_after_s) == ((503, 529), 1.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"error_rate": 2}, "error_rate"),
        ({"timeout_rate": -0.1}, "timeout_rate"),
        ({"malformed_rate": float("nan")}, "malformed_rate"),
        ({"stream_cut_rate": 1.5}, "stream_cut_rate"),
        ({"error_statuses": (200,)}, "error_statuses"),
        ({"error_statuses": ()}, "error_statuses"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"stream_cut_after": -1}, "stream_cut_after"),
        ({"retry_after_s": -1}, "retry_after_s"),
        ({"error_probability": 0.5}, "error_probability"),
    ],
)
def test_invalid_config_is_rejected_naming_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        FaultConfig(**fields)
