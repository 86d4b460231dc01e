"""The load driver: wrk (C, one thread) with a generated Lua script.

The script sets the POST body and headers, and its ``done()`` callback prints
one ``WRKJSON {...}`` line: requests, duration, socket errors, non-2xx/3xx
responses and latency percentiles (µs, wrk's histogram). wrk's latency is
the time to the *complete* response, so for a stream it is the time to
``data: [DONE]`` and the terminating chunk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # socket errors (connect, read, write, timeout)
    bad_status: int  # responses with status > 399
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def clean(self) -> bool:
        return self.errors == 0 and self.bad_status == 0 and self.requests > 0


def wrk_available() -> str | None:
    return shutil.which("wrk")


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    """A wrk script that POSTs ``body`` with ``headers`` and prints its results as JSON."""
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + _DONE


def run_wrk(url: str, script: Path, connections: int, duration_s: float, timeout_s: float = 10.0) -> WrkResult:
    """One load point: ``connections`` keep-alive connections, each sending its next request when the last ends."""
    wrk = wrk_available()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON ") :])
            return WrkResult(
                requests=d["requests"],
                duration_s=d["duration_us"] / 1e6,
                errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
                bad_status=d["status"],
                p50_ms=d["p50"] / 1000,
                p90_ms=d["p90"] / 1000,
                p99_ms=d["p99"] / 1000,
                p999_ms=d["p999"] / 1000,
                mean_ms=d["mean"] / 1000,
                max_ms=d["max"] / 1000,
            )
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def check_response(url: str, body: bytes, headers: dict[str, str], stream: bool, timeout_s: float = 30.0) -> str:
    """One request, checked like a client would: ``""`` when the answer is whole, else what is wrong."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:300]!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if status != 200:
        return f"HTTP {status}"
    if not stream:
        try:
            usage = orjson.loads(text).get("usage") or {}
        except orjson.JSONDecodeError:
            return f"not JSON: {text[:200]!r}"
        return "" if usage.get("completion_tokens") else f"no usage in the answer: {text[:300]!r}"
    events = [line[6:] for line in text.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream did not end with data: [DONE]: {text[-200:]!r}"
    chunks = [orjson.loads(e) for e in events[:-1]]
    content = "".join(
        (c.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for c in chunks if c.get("choices")
    )
    if not content:
        return "stream carried no content"
    if not any(c.get("usage") for c in chunks):
        return "stream carried no usage chunk although stream_options.include_usage was set"
    return ""
