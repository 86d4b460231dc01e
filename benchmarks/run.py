"""Run every benchmark and write benchmarks/RESULTS.md with the date and the machine.

Each benchmark module exposes ``run() -> list[dict]`` whose rows carry
``benchmark, metric, value, unit, target, ok, notes``.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODULES = (
    "benchmarks.instrumentation",
    "benchmarks.store_ingest",
    "benchmarks.guard",
    "benchmarks.evals",
    "benchmarks.gateway_overhead",
    "benchmarks.workers",
)
RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {system}, Python {platform.python_version()}"


def fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _previous_rows(replaced: set[str]) -> tuple[list[str], str]:
    """The table rows of RESULTS.md from benchmarks not run now, and its lines about when they were run."""
    if not RESULTS.exists():
        return [], "Earlier rows: none."
    kept, when = [], []
    for line in RESULTS.read_text().splitlines():
        if line.startswith("Run with") or (line.startswith("Rows of") and not any(n in line for n in replaced)):
            when.append(line)
        elif (
            line.startswith("| ")
            and not line.startswith(("| benchmark |", "|---"))
            and line.split("|")[1].strip() not in replaced
        ):
            kept.append(line)
    return kept, "\n\n".join(when)


def main(selected: list[str]) -> int:
    console = Console()
    rows: list[dict[str, Any]] = []
    for name in MODULES:
        if selected and not any(s in name for s in selected):
            continue
        console.print(f"[bold]running {name}…[/]")
        rows.extend(importlib.import_module(name).run())
    table = Table(title="benchmarks", header_style="bold")
    for col in ("benchmark", "metric", "value", "target", "ok"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        table.add_row(
            r["benchmark"],
            r["metric"],
            f"{fmt(r['value'])} {r['unit']}",
            r["target"],
            "[green]yes[/]" if r["ok"] else "[red]NO[/]",
        )
    console.print(table)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    kept, previous = _previous_rows({r["benchmark"] for r in rows}) if selected else ([], "")
    lines = [
        "# Benchmark results",
        "",
        f"Run with `make bench` on {when}." if not selected else previous,
        "",
        f"Machine: {machine()}.",
        "",
    ]
    if selected:
        names = ", ".join(sorted({r["benchmark"] for r in rows}))
        lines += [f"Rows of {names}: `python -m benchmarks.run {' '.join(selected)}` on {when}, same machine.", ""]
    lines += [
        "| benchmark | metric | value | target | met | notes |",
        "|---|---|---:|---|---|---|",
        *kept,
    ]
    lines += [
        f"| {r['benchmark']} | {r['metric']} | {fmt(r['value'])} {r['unit']} | {r['target']} | "
        f"{'yes' if r['ok'] else '**no**'} | {r['notes']} |"
        for r in rows
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    console.print(f"written to {RESULTS}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
