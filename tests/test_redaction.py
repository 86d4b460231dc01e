"""The one redaction path: a leaf module, bytes and JSON scrubbed, credentials of any shape registered."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from tether.config import GatewayConfig
from tether.gateway.gateway import Gateway
from tether.guard import credentials
from tether.guard.approvals import ApprovalRequest, ApprovalStore
from tether.guard.credentials import CredentialBroker
from tether.guard.durable import DurableRuns
from tether.guard.guard import Guard
from tether.models.base import ProviderConfig, redact
from tether.redaction import Scrubber, default_scrubber, register_credential, scrubbed_json
from tether.runtime import Agent
from tether.runtime.tools import ToolContext, tool
from tether.store import open_store
from tether.testing import ScriptedModel

KEY = "canary-7f3a9c1e5b2d4f60a8e9c7b1d3f5a2e4"  # a provider key not shaped like sk-…


@pytest.fixture
def scrubber() -> Iterator[Scrubber]:
    default = default_scrubber()
    default.clear()
    yield default
    default.clear()


def test_the_module_is_a_leaf_the_gateway_reaches_without_the_guard() -> None:
    code = (
        "import sys, tether.redaction; print(sorted(m for m in sys.modules if m.startswith('tether')));"
        "import tether.server.proxy; print(sorted(m for m in sys.modules if m.startswith('tether.guard')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['tether', 'tether.errors', 'tether.redaction']", "[]"]


def test_the_credentials_module_re_exports_the_same_objects() -> None:
    assert credentials.Scrubber is Scrubber
    assert credentials.default_scrubber() is default_scrubber()


def test_bytes_are_scrubbed_only_when_they_hold_a_form(scrubber: Scrubber) -> None:
    clean = b'{"id": "x", "content": "nothing to see"}'
    assert scrubber.scrub_bytes(clean) is clean  # nothing registered
    scrubber.register("provider:oai", KEY)
    assert scrubber.scrub_bytes(clean) is clean
    b64 = base64.b64encode(KEY.encode())
    dirty = b'{"a": "' + KEY.encode() + b'", "b": "' + b64 + b'", "c": "' + KEY.encode().hex().encode() + b'"}\xff'
    out = scrubber.scrub_bytes(dirty)
    assert out == b'{"a": "[secret:provider:oai]", "b": "[secret:provider:oai]", "c": "[secret:provider:oai]"}\xff'


def test_json_is_scrubbed_value_by_value_and_stays_valid(scrubber: Scrubber) -> None:
    scrubber.register("pd", 'pd-"quoted"-token-1234')
    value = {"note": 'use pd-"quoted"-token-1234', "n": 3, "nested": [{"k": 'pd-"quoted"-token-1234'}]}
    text = scrubbed_json(value, sort_keys=True)
    assert orjson.loads(text) == {"n": 3, "nested": [{"k": "[secret:pd]"}], "note": "use [secret:pd]"}
    assert scrubbed_json({"x": "clean"}) == '{"x":"clean"}'


def test_a_credential_of_any_shape_is_registered_and_a_short_one_is_skipped_with_a_warning(
    scrubber: Scrubber, caplog: pytest.LogCaptureFixture
) -> None:
    assert register_credential("provider:my llm/1", KEY)
    assert scrubber.scrub(f"x-request-id: req-{KEY}") == "x-request-id: req-[secret:provider:my_llm_1]"
    with caplog.at_level(logging.WARNING, logger="tether.redaction"):
        assert not register_credential("provider:ollama", "ollama")
        assert not register_credential("provider:ollama", "ollama")
    assert len([r for r in caplog.records if "provider:ollama" in r.getMessage()]) == 1
    assert scrubber.scrub("ollama") == "ollama"


def test_a_provider_key_is_registered_when_read(scrubber: Scrubber, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_TEST_CANARY_KEY", KEY)
    config = ProviderConfig(base_url="http://127.0.0.1:9", api_key_env="TETHER_TEST_CANARY_KEY", name="vllm")
    assert config.api_key() == KEY
    assert scrubber.scrub(base64.b64encode(f"u:{KEY}".encode()).decode()).count("[secret:provider:vllm]") == 1
    # Errors built from an upstream's answer lose it in every encoding, not only the sk-… shape.
    assert KEY.encode().hex() not in redact(f"bad key {KEY.encode().hex()}")


def test_an_in_process_gateway_registers_its_provider_keys_at_start(
    scrubber: Scrubber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_TEST_CANARY_KEY", KEY)
    config = GatewayConfig.model_validate(
        {
            "providers": {
                "local": {
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "TETHER_TEST_CANARY_KEY",
                }
            },
            "deployments": {"d": {"provider": "local", "model": "m"}},
            "routes": {"r": {"tiers": [["d"]]}},
        }
    )
    Gateway(config)
    assert scrubber.scrub(KEY) == "[secret:provider:local]"


@tool(risk="irreversible", secrets=["pagerduty"])
def refund(order: str, ctx: ToolContext) -> str:
    """Refund an order."""
    return "refunded"


def test_an_agents_granted_secrets_are_registered_when_it_is_built(
    scrubber: Scrubber, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before any tool receives it, a value the model echoes (into a checkpoint, an approval) is known.
    monkeypatch.setenv("TETHER_TEST_PD", "pd-token-0123456789")
    broker = CredentialBroker(
        {"pagerduty": "env:TETHER_TEST_PD", "unset": "env:TETHER_TEST_UNSET"},
        {"oncall": {"refund": ["pagerduty", "unset"]}},
    )
    Agent("oncall", ScriptedModel([]), tools=[refund], guard=Guard(credentials=broker))
    assert scrubber.scrub("pd-token-0123456789") == "[secret:pagerduty]"


def test_checkpoints_the_ledger_and_approvals_are_scrubbed_when_written(scrubber: Scrubber, tmp_path: Path) -> None:
    secret = "pd-token-0123456789"
    scrubber.register("pagerduty", secret)
    b64 = base64.b64encode(secret.encode()).decode()
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        durable = DurableRuns(store)
        durable.save("r1", "oncall", "running", {"messages": [{"text": f"echo {secret} {b64}"}]})
        assert durable.load("r1").state == {"messages": [{"text": "echo [secret:pagerduty] [secret:pagerduty]"}]}
        durable.intend("k1", run_id="r1", agent="oncall", tool="refund", arguments={})
        durable.mark("k1", "failed", output=f"HandoffLoop: {secret}", is_error=True)
        assert durable.effect("k1") is not None and durable.effect("k1").output == "HandoffLoop: [secret:pagerduty]"
        approvals = ApprovalStore(store)
        request = ApprovalRequest(
            run_id="r1",
            agent="oncall",
            tool="refund",
            call_id="c1",
            arguments={"note": secret, "memo": b64},
            reason=f"irreversible ({secret})",
            context={"task": f"refund with {secret}"},
        )
        stored = approvals.request(request, timeout_s=60)
        decided = approvals.decide(stored.id, approve=False, by="me", reason=f"do not paste {b64}")
        with store.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM approvals"))]
            rows += [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM checkpoints"))]
            rows += [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM tool_ledger"))]
    text = repr(rows)
    assert secret not in text and b64 not in text
    assert decided.arguments == {"memo": "[secret:pagerduty]", "note": "[secret:pagerduty]"}
    assert decided.context == {"task": "refund with [secret:pagerduty]"}
    assert decided.decision_reason == "do not paste [secret:pagerduty]"
