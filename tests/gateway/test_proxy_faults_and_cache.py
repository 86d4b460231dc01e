"""Passthrough deployments: injected faults (chaos drills through the proxy) and automatic prompt-cache breakpoints."""

from __future__ import annotations

import copy
import time
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.gateway.proxy_support import (
    ALICE,
    attributes,
    base_config,
    json_reply,
    payload,
    running_proxy,
    set_provider_keys,
    sse_events,
    sse_reply,
)
from tether import semconv as sc
from tether.config import BudgetLimit, FaultConfig
from tether.errors import ModelHTTPError, ModelTimeoutError
from tether.gateway.budget import BudgetScope
from tether.gateway.faults import FaultyModel
from tether.messages import ModelRequest
from tether.server.wire.anthropic import with_cache_breakpoints
from tether.testing import text_response

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
LIMIT = BudgetLimit(usd=Decimal(10))
EPHEMERAL = {"type": "ephemeral"}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


def chaos(upstream: str, *, faults: dict[str, Any] | None = None, **routes: Any) -> dict[str, Any]:
    """The base config plus faulty twins of the passthrough deployments (told apart upstream by model)."""
    config = base_config(
        upstream,
        routes=routes
        or {
            "fallback": {"tiers": [["gpt-faulty"], ["gpt"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
            "faulty": {"tiers": [["gpt-faulty"]], "retry": {"max_retries": 0}},
            "smart-fallback": {"tiers": [["claude-faulty"], ["claude"]], "retry": {"max_retries": 0}},
            "smart-faulty": {"tiers": [["claude-faulty"]], "retry": {"max_retries": 0}},
        },
    )
    faults = faults if faults is not None else {"error_rate": 1, "error_statuses": [503]}
    config["deployments"]["gpt-faulty"] = {
        "provider": "oai",
        "model": "gpt-4.1-mini",
        "faults": faults,
        "max_output_tokens": 4096,
    }
    config["deployments"]["claude-faulty"] = {"provider": "ant", "model": "claude-haiku-4-5", "faults": faults}
    config["prices"]["gpt-4.1-mini"] = {"input_per_mtok": 1, "output_per_mtok": 4}
    return config


def models_upstream(env: Any, path: str) -> list[str]:
    return [r.json["model"] for r in env.upstream.received(path)]


async def drain(stream: Any, into: list[Any]) -> None:
    """Read an SDK stream to its end (or its error), keeping what arrived."""
    async for item in stream:
        into.append(item)


async def stream_message(client: anthropic.AsyncAnthropic, **kwargs: Any) -> None:
    """Consume an Anthropic SDK message stream to its end."""
    async with client.messages.stream(**kwargs) as stream:
        async for _ in stream:
            pass


# --- FaultyModel.inject ---------------------------------------------------------------------------


class _Inner:
    """The least a FaultyModel needs of the model it wraps."""

    provider = "openai"
    price_ref = None
    simulated = False

    def __init__(self, model_name: str = "gpt-4.1") -> None:
        self.model_name = model_name
        self.ref = f"openai:{model_name}"

    async def complete(self, request: ModelRequest) -> Any:
        return text_response("ok")

    async def aclose(self) -> None:
        pass


def faulty(**faults: Any) -> FaultyModel:
    return FaultyModel(_Inner(), FaultConfig(**faults))  # type: ignore[arg-type]


async def test_inject_returns_the_cut_point_only_when_the_stream_must_be_cut() -> None:
    assert await faulty().inject() is None
    assert await faulty(latency_ms=1).inject() is None
    assert await faulty(stream_cut_rate=1, stream_cut_after=2).inject() == 2
    assert await faulty(stream_cut_rate=1, stream_cut_after=0).inject() == 0


async def test_inject_raises_what_complete_raises_and_shares_its_call_counter() -> None:
    with pytest.raises(ModelHTTPError) as caught:
        await faulty(error_rate=1, error_statuses=(529,), retry_after_s=3).inject()
    assert caught.value.status == 529 and caught.value.retry_after == 3
    assert "injected fault" in caught.value.body
    with pytest.raises(ModelTimeoutError):
        await faulty(timeout_rate=1).inject()

    # The same seeded sequence whether calls go through complete or inject, in any mix.
    request = ModelRequest(model="gpt-4.1", messages=())

    async def outcomes(model: FaultyModel, use_inject: list[bool]) -> list[bool]:
        out = []
        for inject in use_inject:
            try:
                await (model.inject() if inject else model.complete(request))
                out.append(True)
            except ModelHTTPError:
                out.append(False)
        return out

    mixed = [i % 3 == 0 for i in range(24)]
    first = await outcomes(faulty(error_rate=0.5, seed=3), [False] * 24)
    second = await outcomes(faulty(error_rate=0.5, seed=3), mixed)
    assert first == second
    assert True in first and False in first


# --- injected failures on passthrough -------------------------------------------------------------


async def test_an_injected_503_falls_back_without_reaching_the_upstream() -> None:
    async with running_proxy(chaos) as env:
        env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
        client = env.openai()
        response = await client.chat.completions.create(model="fallback", messages=HI)  # type: ignore[arg-type]
        assert response.choices[0].message.content == "Hello! How can I assist you today?"
        # The faulty deployment's model never reached the upstream: the drill spent nothing on it.
        assert models_upstream(env, OPENAI) == ["gpt-4.1"]

        (span,) = await env.chat_spans()
        attrs = attributes(span)
        assert attrs[sc.TETHER_DEPLOYMENT] == "gpt"
        (fallback,) = attrs[sc.TETHER_FALLBACKS]
        assert fallback.startswith("gpt-faulty: ModelHTTPError")
        assert "injected fault" in fallback
        assert sc.ERROR_TYPE not in attrs
        assert env.metrics.upstream_calls[("gpt-faulty", "error")] == 1
        assert env.metrics.upstream_calls[("gpt", "ok")] == 1
        assert env.gateway.breakers.snapshot()["gpt-faulty"]["failures"] == 1
        usage = await env.gateway.budgets.usage(BudgetScope("route", "fallback", LIMIT))
        assert usage.spent_usd == Decimal("0.000118") and usage.reserved_usd == 0  # only the answer is paid for


async def test_an_injected_failure_before_an_anthropic_stream_falls_back() -> None:
    async with running_proxy(chaos) as env:
        env.upstream.on(ANTHROPIC, sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        client = env.anthropic()
        async with client.messages.stream(model="smart-fallback", max_tokens=100, messages=HI) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
        assert models_upstream(env, ANTHROPIC) == ["claude-sonnet-4-5"]
        (span,) = await env.chat_spans()
        attrs = attributes(span)
        assert attrs[sc.TETHER_DEPLOYMENT] == "claude"
        (fallback,) = attrs[sc.TETHER_FALLBACKS]
        assert fallback.startswith("claude-faulty: ModelHTTPError")


@pytest.mark.parametrize("status", [429, 503])
async def test_only_a_faulty_deployment_the_client_gets_its_own_error_format(status: int) -> None:
    def config(upstream: str) -> dict[str, Any]:
        return chaos(upstream, faults={"error_rate": 1, "error_statuses": [status], "retry_after_s": 1})

    async with running_proxy(config) as env:
        env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
        env.upstream.on(ANTHROPIC, json_reply(payload("anthropic_parallel_tool_use.json")))
        # A retryable failure on the only deployment: nothing is available (503), as for a real one.
        with pytest.raises(openai.APIStatusError) as caught:
            await env.openai().chat.completions.create(model="faulty", messages=HI)  # type: ignore[arg-type]
        assert caught.value.status_code == 503
        body: Any = caught.value.body
        assert body["code"] == "no_deployment_available"
        assert "gpt-faulty: ModelHTTPError" in body["message"] and "injected fault" in body["message"]

        with pytest.raises(anthropic.APIStatusError) as caught_ant:
            await env.anthropic().messages.create(model="smart-faulty", max_tokens=10, messages=HI)  # type: ignore[arg-type]
        assert caught_ant.value.status_code == 503
        ant_body: Any = caught_ant.value.body
        assert ant_body["type"] == "error" and ant_body["error"]["type"] == "api_error"
        assert "claude-faulty: ModelHTTPError" in ant_body["error"]["message"]

        assert env.upstream.requests == []  # nothing hit the upstream
        spans = await env.chat_spans(2)
        assert [attributes(s)[sc.HTTP_RESPONSE_STATUS_CODE] for s in spans] == [503, 503]
        assert all(attributes(s)[sc.ERROR_TYPE] == "NoDeploymentAvailable" for s in spans)


async def test_a_non_retryable_injected_error_is_answered_as_the_upstreams_own() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return chaos(upstream, faults={"error_rate": 1, "error_statuses": [400]})

    async with running_proxy(config) as env:
        with pytest.raises(openai.BadRequestError) as caught:
            await env.openai().chat.completions.create(model="fallback", messages=HI)  # type: ignore[arg-type]
        # No fallback for a 400, and the provider-format body reaches the client as an upstream's would.
        assert caught.value.status_code == 400
        error: Any = caught.value.body
        assert error["message"] == "injected fault: HTTP 400 from openai:gpt-4.1-mini"
        assert error["type"] == "invalid_request_error"
        with pytest.raises(anthropic.BadRequestError) as caught_ant:
            await env.anthropic().messages.create(model="smart-fallback", max_tokens=10, messages=HI)  # type: ignore[arg-type]
        ant_body: Any = caught_ant.value.body
        assert ant_body["error"] == {
            "type": "invalid_request_error",
            "message": "injected fault: HTTP 400 from anthropic:claude-haiku-4-5",
        }
        assert env.upstream.requests == []


async def test_injected_latency_is_really_slept_on_passthrough() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return chaos(upstream, faults={"latency_ms": 200}, faulty={"tiers": [["gpt-faulty"]]})

    async with running_proxy(config) as env:
        env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
        client = env.openai()
        await client.chat.completions.create(model="faulty", messages=HI)  # type: ignore[arg-type]  # warm up
        started = time.perf_counter()
        response = await client.chat.completions.create(model="faulty", messages=HI)  # type: ignore[arg-type]
        assert time.perf_counter() - started >= 0.15
        assert response.choices[0].message.content
        assert models_upstream(env, OPENAI) == ["gpt-4.1-mini", "gpt-4.1-mini"]


async def test_the_same_seed_gives_the_same_faults_through_the_proxy() -> None:
    def config(upstream: str) -> dict[str, Any]:
        return chaos(
            upstream,
            faults={"error_rate": 0.5, "error_statuses": [400], "seed": 11},
            faulty={"tiers": [["gpt-faulty"]], "retry": {"max_retries": 0}},
        )

    async def pattern() -> list[bool]:
        async with running_proxy(config) as env:
            env.upstream.on(OPENAI, json_reply(payload("openai_text.json")))
            client = env.openai()
            passed = []
            for _ in range(20):
                try:
                    await client.chat.completions.create(model="faulty", messages=HI)  # type: ignore[arg-type]
                    passed.append(True)
                except openai.BadRequestError:
                    passed.append(False)
            assert len(env.upstream.requests) == sum(passed)  # only the calls that passed went upstream
            return passed

    first = await pattern()
    assert first == await pattern()
    assert True in first and False in first
    # And it is FaultyModel's own sequence for that seed and model.
    expected = []
    inner = _Inner("gpt-4.1-mini")  # the faulty deployment's model
    model = FaultyModel(inner, FaultConfig(error_rate=0.5, error_statuses=(400,), seed=11))  # type: ignore[arg-type]
    for _ in range(20):
        try:
            await model.inject()
            expected.append(True)
        except ModelHTTPError:
            expected.append(False)
    assert first == expected


# --- injected stream cuts on passthrough ----------------------------------------------------------


def cutting(after: int) -> Any:
    def config(upstream: str) -> dict[str, Any]:
        return chaos(
            upstream,
            faults={"stream_cut_rate": 1, "stream_cut_after": after},
            faulty={"tiers": [["gpt-faulty"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
            **{"smart-faulty": {"tiers": [["claude-faulty"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}}},
        )

    return config


async def test_an_openai_passthrough_stream_is_cut_after_stream_cut_after_events() -> None:
    async with running_proxy(cutting(2)) as env:
        env.upstream.on(OPENAI, sse_reply(sse_events("openai_stream_text.sse")))
        stream = await env.openai().chat.completions.create(
            model="faulty",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        )
        chunks: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            await drain(stream, chunks)
        assert len(chunks) == 2
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
        assert "injected fault" in caught.value.message and "gpt-faulty" in caught.value.message
        assert models_upstream(env, OPENAI) == ["gpt-4.1-mini"]  # a cut stream did reach the upstream

        (span,) = await env.chat_spans()
        attrs = attributes(span)
        assert attrs[sc.ERROR_TYPE] == "StreamInterrupted"
        assert "injected fault" in (span.status.description or "")
        assert attrs[sc.TETHER_USAGE_ESTIMATED] is True
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 2  # "Hello": 5 characters ≈ 2 tokens
        assert attrs[sc.TETHER_COST_USD] > 0
        usage = await env.gateway.budgets.usage(BudgetScope("route", "faulty", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0
        assert env.metrics.stream_interruptions["faulty"] == 1
        assert env.gateway.breakers.snapshot()["gpt-faulty"]["failures"] == 1


async def test_an_anthropic_passthrough_stream_is_cut_after_stream_cut_after_events() -> None:
    async with running_proxy(cutting(2)) as env:
        env.upstream.on(ANTHROPIC, sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        stream = await env.anthropic().messages.create(
            model="smart-faulty",
            max_tokens=100,
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        )
        events: list[Any] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            await drain(stream, events)
        assert [e.type for e in events] == ["message_start", "content_block_start"]
        assert "injected fault" in str(caught.value) and "claude-faulty" in str(caught.value)

        (span,) = await env.chat_spans()
        attrs = attributes(span)
        assert attrs[sc.ERROR_TYPE] == "StreamInterrupted"
        # message_start reported the input: that much is billed as reported.
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 472 + 2048
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2048
        usage = await env.gateway.budgets.usage(BudgetScope("route", "smart-faulty", LIMIT))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0


async def test_a_stream_shorter_than_the_cut_point_is_cut_before_its_end_marker() -> None:
    async with running_proxy(cutting(100)) as env:
        env.upstream.on(OPENAI, sse_reply(sse_events("openai_stream_text.sse")))
        env.upstream.on(ANTHROPIC, sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        stream = await env.openai().chat.completions.create(
            model="faulty",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        )
        chunks: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            await drain(stream, chunks)
        text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
        assert text == "Hello! How can I help you today?"  # every event but [DONE]
        assert "injected fault" in caught.value.message

        with pytest.raises(anthropic.APIStatusError):
            await stream_message(env.anthropic(), model="smart-faulty", max_tokens=100, messages=HI)

        spans = await env.chat_spans(2)
        for span in spans:
            assert attributes(span)[sc.ERROR_TYPE] == "StreamInterrupted"
        openai_span = next(s for s in spans if attributes(s)[sc.TETHER_ROUTE] == "faulty")
        attrs = attributes(openai_span)
        # The usage chunk came before the cut: billed as reported.
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 1843
        assert sc.TETHER_USAGE_ESTIMATED not in attrs
        assert env.metrics.stream_interruptions["faulty"] == 1
        assert env.metrics.stream_interruptions["smart-faulty"] == 1


async def test_a_cut_at_zero_events_sends_only_the_error_event() -> None:
    async with running_proxy(cutting(0)) as env:
        env.upstream.on(OPENAI, sse_reply(sse_events("openai_stream_text.sse")))
        stream = await env.openai().chat.completions.create(
            model="faulty",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
        )
        chunks: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            await drain(stream, chunks)
        assert chunks == []  # no event before the cut
        assert "cut after 0 events" in caught.value.message


# --- automatic prompt-cache breakpoints on Anthropic passthrough ----------------------------------

TOOLS: list[dict[str, Any]] = [
    {"name": "get_weather", "description": "Weather at a place", "input_schema": {"type": "object"}},
    {"name": "get_time", "description": "Time at a place", "input_schema": {"type": "object"}},
]
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
        ],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"}]},
]


def caching(upstream: str) -> dict[str, Any]:
    return base_config(
        upstream,
        routes={
            "smart": {"tiers": [["claude"]], "retry": {"max_retries": 0}},
            "smart-nocache": {"tiers": [["claude"]], "retry": {"max_retries": 0}, "prompt_cache": False},
        },
    )


async def post_raw(env: Any, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{env.url}{ANTHROPIC}", content=body, headers={"x-api-key": ALICE, "content-type": "application/json"}
        )


async def test_an_anthropic_passthrough_request_gets_the_three_breakpoints() -> None:
    async with running_proxy(caching) as env:
        env.upstream.on(ANTHROPIC, json_reply(payload("anthropic_parallel_tool_use.json")))
        await env.anthropic().messages.create(
            model="smart",
            max_tokens=256,
            system="You are a weather bot.",
            tools=TOOLS,  # type: ignore[arg-type]
            messages=CONVERSATION,  # type: ignore[arg-type]
        )
        (received,) = env.upstream.received(ANTHROPIC)
        assert received.body.count(b'"cache_control"') == 3
        sent = received.json
        assert sent["model"] == "claude-sonnet-4-5"
        assert sent["tools"] == [TOOLS[0], {**TOOLS[1], "cache_control": EPHEMERAL}]
        assert sent["system"] == [{"type": "text", "text": "You are a weather bot.", "cache_control": EPHEMERAL}]
        expected = copy.deepcopy(CONVERSATION)
        expected[-1]["content"][-1]["cache_control"] = EPHEMERAL
        assert sent["messages"] == expected
        assert sent["max_tokens"] == 256


async def test_a_string_last_message_becomes_a_marked_text_block_and_streams_get_breakpoints_too() -> None:
    async with running_proxy(caching) as env:
        env.upstream.on(ANTHROPIC, sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        async with env.anthropic().messages.stream(model="smart", max_tokens=100, messages=HI) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
        (received,) = env.upstream.received(ANTHROPIC)
        assert received.json["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": EPHEMERAL}]}
        ]
        assert "system" not in received.json and "tools" not in received.json


async def test_without_prompt_cache_the_body_is_unchanged_except_model() -> None:
    body = orjson.dumps(
        {"model": "smart-nocache", "max_tokens": 256, "system": "Be brief.", "tools": TOOLS, "messages": CONVERSATION},
        option=orjson.OPT_INDENT_2,
    )
    async with running_proxy(caching) as env:
        env.upstream.on(ANTHROPIC, json_reply(payload("anthropic_parallel_tool_use.json")))
        reply = await post_raw(env, body)
        assert reply.status_code == 200
        (received,) = env.upstream.received(ANTHROPIC)
        assert received.body == body.replace(b'"smart-nocache"', b'"claude-sonnet-4-5"')


@pytest.mark.parametrize(
    "where",
    ["first message", "tool result", "top level"],
)
async def test_a_request_with_any_client_cache_control_is_forwarded_unchanged(where: str) -> None:
    data: dict[str, Any] = {"model": "smart", "max_tokens": 256, "system": "Be brief.", "tools": TOOLS}
    messages = copy.deepcopy(CONVERSATION)
    if where == "first message":
        messages[0]["content"] = [{"type": "text", "text": "Weather in Paris?", "cache_control": EPHEMERAL}]
    elif where == "tool result":
        messages[2]["content"][0]["content"] = [
            {"type": "text", "text": "18°C", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ]
    else:
        data["cache_control"] = EPHEMERAL
    data["messages"] = messages
    body = b"{  " + orjson.dumps(data)[1:]
    async with running_proxy(caching) as env:
        env.upstream.on(ANTHROPIC, json_reply(payload("anthropic_parallel_tool_use.json")))
        reply = await post_raw(env, body)
        assert reply.status_code == 200
        (received,) = env.upstream.received(ANTHROPIC)
        assert received.body == body.replace(b'"smart"', b'"claude-sonnet-4-5"')


async def test_a_trailing_thinking_block_gets_no_breakpoint() -> None:
    thinking = {"type": "thinking", "thinking": "Paris is in France.", "signature": "c2lnbmF0dXJl"}
    messages = [*CONVERSATION, {"role": "assistant", "content": [thinking]}]
    body = orjson.dumps(
        {"model": "smart", "max_tokens": 256, "system": [{"type": "text", "text": "Be brief."}], "messages": messages}
    )
    async with running_proxy(caching) as env:
        env.upstream.on(ANTHROPIC, json_reply(payload("anthropic_parallel_tool_use.json")))
        reply = await post_raw(env, body)
        assert reply.status_code == 200
        (received,) = env.upstream.received(ANTHROPIC)
        sent = received.json
        assert sent["messages"] == messages  # untouched: a thinking block cannot carry cache_control
        assert sent["system"] == [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]
        assert received.body.count(b'"cache_control"') == 1


# --- with_cache_breakpoints on its own ------------------------------------------------------------


def test_breakpoints_on_tools_system_and_the_last_block_without_touching_the_input() -> None:
    data = {
        "model": "smart",
        "tools": copy.deepcopy(TOOLS),
        "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": copy.deepcopy(CONVERSATION),
    }
    before = copy.deepcopy(data)
    out = with_cache_breakpoints(data)
    assert data == before  # a fallback to another deployment sends the same request again
    assert out is not None
    assert out["tools"][-1]["cache_control"] == EPHEMERAL and "cache_control" not in out["tools"][0]
    assert out["system"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": EPHEMERAL}]
    assert out["messages"][:-1] == CONVERSATION[:-1]
    assert out["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert orjson.dumps(out).count(b"cache_control") == 3


@pytest.mark.parametrize(
    "data",
    [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": EPHEMERAL}]}]},
        {"cache_control": EPHEMERAL, "messages": HI},
        {"tools": [{**TOOLS[0], "cache_control": EPHEMERAL}], "messages": HI},
        {"system": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}], "messages": HI},
    ],
)
def test_any_client_breakpoint_means_no_change(data: dict[str, Any]) -> None:
    assert with_cache_breakpoints(data) is None
    assert with_cache_breakpoints(data, orjson.dumps(data)) is None


@pytest.mark.parametrize(
    "data",
    [
        {"messages": [{"role": "assistant", "content": [{"type": "redacted_thinking", "data": "abc"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        {"messages": [{"role": "user", "content": ""}], "system": ""},
        {"messages": [{"role": "user", "content": [{"type": "some_future_block"}]}], "system": []},
        {"messages": []},
        {"tools": [], "messages": [{"role": "user", "content": []}]},
    ],
)
def test_nothing_markable_means_no_change(data: dict[str, Any]) -> None:
    assert with_cache_breakpoints(data) is None


def test_the_raw_body_only_skips_the_search_when_it_cannot_hold_the_key() -> None:
    # The key spelt with a \u escape is still the client's breakpoint.
    raw = (
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "x",'
        b' "cache\\u005fcontrol": {"type": "ephemeral"}}]}]}'
    )
    assert with_cache_breakpoints(orjson.loads(raw), raw) is None
    # The words in a message are not a breakpoint.
    raw = b'{"messages": [{"role": "user", "content": "what does cache_control do?"}]}'
    out = with_cache_breakpoints(orjson.loads(raw), raw)
    assert out is not None
    assert out["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
