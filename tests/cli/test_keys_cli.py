"""``tether keys``: create prints the secret once, list and revoke never show it; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sys

import orjson
import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from tests.store import conftest as store_fixtures
from tether.cli import _format, app, main
from tether.gateway.keys import KeyStore
from tether.store import open_store

# The store tests' fixtures: a SQLite file, or a PostgreSQL schema of the test's own, per ``backend``.
backend = store_fixtures.backend
store_url = store_fixtures.store_url
raw_engine = store_fixtures.raw_engine

runner = CliRunner()
SECRET = re.compile(r"tk-[A-Za-z0-9_-]{40}")


def run(store_url: str, *args: str) -> str:
    result = runner.invoke(app, ["keys", *args, "--database", store_url])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_create_prints_the_secret_once_with_a_warning(store_url: str) -> None:
    out = run(store_url, "create", "ci-bot", "--route", "support", "--budget-usd", "50", "--period", "day")

    secrets = SECRET.findall(out)
    assert len(secrets) == 1
    assert "will not be shown again" in out
    assert "$50/day" in out
    assert "route 'support' is not defined in tether.toml" in out
    secret = secrets[0]
    assert any(line.strip() == secret for line in out.splitlines())  # on a line of its own, to copy whole

    listed = run(store_url, "list")
    assert "ci-bot" in listed and secret[:9] in listed and secret not in listed and secret[9:] not in listed
    as_json = run(store_url, "list", "--json", "--all")
    assert secret not in as_json and secret[9:] not in as_json


async def test_the_printed_secret_verifies(store_url: str) -> None:
    out = run(store_url, "create", "ci-bot", "--json")
    created = orjson.loads(out)

    with open_store(store_url) as store:
        key = await KeyStore(store).verify(created["secret"])
    assert key is not None and key.name == "ci-bot" == created["key"]["name"]
    assert created["key"]["prefix"] == created["secret"][:9]


def test_limits_and_budgets_are_kept(store_url: str) -> None:
    run(
        store_url,
        *("create", "web", "--route", "support", "--route", "triage"),
        *("--budget-usd", "12.5", "--budget-tokens", "2000000", "--period", "month", "--rpm", "600", "--tpm", "200000"),
    )

    (key,) = orjson.loads(run(store_url, "list", "--json"))
    assert key["routes"] == ["support", "triage"]
    assert key["budget"] == {"usd": "12.5", "tokens": 2_000_000, "period": "month"}
    assert key["rate_limit"] == {"rpm": 600, "tpm": 200_000}
    assert key["revoked_at"] is None
    table = run(store_url, "list")
    assert "$12.5/month" in table and "600 rpm, 200,000 tpm" in table


def test_revoke_then_list(store_url: str) -> None:
    run(store_url, "create", "a")
    run(store_url, "create", "b")

    out = run(store_url, "revoke", "a")

    assert "revoked virtual key a" in out and "within 5 s" in out
    assert [k["name"] for k in orjson.loads(run(store_url, "list", "--json"))] == ["b"]
    everything = {k["name"]: k for k in orjson.loads(run(store_url, "list", "--json", "--all"))}
    assert everything["a"]["revoked_at"] is not None
    assert "1 valid key, 1 revoked" in run(store_url, "list", "--all")


def test_an_empty_list_says_how_to_create_one(store_url: str) -> None:
    open_store(store_url).close()  # a store with no keys (no store at all is tests/cli/test_cli_for_people.py)
    assert "tether keys create NAME" in run(store_url, "list")
    assert orjson.loads(run(store_url, "list", "--json")) == []


def test_the_secret_is_not_stored_anywhere(store_url: str, raw_engine: sa.Engine) -> None:
    secret = orjson.loads(run(store_url, "create", "ci-bot", "--json"))["secret"]
    with raw_engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM virtual_keys")).all()
    assert rows and all(secret[9:] not in str(value) for row in rows for value in row)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "x", "--period", "day"], "--period needs --budget-usd or --budget-tokens"),
        (["create", "x", "--budget-usd", "lots"], "is not an amount"),
        (["create", "x", "--budget-usd", "-3"], "invalid budget: usd: Input should be greater than 0"),
        (["create", "bad name"], "invalid key name"),
        (["revoke", "ghost"], "no virtual key named 'ghost'"),
        (["create", "ops", "--admin", "--route", "support"], "an admin key calls no model, so it takes no --route"),
        (["create", "ops", "--admin", "--budget-usd", "1", "--rpm", "5"], "takes no --budget-usd, --rpm"),
    ],
)
def test_mistakes_are_one_clear_line(
    store_url: str, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["tether", "keys", *args, "--database", store_url])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 2, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_duplicates_and_double_revocations_are_refused(store_url: str) -> None:
    run(store_url, "create", "ci-bot")
    duplicate = runner.invoke(app, ["keys", "create", "ci-bot", "--database", store_url])
    assert duplicate.exit_code != 0 and "exists already" in str(duplicate.exception)
    assert SECRET.search(duplicate.output) is None  # no secret printed for a key that was not made
    run(store_url, "revoke", "ci-bot")
    again = runner.invoke(app, ["keys", "revoke", "ci-bot", "--database", store_url])
    assert "already revoked" in str(again.exception)


def test_admin_keys_are_created_explicitly_and_listed_with_their_scope(store_url: str) -> None:
    out = run(store_url, "create", "oncall-console", "--admin")
    assert "created admin key oncall-console" in out and "call no model" in out
    assert len(SECRET.findall(out)) == 1 and "will not be shown again" in out
    run(store_url, "create", "ci-bot", "--route", "support")

    listed = {k["name"]: k for k in orjson.loads(run(store_url, "list", "--json"))}
    assert listed["oncall-console"]["scope"] == "admin" and listed["oncall-console"]["routes"] == []
    assert listed["ci-bot"]["scope"] == "model"
    created = orjson.loads(run(store_url, "create", "second-console", "--admin", "--json"))
    assert created["key"]["scope"] == "admin"


def test_the_list_fits_100_columns_with_the_scope(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run(store_url, "create", "oncall-console", "--admin")
    run(
        store_url,
        *("create", "nightly-evals", "--route", "support", "--route", "triage", "--budget-usd", "12.5"),
        *("--budget-tokens", "2000000", "--period", "month", "--rpm", "600", "--tpm", "200000"),
    )
    run(store_url, "create", "old-bot")
    run(store_url, "revoke", "old-bot")
    monkeypatch.setattr(_format, "console", lambda stderr=False: Console(width=100, color_system=None))

    for args in (["list"], ["list", "--all"]):
        table = run(store_url, *args)
        lines = table.splitlines()
        assert max(len(line) for line in lines) <= 100, table
        assert lines[-1].startswith("└") and lines[-1].endswith("┘"), table  # not cropped at the edge
        admin_row = next(line for line in lines if "oncall-console" in line)
        assert "admin" in admin_row and "none" in admin_row, table
        assert "model" in next(line for line in lines if "nightly-evals" in line), table
    assert "revoked" in table and "old-bot" in table
