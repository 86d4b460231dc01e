"""What one worker does now (``Worker.stats()``); the queue's figures are added by ``tether.workers.metrics``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["WorkerStats"]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What one worker does now.

    Attributes:
        worker_id: its id.
        status: ``starting``, ``running``, ``draining`` or ``stopped``.
        concurrency: runs it works at once at most.
        running: runs it holds the lease of now.
        waiting: deliveries it holds for an agent whose limit is full.
        agents: running runs per agent.
        agent_limits: the per-agent limits.
        counts: how its runs ended so far, by stop reason (and ``dead_lettered``, ``lease_lost``,
            ``released``, ``deferred``).
        refeeds: runs it published again because the stream had lost them.
    """

    worker_id: str
    status: str
    concurrency: int
    running: int
    waiting: int
    agents: Mapping[str, int] = field(default_factory=dict)
    agent_limits: Mapping[str, int] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    refeeds: int = 0
