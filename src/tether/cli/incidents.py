"""``tether incidents``: what the guard found, which agents it quarantined, and releasing them."""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

if TYPE_CHECKING:
    from tether.guard.audit import Incident, Quarantine

__all__ = ["app"]

app = typer.Typer(
    help="Incidents the guard recorded and the agents it quarantined: list, release.", no_args_is_help=True
)

DatabaseOption = Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)]

# Characters of an incident's summary and a quarantine's reason in the tables (--json has them whole).
_SUMMARY_WIDTH = 80
_REASON_WIDTH = 200

_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _who() -> str:
    """``user@host``, as the audit trail records who released an agent."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _incidents_table(found: list[Incident], everything: bool) -> Table:
    from tether.guard.audit import OPEN

    # Fits 100 columns: no borders, the time without the year, run ids cut to their display prefix, the
    # summary as at most two lines; --json has every field (and the evidence) in full.
    title = f"{len(found)} {'' if everything else 'open '}incident(s), newest first"
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("when (UTC)", no_wrap=True, style="dim")
    table.add_column("sev", no_wrap=True)
    table.add_column("kind · agent · tool", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("run", no_wrap=True, style="cyan")
    table.add_column("summary", overflow="fold")
    if everything:
        table.add_column("status", no_wrap=True)
    for i in found:
        style = _SEVERITY_STYLE.get(i.severity, "white")
        cells = [
            f"{i.created_at:%m-%d %H:%M:%S}",
            f"[{style}]{escape(i.severity)}[/]",
            " · ".join(escape(part) for part in (i.kind, i.agent, i.tool or "—")),
            escape(fmt.run_id(i.run_id)),
            escape(fmt.one_line(i.summary, _SUMMARY_WIDTH)),
        ]
        if everything:
            cells.append("open" if i.status == OPEN else f"[dim]{escape(i.status)}[/]")
        table.add_row(*cells)
    return table


def _quarantines_table(found: list[Quarantine], everything: bool) -> Table:
    active = sum(q.active for q in found)
    title = f"{active} quarantined agent(s)" + (f", {len(found) - active} released" if everything else "")
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("agent", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("since (UTC)", no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1)
    if everything:
        table.add_column("released", overflow="fold")
    for q in found:
        agent = f"[bold red]{escape(q.agent)}[/]" if q.active else escape(q.agent)
        cells = [agent, _when(q.since), escape(fmt.one_line(q.reason, _REASON_WIDTH))]
        if everything:
            released = (
                f"{_when(q.released_at)} by {escape(q.released_by or 'someone')}" if q.released_at else "[red]no[/]"
            )
            cells.append(released)
        table.add_row(*cells)
    return table


@app.command("list")
def list_incidents(
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent's incidents and quarantine")] = None,
    everything: Annotated[bool, typer.Option("--all", help="released incidents and released quarantines too")] = False,
    limit: Annotated[int, typer.Option(min=1, help="most incidents shown")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Open incidents (newest first) and the quarantined agents, whose write and irreversible tools are denied."""
    from tether.guard.audit import OPEN, GuardStore
    from tether.store import NoStore, open_store

    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty={"incidents": [], "quarantines": []})
        return
    try:
        guard_store = GuardStore(store)
        found = guard_store.incidents(agent=agent, status=None if everything else OPEN, limit=limit)
        quarantined = [
            q for q in guard_store.quarantines(active_only=not everything) if agent is None or q.agent == agent
        ]
    finally:
        store.close()
    if as_json:
        _dump({"incidents": [i.to_dict() for i in found], "quarantines": [q.to_dict() for q in quarantined]})
        return
    console = fmt.console()
    whose = f" for agent {escape(agent)}" if agent else ""
    if found:
        console.print(_incidents_table(found, everything))
    else:
        history = "" if everything else " [dim](history: --all)[/]"
        console.print(f"no {'' if everything else 'open '}incidents{whose}{history}")
    if quarantined:
        console.print(_quarantines_table(quarantined, everything))
    else:
        console.print(f"no agent is quarantined{whose}")
    if any(q.active for q in quarantined):
        console.print(
            "[dim]let an agent act again with[/] tether incidents release AGENT --reason '…' "
            "[dim](its open incidents stop counting)[/]"
        )


@app.command("release")
def release(
    agent: Annotated[str, typer.Argument(help="the quarantined agent (tether incidents list)")],
    reason: Annotated[str, typer.Option(help="why it may act again, for the audit")] = "",
    by: Annotated[str | None, typer.Option(help="who releases it (default: user@host)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """Release a quarantined agent: its write and irreversible tools are allowed again.

    Its open incidents are marked released, so they no longer count towards a
    new quarantine. Running processes pick the release up within their refresh
    interval (2 s by default). Releasing an agent that is not quarantined is an error.
    """
    from tether.guard.audit import DEFAULT_REFRESH_S, GuardStore
    from tether.store import open_store

    store = open_store(database)
    try:
        done = GuardStore(store).release(agent, by=by or _who(), reason=reason)
    finally:
        store.close()
    if as_json:
        _dump(done.to_dict())
        return
    q = done.quarantine
    why = f": {escape(done.reason)}" if done.reason else ""
    fmt.console().print(
        f"[green]released[/] agent [bold cyan]{escape(q.agent)}[/] (quarantined since {_when(q.since)} UTC: "
        f"{escape(q.reason)}) · its write and irreversible tools are allowed again — running agents pick this up "
        f"within ~{DEFAULT_REFRESH_S:g} s · {done.incidents_released} open incident(s) marked released, so they no "
        f"longer count · by {escape(q.released_by or '')}{why}"
    )
