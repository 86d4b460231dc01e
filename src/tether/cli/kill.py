"""``tether kill``: stop a run, an agent's runs, or every run — wherever they run."""

from __future__ import annotations

import getpass
import re
import socket
from typing import TYPE_CHECKING, Annotated, Final

import orjson
import typer
from rich.markup import escape

from tether.cli import _format as fmt
from tether.errors import ConfigError, UserError

if TYPE_CHECKING:
    from tether.guard.kill import Kill
    from tether.store import TraceStore

__all__ = ["kill"]


def _requested_by() -> str:
    """``user@host``, as the audit trail records who pulled the switch."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _redis_url(given: str | None) -> str | None:
    """The Redis to publish the kill on: ``--redis-url``, else ``[gateway]`` or ``[workers] redis_url``, else none."""
    if given is not None:
        return given or None  # --redis-url '' publishes nothing
    from tether.config import load_settings

    try:
        return load_settings().kills_redis_url
    except ConfigError as exc:
        # The kill goes to the store all the same: a broken config file must not stop an operator from killing.
        fmt.console(stderr=True).print(
            f"[yellow]warning:[/] not publishing the kill on Redis: {escape(str(exc))}", highlight=False
        )
        return None


def _confirmation(kill: Kill) -> str:
    from tether.guard.kill import DEFAULT_POLL_INTERVAL_S

    within = f"within ~{DEFAULT_POLL_INTERVAL_S * 1000:.0f} ms"
    if kill.target_kind == "run":
        what = f"run [bold cyan]{escape(fmt.run_id(kill.target))}[/] stops {within}"
        see = f"tether runs show {escape(fmt.run_id(kill.target))}"
    elif kill.target_kind == "agent":
        what = f"every running run of agent [bold cyan]{escape(kill.target)}[/] stops {within}"
        see = f"tether runs --agent {escape(kill.target)} --stop killed"
    else:
        what = f"[bold]every running run[/] stops {within}"
        see = "tether runs --stop killed"
    return (
        f"[red]killed[/] · {what} (runs started later are not affected) · "
        f"reason: {escape(kill.reason)} · see it with [bold]{see}[/] [dim](kill {kill.id[:12]})[/]"
    )


def _existing_store(database: str | None, run_id: str) -> TraceStore:
    """The store to look the run up in; none there means no such run (exit 1), and nothing is created."""
    from tether.store import NoStore, open_store

    try:
        return open_store(database, create=False)
    except NoStore as exc:
        fmt.fail(f"no run {run_id!r} to kill: {exc}")


#: The shape of the ids tether gives runs (``Agent.run``): 16 hex digits.
_FULL_RUN_ID: Final = re.compile(r"[0-9a-f]{16}")


def _resolve(store: TraceStore, run_id: str) -> str:
    """The full id of the run ``run_id`` names (a unique prefix is enough), or exit 1 saying what to do."""
    from tether.store import AmbiguousRunId, RunNotFound

    try:
        return store.resolve_run_id(run_id, in_flight=True)
    except RunNotFound:
        from tether.store.runs import RunRecords

        submitted = RunRecords(store).find(run_id)
        if submitted is not None:
            return submitted.run_id  # submitted (tether runs submit), perhaps still queued: nothing in spans yet
        if _FULL_RUN_ID.fullmatch(run_id):
            # A well-formed id of a run that may be in its first model call: nothing of it is stored until
            # a call ends, and an operator must be able to stop it now. Anything else is a typo.
            fmt.console(stderr=True).print(
                f"[yellow]warning:[/] no run {escape(run_id)} is stored in {escape(store.url)} yet (a run is "
                "recorded as its calls end) — the kill is recorded and stops it if it is running",
                highlight=False,
                soft_wrap=True,
            )
            return run_id
        fmt.fail(
            f"no run {run_id!r} in {store.url}: list runs with `tether runs`, or kill an agent's runs with "
            "`tether kill --agent NAME`; a run started a moment ago may have nothing stored yet — "
            "`tether kill FULL_RUN_ID --force` records the kill anyway"
        )
    except AmbiguousRunId as exc:
        fmt.fail(f"{exc}; nothing was killed")


def kill(
    run_id: Annotated[
        str | None, typer.Argument(help="the run's id, or a unique prefix of it (as tether runs shows it)")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="kill every running run of this agent")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="kill every running run of every agent")] = False,
    reason: Annotated[str | None, typer.Option(help="why: kept with the kill and on the run's trace")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="record a kill of RUN_ID even though no span of it is stored yet (a run started a moment ago); "
            "give the full id",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the kill as JSON")] = False,
    database: Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="also publish the kill on this Redis, so listening processes stop the runs at once "
            "(default: redis_url under \\[gateway] in tether.toml; '' for none)",
        ),
    ] = None,
) -> None:
    """Kill a run (RUN_ID or a unique prefix), an agent's runs (--agent) or every run (--all): exactly one.

    An id that matches no run stored (ended, or still going with a model or tool
    call already recorded) is refused with exit 1 — unless it is a whole run id
    (16 hex digits: a run in its first call has nothing stored yet), which is
    killed with a warning; --force records any other id anyway.
    An agent with no recorded run is warned about, and the kill recorded.

    Every process on the same database stops the runs it names at once — model
    calls and tools in flight are cancelled, the trace so far is kept, and the
    run ends with stop reason 'killed'. Runs started after the kill are not
    affected. With Redis configured, the kill is also published there and
    arrives in about a millisecond; otherwise within a poll (~25 ms). Without a
    database, touch the kill file instead (TETHER_KILL_FILE).

    Works directly on the database: whoever can reach it is the admin. Over
    HTTP (POST /v1/kill on the gateway) a kill needs an admin key instead
    ('tether keys create NAME --admin'); a model key is refused.
    """
    from tether.guard.kill import KillStore, new_kill
    from tether.store import open_store

    given = [flag for flag, value in (("RUN_ID", run_id), ("--agent", agent), ("--all", all_runs)) if value]
    if len(given) != 1:
        detail = f"got {' and '.join(given)}" if given else "got none"
        raise ConfigError(
            f"tether kill needs exactly one target — a RUN_ID, --agent NAME or --all — {detail}: "
            "e.g. tether kill 3f9a0c2e41d7b6a5, tether kill --agent oncall, tether kill --all"
        )
    kind = "all" if all_runs else "agent" if agent else "run"
    if force and kind != "run":
        raise ConfigError("--force goes with a RUN_ID: e.g. tether kill 3f9a0c2e41d7b6a5 --force")
    target = run_id or agent
    store = open_store(database) if kind != "run" or force else _existing_store(database, run_id or "")
    try:
        if kind == "run" and not force:
            target = _resolve(store, run_id or "")
        elif kind == "agent" and not store.list_runs(limit=1, agent=agent):
            fmt.console(stderr=True).print(
                f"[yellow]warning:[/] agent {escape(repr(agent))} has no recorded run in {escape(store.url)} "
                "(check the name: tether runs lists them) — the kill is recorded all the same and stops any run "
                "of that agent still going (a run is recorded when it ends); runs started later are not affected",
                highlight=False,
                soft_wrap=True,
            )
        try:
            record = new_kill(kind, target, reason, _requested_by())
        except UserError as exc:
            raise ConfigError(str(exc)) from None
        publish_to = _redis_url(redis_url)
        kills = KillStore(store, redis_url=publish_to)
        try:
            ended = kills.add(record)  # a failed publish is logged, never raised: the row is what counts
        finally:
            kills.close()
    finally:
        store.close()
    if as_json:
        typer.echo(orjson.dumps({**record.to_dict(), "ended_waiting": ended}, option=orjson.OPT_INDENT_2).decode())
        return
    fmt.console().print(_confirmation(record), highlight=False, soft_wrap=True)
    if ended:
        shown = ", ".join(fmt.run_id(r) for r in ended[:5]) + (" …" if len(ended) > 5 else "")
        fmt.console().print(
            f"ended {len(ended)} queued or parked run(s) at once: {escape(shown)}", highlight=False, soft_wrap=True
        )
