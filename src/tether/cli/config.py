"""``tether config check``: validate tether.toml and show what tether will run with.

Beyond the schema (every unknown key, missing key and value of the wrong kind, each
on its own line), it reports what would only fail when serving: a provider kind no
adapter is registered for, a provider whose API-key variable is not set, and no routes
(a warning: the model API would answer nothing). Exit 0 when valid (warnings
allowed), 1 with every problem listed when not. Secrets are never shown: a key is
named by its variable, and a password in a URL is masked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import typer
from rich.markup import escape

from tether.cli import _format as fmt
from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.config import Settings

__all__ = ["app", "check"]

app = typer.Typer(help="Check tether.toml and show the configuration tether resolves from it.", no_args_is_help=True)


def mask_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (the user name and the rest kept)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _resolve(settings: Settings) -> tuple[dict[str, Any], list[str], list[str]]:
    """The resolved configuration as plain data, the errors and the warnings."""
    from tether.models.registry import provider_spec, unknown_kind

    errors: list[str] = []
    warnings: list[str] = []
    providers: dict[str, Any] = {}
    for name, provider in settings.providers.items():
        problem = unknown_kind(provider.kind)
        if problem is not None:
            errors.append(f"[providers.{name}] {problem}")
            providers[name] = {"kind": provider.kind, "base_url": provider.base_url, "key_env": None, "key_set": None}
            continue
        spec = provider_spec(provider.kind)
        key_env = spec.key_env(provider)
        key_set = bool(os.environ.get(key_env)) if key_env else None
        if key_env and not key_set:
            errors.append(
                f"[providers.{name}] its API key variable {key_env} is not set: export it before `tether serve` "
                "(or set api_key_env to the variable that holds it)"
            )
        providers[name] = {
            "kind": provider.kind,
            "wire": spec.wire,
            "base_url": spec.base_url(provider),
            "key_env": key_env,
            "key_set": key_set,
        }
    if not settings.routes:
        warnings.append("no [routes]: the model API will answer nothing (add a [routes.<name>] with tiers)")
    data: dict[str, Any] = {
        "source": settings.source,
        "providers": providers,
        "deployments": {
            name: {"provider": d.provider, "model": d.model, "weight": d.weight}
            for name, d in settings.deployments.items()
        },
        "routes": {name: {"tiers": r.tiers} for name, r in settings.routes.items()},
        "store": {"url": mask_url(settings.store.url)},
        "gateway": {
            "redis_url": mask_url(settings.gateway.redis_url),
            "default_route": settings.gateway.default_route,
            "budgets": settings.gateway.budgets,
        },
        "server": {"host": settings.server.host, "port": settings.server.port},
        "guard": {"agents": sorted(settings.guard.agents)},
    }
    return data, errors, warnings


def _print_summary(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = fmt.console()
    console.print(f"[bold]{escape(str(data['source']))}[/]", highlight=False)
    if data["providers"]:
        table = Table(title="providers", title_justify="left", expand=False)
        for column in ("name", "kind", "base URL", "key variable", "set"):
            table.add_column(column, overflow="fold")
        for name, p in data["providers"].items():
            key_set = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[p["key_set"]]
            table.add_row(escape(name), escape(p["kind"]), escape(p["base_url"] or "-"), p["key_env"] or "-", key_set)
        console.print(table)
    if data["deployments"]:
        table = Table(title="deployments", title_justify="left")
        for column in ("name", "provider", "model", "weight"):
            table.add_column(column, overflow="fold")
        for name, d in data["deployments"].items():
            table.add_row(escape(name), escape(d["provider"]), escape(d["model"]), f"{d['weight']:g}")
        console.print(table)
    if data["routes"]:
        table = Table(title="routes", title_justify="left")
        table.add_column("name", overflow="fold")
        table.add_column("tiers (tried in order)", overflow="fold")
        for name, r in data["routes"].items():
            table.add_row(escape(name), escape(" → ".join(", ".join(tier) for tier in r["tiers"])))
        console.print(table)
    gateway, server = data["gateway"], data["server"]
    console.print(f"store    {escape(data['store']['url'])}", highlight=False)
    console.print(
        f"gateway  redis {escape(gateway['redis_url'] or 'none')}, budgets {gateway['budgets']}, "
        f"default route {escape(gateway['default_route'] or 'none')}",
        highlight=False,
    )
    console.print(f"server   {escape(server['host'])}:{server['port']}", highlight=False)
    if data["guard"]["agents"]:
        console.print(f"guard    agents {escape(', '.join(data['guard']['agents']))}", highlight=False)


@app.command("check")
def check(
    config: Annotated[
        Path | None, typer.Option("--config", help="The file to check (default: $TETHER_CONFIG or ./tether.toml).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON, for scripts.")] = False,
) -> None:
    """Validate tether.toml, list every problem, and print the configuration tether resolves."""
    from tether.config import SettingsError, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        _fail([*exc.problems, *_unknown_kinds(config)], as_json)
        return
    except ConfigError as exc:
        _fail([str(exc)], as_json)
        return
    data, errors, warnings = _resolve(settings)
    if as_json:
        typer.echo(orjson.dumps({"valid": not errors, "errors": errors, "warnings": warnings, **data}).decode())
    else:
        _print_summary(data)
        err = fmt.console(stderr=True)
        for warning in warnings:
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        for error in errors:
            err.print(f"[bold red]error:[/] {escape(error)}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(1)


def _unknown_kinds(config: Path | None) -> list[str]:
    """Provider kinds no adapter is registered for, read from the raw file (when its schema failed)."""
    import tomllib

    from tether.models.registry import unknown_kind

    explicit = config or os.environ.get("TETHER_CONFIG")
    try:
        data = tomllib.loads(Path(explicit or "tether.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    providers = data.get("providers")
    found: list[str] = []
    for name, table in providers.items() if isinstance(providers, dict) else ():
        kind = table.get("kind") if isinstance(table, dict) else None
        problem = unknown_kind(kind) if isinstance(kind, str) and kind else None
        if problem is not None:
            found.append(f"[providers.{name}] {problem}")
    return found


def _fail(problems: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps({"valid": False, "errors": problems, "warnings": []}).decode())
    else:
        err = fmt.console(stderr=True)
        for problem in problems:
            err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
