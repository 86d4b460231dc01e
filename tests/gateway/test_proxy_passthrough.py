"""The proxy's passthrough path: an SDK's request reaches a same-format upstream as it was sent."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.proxy_support import (
    ALICE,
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    base_config,
    json_reply,
    payload,
    running_proxy,
    set_provider_keys,
    sse_events,
    sse_reply,
)
from tether import semconv as sc
from tether.config import BudgetLimit
from tether.gateway.budget import BudgetScope


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


def budgeted(upstream: str) -> dict[str, Any]:
    return base_config(
        upstream,
        routes={
            "fast": {"tiers": [["gpt"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
            "smart": {"tiers": [["claude"]], "retry": {"max_retries": 0}, "budget": {"usd": 10}},
        },
    )


def assert_no_client_secret(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        assert ALICE not in value, f"the client's virtual key reached the upstream in {name}"


async def test_openai_sdk_non_streaming_passthrough() -> None:
    async with running_proxy(budgeted) as env:
        env.upstream.on(
            "/v1/chat/completions", json_reply(payload("openai_text.json"), headers={"x-request-id": "req_abc123"})
        )
        client = env.openai()
        response = await client.chat.completions.create(
            model="fast",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
            temperature=0.2,
            max_tokens=50,
            extra_headers={"x-tether-agent": "langgraph-bot", "x-tether-tags": "beta, eu"},
        )
        assert response.choices[0].message.content == "Hello! How can I assist you today?"
        assert response.model == "gpt-4.1-2025-04-14"  # the upstream's answer, unchanged
        assert response.usage is not None and response.usage.prompt_tokens == 19
        assert response._request_id == "req_abc123"  # the provider's id, for its support desk

        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.json == {
            "model": "gpt-4.1",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
            "temperature": 0.2,
            "max_tokens": 50,
        }
        assert received.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
        assert "x-api-key" not in received.headers
        assert "x-tether-agent" not in received.headers
        assert_no_client_secret(received.headers)

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.TETHER_KEY] == "alice"
        assert ALICE not in str(attrs)
        assert attrs[sc.TETHER_ROUTE] == "fast"
        assert attrs[sc.TETHER_DEPLOYMENT] == "gpt"
        assert attrs[sc.GEN_AI_AGENT_NAME] == "langgraph-bot"
        assert attrs[sc.TETHER_TAGS] == ("beta", "eu")
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 19
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 10
        assert attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
        assert attrs[sc.TETHER_STREAM] is False
        # 19 input at $2/Mtok + 10 output at $8/Mtok.
        assert attrs[sc.TETHER_COST_USD] == pytest.approx(0.000118)
        assert sc.TETHER_USAGE_ESTIMATED not in attrs

        usage = await env.gateway.budgets.usage(BudgetScope("route", "fast", BudgetLimit(usd=Decimal(10))))
        assert usage.spent_usd == Decimal("0.000118")
        assert usage.reserved_usd == 0


async def test_openai_body_bytes_reach_the_upstream_unchanged_except_model() -> None:
    body = (
        b'{ "messages" : [ {"role":"user","content":[{"type":"text","text":"caf\xc3\xa9 \\"quoted\\"",'
        b'"cache_control":{"type":"ephemeral"}}]} ],\n  "model":   "fast" , "seed": 7, "top_p": 1.0,'
        b' "logit_bias": {"50256": -100}, "metadata": {"x": "y"} }'
    )
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{env.url}/v1/chat/completions",
                content=body,
                headers={"authorization": f"Bearer {ALICE}", "content-type": "application/json"},
            )
        assert reply.status_code == 200
        assert reply.content == payload("openai_text.json")  # the answer's bytes, unchanged
        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.body == body.replace(b'"fast"', b'"gpt-4.1"')


async def test_ambiguous_bodies_are_reserialised_so_the_upstream_sees_the_routed_model() -> None:
    # A nested "model" key, a \u escape, and a duplicate top-level key that spells "model" escaped:
    # the upstream must see exactly one model, the deployment's.
    body = (
        b'{"m\\u006fdel": "gpt-5-pro", "model": "fast", "messages": [{"role": "user", "content": "\\u00e9"}],'
        b' "tools": [{"type": "function", "function": {"name": "pick", "parameters": {"type": "object",'
        b' "properties": {"model": {"type": "string"}}}}}]}'
    )
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{env.url}/v1/chat/completions", content=body, headers={"authorization": f"Bearer {ALICE}"}
            )
        assert reply.status_code == 200
        (received,) = env.upstream.received("/v1/chat/completions")
        pairs = json.loads(received.body, object_pairs_hook=lambda kv: kv)
        assert [v for k, v in pairs if k == "model"] == ["gpt-4.1"]
        assert received.json["messages"] == [{"role": "user", "content": "é"}]
        assert received.json["tools"] == orjson.loads(body)["tools"]


async def test_openai_sdk_stream_passthrough_hides_the_usage_chunk_it_did_not_ask_for() -> None:
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_text.sse"), linger_s=0.05))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello! How can I help you today?"
        assert all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks)  # the usage-only chunk (empty choices) was held back

        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.json["stream_options"] == {"include_usage": True}
        assert received.json["model"] == "gpt-4.1"

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.TETHER_STREAM] is True
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 1843
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1792
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 9
        # 51 uncached at $2, 1792 cache reads at $0.5, 9 output at $8 (per million).
        assert attrs[sc.TETHER_COST_USD] == pytest.approx((51 * 2 + 1792 * 0.5 + 9 * 8) / 1e6)
        assert sc.TETHER_USAGE_ESTIMATED not in attrs
        usage = await env.gateway.budgets.usage(BudgetScope("route", "fast", BudgetLimit(usd=Decimal(10))))
        assert usage.spent_usd > 0 and usage.reserved_usd == 0

        # A finished stream hands its upstream connection back for the next call, even when the
        # upstream's body ended a little after its [DONE].
        again = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        assert len([chunk async for chunk in again]) == len(chunks)
        first, second = env.upstream.received("/v1/chat/completions")
        assert first.peer == second.peer


async def test_openai_sdk_stream_with_include_usage_gets_the_usage_chunk() -> None:
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_text.sse")))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None and last.usage.prompt_tokens == 1843
        assert last.usage.prompt_tokens_details is not None
        assert last.usage.prompt_tokens_details.cached_tokens == 1792
        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.json["stream_options"] == {"include_usage": True}


async def test_openai_sdk_stream_passthrough_of_parallel_tool_calls() -> None:
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", sse_reply(sse_events("openai_stream_tool_calls.sse")))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "Weather in Paris and Bogotá?"}],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
                }
            ],
            stream=True,
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    if call.function and call.function.name:
                        entry["name"] = call.function.name
                    if call.function and call.function.arguments:
                        entry["arguments"] += call.function.arguments
        assert finish == "tool_calls"
        assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
        assert json.loads(calls[0]["arguments"]) == {"location": "Paris, France"}
        assert isinstance(json.loads(calls[1]["arguments"]), dict)


async def test_anthropic_sdk_passthrough_keeps_cache_control_and_beta_headers() -> None:
    async with running_proxy(budgeted) as env:
        env.upstream.on("/v1/messages", json_reply(payload("anthropic_parallel_tool_use.json")))
        client = env.anthropic()
        system = [{"type": "text", "text": "You are a weather bot. " * 50, "cache_control": {"type": "ephemeral"}}]
        tools = [
            {
                "name": "get_weather",
                "description": "Weather at a place",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            }
        ]
        message = await client.messages.create(
            model="smart",
            max_tokens=1024,
            system=system,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "Weather and time in San Francisco?"}],
            extra_headers={"anthropic-beta": "token-efficient-tools-2025-02-19", "anthropic-version": "2023-06-01"},
        )
        assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
        assert message.usage.cache_read_input_tokens == 1504
        assert message.usage.input_tokens == 21

        (received,) = env.upstream.received("/v1/messages")
        assert received.headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
        assert received.headers["anthropic-version"] == "2023-06-01"
        assert received.headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
        assert "authorization" not in received.headers
        assert_no_client_secret(received.headers)
        sent = received.json
        assert sent["model"] == "claude-sonnet-4-5"
        assert sent["system"] == system
        assert sent["tools"] == tools

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 21 + 188 + 1504  # tether's input is the total
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1504
        assert attrs[sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS] == 188
        assert attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_use",)
        assert attrs[sc.TETHER_COST_USD] > 0
        usage = await env.gateway.budgets.usage(BudgetScope("route", "smart", BudgetLimit(usd=Decimal(10))))
        assert float(usage.spent_usd) == pytest.approx(attrs[sc.TETHER_COST_USD], rel=1e-6)


async def test_anthropic_sdk_stream_passthrough() -> None:
    async with running_proxy() as env:
        env.upstream.on("/v1/messages", sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        client = env.anthropic()
        async with client.messages.stream(
            model="smart", max_tokens=1024, messages=[{"role": "user", "content": "Weather?"}]
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(texts) == "Okay, let's check the weather for San Francisco, CA:"
        assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
        assert final.content[1].input == {"location": "San Francisco, CA", "unit": "fahrenheit"}  # type: ignore[union-attr]
        assert final.usage.output_tokens == 89
        (received,) = env.upstream.received("/v1/messages")
        assert received.json["stream"] is True and received.json["model"] == "claude-sonnet-4-5"

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 472 + 2048
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2048
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 89
        assert attrs[sc.GEN_AI_RESPONSE_ID] == "msg_014p7gG3wDgGV9EUtLvnow3U"
        assert sc.TETHER_USAGE_ESTIMATED not in attrs


async def test_without_auth_no_key_is_needed_and_none_is_recorded() -> None:
    async with running_proxy(require_keys=False) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        client = env.openai(key="anything")
        response = await client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Hi"}])
        assert response.choices[0].message.content
        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
        (span,) = await env.chat_spans()
        assert sc.TETHER_KEY not in (span.attributes or {})


async def test_the_span_joins_the_callers_trace_when_it_sends_traceparent() -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_text.json")))
        client = env.openai()
        await client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        (span,) = await env.chat_spans()
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
        (received,) = env.upstream.received("/v1/chat/completions")
        assert "traceparent" not in received.headers  # tether's own headers only, upstream
