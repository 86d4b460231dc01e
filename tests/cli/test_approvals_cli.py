"""``tether approvals``: list, approve and deny through the CLI, once each."""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

from tether.cli import app
from tether.guard.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore
from tether.store import open_store

runner = CliRunner()


def pending(url: str, call_id: str) -> str:
    with open_store(url) as store:
        return (
            ApprovalStore(store)
            .request(
                ApprovalRequest("run-7", "oncall", "drop_table", call_id, {"table": "users"}, "irreversible", {}),
                timeout_s=600,
            )
            .id
        )


def test_list_approve_and_deny(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    first, second = pending(url, "c1"), pending(url, "c2")

    listed = runner.invoke(app, ["approvals", "list", "--database", url, "--json"])
    assert listed.exit_code == 0 and [a["id"] for a in orjson.loads(listed.stdout)] == [first, second]
    table = runner.invoke(app, ["approvals", "list", "--database", url])
    assert "drop_table" in table.stdout and "tether approvals approve ID" in table.stdout

    approved = runner.invoke(app, ["approvals", "approve", first, "--by", "alice", "--database", url])
    assert approved.exit_code == 0 and "approved" in approved.stdout and "run-7" in approved.stdout
    denied = runner.invoke(app, ["approvals", "deny", second, "--reason", "not today", "--database", url, "--json"])
    assert orjson.loads(denied.stdout)["decision_reason"] == "not today"

    again = runner.invoke(app, ["approvals", "deny", first, "--database", url])
    assert again.exit_code != 0
    assert "already approved by alice" in str(again.exception) + again.output
    with open_store(url) as store:
        assert ApprovalStore(store).get(first).status is ApprovalStatus.APPROVED


def test_an_unknown_outcome_review_is_listed_as_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    with open_store(url) as store:
        approvals = ApprovalStore(store)
        first = approvals.request(
            ApprovalRequest("run-7", "oncall", "drop_table", "c1", {"table": "users"}, "irreversible", {}, turn=1),
            timeout_s=600,
        )
        approvals.decide(first.id, approve=True, by="alice")
        check = "an earlier attempt may have run; check drop_table effect before approving"
        review = ApprovalRequest(
            "run-7", "oncall", "drop_table", "c1", {"table": "users"}, "outcome unknown", {"check": check}, 1, 1
        )
        asked = approvals.request(review, timeout_s=600)
    assert asked.id != first.id

    listed = orjson.loads(runner.invoke(app, ["approvals", "list", "--database", url, "--json"]).stdout)
    assert [(a["id"], a["purpose"], a["attempt"], a["turn"]) for a in listed] == [(asked.id, "unknown_outcome", 1, 1)]
    table = runner.invoke(app, ["approvals", "list", "--database", url]).stdout  # cells wrap: look for pieces
    assert all(words in table for words in ("unknown-outcome", "review #1", "may have", "before approving")), table
