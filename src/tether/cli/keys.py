"""``tether keys``: create, list and revoke the virtual keys that proxy clients present.

A key is a ``model`` key (calls its routes; the default) or an ``admin`` key
(``--admin``: decides approvals and kills over HTTP, and calls no model).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import _format as fmt
from tether.errors import ConfigError, TetherError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from tether.config import BudgetLimit, RateLimit
    from tether.gateway.keys import VirtualKey

app = typer.Typer(help="Create, list and revoke virtual keys for the gateway's proxy.", no_args_is_help=True)

DatabaseOption = Annotated[str | None, typer.Option(help=fmt.DATABASE_HELP)]


class Period(StrEnum):
    """A budget's period (UTC calendar periods)."""

    day = "day"
    month = "month"


def _dump(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def key_to_dict(key: VirtualKey) -> dict[str, object]:
    """A key as plain JSON values; there is no secret to leave out: a ``VirtualKey`` never has it."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope.value,
        "routes": list(key.routes),
        "budget": key.budget.model_dump(mode="json", exclude_none=True) if key.budget else None,
        "rate_limit": key.rate_limit.model_dump(mode="json", exclude_none=True) if key.rate_limit else None,
        "created_at": key.created_at.isoformat() if key.created_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def budget_text(budget: BudgetLimit | None) -> str:
    """``$50/day, 2,000,000 tokens/day``; ``—`` for none."""
    if budget is None:
        return "[dim]—[/]"
    per = f"/{budget.period}" if budget.period else " total"
    parts = []
    if budget.usd is not None:
        parts.append(f"${budget.usd}{per}")
    if budget.tokens is not None:
        parts.append(f"{budget.tokens:,} tokens{per}")
    return ", ".join(parts)


def limit_text(limit: RateLimit | None) -> str:
    """``600 rpm, 200,000 tpm``; ``—`` for none."""
    if limit is None:
        return "[dim]—[/]"
    parts = []
    if limit.rpm is not None:
        parts.append(f"{limit.rpm:,} rpm")
    if limit.tpm is not None:
        parts.append(f"{limit.tpm:,} tpm")
    return ", ".join(parts)


def _routes_text(key: VirtualKey) -> str:
    if key.is_admin:
        return "[dim]none[/]"
    return escape(", ".join(key.routes)) if key.routes else "[dim]all[/]"


def _scope_text(key: VirtualKey) -> str:
    return "[bold magenta]admin[/]" if key.is_admin else "model"


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _budget(usd: str | None, tokens: int | None, period: Period | None) -> BudgetLimit | None:
    from pydantic import ValidationError

    from tether.config import BudgetLimit

    if usd is None and tokens is None:
        if period is not None:
            raise ConfigError("--period needs --budget-usd or --budget-tokens: it is the period of the key's budget")
        return None
    amount: Decimal | None = None
    if usd is not None:
        try:
            amount = Decimal(usd.strip().removeprefix("$"))
        except InvalidOperation:
            raise ConfigError(f"--budget-usd {usd!r} is not an amount: use e.g. --budget-usd 50") from None
    try:
        return BudgetLimit(usd=amount, tokens=tokens, period=period.value if period else None)
    except ValidationError as exc:
        raise ConfigError(f"invalid budget: {_first_error(exc)}") from None


def _unconfigured_routes(routes: list[str]) -> list[str]:
    """Routes tether.toml does not define; none when it cannot be read (a key may precede its routes)."""
    from tether.config import load_settings

    try:
        defined = load_settings().routes
    except TetherError:
        return []
    return [r for r in routes if r not in defined]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="unique name, e.g. ci-bot: what costs, budgets and traces record")],
    route: Annotated[
        list[str] | None, typer.Option("--route", help="a route it may use; repeat for several (default: every route)")
    ] = None,
    budget_usd: Annotated[
        str | None, typer.Option("--budget-usd", metavar="USD", help="its own budget in US dollars")
    ] = None,
    budget_tokens: Annotated[
        int | None, typer.Option("--budget-tokens", min=1, help="its own budget in tokens (input + output)")
    ] = None,
    period: Annotated[
        Period | None, typer.Option(help="the budget's period, a UTC calendar day or month (default: lifetime)")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="its own limit in requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="its own limit in tokens per minute")] = None,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="an admin key: decides approvals and kills over HTTP, calls no model (no routes, budget or limits)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the key and its secret as JSON")] = False,
    database: DatabaseOption = None,
) -> None:
    """Create a virtual key and print its secret — once: only its hash is stored."""
    from pydantic import ValidationError

    from tether.config import RateLimit
    from tether.gateway.keys import KeyScope, KeyStore
    from tether.store import open_store

    if admin:
        given = [
            flag
            for flag, value in (
                ("--route", route),
                ("--budget-usd", budget_usd),
                ("--budget-tokens", budget_tokens),
                ("--period", period),
                ("--rpm", rpm),
                ("--tpm", tpm),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"an admin key calls no model, so it takes no {', '.join(given)}: "
                f"create it with just tether keys create {name} --admin, and a separate model key for model calls"
            )
    budget = _budget(budget_usd, budget_tokens, period)
    try:
        rate_limit = RateLimit(rpm=rpm, tpm=tpm) if rpm is not None or tpm is not None else None
    except ValidationError as exc:
        raise ConfigError(f"invalid rate limit: {_first_error(exc)}") from None
    routes = list(route or [])
    store = open_store(database)
    try:
        key, secret = KeyStore(store).create(
            name,
            routes=routes,
            budget=budget,
            rate_limit=rate_limit,
            scope=KeyScope.ADMIN if admin else KeyScope.MODEL,
        )
    finally:
        store.close()
    if as_json:
        _dump({"key": key_to_dict(key), "secret": secret})
        return
    console = fmt.console()
    if key.is_admin:
        console.print(
            f"created [bold magenta]admin[/] key [bold cyan]{escape(key.name)}[/]: it may list, approve and deny "
            "approvals and kill runs over HTTP, and call no model",
            highlight=False,
        )
    else:
        console.print(
            f"created virtual key [bold cyan]{escape(key.name)}[/]  routes: {_routes_text(key)}  "
            f"budget: {budget_text(key.budget)}  limits: {limit_text(key.rate_limit)}",
            highlight=False,
        )
    # One line of its own, unwrapped and unstyled, so it can be copied whole.
    console.print(f"\n  {secret}\n", markup=False, highlight=False, soft_wrap=True)
    console.print(
        "[bold yellow]⚠ copy the secret now: it will not be shown again[/] "
        "[dim](tether keeps only its SHA-256 hash; if it is lost, revoke the key and create another)[/]"
    )
    for missing in _unconfigured_routes(routes):
        console.print(f"[yellow]note:[/] route {escape(missing)!r} is not defined in tether.toml (yet)")


@app.command("list")
def list_keys(
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked keys")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    database: DatabaseOption = None,
) -> None:
    """List virtual keys: name, prefix, scope, routes, budget, limits, created (revoked). Never the secrets."""
    from tether.gateway.keys import KeyStore
    from tether.store import NoStore, open_store

    try:
        store = open_store(database, create=False)
    except NoStore as exc:
        fmt.no_store(exc, as_json=as_json, empty=[])
        return
    try:
        keys = KeyStore(store).list(include_revoked=include_revoked)
    finally:
        store.close()
    if as_json:
        _dump([key_to_dict(k) for k in keys])
        return
    console = fmt.console()
    if not keys:
        hint = "" if include_revoked else " [dim](revoked keys: tether keys list --all)[/]"
        console.print(f"no virtual keys — create one with [bold]tether keys create NAME[/]{hint}")
        return
    valid = sum(1 for k in keys if k.revoked_at is None)
    title = f"{valid} valid key{'s' if valid != 1 else ''}" + (
        f", {len(keys) - valid} revoked" if len(keys) != valid else ""
    )
    # Fits 100 columns: the prefix sits under the name, dates without the time (--json has both in
    # full), the revoked column only when revoked keys are listed, and the wrapping columns share the
    # width by ratio (left to itself, Rich folds short names to make room for a long budget).
    table = Table(title=title, title_justify="left", header_style="bold", expand=True)
    table.add_column("name · prefix", overflow="fold", ratio=4)
    table.add_column("scope", no_wrap=True)
    table.add_column("routes", ratio=3)
    table.add_column("budget", ratio=3)
    table.add_column("limits", ratio=3)
    table.add_column("created", style="dim", no_wrap=True)
    if include_revoked:
        table.add_column("revoked", no_wrap=True)
    for key in keys:
        row = [
            f"[cyan]{escape(key.name)}[/]\n[dim]{escape(key.prefix)}…[/]",
            _scope_text(key),
            _routes_text(key),
            budget_text(key.budget),
            limit_text(key.rate_limit),
            key.created_at.astimezone().strftime("%Y-%m-%d") if key.created_at else "",
        ]
        if include_revoked:
            row.append(f"[red]{key.revoked_at.astimezone():%Y-%m-%d}[/]" if key.revoked_at else "[green]—[/]")
        table.add_row(*row)
    console.print(table)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="the key's name")],
    database: DatabaseOption = None,
) -> None:
    """Revoke a virtual key: gateways stop accepting it within seconds."""
    from tether.gateway.keys import DEFAULT_CACHE_TTL_S, KeyStore
    from tether.store import open_store

    store = open_store(database)
    try:
        key = KeyStore(store).revoke(name)
    finally:
        store.close()
    fmt.console().print(
        f"revoked virtual key [bold cyan]{escape(key.name)}[/] ({escape(key.prefix)}…): "
        f"every gateway stops accepting it within {DEFAULT_CACHE_TTL_S:g} s",
        highlight=False,
    )
