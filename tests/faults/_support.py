"""The fault suite's harness: real processes, real servers, real faults — all on loopback.

- ``RedisServer``: a private ``redis-server`` on a free port that a test may kill, restart empty or keep
  persistent (append-only file), without touching the machine's Redis.
- ``FaultProxy``: a TCP proxy in front of a dependency (PostgreSQL, Redis) that the test switches between
  passing bytes, refusing connections and hanging (accepting, then answering nothing).
- ``Upstream``: a mock OpenAI + Anthropic provider in its own thread, honest or over-billing, slow,
  echoing the credentials it was sent (to prove they never reach a client), or failing.
- ``GatewayProcess``: ``tether gateway serve`` as a child process, to SIGTERM or ``kill -9``.
- ``run_tether``: any CLI command as a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import sqlalchemy as sa
from aiohttp import web

__all__ = [
    "FaultProxy",
    "GatewayProcess",
    "RedisServer",
    "Upstream",
    "free_port",
    "run_tether",
    "tether_env",
    "via_port",
    "wait_until",
    "write_toml",
]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "a condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def via_port(url: str, port: int, host: str = HOST) -> str:
    """The same database URL, reached through another port (a ``FaultProxy``)."""
    return sa.make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


# --- TOML ---------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(prefix: tuple[str, ...], table: Mapping[str, Any], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if prefix and (scalars or not tables):
        lines.append("[" + ".".join(json.dumps(p) for p in prefix) + "]")
    lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in scalars.items())
    if scalars or (prefix and not tables):
        lines.append("")
    for key, sub in tables.items():
        _toml_table((*prefix, key), sub, lines)


def write_toml(path: Path, mapping: Mapping[str, Any]) -> Path:
    """Write ``mapping`` (nested dicts of strings, numbers, booleans and lists) as a TOML file."""
    lines: list[str] = []
    _toml_table((), mapping, lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- a private Redis -----------------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of the test's own on a free loopback port.

    Args:
        directory: where it keeps its files (its append-only file when ``persistent``).
        persistent: ``appendonly yes`` with ``appendfsync always``, so a restart keeps every write;
            otherwise nothing is kept (like the machine's Redis) and a restart comes back empty.
    """

    def __init__(self, directory: Path, *, persistent: bool = False, port: int | None = None) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistent
            else ["--appendonly", "no", "--save", ""]
        )
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory), *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, f"redis-server on port {self.port} to answer PING")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in Redis's inline protocol; the raw reply (for CONFIG, DBSIZE, FLUSHALL…)."""
        with socket.create_connection((HOST, self.port), timeout=2) as sock:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            time.sleep(0.05)
            return sock.recv(65536)

    def stop(self) -> None:
        """A clean shutdown (a persistent server writes its file first)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """``kill -9``: whatever it had not written is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self, *, empty: bool | None = None) -> None:
        """Stop and start again on the same port; ``empty=True`` also deletes its files first."""
        self.stop()
        if empty:
            for path in self.directory.rglob("*"):
                if path.is_file():
                    path.unlink()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# --- a TCP proxy that fails on demand ------------------------------------------------------------------

Mode = Literal["pass", "refuse", "hang"]


class FaultProxy:
    """A TCP proxy on a free loopback port in front of ``target_host:target_port``.

    Modes (``set_mode``): ``pass`` forwards bytes both ways; ``refuse`` resets new connections at once and
    cuts the open ones (a dependency that is down); ``hang`` accepts connections and keeps them open but
    forwards nothing either way (a dependency that accepts and never answers). Going back to ``pass``
    releases what was held.
    """

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode: Mode = "pass"
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.connections = 0

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(256)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, name="fault-proxy-accept", daemon=True).start()
        return self

    def set_mode(self, mode: Mode) -> None:
        with self._changed:
            self.mode = mode
            self._changed.notify_all()
        if mode == "refuse":
            with self._lock:
                victims = list(self._open)
            for sock in victims:
                self._reset(sock)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "refuse":
                self._reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._changed:
            while self.mode == "hang" and not self._closed:
                self._changed.wait(0.1)
        if self.mode == "refuse" or self._closed:
            self._reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self._changed:
                    while self.mode == "hang" and not self._closed:
                        self._changed.wait(0.1)
                if self.mode == "refuse":
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._closed = True
        with self._changed:
            self._changed.notify_all()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            self._reset(sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a mock provider -----------------------------------------------------------------------------------


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


class Upstream:
    """A mock OpenAI (``/v1/chat/completions``) and Anthropic (``/v1/messages``) provider in its own thread.

    Usage is reported honestly — input tokens = request body bytes / 4, output tokens = the words it
    answers — times ``bill_factor`` (an over-billing provider). Knobs, settable while it runs:

    Attributes:
        bill_factor: multiplies the usage it reports.
        latency_s: waited before answering (and between stream events, ``stream_gap_s``).
        stream_events: how many text deltas a stream carries.
        echo: put the credential it received (Authorization / x-api-key) in its answer: in the body, in an
            ``x-request-id`` header, and (streams) in a mid-stream error event.
        fail_status: answer every request with this HTTP status and an error body (echoing the credential
            when ``echo``).
        requests: how many chat requests it received; ``credentials``: the credentials it saw.
    """

    def __init__(self) -> None:
        self.bill_factor = 1.0
        self.latency_s = 0.0
        self.stream_gap_s = 0.0
        self.stream_events = 3
        self.echo = False
        self.fail_status: int | None = None
        self.requests = 0
        self.credentials: set[str] = set()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- answers ------------------------------------------------------------------------------------

    def _usage(self, body: bytes, words: int) -> tuple[int, int]:
        return max(1, round(len(body) / 4 * self.bill_factor)), max(1, round(words * self.bill_factor))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        secret = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        self.credentials.add(secret)
        anthropic = request.path.endswith("/messages")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {}
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        headers = {"x-request-id": f"req-{secret}" if self.echo else f"req-{self.requests}"}
        if self.fail_status is not None:
            message = f"bad key {secret}" if self.echo else "upstream failure"
            error = (
                {"type": "error", "error": {"type": "api_error", "message": message}}
                if anthropic
                else {"error": {"message": message, "type": "server_error", "code": None}}
            )
            return web.json_response(error, status=self.fail_status, headers=headers)
        words = ["ok"] * self.stream_events
        if self.echo:
            words.append(secret)
        input_tokens, output_tokens = self._usage(body, len(words))
        model = str(data.get("model", "mock"))
        if not data.get("stream"):
            text = " ".join(words)
            if anthropic:
                answer: dict[str, Any] = {
                    "id": "msg_mock",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                }
            else:
                answer = {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": input_tokens,
                        "completion_tokens": output_tokens,
                        "total_tokens": input_tokens + output_tokens,
                    },
                }
            return web.json_response(answer, headers=headers)
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        events = (
            self._anthropic_events(model, words, input_tokens, output_tokens, secret)
            if anthropic
            else (self._openai_events(model, words, input_tokens, output_tokens, secret))
        )
        for event in events:
            await response.write(event)
            if self.stream_gap_s:
                await asyncio.sleep(self.stream_gap_s)
        await response.write_eof()
        return response

    def _openai_events(
        self, model: str, words: list[str], input_tokens: int, output_tokens: int, secret: str
    ) -> list[bytes]:
        base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        events = [_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
        for word in words:
            events.append(_sse({**base, "choices": [{"index": 0, "delta": {"content": word + " "}}]}))
        if self.echo:
            events.append(_sse({"error": {"message": f"mid-stream failure for key {secret}", "type": "server_error"}}))
        events.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
        events.append(_sse({**base, "choices": [], "usage": {**usage, "total_tokens": input_tokens + output_tokens}}))
        events.append(b"data: [DONE]\n\n")
        return events

    def _anthropic_events(
        self, model: str, words: list[str], input_tokens: int, output_tokens: int, secret: str
    ) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        }
        events = [
            _sse(start, "message_start"),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
        ]
        for word in words:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}}
            events.append(_sse(delta, "content_block_delta"))
        if self.echo:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": f"overloaded; key {secret}"}}
            events.append(_sse(error, "error"))
        events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
        events.append(_sse(delta, "message_delta"))
        events.append(_sse({"type": "message_stop"}, "message_stop"))
        return events

    # -- life -----------------------------------------------------------------------------------------

    def start(self) -> Upstream:
        ready = threading.Event()
        port = free_port()

        async def serve() -> None:
            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, HOST, port).start()
            ready.set()

        def thread() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=thread, name="mock-upstream", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the mock upstream did not start"
        self.url = f"http://{HOST}:{port}"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- tether as child processes -------------------------------------------------------------------------


def tether_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a tether child process: this one's, minus anything that points elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if database_url is not None:
        env["TETHER_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_tether(
    args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``tether ARGS…`` as a child process; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        env=dict(env) if env is not None else tether_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class GatewayProcess:
    """``tether gateway serve`` as a child process on a free loopback port.

    Args:
        directory: its working directory (``tether.toml`` is written there; its log too).
        config: the contents of ``tether.toml``.
        database_url: the store (``TETHER_DATABASE_URL``).
        env: more environment variables (provider keys, ``OTEL_*``…).
        args: more arguments for ``gateway serve`` (e.g. ``["--no-auth"]``).
    """

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Any],
        *,
        database_url: str,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.database_url = database_url
        self.env = dict(env or {})
        self.args = list(args or [])
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = directory / "gateway.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def start(self, *, wait: bool = True, timeout_s: float = 30) -> GatewayProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = write_toml(self.directory / "tether.toml", self.config)
        log = self._log_path.open("ab")
        self.starts += 1
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tether",
                "gateway",
                "serve",
                "--port",
                str(self.port),
                "--config",
                str(config_path),
                *self.args,
            ],
            cwd=self.directory,
            env=tether_env(self.database_url, **self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            wait_until(self._healthy, timeout_s, f"the gateway on port {self.port} to start (log: {self._log_path})")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.process.returncode}:\n{self.log[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def terminate(self) -> None:
        """SIGTERM, as systemd, Docker and Kubernetes stop a service."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT (Ctrl-C)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait(self, timeout_s: float = 30) -> int:
        """Its exit code once it has exited (TimeoutExpired if it does not in time)."""
        assert self.process is not None
        return self.process.wait(timeout_s)

    def restart(self, **start: Any) -> GatewayProcess:
        self.kill()
        return self.start(**start)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
