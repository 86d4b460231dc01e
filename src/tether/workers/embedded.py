"""``tt.submit`` from any code: a background event loop for the bus, and the embedded worker.

The bus is asynchronous and its connections belong to one event loop, while ``tt.submit`` is called
from scripts with no loop, from other loops and from threads. So each ``Tether`` that submits has one
background thread running one loop, and every bus operation of ``tt.submit`` happens there.

**Embedded default.** With the in-memory bus (no Redis configured) nothing else could take the work,
so the first ``tt.submit`` also starts one ``Worker`` on that loop, with the agents of ``tt.registry``:
``make demo`` and scripts need no Redis and no ``tether worker``, and still go through the same runs
table, leases and checkpoints. With Redis, submissions only enqueue (``tether worker`` processes run
them) unless ``[workers] embedded = true``. ``tt.close()`` stops the worker: runs in progress get a few
seconds to end, the rest stay in the runs table (pending, or released) for the next worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from tether.errors import UserError
from tether.workers.submit import agent_name, republish, submit_run

if TYPE_CHECKING:
    from tether.app import Tether
    from tether.runtime.delegation import ParentLink
    from tether.workers.worker import Worker

__all__ = ["Submitter", "worker_executor"]

logger = logging.getLogger("tether.workers")

T = TypeVar("T")


def worker_executor(concurrency: int) -> concurrent.futures.ThreadPoolExecutor:
    """A default executor big enough for a worker: each run's store writes go through ``to_thread``.

    asyncio's default (``min(32, cores + 4)`` threads: 6 on two cores) would queue the lease renewals of
    64 runs behind their checkpoints.
    """
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=min(concurrency * 2 + 8, 512), thread_name_prefix="tether-worker"
    )


class Submitter:
    """``tt.submit``'s machinery: the background loop, the embedded worker, closing both.

    Args:
        tt: the tether it submits to.
        drain_timeout_s: how long ``close`` lets runs in progress of the embedded worker end.
    """

    def __init__(self, tt: Tether, *, drain_timeout_s: float = 10.0) -> None:
        self._tt = tt
        self._drain_timeout_s = drain_timeout_s
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._worker_done: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._closed = False
        self._bus: Any = None

    @property
    def embedded(self) -> bool:
        """Whether submissions are worked in this process (``[workers] embedded``; default: on the memory bus only)."""
        configured = self._tt.settings.workers.embedded
        return configured if configured is not None else self._tt.bus.kind == "memory"

    @property
    def worker(self) -> Worker | None:
        """The embedded worker, once started."""
        return self._worker

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise UserError("this tether was closed: call tether.open() again to submit runs")
            if self._loop is None:
                self._bus = self._tt.bus
                loop = asyncio.new_event_loop()
                loop.set_default_executor(worker_executor(self._tt.settings.workers.concurrency))
                thread = threading.Thread(target=loop.run_forever, name="tether-submit", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._ensure_loop()
        if self._thread is threading.current_thread():
            coroutine.close()
            raise RuntimeError("tt.submit was called on tether's own loop: use the run's dispatcher or await asubmit")
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def start_worker(self) -> Worker:
        """Start the embedded worker (once), with the agents of ``tt.registry``."""
        from tether.workers.worker import Worker

        loop = self._ensure_loop()
        with self._lock:
            if self._worker is not None:
                return self._worker
            worker = Worker(self._tt, self._tt.registry, worker_id=None, drain_timeout_s=self._drain_timeout_s)

            async def start() -> asyncio.Event:
                return asyncio.Event()

            self._stop = asyncio.run_coroutine_threadsafe(start(), loop).result()
            self._worker = worker
            self._worker_done = asyncio.run_coroutine_threadsafe(self._work(worker, self._stop), loop)
            return worker

    @staticmethod
    async def _work(worker: Worker, stop: asyncio.Event) -> None:
        try:
            await worker.run(stop=stop)
        except Exception:
            logger.exception("tether: the embedded worker stopped on an error")
            raise

    def _prepare(self, target: Any) -> str:
        """The agent's name; an agent object is registered. Unknown names are refused where this process works them.

        With workers elsewhere (Redis, not embedded) a bare name is taken as given: the workers' registry
        decides, and a name none of them knows is dead-lettered after ``max_failures``.
        """
        name = agent_name(target)
        registry = self._tt.registry
        if not isinstance(target, str) and name not in registry:
            registry.register(target)
        embedded = self.embedded
        if embedded and name not in registry:
            known = ", ".join(sorted(registry.names())) or "none yet"
            raise UserError(
                f"no agent named {name!r} to submit to (known: {known}): make it with tt.agent(...) "
                "or register it in tt.registry first"
            )
        if embedded:
            self.start_worker()
        return name

    def submit(self, target: Any, task: str, *, run_id: str | None = None, parent: ParentLink | None = None) -> str:
        """Store the run as pending, publish it, return its id (see ``tether.workers.submit``)."""
        name = self._prepare(target)
        tt = self._tt
        record, _ = self._call(
            submit_run(tt.runs, tt.bus, tt.tracer, name, task, run_id=run_id, parent=parent)
        ).result()
        return record.run_id

    async def asubmit(
        self, target: Any, task: str, *, run_id: str | None = None, parent: ParentLink | None = None
    ) -> str:
        """``submit`` from async code (the bus work still happens on tether's loop)."""
        name = await asyncio.to_thread(self._prepare, target)
        tt = self._tt
        future = self._call(submit_run(tt.runs, tt.bus, tt.tracer, name, task, run_id=run_id, parent=parent))
        record, _ = await asyncio.wrap_future(future)
        return record.run_id

    def republish(self, run_ids: list[str], *, timeout_s: float = 10.0) -> int:
        """Publish runs an approval decision moved back to ``pending``, so a worker resumes them at once."""
        tt = self._tt
        return self._call(republish(tt.runs, tt.bus, list(run_ids))).result(timeout=timeout_s)

    def close(self) -> None:
        """Stop the embedded worker (runs in progress get ``drain_timeout_s``), close the bus, end the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stop is not None and self._worker_done is not None:
            loop.call_soon_threadsafe(self._stop.set)
            try:
                self._worker_done.result(timeout=self._drain_timeout_s + 15)
            except Exception as exc:
                logger.error("tether: stopping the embedded worker failed: %s", exc)
        try:
            asyncio.run_coroutine_threadsafe(self._bus.close(), loop).result(timeout=10)
        except Exception as exc:
            logger.error("tether: closing the bus failed: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
