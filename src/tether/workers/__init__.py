"""Workers: submitted runs taken off the bus and worked on any number of processes and machines.

- ``submit_run`` / ``tt.submit`` store a pending run, then publish it (``tether.workers.submit``);
- ``Worker`` works them: leases with fencing tokens, takeovers, parking, kills, re-feed
  (``tether.workers.worker``); ``tether worker --app module:object`` runs one;
- ``QueueDispatcher`` sends sub-agent calls through the queue (``tether.workers.dispatch``);
- ``collect`` / ``serve_metrics``: a worker's figures (``tether.workers.metrics``);
- ``Submitter``: ``tt.submit``'s background loop and the embedded worker (``tether.workers.embedded``).
"""

from tether.workers.dispatch import QueueDispatcher
from tether.workers.embedded import Submitter, worker_executor
from tether.workers.loading import AppTarget, load_app
from tether.workers.metrics import Metrics, collect, prometheus_text, serve_metrics
from tether.workers.stats import WorkerStats
from tether.workers.submit import (
    FINAL_STATUSES,
    WaitTimeout,
    agent_name,
    await_run,
    enqueue,
    submit_run,
    trace_headers,
    wait,
)
from tether.workers.worker import Worker, new_worker_id

__all__ = [
    "FINAL_STATUSES",
    "AppTarget",
    "Metrics",
    "QueueDispatcher",
    "Submitter",
    "WaitTimeout",
    "Worker",
    "WorkerStats",
    "agent_name",
    "await_run",
    "collect",
    "enqueue",
    "load_app",
    "new_worker_id",
    "prometheus_text",
    "serve_metrics",
    "submit_run",
    "trace_headers",
    "wait",
    "worker_executor",
]
