"""``tether runs``: list runs, and show one run's trace as a span tree."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.tree import Tree

from tether import semconv as sc
from tether.cli import _format as fmt
from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.store import RunSummary, SpanRecord

app = typer.Typer(help="List agent runs and show their traces.", no_args_is_help=False, invoke_without_command=True)

# A tool call repeated this many times with identical arguments in one run is flagged as a loop.
LOOP_THRESHOLD = 3


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, default=_json_default, option=orjson.OPT_INDENT_2).decode())


@app.callback()
def list_runs(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option(help="only runs of this agent")] = None,
    stop_reason: Annotated[
        str | None, typer.Option("--stop", help="only runs that ended so (e.g. loop_detected)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="only runs started since: 30m, 2h, 7d or an ISO time")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many runs")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
) -> None:
    """List runs, newest first: id, agent, stop reason, turns, tool calls, tokens, cost, duration."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = database
        return
    from tether.messages import StopReason
    from tether.store import NoStore, open_store

    if stop_reason is not None and stop_reason not in {r.value for r in StopReason}:
        raise ConfigError(
            f"--stop {stop_reason!r} is not a stop reason: use one of {', '.join(r.value for r in StopReason)}"
        )
    start = fmt.parse_since(since) if since else None  # a bad --since is an error even where no store is
    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty=[])
        return
    try:
        runs = store.list_runs(limit=limit, agent=agent, stop_reason=stop_reason, since=start)
    finally:
        store.close()
    if as_json:
        _dump([dataclasses.asdict(r) for r in runs])
        return
    console = fmt.console()
    if not runs:
        console.print("no runs recorded yet — try [bold]tether demo[/]")
        return
    console.print(runs_table(runs, title=f"{len(runs)} run{'s' if len(runs) != 1 else ''}, newest first"))
    console.print(
        "[dim]show one:[/] tether runs show RUN_ID   [dim](a unique prefix is enough; --json for every field)[/]"
    )


def runs_table(runs: list[RunSummary], *, title: str | None = None) -> Table:
    """Runs, one line each, in 100 columns: no borders, the agent cut with … when long, start without the year.

    Cache tokens, the task and the full ids are in ``tether runs show`` and ``--json``.
    """
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("run", style="cyan", no_wrap=True, min_width=fmt.RUN_ID_WIDTH)
    table.add_column("agent", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("stop reason", no_wrap=True)
    for col in ("turns", "tools", "tokens in/out", "cost", "duration"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("started", style="dim", no_wrap=True)
    for r in runs:
        table.add_row(
            fmt.run_id(r.run_id),
            escape(r.agent) + (" [dim](sim)[/]" if r.simulated else ""),
            fmt.stop(r.stop_reason),
            str(r.turns),
            str(r.tool_calls),
            f"{fmt.tokens(r.input_tokens)}/{fmt.tokens(r.output_tokens)}",
            fmt.usd(r.cost_usd),
            fmt.duration(r.duration_s),
            r.started_at.astimezone().strftime("%m-%d %H:%M:%S"),
        )
    return table


def _tool_key(span: SpanRecord) -> tuple[str, str] | None:
    if span.operation != sc.OP_EXECUTE_TOOL:
        return None
    return (
        str(span.attributes.get(sc.GEN_AI_TOOL_NAME, "")),
        str(span.attributes.get(sc.GEN_AI_TOOL_CALL_ARGUMENTS, "")),
    )


def _short(text: object, limit: int) -> str:
    s = " ".join(str(text).split())
    return escape(s if len(s) <= limit else s[: limit - 1] + "…")


def _label(span: SpanRecord, repeats: Counter[tuple[str, str]], width: int) -> str:
    a = span.attributes
    ms = (span.end_ns - span.start_ns) / 1e6
    took = f"[dim]{ms:,.1f} ms[/]"
    status = " [bold red]✗[/]" if span.status == "error" else ""
    if span.operation == sc.OP_CHAT:
        cr = int(a.get(sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 0))
        cw = int(a.get(sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, 0))
        cache = f" [green]cache read {fmt.tokens(cr)}[/]" if cr else ""
        cache += f" [dim]cache write {fmt.tokens(cw)}[/]" if cw else ""
        finish = a.get(sc.GEN_AI_RESPONSE_FINISH_REASONS)
        finish_txt = f" → {','.join(finish) if isinstance(finish, list) else finish}" if finish else ""
        cost = fmt.usd(float(a[sc.TETHER_COST_USD])) if sc.TETHER_COST_USD in a else fmt.usd(None)
        err = f" [red]{_short(span.status_message or '', 120)}[/]" if span.status == "error" else ""
        line = (
            f"[bold blue]chat[/] {escape(str(a.get(sc.GEN_AI_REQUEST_MODEL, '')))}{status}  {took}  "
            f"in {fmt.tokens(int(a.get(sc.GEN_AI_USAGE_INPUT_TOKENS, 0)))}{cache} "
            f"out {fmt.tokens(int(a.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS, 0)))}  {cost}{escape(finish_txt)}{err}"
        )
        if sc.TETHER_DEPLOYMENT in a:
            retries = sum(1 for e in span.events if e.get("name") == "retry")
            tier = a.get(sc.TETHER_ROUTE_TIER, 0)
            line += f"\n  [dim]via[/] {escape(str(a[sc.TETHER_DEPLOYMENT]))} [dim](tier {tier})[/]"
            if retries:
                line += f" [yellow]{retries} retr{'y' if retries == 1 else 'ies'}[/]"
            for fallback in a.get(sc.TETHER_FALLBACKS, ()):
                line += f"\n  [yellow]fell back from[/] {_short(fallback, width)}"
        return line
    if span.operation == sc.OP_EXECUTE_TOOL:
        key = _tool_key(span)
        flags = ""
        if key is not None and repeats[key] >= LOOP_THRESHOLD:
            flags += f" [bold red]⟳ loop: identical call ×{repeats[key]}[/]"
        elif key is not None and repeats[key] > 1:
            flags += f" [yellow]repeated ×{repeats[key]}[/]"
        if a.get(sc.TETHER_TOOL_HALLUCINATED):
            flags += " [bold magenta]hallucinated call[/]"
        args = _short(a.get(sc.GEN_AI_TOOL_CALL_ARGUMENTS, ""), width)
        result = _short(a.get(sc.GEN_AI_TOOL_CALL_RESULT, ""), width)
        colour = "red" if span.status == "error" else "dim"
        return (
            f"[bold yellow]tool[/] {escape(str(a.get(sc.GEN_AI_TOOL_NAME, '')))}{status}  {took}{flags}\n"
            f"  [dim]args[/] {args}\n  [{colour}]→ {result}[/]"
        )
    return f"{escape(span.name)}{status}  {took}"


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="run id, or a unique prefix of it")],
    as_json: Annotated[bool, typer.Option("--json", help="print the run and its spans as JSON")] = False,
    width: Annotated[int, typer.Option(min=20, help="characters of tool input/output to show")] = 160,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
) -> None:
    """Show one run as a span tree: latency, tokens, cost, tool input/output, loops, stop reason."""
    from tether.store import AmbiguousRunId, NoStore, RunNotFound, open_store

    try:
        store = open_store(database or (ctx.obj if isinstance(ctx.obj, str) else None), create=False)
    except NoStore as exc:
        fmt.fail(f"cannot show run {run_id!r}: {exc}")
    try:
        run = store.get_run(run_id)
    except RunNotFound:
        fmt.fail(f"no run {run_id!r} in {store.url}: list runs with `tether runs`")
    except AmbiguousRunId as exc:
        fmt.fail(str(exc))
    finally:
        store.close()
    if as_json:
        _dump({"run": dataclasses.asdict(run.summary), "spans": [dataclasses.asdict(s) for s in run.spans]})
        return
    s = run.summary
    repeats: Counter[tuple[str, str]] = Counter(k for k in map(_tool_key, run.spans) if k is not None)
    loops = sum(1 for n in repeats.values() if n >= LOOP_THRESHOLD)
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("run", f"[cyan]{s.run_id}[/]  [dim]trace {s.trace_id}[/]")
    header.add_row("agent", escape(s.agent) + ("  [dim](simulated model)[/]" if s.simulated else ""))
    header.add_row("stop reason", fmt.stop(s.stop_reason))
    header.add_row("turns / tool calls", f"{s.turns} / {s.tool_calls}")
    header.add_row(
        "tokens",
        f"in {s.input_tokens:,} (cache read {s.cache_read_tokens:,}, cache write {s.cache_write_tokens:,}) "
        f"· out {s.output_tokens:,}",
    )
    header.add_row("cost", fmt.usd(s.cost_usd))
    header.add_row("duration", fmt.duration(s.duration_s))
    if s.task:
        header.add_row("task", _short(s.task, 300))
    root_attrs = next((sp.attributes for sp in run.spans if sp.parent_span_id is None), {})
    if root_attrs.get(sc.TETHER_OUTPUT):
        header.add_row("output", _short(root_attrs[sc.TETHER_OUTPUT], 300))
    if root_attrs.get(sc.TETHER_ERROR_MESSAGE):
        header.add_row("why it stopped", f"[red]{_short(root_attrs[sc.TETHER_ERROR_MESSAGE], 300)}[/]")
    if loops:
        header.add_row(
            "loop", f"[bold red]{loops} tool call(s) repeated ≥{LOOP_THRESHOLD}× with identical arguments[/]"
        )
    console = fmt.console()
    console.print(
        Panel(header, title="run", title_align="left", border_style=fmt.STOP_STYLE.get(s.stop_reason or "", "white"))
    )

    children: dict[str | None, list[SpanRecord]] = {}
    ids = {sp.span_id for sp in run.spans}
    for sp in run.spans:
        parent = sp.parent_span_id if sp.parent_span_id in ids else None
        children.setdefault(parent, []).append(sp)

    def add(node: Tree, span: SpanRecord) -> None:
        branch = node.add(_label(span, repeats, width))
        for child in children.get(span.span_id, []):
            add(branch, child)

    tree = Tree("[bold]trace[/]", guide_style="dim")
    for root in children.get(None, []):
        if root.operation == sc.OP_INVOKE_AGENT:
            ms = (root.end_ns - root.start_ns) / 1e6
            branch = tree.add(
                f"[bold green]invoke_agent[/] {escape(s.agent)}  [dim]{ms:,.1f} ms[/]  {fmt.stop(s.stop_reason)}"
            )
            for child in children.get(root.span_id, []):
                add(branch, child)
        else:
            add(tree, root)
    console.print(tree)
