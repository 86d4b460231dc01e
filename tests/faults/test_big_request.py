"""One huge request must not stall a replica, and a request over the bounds is a 413 in its own format.

A real ``tether gateway serve`` process on translated routes (OpenAI clients to an Anthropic deployment
and back). While a 10,000-message request is read, translated and answered, another client keeps
sending small requests; none of those may wait long. Before translation was linear, merging 10,000
same-role messages took ~12 s of CPU on the event loop and every other request waited behind it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults._support import GatewayProcess, Upstream

KEY = "fault-provider-key-0123456789abcdef"
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
MAX_BYTES = 4 * 1024 * 1024
SMALL = {"model": "fast", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}


def _config(upstream: Upstream) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"},
            "ant": {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "FAULT_ANTHROPIC_KEY"},
        },
        "deployments": {
            "gpt": {"provider": "oai", "model": "gpt-4.1"},
            "claude": {"provider": "ant", "model": "claude-sonnet-4-5"},
        },
        "routes": {
            "fast": {"tiers": [["gpt"]]},
            "smart": {"tiers": [["claude"]]},
            "to-claude": {"tiers": [["claude"]]},  # OpenAI clients, translated
            "to-gpt": {"tiers": [["gpt"]]},  # Anthropic clients, translated
        },
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
        # The message bound stays at its default (10,000); the body bound is lowered so the test stays small.
        "gateway": {"max_request_bytes": MAX_BYTES},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory: Path = tmp_path_factory.mktemp("big-request")
    with Upstream() as upstream:
        process = GatewayProcess(
            directory / "gw",
            _config(upstream),
            database_url=f"sqlite:///{directory / 'tether.db'}",
            env={"FAULT_OPENAI_KEY": KEY, "FAULT_ANTHROPIC_KEY": KEY},
            args=["--no-auth"],
        )
        with process:
            yield process


def _messages(count: int, *, blocks: bool = False) -> list[dict[str, Any]]:
    """``count`` user messages in a row (the same role: translation merges them into one turn)."""
    text = "the checkout service returned 502 for order {i}; the runbook says to look at the pool first"
    if blocks:
        return [{"role": "user", "content": [{"type": "text", "text": text.format(i=i)}]} for i in range(count)]
    return [{"role": "user", "content": text.format(i=i)} for i in range(count)]


def _while_served(url: str, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[float]]:
    """Send ``body``; meanwhile keep sending small requests. The big answer, and the small ones' latencies
    (seconds) of those sent while the big one was in flight."""
    overlapping: list[float] = []
    done = threading.Event()
    window: list[float] = []
    errors: list[BaseException] = []

    def small_requests() -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not done.is_set():
                    sent = time.monotonic()
                    reply = client.post(OPENAI, json=SMALL)
                    took = time.monotonic() - sent
                    assert reply.status_code == 200, reply.text
                    if window and sent >= window[0]:
                        overlapping.append(took)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    with httpx.Client(base_url=url, timeout=120) as client:
        # Warm both routes (connection pools, first-use imports): only the big request is measured.
        client.post(OPENAI, json=SMALL)
        client.post(path, json={**body, "messages": body["messages"][:1]})
        worker = threading.Thread(target=small_requests, daemon=True)
        worker.start()
        window.append(time.monotonic())
        reply = client.post(path, json=body)
        done.set()
        worker.join(60)
    assert not errors, errors
    return reply, overlapping


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (OPENAI, {"model": "to-claude", "max_tokens": 16, "messages": _messages(10_000)}),
        (ANTHROPIC, {"model": "to-gpt", "max_tokens": 16, "messages": _messages(10_000, blocks=True)}),
    ],
    ids=["openai-to-anthropic", "anthropic-to-openai"],
)
def test_a_10000_message_request_does_not_stall_small_ones(
    gateway: GatewayProcess, path: str, body: dict[str, Any]
) -> None:
    started = time.monotonic()
    reply, waits = _while_served(gateway.url, path, body)
    served_s = time.monotonic() - started
    assert reply.status_code == 200, reply.text[:500]
    assert len(waits) >= 1, "no small request was sent while the big one was served"
    p50, worst = statistics.median(waits), max(waits)
    summary = f"{len(waits)} small requests: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    print(f"\n{path}: big request served in {served_s:.3f} s; {summary}")
    # Generous for a loaded 2-core machine: the quadratic merge made them wait 12 s or more.
    assert worst < 1.0, f"a small request waited {worst:.2f} s behind the big one (p50 {p50:.3f} s)"
    assert served_s < 10, f"the 10,000-message request took {served_s:.1f} s"


def test_more_messages_than_the_bound_is_413_in_the_clients_format(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        openai = client.post(OPENAI, json={"model": "fast", "max_tokens": 16, "messages": _messages(10_001)})
        assert openai.status_code == 413, openai.text[:300]
        error = openai.json()["error"]
        assert error["code"] == "request_too_large" and error["param"] == "messages"
        assert "10,001 messages" in error["message"] and "at most 10,000" in error["message"]
        assert "max_request_messages under [gateway] in tether.toml" in error["message"]

        anthropic = client.post(
            ANTHROPIC, json={"model": "smart", "max_tokens": 16, "messages": _messages(10_001, blocks=True)}
        )
        assert anthropic.status_code == 413, anthropic.text[:300]
        body = anthropic.json()
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        assert "at most 10,000" in body["error"]["message"]

        # Exactly at the bound is served.
        at_bound = client.post(OPENAI, json={"model": "fast", "max_tokens": 16, "messages": _messages(10_000)})
        assert at_bound.status_code == 200, at_bound.text[:300]


def test_a_body_over_the_size_bound_is_413_in_the_clients_format(gateway: GatewayProcess) -> None:
    padding = "x" * (MAX_BYTES + 1024)
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        openai = client.post(OPENAI, json={**SMALL, "messages": [{"role": "user", "content": padding}]})
        assert openai.status_code == 413, openai.text[:300]
        error = openai.json()["error"]
        assert error["code"] == "request_too_large"
        assert f"({MAX_BYTES:,} bytes)" in error["message"] and "max_request_bytes" in error["message"]

        anthropic = client.post(
            ANTHROPIC,
            json={"model": "smart", "max_tokens": 16, "messages": [{"role": "user", "content": padding}]},
        )
        assert anthropic.status_code == 413, anthropic.text[:300]
        body = anthropic.json()
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        # The gateway still serves afterwards.
        assert client.post(OPENAI, json=SMALL).status_code == 200
