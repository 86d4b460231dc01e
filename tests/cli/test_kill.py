"""``tether kill``: records one kill per call, says what stops and where to look, refuses ambiguous targets."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
from typer.testing import CliRunner

from tests.store.conftest import Run
from tether.cli import app, main
from tether.guard.kill import KillStore, KillSwitch
from tether.store import open_store

runner = CliRunner()


@pytest.fixture
def database(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/tether.db"


def kill(database: str, *args: str) -> str:
    result = runner.invoke(app, ["kill", *args, "--database", database], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.stdout


def recorded(database: str) -> list[dict[str, object]]:
    with open_store(database) as store:
        return [k.to_dict() for k in KillStore(store).list()]


def test_kill_a_run(database: str) -> None:
    with open_store(database) as store:
        store.write_spans(Run("3f9a0c2e41d7b6a5").spans)
    out = kill(database, "3f9a0c2e41d7b6a5", "--reason", "stuck in a loop")

    (row,) = recorded(database)
    assert row["target_kind"] == "run" and row["target"] == "3f9a0c2e41d7b6a5"
    assert row["reason"] == "stuck in a loop" and "@" in str(row["requested_by"])
    assert len(out.strip().splitlines()) == 1
    assert "run 3f9a0c2e41d7 stops" in out and "tether runs show 3f9a0c2e41d7 " in out  # ids shown as 12 chars


def test_kill_an_agent(database: str) -> None:
    out = kill(database, "--agent", "oncall")

    (row,) = recorded(database)
    assert row["target_kind"] == "agent" and row["target"] == "oncall" and row["reason"] == "no reason given"
    assert "every running run of agent oncall stops" in out and "tether runs --agent oncall" in out


def test_kill_all_as_json(database: str) -> None:
    out = kill(database, "--all", "--reason", "incident 4411", "--json")

    printed = orjson.loads(out)
    (row,) = recorded(database)
    assert printed.pop("ended_waiting") == []  # no submitted run was waiting
    assert printed == row
    assert row["target_kind"] == "all" and row["reason"] == "incident 4411"


@pytest.mark.parametrize(
    "args",
    [[], ["run-1", "--agent", "oncall"], ["--agent", "oncall", "--all"], ["run-1", "--all"]],
)
def test_kill_needs_exactly_one_target(
    database: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["tether", "kill", *args, "--database", database])
    with pytest.raises(SystemExit) as exited:
        main()

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tether kill needs exactly one target") and len(err.strip().splitlines()) == 1
    assert recorded(database) == []


async def test_a_kill_from_the_command_line_stops_a_run_watched_elsewhere(database: str) -> None:
    with open_store(database) as store, KillSwitch(store, poll_interval_s=0.005) as switch:

        async def run() -> bool:
            async with switch.watch(run_id="run-1", agent="oncall") as watch:
                await asyncio.sleep(60)
            return watch.killed

        task = asyncio.create_task(run())
        await asyncio.sleep(0.02)
        await asyncio.to_thread(kill, database, "run-1", "--force")  # nothing of the run is stored yet
        assert await asyncio.wait_for(task, 2)
