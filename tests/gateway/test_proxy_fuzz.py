"""A fuzzer over both wire formats: whatever a client sends, the proxy never answers 5xx.

The proxy runs under uvicorn (in a thread of its own) in front of a healthy mock
upstream, with passthrough and translated routes for both formats. Bodies are
valid requests with one part mutated (a wrong type, a key dropped or added, at
any depth), JSON-shaped structures with wrong types at every level, and raw
bytes (invalid JSON, non-UTF-8, deep nesting, NaN, empty), sent with and
without streaming and with odd content types. With a healthy upstream no 5xx
is legitimate (502/503/504 mean an upstream failed); every error is a JSON body
in the client's format.

CI runs a fixed, derandomised profile; ``HYPOTHESIS_PROFILE=long`` runs many
more examples, randomised.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.proxy_support import (
    ALICE,
    Env,
    base_config,
    payload,
    running_proxy,
    set_provider_keys,
    sse_events,
)

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"

# (client path, route): passthrough and translated, both formats, plus the simulated model.
TARGETS = [
    (OPENAI, "fast"),  # passthrough to an openai deployment
    (OPENAI, "to-claude"),  # translated to an anthropic deployment
    (OPENAI, "sim"),  # translated to the simulated model
    (ANTHROPIC, "smart"),  # passthrough to an anthropic deployment
    (ANTHROPIC, "to-gpt"),  # translated to an openai deployment
    (ANTHROPIC, "sim"),
]

_PROFILES = {
    "ci": settings(
        max_examples=350,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    ),
    "long": settings(
        max_examples=20_000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    ),
}
# Chosen here, not loaded globally: the other hypothesis tests keep their own settings.
PROFILE = _PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), _PROFILES["ci"])


# --- a healthy upstream -----------------------------------------------------------------------


def _wants_stream(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


def _healthy(complete: bytes, events: list[bytes]) -> Any:
    async def respond(request: web.Request) -> web.StreamResponse:
        if not _wants_stream(await request.read()):
            return web.Response(body=complete, content_type="application/json")
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    return respond


def _config(upstream: str) -> dict[str, Any]:
    return base_config(
        upstream,
        routes={
            # Budgets and rate limits no fuzzed request can exhaust, so their code paths see every output cap.
            "fast": {
                "tiers": [["gpt"]],
                "response_cache": True,
                "retry": {"max_retries": 0},
                "budget": {"usd": 1_000_000, "tokens": 10**14},
                "rate_limit": {"rpm": 10**6, "tpm": 10**12},
            },
            "smart": {"tiers": [["claude"]], "retry": {"max_retries": 0}, "budget": {"usd": 1_000_000}},
            "to-claude": {"tiers": [["claude"]], "retry": {"max_retries": 0}, "rate_limit": {"tpm": 10**12}},
            "to-gpt": {"tiers": [["gpt"]], "retry": {"max_retries": 0}},
            "sim": {"tiers": [["sim-claude"]]},
        },
    )


class _Background:
    """``running_proxy`` on an event loop in its own thread, so the hypothesis test can stay synchronous."""

    def __init__(self) -> None:
        self.env: Env | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_proxy(_config, record=False) as env:
            env.upstream.on(
                "/v1/chat/completions", _healthy(payload("openai_text.json"), sse_events("openai_stream_text.sse"))
            )
            env.upstream.on(
                "/v1/messages", _healthy(payload("anthropic_text.json"), sse_events("anthropic_stream_tool_use.sse"))
            )
            self.env = env
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Env:
        self._thread.start()
        assert self._ready.wait(30), "the fuzz proxy did not start"
        if self._error is not None:
            raise self._error
        assert self.env is not None
        return self.env

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[Env, httpx.Client]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_provider_keys(monkeypatch)
        background = _Background()
        env = background.start()
        try:
            with httpx.Client(base_url=env.url, timeout=30) as client:
                yield env, client
        finally:
            background.stop()


# --- what clients send ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "text", "user", "assistant", "tool", "system", "function", "tool_use", "image"])
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# What replaces a part of a valid request: mostly the plain wrong types, sometimes anything.
wrong_types = (
    st.sampled_from([{}, [], 0, -1, 1.5, "", "x", None, True, [{}], {"type": {}}, 2**63, -(2**64)]) | json_values
)

_OPENAI_VALID: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ],
    "max_tokens": 50,
    "temperature": 0,
    "stop": ["\n\n"],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "weather at a place",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "auto",
    "stream_options": {"include_usage": True},
}

_ANTHROPIC_VALID: dict[str, Any] = {
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ],
    "max_tokens": 50,
    "temperature": 0.5,
    "stop_sequences": ["\n\n"],
    "tools": [
        {
            "name": "weather",
            "description": "weather at a place",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "auto"},
}


# Without the client's own breakpoint, so passthrough adds the route's (with_cache_breakpoints).
_ANTHROPIC_UNMARKED: dict[str, Any] = {
    **_ANTHROPIC_VALID,
    "system": "be brief",
    "messages": [
        *_ANTHROPIC_VALID["messages"][:2],
        {"role": "user", "content": [{"type": "text", "text": "thanks"}, {"type": "image", "source": {}}]},
    ],
}
_TEMPLATES = {OPENAI: [_OPENAI_VALID], ANTHROPIC: [_ANTHROPIC_VALID, _ANTHROPIC_UNMARKED]}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indices), the value itself first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value: Any, path: tuple[Any, ...], new: Any, *, delete: bool = False) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    if not rest and delete:
        del copy[head]
    else:
        copy[head] = _replace(value[head], rest, new, delete=delete)
    return copy


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """A valid request with one to three parts replaced by wrong types, dropped, or grown a stray key."""
    data = template
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            data = _replace(data, path, None, delete=True)
        elif action == "add":
            target: Any = data
            for step in path:
                target = target[step]
            if isinstance(target, dict):
                data = _replace(data, path, {**target, draw(st.text(max_size=8)): draw(json_values)})
            else:
                data = _replace(data, path, draw(json_values))
        else:
            data = _replace(data, path, draw(wrong_types))
    return data


_FIELDS = {
    OPENAI: ["messages", "max_tokens", "max_completion_tokens", "temperature", "stop", "tools", "tool_choice", "n"],
    ANTHROPIC: ["messages", "max_tokens", "system", "temperature", "stop_sequences", "tools", "tool_choice"],
}


@st.composite
def shaped(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A JSON-shaped request: the known top-level keys, each with any JSON value (or a plausible one)."""
    data: dict[str, Any] = {}
    for key in _FIELDS[path]:
        if draw(st.booleans()):
            data[key] = draw(json_values)
    if draw(st.sampled_from(range(4))) != 3:
        # Messages of the right outer shape, wrong inside.
        data["messages"] = draw(
            st.lists(
                st.fixed_dictionaries({"role": json_values, "content": json_values})
                | st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
                    optional={
                        "content": st.lists(
                            st.dictionaries(st.sampled_from(["type", "text", "id", "input", "content"]), json_values),
                            max_size=3,
                        ),
                        "tool_calls": json_values,
                        "tool_call_id": json_values,
                    },
                ),
                max_size=4,
            )
        )
    return data


RAW_BODIES = [
    b"",
    b" ",
    b"null",
    b"[]",
    b'"model"',
    b"{",
    b'{"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}',
    b'{"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
    b'{"model": "sim", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
    b'{"model": "sim", "max_tokens": 5, "messages": [{"role": "user", "content": "\xff\xfe caf\xe9"}]}',
    b'{"model": "sim", "max_tokens": 5, "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "sim", "max_tokens": 5, "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model": "sim", "max_tokens": 5, "messages": [{"role": "user", "content": '
    + b'{"a":' * 3000
    + b"1"
    + b"}" * 3000
    + b"}]}",
    b'{"model": "sim", "model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
    b"\xef\xbb\xbf{}",
]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path, route = draw(st.sampled_from(TARGETS))
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "shaped", "shaped", "raw"]))
    headers = {"authorization": f"Bearer {ALICE}", "x-api-key": ALICE}
    headers["content-type"] = draw(
        st.sampled_from(["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"])
    )
    if kind == "raw":
        body = draw(st.sampled_from(RAW_BODIES))
        if draw(st.booleans()):
            body = body.replace(b'"sim"', orjson.dumps(route))
        return path, body, headers
    data = draw(mutated(draw(st.sampled_from(_TEMPLATES[path])))) if kind == "mutated" else draw(shaped(path))
    if draw(st.sampled_from(range(10))) != 9:
        data = {**data, "model": route}  # mostly a real route, so the body gets past routing
    data["stream"] = (
        draw(st.sampled_from([False, True])) if draw(st.sampled_from(range(10))) != 9 else draw(json_values)
    )
    if draw(st.sampled_from(range(8))) == 7:
        data = draw(json_values)  # not even an object, sometimes
    # The stdlib encoder: integers beyond 64 bits, and inf as the (invalid) literal Infinity.
    return path, json.dumps(data, ensure_ascii=draw(st.booleans())).encode(), headers


def check(path: str, reply: httpx.Response) -> None:
    """No 5xx; errors as JSON in the client's format; a 200 stream that did not fail inside the proxy."""
    assert reply.status_code < 500, (reply.status_code, reply.text[:500])
    content_type = reply.headers.get("content-type", "")
    if reply.status_code >= 400:
        body = orjson.loads(reply.content)
        if path == OPENAI:
            assert isinstance(body["error"]["message"], str), body
        else:
            assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
    elif content_type.startswith("text/event-stream"):
        assert b"the gateway failed while streaming" not in reply.content, reply.text[:500]
    else:
        orjson.loads(reply.content)


@PROFILE
@given(request=requests())
def test_no_request_is_answered_with_a_5xx(
    proxy: tuple[Env, httpx.Client], request: tuple[str, bytes, dict[str, str]]
) -> None:
    _, client = proxy
    path, body, headers = request
    reply = client.post(path, content=body, headers=headers)
    check(path, reply)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize("body", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_raw_bodies_are_4xx_json(proxy: tuple[Env, httpx.Client], path: str, body: bytes) -> None:
    _, client = proxy
    reply = client.post(path, content=body, headers={"authorization": f"Bearer {ALICE}", "x-api-key": ALICE})
    check(path, reply)


def test_an_object_as_a_block_type_names_the_field(proxy: tuple[Env, httpx.Client]) -> None:
    """The case from the issue: ``{"type": {}, "text": "hi"}`` in an Anthropic message on a translated route."""
    _, client = proxy
    body = {"model": "to-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]}
    reply = client.post(ANTHROPIC, json=body, headers={"x-api-key": ALICE})
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].type must be a string" in error["error"]["message"]
