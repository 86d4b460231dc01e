"""docs/cli.md is the live --help of every command; regenerate with TETHER_UPDATE_DOCS=1 pytest tests/cli."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from tether.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
COMMANDS = (
    ["--help"],
    ["demo", "--help"],
    ["runs", "--help"],
    ["runs", "show", "--help"],
    ["runs", "submit", "--help"],
    ["worker", "--help"],
    ["workers", "--help"],
    ["keys", "--help"],
    ["keys", "create", "--help"],
    ["gateway", "serve", "--help"],
    ["keys", "list", "--help"],
    ["keys", "revoke", "--help"],
    ["cost", "--help"],
    ["kill", "--help"],
    ["approvals", "--help"],
    ["approvals", "list", "--help"],
    ["approvals", "approve", "--help"],
    ["approvals", "deny", "--help"],
    ["incidents", "--help"],
    ["incidents", "list", "--help"],
    ["incidents", "release", "--help"],
    ["eval", "--help"],
    ["eval", "run", "--help"],
    ["eval", "list", "--help"],
    ["eval", "show", "--help"],
    ["eval", "compare", "--help"],
    ["eval", "scorecard", "--help"],
    ["eval", "drift", "--help"],
    ["config", "--help"],
    ["config", "check", "--help"],
)


def render() -> str:
    runner = CliRunner()
    parts = [
        "# tether CLI reference",
        "",
        "Generated from the live `--help` (a test checks it is current; regenerate with",
        "`TETHER_UPDATE_DOCS=1 uv run pytest tests/cli/test_cli_docs.py`).",
    ]
    for args in COMMANDS:
        result = runner.invoke(app, args, env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}, color=False)
        assert result.exit_code == 0, result.output
        text = "\n".join(line.rstrip() for line in result.stdout.splitlines()).strip()
        parts += ["", f"## tether {' '.join(a for a in args if a != '--help')}".rstrip(), "", "```text", text, "```"]
    return "\n".join(parts) + "\n"


def test_cli_reference_is_current() -> None:
    expected = render()
    if os.environ.get("TETHER_UPDATE_DOCS") == "1":
        DOC.write_text(expected)
    assert DOC.read_text() == expected, "docs/cli.md is stale: run TETHER_UPDATE_DOCS=1 uv run pytest tests/cli"
