"""A worker-like child process for the lease tests: claims a run, writes under its fence, then waits.

Usage: ``python lease_child.py URL RUN_ID LEASE_S``. Prints one JSON line after the claim (``token``), one
(``ready``) once its first fenced writes landed, then reads a line from stdin — the test SIGSTOPs it
meanwhile, lets another process take the run over and SIGCONTs it — and tries every fenced write again,
printing which were refused (``LeaseLost``) and which were written. It holds no transaction while it waits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import orjson

from tether.guard.durable import DurableRuns
from tether.store import open_store
from tether.store.runs import LeaseLost, RunRecords, fenced


def say(**fields: object) -> None:
    sys.stdout.write(orjson.dumps(fields).decode() + "\n")
    sys.stdout.flush()


def main(url: str, run_id: str, lease_s: float) -> int:
    with open_store(url) as store:
        records, durable = RunRecords(store), DurableRuns(store)
        claim = records.claim(run_id, "child", lease_s=lease_s)
        if claim is None:
            say(error="the claim lost")
            return 1
        say(token=claim.fence.token)
        with fenced(claim.fence):
            durable.save(run_id, "support", "running", {"by": "child", "step": 1})
            durable.intend(f"{run_id}:1:c1", run_id=run_id, agent="support", tool="refund", arguments={"order": 7})
            durable.mark(f"{run_id}:1:c1", "started")
        say(ready=True)

        sys.stdin.readline()  # stopped here (SIGSTOP) past the lease; continued after a takeover

        attempts: dict[str, Callable[[], object]] = {
            "checkpoint": lambda: durable.save(run_id, "support", "finished", {"by": "child", "step": 2}),
            "mark": lambda: durable.mark(f"{run_id}:1:c1", "done", output="refunded", is_error=False),
            "intend": lambda: durable.intend(
                f"{run_id}:2:c2", run_id=run_id, agent="support", tool="refund", arguments={"order": 8}
            ),
            "finish": lambda: records.finish(
                claim.fence, stop_reason="completed", output="stale", error=None, cost_usd=None, tokens=9
            ),
        }
        outcome: dict[str, str] = {}
        with fenced(claim.fence):
            for name, attempt in attempts.items():
                try:
                    attempt()
                    outcome[name] = "written"
                except LeaseLost:
                    outcome[name] = "refused"
        outcome["renew"] = "written" if records.renew(claim.fence, "child", lease_s=lease_s) else "refused"
        say(**outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
