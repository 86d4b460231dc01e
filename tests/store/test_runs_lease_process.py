"""One writer per run, with real processes: a worker paused past its lease (SIGSTOP) and taken over by
another process has every write refused by the database when it continues (SIGCONT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import sqlalchemy as sa

from tether.guard.durable import Checkpoint, DurableRuns
from tether.store import TraceStore, open_store
from tether.store.runs import Claim, RunRecords, Submission

CHILD = Path(__file__).with_name("lease_child.py")
ROOT = Path(__file__).parents[2]


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


def read_json(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    assert line, "the child process exited early"
    found: dict[str, Any] = orjson.loads(line)
    return found


def wait_until(predicate: Any, timeout_s: float = 15.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
    return value


def stopped_and_taken_over(
    child: subprocess.Popen[str], records: RunRecords, durable: DurableRuns
) -> tuple[Checkpoint, dict[str, Any]]:
    """SIGSTOP the child once it wrote under its lease, take the run over, SIGCONT it: what its writes did."""
    assert child.stdin is not None and child.stdout is not None
    try:
        assert read_json(child.stdout) == {"token": 1}
        assert read_json(child.stdout) == {"ready": True}
        os.kill(child.pid, signal.SIGSTOP)
        checkpoint = durable.load("paused-run")
        assert checkpoint.state == {"by": "child", "step": 1}

        def takeover() -> Claim | None:
            return records.claim("paused-run", "taker", lease_s=60)

        taken: Claim = wait_until(takeover, what="the child's lease to expire by the database clock")
        assert taken.fence.token == 2

        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("go\n")
        child.stdin.flush()
        outcome = read_json(child.stdout)
        assert child.wait(timeout=30) == 0
        return checkpoint, outcome
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()


def test_a_stopped_worker_taken_over_has_every_write_refused(store: TraceStore, store_url: str) -> None:
    records, durable = RunRecords(store), DurableRuns(store)
    records.submit(Submission(agent="support", task="refund order 7", run_id="paused-run"))
    with subprocess.Popen(
        [sys.executable, str(CHILD), store_url, "paused-run", "0.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    ) as child:
        checkpoint, outcome = stopped_and_taken_over(child, records, durable)

    assert outcome == {
        "checkpoint": "refused",
        "mark": "refused",
        "intend": "refused",
        "finish": "refused",
        "renew": "refused",
    }
    assert durable.load("paused-run") == checkpoint  # the checkpoint the taker resumes from is untouched
    first = durable.effect("paused-run:1:c1")
    assert first is not None and first.state == "started"  # an unknown outcome, for a person: never "done"
    assert durable.effect("paused-run:2:c2") is None
    record = records.get("paused-run")
    assert (record.status, record.lease_owner, record.lease_token, record.output) == ("running", "taker", 2, None)
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM tool_ledger")).scalar_one() == 1
