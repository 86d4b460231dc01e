"""``tether cost``: where the money went — spend by route, model, agent, key, day or deployment."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt

if TYPE_CHECKING:
    from tether.gateway.ledger import CostLine, CostReport


class By(StrEnum):
    """What spend can be grouped by (``tether.gateway.ledger.DIMENSIONS``; a test keeps them equal)."""

    route = "route"
    model = "model"
    agent = "agent"
    key = "key"
    day = "day"
    deployment = "deployment"


def _usd(value: Decimal | None) -> str:
    return fmt.usd(None if value is None else float(value))


def _key(value: str | None, *, width: int | None = None) -> str:
    if value is None:
        return "[dim](none)[/]"
    return escape(value if width is None or len(value) <= width else value[:width])


def _cost_cell(line: CostLine) -> str:
    text = _usd(line.cost_usd)
    if line.cost_usd is not None and line.unpriced_calls:
        text += f" [magenta](+{line.unpriced_calls} unpriced)[/]"
    return text


def _share(line: CostLine, total: Decimal | None) -> str:
    if line.cost_usd is None or not total:
        return ""
    return f"{line.cost_usd / total:.0%}"


def _groups_table(report: CostReport) -> Table:
    order = "by date" if report.by == "day" else "most expensive first"
    table = Table(title=f"spend by {report.by} ({order})", title_justify="left", header_style="bold")
    table.add_column(report.by, style="cyan", no_wrap=True)
    for column in ("calls", "tokens in", "tokens out", "cache read", "cache write", "cost", "share"):
        table.add_column(column, justify="right", no_wrap=True)
    total = report.total.cost_usd
    for line in report.groups:
        table.add_row(
            _key(line.key),
            f"{line.calls:,}",
            fmt.tokens(line.input_tokens),
            fmt.tokens(line.output_tokens),
            f"[green]{fmt.tokens(line.cache_read_tokens)}[/]" if line.cache_read_tokens else "0",
            fmt.tokens(line.cache_write_tokens),
            f"[bold]{_cost_cell(line)}[/]",
            f"[dim]{_share(line, total)}[/]",
        )
    if report.more_groups:
        table.caption = f"… and {report.more_groups} more (--top shows more)"
        table.caption_justify = "left"
    return table


def _hotspots_table(title: str, label: str, lines: tuple[CostLine, ...], *, runs: bool = False) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column(label, style="cyan", no_wrap=True)
    if runs:
        table.add_column("agent", no_wrap=True)
    for column in ("calls", "tokens in/out", "cost"):
        table.add_column(column, justify="right", no_wrap=True)
    for line in lines:
        cells = [_key(line.key, width=fmt.RUN_ID_WIDTH if runs else None)]
        if runs:
            cells.append(_key(line.agent))
        cells += [
            f"{line.calls:,}",
            f"{fmt.tokens(line.input_tokens)}/{fmt.tokens(line.output_tokens)}",
            f"[bold]{_cost_cell(line)}[/]",
        ]
        table.add_row(*cells)
    return table


def _savings_table(report: CostReport) -> Table:
    table = Table(title="what prompt caching saved", title_justify="left", header_style="bold")
    table.add_column("provider", no_wrap=True)
    table.add_column("model", style="cyan", no_wrap=True)
    table.add_column("cache read", justify="right", no_wrap=True)
    table.add_column("saved", justify="right", no_wrap=True)
    for saving in report.cache_savings:
        if saving.saved_usd is None:
            saved = "[magenta]unknown[/] [dim](no price)[/]"
        else:
            saved = f"[green]{_usd(saving.saved_usd)}[/]"
            if saving.unpriced_cache_read_tokens:
                saved += f" [magenta](+{fmt.tokens(saving.unpriced_cache_read_tokens)} tokens unpriced)[/]"
        table.add_row(escape(saving.provider), escape(saving.model), fmt.tokens(saving.cache_read_tokens), saved)
    return table


def _window(report: CostReport, since: str) -> str:
    if report.since is None:
        return "in all recorded time"
    return f"since {report.since.strftime('%Y-%m-%d %H:%M')} UTC ({escape(since)})"


def _print(console: Console, report: CostReport, since: str) -> None:
    total = report.total
    console.print(
        f"[bold green]{_usd(total.cost_usd)}[/] spent {_window(report, since)} · "
        f"[bold]{total.calls - total.unpriced_calls:,}[/] priced calls · tokens in {fmt.tokens(total.input_tokens)} "
        f"(cache read {fmt.tokens(total.cache_read_tokens)}, write {fmt.tokens(total.cache_write_tokens)}) "
        f"· out {fmt.tokens(total.output_tokens)}",
        highlight=False,
    )
    if total.unpriced_calls:
        models = ", ".join(f"{escape(u.provider)}:{escape(u.model)} ×{u.calls:,}" for u in report.unpriced[:5])
        more = f", +{len(report.unpriced) - 5} more" if len(report.unpriced) > 5 else ""
        table_name = escape(f'[prices."{report.unpriced[0].model}"]')
        console.print(
            f"[bold magenta]⚠ {total.unpriced_calls:,} call{'s' if total.unpriced_calls != 1 else ''} "
            f"with unknown price, not included[/] ({models}{more}) — "
            f"[dim]to price them, set {table_name} in tether.toml[/]",
            highlight=False,
        )
    console.print()
    console.print(_groups_table(report))
    if report.top_runs:
        console.print()
        console.print(_hotspots_table("most expensive runs", "run", report.top_runs, runs=True))
    if report.top_agents:
        console.print()
        console.print(_hotspots_table("most expensive agents", "agent", report.top_agents))
    if report.cache_savings:
        console.print()
        console.print(_savings_table(report))
        console.print(
            f"caching saved [bold green]{_usd(report.saved_usd)}[/] "
            "[dim](cache reads at the plain input price minus at the cache-read price, today's prices)[/]",
            highlight=False,
        )


def cost(
    since: Annotated[
        str, typer.Option(help="only calls since: 30m, 2h, 7d, an ISO time (UTC if no zone), or all")
    ] = "7d",
    by: Annotated[By, typer.Option(help="what to group spend by")] = By.route,
    top: Annotated[int, typer.Option(min=1, max=1000, help="rows per table")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
) -> None:
    """Where the money went: spend and tokens by route/model/agent/key/day/deployment, hotspots, cache savings."""
    from tether.config import load_settings
    from tether.gateway.ledger import CostLedger
    from tether.pricing import Pricer
    from tether.store import NoStore, open_store

    start = None if since.strip().lower() == "all" else fmt.parse_since(since)
    pricer = Pricer(load_settings().prices)  # tether.toml's [prices] price cache savings as the gateway priced calls
    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty={})
        return
    try:
        ledger = CostLedger(store)
        report = ledger.report(since=start, by=by.value, top=top, pricer=pricer)
        recorded = report.empty and ledger.has_rows()
    finally:
        store.close()
    if as_json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    console = fmt.console()
    if report.empty:
        if recorded:
            console.print(f"no model calls {_window(report, since)} — older ones exist: try [bold]--since all[/]")
        else:
            console.print(
                "no model calls recorded yet — the gateway records one per call: run "
                "[bold]tether gateway serve[/] and send traffic through it, or in code pass "
                "[bold]Gateway(config, cost_sink=CostWriter(store))[/] [dim](from tether.gateway.ledger)[/]"
            )
        return
    _print(console, report, since)
