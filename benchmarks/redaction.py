"""The proxy's scrubbing cost per response: ``Scrubber.scrub_bytes`` on a 4 KB body with two provider keys.

Every byte the proxy sends a client passes through ``scrub_bytes`` (whole bodies in ``_respond``, each
batch of SSE events in ``_pump``) and the headers it passes on through ``scrub``. This times, with
``perf_counter_ns`` per call after a warm-up and GC on:

- a clean 4 KB OpenAI-style JSON answer (the common case: one ``bytes.find`` per probe, no decoding),
  with no key registered, with 2 provider keys (as ``gateway serve`` with two providers), and with 2 keys
  plus 4 tool secrets;
- the same body echoing one key (decoded, scrubbed, re-encoded: the rare case);
- a 300-byte SSE event (one stream batch) and the ``x-request-id`` header value, clean, with 2 keys.

Run: ``uv run --frozen python -m benchmarks.redaction`` (prints p50/p99 in µs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import orjson

from tether.redaction import Scrubber

KEYS = ("canary-7f3a9c1e5b2d4f60a8e9c7b1d3f5a2e4", "sk-ant-api03-Zx9qW3eR5tY7uI9oP1aS3dF5gH7jK9lZ")
TOOL_SECRETS = (
    "pd-token-0b6e2f9d4c7a1e3b5d8f",
    "ghp_1234567890abcdefghijABCDEFGHIJ012345",
    "xoxb-1234-5678-abcdefgh",
    "AKIAIOSFODNN7EXAMPLE",
)


def body_4k(text: str = "") -> bytes:
    words = " ".join(f"word{i}" for i in range(560))
    answer = {
        "id": "chatcmpl-9f8e7d6c5b4a",
        "object": "chat.completion",
        "created": 1765000000,
        "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": (text + " " + words)[:3800]}}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 931, "total_tokens": 1743},
    }
    return orjson.dumps(answer)


def timed(fn: Callable[[], object], n: int = 20_000) -> tuple[float, float]:
    for _ in range(1_000):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def main() -> None:
    clean = body_4k()
    dirty = body_4k(f"the key is {KEYS[0]}")
    delta = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4.1"}
    delta["choices"] = [{"index": 0, "delta": {"content": "some streamed words here and there"}}]
    event = b"data: " + orjson.dumps(delta) + b"\n\n"
    header = "req_011CVq8zX2vY9pW3eR5tY7uI"
    none, two, six = Scrubber(), Scrubber(), Scrubber()
    for i, key in enumerate(KEYS):
        two.register(f"provider:p{i}", key)
        six.register(f"provider:p{i}", key)
    for i, secret in enumerate(TOOL_SECRETS):
        six.register(f"tool{i}", secret)
    assert len(clean) >= 4000, len(clean)
    rows = [
        (f"4 KB clean body, no secret registered ({len(clean)} B)", lambda: none.scrub_bytes(clean)),
        ("4 KB clean body, 2 provider keys", lambda: two.scrub_bytes(clean)),
        ("4 KB clean body, 2 keys + 4 tool secrets", lambda: six.scrub_bytes(clean)),
        ("4 KB body echoing a key, 2 keys", lambda: two.scrub_bytes(dirty)),
        (f"SSE event ({len(event)} B), 2 keys", lambda: two.scrub_bytes(event)),
        ("x-request-id value, 2 keys", lambda: two.scrub(header)),
    ]
    probes = len(two._compiled.probes) if two._compiled else 0
    print(f"probes searched with 2 keys: {probes}")
    for name, fn in rows:
        p50, p99 = timed(fn)
        print(f"{name:<52} p50 {p50:7.2f} µs   p99 {p99:7.2f} µs")


if __name__ == "__main__":
    main()
