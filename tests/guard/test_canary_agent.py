"""A canary secret through the whole agent loop: injected into the tool, echoed, raised, streamed, exported —
and found nowhere: not in the model's context, the store, exported spans or the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.guard.test_credentials import assert_nowhere
from tether.guard.credentials import CredentialBroker, Scrubber, default_scrubber
from tether.guard.guard import Guard
from tether.messages import ModelRequest, ModelResponse
from tether.runtime import Agent
from tether.runtime.tools import ToolContext, tool
from tether.store import open_store
from tether.testing import FunctionModel, text_response, tool_response
from tether.trace.setup import configure_tracing

CANARY = "tk-canary-7f3a9c2e51d84b06"
SEEN_BY_MODEL: list[str] = []


@pytest.fixture
def scrubber() -> Scrubber:
    default = default_scrubber()
    default.clear()
    yield default
    default.clear()


@tool(secrets=["pagerduty"])
def page(service: str, ctx: ToolContext) -> str:
    """Page the on-call human for a service."""
    token = ctx.secrets["pagerduty"]
    logging.getLogger("tether.demo.tools").warning("paging with %s", token)
    return f"paged {service} using token {token}"


@tool(secrets=["pagerduty"])
def broken_page(service: str, ctx: ToolContext) -> str:
    """A pager integration that fails, naming its token in the error."""
    raise RuntimeError(f"401 from pagerduty: token {ctx.secrets['pagerduty']} rejected")


@tool(secrets=["github"])
def push(branch: str, ctx: ToolContext) -> str:
    """Push a branch (its secret is not granted to this agent)."""
    return "pushed"


def model() -> FunctionModel:
    turns = iter(
        [
            tool_response(("page", {"service": "checkout"}), ("broken_page", {"service": "checkout"})),
            tool_response(("push", {"branch": "main"})),
        ]
    )

    def answer(request: ModelRequest) -> ModelResponse:
        SEEN_BY_MODEL.append(request.model_dump_json())  # everything the model is ever shown
        return next(turns, text_response("done"))

    return FunctionModel(answer)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streaming"])
@pytest.mark.parametrize("sdk", [False, True], ids=["recorder", "otlp-export"])
async def test_a_canary_secret_reaches_the_tool_and_nothing_else(
    stream: bool,
    sdk: bool,
    scrubber: Scrubber,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TETHER_TEST_PAGERDUTY", CANARY)
    monkeypatch.setenv("TETHER_TEST_GITHUB", "gh-token-not-granted-0001")
    broker = CredentialBroker(
        {"pagerduty": "env:TETHER_TEST_PAGERDUTY", "github": "env:TETHER_TEST_GITHUB"},
        {"oncall": {"page": ["pagerduty"], "broken_page": ["pagerduty"]}},
    )
    SEEN_BY_MODEL.clear()
    memory = InMemorySpanExporter()
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        tracing = configure_tracing(store, extra_exporters=[memory] if sdk else None, batch=False)
        agent = Agent(
            "oncall",
            model(),
            tools=[page, broken_page, push],
            guard=Guard(credentials=broker),
            tracer=tracing.tracer,
            stream=stream,
        )
        with caplog.at_level(logging.DEBUG):
            result = await agent.run("checkout is down: page someone")
        tracing.flush()
        tracing.shutdown()

        transcript = [m.model_dump_json() for m in result.messages]
        assert_nowhere(
            CANARY,
            store=store,
            exported=memory.get_finished_spans(),
            logs=caplog.records,
            texts=[*SEEN_BY_MODEL, *transcript, result.output, result.error or ""],
        )

    # The tool did get the secret (its output says so, with the value replaced by its name)...
    joined = "\n".join(transcript)
    assert "paged checkout using token [secret:pagerduty]" in joined
    assert "token [secret:pagerduty] rejected" in joined
    # ...and a tool whose secret is not granted to the agent never ran.
    assert "push" in joined and "not granted" in joined and "pushed" not in joined
