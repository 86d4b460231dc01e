"""``GET /v1/incidents``: the guard's incidents over HTTP, behind admin keys (the endpoint did not exist)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from starlette.applications import Starlette

from tether.gateway.keys import KeyScope, KeyStore
from tether.guard.audit import GuardStore
from tether.server.admin.incidents import incidents_route
from tether.store import open_store


def row(n: int, agent: str, status: str) -> dict[str, object]:
    return {
        "id": f"inc-{n}",
        "created_at": datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=n),
        "severity": "high",
        "kind": "injection",
        "run_id": f"run-{n}",
        "agent": agent,
        "tool": "fetch",
        "summary": f"finding {n}",
        "evidence": None,
        "trace_id": None,
        "span_id": None,
        "status": status,
    }


async def test_incidents_are_listed_newest_first_filtered_and_need_an_admin_key(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        guard = GuardStore(store)
        guard.write_incidents([row(1, "oncall", "open"), row(2, "billing", "open"), row(3, "oncall", "released")])
        keys = KeyStore(store)
        _, admin = keys.create("ops", scope=KeyScope.ADMIN)
        _, model = keys.create("agent", routes=("support",))
        app = Starlette(routes=[incidents_route(guard, keys=keys)])
        auth = {"Authorization": f"Bearer {admin}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tether") as client:
            assert (await client.get("/v1/incidents")).status_code == 401
            refused = await client.get("/v1/incidents", headers={"x-api-key": model})
            assert refused.status_code == 403 and "admin key" in refused.json()["error"]["message"]

            listed = await client.get("/v1/incidents", headers=auth)
            assert listed.status_code == 200
            assert [i["id"] for i in listed.json()] == ["inc-2", "inc-1"]  # open ones, newest first
            every = await client.get("/v1/incidents", params={"status": "all", "agent": "oncall"}, headers=auth)
            assert [i["id"] for i in every.json()] == ["inc-3", "inc-1"]
            one = await client.get("/v1/incidents", params={"status": "all", "limit": "1"}, headers=auth)
            assert [i["id"] for i in one.json()] == ["inc-3"]

            for bad in ({"status": "maybe"}, {"limit": "0"}, {"limit": "x"}, {"colour": "red"}):
                reply = await client.get("/v1/incidents", params=bad, headers=auth)
                assert reply.status_code == 400, bad
                assert reply.json()["error"]["type"] == "invalid_request"
