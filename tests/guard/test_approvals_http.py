"""The approvals HTTP API: list, approve, deny — once, behind the gateway's admin keys."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette

from tether.gateway.keys import KeyScope, KeyStore
from tether.guard.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore
from tether.server.admin.approvals import approval_routes
from tether.store import open_store


async def test_list_approve_deny_and_auth(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        approvals = ApprovalStore(store)
        keys = KeyStore(store)
        _, secret = keys.create("ops-console", scope=KeyScope.ADMIN)
        first, second = (
            approvals.request(
                ApprovalRequest("run-1", "oncall", "restart_service", c, {"service": "db"}, "irreversible", {}),
                timeout_s=600,
            )
            for c in ("c1", "c2")
        )
        app = Starlette(routes=approval_routes(approvals, keys=keys))
        auth = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tether") as client:
            assert (await client.get("/v1/approvals")).status_code == 401
            assert (await client.get("/v1/approvals", headers={"Authorization": "Bearer tk-nope"})).status_code == 401

            listed = await client.get("/v1/approvals", headers=auth)
            assert [a["id"] for a in listed.json()] == [first.id, second.id]

            ok = await client.post(f"/v1/approvals/{first.id}/approve", headers=auth, json={"reason": "checked"})
            assert ok.status_code == 200
            assert (ok.json()["status"], ok.json()["decided_by"]) == ("approved", "key:ops-console")
            no = await client.post(f"/v1/approvals/{second.id}/deny", headers=auth)
            assert no.status_code == 200 and no.json()["status"] == "denied"

            again = await client.post(f"/v1/approvals/{first.id}/deny", headers=auth)
            assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]
            assert (await client.post("/v1/approvals/nope/approve", headers=auth)).status_code == 404
            bad = await client.post(f"/v1/approvals/{second.id}/approve", headers=auth, content=b"[1]")
            assert bad.status_code == 400
            history = await client.get("/v1/approvals", params={"status": "all"}, headers=auth)
            assert {a["status"] for a in history.json()} == {"approved", "denied"}
            assert (await client.get("/v1/approvals", params={"status": "maybe"}, headers=auth)).status_code == 400
        assert approvals.get(first.id).status is ApprovalStatus.APPROVED


async def test_a_model_key_can_neither_list_nor_decide(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        approvals = ApprovalStore(store)
        keys = KeyStore(store)
        # The agent's own key: one route, a small budget — the key a run calls models with.
        _, agent_secret = keys.create("refund-agent", routes=("support",))
        pending = approvals.request(
            ApprovalRequest("run-1", "billing", "refund", "c1", {"amount": 900}, "irreversible", {}), timeout_s=600
        )
        app = Starlette(routes=approval_routes(approvals, keys=keys))
        auth = {"Authorization": f"Bearer {agent_secret}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tether") as client:
            answers = [
                await client.get("/v1/approvals", headers=auth),
                await client.post(f"/v1/approvals/{pending.id}/approve", headers=auth),
                await client.post(f"/v1/approvals/{pending.id}/deny", headers={"x-api-key": agent_secret}),
            ]
        for answer in answers:
            assert answer.status_code == 403
            assert answer.json() == {
                "error": {
                    "type": "permission_error",
                    "message": "this needs an admin key: create one with tether keys create NAME --admin",
                }
            }
            assert "900" not in answer.text  # nothing of anyone's pending call leaks
        assert approvals.get(pending.id).status is ApprovalStatus.PENDING
