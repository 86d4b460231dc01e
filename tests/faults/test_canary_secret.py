"""A canary secret through every path, in every encoding, found nowhere — with real processes.

Three secrets, none shaped like ``sk-…``: the provider key of a real ``tether gateway serve`` (an upstream
that echoes it back in every encoding: in its answers, an ``x-request-id`` header, a mid-stream error event
and 4xx/5xx error bodies — OpenAI and Anthropic formats, streaming or not, passed through or translated);
a tool's scoped secret that a scripted model echoes, plain and base64, into the arguments of an irreversible
call waiting for approval, in an agent run on the store in a child process; and the client's virtual key.
Then every table and column of the store (reflected, not listed), both processes' logs, every OTLP payload
a loopback collector received, every client response body and header, and ``tether approvals list``
(table and ``--json``) are searched for each secret's raw, base64 (three alignments, standard and
URL-safe), URL and hex (both cases) forms.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.faults._canary import EchoingUpstream, Leaks, OtlpReceiver
from tests.faults._support import GatewayProcess, run_tether, tether_env, wait_until
from tether.gateway.keys import KeyStore
from tether.guard.approvals import ApprovalStore
from tether.store import open_store

PROVIDER_KEY = "canary-7f3a9c1e5b2d4f60a8e9c7b1d3f5a2e4"
TOOL_SECRET = "pd-canary-0b6e2f9d4c7a1e3b5d8f"
NO_BREAKER = {"consecutive_failures": 1000, "failure_rate": 1.0, "min_requests": 1000}

AGENT = textwrap.dedent(
    """
    import asyncio, base64, logging, os
    from tether.guard.approvals import ApprovalStore
    from tether.guard.audit import StoreGuardRecorder
    from tether.guard.credentials import CredentialBroker
    from tether.guard.durable import DurableRuns
    from tether.guard.guard import Guard
    from tether.guard.policy import Policy
    from tether.runtime import Agent
    from tether.runtime.tools import ToolContext, tool
    from tether.store import open_store
    from tether.testing import ScriptedModel, text_response, tool_response
    from tether.trace.setup import configure_tracing

    SECRET = os.environ["FAULT_PD_TOKEN"]  # what a leaky model knows: it echoes it
    B64 = base64.b64encode(SECRET.encode()).decode()

    @tool(risk="irreversible", secrets=["pagerduty"])
    def refund(order: str, note: str, memo: str, ctx: ToolContext) -> str:
        \"\"\"Refund an order (cannot be undone).\"\"\"
        token = ctx.secrets["pagerduty"]
        logging.getLogger("tether.fault.refund").warning("refunding %s with %s", order, token)
        return f"refunded {order} with token {token} ({base64.b64encode(token.encode()).decode()})"

    async def main() -> None:
        store = open_store(os.environ["TETHER_DATABASE_URL"])
        tracing = configure_tracing(store)
        policy = Policy.open()
        recorder = StoreGuardRecorder(store, policy)
        broker = CredentialBroker({"pagerduty": "env:FAULT_PD_TOKEN"}, {"oncall": {"refund": ["pagerduty"]}})
        guard = Guard(
            policy,
            approver=ApprovalStore(store).approver(timeout_s=120, poll_s=0.05),
            credentials=broker,
            recorder=recorder,
        )
        model = ScriptedModel(
            [
                tool_response(("refund", {"order": "A-1", "note": f"token {SECRET}", "memo": B64})),
                text_response(f"refunded A-1; the token was {SECRET} ({B64})"),
            ]
        )
        agent = Agent(
            "oncall", model, tools=[refund], guard=guard, durable=DurableRuns(store), tracer=tracing.tracer
        )
        result = await agent.run(f"refund order A-1; the pager token is {SECRET}", run_id="canary-run")
        recorder.close()
        tracing.shutdown()
        store.close()
        print("stop:", result.stop_reason.value, flush=True)

    asyncio.run(main())
    """
)


def gateway_config(upstream_url: str) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": f"{upstream_url}/v1", "api_key_env": "FAULT_OPENAI_KEY"},
            "ant": {"kind": "anthropic", "base_url": upstream_url, "api_key_env": "FAULT_ANTHROPIC_KEY"},
        },
        "deployments": {
            "gpt": {"provider": "oai", "model": "gpt-4.1", "breaker": NO_BREAKER},
            "claude": {"provider": "ant", "model": "claude-sonnet-4-5", "breaker": NO_BREAKER},
        },
        # An OpenAI client on "gpt" is passed through, on "claude" translated; an Anthropic client the other way.
        "routes": {
            "gpt": {"tiers": [["gpt"]], "retry": {"max_retries": 0}},
            "claude": {"tiers": [["claude"]], "retry": {"max_retries": 0}},
        },
        "prices": {
            "gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8},
            "claude-sonnet-4-5": {"input_per_mtok": 3, "output_per_mtok": 15},
        },
    }


def chat(gateway: GatewayProcess, key: str, api: str, route: str, stream: bool) -> tuple[int, str, str]:
    """One request; (status, body, headers as text)."""
    body: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
    if stream:
        body["stream"] = True
    if api == "openai":
        path, headers = "/v1/chat/completions", {"authorization": f"Bearer {key}"}
    else:
        path, headers = "/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gateway.url + path, json=body, headers=headers, timeout=30) as answer:
        text = answer.read().decode("utf-8", "replace")
        return answer.status_code, text, "\n".join(f"{k}: {v}" for k, v in answer.headers.multi_items())


def pending_approvals(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = "SELECT id FROM approvals WHERE status = 'pending' AND tool = 'refund'"
            return list(connection.scalars(sa.text(query)))
    finally:
        engine.dispose()


def store_texts(url: str) -> dict[str, list[str]]:
    """Every non-null value of every column of every table, as text, by ``table.column`` (reflected)."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        found: dict[str, list[str]] = {}
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                for row in connection.execute(sa.select(table)):
                    for column, value in row._mapping.items():
                        if value is not None:
                            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                            found.setdefault(f"{table.name}.{column}", []).append(text)
        return found
    finally:
        engine.dispose()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_canary_secret_appears_nowhere(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("sqlite_url" if store == "sqlite" else "pg_url"))
    with OtlpReceiver() as otlp, EchoingUpstream() as upstream:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        env = tether_env(url, FAULT_OPENAI_KEY=PROVIDER_KEY, FAULT_ANTHROPIC_KEY=PROVIDER_KEY, **otel)
        with open_store(url) as opened:  # migrates the fresh database, and holds the client's virtual key
            virtual_key = KeyStore(opened).create("canary-client")[1]
        leaks = Leaks({"provider key": PROVIDER_KEY, "tool secret": TOOL_SECRET, "virtual key": virtual_key})

        # The agent run waits for a person's approval of its irreversible call meanwhile.
        script = tmp_path / "canary_agent.py"
        script.write_text(AGENT)
        agent_log = tmp_path / "agent.log"
        with agent_log.open("wb") as log:
            agent = subprocess.Popen(
                [sys.executable, str(script)],
                env=tether_env(url, FAULT_PD_TOKEN=TOOL_SECRET, **otel),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            gateway = GatewayProcess(tmp_path / "gw", gateway_config(upstream.url), database_url=url, env=env)
            with gateway:
                cases = 0
                for failing in (None, 400, 401, 500):
                    upstream.fail_status = failing
                    for api in ("openai", "anthropic"):
                        for route in ("gpt", "claude"):
                            for stream in (False, True):
                                status, body, headers = chat(gateway, virtual_key, api, route, stream)
                                way = "passthrough" if (api == "openai") == (route == "gpt") else "translated"
                                case = f"{api} {way} {'stream' if stream else 'complete'} {failing or 200}"
                                assert status < 500 or failing is not None, f"{case}: {status} {body}"
                                leaks.search(f"response body ({case})", body)
                                leaks.search(f"response headers ({case})", headers)
                                cases += 1
                assert cases == 32 and upstream.requests == 32
                assert upstream.credentials and all(PROVIDER_KEY in c for c in upstream.credentials)

                pending = wait_until(
                    lambda: pending_approvals(url),
                    timeout_s=30,
                    what=f"the agent's refund to wait for approval (log: {agent_log})",
                )
                with ThreadPoolExecutor(2) as pool:  # two CLI processes side by side: the machine has two cores
                    table, as_json = (
                        # Wide enough that Rich folds no cell (a secret folded across lines would not be found).
                        pool.submit(
                            run_tether, ["approvals", "list", *extra], env={**env, "COLUMNS": "4000"}, cwd=tmp_path
                        )
                        for extra in ([], ["--json"])
                    )
                    listed, listed_json = table.result(), as_json.result()
                assert listed.returncode == 0 and listed_json.returncode == 0, listed.stderr + listed_json.stderr
                assert "refund" in listed.stdout
                leaks.search("tether approvals list", listed.stdout + listed.stderr)
                leaks.search("tether approvals list --json", listed_json.stdout + listed_json.stderr)
                with open_store(url) as opened:
                    ApprovalStore(opened).decide(pending[0], approve=True, by="canary-test")
                assert agent.wait(60) == 0, agent_log.read_text()
                assert "stop:" in agent_log.read_text(), agent_log.read_text()

                gateway.interrupt()  # SIGINT: flushes spans and costs (OTLP included) before exiting
                gateway.wait(30)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        leaks.search("gateway log", gateway.log)
        leaks.search("agent process log", agent_log.read_text())
        payloads = otlp.received()
        assert payloads, "no OTLP payload arrived"
        leaks.search_all("OTLP payloads", payloads)
        tables = store_texts(url)
        for where in ("spans.attributes", "checkpoints.state", "approvals.arguments", "tool_ledger.output"):
            assert tables.get(where), f"nothing was stored in {where}: the test would prove nothing"
        for where, texts in tables.items():
            leaks.search_all(f"store {where}", texts)

    print(leaks.table())
    assert not leaks.counts, leaks.table()
    # The tool really received its secret (and echoed it): the canary had every chance to leak.
    assert any("[secret:pagerduty]" in t for t in tables["tool_ledger.output"]), tables["tool_ledger.output"]
