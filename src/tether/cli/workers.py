"""``tether workers``: the live workers, from their heartbeats in the store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

if TYPE_CHECKING:
    from tether.store.runs import WorkerInfo

__all__ = ["workers"]


def _json(info: WorkerInfo, now_ms: int) -> dict[str, Any]:
    return {
        "worker_id": info.worker_id,
        "host": info.host,
        "pid": info.pid,
        "status": info.status,
        "started_ms": info.started_ms,
        "heartbeat_ms": info.heartbeat_ms,
        "heartbeat_age_s": round(max(now_ms - info.heartbeat_ms, 0) / 1000, 3),
        "concurrency": info.concurrency,
        "running": list(info.running),
        "agents": list(info.agents),
    }


def workers(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    live_within: Annotated[
        float, typer.Option(min=0, help="only workers heard from in the last SECONDS (0: every worker ever seen)")
    ] = 30.0,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
) -> None:
    """List live workers: id, host/pid, heartbeat age, running/concurrency, agents."""
    from tether.store import NoStore, open_store
    from tether.store.runs import RunRecords

    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty=[])
        return
    try:
        found = RunRecords(store).workers(live_within_s=live_within or None)
    finally:
        store.close()
    now_ms = int(time.time() * 1000)
    if as_json:
        typer.echo(orjson.dumps([_json(w, now_ms) for w in found], option=orjson.OPT_INDENT_2).decode())
        return
    console = fmt.console()
    if not found:
        console.print("no live workers — start one with [bold]tether worker --app module:object[/]")
        return
    table = Table(
        title=f"{len(found)} worker{'s' if len(found) != 1 else ''}",
        title_justify="left",
        header_style="bold",
        box=None,
        pad_edge=False,
    )
    table.add_column("worker", style="cyan", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("host/pid", no_wrap=True, overflow="ellipsis", max_width=22)
    table.add_column("status", no_wrap=True)
    table.add_column("heartbeat", justify="right", no_wrap=True)
    table.add_column("running", justify="right", no_wrap=True)
    table.add_column("agents", overflow="ellipsis", max_width=20, no_wrap=True)
    for w in found:
        age = max(now_ms - w.heartbeat_ms, 0) / 1000
        table.add_row(
            escape(w.worker_id),
            escape(f"{w.host}/{w.pid}"),
            w.status,
            f"{age:.1f} s ago",
            f"{len(w.running)}/{w.concurrency}",
            escape(", ".join(w.agents)) or "[dim]none[/]",
        )
    console.print(table)
