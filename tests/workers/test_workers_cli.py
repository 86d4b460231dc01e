"""``tether worker``, ``tether workers``, ``tether runs submit`` and what ``tether runs`` shows of the queue."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from typer.testing import CliRunner

from tether.cli import app
from tether.store import open_store
from tether.store.runs import RunRecords, Submission, WorkerInfo

runner = CliRunner()
NARROW = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}

APP = """
import tether
from tether.testing import FunctionModel, text_response

tt = tether.open()
helper = tt.agent("helper", FunctionModel(lambda request: text_response("helped")))


def boss_model(request):
    from tether.messages import ToolResultBlock
    from tether.testing import tool_response

    last = request.messages[-1]
    got = [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []
    return text_response("boss: " + got[0]) if got else tool_response(("ask_helper", {"task": "help"}, "c1"))


tt.agent("boss", FunctionModel(boss_model), tools=[helper.as_tool()])
not_an_app = 42
"""


def write_app(tmp_path: Path) -> str:
    """The app module in the working directory, under a name of its own (modules are cached per process)."""
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP)
    return name


def tether_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_bad_app_is_one_line_naming_what_to_fix(tmp_path: Path) -> None:
    name = write_app(tmp_path)
    for spec, message in [
        ("nocolon", "is not module:object"),
        ("no_such_module:tt", "no module 'no_such_module'"),
        (f"{name}:missing", "has no 'missing'"),
        (f"{name}:not_an_app", "is a int, not a Tether or an AgentRegistry"),
    ]:
        done = tether_cli("worker", "--app", spec, cwd=tmp_path)
        assert done.returncode == 2, (spec, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (spec, done.stderr)


def test_runs_submit_with_the_embedded_worker_prints_the_result_and_the_topology_shows(tmp_path: Path) -> None:
    name = write_app(tmp_path)
    done = runner.invoke(app, ["runs", "submit", "boss", "delegate", "--app", f"{name}:tt", "--json"], env=NARROW)
    assert done.exit_code == 0, done.output
    answer = orjson.loads(done.stdout)
    assert answer["run"]["status"] == "finished" and answer["run"]["output"] == "boss: helped"
    shown = runner.invoke(app, ["runs", "show", answer["run_id"]], env=NARROW)
    assert shown.exit_code == 0, shown.output
    assert "topology" in shown.stdout
    assert "boss" in shown.stdout and "helper" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 100
    as_json = orjson.loads(runner.invoke(app, ["runs", "show", answer["run_id"], "--json"], env=NARROW).stdout)
    assert {r["agent"] for r in as_json["topology"]} == {"boss", "helper"}


def test_runs_submit_refuses_an_unknown_agent_before_anything_is_stored(tmp_path: Path) -> None:
    name = write_app(tmp_path)
    done = runner.invoke(app, ["runs", "submit", "ghost", "boo", "--app", f"{name}:tt"], env=NARROW)
    assert done.exit_code == 1
    assert "no agent 'ghost'" in done.output and "boss" in done.output
    with open_store(f"sqlite:///{tmp_path / '.tether' / 'tether.db'}") as store:
        assert RunRecords(store).list() == []


def test_runs_lists_queued_parked_and_dead_runs_from_the_runs_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    with open_store(url) as store:
        records = RunRecords(store)
        queued, _ = records.submit(Submission(agent="oncall", task="wait"))
        dead, _ = records.submit(Submission(agent="poison", task="eat"))
        records.dead(dead.run_id, "agent 'poison' could not be loaded: RuntimeError: no key")
    listed = runner.invoke(app, ["runs", "--database", url], env=NARROW)
    assert listed.exit_code == 0, listed.output
    assert "queued" in listed.stdout and queued.run_id[:12] in listed.stdout
    dead_only = runner.invoke(app, ["runs", "--dead", "--database", url], env=NARROW)
    assert dead.run_id[:12] in dead_only.stdout and "could not be loaded" in dead_only.stdout
    assert queued.run_id[:12] not in dead_only.stdout
    assert max(len(line) for line in dead_only.stdout.splitlines()) <= 100
    as_json = orjson.loads(runner.invoke(app, ["runs", "--queued", "--json", "--database", url], env=NARROW).stdout)
    assert [r["run_id"] for r in as_json] == [queued.run_id]


def test_workers_lists_live_workers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    now = int(time.time() * 1000)
    with open_store(url) as store:
        RunRecords(store).heartbeat(
            WorkerInfo(
                worker_id="w-1",
                host="box",
                pid=4242,
                started_ms=now,
                heartbeat_ms=now,
                concurrency=64,
                running=("abc",),
                agents=("oncall",),
                status="running",
            )
        )
    shown = runner.invoke(app, ["workers", "--database", url], env=NARROW)
    assert shown.exit_code == 0, shown.output
    assert "w-1" in shown.stdout and "box/4242" in shown.stdout and "1/64" in shown.stdout
    [found] = orjson.loads(runner.invoke(app, ["workers", "--json", "--database", url], env=NARROW).stdout)
    assert found["worker_id"] == "w-1" and found["running"] == ["abc"] and found["agents"] == ["oncall"]
