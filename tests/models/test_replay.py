"""Cassettes: record every model call once, replay it bit for bit, and fail loudly on a miss."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tether.errors import ConfigError, ModelError, ModelHTTPError, StreamInterrupted
from tether.messages import (
    FinishReason,
    Message,
    ModelRequest,
    ModelResponse,
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
from tether.models.base import Model
from tether.models.replay import (
    Cassette,
    CassetteMiss,
    RecordingModel,
    ReplayModel,
    cassette_model,
    cassette_scope,
    current_cassette_scope,
    request_key,
)
from tether.models.sim import Scenario, SimKnobs, SimModel, Step, TaskScript
from tether.pricing import PriceRef

from . import collect

TOOLS = (ToolSpec(name="list_alerts"), ToolSpec(name="query_logs"), ToolSpec(name="restart_service"))
TASK = "Incident [checkout-5xx]: checkout is returning errors"
SCENARIO = Scenario(
    scripts=(
        TaskScript(
            match="[checkout-5xx]",
            steps=(
                Step.call("list_alerts", thought="Checking what is firing."),
                Step.call("query_logs", {"service": "checkout"}),
                Step.call("restart_service", {"service": "checkout"}),
                Step.answer("Restarted checkout; the error rate is back to normal."),
            ),
        ),
    )
)


def sim(seed: int = 0, knobs: SimKnobs | None = None) -> SimModel:
    return SimModel("claude-sonnet-4-5", scenario=SCENARIO, knobs=knobs, seed=seed)


def request(messages: Sequence[Message], **kwargs: Any) -> ModelRequest:
    kwargs.setdefault("tools", TOOLS)
    return ModelRequest(model="claude-sonnet-4-5", messages=tuple(messages), **kwargs)


def first_request(**kwargs: Any) -> ModelRequest:
    return request([Message.user(TASK)], **kwargs)


async def drive(model: Model, *, run_id: str = "run-1") -> list[ModelResponse]:
    """Play a run the way the agent loop does: answer, tool results, next turn."""
    messages = [Message.user(TASK)]
    responses: list[ModelResponse] = []
    for _ in range(10):
        response = await model.complete(request(messages, metadata={"run_id": run_id}))
        responses.append(response)
        messages.append(response.to_message())
        if not response.tool_calls:
            break
        results = tuple(ToolResultBlock(tool_use_id=c.id, content=f"{c.name}: ok") for c in response.tool_calls)
        messages.append(Message(role="user", content=results))
    return responses


class Unreachable(Model):
    """A model that fails the test if anything calls it."""

    provider = "anthropic"
    model_name = "claude-sonnet-4-5"
    price_ref = PriceRef(provider_id="anthropic", model_ref="claude-sonnet-4-5")

    async def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("replay called the inner model")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        raise AssertionError("replay called the inner model")
        yield  # pragma: no cover - makes this an async generator


class Numbered(Model):
    """Answers 'answer 1', 'answer 2'… whatever it is asked, priced like a gateway answer."""

    provider = "fake"
    model_name = "numbered"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        return ModelResponse(
            id=f"resp_{self.calls}",
            model=self.model_name,
            provider=self.provider,
            content=(TextBlock(text=f"answer {self.calls}"),),
            finish_reason=FinishReason.END_TURN,
            usage=Usage(input_tokens=10, output_tokens=3),
            priced=True,
            cost_usd=Decimal("0.000123"),
        )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "evals" / "suite.cassette.jsonl"


def file_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a cassette file, parsed: fails if any line is not JSON."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def drop_final_newline(path: Path) -> None:
    """Leave the file as a write cut just before its last newline would."""
    path.write_bytes(path.read_bytes().rstrip(b"\n"))


# --- record, then replay ---------------------------------------------------------------------------------


async def test_replay_returns_every_recorded_answer_in_each_scope(path: Path) -> None:
    recorded: dict[str, list[ModelResponse]] = {}
    with Cassette(path, "record") as cassette:
        for seed in range(3):
            with cassette_scope(f"case-01/trial-{seed}"):
                recorded[f"case-01/trial-{seed}"] = await drive(RecordingModel(sim(seed), cassette))
    assert len(recorded["case-01/trial-0"]) == 4

    with Cassette(path, "replay") as cassette:
        replay = ReplayModel.like(Unreachable(), cassette)
        for scope in reversed(recorded):
            with cassette_scope(scope):
                # Another run id in the metadata: the key ignores it.
                assert await drive(replay, run_id="run-2") == recorded[scope]


async def test_identical_requests_in_one_scope_get_the_answers_in_recorded_order(path: Path) -> None:
    with Cassette(path, "record") as cassette, cassette_scope("case-01/trial-0"):
        first = await RecordingModel(sim(seed=1), cassette).complete(first_request())
        second = await RecordingModel(sim(seed=2), cassette).complete(first_request())
    assert first != second

    with Cassette(path, "replay") as cassette, cassette_scope("case-01/trial-0"):
        replay = ReplayModel.like(Unreachable(), cassette)
        assert await replay.complete(first_request()) == first
        assert await replay.complete(first_request()) == second
        with pytest.raises(CassetteMiss):
            await replay.complete(first_request())


async def test_scopes_are_independent(path: Path) -> None:
    answers: dict[str, ModelResponse] = {}
    with Cassette(path, "record") as cassette:
        for seed, scope in enumerate(("a", "b", "")):
            with cassette_scope(scope):
                answers[scope] = await RecordingModel(sim(seed), cassette).complete(first_request())
    assert len({a.id for a in answers.values()}) == 3

    with Cassette(path, "replay") as cassette:
        replay = ReplayModel.like(Unreachable(), cassette)
        assert await replay.complete(first_request()) == answers[""]
        for scope in ("b", "a"):
            with cassette_scope(scope):
                assert await replay.complete(first_request()) == answers[scope]


async def test_replayed_response_is_bit_for_bit_the_recorded_one(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        recorded = await RecordingModel(Numbered(), cassette).complete(first_request())
    with Cassette(path, "replay") as cassette:
        replayed = await ReplayModel.like(Numbered(), cassette).complete(first_request())
    assert replayed == recorded
    assert replayed.cost_usd == Decimal("0.000123")
    assert replayed.model_dump() == recorded.model_dump()


async def test_replay_never_calls_the_inner_model(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        recorded = await RecordingModel(sim(), cassette).complete(first_request())
    with Cassette(path, "replay") as cassette:
        model = cassette_model(Unreachable(), cassette)
        assert isinstance(model, ReplayModel)
        assert await model.complete(first_request()) == recorded
        with pytest.raises(CassetteMiss):
            await model.complete(request([Message.user("a task nobody recorded")]))


def test_replay_model_presents_itself_as_the_model_it_replays(path: Path) -> None:
    path.parent.mkdir()
    path.write_text('{"tether_cassette": 1, "created": "2025-01-01T00:00:00+00:00"}\n')
    with Cassette(path, "replay") as cassette:
        model = ReplayModel.like(sim(), cassette)
    assert (model.provider, model.model_name, model.simulated) == ("sim", "claude-sonnet-4-5", True)
    assert model.price_ref == PriceRef(provider_id="anthropic", model_ref="claude-sonnet-4-5")
    explicit = ReplayModel(cassette, provider="openai", model_name="gpt-4o")
    assert (explicit.ref, explicit.price_ref, explicit.simulated) == ("openai:gpt-4o", None, False)


async def test_recording_model_keeps_the_identity_of_its_inner_model(path: Path) -> None:
    inner = sim()
    with Cassette(path, "record") as cassette:
        model = cassette_model(inner, cassette)
        assert isinstance(model, RecordingModel)
        assert (model.provider, model.model_name, model.price_ref, model.simulated) == (
            inner.provider,
            inner.model_name,
            inner.price_ref,
            inner.simulated,
        )


# --- misses and keys ---------------------------------------------------------------------------------------


async def test_miss_names_the_file_scope_and_call(path: Path) -> None:
    with Cassette(path, "record") as cassette, cassette_scope("case-07/trial-3"):
        await RecordingModel(sim(), cassette).complete(first_request())

    with Cassette(path, "replay") as cassette, cassette_scope("case-07/trial-3"):
        replay = ReplayModel.like(sim(), cassette)
        await replay.complete(first_request())
        with pytest.raises(CassetteMiss) as caught:
            await replay.complete(request([Message.user(TASK + " (reworded)")]))
    miss = caught.value
    assert str(miss) == (
        f"no recorded answer for this model call in cassette {path} (scope 'case-07/trial-3', call #2): "
        "the agent or suite changed since it was recorded; re-record with --record"
    )
    assert isinstance(miss, ModelError)
    assert not miss.retryable
    assert miss.provider == "sim"
    assert (miss.scope, miss.occurrence, miss.call) == ("case-07/trial-3", 0, 2)


async def test_metadata_and_cache_prompt_do_not_cause_a_miss(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        recorded = await RecordingModel(sim(), cassette).complete(first_request(metadata={"run_id": "a"}))
    with Cassette(path, "replay") as cassette:
        replayed = await ReplayModel.like(sim(), cassette).complete(
            first_request(metadata={"run_id": "b", "tether.run.id": "c"}, cache_prompt=False)
        )
    assert replayed == recorded


@pytest.mark.parametrize(
    "changed",
    [
        {"messages": (Message.user(TASK + "!"),)},
        {"system": "You are on call."},
        {"tools": TOOLS[:2]},
        {"max_tokens": 100},
        {"temperature": 0.5},
        {"stop_sequences": ("END",)},
        {"model": "claude-opus-4-1"},
    ],
    ids=lambda changed: next(iter(changed)),
)
async def test_a_changed_request_misses(path: Path, changed: dict[str, Any]) -> None:
    original = first_request()
    with Cassette(path, "record") as cassette:
        await RecordingModel(sim(), cassette).complete(original)
    altered = original.model_copy(update=changed)
    assert request_key(altered) != request_key(original)
    with Cassette(path, "replay") as cassette, pytest.raises(CassetteMiss):
        await ReplayModel.like(sim(), cassette).complete(altered)


def conversation(*ids: str) -> ModelRequest:
    """A task, one assistant turn calling a tool per id, and their results."""
    calls = tuple(ToolUseBlock(id=i, name="query_logs", input={"service": "checkout"}) for i in ids)
    results = tuple(ToolResultBlock(tool_use_id=i, content="ok") for i in ids)
    return request(
        [Message.user(TASK), Message(role="assistant", content=calls), Message(role="user", content=results)]
    )


def test_tool_call_ids_are_normalised_in_order_of_appearance() -> None:
    assert request_key(conversation("toolu_01A", "toolu_01B")) == request_key(conversation("call_x", "call_y"))
    # Which call a result answers still counts: two calls sharing one id are not two distinct calls.
    assert request_key(conversation("a", "b")) != request_key(conversation("a", "a"))


async def test_replay_matches_a_conversation_whose_tool_ids_changed(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        recorded = await RecordingModel(Numbered(), cassette).complete(conversation("toolu_01A", "toolu_01B"))
    with Cassette(path, "replay") as cassette:
        assert await ReplayModel.like(Numbered(), cassette).complete(conversation("call_1", "call_2")) == recorded


def test_key_is_32_hex_digits_and_stable() -> None:
    key = request_key(first_request())
    assert len(key) == 32
    assert int(key, 16) >= 0
    assert request_key(first_request()) == key


def test_key_accepts_integers_beyond_64_bits() -> None:
    huge = request([Message(role="assistant", content=(ToolUseBlock(id="a", name="f", input={"n": 2**70}),))])
    assert request_key(huge) != request_key(conversation("a"))


# --- the file ------------------------------------------------------------------------------------------------


async def test_file_is_a_header_and_one_line_per_interaction(path: Path) -> None:
    with Cassette(path, "record") as cassette, cassette_scope("case-01/trial-0"):
        response = await RecordingModel(sim(), cassette).complete(first_request(metadata={"secret": "s3cr3t"}))
    header, line = file_lines(path)
    assert header["tether_cassette"] == 1
    assert header["created"].endswith("+00:00")
    assert line == {
        "scope": "case-01/trial-0",
        "key": request_key(first_request()),
        "n": 0,
        "model": "claude-sonnet-4-5",
        "response": response.model_dump(mode="json"),
    }
    # The request is only hashed: neither the task nor the metadata is stored.
    text = "".join(json.dumps(line) for line in file_lines(path))
    assert "s3cr3t" not in text
    assert "checkout is returning errors" not in text


async def test_file_is_valid_after_every_call_of_an_interrupted_recording(path: Path) -> None:
    cassette = Cassette(path, "record")
    model = RecordingModel(sim(), cassette)
    messages = [Message.user(TASK)]
    recorded: list[ModelResponse] = []
    for turn in range(3):
        response = await model.complete(request(messages))
        recorded.append(response)
        # Read back while the cassette is still open: every finished call is already on disk.
        assert len(file_lines(path)) == turn + 2
        with Cassette(path, "replay") as partial:
            assert len(partial) == turn + 1
        messages += [
            response.to_message(),
            Message(
                role="user", content=tuple(ToolResultBlock(tool_use_id=c.id, content="ok") for c in response.tool_calls)
            ),
        ]
    cassette.close()  # as if the eval died here: three of four turns recorded

    with Cassette(path, "replay") as cassette:
        replay = ReplayModel.like(Unreachable(), cassette)
        messages = [Message.user(TASK)]
        for response in recorded:
            assert await replay.complete(request(messages)) == response
            messages += [
                response.to_message(),
                Message(
                    role="user",
                    content=tuple(ToolResultBlock(tool_use_id=c.id, content="ok") for c in response.tool_calls),
                ),
            ]
        with pytest.raises(CassetteMiss, match="call #4"):
            await replay.complete(request(messages))


async def test_recording_again_appends_and_the_last_line_wins(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        await RecordingModel(sim(seed=1), cassette).complete(first_request())
    with Cassette(path, "record") as cassette:
        assert len(cassette) == 1
        newer = await RecordingModel(sim(seed=2), cassette).complete(first_request())
        assert len(cassette) == 1
    assert len(file_lines(path)) == 3  # one header, two answers for the same slot
    with Cassette(path, "replay") as cassette:
        assert await ReplayModel.like(Unreachable(), cassette).complete(first_request()) == newer


async def test_recording_after_an_unterminated_last_line_starts_a_new_line(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        await RecordingModel(Numbered(), cassette).complete(first_request())
    drop_final_newline(path)
    with Cassette(path, "record") as cassette, cassette_scope("again"):
        await RecordingModel(Numbered(), cassette).complete(first_request())
    assert len(file_lines(path)) == 3


def write_cassette(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


HEADER = '{"tether_cassette": 1, "created": "2025-01-01T00:00:00+00:00"}'


@pytest.mark.parametrize("mode", ["record", "replay"])
async def test_bad_json_is_a_config_error_naming_the_line(path: Path, mode: str) -> None:
    with Cassette(path, "record") as cassette:
        await RecordingModel(Numbered(), cassette).complete(first_request())
    with path.open("a", encoding="utf-8") as f:
        f.write('{"scope": "", "key": \n')
    with pytest.raises(ConfigError, match=r"line 3: not valid JSON") as caught:
        Cassette(path, mode)  # type: ignore[arg-type]
    assert str(path) in str(caught.value)
    assert ("--record" in str(caught.value)) is (mode == "replay")


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ((), "line 1: the first line is not a tether cassette header"),
        (
            ('{"scope": "", "key": "k", "n": 0, "response": {}}',),
            "line 1: the first line is not a tether cassette header",
        ),
        (("not json",), "line 1: the first line is not a tether cassette header"),
        (('{"tether_cassette": 2}',), "line 1: cassette format 2 is not 1"),
        ((HEADER, "[1, 2]"), "line 2: not a JSON object"),
        ((HEADER, '{"scope": 1, "key": "k", "n": 0}'), "line 2: 'scope' and 'key' must be strings"),
        ((HEADER, '{"scope": "", "key": "k", "n": -1}'), "line 2: 'n' must be a whole number"),
        ((HEADER, '{"scope": "", "key": "k", "n": true}'), "line 2: 'n' must be a whole number"),
        ((HEADER, '{"scope": "", "key": "k", "n": 0, "response": {"id": "x"}}'), "line 2: 'response' is not a model"),
    ],
)
def test_a_malformed_cassette_is_a_config_error_saying_to_re_record(
    path: Path, lines: tuple[str, ...], problem: str
) -> None:
    write_cassette(path, *lines)
    with pytest.raises(ConfigError, match=r"re-record it with `tether eval run \.\.\. --record`") as caught:
        Cassette(path, "replay")
    assert f"cassette {path} {problem}" in str(caught.value)


def test_replaying_a_missing_file_says_to_record_it(path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist: record it with `tether eval run \.\.\. --record`"):
        Cassette(path, "replay")


def test_blank_lines_are_ignored(path: Path) -> None:
    write_cassette(path, HEADER, "", "   ")
    with Cassette(path, "replay") as cassette:
        assert len(cassette) == 0


def test_unknown_mode_is_a_config_error(path: Path) -> None:
    with pytest.raises(ConfigError, match="'record' or 'replay'"):
        Cassette(path, "rewind")  # type: ignore[arg-type]


async def test_a_cassette_does_only_what_its_mode_says(path: Path) -> None:
    response = await Numbered().complete(first_request())
    with Cassette(path, "record") as recording, pytest.raises(ConfigError, match="open for recording"):
        recording.replay(first_request())
    with pytest.raises(ConfigError, match="is closed"):
        recording.record(first_request(), response)
    recording.close()  # closing twice is fine
    with Cassette(path, "replay") as replaying, pytest.raises(ConfigError, match="open for replay"):
        replaying.record(first_request(), response)


# --- failures are not recorded ---------------------------------------------------------------------------


async def test_a_failed_call_records_nothing(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        with pytest.raises(ModelHTTPError):
            await RecordingModel(sim(knobs=SimKnobs(error_rate=1.0)), cassette).complete(first_request())
        assert len(cassette) == 0
        # The retry that succeeds is the call's first recorded answer.
        answer = await RecordingModel(sim(), cassette).complete(first_request())
    assert len(file_lines(path)) == 2
    with Cassette(path, "replay") as cassette:
        assert await ReplayModel.like(Unreachable(), cassette).complete(first_request()) == answer


# --- streaming -------------------------------------------------------------------------------------------------


async def test_recording_a_stream_passes_its_events_through_and_records_the_answer(path: Path) -> None:
    direct = await collect(sim().stream(first_request()))
    with Cassette(path, "record") as cassette:
        events = await collect(RecordingModel(sim(), cassette).stream(first_request()))
        assert len(cassette) == 1
    assert events == direct
    done = events[-1]
    assert isinstance(done, ResponseDone)

    with Cassette(path, "replay") as cassette:
        assert await ReplayModel.like(Unreachable(), cassette).complete(first_request()) == done.response


async def test_replayed_stream_ends_with_the_recorded_response(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        recorded = await RecordingModel(sim(), cassette).complete(first_request())
    with Cassette(path, "replay") as cassette:
        events = await collect(ReplayModel.like(Unreachable(), cassette).stream(first_request()))
    assert events[-1] == ResponseDone(response=recorded)
    assert all(isinstance(e, TextDelta | ToolUseDelta) for e in events[:-1])
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == recorded.text == "Checking what is firing."
    assert [e.name for e in events if isinstance(e, ToolUseDelta) and e.name] == ["list_alerts"]


async def test_a_stream_that_breaks_records_nothing(path: Path) -> None:
    with Cassette(path, "record") as cassette:
        model = RecordingModel(sim(knobs=SimKnobs(stream_cut_rate=1.0)), cassette)
        with pytest.raises(StreamInterrupted):
            await collect(model.stream(first_request()))
        assert len(cassette) == 0
    assert len(file_lines(path)) == 1


async def test_a_replayed_stream_miss_raises_before_any_event(path: Path) -> None:
    write_cassette(path, HEADER)
    received: list[StreamEvent] = []
    with Cassette(path, "replay") as cassette, pytest.raises(CassetteMiss):
        await collect(ReplayModel.like(Unreachable(), cassette).stream(first_request()), received)
    assert received == []


# --- concurrency and scopes ----------------------------------------------------------------------------------


async def test_fifty_concurrent_trials_record_and_replay(path: Path) -> None:
    async def trial(model: Model, i: int) -> ModelResponse:
        with cassette_scope(f"case-01/trial-{i}"):
            return await model.complete(first_request())

    with Cassette(path, "record") as cassette:
        recorded = await asyncio.gather(*(trial(RecordingModel(sim(seed=i), cassette), i) for i in range(50)))
    lines = file_lines(path)[1:]
    assert len(lines) == 50
    assert {line["scope"] for line in lines} == {f"case-01/trial-{i}" for i in range(50)}
    assert {line["n"] for line in lines} == {0}

    with Cassette(path, "replay") as cassette:
        replay = ReplayModel.like(Unreachable(), cassette)
        replayed = await asyncio.gather(*(trial(replay, i) for i in reversed(range(50))))
    assert list(reversed(replayed)) == recorded


def test_cassette_scope_sets_and_restores_the_scope() -> None:
    assert current_cassette_scope() == ""
    with cassette_scope("case-01/trial-0"):
        assert current_cassette_scope() == "case-01/trial-0"
        with cassette_scope("inner"):
            assert current_cassette_scope() == "inner"
        assert current_cassette_scope() == "case-01/trial-0"
    assert current_cassette_scope() == ""
