"""``tether runs``: list runs (and the queue: queued, running, parked, dead), submit one, show one.

Two sources: the spans (every run that ran, in any process) and the runs table (every run that was
*submitted*: queued, running on a worker, parked on an approval, finished or dead-lettered). A
submitted run shows its topology — who called whom, on which worker, with cost per branch.
"""

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
    from tether.store import RunSummary, SpanRecord, TraceStore
    from tether.store.runs import RunRecord

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
    queued: Annotated[bool, typer.Option("--queued", help="only submitted runs waiting for a worker")] = False,
    running: Annotated[bool, typer.Option("--running", help="only submitted runs a worker holds now")] = False,
    parked: Annotated[bool, typer.Option("--parked", help="only runs parked on an approval")] = False,
    dead: Annotated[bool, typer.Option("--dead", help="only dead-lettered runs, with reason and deliveries")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
) -> None:
    """List runs, newest first: id, agent, stop reason, turns, tool calls, tokens, cost, duration.

    Runs submitted to the queue that have not ended yet (queued, running, parked) follow in a table of
    their own; --queued, --running, --parked and --dead list only those (from the runs table).
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = database
        return
    from tether.messages import StopReason
    from tether.store import NoStore, open_store

    statuses = [
        status
        for status, wanted in (("pending", queued), ("running", running), ("parked", parked), ("dead", dead))
        if wanted
    ]
    if statuses:
        try:
            store = open_store(database, create=False)
        except NoStore as exc:
            fmt.no_store(exc, as_json=as_json, empty=[])
            return
        try:
            records = _records(store, statuses, agent=agent, limit=limit)
        finally:
            store.close()
        if as_json:
            _dump([record_json(r) for r in records])
            return
        console = fmt.console()
        if not records:
            console.print(f"no {' or '.join(_STATUS_WORDS[s] for s in statuses)} runs")
            return
        console.print(records_table(records, title=f"{len(records)} submitted run{'s' if len(records) != 1 else ''}"))
        return

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
        waiting = (
            []
            if as_json or stop_reason
            else _records(store, ["pending", "running", "parked"], agent=agent, limit=limit)
        )
    finally:
        store.close()
    if as_json:
        _dump([dataclasses.asdict(r) for r in runs])
        return
    console = fmt.console()
    if waiting:
        console.print(records_table(waiting, title=_waiting_title(waiting)))
    if not runs:
        if not waiting:
            console.print("no runs recorded yet — try [bold]tether demo[/]")
        return
    console.print(runs_table(runs, title=f"{len(runs)} run{'s' if len(runs) != 1 else ''}, newest first"))
    console.print(
        "[dim]show one:[/] tether runs show RUN_ID   [dim](a unique prefix is enough; --json for every field)[/]"
    )


_STATUS_WORDS = {"pending": "queued", "running": "running", "parked": "parked", "finished": "finished", "dead": "dead"}
_STATUS_STYLE = {"pending": "yellow", "running": "cyan", "parked": "magenta", "finished": "green", "dead": "bold red"}


def _records(store: TraceStore, statuses: list[str], *, agent: str | None, limit: int) -> list[RunRecord]:
    """Submitted runs in these statuses, newest first (none from a store without a runs table)."""
    from tether.store.runs import RunRecords

    records = RunRecords(store).list(statuses=statuses, agent=agent, limit=limit)  # type: ignore[arg-type]
    return list(records)


def _waiting_title(records: list[RunRecord]) -> str:
    counts = Counter(r.status for r in records)
    parts = [f"{counts[s]} {_STATUS_WORDS[s]}" for s in ("pending", "running", "parked") if counts[s]]
    return "submitted, not ended: " + ", ".join(parts)


def _age(ms: int | None, now_ms: int) -> str:
    return "" if ms is None else fmt.duration(max(now_ms - ms, 0) / 1000)


def record_json(record: RunRecord) -> dict[str, Any]:
    """A runs-table row as plain JSON values (cost as a string: exact)."""
    data = dataclasses.asdict(record)
    if record.cost_usd is not None:
        data["cost_usd"] = str(record.cost_usd)
    return data


def records_table(records: list[RunRecord], *, title: str | None = None) -> Table:
    """Submitted runs in 100 columns: status, agent, age, deliveries, worker, and why (stop, parked on, dead)."""
    import time

    now_ms = int(time.time() * 1000)
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("run", style="cyan", no_wrap=True, min_width=fmt.RUN_ID_WIDTH)
    table.add_column("agent", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("status", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("deliv.", justify="right", no_wrap=True)
    table.add_column("worker", no_wrap=True, overflow="ellipsis", max_width=18)
    table.add_column("why", overflow="fold", max_width=40)  # a dead run's reason in full, over lines
    for r in records:
        style = _STATUS_STYLE.get(r.status, "white")
        why = ""
        if r.status == "dead":
            why = r.dead_reason or ""
        elif r.status == "parked":
            why = f"approval {r.parked_on}" if r.parked_on else ""
        elif r.status == "finished":
            why = r.stop_reason or ""
        table.add_row(
            fmt.run_id(r.run_id),
            escape(r.agent),
            f"[{style}]{_STATUS_WORDS.get(r.status, r.status)}[/]",
            _age(r.submitted_ms, now_ms),
            str(r.deliveries),
            escape(r.lease_owner or r.worker or ""),
            escape(fmt.one_line(why, 300)),
        )
    return table


def topology_tree(records: list[RunRecord], *, focus: str | None = None) -> Tree:
    """The run tree of submitted runs: who called whom, on which worker, how it ended, cost and tokens per branch."""
    children: dict[str | None, list[RunRecord]] = {}
    ids = {r.run_id for r in records}
    for r in sorted(records, key=lambda r: (r.submitted_ms, r.run_id)):
        parent = r.parent_run_id if r.parent_run_id in ids else None
        children.setdefault(parent, []).append(r)

    def branch_cost(r: RunRecord) -> tuple[float | None, int]:
        cost: float | None = float(r.cost_usd) if r.cost_usd is not None else None
        tokens = r.tokens or 0
        for child in children.get(r.run_id, []):
            child_cost, child_tokens = branch_cost(child)
            tokens += child_tokens
            if child_cost is not None:
                cost = (cost or 0.0) + child_cost
        return cost, tokens

    def label(r: RunRecord) -> str:
        ended = (
            fmt.stop(r.stop_reason)
            if r.status == "finished"
            else (f"[{_STATUS_STYLE.get(r.status, 'white')}]{_STATUS_WORDS.get(r.status, r.status)}[/]")
        )
        cost, tokens = branch_cost(r)
        branch = " (branch)" if children.get(r.run_id) else ""
        where = f" [dim]on[/] {escape(r.worker)}" if r.worker else ""
        mark = " [bold]◀[/]" if r.run_id == focus else ""
        return (
            f"[bold green]{escape(r.agent)}[/] [cyan]{fmt.run_id(r.run_id)}[/]{where}  {ended}  "
            f"{fmt.usd(cost)} · {fmt.tokens(tokens)} tokens{branch}{mark}"
        )

    tree = Tree("[bold]topology[/]", guide_style="dim")

    def add(node: Tree, r: RunRecord) -> None:
        sub = node.add(label(r))
        for child in children.get(r.run_id, []):
            add(sub, child)

    for root in children.get(None, []):
        add(tree, root)
    return tree


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
    """Show one run as a span tree: latency, tokens, cost, tool input/output, loops, stop reason.

    A submitted run also shows its topology first: the run tree (sub-agent runs on other workers
    included) with each run's worker, status or stop reason, and cost and tokens per branch.
    """
    from tether.store import AmbiguousRunId, NoStore, RunNotFound, open_store

    try:
        store = open_store(database or (ctx.obj if isinstance(ctx.obj, str) else None), create=False)
    except NoStore as exc:
        fmt.fail(f"cannot show run {run_id!r}: {exc}")
    try:
        record, topology = _submitted(store, run_id)
        try:
            run: Any = store.get_run(record.run_id if record is not None else run_id)
        except RunNotFound:
            if record is None:
                fmt.fail(f"no run {run_id!r} in {store.url}: list runs with `tether runs`")
            run = None
        except AmbiguousRunId as exc:
            fmt.fail(str(exc))
    finally:
        store.close()
    if as_json:
        data: dict[str, Any] = {}
        if run is not None:
            data["run"] = dataclasses.asdict(run.summary)
            data["spans"] = [dataclasses.asdict(sp) for sp in run.spans]
        if record is not None:
            data["submitted"] = record_json(record)
            data["topology"] = [record_json(r) for r in topology]
        _dump(data)
        return
    console = fmt.console()
    if record is not None:
        console.print(topology_tree(topology, focus=record.run_id))
        if record.status == "dead":
            console.print(
                f"[bold red]dead-lettered[/] after {record.deliveries} deliveries: {escape(record.dead_reason or '')}"
            )
    if run is None:
        if record is not None:
            console.print(
                f"[dim]run {fmt.run_id(record.run_id)} is {_STATUS_WORDS.get(record.status, record.status)}: "
                "no spans recorded yet[/]"
            )
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
    root_attrs: dict[str, Any] = next((sp.attributes for sp in run.spans if sp.parent_span_id is None), {})
    if root_attrs.get(sc.TETHER_OUTPUT):
        header.add_row("output", _short(root_attrs[sc.TETHER_OUTPUT], 300))
    if root_attrs.get(sc.TETHER_ERROR_MESSAGE):
        header.add_row("why it stopped", f"[red]{_short(root_attrs[sc.TETHER_ERROR_MESSAGE], 300)}[/]")
    if loops:
        header.add_row(
            "loop", f"[bold red]{loops} tool call(s) repeated ≥{LOOP_THRESHOLD}× with identical arguments[/]"
        )
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


def _submitted(store: TraceStore, run_id: str) -> tuple[RunRecord | None, list[RunRecord]]:
    """The run's row in the runs table and its whole tree (root and descendants); (None, []) if never submitted."""
    from tether.errors import StoreError
    from tether.store.runs import RunRecords

    records = RunRecords(store)
    try:
        record = records.find(run_id)
    except StoreError:
        return None, []
    if record is None:
        return None, []
    return record, list(records.tree(record.root_run_id))


@app.command("submit")
def submit(
    agent: Annotated[str, typer.Argument(help="the agent's name (in the --app registry)")],
    task: Annotated[str, typer.Argument(help="the task")],
    app_spec: Annotated[str, typer.Option("--app", help="the agents: module:object (a Tether or an AgentRegistry)")],
    wait: Annotated[bool, typer.Option("--wait", help="wait for the run to end (or park) and print how")] = False,
    timeout: Annotated[float | None, typer.Option(min=0, help="with --wait: give up after SECONDS")] = None,
    run_id: Annotated[str | None, typer.Option("--id", help="the run's id (the same id again is the same run)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Submit a run to the queue: stored as pending first, then published; prints its id.

    Workers (`tether worker --app ...`) run it. With no Redis configured it runs in this process, and
    the command waits for it. An agent the --app does not know is refused before anything is stored.
    """
    from tether.workers import load_app

    target = load_app(app_spec)
    tt = target.tt
    try:
        if agent not in target.registry:
            known = ", ".join(sorted(target.registry.names())) or "none"
            fmt.fail(f"--app {app_spec} has no agent {agent!r} (known: {known}): nothing was submitted")
        if target.registry is not tt.registry and agent not in tt.registry:
            tt.registry.register(target.registry.get(agent))
        submitted = tt.submit(agent, task, run_id=run_id)
        embedded = tt.settings.workers.embedded
        in_process = embedded if embedded is not None else tt.bus.kind == "memory"
        record = tt.wait(submitted, timeout) if wait or in_process else None
    finally:
        tt.close()
    if as_json:
        _dump({"run_id": submitted, **({"run": record_json(record)} if record is not None else {})})
        return
    console = fmt.console()
    if record is None:
        console.print(f"submitted [cyan]{submitted}[/] — see it with: tether runs show {submitted}")
        return
    status = (
        fmt.stop(record.stop_reason) if record.status == "finished" else _STATUS_WORDS.get(record.status, record.status)
    )
    console.print(f"run [cyan]{submitted}[/] {status}")
    if record.output:
        console.print(escape(fmt.one_line(record.output, 2000)))
    if record.error or record.dead_reason:
        console.print(f"[red]{escape(fmt.one_line(record.error or record.dead_reason or '', 500))}[/]")
