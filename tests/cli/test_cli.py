"""The CLI as a user meets it: the demo, runs, runs show, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from tether.cli import app

runner = CliRunner()


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real entry point, as a user would, in the test's working directory."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def demo_runs() -> list[dict[str, object]]:
    result = runner.invoke(app, ["demo", "--trials", "2", "--latency-ms", "0", "--json"])
    assert result.exit_code == 0, result.output
    runs: list[dict[str, object]] = orjson.loads(result.stdout)
    return runs


def test_demo_records_every_run_with_a_stop_reason(demo_runs: list[dict[str, object]]) -> None:
    assert len(demo_runs) == 12
    reasons = {r["stop_reason"] for r in demo_runs}
    assert "completed" in reasons
    assert reasons <= {"completed", "loop_detected", "error", "max_turns", "max_tool_calls", "timeout"}
    assert all(r["cost_usd"] is not None and float(r["cost_usd"]) > 0 for r in demo_runs)  # type: ignore[arg-type]
    assert Path(".tether/tether.db").exists()


def test_demo_is_reproducible_for_a_seed() -> None:
    first = orjson.loads(runner.invoke(app, ["demo", "--trials", "1", "--latency-ms", "0", "--json"]).stdout)
    second = orjson.loads(runner.invoke(app, ["demo", "--trials", "1", "--latency-ms", "0", "--json"]).stdout)
    key = lambda r: (r["incident"], r["stop_reason"], r["verdict"], r["turns"], r["tool_calls"])  # noqa: E731
    assert sorted(map(key, first)) == sorted(map(key, second))


def test_runs_lists_what_the_demo_recorded(demo_runs: list[dict[str, object]]) -> None:
    listed = orjson.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert {r["run_id"] for r in listed} == {r["run_id"] for r in demo_runs}
    by_id = {r["run_id"]: r for r in listed}
    for run in demo_runs:
        stored = by_id[run["run_id"]]
        assert stored["stop_reason"] == run["stop_reason"]
        assert stored["turns"] == run["turns"] and stored["tool_calls"] == run["tool_calls"]
        assert stored["input_tokens"] == run["input_tokens"]
        assert stored["simulated"] is True


def test_runs_filters_by_stop_reason(demo_runs: list[dict[str, object]]) -> None:
    completed = orjson.loads(runner.invoke(app, ["runs", "--stop", "completed", "--json"]).stdout)
    assert completed and all(r["stop_reason"] == "completed" for r in completed)
    assert len(completed) == sum(1 for r in demo_runs if r["stop_reason"] == "completed")


def test_runs_show_prints_the_span_tree_and_flags_loops(demo_runs: list[dict[str, object]]) -> None:
    looped = next((r for r in demo_runs if r["stop_reason"] == "loop_detected"), None)
    target = looped or demo_runs[0]
    result = runner.invoke(app, ["runs", "show", str(target["run_id"])[:10]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "invoke_agent oncall" in result.stdout and "chat route:oncall" in result.stdout
    assert "via sonnet-a" in result.stdout or "via sonnet-b" in result.stdout or "via haiku" in result.stdout
    assert "tool list_alerts" in result.stdout
    if looped:
        assert "loop: identical call" in result.stdout


def test_runs_show_json_has_the_whole_trace(demo_runs: list[dict[str, object]]) -> None:
    run_id = str(demo_runs[0]["run_id"])
    data = orjson.loads(runner.invoke(app, ["runs", "show", run_id, "--json"]).stdout)
    ops = [s["operation"] for s in data["spans"]]
    assert ops.count("invoke_agent") == 1
    assert ops.count("chat") == data["run"]["turns"]
    assert ops.count("execute_tool") == data["run"]["tool_calls"]


def test_an_empty_store_says_what_to_do() -> None:
    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 0
    assert "tether demo" in result.stdout


def test_unknown_run_is_one_readable_line() -> None:
    result = tether("runs", "show", "doesnotexist")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "'doesnotexist'" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_is_one_readable_line() -> None:
    result = tether("runs", "--database", "postgresql+psycopg://tether:hunter2@127.0.0.1:5999/nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "5999" in result.stderr
    assert "hunter2" not in result.stderr


def test_malformed_config_is_one_readable_line() -> None:
    Path("tether.toml").write_text("[store\nurl = 3\n")
    result = tether("runs")
    assert result.returncode == 2
    assert "tether.toml" in result.stderr and "TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_since_is_one_readable_line() -> None:
    result = tether("runs", "--since", "yesterday-ish")
    assert result.returncode == 2
    assert "30m, 2h, 7d" in result.stderr


def test_an_unknown_stop_reason_lists_the_valid_ones() -> None:
    result = tether("runs", "--stop", "exploded")
    assert result.returncode == 2
    assert "loop_detected" in result.stderr and "Traceback" not in result.stderr


def test_errors_naming_toml_tables_keep_their_brackets() -> None:
    Path("tether.toml").write_text('[deployments.a]\nprovider = "nope"\nmodel = "m"\n')
    result = tether("runs")
    assert result.returncode == 2
    assert "[deployments.a] provider 'nope' is not defined" in result.stderr
