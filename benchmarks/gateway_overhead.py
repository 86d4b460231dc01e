"""Gateway overhead: tether's HTTP gateway against LiteLLM's proxy, side by side in one run.

Three targets take the same load, one after the other at each point, all on
loopback:

- **direct**: the mock upstream itself (``_gateway/mock_upstream.py``: raw
  asyncio protocol on uvloop, 5 ms fixed latency, realistic
  ``chat.completion`` bodies with usage incl. ``cached_tokens``, and
  ``chat.completion.chunk`` SSE streams with a usage chunk and ``[DONE]``);
- **tether**: ``tether gateway serve`` with a generated tether.toml, every
  feature on: a route with two weighted deployments and a fallback tier,
  retries, breakers, a USD budget (SQLite store via ``--database``), an
  RPM/TPM limit that never triggers, cost from genai-prices; a virtual key
  from ``tether keys create``;
- **LiteLLM**: ``litellm[proxy]`` (pinned, in its own virtual environment
  ``.bench/litellm``), one openai-compatible model whose api_base is the mock,
  a master key, no database, its default logging.

Load: wrk (one thread) with a Lua script, keep-alive connections at
concurrency 1, 16 and 64, non-streaming and streaming
(``stream_options.include_usage``); each point has a 1 s warm-up and then
runs for ``POINT_S`` seconds. Latency is wrk's, to the complete response (the
last SSE event for a stream). **Added latency** = via the proxy - direct, at
the same percentile, concurrency and regime. Note that at c=64 the direct run
drives the mock near its own limit (its p99 includes the mock's queueing), so
the added p99 there is, if anything, flattering for a slower proxy.

Memory: the proxy's VmRSS (its whole process tree) is sampled after a
warm-up at c=64 in both regimes and again after ≥ 100,000 requests have gone
through tether (the points, then c=64 non-streaming until the total is
reached, for at most ``RSS_TOPUP_MAX_S``: a proxy too slow to get there in
time fails the row, with the count it reached); "flat" means growth < 10 %
and < 20 MiB. LiteLLM's is sampled the same way after its (far fewer)
requests, for comparison.

The whole run takes about 6 minutes. Every process is started in its own
process group and stopped at the end, on error too.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks._gateway import litellm_side, tether_side
from benchmarks._gateway.load import WrkResult, check_response, lua_script, run_wrk, wrk_available
from benchmarks._gateway.procs import Server, Servers, free_port, rss_mb, wait_listening

CONCURRENCIES = (1, 16, 64)
REGIMES = ("non-streaming", "streaming")
POINT_S = float(os.environ.get("BENCH_GATEWAY_POINT_S", "8"))  # shorter for a quick check of the harness
POINT_WARMUP_S = 1.0
TARGET_WARMUP_S = 2.0
RSS_REQUESTS = 100_000
RSS_TOPUP_MAX_S = 150.0
RSS_MAX_GROWTH_PCT = 10.0
RSS_MAX_GROWTH_MB = 20.0
ADDED_P50_C1_MS = 1.0
RPS_RATIO_C64 = 5.0
P99_RATIO_C64 = 0.1
MOCK_LATENCY_MS = 5.0
UPSTREAM_KEY = "sk-mock-upstream-dummy"
BENCH = "gateway_overhead"

SYSTEM_PROMPT = (
    "You are the on-call SRE for the checkout platform. Use the tools to read logs, metrics and recent "
    "deploys before you act; never restart a production service without an approval; answer with the "
    "root cause, the evidence and the next step. "
) * 6


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": tether_side.ROUTE,  # a tether route; LiteLLM's model_name is the same
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "checkout error rate is 12% since 14:02; what happened and what now?"},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


@dataclass
class Target:
    name: str
    url: str
    secret: str | None
    server: Server | None = None
    missing: str = ""  # why it was not measured
    invalid: dict[str, str] = field(default_factory=dict)  # regime -> what a checked answer lacked
    notes: list[str] = field(default_factory=list)
    results: dict[tuple[str, int], WrkResult] = field(default_factory=dict)
    requests: int = 0
    rss: list[tuple[int, float]] = field(default_factory=list)  # (requests so far, MiB)
    store: Path | None = None  # tether's SQLite store, read at each RSS sample
    stored: list[tuple[int, int]] = field(default_factory=list)  # (spans, cost records) at each RSS sample

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.secret:
            h["Authorization"] = f"Bearer {self.secret}"
        return h

    def sample_rss(self) -> None:
        if self.server is not None and self.server.alive():
            self.rss.append((self.requests, rss_mb(self.server.pid)))
            if self.store is not None:
                self.stored.append(stored_counts(self.store))


class Bench:
    def __init__(self, workdir: Path, log: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.log = log
        self.servers = Servers(workdir)
        self.scripts: dict[tuple[str, str], Path] = {}

    # --- set-up -------------------------------------------------------------------------------
    def start_mock(self) -> Target:
        port = free_port()
        server = self.servers.start(
            "mock",
            [
                sys.executable,
                "-m",
                "benchmarks._gateway.mock_upstream",
                "--port",
                str(port),
                "--latency-ms",
                str(MOCK_LATENCY_MS),
            ],
            port,
            env=_env_with_pythonpath(),
        )
        why = wait_listening(server, 30)
        if why:
            raise RuntimeError(f"the mock upstream did not start: {why}")
        return Target("direct", f"http://127.0.0.1:{port}/v1/chat/completions", UPSTREAM_KEY, server)

    def start_tether(self, upstream_base: str) -> Target:
        target = Target("tether", "", None)
        database_url = f"sqlite:///{self.workdir / 'tether.db'}"
        target.store = self.workdir / "tether.db"
        config = self.workdir / "tether.toml"
        config.write_text(tether_side.config_toml(upstream_base, database_url))
        tether_side.check_config(config)
        env = tether_side.environment(config, database_url)
        target.missing = tether_side.serve_available(env, self.workdir)
        if target.missing:
            return target
        secret, auth_note = tether_side.create_key(env, self.workdir, database_url)
        target.secret = secret
        target.notes.append(auth_note)
        port = free_port()
        cmd = tether_side.serve_command(port, config, database_url, no_auth=secret is None)
        target.server = self.servers.start("tether", cmd, port, env=env)
        target.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        target.missing = wait_listening(target.server, 60)
        return target

    def start_litellm(self, upstream_base: str) -> Target:
        target = Target("LiteLLM", "", litellm_side.MASTER_KEY)
        self.log(f"LiteLLM {litellm_side.LITELLM_VERSION}: checking its virtual environment…")
        why = litellm_side.ensure_venv()
        if why:
            target.missing = f"LiteLLM could not be installed: {why}"
            return target
        config = self.workdir / "litellm.yaml"
        key_env = "BENCH_UPSTREAM_KEY"
        config.write_text(litellm_side.config_yaml(upstream_base, key_env))
        port = free_port()
        target.server = self.servers.start(
            "litellm", litellm_side.command(config, port), port, env=litellm_side.environment(key_env)
        )
        target.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        target.missing = wait_listening(target.server, 120)
        if not target.missing:
            target.notes.append(
                f"LiteLLM {litellm_side.LITELLM_VERSION}, master key, no database, default logging "
                f"(started in {time.monotonic() - target.server.started:.0f} s)"
            )
        return target

    def validate(self, target: Target) -> None:
        """One checked request per regime before any load: a proxy that answers badly is not benchmarked as fine."""
        for regime in REGIMES:
            stream = regime == "streaming"
            deadline = time.monotonic() + 30
            while True:
                problem = check_response(target.url, request_body(stream), target.headers(), stream)
                if not problem or time.monotonic() > deadline or problem.startswith("HTTP 4"):
                    break
                time.sleep(1)  # a server may listen before its application is ready
            target.requests += 1
            if problem:
                target.invalid[regime] = problem

    # --- load ---------------------------------------------------------------------------------
    def script(self, target: Target, regime: str) -> Path:
        key = (target.name, regime)
        if key not in self.scripts:
            path = self.workdir / f"{target.name}-{regime}.lua"
            path.write_text(lua_script(request_body(regime == "streaming"), target.headers()))
            self.scripts[key] = path
        return self.scripts[key]

    def load(self, target: Target, regime: str, c: int, seconds: float) -> WrkResult:
        result = run_wrk(target.url, self.script(target, regime), c, seconds)
        target.requests += result.requests
        return result

    def close(self) -> None:
        self.servers.stop_all()


def _env_with_pythonpath() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def stored_counts(db: Path) -> tuple[int, int]:
    """(spans, cost records) in tether's store now: how far its background writers are behind the requests."""
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
            spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            costs = conn.execute("SELECT count(*) FROM costs").fetchone()[0]
    except sqlite3.Error:
        return (-1, -1)
    return int(spans), int(costs)


def store_summary(db: Path) -> str:
    """What tether recorded, read back after it stopped: evidence that tracing, cost and budgets were on."""
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            costs, nanousd = conn.execute("SELECT count(*), coalesce(sum(cost_nanousd), 0) FROM costs").fetchone()
            budget = conn.execute("SELECT coalesce(sum(spent_nanousd), 0) FROM budget_usage").fetchone()[0]
    except sqlite3.Error as exc:
        return f"tether's store could not be read back ({exc})"
    return (
        f"tether's store after the run: {spans:,} spans, {costs:,} cost records (${nanousd / 1e9:,.4f}), "
        f"${budget / 1e9:,.4f} charged to budgets"
    )


# --- rows ---------------------------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x:.2f} ms" if not math.isnan(x) else "n/a"


def _added(via: Target, direct: Target, key: tuple[str, int]) -> tuple[float, float]:
    if key not in via.results or key not in direct.results:
        return math.nan, math.nan
    v, d = via.results[key], direct.results[key]
    return v.p50_ms - d.p50_ms, v.p99_ms - d.p99_ms


def _why_missing(t: Target, regime: str, key: tuple[str, int]) -> str:
    if t.missing:
        return t.missing
    if regime in t.invalid:
        return f"its {regime} answer was wrong: {t.invalid[regime]}"
    if key not in t.results:
        return "not measured"
    r = t.results[key]
    if not r.clean:
        return f"{r.errors} socket errors and {r.bad_status} error responses in {r.requests} requests"
    return ""


def _describe(t: Target, key: tuple[str, int], direct: Target) -> str:
    if key not in t.results:
        return f"{t.name}: missing ({_why_missing(t, key[0], key)})"
    r = t.results[key]
    a50, a99 = _added(t, direct, key) if t is not direct else (math.nan, math.nan)
    text = f"{t.name} {r.rps:,.0f} req/s, p50 {_ms(r.p50_ms)}, p99 {_ms(r.p99_ms)}"
    if t is not direct:
        text += f" (added p50 {_ms(a50)}, p99 {_ms(a99)})"
    if not r.clean:
        text += f" [{r.errors} socket errors, {r.bad_status} error responses]"
    return text


def build_rows(direct: Target, tether: Target, litellm: Target) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for regime in REGIMES:
        for c in CONCURRENCIES:
            key = (regime, c)
            t_why, l_why = _why_missing(tether, regime, key), _why_missing(litellm, regime, key)
            d_why = _why_missing(direct, regime, key)
            t = tether.results.get(key)
            lt = litellm.results.get(key)
            t_rps = t.rps if t and not t_why else math.nan
            l_rps = lt.rps if lt and not l_why else math.nan
            t50, t99 = _added(tether, direct, key) if not (t_why or d_why) else (math.nan, math.nan)
            l50, l99 = _added(litellm, direct, key) if not (l_why or d_why) else (math.nan, math.nan)
            common = "; ".join(_describe(x, key, direct) for x in (direct, tether, litellm))
            tether_ok = not t_why and not d_why

            # requests per second
            if c == 64:
                target = f">= {RPS_RATIO_C64:g}x LiteLLM"
                ok = tether_ok and not l_why and t_rps >= RPS_RATIO_C64 * l_rps
                ratio = f"tether/LiteLLM = {t_rps / l_rps:.1f}x; " if tether_ok and not l_why else ""
                notes = ratio + common
            else:
                target, ok, notes = "(info)", tether_ok, common
            rows.append(_row(f"req/s via tether, {regime}, c={c}", t_rps, "req/s", target, ok, notes))

            # added latency: p50 (target at c=1), p99 (target at c=64)
            if c == 1:
                rows.append(
                    _row(
                        f"added p50 via tether, {regime}, c=1",
                        t50,
                        "ms",
                        f"<= {ADDED_P50_C1_MS:g} ms",
                        tether_ok and t50 <= ADDED_P50_C1_MS,
                        f"tether added p99 {_ms(t99)}; LiteLLM added p50 {_ms(l50)}, p99 {_ms(l99)}; "
                        f"architecture goal: added p50 <= 0.5 ms; {common}",
                    )
                )
            elif c == 64:
                ok = tether_ok and not l_why and t99 <= P99_RATIO_C64 * l99
                rows.append(
                    _row(
                        f"added p99 via tether, {regime}, c=64",
                        t99,
                        "ms",
                        f"<= 1/{1 / P99_RATIO_C64:g} of LiteLLM's",
                        ok,
                        f"LiteLLM added p99 {_ms(l99)} (1/10 = {_ms(l99 * P99_RATIO_C64)}); tether added p50 "
                        f"{_ms(t50)}; architecture goal: >= 3,000 req/s and added p99 <= 25 ms; {common}",
                    )
                )
            else:
                rows.append(
                    _row(
                        f"added p99 via tether, {regime}, c={c}",
                        t99,
                        "ms",
                        "(info)",
                        tether_ok,
                        f"tether added p50 {_ms(t50)}; LiteLLM added p50 {_ms(l50)}, p99 {_ms(l99)}",
                    )
                )
    rows.append(_rss_row(tether, is_tether=True))
    rows.append(_rss_row(litellm, is_tether=False))
    return rows


def _rss_row(t: Target, is_tether: bool) -> dict[str, Any]:
    metric = f"RSS growth, {t.name} proxy"
    target = f"< {RSS_MAX_GROWTH_PCT:g}% and < {RSS_MAX_GROWTH_MB:g} MiB" if is_tether else "(info)"
    if t.missing or len(t.rss) < 2:
        why = t.missing or "not sampled"
        return _row(metric, math.nan, "MiB", target, False, f"missing: {why}")
    (n0, first), (n1, last) = t.rss[0], t.rss[-1]
    growth = last - first
    pct = growth / first * 100 if first else math.nan
    flat = growth < RSS_MAX_GROWTH_MB and pct < RSS_MAX_GROWTH_PCT
    trail = ", ".join(f"{mb:.0f}" for _, mb in t.rss)
    notes = (
        f"VmRSS of its process tree {first:.1f} MiB after warm-up ({n0:,} requests) -> {last:.1f} MiB after "
        f"{n1:,} requests ({pct:+.1f}%); peak {max(mb for _, mb in t.rss):.1f} MiB; samples: {trail} MiB"
    )
    if t.stored:
        # Rows the background writers still held at each sample: a growing backlog is memory too.
        backlog = ", ".join(f"{max(n - costs, 0):,}" for (n, _), (_, costs) in zip(t.rss, t.stored, strict=False))
        notes += f"; cost records not yet stored at each sample: {backlog}"
    if is_tether and n1 < RSS_REQUESTS:
        notes += f"; only {n1:,} of the {RSS_REQUESTS:,} requests went through in the time allowed"
        flat = False
    if not is_tether:
        notes += f"; {'flat' if flat else 'not flat'} by tether's criterion; LiteLLM gets far fewer requests"
    return _row(metric, growth, "MiB", target, flat if is_tether else True, notes)


def _row(metric: str, value: float, unit: str, target: str, ok: bool, notes: str) -> dict[str, Any]:
    return {
        "benchmark": BENCH,
        "metric": metric,
        "value": value,
        "unit": unit,
        "target": target,
        "ok": bool(ok),
        "notes": notes.replace("|", "/"),
    }


def _missing_rows(why: str) -> list[dict[str, Any]]:
    return [_row("gateway overhead (all points)", math.nan, "", "measured", False, f"not measured: {why}")]


# --- the run ------------------------------------------------------------------------------------
def run(log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    if wrk_available() is None:
        return _missing_rows("wrk is not installed (make bench installs it: apt-get install -y wrk)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tether-gw-bench-") as tmp:
        bench = Bench(Path(tmp), log)
        try:
            return _run(bench, log, started)
        finally:
            bench.close()


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def _run(bench: Bench, log: Callable[[str], None], started: float) -> list[dict[str, Any]]:
    load_before = _loadavg()  # other work on this 2-core machine shows up in every figure
    direct = bench.start_mock()
    upstream_base = direct.url.removesuffix("/chat/completions")
    bench.validate(direct)
    if direct.invalid:
        raise RuntimeError(f"the mock upstream answers wrongly: {direct.invalid}")
    tether = bench.start_tether(upstream_base)
    if tether.missing:
        log(f"tether: not measured: {tether.missing}")
    litellm = bench.start_litellm(upstream_base)
    if litellm.missing:
        log(f"LiteLLM: not measured: {litellm.missing}")
    proxies = [t for t in (tether, litellm) if not t.missing]
    for t in proxies:
        bench.validate(t)
        if t.invalid:
            log(f"{t.name}: answers failed the check: {t.invalid}")

    # warm-up at the highest concurrency in both regimes, then the first RSS sample
    for t in proxies:
        for regime in REGIMES:
            if regime not in t.invalid:
                bench.load(t, regime, max(CONCURRENCIES), TARGET_WARMUP_S)
        t.sample_rss()
    log(
        f"warm-up done at {time.monotonic() - started:.0f} s; RSS: "
        + ", ".join(f"{t.name} {t.rss[-1][1]:.1f} MiB" for t in proxies if t.rss)
    )

    for regime in REGIMES:
        for c in CONCURRENCIES:
            for t in (direct, *proxies):
                if regime in t.invalid or (t.server is not None and not t.server.alive()):
                    continue
                bench.load(t, regime, c, POINT_WARMUP_S)
                result = bench.load(t, regime, c, POINT_S)
                t.results[(regime, c)] = result
                log(
                    f"{regime:>13} c={c:<2} {t.name:>7}: {result.rps:8,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:8.2f} ms  errors {result.errors}/{result.bad_status}"
                )
            for t in proxies:
                t.sample_rss()

    # the rest of the 100k requests through tether, at c=64 non-streaming
    key = ("non-streaming", max(CONCURRENCIES))
    if not tether.missing and key in tether.results and tether.results[key].clean:
        deadline = time.monotonic() + RSS_TOPUP_MAX_S
        while tether.requests < RSS_REQUESTS and time.monotonic() < deadline:
            rps = max(tether.results[key].rps, 1.0)
            remaining = (RSS_REQUESTS - tether.requests) / rps * 1.05 + 1
            seconds = min(max(remaining, 1.0), deadline - time.monotonic(), 30.0)
            if seconds < 1:
                break
            bench.load(tether, *key, seconds)
            tether.sample_rss()
        log(f"tether: {tether.requests:,} requests in all; RSS {', '.join(f'{mb:.1f}' for _, mb in tether.rss)} MiB")
    for t in proxies:
        if t.server is not None and not t.server.alive():
            t.notes.append(f"the process died during the run: {t.server.log_tail()}")
    if tether.server is not None:
        bench.servers.stop(tether.server)  # flushes its span and cost writers
        tether.notes.append(store_summary(bench.workdir / "tether.db"))
    rows = build_rows(direct, tether, litellm)
    extra = "; ".join(tether.notes + litellm.notes)
    rows[0]["notes"] += (
        f"; mock upstream: {MOCK_LATENCY_MS:g} ms fixed latency; wrk -t1, {POINT_S:g} s per point after "
        f"{POINT_WARMUP_S:g} s warm-up; total run {time.monotonic() - started:.0f} s; 1-min load average "
        f"{load_before} before the run, {_loadavg()} after (wrk, mock and proxy share 2 cores); {extra}"
    ).replace("|", "/")
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
