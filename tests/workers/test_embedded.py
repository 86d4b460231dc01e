"""The embedded default: with no Redis, ``tt.submit`` works runs in this process (``make demo`` needs nothing else)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether
from tether.errors import UserError
from tether.messages import ModelRequest, ModelResponse
from tether.runtime import tool
from tether.testing import FunctionModel, text_response, tool_response


def answer(request: ModelRequest) -> ModelResponse:
    last = request.messages[-1]
    if any(block.type == "tool_result" for block in last.content):
        return text_response("looked it up")
    return tool_response(("lookup", {"key": "k"}, "call-1"))


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: the key.
    """
    return f"{key}: ok"


def test_submit_stores_the_run_and_the_embedded_worker_completes_it(tmp_path: Path) -> None:
    with tether.open(database_url=f"sqlite:///{tmp_path / 'tether.db'}") as tt:
        agent = tt.agent("finder", FunctionModel(answer), tools=[lookup])
        run_id = tt.submit(agent, "find k")
        record = tt.wait(run_id, timeout_s=15)
        assert record.status == "finished"
        assert record.stop_reason == "completed"
        assert record.output == "looked it up"
        # By name, once the agent is known.
        again = tt.wait(tt.submit("finder", "find k again"), timeout_s=15)
        assert again.stop_reason == "completed"
        assert tt.bus.kind == "memory"
        tt.flush()
        assert tt.store.get_run(run_id).summary.stop_reason == "completed"  # traced like any run


def test_an_unknown_agent_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    with tether.open(database_url=f"sqlite:///{tmp_path / 'tether.db'}") as tt:
        with pytest.raises(UserError, match=r"no agent named 'ghost'.*tt\.agent"):
            tt.submit("ghost", "boo")
        assert tt.runs.list() == []


async def test_asubmit_from_async_code(tmp_path: Path) -> None:
    tt = tether.open(database_url=f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        tt.agent("finder", FunctionModel(answer), tools=[lookup])
        run_id = await tt.asubmit("finder", "find k")
        from tether.workers import await_run

        record = await await_run(tt.runs, run_id, timeout_s=15)
        assert record.stop_reason == "completed"
    finally:
        await tt.aclose()


def test_close_stops_the_embedded_worker_and_a_later_tether_finishes_what_was_left(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    tt = tether.open(database_url=url)
    tt.agent("finder", FunctionModel(answer), tools=[lookup])
    tt.submit("finder", "first")
    tt.close()
    with tether.open(database_url=url) as again:
        assert [w.status for w in again.runs.workers(live_within_s=None)] == ["stopped"]
        again.agent("finder", FunctionModel(answer), tools=[lookup])
        run_id = again.submit("finder", "second")
        assert again.wait(run_id, timeout_s=15).stop_reason == "completed"
        assert all(r.status == "finished" for r in again.runs.list())
