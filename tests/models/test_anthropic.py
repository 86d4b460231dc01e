"""AnthropicModel against a mock Messages API speaking the documented wire format.

Fixtures live in ``payloads/`` (sources in ``payloads/SOURCES.md``). Every
test checks what was *sent* as well as what was understood.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.models import MockServer, collect, cut_before, payload
from tether.errors import (
    ConfigError,
    MalformedResponseError,
    ModelConnectionError,
    ModelHTTPError,
    ModelTimeoutError,
    StreamInterrupted,
)
from tether.messages import (
    FinishReason,
    Message,
    ModelRequest,
    ResponseDone,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    ToolUseDelta,
    Usage,
)
from tether.models.anthropic import AnthropicModel
from tether.models.base import ProviderConfig
from tether.pricing import PriceRef

KEY = "canary-4f1d8e2b-anthropic-do-not-leak"

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather in a given location",
    input_schema={
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"],
    },
)
TIME = ToolSpec(
    name="get_time",
    description="Get the current time in a given time zone",
    input_schema={"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
)


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    mock = MockServer()
    yield mock
    await mock.aclose()


@pytest.fixture
def model(server: MockServer) -> AnthropicModel:
    return AnthropicModel("claude-sonnet-4-5", http_client=server.client)


def ask(text: str = "Hello, Claude", **fields: Any) -> ModelRequest:
    return ModelRequest(model="claude-sonnet-4-5", messages=(Message.user(text),), **fields)


def tool_conversation(**fields: Any) -> ModelRequest:
    """A run mid-way: the model called a tool, the tool failed, the user added a remark."""
    return ModelRequest(
        model="claude-sonnet-4-5",
        system="You are a concise weather assistant.",
        tools=(WEATHER, TIME),
        messages=(
            Message.user("What's the weather in San Francisco?"),
            Message(
                role="assistant",
                content=(
                    TextBlock(text="Let me check."),
                    ToolUseBlock(id="toolu_01A09q90qw90lq917835lq9", name="get_weather", input={"location": "SF"}),
                ),
            ),
            Message(
                role="user",
                content=(
                    TextBlock(text="Be brief."),
                    ToolResultBlock(tool_use_id="toolu_01A09q90qw90lq917835lq9", content="timeout", is_error=True),
                ),
            ),
        ),
        max_tokens=1024,
        temperature=0.2,
        stop_sequences=("</answer>",),
        **fields,
    )


# --- requests ---------------------------------------------------------------------------------


async def test_plain_text_answer_is_parsed_and_the_request_is_authenticated(
    server: MockServer, model: AnthropicModel
) -> None:
    server.reply_json("anthropic_text.json")

    response = await model.complete(ask(cache_prompt=False))

    assert response.text == "Hi! My name is Claude."
    assert response.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert response.model == "claude-sonnet-4-5-20250929"
    assert response.provider == "anthropic"
    assert response.finish_reason is FinishReason.END_TURN
    assert response.raw_finish_reason == "end_turn"
    assert response.usage == Usage(input_tokens=2095, output_tokens=503)
    request = server.request
    assert request.method == "POST"
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert KEY not in request.content.decode()
    assert server.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
    }


async def test_tools_system_and_tool_result_turns_are_sent_with_three_cache_breakpoints(
    server: MockServer, model: AnthropicModel
) -> None:
    server.reply_json("anthropic_text.json")

    await model.complete(tool_conversation())

    ephemeral = {"type": "ephemeral"}
    assert server.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "temperature": 0.2,
        "stop_sequences": ["</answer>"],
        "system": [{"type": "text", "text": "You are a concise weather assistant.", "cache_control": ephemeral}],
        "tools": [
            {"name": "get_weather", "description": WEATHER.description, "input_schema": WEATHER.input_schema},
            {
                "name": "get_time",
                "description": TIME.description,
                "input_schema": TIME.input_schema,
                "cache_control": ephemeral,
            },
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What's the weather in San Francisco?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": {"location": "SF"},
                    },
                ],
            },
            {
                "role": "user",
                # tool_result must precede text in a user turn, whatever order tether had.
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                        "content": "timeout",
                        "is_error": True,
                    },
                    {"type": "text", "text": "Be brief.", "cache_control": ephemeral},
                ],
            },
        ],
    }


async def test_no_cache_breakpoints_when_caching_is_off(server: MockServer, model: AnthropicModel) -> None:
    server.reply_json("anthropic_text.json")

    await model.complete(tool_conversation(cache_prompt=False))

    assert "cache_control" not in server.request.content.decode()


async def test_parallel_tool_calls_and_cache_tokens_are_understood(server: MockServer, model: AnthropicModel) -> None:
    server.reply_json("anthropic_parallel_tool_use.json")

    response = await model.complete(tool_conversation())

    assert response.finish_reason is FinishReason.TOOL_USE
    assert response.text == "I'll check the weather and the time in San Francisco for you."
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"}),
        ("toolu_01B19r01rx01mr028946mr0", "get_time", {"timezone": "America/Los_Angeles"}),
    ]
    # tether counts every input token: 21 uncached + 1504 read from cache + 188 written to it.
    assert response.usage == Usage(
        input_tokens=21 + 1504 + 188, output_tokens=123, cache_read_tokens=1504, cache_write_tokens=188
    )
    assert response.usage.uncached_input_tokens == 21


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", FinishReason.END_TURN),
        ("tool_use", FinishReason.TOOL_USE),
        ("max_tokens", FinishReason.MAX_TOKENS),
        ("stop_sequence", FinishReason.STOP_SEQUENCE),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.OTHER),
        ("model_context_window_exceeded", FinishReason.OTHER),
    ],
)
async def test_stop_reasons_are_normalised_and_kept_raw(
    server: MockServer, model: AnthropicModel, stop_reason: str, expected: FinishReason
) -> None:
    body = payload("anthropic_text.json").replace(b'"end_turn"', f'"{stop_reason}"'.encode())
    server.reply(content=body)

    response = await model.complete(ask())

    assert response.finish_reason is expected
    assert response.raw_finish_reason == stop_reason


# --- streaming --------------------------------------------------------------------------------


async def test_stream_yields_deltas_and_reassembles_text_tool_calls_and_usage(
    server: MockServer, model: AnthropicModel
) -> None:
    server.reply_sse(payload("anthropic_stream_tool_use.sse"))

    events = await collect(model.stream(tool_conversation()))

    assert server.body["stream"] is True
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    starts = [(e.index, e.id, e.name) for e in events if isinstance(e, ToolUseDelta) and e.id]
    assert starts == [
        (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
        (1, "toolu_01Hx5Yb7TbJrVsuN2fQwWcXn", "get_time"),
    ]
    first_call_json = "".join(e.arguments_delta for e in events if isinstance(e, ToolUseDelta) and e.index == 0)
    assert first_call_json == '{"location": "San Francisco, CA", "unit": "fahrenheit"}'
    assert isinstance(events[-1], ResponseDone)
    assert sum(isinstance(e, ResponseDone) for e in events) == 1
    response = events[-1].response
    assert response.id == "msg_014p7gG3wDgGV9EUtLvnow3U"
    assert response.text == text
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("get_weather", {"location": "San Francisco, CA", "unit": "fahrenheit"}),
        ("get_time", {"timezone": "America/Los_Angeles"}),
    ]
    assert response.finish_reason is FinishReason.TOOL_USE
    # input and cache fields from message_start, output_tokens from message_delta.
    assert response.usage == Usage(input_tokens=472 + 2048, output_tokens=89, cache_read_tokens=2048)


async def test_sse_comments_and_events_without_data_are_skipped(server: MockServer, model: AnthropicModel) -> None:
    stream = payload("anthropic_stream_tool_use.sse").replace(
        b"event: ping\n", b": keep-alive\n\nevent: ping\n\nevent: ping\n"
    )
    server.reply_sse(stream)

    events = await collect(model.stream(ask()))

    assert isinstance(events[-1], ResponseDone)


async def test_stream_cut_before_message_stop_is_an_interruption_not_a_success(
    server: MockServer, model: AnthropicModel
) -> None:
    stream = payload("anthropic_stream_tool_use.sse")
    server.reply_sse(cut_before(stream, b'"content_block_stop","index":0'))

    events: list[StreamEvent] = []
    with pytest.raises(StreamInterrupted) as info:
        await collect(model.stream(ask()), into=events)

    assert not any(isinstance(e, ResponseDone) for e in events)
    assert info.value.partial_text == "Okay, let's check the weather for San Francisco, CA:"
    assert info.value.usage == Usage(input_tokens=472 + 2048, output_tokens=2, cache_read_tokens=2048)
    assert info.value.retryable


async def test_stream_that_stops_after_message_delta_is_still_interrupted(
    server: MockServer, model: AnthropicModel
) -> None:
    stream = payload("anthropic_stream_tool_use.sse")
    server.reply_sse(cut_before(stream, b'"type":"message_stop"'))

    with pytest.raises(StreamInterrupted):
        await collect(model.stream(ask()))


async def test_stream_cut_in_the_middle_of_an_event_is_interrupted(server: MockServer, model: AnthropicModel) -> None:
    stream = payload("anthropic_stream_tool_use.sse")
    server.reply_sse(stream[: stream.index(b"message_stop") + 20])  # half an event, no blank line

    with pytest.raises(StreamInterrupted):
        await collect(model.stream(ask()))


async def test_dropped_connection_mid_stream_is_interrupted_with_partial_text(
    server: MockServer, model: AnthropicModel
) -> None:
    stream = payload("anthropic_stream_tool_use.sse")
    server.reply_broken(
        cut_before(stream, b'"content_block_stop","index":0'),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    )

    with pytest.raises(StreamInterrupted) as info:
        await collect(model.stream(ask()))

    assert info.value.partial_text.startswith("Okay")
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


async def test_overloaded_error_event_mid_stream_is_a_retryable_529(server: MockServer, model: AnthropicModel) -> None:
    server.reply_sse(payload("anthropic_stream_overloaded.sse"))

    events: list[StreamEvent] = []
    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()), into=events)

    assert events == [TextDelta(text="Hello")]
    assert info.value.status == 529
    assert info.value.retryable
    assert "overloaded_error" in info.value.body


async def test_truncated_tool_input_is_kept_raw_instead_of_failing(server: MockServer, model: AnthropicModel) -> None:
    # max_tokens hit in the middle of the tool input: the JSON never closes.
    stream = payload("anthropic_stream_tool_use.sse")
    stream = stream.replace(b', \\"unit\\": \\"fahrenheit\\"}', b', \\"unit').replace(
        b'"tool_use","stop', b'"max_tokens","stop'
    )
    server.reply_sse(stream)

    events = await collect(model.stream(ask()))

    response = events[-1]
    assert isinstance(response, ResponseDone)
    weather = response.response.tool_calls[0]
    assert weather.arguments == {}
    assert weather.raw_arguments == '{"location": "San Francisco, CA", "unit'
    assert response.response.finish_reason is FinishReason.MAX_TOKENS


async def test_non_object_tool_input_in_a_complete_answer_is_kept_raw(
    server: MockServer, model: AnthropicModel
) -> None:
    body = payload("anthropic_parallel_tool_use.json").replace(
        b'{"timezone": "America/Los_Angeles"}', b'"America/Los_Angeles"'
    )
    server.reply(content=body)

    response = await model.complete(ask())

    assert response.tool_calls[1].arguments == {}
    assert response.tool_calls[1].raw_arguments == '"America/Los_Angeles"'


# --- errors -----------------------------------------------------------------------------------


async def test_429_carries_retry_after_seconds(server: MockServer, model: AnthropicModel) -> None:
    server.reply_json("anthropic_error_rate_limit.json", status=429, headers={"retry-after": "17"})

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert info.value.status == 429
    assert info.value.retry_after == 17.0
    assert info.value.retryable
    assert info.value.provider == "anthropic"
    assert "rate_limit_error" in info.value.body


async def test_retry_after_as_an_http_date_becomes_seconds_from_now(server: MockServer, model: AnthropicModel) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.reply_json("anthropic_error_rate_limit.json", status=429, headers={"retry-after": when})

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert info.value.retry_after is not None
    assert 25.0 <= info.value.retry_after <= 30.0


async def test_500_is_retryable_and_has_no_retry_after(server: MockServer, model: AnthropicModel) -> None:
    server.reply(500, content=b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}')

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert info.value.status == 500
    assert info.value.retryable
    assert info.value.retry_after is None


def _echo_key_401(request: httpx.Request) -> httpx.Response:
    """A hostile server that echoes the key it was sent, in the body and in a header."""
    key = request.headers["x-api-key"]
    return httpx.Response(
        401,
        json={"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {key}"}},
        headers={"x-echoed-key": key},
    )


async def test_401_never_leaks_the_api_key_even_when_the_server_echoes_it(
    server: MockServer, model: AnthropicModel
) -> None:
    server.handler = _echo_key_401

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    error = info.value
    assert error.status == 401
    assert not error.retryable
    assert "[REDACTED]" in error.body
    for text in (str(error), repr(error), error.body, *map(str, error.args)):
        assert KEY not in text


async def test_401_on_a_stream_never_leaks_the_api_key(server: MockServer, model: AnthropicModel) -> None:
    server.handler = _echo_key_401

    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()))

    assert info.value.status == 401
    assert KEY not in str(info.value)
    assert KEY not in info.value.body


async def test_error_event_echoing_the_key_is_redacted(server: MockServer, model: AnthropicModel) -> None:
    stream = payload("anthropic_stream_overloaded.sse").replace(b'"Overloaded"', f'"Overloaded for {KEY}"'.encode())
    server.reply_sse(stream)

    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()))

    assert KEY not in str(info.value)
    assert KEY not in info.value.body


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"type": "message", "role": "assistant"}',
        b"[]",
    ],
    ids=["html", "no-content", "not-an-object"],
)
async def test_a_200_body_that_is_not_a_message_is_malformed(
    server: MockServer, model: AnthropicModel, body: bytes
) -> None:
    server.reply(200, content=body)

    with pytest.raises(MalformedResponseError):
        await model.complete(ask())


async def test_malformed_body_echoing_the_key_is_redacted(server: MockServer, model: AnthropicModel) -> None:
    server.reply(200, content=f"<html>proxy error for key {KEY}</html>".encode())

    with pytest.raises(MalformedResponseError) as info:
        await model.complete(ask())

    assert KEY not in str(info.value)


async def test_timeout_is_a_model_timeout(server: MockServer, model: AnthropicModel) -> None:
    server.fail(httpx.ReadTimeout("timed out"))

    with pytest.raises(ModelTimeoutError) as info:
        await model.complete(ask())

    assert info.value.retryable


async def test_refused_connection_is_a_connection_error(server: MockServer, model: AnthropicModel) -> None:
    server.fail(httpx.ConnectError("[Errno 111] Connection refused"))

    with pytest.raises(ModelConnectionError):
        await collect(model.stream(ask()))


async def test_missing_key_fails_before_anything_is_sent(
    server: MockServer, model: AnthropicModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")

    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        await model.complete(ask())

    assert server.requests == []


# --- configuration ----------------------------------------------------------------------------


async def test_base_url_and_extra_headers_come_from_the_config(server: MockServer) -> None:
    server.reply_json("anthropic_text.json")
    config = ProviderConfig(
        base_url="http://127.0.0.1:8080/anthropic/",
        api_key_env="ANTHROPIC_API_KEY",
        extra_headers={"anthropic-beta": "token-efficient-tools-2025-02-19"},
    )
    model = AnthropicModel("claude-haiku-4-5", config=config, http_client=server.client)

    await model.complete(ask())

    assert str(server.request.url) == "http://127.0.0.1:8080/anthropic/v1/messages"
    assert server.request.headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"


def test_defaults() -> None:
    model = AnthropicModel("claude-sonnet-4-5")
    assert model.provider == "anthropic"
    assert model.ref == "anthropic:claude-sonnet-4-5"
    assert model.price_ref == PriceRef("anthropic", "claude-sonnet-4-5")
    assert model.config.api_key_env == "ANTHROPIC_API_KEY"
    assert model.url == "https://api.anthropic.com/v1/messages"


async def test_aclose_closes_only_a_client_the_model_created(server: MockServer) -> None:
    owned = AnthropicModel("claude-sonnet-4-5")
    shared = AnthropicModel("claude-sonnet-4-5", http_client=server.client)

    await owned.aclose()
    await owned.aclose()  # safe twice
    await shared.aclose()

    assert owned._client.is_closed
    assert not server.client.is_closed


async def test_an_eval_trial_asks_caches_on_the_way_not_to_answer(model: AnthropicModel, server: MockServer) -> None:
    server.reply_json("anthropic_text.json")
    await model.complete(ask(metadata={"cache": "bypass"}))
    assert server.request.headers["cache-control"] == "no-cache"
