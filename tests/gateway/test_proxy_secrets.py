"""A provider key of any shape never reaches a client: not in answers, stream events, error bodies or headers."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.gateway.proxy_support import ALICE, json_reply, running_proxy

KEY = "canary-7f3a9c1e5b2d4f60a8e9c7b1d3f5a2e4"  # not shaped like sk-…
B64 = base64.b64encode(KEY.encode()).decode()
HIDDEN = "[secret:provider:oai]"


@pytest.fixture(autouse=True)
def _provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_TEST_OPENAI_KEY", KEY)
    monkeypatch.setenv("TETHER_TEST_ANTHROPIC_KEY", KEY)


def _chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4.1", "choices": [choice], **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def dribbled_stream() -> Any:
    """An upstream stream written a few bytes at a time, so TCP reads split the echoed key anywhere."""
    events = [
        _chunk("", None),
        _chunk(f"the key is {KEY} / {B64}", None),
        _chunk(None, "stop"),
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4.1","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n',
        b"data: [DONE]\n\n",
    ]
    raw = b"".join(events)

    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for at in range(0, len(raw), 7):
            await response.write(raw[at : at + 7])
            await asyncio.sleep(0)  # each piece its own write, so the proxy reads them apart
        await response.write_eof()
        return response

    return respond


async def post(url: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {ALICE}"})


async def test_a_key_split_across_stream_reads_is_scrubbed_from_the_events() -> None:
    async with running_proxy() as env:
        env.upstream.on("/v1/chat/completions", dribbled_stream())
        answer = await post(env.url, {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert KEY not in answer.text and B64 not in answer.text
    assert f"the key is {HIDDEN} / {HIDDEN}" in answer.text
    assert answer.text.rstrip().endswith("data: [DONE]")


async def test_an_echoing_answer_error_body_and_request_id_header_are_scrubbed() -> None:
    echoed = {
        "id": f"chatcmpl-{KEY}",
        "object": "chat.completion",
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{KEY.encode().hex()}"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    error = {"error": {"message": f"invalid key {B64}", "type": "invalid_request_error", "code": None}}
    async with running_proxy() as env:
        env.upstream.on(
            "/v1/chat/completions",
            json_reply(echoed, headers={"x-request-id": f"req-{KEY}"}),
            json_reply(error, status=400, headers={"x-request-id": f"req-{KEY}"}),
        )
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        ok, failed = await post(env.url, body), await post(env.url, body)
    assert ok.status_code == 200 and failed.status_code == 400
    for answer in (ok, failed):
        shown = answer.text + repr(answer.headers.multi_items())
        assert KEY not in shown and B64 not in shown and KEY.encode().hex() not in shown
    assert ok.json()["id"] == f"chatcmpl-{HIDDEN}"
    assert ok.headers["x-request-id"] == f"req-{HIDDEN}"
    assert ok.json()["choices"][0]["message"]["content"] == HIDDEN
    assert failed.json()["error"]["message"] == f"invalid key {HIDDEN}"
