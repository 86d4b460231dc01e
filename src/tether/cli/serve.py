"""``tether serve``: tether's one server — the model API, the admin API and ops on one port.

``tether gateway serve`` is the same command under its older name. The command only parses
options; the process (start-up checks, socket, signals, drain) is ``tether.server.run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tether.cli import _format as fmt


def run_server(*, host: str | None, port: int | None, config: Path | None, no_auth: bool, database: str | None) -> None:
    """Load the settings, fill in ``[server] host/port`` for options not given, and serve."""
    from tether.config import load_settings
    from tether.server.run import serve as run

    settings = load_settings(config)
    console = fmt.console()

    def announce(bound_host: str, bound_port: int) -> None:
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        auth = "[red]OFF (--no-auth)[/]" if no_auth else "[green]on[/] (virtual keys)"
        console.print(
            f"[bold]tether gateway[/] listening on [cyan]http://{url_host}:{bound_port}[/] · "
            f"routes: {escape(', '.join(sorted(settings.routes)))} · auth: {auth}",
            soft_wrap=True,
        )
        if no_auth:
            console.print(
                "[bold red]⚠ --no-auth:[/] anyone who reaches this port can call every route and also "
                "list, approve and deny approvals and kill runs (/v1/approvals, POST /v1/kill) — "
                "local development only",
                soft_wrap=True,
            )

    run(
        settings,
        host=host if host is not None else settings.server.host,
        port=port if port is not None else settings.server.port,
        no_auth=no_auth,
        database=database,
        announce=announce,
    )


def serve(
    host: Annotated[
        str | None, typer.Option(help="address to listen on (default: [server] host, else 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="port to listen on (default: [server] port, else 4000; 0: any)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="tether.toml to read (default: ./tether.toml or TETHER_CONFIG)")
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="accept requests without a virtual key, on the admin endpoints (approvals, kill) too: "
            "local development only",
        ),
    ] = False,
    database: Annotated[
        str | None, typer.Option(help="store URL for traces, budgets, keys and costs (default: TETHER_DATABASE_URL)")
    ] = None,
) -> None:
    """Serve POST /v1/chat/completions and /v1/messages (plus /v1/models, /healthz, /readyz, /metrics, POST /v1/kill).

    Point an OpenAI SDK at http://HOST:PORT/v1, or an Anthropic SDK at
    http://HOST:PORT, with a virtual key from 'tether keys create' as the API
    key and a route name as the model. The admin endpoints (/v1/approvals,
    POST /v1/kill) take only an admin key: 'tether keys create NAME --admin'.

    Start-up is refused (exit 2) when no route is defined or a provider's
    API-key variable is not set.

    SIGTERM or Ctrl-C: requests in flight get [gateway] shutdown_grace_s to
    finish, costs and spans are stored, and the exit code is 0.
    """
    run_server(host=host, port=port, config=config, no_auth=no_auth, database=database)
