"""Cassettes: record every model call of an eval once, then replay them for free.

An eval run in *record* mode wraps each model in a ``RecordingModel``, which
asks the real model and writes every answer to a cassette file. A later run
in *replay* mode wraps it in a ``ReplayModel``, which answers every call from
the cassette and never calls a provider, so a regression test of the eval
harness itself is deterministic and costs nothing. ``cassette_model`` picks
the wrapper by the cassette's mode::

    with Cassette("evals/incidents.cassette.jsonl", "replay") as cassette:
        model = cassette_model(resolve_model("anthropic:claude-sonnet-4-5"), cassette)
        with cassette_scope("case-07/trial-3"):
            response = await model.complete(request)

Matching. A call is looked up by (scope, key, occurrence):

- *key*: ``request_key`` — the first 32 hex digits of a SHA-256 of the
  canonical JSON (sorted keys) of the request's model, system, messages,
  tools, max_tokens, temperature and stop_sequences. ``metadata`` (run ids,
  random per run) and ``cache_prompt`` are left out. Tool call ids differ
  between runs of a real model, so inside the messages every ``tool_use`` id
  and ``tool_result`` ``tool_use_id`` is renamed ``t0``, ``t1``… in order of
  first appearance before hashing.
- *scope*: set per trial by the eval runner with ``cassette_scope(...)`` (a
  context variable, so concurrent trials in one event loop keep their own;
  default ``""``). The k trials of one case send identical first requests but
  may get different answers; the scope keeps them apart.
- *occurrence*: how many times this (scope, key) was seen before in this
  cassette session, from 0. Replay counts every call, hit or miss; record
  counts only calls that succeeded, in the order they finished, because
  errors are not recorded (a retried failure is replayed as the retry's
  answer).

File format: JSON Lines. The first line is a header
``{"tether_cassette": 1, "created": "<ISO 8601 UTC>"}``; then one line per
interaction ``{"scope", "key", "n", "model", "response"}`` where
``response`` is ``ModelResponse.model_dump(mode="json")``. Recording appends
to an existing cassette and flushes each line as it is written, so an
interrupted eval keeps what it recorded; when (scope, key, n) appears twice
the last line wins. Replay loads the whole file up front and fails with
``ConfigError`` (file and line number) on anything malformed.

Secrets. A request is only hashed, never stored; the file holds the key, the
scope, the model name and the response, whose text may contain anything the
model said (including whatever it repeated from its prompt).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, Literal, Self, get_args

import orjson
from pydantic import ValidationError

from tether.errors import ConfigError, ModelError
from tether.messages import (
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    ToolResultBlock,
    ToolUseBlock,
)
from tether.models.base import Model
from tether.models.sim import stream_events
from tether.pricing import PriceRef

__all__ = [
    "CASSETTE_VERSION",
    "Cassette",
    "CassetteMiss",
    "CassetteMode",
    "RecordingModel",
    "ReplayModel",
    "cassette_model",
    "cassette_scope",
    "current_cassette_scope",
    "request_key",
]

CASSETTE_VERSION: Final = 1
CassetteMode = Literal["record", "replay"]

_KEY_HEX_CHARS: Final = 32
_RECORD_HINT: Final = "re-record it with `tether eval run ... --record`"

_scope: ContextVar[str] = ContextVar("tether_cassette_scope", default="")


class CassetteMiss(ModelError):
    """The cassette holds no answer for a model call being replayed.

    Not retryable: the agent or the suite changed since the cassette was
    recorded, and only recording it again helps.

    Attributes:
        path: the cassette file.
        scope: the scope the call was made in.
        key: the call's ``request_key``.
        occurrence: how many identical calls came before it in this scope.
        call: the call's position among all replayed calls of its scope, from 1.
    """

    def __init__(self, path: Path, *, scope: str, key: str, occurrence: int, call: int, provider: str = "") -> None:
        self.path = path
        self.scope = scope
        self.key = key
        self.occurrence = occurrence
        self.call = call
        super().__init__(
            f"no recorded answer for this model call in cassette {path} (scope {scope!r}, call #{call}): "
            "the agent or suite changed since it was recorded; re-record with --record",
            provider=provider,
        )


@contextmanager
def cassette_scope(scope: str) -> Iterator[None]:
    """Record and replay the model calls made inside the block under ``scope``.

    The eval runner sets one scope per trial, e.g. ``"case-07/trial-3"``.
    Scopes do not nest into paths: an inner scope replaces the outer one until
    its block ends.
    """
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def current_cassette_scope() -> str:
    """The scope model calls are recorded and replayed under here (``""`` if none is set)."""
    return _scope.get()


def request_key(request: ModelRequest) -> str:
    """The cassette key of a request: what it asks, not who asked or when.

    Hashes model, system, messages, tools, max_tokens, temperature and
    stop_sequences, with tool call ids renamed ``t0``, ``t1``… in order of
    first appearance; ``metadata`` and ``cache_prompt`` do not count.
    """
    ids: dict[str, str] = {}

    def renamed(tool_id: str) -> str:
        return ids.setdefault(tool_id, f"t{len(ids)}")

    messages: list[dict[str, Any]] = []
    for message in request.messages:
        blocks: list[dict[str, Any]] = []
        for block in message.content:
            data = block.model_dump(mode="json")
            if isinstance(block, ToolUseBlock):
                data["id"] = renamed(block.id)
            elif isinstance(block, ToolResultBlock):
                data["tool_use_id"] = renamed(block.tool_use_id)
            blocks.append(data)
        messages.append({"role": message.role, "content": blocks})
    canonical = {
        "model": request.model,
        "system": request.system,
        "messages": messages,
        "tools": [tool.model_dump(mode="json") for tool in request.tools],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stop_sequences": list(request.stop_sequences),
    }
    return hashlib.sha256(_dumps(canonical, sort_keys=True)).hexdigest()[:_KEY_HEX_CHARS]


def _dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits, which a model's tool arguments may hold.
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False).encode()


_Slot = tuple[str, str, int]


class Cassette:
    """One cassette file, open to record answers or to replay them.

    Args:
        path: the JSON Lines file; recording creates it (and its directory).
        mode: ``"record"`` appends answers to it, ``"replay"`` answers from it.

    Raises:
        ConfigError: the mode is unknown, or the file is missing (replay), has no
            valid header or holds a malformed line.
    """

    def __init__(self, path: str | Path, mode: CassetteMode) -> None:
        if mode not in get_args(CassetteMode):
            raise ConfigError(f"cassette mode must be 'record' or 'replay', got {mode!r}")
        self.path = Path(path)
        self.mode: CassetteMode = mode
        self._lock = threading.Lock()
        self._answers: dict[_Slot, ModelResponse] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._calls: dict[str, int] = {}
        self._file: BinaryIO | None = None
        if mode == "replay":
            if not self.path.is_file():
                raise ConfigError(f"cassette {self.path} does not exist: record it with `tether eval run ... --record`")
            self._load(self.path.read_bytes())
        else:
            self._open_for_recording()

    def __repr__(self) -> str:
        return f"Cassette({str(self.path)!r}, {self.mode!r})"

    def __len__(self) -> int:
        """How many distinct (scope, key, occurrence) answers the cassette holds."""
        with self._lock:
            return len(self._answers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file being recorded to; safe to call more than once."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def record(self, request: ModelRequest, response: ModelResponse) -> int:
        """Write ``response`` as the answer to ``request`` in the current scope.

        Returns:
            The occurrence number it was recorded under.
        """
        scope, key = _scope.get(), request_key(request)
        with self._lock:
            if self.mode != "record":
                raise ConfigError(f"cassette {self.path} is open for replay: open it with mode='record' to record")
            if self._file is None:
                raise ConfigError(f"cassette {self.path} is closed: open it again to record")
            occurrence = self._seen.get((scope, key), 0)
            self._seen[(scope, key)] = occurrence + 1
            self._answers[(scope, key, occurrence)] = response
            line = {
                "scope": scope,
                "key": key,
                "n": occurrence,
                "model": request.model,
                "response": response.model_dump(mode="json"),
            }
            # One write and a flush per line: an interrupted eval leaves every finished line readable.
            self._file.write(_dumps(line) + b"\n")
            self._file.flush()
        return occurrence

    def replay(self, request: ModelRequest, *, provider: str = "") -> ModelResponse:
        """The recorded answer to ``request`` in the current scope.

        Raises:
            CassetteMiss: nothing was recorded for it (``provider`` is put on the error).
        """
        scope, key = _scope.get(), request_key(request)
        with self._lock:
            if self.mode != "replay":
                raise ConfigError(f"cassette {self.path} is open for recording: open it with mode='replay' to replay")
            occurrence = self._seen.get((scope, key), 0)
            self._seen[(scope, key)] = occurrence + 1
            call = self._calls.get(scope, 0) + 1
            self._calls[scope] = call
            response = self._answers.get((scope, key, occurrence))
        if response is None:
            raise CassetteMiss(self.path, scope=scope, key=key, occurrence=occurrence, call=call, provider=provider)
        return response

    def _open_for_recording(self) -> None:
        existing = self.path.read_bytes() if self.path.is_file() else b""
        if existing.strip():
            self._load(existing)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        if not existing.strip():
            header = {"tether_cassette": CASSETTE_VERSION, "created": datetime.now(UTC).isoformat(timespec="seconds")}
            self._file.write(orjson.dumps(header) + b"\n")
        elif not existing.endswith(b"\n"):
            self._file.write(b"\n")
        self._file.flush()

    def _load(self, data: bytes) -> None:
        lines = data.split(b"\n")
        self._check_header(lines[0])
        for number, raw in enumerate(lines[1:], start=2):
            if not raw.strip():
                continue
            scope, key, occurrence, response = self._parse_line(raw, number)
            # Re-recording appends, so a later line for the same slot replaces an earlier one.
            self._answers[(scope, key, occurrence)] = response

    def _check_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw)
        except ValueError:
            header = None
        if not isinstance(header, dict) or "tether_cassette" not in header:
            raise self._malformed(1, "the first line is not a tether cassette header")
        if header["tether_cassette"] != CASSETTE_VERSION:
            raise self._malformed(
                1, f"cassette format {header['tether_cassette']!r} is not {CASSETTE_VERSION}, the one tether reads"
            )

    def _parse_line(self, raw: bytes, number: int) -> tuple[str, str, int, ModelResponse]:
        try:
            # The standard library, not orjson, reads lines: it keeps integers beyond 64 bits exact.
            line = json.loads(raw)
        except ValueError as error:
            raise self._malformed(number, f"not valid JSON ({error})") from None
        if not isinstance(line, dict):
            raise self._malformed(number, "not a JSON object")
        scope, key, occurrence = line.get("scope"), line.get("key"), line.get("n")
        if not isinstance(scope, str) or not isinstance(key, str):
            raise self._malformed(number, "'scope' and 'key' must be strings")
        if not isinstance(occurrence, int) or isinstance(occurrence, bool) or occurrence < 0:
            raise self._malformed(number, "'n' must be a whole number from 0")
        try:
            response = ModelResponse.model_validate(line.get("response"))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "response"
            raise self._malformed(number, f"'response' is not a model response ({where}: {first['msg']})") from None
        return scope, key, occurrence, response

    def _malformed(self, number: int, problem: str) -> ConfigError:
        hint = _RECORD_HINT if self.mode == "replay" else "delete the file (or the line) and record again"
        return ConfigError(f"cassette {self.path} line {number}: {problem}: {hint}")


class RecordingModel(Model):
    """Wraps a model and records each of its answers to a cassette.

    Failed calls and streams that do not reach ``ResponseDone`` record nothing;
    their errors propagate unchanged.
    """

    def __init__(self, inner: Model, cassette: Cassette) -> None:
        self.inner = inner
        self.cassette = cassette
        self.provider = inner.provider
        self.model_name = inner.model_name
        self.price_ref = inner.price_ref
        self.simulated = inner.simulated

    def __repr__(self) -> str:
        return f"RecordingModel({self.inner!r}, {self.cassette!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Ask ``inner``, record its answer, return it."""
        response = await self.inner.complete(request)
        self.cassette.record(request, response)
        return response

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Pass ``inner``'s events through, recording the final response."""
        events = self.inner.stream(request)
        try:
            async for event in events:
                if isinstance(event, ResponseDone):
                    # Recorded before it is yielded: a consumer may stop right after the last event.
                    self.cassette.record(request, event.response)
                yield event
        finally:
            # Close the inner stream now, not at garbage collection, so its connection is released.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        """Close ``inner``; the cassette is its owner's to close."""
        await self.inner.aclose()


class ReplayModel(Model):
    """Answers every call from a cassette; never calls a provider.

    Args:
        cassette: a cassette open in replay mode.
        provider: the provider name to report, as the recorded model did.
        model_name: the model name to report.
        price_ref: where usage is priced, as for the recorded model.
        simulated: whether the recorded model was the simulated one.
    """

    def __init__(
        self,
        cassette: Cassette,
        *,
        provider: str,
        model_name: str,
        price_ref: PriceRef | None = None,
        simulated: bool = False,
    ) -> None:
        self.cassette = cassette
        self.provider = provider
        self.model_name = model_name
        self.price_ref = price_ref
        self.simulated = simulated

    @classmethod
    def like(cls, model: Model, cassette: Cassette) -> ReplayModel:
        """A replay model that presents itself as ``model`` (which it never calls)."""
        return cls(
            cassette,
            provider=model.provider,
            model_name=model.model_name,
            price_ref=model.price_ref,
            simulated=model.simulated,
        )

    def __repr__(self) -> str:
        return f"ReplayModel({self.cassette!r}, provider={self.provider!r}, model_name={self.model_name!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The recorded answer, exactly as it was recorded.

        Raises:
            CassetteMiss: the cassette holds no answer for this call.
        """
        return self.cassette.replay(request, provider=self.provider)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The recorded answer as text and tool-call deltas, then ``ResponseDone``."""
        response = self.cassette.replay(request, provider=self.provider)
        for event in stream_events(response):
            yield event
        yield ResponseDone(response=response)


def cassette_model(inner: Model, cassette: Cassette) -> Model:
    """``inner`` wrapped to record to ``cassette``, or replaced by its replay, by the cassette's mode."""
    if cassette.mode == "record":
        return RecordingModel(inner, cassette)
    return ReplayModel.like(inner, cassette)
