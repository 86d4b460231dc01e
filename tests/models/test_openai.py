"""OpenAIModel against a mock Chat Completions API (OpenAI, and vLLM/Ollama-style servers).

Fixtures live in ``payloads/`` (sources in ``payloads/SOURCES.md``). Every
test checks what was *sent* as well as what was understood.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.models import MockServer, collect, cut_before, payload, payload_json
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
from tether.models.base import ProviderConfig
from tether.models.openai import OpenAIModel
from tether.pricing import PriceRef

KEY = "canary-9b7c2a61-openai-do-not-leak"

WEATHER = ToolSpec(
    name="get_weather",
    description="Get current temperature for a given location.",
    input_schema={"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)
TIME = ToolSpec(
    name="get_time",
    input_schema={"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
)


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    mock = MockServer()
    yield mock
    await mock.aclose()


@pytest.fixture
def model(server: MockServer) -> OpenAIModel:
    return OpenAIModel("gpt-4.1", http_client=server.client)


def ask(text: str = "Hello!", **fields: Any) -> ModelRequest:
    return ModelRequest(**{"model": "gpt-4.1", "messages": (Message.user(text),), **fields})


def tool_conversation(**fields: Any) -> ModelRequest:
    """A run mid-way: two parallel calls were made, one failed, the user added a remark."""
    return ModelRequest(
        model="gpt-4.1",
        system="You are a concise travel assistant.",
        tools=(WEATHER, TIME),
        messages=(
            Message.user("Weather and time in Paris?"),
            Message(
                role="assistant",
                content=(
                    ToolUseBlock(id="call_12345xyz", name="get_weather", input={"location": "Paris, France"}),
                    ToolUseBlock(id="call_67890abc", name="get_time", input={"timezone": "Europe/Paris"}),
                ),
            ),
            Message(
                role="user",
                content=(
                    ToolResultBlock(tool_use_id="call_12345xyz", content="18°C, cloudy"),
                    ToolResultBlock(tool_use_id="call_67890abc", content="error: clock offline", is_error=True),
                    TextBlock(text="Answer in French."),
                ),
            ),
        ),
        max_tokens=512,
        temperature=0.0,
        stop_sequences=("END",),
        **fields,
    )


# --- requests ---------------------------------------------------------------------------------


async def test_plain_text_answer_is_parsed_and_the_request_is_authenticated(
    server: MockServer, model: OpenAIModel
) -> None:
    server.reply_json("openai_text.json")

    response = await model.complete(ask())

    assert response.text == "Hello! How can I assist you today?"
    assert response.id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert response.model == "gpt-4.1-2025-04-14"
    assert response.provider == "openai"
    assert response.finish_reason is FinishReason.END_TURN
    assert response.raw_finish_reason == "stop"
    assert response.usage == Usage(input_tokens=19, output_tokens=10)
    request = server.request
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert KEY not in request.content.decode()
    assert server.body == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hello!"}],
        # api.openai.com gets the current field; max_tokens is deprecated there.
        "max_completion_tokens": 4096,
    }


async def test_system_tools_tool_calls_and_tool_results_are_sent_in_chat_completions_shape(
    server: MockServer, model: OpenAIModel
) -> None:
    server.reply_json("openai_text.json")

    await model.complete(tool_conversation())

    assert server.body == {
        "model": "gpt-4.1",
        "max_completion_tokens": 512,
        "temperature": 0.0,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get current temperature for a given location.",
                    "parameters": WEATHER.input_schema,
                },
            },
            {"type": "function", "function": {"name": "get_time", "parameters": TIME.input_schema}},
        ],
        "messages": [
            {"role": "system", "content": "You are a concise travel assistant."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_12345xyz",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris, France"}'},
                    },
                    {
                        "id": "call_67890abc",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"timezone":"Europe/Paris"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_12345xyz", "content": "18°C, cloudy"},
            {"role": "tool", "tool_call_id": "call_67890abc", "content": "error: clock offline"},
            {"role": "user", "content": "Answer in French."},
        ],
    }


async def test_malformed_arguments_from_an_earlier_turn_are_sent_back_verbatim(
    server: MockServer, model: OpenAIModel
) -> None:
    server.reply_json("openai_text.json")
    broken = ToolUseBlock(id="call_1", name="get_weather", raw_arguments='{"location": "Par')
    request = ModelRequest(
        model="gpt-4.1",
        messages=(
            Message.user("Weather?"),
            Message(role="assistant", content=(TextBlock(text="Checking."), broken)),
            Message(role="user", content=(ToolResultBlock(tool_use_id="call_1", content="bad JSON", is_error=True),)),
        ),
    )

    await model.complete(request)

    assistant = server.body["messages"][1]
    assert assistant["content"] == "Checking."
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"location": "Par'


async def test_parallel_tool_calls_and_cached_tokens_are_understood(server: MockServer, model: OpenAIModel) -> None:
    server.reply_json("openai_parallel_tool_calls.json")

    response = await model.complete(tool_conversation())

    assert response.finish_reason is FinishReason.TOOL_USE
    assert response.text == ""
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_12345xyz", "get_weather", {"location": "Paris, France"}),
        ("call_67890abc", "get_weather", {"location": "Bogotá, Colombia"}),
    ]
    # cached_tokens are part of prompt_tokens already: input stays 2006.
    assert response.usage == Usage(input_tokens=2006, output_tokens=48, cache_read_tokens=1920)
    assert response.usage.uncached_input_tokens == 86


async def test_invalid_json_arguments_are_kept_raw_instead_of_failing(server: MockServer, model: OpenAIModel) -> None:
    data = payload_json("openai_parallel_tool_calls.json")
    calls = data["choices"][0]["message"]["tool_calls"]
    calls[0]["function"]["arguments"] = '{"location": "Paris, France"'  # never closed
    calls[1]["function"]["arguments"] = '["Bogotá"]'  # JSON, but not an object
    server.reply(content=orjson.dumps(data))

    response = await model.complete(ask())

    assert [(c.arguments, c.raw_arguments) for c in response.tool_calls] == [
        ({}, '{"location": "Paris, France"'),
        ({}, '["Bogotá"]'),
    ]


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("stop", FinishReason.END_TURN),
        ("tool_calls", FinishReason.TOOL_USE),
        ("function_call", FinishReason.TOOL_USE),
        ("length", FinishReason.MAX_TOKENS),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("eos", FinishReason.OTHER),
    ],
)
async def test_finish_reasons_are_normalised_and_kept_raw(
    server: MockServer, model: OpenAIModel, finish_reason: str, expected: FinishReason
) -> None:
    server.reply(content=payload("openai_text.json").replace(b'"stop"', f'"{finish_reason}"'.encode()))

    response = await model.complete(ask())

    assert response.finish_reason is expected
    assert response.raw_finish_reason == finish_reason


async def test_a_refusal_is_returned_as_text_and_flagged_as_content_filter(
    server: MockServer, model: OpenAIModel
) -> None:
    data = payload_json("openai_text.json")
    data["choices"][0]["message"].update(content=None, refusal="I'm sorry, I can't help with that.")
    server.reply(content=orjson.dumps(data))

    response = await model.complete(ask())

    assert response.text == "I'm sorry, I can't help with that."
    assert response.finish_reason is FinishReason.CONTENT_FILTER
    assert response.raw_finish_reason == "stop"


# --- streaming --------------------------------------------------------------------------------


async def test_stream_asks_for_usage_and_reassembles_text(server: MockServer, model: OpenAIModel) -> None:
    server.reply_sse(payload("openai_stream_text.sse"))

    events = await collect(model.stream(ask()))

    assert server.body["stream"] is True
    assert server.body["stream_options"] == {"include_usage": True}
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", "!", " How can I", " help you today?"]
    assert isinstance(events[-1], ResponseDone)
    response = events[-1].response
    assert response.text == "Hello! How can I help you today?"
    assert response.id == "chatcmpl-C3wQp5FZWfYdX0lN1pa3bMRt2xKqL"
    assert response.finish_reason is FinishReason.END_TURN
    assert response.usage == Usage(input_tokens=1843, output_tokens=9, cache_read_tokens=1792)


async def test_stream_reassembles_parallel_tool_calls(server: MockServer, model: OpenAIModel) -> None:
    server.reply_sse(payload("openai_stream_tool_calls.sse"))

    events = await collect(model.stream(tool_conversation()))

    deltas = [e for e in events if isinstance(e, ToolUseDelta)]
    assert [(d.index, d.id, d.name) for d in deltas if d.id] == [
        (0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather"),
        (1, "call_ABCDEF0123456789abcdefgh", "get_time"),
    ]
    assert "".join(d.arguments_delta for d in deltas if d.index == 1) == '{"timezone":"Europe/Paris"}'
    assert sum(isinstance(e, ResponseDone) for e in events) == 1
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert [(c.id, c.name, c.arguments) for c in done.response.tool_calls] == [
        ("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}),
        ("call_ABCDEF0123456789abcdefgh", "get_time", {"timezone": "Europe/Paris"}),
    ]
    assert done.response.finish_reason is FinishReason.TOOL_USE
    assert done.response.usage == Usage(input_tokens=2210, output_tokens=41, cache_read_tokens=2048)


async def test_stream_without_done_marker_is_an_interruption_not_a_success(
    server: MockServer, model: OpenAIModel
) -> None:
    stream = payload("openai_stream_text.sse")
    server.reply_sse(cut_before(stream, b'" help you today?"'))

    events: list[StreamEvent] = []
    with pytest.raises(StreamInterrupted) as info:
        await collect(model.stream(ask()), into=events)

    assert not any(isinstance(e, ResponseDone) for e in events)
    assert info.value.partial_text == "Hello! How can I"
    assert info.value.usage is None  # usage only comes in the last chunk
    assert info.value.retryable


async def test_stream_with_usage_but_no_done_marker_is_still_interrupted(
    server: MockServer, model: OpenAIModel
) -> None:
    server.reply_sse(cut_before(payload("openai_stream_text.sse"), b"[DONE]"))

    with pytest.raises(StreamInterrupted) as info:
        await collect(model.stream(ask()))

    assert info.value.partial_text == "Hello! How can I help you today?"
    assert info.value.usage == Usage(input_tokens=1843, output_tokens=9, cache_read_tokens=1792)


async def test_dropped_connection_mid_stream_is_interrupted(server: MockServer, model: OpenAIModel) -> None:
    stream = payload("openai_stream_tool_calls.sse")
    server.reply_broken(cut_before(stream, b'"index":1,"id"'), httpx.ReadError("connection reset by peer"))

    with pytest.raises(StreamInterrupted) as info:
        await collect(model.stream(ask()))

    assert isinstance(info.value.__cause__, httpx.ReadError)


async def test_error_object_mid_stream_raises_a_typed_error(server: MockServer, model: OpenAIModel) -> None:
    stream = cut_before(payload("openai_stream_text.sse"), b'" help you today?"')
    error = {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
    server.reply_sse(stream + b"data: " + orjson.dumps(error) + b"\n\n")

    events: list[StreamEvent] = []
    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()), into=events)

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello! How can I"
    assert info.value.status == 500
    assert info.value.retryable


async def test_vllm_error_object_mid_stream_keeps_its_status(server: MockServer, model: OpenAIModel) -> None:
    # vLLM's ErrorResponse puts the HTTP status in "code".
    error = {"error": {"object": "error", "message": "context length exceeded", "type": "BadRequestError", "code": 400}}
    server.reply_sse(b"data: " + orjson.dumps(error) + b"\n\n")

    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()))

    assert info.value.status == 400
    assert not info.value.retryable


# --- errors -----------------------------------------------------------------------------------


async def test_429_carries_retry_after(server: MockServer, model: OpenAIModel) -> None:
    server.reply_json("openai_error_rate_limit.json", status=429, headers={"retry-after": "2"})

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert info.value.status == 429
    assert info.value.retry_after == 2.0
    assert info.value.retryable
    assert "rate_limit_exceeded" in info.value.body


async def test_retry_after_ms_is_preferred_for_its_precision(server: MockServer, model: OpenAIModel) -> None:
    server.reply_json(
        "openai_error_rate_limit.json", status=429, headers={"retry-after": "2", "retry-after-ms": "1580"}
    )

    with pytest.raises(ModelHTTPError) as info:
        await collect(model.stream(ask()))

    assert info.value.retry_after == pytest.approx(1.58)


async def test_500_is_retryable(server: MockServer, model: OpenAIModel) -> None:
    server.reply(500, content=b'{"error":{"message":"The server had an error","type":"server_error"}}')

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert info.value.status == 500
    assert info.value.retryable


def _echo_key_401(request: httpx.Request) -> httpx.Response:
    """A hostile server that echoes the key it was sent, in the body and in a header."""
    key = request.headers["authorization"].removeprefix("Bearer ")
    message = f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com."
    return httpx.Response(
        401,
        json={"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
        headers={"x-echoed-key": key, "www-authenticate": f"Bearer {key}"},
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_401_never_leaks_the_api_key_even_when_the_server_echoes_it(
    server: MockServer, model: OpenAIModel, streaming: bool
) -> None:
    server.handler = _echo_key_401

    call = collect(model.stream(ask())) if streaming else model.complete(ask())

    with pytest.raises(ModelHTTPError) as info:
        await call

    error = info.value
    assert error.status == 401
    assert not error.retryable
    assert "[REDACTED]" in error.body
    for text in (str(error), repr(error), error.body, *map(str, error.args)):
        assert KEY not in text


async def test_sk_shaped_keys_are_redacted_even_if_they_are_not_ours(server: MockServer, model: OpenAIModel) -> None:
    server.reply(401, content=b'{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234."}}')

    with pytest.raises(ModelHTTPError) as info:
        await model.complete(ask())

    assert "sk-proj-abcdefghijklmnop1234" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}',
        b'{"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "stop"}]}',
    ],
    ids=["html", "no-choices", "no-message"],
)
async def test_a_200_body_that_is_not_a_completion_is_malformed(
    server: MockServer, model: OpenAIModel, body: bytes
) -> None:
    server.reply(200, content=body)

    with pytest.raises(MalformedResponseError):
        await model.complete(ask())


async def test_garbage_in_a_stream_is_malformed(server: MockServer, model: OpenAIModel) -> None:
    server.reply_sse(b"data: {not json\n\n")

    with pytest.raises(MalformedResponseError):
        await collect(model.stream(ask()))


async def test_timeout_is_a_model_timeout(server: MockServer, model: OpenAIModel) -> None:
    server.fail(httpx.ConnectTimeout("timed out"))

    with pytest.raises(ModelTimeoutError):
        await collect(model.stream(ask()))


async def test_refused_connection_is_a_connection_error(server: MockServer, model: OpenAIModel) -> None:
    server.fail(httpx.ConnectError("[Errno 111] Connection refused"))

    with pytest.raises(ModelConnectionError) as info:
        await model.complete(ask())

    assert info.value.retryable


async def test_missing_key_fails_before_anything_is_sent(
    server: MockServer, model: OpenAIModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await model.complete(ask())

    assert server.requests == []


# --- OpenAI-compatible servers ----------------------------------------------------------------


async def test_an_ollama_style_server_needs_no_key_and_gets_max_tokens(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    server.reply_json("ollama_tool_call.json")
    config = ProviderConfig(base_url="http://localhost:11434/v1/", api_key_env=None)
    model = OpenAIModel("llama3.1:8b", config=config, http_client=server.client)

    response = await model.complete(
        ModelRequest(model="llama3.1:8b", messages=(Message.user("Weather in Paris?"),), tools=(WEATHER,))
    )

    assert str(server.request.url) == "http://localhost:11434/v1/chat/completions"
    assert "authorization" not in server.request.headers
    # Ollama documents max_tokens only; max_completion_tokens would be ignored.
    assert server.body["max_tokens"] == 4096
    assert "max_completion_tokens" not in server.body
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert response.text == ""
    assert response.finish_reason is FinishReason.TOOL_USE
    assert response.usage == Usage(input_tokens=160, output_tokens=18)
    assert model.price_ref is None  # a self-hosted model is not billed at OpenAI's prices


async def test_a_vllm_server_with_a_key_and_an_explicit_max_tokens_field(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "token-abc123")
    server.reply_sse(payload("openai_stream_text.sse"))
    config = ProviderConfig(base_url="http://127.0.0.1:8000/v1", api_key_env="VLLM_API_KEY")
    model = OpenAIModel(
        "Qwen/Qwen2.5-7B-Instruct",
        config=config,
        http_client=server.client,
        max_tokens_param="max_completion_tokens",
        price_ref=PriceRef("together", "Qwen/Qwen2.5-7B-Instruct"),
    )

    events = await collect(model.stream(ask(model="Qwen/Qwen2.5-7B-Instruct")))

    assert isinstance(events[-1], ResponseDone)
    assert str(server.request.url) == "http://127.0.0.1:8000/v1/chat/completions"
    assert server.request.headers["authorization"] == "Bearer token-abc123"
    assert server.body["max_completion_tokens"] == 4096
    assert model.price_ref == PriceRef("together", "Qwen/Qwen2.5-7B-Instruct")


def test_defaults() -> None:
    model = OpenAIModel("gpt-4.1")
    assert model.provider == "openai"
    assert model.ref == "openai:gpt-4.1"
    assert model.price_ref == PriceRef("openai", "gpt-4.1")
    assert model.config.api_key_env == "OPENAI_API_KEY"
    assert model.url == "https://api.openai.com/v1/chat/completions"
    assert model.max_tokens_param == "max_completion_tokens"


async def test_aclose_closes_only_a_client_the_model_created(server: MockServer) -> None:
    owned = OpenAIModel("gpt-4.1")
    shared = OpenAIModel("gpt-4.1", http_client=server.client)

    await owned.aclose()
    await owned.aclose()  # safe twice
    await shared.aclose()

    assert owned._client.is_closed
    assert not server.client.is_closed


async def test_an_eval_trial_asks_caches_on_the_way_not_to_answer(model: OpenAIModel, server: MockServer) -> None:
    server.reply_json("openai_text.json")
    server.reply_json("openai_text.json")
    await model.complete(ask())
    await model.complete(ask(metadata={"cache": "bypass"}))
    plain, fresh = server.requests
    assert "cache-control" not in plain.headers
    assert fresh.headers["cache-control"] == "no-cache"
