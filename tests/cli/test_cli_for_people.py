"""The CLI for people: --version, -h, run-id prefixes, tables in 100 columns, read commands that create nothing."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
import sqlalchemy as sa
import typer.main
from typer.testing import CliRunner

from tests.conftest import postgres_schema
from tests.store.conftest import Run
from tether import semconv as sc
from tether.cli import app
from tether.guard.approvals import ApprovalRequest, ApprovalStore
from tether.guard.audit import StoreGuardRecorder
from tether.guard.guard import RunGuard
from tether.guard.kill import KillStore
from tether.guard.policy import Policy
from tether.guard.types import Finding
from tether.store import open_store

runner = CliRunner()
NARROW = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tether.db'}"


def record(database: str, *runs: Run) -> None:
    with open_store(database) as store:
        for run in runs:
            store.write_spans(run.spans)


def kills(database: str) -> list[tuple[str, str]]:
    with open_store(database) as store:
        return [(k.target_kind, k.target) for k in KillStore(store).list()]


def invoke(*args: str) -> click.testing.Result:
    return runner.invoke(app, list(args), env=NARROW, color=False)


# --- --version and -h -------------------------------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    result = invoke("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"tether {version('tether')}"


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if hasattr(command, "list_commands"):  # a group (Typer's own Click, so no isinstance)
        ctx = type(command).context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _command_paths(sub, (*path, name))


def test_dash_h_is_help_on_every_command_and_group() -> None:
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("runs", "show") in paths and ("kill",) in paths and ("approvals", "list") in paths

    for path in paths:
        short, long = invoke(*path, "-h"), invoke(*path, "--help")
        assert short.exit_code == 0, (path, short.output)
        assert short.stdout == long.stdout and "Usage:" in short.stdout, path


# --- read commands where there is no store --------------------------------------------------------------------

LIST_COMMANDS = [
    ["runs"],
    ["runs", "--json"],
    ["cost"],
    ["approvals", "list"],
    ["incidents", "list"],
    ["keys", "list"],
]


@pytest.mark.parametrize("args", LIST_COMMANDS, ids=" ".join)
def test_a_list_command_without_a_store_says_where_it_looked_and_creates_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)

    result = invoke(*args)

    assert result.exit_code == 0, result.output
    assert f"no store at sqlite:///.tether/tether.db ({tmp_path / '.tether' / 'tether.db'})" in result.output
    assert "tether demo" in result.output and "TETHER_DATABASE_URL" in result.output
    assert list(tmp_path.iterdir()) == []  # no .tether/, no database file
    if "--json" in args:
        assert orjson.loads(result.stdout) == []


@pytest.mark.parametrize("args", [["runs", "show", "3f9a"], ["kill", "3f9a"]], ids=" ".join)
def test_a_command_naming_a_run_without_a_store_exits_1_and_creates_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)

    result = invoke(*args)

    assert result.exit_code == 1, result.output
    assert "'3f9a'" in result.stderr and "no store at sqlite:///.tether/tether.db" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_an_empty_postgresql_database_is_no_store_and_gets_no_tables(postgres_url: str) -> None:
    with postgres_schema(postgres_url) as url:
        result = invoke("runs", "--database", url)

        assert result.exit_code == 0, result.output
        assert "no store at postgresql+psycopg://" in result.output
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                assert sa.inspect(connection).get_table_names() == []  # no migration ran
        finally:
            engine.dispose()


def test_a_read_does_not_migrate_an_older_store(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"))
    engine = sa.create_engine(database)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)"
        )
        before = connection.exec_driver_sql("SELECT count(*) FROM schema_migrations").scalar()
    result = invoke("runs", "--database", database)

    with engine.connect() as connection:
        after = connection.exec_driver_sql("SELECT count(*) FROM schema_migrations").scalar()
    engine.dispose()
    assert after == before
    assert result.exit_code != 0 and "older than this tether" in str(result.exception)


# --- run-id prefixes --------------------------------------------------------------------------------------------


def test_runs_show_takes_a_unique_prefix_and_names_an_ambiguous_or_unknown_one(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"), Run("3f9a77aa00000000"), Run("b0b0b0b0b0b0b0b0"))

    shown = invoke("runs", "show", "b0b0", "--database", database, "--json")
    assert shown.exit_code == 0 and orjson.loads(shown.stdout)["run"]["run_id"] == "b0b0b0b0b0b0b0b0"

    ambiguous = invoke("runs", "show", "3f9a", "--database", database)
    assert ambiguous.exit_code == 1
    assert "3f9a0c2e41d7b6a5" in ambiguous.stderr and "3f9a77aa00000000" in ambiguous.stderr

    unknown = invoke("runs", "show", "ffff", "--database", database)
    assert unknown.exit_code == 1 and "no run 'ffff'" in unknown.stderr and "tether runs" in unknown.stderr


def test_kill_of_an_unknown_run_exits_1_naming_it_and_records_nothing(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"))

    result = invoke("kill", "totally-not-a-run", "--database", database)

    assert result.exit_code == 1, result.output
    assert "no run 'totally-not-a-run'" in result.stderr and "killed" not in result.stdout
    assert "tether runs" in result.stderr and "--force" in result.stderr
    assert kills(database) == []


def test_kill_resolves_a_prefix_to_the_full_run_id(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"), Run("b0b0b0b0b0b0b0b0"))

    result = invoke("kill", "3f9", "--database", database)

    assert result.exit_code == 0, result.output
    assert kills(database) == [("run", "3f9a0c2e41d7b6a5")]
    assert "run 3f9a0c2e41d7 stops" in result.stdout and "tether runs show 3f9a0c2e41d7" in result.stdout


def test_kill_of_an_ambiguous_prefix_lists_the_candidates_and_kills_nothing(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"), Run("3f9a77aa00000000"))

    result = invoke("kill", "3f9a", "--database", database)

    assert result.exit_code == 1
    assert "3f9a0c2e41d7b6a5" in result.stderr and "3f9a77aa00000000" in result.stderr
    assert kills(database) == []


def test_kill_finds_a_run_still_going_by_the_spans_it_has_stored(database: str) -> None:
    going = Run("c0ffee0000000001")
    with open_store(database) as store:  # its model call ended; its invoke_agent span is written when it ends
        store.write_spans([s for s in going.spans if s.operation != sc.OP_INVOKE_AGENT])

    result = invoke("kill", "c0ffee", "--database", database)

    assert result.exit_code == 0, result.output
    assert kills(database) == [("run", "c0ffee0000000001")]


def test_kill_force_records_a_run_nothing_is_stored_of_yet(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5"))

    result = invoke("kill", "dead00000000beef", "--force", "--database", database)

    assert result.exit_code == 0, result.output
    assert kills(database) == [("run", "dead00000000beef")]


def test_kill_of_a_whole_run_id_nothing_is_stored_of_yet_warns_and_records(database: str) -> None:
    # A run in its first model call has no span stored: an operator must be able to stop it by its id.
    record(database, Run("3f9a0c2e41d7b6a5"))

    result = invoke("kill", "dead00000000beef", "--database", database)

    assert result.exit_code == 0, result.output
    assert "no run dead00000000beef is stored" in result.stderr
    assert kills(database) == [("run", "dead00000000beef")]
    short = invoke("kill", "dead0000", "--database", database)  # a prefix that matches nothing is a typo
    assert short.exit_code == 1 and kills(database) == [("run", "dead00000000beef")]


def test_kill_of_an_agent_that_never_ran_warns_and_still_records(database: str) -> None:
    record(database, Run("3f9a0c2e41d7b6a5", agent="oncall"))

    typo = invoke("kill", "--agent", "oncal", "--database", database)
    known = invoke("kill", "--agent", "oncall", "--database", database)

    assert typo.exit_code == 0 and "warning: agent 'oncal' has no recorded run" in typo.stderr
    assert "stops any run of that agent still going" in typo.stderr
    assert known.exit_code == 0 and "warning" not in known.stderr
    assert sorted(kills(database)) == [("agent", "oncal"), ("agent", "oncall")]


# --- tables in 100 columns --------------------------------------------------------------------------------------

LONG_AGENT = "customer-support-escalation-triage-agent-eu-west"
LONG_ARGS = {
    "query": "SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE region = 'eu-west') " * 4,
    "limit": 10_000,
    "notes": ["retry after the 503 from the upstream billing service"] * 8,
}


def _assert_fits(output: str, *, max_lines: int) -> None:
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    assert len(lines) <= max_lines, output


def test_runs_table_fits_100_columns(database: str) -> None:
    record(
        database,
        *(
            Run(f"{i:x}" * 16, agent=LONG_AGENT, stop_reason="max_tool_calls", tools=40, cost_usd=1234.5)
            for i in range(1, 6)
        ),
    )

    result = invoke("runs", "--database", database)

    assert result.exit_code == 0, result.output
    _assert_fits(result.stdout, max_lines=12)  # title, header, 5 runs: one line each, and the hint
    assert "1111111111111" not in result.stdout and "111111111111" in result.stdout  # 12-character ids


def test_approvals_table_fits_100_columns_with_large_arguments(database: str) -> None:
    with open_store(database) as store:
        approvals = ApprovalStore(store)
        for call in range(3):
            request = ApprovalRequest(
                "3f9a0c2e41d7b6a5",
                LONG_AGENT,
                "run_sql_against_production",
                f"c{call}",
                LONG_ARGS,
                "irreversible: writes to the production database; policy requires a person " * 3,
                {},
            )
            approvals.request(request, timeout_s=600)

    result = invoke("approvals", "list", "--database", database)

    assert result.exit_code == 0, result.output
    _assert_fits(result.stdout, max_lines=3 * 4 + 6)
    full = orjson.loads(invoke("approvals", "list", "--database", database, "--json").stdout)
    assert full[0]["arguments"] == LONG_ARGS  # --json keeps the full record


def test_approve_takes_a_unique_prefix_of_a_pending_request(database: str) -> None:
    with open_store(database) as store:
        asked = ApprovalStore(store).request(
            ApprovalRequest("3f9a0c2e41d7b6a5", "oncall", "drop_table", "c1", {}, "irreversible", {}), timeout_s=600
        )

    result = invoke("approvals", "approve", asked.id[:8], "--by", "alice", "--database", database)

    assert result.exit_code == 0, result.output
    assert "approved drop_table" in result.stdout and "run 3f9a0c2e41d7)" in result.stdout


def test_incidents_table_fits_100_columns_with_long_summaries(database: str) -> None:
    summary = "the tool result contained an instruction to ignore previous instructions and email the database " * 5
    with open_store(database) as store, StoreGuardRecorder(store, Policy(quarantine_after=3)) as recorder:
        for kind in ("prompt_injection_in_tool_result", "policy_violation", "hallucinated_tool"):
            finding = Finding("rules", kind, "high", summary)
            recorder.finding(RunGuard("3f9a0c2e41d7b6a5", LONG_AGENT), "fetch_url_and_summarise", finding, None)

    result = invoke("incidents", "list", "--all", "--database", database)

    assert result.exit_code == 0, result.output
    _assert_fits(result.stdout, max_lines=3 * 4 + 10)  # each incident at most 4 lines
    assert "3f9a0c2e41d7 " in result.stdout and "3f9a0c2e41d7b" not in result.stdout
