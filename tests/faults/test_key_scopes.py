"""Who may approve, deny and kill: only admin keys, never a model key — against a real ``tether gateway serve``.

Keys are made by the real CLI in a child process (``tether keys create``), pending approvals through
``ApprovalStore`` as an agent's guard records them, and every answer is checked against the database:
a refused request must have changed nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.faults._support import GatewayProcess, Upstream, run_tether, tether_env, wait_until
from tether.guard.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore, StoredApproval
from tether.guard.kill import KillStore
from tether.store import TraceStore, open_store

PROVIDER_KEY = "fault-provider-key-0123456789abcdef"
NEEDS_ADMIN = "this needs an admin key: create one with tether keys create NAME --admin"
HI = [{"role": "user", "content": "hi"}]


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": f"{upstream.url}/v1", "api_key_env": "FAULT_OPENAI_KEY"},
            "ant": {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "FAULT_ANTHROPIC_KEY"},
        },
        "deployments": {
            "gpt": {"provider": "oai", "model": "gpt-4.1", "max_output_tokens": 4096},
            "claude": {"provider": "ant", "model": "claude-sonnet-4-5"},
        },
        "routes": {"fast": {"tiers": [["gpt"]]}, "smart": {"tiers": [["claude"]]}},
        "prices": {"gpt-4.1": {"input_per_mtok": 2, "output_per_mtok": 8}},
    }


def create_key(database_url: str, tmp_path: Path, name: str, *flags: str) -> str:
    """``tether keys create NAME FLAGS… --json`` in a child process; the secret it printed."""
    done = run_tether(["keys", "create", name, *flags, "--json"], env=tether_env(database_url), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["secret"])


def pending(store: TraceStore, run_id: str, agent: str, tool: str, arguments: dict[str, Any]) -> StoredApproval:
    request = ApprovalRequest(run_id, agent, tool, "call-1", arguments, "irreversible: needs a person", {})
    return ApprovalStore(store).request(request, timeout_s=600)


def bearer(secret: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"} if secret else {}


def admin_calls(client: httpx.Client, approval_id: str, secret: str | None) -> list[httpx.Response]:
    """Every admin endpoint once: list, approve, deny, kill."""
    return [
        client.get("/v1/approvals", params={"status": "all"}, headers=bearer(secret)),
        client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "looks fine"}, headers=bearer(secret)),
        client.post(f"/v1/approvals/{approval_id}/deny", headers={"x-api-key": secret} if secret else {}),
        client.post("/v1/kill", json={"all": True, "reason": "stop everything"}, headers=bearer(secret)),
    ]


def test_only_an_admin_key_lists_decides_and_kills_and_an_admin_key_calls_no_model(
    pg_url: str, tmp_path: Path, upstream: Upstream
) -> None:
    # The agent's key: one route, a $1 budget. Another agent's refund and a restart wait for a person.
    agent = create_key(pg_url, tmp_path, "support-agent", "--route", "fast", "--budget-usd", "1")
    with open_store(pg_url) as store:
        refund = pending(store, "run-billing-7", "billing", "refund", {"customer": "c-4411", "amount_usd": 950})
        restart = pending(store, "run-ops-3", "oncall", "restart_service", {"service": "db"})
    gateway = GatewayProcess(
        tmp_path / "gw",
        gateway_config(upstream),
        database_url=pg_url,
        env={"FAULT_OPENAI_KEY": PROVIDER_KEY, "FAULT_ANTHROPIC_KEY": PROVIDER_KEY},
    )
    with gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
        for answer in admin_calls(client, refund.id, agent):
            assert answer.status_code == 403, (answer.request.method, answer.request.url.path, answer.text)
            assert answer.json() == {"error": {"type": "permission_error", "message": NEEDS_ADMIN}}
            assert "c-4411" not in answer.text  # not one argument of another agent's call
        for answer in admin_calls(client, refund.id, None):
            assert answer.status_code == 401, (answer.request.method, answer.request.url.path, answer.text)
            assert answer.json()["error"]["type"] == "authentication_error"
        with open_store(pg_url) as store:
            untouched = ApprovalStore(store).get(refund.id)
            assert (untouched.status, untouched.decided_by, untouched.decided_at) == (
                ApprovalStatus.PENDING,
                None,
                None,
            )
            assert KillStore(store).list() == []
        # The agent's key still does what it is for.
        called = client.post("/v1/chat/completions", json={"model": "fast", "messages": HI}, headers=bearer(agent))
        assert called.status_code == 200, called.text
        assert upstream.requests == 1

        # A person's key, made while the gateway runs.
        admin = create_key(pg_url, tmp_path, "oncall-console", "--admin")
        listed = client.get("/v1/approvals", headers=bearer(admin))
        assert listed.status_code == 200 and [a["id"] for a in listed.json()] == [refund.id, restart.id]
        approved = client.post(f"/v1/approvals/{refund.id}/approve", json={"reason": "ok"}, headers=bearer(admin))
        assert approved.status_code == 200, approved.text
        denied = client.post(f"/v1/approvals/{restart.id}/deny", headers={"x-api-key": admin})
        assert denied.status_code == 200, denied.text
        killed = client.post("/v1/kill", json={"agent": "billing", "reason": "runbook 7"}, headers=bearer(admin))
        assert killed.status_code == 202, killed.text

        # An admin key calls no model, in either format, nor lists them.
        refusals = [
            client.post("/v1/chat/completions", json={"model": "fast", "messages": HI}, headers=bearer(admin)),
            client.post(
                "/v1/messages",
                json={"model": "smart", "max_tokens": 16, "messages": HI},
                headers={"x-api-key": admin, "anthropic-version": "2023-06-01"},
            ),
            client.get("/v1/models", headers=bearer(admin)),
        ]
        for answer in refusals:
            assert answer.status_code == 403, (answer.request.url.path, answer.text)
            assert "admin key" in answer.text and "cannot call models" in answer.text
        assert upstream.requests == 1

        revoked = run_tether(["keys", "revoke", "oncall-console"], env=tether_env(pg_url), cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        # Other processes trust a verified key for the cache TTL (5 s): the gateway must refuse it after.
        wait_until(
            lambda: client.get("/v1/approvals", headers=bearer(admin)).status_code == 401,
            timeout_s=10,
            what="the gateway to refuse the revoked admin key",
        )
        late = client.post("/v1/kill", json={"all": True}, headers=bearer(admin))
        assert late.status_code == 401, late.text

    with open_store(pg_url) as store:
        approvals = ApprovalStore(store)
        decided = approvals.get(refund.id), approvals.get(restart.id)
        kills = KillStore(store).list()
    assert [(a.status, a.decided_by) for a in decided] == [
        (ApprovalStatus.APPROVED, "key:oncall-console"),
        (ApprovalStatus.DENIED, "key:oncall-console"),
    ]
    assert [(k.target_kind, k.target, k.requested_by) for k in kills] == [("agent", "billing", "key:oncall-console")]
    assert "Traceback" not in gateway.log
