"""``tether approvals``: list the tool calls waiting for a person, and approve or deny them (once)."""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

app = typer.Typer(
    help="Tool calls waiting for a person's approval: list, approve, deny.\n\n"
    "These commands work directly on the database: whoever can reach it is the admin. Over HTTP "
    "(/v1/approvals on the gateway) deciding needs an admin key instead ('tether keys create NAME --admin'); "
    "a model key — the kind an agent calls models with — is refused, so a run's own key never decides it.",
    no_args_is_help=True,
)

DatabaseOption = Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)]


def _dump(data: Any) -> None:
    typer.echo(_scrub(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()))


def _scrub(text: str) -> str:
    # Rows are scrubbed when written; this covers any secret this process knows (defence in depth).
    from tether.redaction import default_scrubber

    return default_scrubber().scrub(text)


# By ApprovalStatus value: a StrEnum member finds its value's entry, and start-up need not import the guard.
_STATUS_STYLE = {
    "pending": "yellow",
    "approved": "green",
    "denied": "red",
    "expired": "red",
}


@app.command("list")
def list_approvals(
    everything: Annotated[bool, typer.Option("--all", help="decided and expired requests too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Requests waiting for a decision (oldest first): agent, tool, arguments, why, and when they expire."""
    from tether.guard.approvals import ApprovalStatus, ApprovalStore
    from tether.store import NoStore, open_store

    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty=[])
        return
    try:
        found = ApprovalStore(store).list(status=None if everything else ApprovalStatus.PENDING)
    finally:
        store.close()
    if as_json:
        _dump([a.to_json() for a in found])
        return
    console = fmt.console()
    if not found:
        console.print("no tool calls are waiting for approval" + ("" if everything else " [dim](history: --all)[/]"))
        return
    table = Table(title=f"{len(found)} approval request(s)", title_justify="left", header_style="bold")
    for column in ("id", "status", "kind", "agent", "tool", "arguments", "why", "expires"):
        table.add_column(column, overflow="fold")
    for a in found:
        style = _STATUS_STYLE[a.status]
        why = escape(_scrub(a.reason))
        if a.purpose == "unknown_outcome":
            # The effect may have happened already: the person must look before letting it run again.
            why = f"[bold red]an earlier attempt may have run; check {escape(a.tool)} effect before approving.[/] {why}"
        table.add_row(
            f"[cyan]{a.id}[/]",
            f"[{style}]{a.status.value}[/]",
            f"[red]unknown-outcome review #{a.attempt}[/]" if a.purpose == "unknown_outcome" else "call",
            escape(a.agent),
            escape(a.tool),
            escape(_scrub(orjson.dumps(a.arguments).decode())[:200]),
            why,
            a.expires_at.astimezone().strftime("%H:%M:%S"),
        )
    console.print(table)
    console.print("[dim]decide with[/] tether approvals approve ID [dim]or[/] tether approvals deny ID --reason '…'")


def _decide(approval_id: str, approve: bool, reason: str, by: str | None, database: str | None, as_json: bool) -> None:
    from tether.guard.approvals import ApprovalStore
    from tether.store import open_store

    store = open_store(database)
    try:
        decided = ApprovalStore(store).decide(approval_id, approve=approve, by=by or getpass.getuser(), reason=reason)
    finally:
        store.close()
    if as_json:
        _dump(decided.to_json())
        return
    verb = "[green]approved[/]" if approve else "[red]denied[/]"
    fmt.console().print(
        f"{verb} {escape(decided.tool)} for agent {escape(decided.agent)} (run {escape(decided.run_id)}); "
        f"the run goes on — see [bold]tether runs show {escape(decided.run_id)}[/]"
    )


@app.command("approve")
def approve(
    approval_id: Annotated[str, typer.Argument(help="the request's id (tether approvals list)")],
    reason: Annotated[str, typer.Option(help="why, for the audit")] = "",
    by: Annotated[str | None, typer.Option(help="who decides (default: your user name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Approve a waiting call: it runs once. A request is decided once; deciding it again is an error."""
    _decide(approval_id, True, reason, by, database, as_json)


@app.command("deny")
def deny(
    approval_id: Annotated[str, typer.Argument(help="the request's id (tether approvals list)")],
    reason: Annotated[str, typer.Option(help="why — the agent is told")] = "",
    by: Annotated[str | None, typer.Option(help="who decides (default: your user name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Deny a waiting call: it never runs, and the agent is told why."""
    _decide(approval_id, False, reason, by, database, as_json)
