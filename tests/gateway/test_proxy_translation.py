"""The proxy's translation path: a client's format rendered from a deployment that speaks another."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.gateway.proxy_support import (
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

# Long enough (> 1024 estimated tokens) for the simulated model's prompt cache to keep it.
SYSTEM = "You are the on-call SRE for the checkout service. Follow the runbook exactly. " * 60

WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_provider_keys(monkeypatch)


def crossed(upstream: str) -> dict[str, Any]:
    """Routes whose deployment speaks the *other* format than the client will."""
    return base_config(
        upstream,
        routes={
            "to-claude": {"tiers": [["claude"]], "retry": {"max_retries": 0}},
            "to-gpt": {"tiers": [["gpt"]], "retry": {"max_retries": 0}},
            "sim": {"tiers": [["sim-claude"]]},
        },
    )


async def test_openai_sdk_on_a_simulated_deployment_renders_cache_reads() -> None:
    async with running_proxy() as env:
        client = env.openai()
        messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "checkout is failing"}]
        first = await client.chat.completions.create(model="sim", messages=messages, max_tokens=200)
        second = await client.chat.completions.create(model="sim", messages=messages, max_tokens=200)

        assert first.object == "chat.completion"
        assert first.choices[0].message.content
        assert first.choices[0].finish_reason == "stop"
        assert first.model == "claude-sonnet-4-5"
        assert first.usage is not None and second.usage is not None
        # The first call writes the system prompt to the (simulated) cache; the second reads it.
        assert first.usage.prompt_tokens_details is not None
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        written = (first.usage.model_extra or {})["cache_creation_input_tokens"]
        assert written > 1024
        assert second.usage.prompt_tokens_details is not None
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert cached == written
        # prompt_tokens stays the total input, cache reads included.
        assert second.usage.prompt_tokens == first.usage.prompt_tokens > cached
        assert second.usage.total_tokens == second.usage.prompt_tokens + second.usage.completion_tokens

        spans = await env.chat_spans(2)
        attrs = dict(spans[1].attributes or {})
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == cached
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == second.usage.prompt_tokens
        assert attrs[sc.TETHER_SIMULATED] is True
        assert attrs[sc.GEN_AI_PROVIDER_NAME] == "sim"
        assert attrs[sc.TETHER_COST_USD] > 0  # priced as the model it stands in for
        assert attrs[sc.TETHER_COST_USD] < dict(spans[0].attributes or {})[sc.TETHER_COST_USD]  # reads are cheaper


async def test_openai_sdk_stream_on_a_simulated_deployment() -> None:
    async with running_proxy() as env:
        client = env.openai()
        messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "disk full on db-1"}]
        whole = await client.chat.completions.create(model="sim", messages=messages)
        stream = await client.chat.completions.create(
            model="sim", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert len(chunks) > 3  # delivered in pieces, not as one blob
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and usage is not None
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0
        assert len({c.id for c in chunks}) == 1

        spans = await env.chat_spans(2)
        attrs = dict(spans[1].attributes or {})
        assert attrs[sc.TETHER_STREAM] is True
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == usage.completion_tokens
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == usage.prompt_tokens_details.cached_tokens


async def test_anthropic_sdk_on_a_simulated_deployment_splits_cached_input() -> None:
    async with running_proxy() as env:
        client = env.anthropic()
        messages: Any = [{"role": "user", "content": "payments p99 latency is 4s"}]
        first = await client.messages.create(model="sim", max_tokens=300, system=SYSTEM, messages=messages)
        second = await client.messages.create(model="sim", max_tokens=300, system=SYSTEM, messages=messages)
        assert first.type == "message" and first.role == "assistant"
        assert first.stop_reason == "end_turn"
        assert first.content[0].type == "text" and first.content[0].text
        assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 1024
        assert first.usage.cache_read_input_tokens == 0
        assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
        assert second.usage.cache_creation_input_tokens == 0
        total = first.usage.input_tokens + first.usage.cache_creation_input_tokens
        # Anthropic's input_tokens is the uncached part; the three add up to the same total both times.
        assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total

        async with client.messages.stream(model="sim", max_tokens=300, system=SYSTEM, messages=messages) as stream:
            streamed = "".join([text async for text in stream.text_stream])
            final = await stream.get_final_message()
        assert streamed == first.content[0].text
        assert final.usage.cache_read_input_tokens == second.usage.cache_read_input_tokens
        assert final.usage.input_tokens == second.usage.input_tokens
        assert final.usage.output_tokens == second.usage.output_tokens
        assert final.stop_reason == "end_turn"

        spans = await env.chat_spans(3)
        attrs = dict(spans[2].attributes or {})
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == total
        assert attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == second.usage.cache_read_input_tokens


async def test_openai_sdk_to_an_anthropic_deployment_with_tools() -> None:
    async with running_proxy(crossed) as env:
        env.upstream.on("/v1/messages", json_reply(payload("anthropic_parallel_tool_use.json")))
        client = env.openai()
        response = await client.chat.completions.create(
            model="to-claude",
            messages=[
                {"role": "system", "content": "You answer with tools."},
                {"role": "user", "content": "Weather and time in San Francisco?"},
            ],
            tools=[WEATHER_TOOL_OPENAI],  # type: ignore[list-item]
            max_completion_tokens=300,
            temperature=0,
            stop=["\n\nHuman:"],
        )
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "I'll check the weather and the time in San Francisco for you."
        calls = choice.message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
        assert json.loads(calls[0].function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}  # type: ignore[union-attr]
        assert calls[0].id == "toolu_01A09q90qw90lq917835lq9"
        usage = response.usage
        assert usage is not None
        assert usage.prompt_tokens == 21 + 188 + 1504
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1504
        assert (usage.model_extra or {})["cache_creation_input_tokens"] == 188

        (received,) = env.upstream.received("/v1/messages")
        assert received.headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
        sent = received.json
        assert sent["model"] == "claude-sonnet-4-5"
        assert sent["max_tokens"] == 300
        assert sent["temperature"] == 0
        assert sent["stop_sequences"] == ["\n\nHuman:"]
        assert sent["system"][0]["text"] == "You answer with tools."
        assert sent["tools"][0]["name"] == "get_weather"
        assert sent["tools"][0]["input_schema"] == WEATHER_TOOL_OPENAI["function"]["parameters"]  # type: ignore[index]
        assert sent["messages"][0]["role"] == "user"


async def test_openai_tool_results_reach_an_anthropic_deployment_as_tool_result_blocks() -> None:
    async with running_proxy(crossed) as env:
        env.upstream.on("/v1/messages", json_reply(payload("anthropic_text.json")))
        client = env.openai()
        await client.chat.completions.create(
            model="to-claude",
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C, clear"},
                {"role": "user", "content": "And should I take an umbrella?"},
            ],
            tools=[WEATHER_TOOL_OPENAI],  # type: ignore[list-item]
        )
        sent = env.upstream.received("/v1/messages")[0].json
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        assert sent["messages"][1]["content"][0] == {
            "type": "tool_use",
            "id": "call_1",
            "name": "get_weather",
            "input": {"location": "Paris"},
        }
        tool_result, text = sent["messages"][2]["content"][:2]
        assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == "call_1"
        assert tool_result["content"] == "18°C, clear"
        assert text["text"] == "And should I take an umbrella?"


async def test_openai_sdk_stream_from_an_anthropic_deployment() -> None:
    async with running_proxy(crossed) as env:
        env.upstream.on("/v1/messages", sse_reply(sse_events("anthropic_stream_tool_use.sse")))
        client = env.openai()
        stream = await client.chat.completions.create(
            model="to-claude", messages=[{"role": "user", "content": "Weather?"}], stream=True
        )
        text, calls, finish = "", {}, None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                    if call.function and call.function.name:
                        entry["name"] = call.function.name
                    entry["arguments"] += (call.function.arguments or "") if call.function else ""
        assert text == "Okay, let's check the weather for San Francisco, CA:"
        assert finish == "tool_calls"
        assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
        assert sorted(calls) == [0, 1]
        assert json.loads(calls[0]["arguments"]) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
        (received,) = env.upstream.received("/v1/messages")
        assert received.json["stream"] is True

        (span,) = await env.chat_spans()
        attrs = dict(span.attributes or {})
        assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == 472 + 2048
        assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 89


async def test_anthropic_sdk_to_an_openai_deployment_with_tools() -> None:
    async with running_proxy(crossed) as env:
        env.upstream.on("/v1/chat/completions", json_reply(payload("openai_parallel_tool_calls.json")))
        client = env.anthropic()
        message = await client.messages.create(
            model="to-gpt",
            max_tokens=256,
            system="Use tools.",
            tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Paris and Bogotá?"}]}],
        )
        assert message.stop_reason == "tool_use"
        assert [b.type for b in message.content] == ["tool_use", "tool_use"]
        assert message.content[1].input == {"location": "Bogotá, Colombia"}  # type: ignore[union-attr]
        assert message.usage.input_tokens == 2006 - 1920
        assert message.usage.cache_read_input_tokens == 1920
        assert message.usage.output_tokens == 48

        (received,) = env.upstream.received("/v1/chat/completions")
        assert received.headers["authorization"] == f"Bearer {OPENAI_PROVIDER_KEY}"
        sent = received.json
        assert sent["model"] == "gpt-4.1"
        assert sent["messages"][0] == {"role": "system", "content": "Use tools."}
        assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_what_cannot_be_translated_is_a_400_that_says_so() -> None:
    async with running_proxy() as env:
        client = env.openai()
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="sim",
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
                    }
                ],
            )
        assert "image_url" in caught.value.message
        assert "cannot be translated" in caught.value.message
        anthropic_client = env.anthropic()
        with pytest.raises(anthropic.BadRequestError) as refused:
            await anthropic_client.messages.create(
                model="sim",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                tool_choice={"type": "any"},
                tools=[{"name": "t", "input_schema": {"type": "object"}}],
            )
        assert "tool_choice" in str(refused.value)
        assert await env.chat_spans(0, timeout_s=0) == []  # refused before anything was spent
