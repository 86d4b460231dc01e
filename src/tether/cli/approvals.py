"""``tether approvals``: list the tool calls waiting for a person, and approve or deny them (once)."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

if TYPE_CHECKING:
    from tether.guard.approvals import ApprovalStore

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
# Ids as the list shows them (approve and deny take any unique prefix), and the widths of the one-line summaries.
APPROVAL_ID_WIDTH = 12
_ARGS_WIDTH = 36
_WHY_WIDTH = 120

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
    # Fits 100 columns: ids cut to a prefix (approve/deny take one), arguments and reason as one short
    # line each; --json has every field in full.
    table = Table(
        title=f"{len(found)} approval request(s)", title_justify="left", header_style="bold", box=None, pad_edge=False
    )
    table.add_column("id", style="cyan", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("agent · tool", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("arguments", no_wrap=True, overflow="ellipsis", max_width=_ARGS_WIDTH)
    table.add_column("why", overflow="fold", ratio=1)
    table.add_column("expires", style="dim", no_wrap=True)
    for a in found:
        style = _STATUS_STYLE[a.status]
        why = escape(fmt.one_line(_scrub(a.reason), _WHY_WIDTH))
        status = f"[{style}]{a.status.value}[/]"
        if a.purpose == "unknown_outcome":
            # The effect may have happened already: the person must look before letting it run again.
            why = (
                f"[red]unknown-outcome review #{a.attempt}:[/] [bold red]an earlier attempt may have run; "
                f"check {escape(a.tool)} effect before approving.[/] {why}"
            )
        table.add_row(
            escape(a.id[:APPROVAL_ID_WIDTH]),
            status,
            f"{escape(a.agent)} · {escape(a.tool)}",
            escape(fmt.one_line(_scrub(orjson.dumps(a.arguments).decode()), _ARGS_WIDTH)),
            why,
            a.expires_at.astimezone().strftime("%H:%M:%S"),
        )
    console.print(table)
    console.print(
        "[dim]decide with[/] tether approvals approve ID [dim]or[/] tether approvals deny ID --reason '…' "
        "[dim](a unique prefix of the id is enough; --json for every field)[/]"
    )


def _decide(approval_id: str, approve: bool, reason: str, by: str | None, database: str | None, as_json: bool) -> None:
    from tether.guard.approvals import ApprovalStore
    from tether.store import open_store

    store = open_store(database)
    try:
        approvals = ApprovalStore(store)
        full_id = _pending_id(approvals, approval_id)
        decided = approvals.decide(full_id, approve=approve, by=by or getpass.getuser(), reason=reason)
    finally:
        store.close()
    if as_json:
        _dump(decided.to_json())
        return
    verb = "[green]approved[/]" if approve else "[red]denied[/]"
    run = escape(fmt.run_id(decided.run_id))
    fmt.console().print(
        f"{verb} {escape(decided.tool)} for agent {escape(decided.agent)} (run {run}); "
        f"the run goes on — see [bold]tether runs show {run}[/]"
    )


def _pending_id(approvals: ApprovalStore, given: str) -> str:
    """The full id of the pending request ``given`` is a unique prefix of; else ``given`` as it is (deciding
    it then says what is wrong: unknown, or already decided). Several pending matches exit 1, listing them."""
    from tether.guard.approvals import ApprovalStatus

    given = given.strip()
    matches = sorted(a.id for a in approvals.list(status=ApprovalStatus.PENDING) if a.id.startswith(given))
    if given in matches or not matches:
        return given
    if len(matches) == 1:
        return matches[0]
    fmt.fail(
        f"approval id prefix {given!r} matches {len(matches)} pending requests ({', '.join(matches[:5])}"
        f"{', …' if len(matches) > 5 else ''}): give more characters of the id"
    )


@app.command("approve")
def approve(
    approval_id: Annotated[str, typer.Argument(help="the request's id or a unique prefix (tether approvals list)")],
    reason: Annotated[str, typer.Option(help="why, for the audit")] = "",
    by: Annotated[str | None, typer.Option(help="who decides (default: your user name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Approve a waiting call: it runs once. A request is decided once; deciding it again is an error."""
    _decide(approval_id, True, reason, by, database, as_json)


@app.command("deny")
def deny(
    approval_id: Annotated[str, typer.Argument(help="the request's id or a unique prefix (tether approvals list)")],
    reason: Annotated[str, typer.Option(help="why — the agent is told")] = "",
    by: Annotated[str | None, typer.Option(help="who decides (default: your user name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Deny a waiting call: it never runs, and the agent is told why."""
    _decide(approval_id, False, reason, by, database, as_json)
