"""The kill switch: watches runs and ends them when a kill reaches it (store, Redis, file or local)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine

from tether.errors import StoreError, UserError
from tether.guard.kill.file import _file_kill_time, _file_signature, _read_kill_file
from tether.guard.kill.record import (
    _ALL_TARGET,
    _ERROR_REPEAT_S,
    _MAX_BACKOFF_S,
    _REDIS_LINGER_S,
    _REDIS_RETRY_S,
    _REDIS_WAIT_S,
    _SETTLE_S,
    DEFAULT_OVERLAP_S,
    DEFAULT_POLL_INTERVAL_S,
    KILL_CHANNEL,
    KILL_FILE_ENV,
    Kill,
    KillSource,
    _now,
    new_kill,
    one_target,
)
from tether.guard.kill.store import KillStore

if TYPE_CHECKING:
    from tether.guard.kill.redis import KillPublisher, KillSubscription
    from tether.store import TraceStore


#: One logger for the kill switch, whichever module logs.
logger = logging.getLogger("tether.guard.kill")


class RunWatch:
    """One run under the kill switch; an async context manager (see ``KillSwitch.watch``).

    Attributes:
        run_id: the run's id.
        agent: the run's agent.
        started_at: when the watch began (UTC); kills made before it do not stop the run.
        kill: the kill that stopped the run, or None.
    """

    def __init__(self, switch: KillSwitch, run_id: str, agent: str) -> None:
        self._switch = switch
        self.run_id = run_id
        self.agent = agent
        self.started_at: datetime = _now()
        self.kill: Kill | None = None
        self._state: Literal["new", "entered", "exited"] = "new"
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelling = 0

    @property
    def killed(self) -> bool:
        """Whether a kill stopped (or refused) this run."""
        return self.kill is not None

    @property
    def reason(self) -> str | None:
        """The kill's one-line message (what, who, why), or None."""
        return self.kill.message if self.kill is not None else None

    def __repr__(self) -> str:
        return f"RunWatch(run_id={self.run_id!r}, agent={self.agent!r}, killed={self.killed})"

    async def __aenter__(self) -> RunWatch:
        if self._state != "new":
            raise RuntimeError("a RunWatch can be entered once: call KillSwitch.watch for each run")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("KillSwitch.watch must be entered from inside an asyncio task")
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._cancelling = task.cancelling()
        self._state = "entered"
        self._switch._register(self)  # sets started_at
        refusal = self._switch._refusal()
        if refusal is not None:
            self._deliver(refusal)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        # Before any await: a kill that lands from now on is dropped by _deliver.
        self._state = "exited"
        self._switch._unregister(self)
        task = self._task
        if self.kill is None or task is None:
            return False
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        absorbed = False
        if not cancelled:
            # The body ended (or failed) before an await delivered our cancel: take it here, or
            # it would hit the caller's next await after the run is over.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                absorbed = True
        # Take back our own cancel request; anything left is someone else's (a timeout, a TaskGroup, the caller).
        others = task.uncancel() > self._cancelling
        if cancelled:
            return not others
        if absorbed and others:
            raise asyncio.CancelledError
        return False

    # Called on the run's own event loop (call_soon_threadsafe, or directly from __aenter__).
    def _deliver(self, kill: Kill) -> None:
        if self._state != "entered" or self.kill is not None or self._task is None:
            return
        self.kill = kill
        self._task.cancel(msg=kill.message)

    # Called from any thread.
    def _schedule(self, kill: Kill) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run is long over
            loop.call_soon_threadsafe(self._deliver, kill)


class KillSwitch:
    """Stops watched runs when a kill names them; one per process, shared by every run.

    Args:
        store: where kills are recorded and read (a ``TraceStore``, an ``Engine``
            on a migrated database, or a ``KillStore``); None for in-process
            kills and the kill file only. The caller keeps ownership.
        kill_file: the kill file's path; None reads ``TETHER_KILL_FILE`` (no
            file when unset or empty).
        poll_interval_s: how often the store and the file are checked while a run is watched.
        overlap_s: how far back each read of the store reaches again.
        redis_url: a Redis to listen on for kills as they are recorded (``[gateway]
            redis_url`` in tether.toml): they arrive at once instead of at the next
            poll. The store is still polled. ``kill()`` publishes there too (unless
            ``store`` is a ``KillStore``, which publishes as it was told).
        redis_channel: the pub/sub channel (default ``tether:kills``).

    Raises:
        ConfigError: a Redis URL that cannot be parsed.
    """

    def __init__(
        self,
        store: TraceStore | Engine | KillStore | None = None,
        *,
        kill_file: str | os.PathLike[str] | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
        redis_url: str | None = None,
        redis_channel: str = KILL_CHANNEL,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        if not overlap_s >= 0:
            raise ValueError(f"overlap_s must be ≥ 0, got {overlap_s!r}")
        self._redis_url = redis_url or None
        self._redis_channel = redis_channel
        # Kills this switch makes are published by the KillStore it records them with: its own, made
        # here, or (a KillStore given) the caller's; without a store, by a publisher of its own.
        self._publisher: KillPublisher | None = None
        if isinstance(store, KillStore) or store is None:
            self._kills = store
            self._owns_kills = False
            if store is None and self._redis_url is not None:
                from tether.guard.kill.redis import KillPublisher

                self._publisher = KillPublisher(self._redis_url, channel=redis_channel)
        else:
            self._kills = KillStore(store, redis_url=self._redis_url, channel=redis_channel)
            self._owns_kills = True
        self._redis_display: str | None = None
        if self._redis_url is not None:
            # Imported (and the URL checked) now, not in the thread: the first watched run must not
            # wait ~0.5 s for redis-py, and a bad URL is an error here, not a log line per retry.
            from tether.guard.kill.redis import check_url

            self._redis_display = check_url(self._redis_url)
        if kill_file is None:
            kill_file = os.environ.get(KILL_FILE_ENV) or None
        self._file = Path(kill_file) if kill_file is not None else None
        self._interval = poll_interval_s
        self._overlap = timedelta(seconds=overlap_s)
        self._lock = threading.Lock()
        self._applied: dict[KillSource, int] = {}
        self._watches: set[RunWatch] = set()
        self._by_run: dict[str, set[RunWatch]] = {}
        self._by_agent: dict[str, set[RunWatch]] = {}
        self._active = threading.Event()  # set while a run is watched (or to wake the threads to stop)
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        # Store poller state (its thread only, except _seen, shared with kill() and the Redis thread).
        self._seen: dict[str, datetime] = {}
        self._last_read: datetime | None = None
        self._store_outage = _Outage()
        # Redis listener state (its thread only).
        self._redis_listening = False
        self._redis_outage = _Outage()
        self._ignored = 0
        self._ignored_logged_at: float | None = None
        # File watcher state (its thread only).
        self._file_signature: tuple[int, int, int, int] | None = None
        self._file_checked: datetime | None = None
        self._file_pending: tuple[float, list[Kill]] | None = None  # an unnamed "all", waiting to settle

    @property
    def kill_file(self) -> Path | None:
        """The kill file watched, if any."""
        return self._file

    @property
    def store_error(self) -> str | None:
        """Why the last read of the store failed, while it keeps failing; None when reads work."""
        return self._store_outage.error

    @property
    def redis_error(self) -> str | None:
        """Why listening on Redis failed, while it keeps failing; None when it works (or no Redis is used)."""
        return self._redis_outage.error

    @property
    def redis_listening(self) -> bool:
        """Whether the switch is subscribed on Redis now (only while runs are watched, and shortly after)."""
        return self._redis_listening

    @property
    def kills_applied(self) -> dict[KillSource, int]:
        """How many kills this switch has acted on, by the way each arrived first (a kill counts once)."""
        with self._lock:
            return dict(self._applied)

    @property
    def watching(self) -> int:
        """How many runs are watched now."""
        with self._lock:
            return len(self._watches)

    def __repr__(self) -> str:
        store = self._kills.url if self._kills is not None else None
        redis = f", redis={self._redis_display!r}" if self._redis_display is not None else ""
        return f"KillSwitch(store={store!r}{redis}, kill_file={str(self._file) if self._file else None!r})"

    # --- asking for kills -----------------------------------------------------------------

    def kill(
        self,
        *,
        run_id: str | None = None,
        agent: str | None = None,
        all: bool = False,  # the CLI's and the endpoint's word for it, builtin or not
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> Kill:
        """Kill a run, an agent's runs, or all runs: here at once, elsewhere within a poll (or at once, over Redis).

        Matching runs of this process are stopped first; then the kill is
        recorded in the store (if any) for every other process and replica,
        and published on Redis (if the switch or its ``KillStore`` has a URL).

        Args:
            run_id: the run to kill.
            agent: the agent whose runs to kill.
            all: kill every run.
            reason: why, for the trace and the audit.
            requested_by: who asked.

        Raises:
            UserError: not exactly one of ``run_id``, ``agent`` and ``all`` was given.
            StoreError: the kill could not be recorded (runs of this process were stopped all the same).
        """
        kind, target = one_target(run_id=run_id, agent=agent, all_runs=all)
        kill = new_kill(kind, target, reason, requested_by, source="local")
        with self._lock:
            self._seen[kill.id] = kill.created_at
        self._apply(kill)
        if self._kills is not None:
            try:
                self._kills.add(kill)
            except StoreError as exc:
                raise type(exc)(
                    f"the kill of {kill.what} stopped the runs of this process, but other processes will not see it: "
                    f"{exc}"
                ) from exc
        if self._publisher is not None:
            self._publisher.publish(kill)
        return kill

    # --- watching runs --------------------------------------------------------------------

    def watch(self, *, run_id: str, agent: str) -> RunWatch:
        """A context manager that cancels the entering task when a kill names this run.

        ::

            async with switch.watch(run_id=state.run_id, agent=self.name) as watch:
                output = await self._loop(state, tracer)
            if watch.killed:
                reason, error = StopReason.KILLED, watch.reason
        """
        if not isinstance(run_id, str) or not run_id or not isinstance(agent, str):
            raise UserError("KillSwitch.watch needs the run's id and its agent's name")
        if self._stopped.is_set():
            raise RuntimeError("this KillSwitch is closed: make a new one")
        return RunWatch(self, run_id, agent)

    def close(self) -> None:
        """Stop the threads (within ~0.1 s); runs still watched are no longer stopped by the store, Redis or the file.

        Closes the Redis connections the switch opened; a store (or ``KillStore``) given stays the caller's.
        """
        self._stopped.set()
        self._active.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._owns_kills and self._kills is not None:
            self._kills.close()
        if self._publisher is not None:
            self._publisher.close()

    def __enter__(self) -> KillSwitch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _register(self, watch: RunWatch) -> None:
        with self._lock:
            # Under the lock: a kill applied before this line was made before the run started.
            watch.started_at = _now()
            self._watches.add(watch)
            self._by_run.setdefault(watch.run_id, set()).add(watch)
            self._by_agent.setdefault(watch.agent, set()).add(watch)
            self._active.set()
            if not self._threads and not self._stopped.is_set():
                self._start_threads()

    def _unregister(self, watch: RunWatch) -> None:
        with self._lock:
            self._watches.discard(watch)
            for index, key in ((self._by_run, watch.run_id), (self._by_agent, watch.agent)):
                group = index.get(key)
                if group is not None:
                    group.discard(watch)
                    if not group:
                        del index[key]
            if not self._watches and not self._stopped.is_set():
                self._active.clear()

    def _refusal(self) -> Kill | None:
        """The kill for a run starting now: only a kill file that says ``all`` refuses new runs."""
        if self._file is None or (signature := _file_signature(self._file)) is None:
            return None
        found = _read_kill_file(self._file)
        if found is None or ("all", _ALL_TARGET) not in found[0]:
            return None
        if not found[1] and time.time_ns() - signature[1] < _SETTLE_S * 1e9:
            return None  # maybe a file being written: the watcher decides once it has settled
        by = f"kill file {self._file}"
        return new_kill("all", None, f"{by} says all: new runs are refused", by, source="file")

    def _apply(self, kill: Kill) -> None:
        with self._lock:
            if kill.target_kind == "all":
                candidates = list(self._watches)
            else:
                index = self._by_run if kill.target_kind == "run" else self._by_agent
                candidates = list(index.get(kill.target, ()))
            targets = [w for w in candidates if w.started_at <= kill.created_at and w.kill is None]
            self._applied[kill.source] = self._applied.get(kill.source, 0) + 1
        for watch in targets:
            watch._schedule(kill)

    # --- the poller threads ---------------------------------------------------------------

    def _start_threads(self) -> None:
        sources: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []
        if self._kills is not None:
            sources.append(("store", self._run, (self._poll_store,)))
        if self._file is not None:
            sources.append(("file", self._run, (self._check_file,)))
        if self._redis_url is not None:
            sources.append(("redis", self._listen, ()))
        for name, target, args in sources:
            thread = threading.Thread(target=target, args=args, name=f"tether-killswitch-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, poll: Callable[[], bool]) -> None:
        delay = self._interval
        while True:
            self._active.wait()
            if self._stopped.is_set():
                return
            began = time.monotonic()
            try:
                ok = poll()
            except Exception:  # a bug here must not stop the switch for the life of the process
                logger.exception("kill switch: unexpected error while checking for kills; retrying")
                ok = False
            delay = self._interval if ok else min(_MAX_BACKOFF_S, max(self._interval, delay * 2))
            self._stopped.wait(max(0.0, delay - (time.monotonic() - began)))

    def _earliest_start(self) -> datetime | None:
        with self._lock:
            return min((w.started_at for w in self._watches), default=None)

    def _poll_store(self) -> bool:
        assert self._kills is not None
        earliest = self._earliest_start()
        if earliest is None:
            return True
        began = _now()
        # Kills older than every watched run cannot stop any of them; those already read
        # (minus the overlap) need not be read again.
        since = earliest if self._last_read is None else max(earliest, self._last_read - self._overlap)
        try:
            found = self._kills.made_since(since)
        except Exception as exc:
            self._store_failed(exc)
            return False
        self._store_recovered()
        self._last_read = began
        with self._lock:
            fresh = [k for k in found if k.id not in self._seen]
            for kill in fresh:
                self._seen[kill.id] = kill.created_at
            horizon = since - self._overlap
            for kill_id in [i for i, made in self._seen.items() if made < horizon]:
                del self._seen[kill_id]
        for kill in fresh:
            self._apply(kill)
        return True

    def _store_failed(self, exc: Exception) -> None:
        assert self._kills is not None
        log = self._store_outage.failed(exc)
        if log is None:
            return
        if log == 0 and self._redis_url is not None:
            logger.error(
                "kill switch cannot read kills from %s: %s — kills made with 'tether kill' or POST /v1/kill reach "
                "this process only over Redis until it can (those not published there are NOT seen; the kill file "
                "and in-process kills still work); retrying",
                self._kills.url,
                self._store_outage.error,
            )
        elif log == 0:
            logger.error(
                "kill switch cannot read kills from %s: %s — kills made with 'tether kill' or POST /v1/kill are NOT "
                "seen by this process until it can (the kill file and in-process kills still work); retrying",
                self._kills.url,
                self._store_outage.error,
            )
        else:
            logger.error(
                "kill switch still cannot read kills from %s after %.0f s: %s; retrying",
                self._kills.url,
                log,
                self._store_outage.error,
            )

    def _store_recovered(self) -> None:
        lasted = self._store_outage.recovered()
        if lasted is None:
            return
        assert self._kills is not None
        logger.warning(
            "kill switch reads kills from %s again after %.1f s of failures; kills made meanwhile apply now",
            self._kills.url,
            lasted,
        )

    # --- the Redis listener ---------------------------------------------------------------

    def _listen(self) -> None:
        """The Redis thread: subscribed while runs are watched (and a little after), reconnecting with backoff."""
        from tether.guard.kill.redis import KillSubscription

        assert self._redis_url is not None
        subscription: KillSubscription | None = None
        delay = 0.0
        idle_since: float | None = None
        try:
            while not self._stopped.is_set():
                if self._active.is_set():
                    idle_since = None
                elif subscription is None:
                    self._active.wait()
                    continue
                else:
                    idle_since = idle_since if idle_since is not None else time.monotonic()
                    if time.monotonic() - idle_since >= _REDIS_LINGER_S:
                        # No run watched for a while: leave Redis alone until one is.
                        self._redis_listening = False
                        subscription.close()
                        subscription = None
                        continue
                try:
                    if subscription is None:
                        subscription = KillSubscription(self._redis_url, channel=self._redis_channel)
                        self._redis_listening = True
                        self._redis_recovered()
                    data = subscription.receive(_REDIS_WAIT_S)
                except Exception as exc:  # redis's errors, and anything else: the thread must live on
                    self._redis_listening = False
                    if subscription is not None:
                        with contextlib.suppress(Exception):
                            subscription.close()
                        subscription = None
                    self._redis_failed(exc)
                    delay = min(_MAX_BACKOFF_S, max(_REDIS_RETRY_S, delay * 2))
                    self._stopped.wait(delay)
                    continue
                delay = 0.0
                if data is not None:
                    try:
                        self._receive(data)
                    except Exception:  # a bug here must not stop the switch for the life of the process
                        logger.exception("kill switch: unexpected error while applying a kill from Redis; listening on")
        finally:
            self._redis_listening = False
            if subscription is not None:
                with contextlib.suppress(Exception):
                    subscription.close()

    def _receive(self, data: bytes) -> None:
        from tether.guard.kill.redis import decode_kill

        try:
            kill = decode_kill(data)
        except ValueError as exc:
            self._ignore(data, str(exc))
            return
        with self._lock:
            if kill.id in self._seen:
                return  # the poller (or kill(), or an earlier message) got it first
            self._seen[kill.id] = kill.created_at
            if self._kills is None:
                # No poller to forget old kills: a kill older than every watched run can stop none of them.
                horizon = min((w.started_at for w in self._watches), default=_now()) - self._overlap
                for kill_id in [i for i, made in self._seen.items() if made < horizon]:
                    del self._seen[kill_id]
        self._apply(kill)

    def _ignore(self, data: bytes, why: str) -> None:
        self._ignored += 1
        now = time.monotonic()
        if self._ignored_logged_at is not None and now - self._ignored_logged_at < _ERROR_REPEAT_S:
            return
        logger.warning(
            "kill switch ignored %d message(s) on Redis channel %s that are not kills (%s, e.g. %r): they stop nothing",
            self._ignored,
            self._redis_channel,
            why,
            data[:120],
        )
        self._ignored, self._ignored_logged_at = 0, now

    def _redis_failed(self, exc: Exception) -> None:
        log = self._redis_outage.failed(exc)
        if log is None:
            return
        backup = (
            "they arrive by the store's poll instead"
            if self._kills is not None
            else "without a store, kills made elsewhere do NOT reach this process; in-process and kill-file kills work"
        )
        if log == 0:
            logger.error(
                "kill switch cannot listen for kills on Redis %s (channel %s): %s — %s; retrying",
                self._redis_display,
                self._redis_channel,
                self._redis_outage.error,
                backup,
            )
        else:
            logger.error(
                "kill switch still cannot listen on Redis %s after %.0f s: %s; retrying (%s)",
                self._redis_display,
                log,
                self._redis_outage.error,
                backup,
            )

    def _redis_recovered(self) -> None:
        lasted = self._redis_outage.recovered()
        if lasted is None:
            return
        logger.warning(
            "kill switch listens on Redis %s again after %.1f s of failures%s",
            self._redis_display,
            lasted,
            "; kills published meanwhile came by the store's poll" if self._kills is not None else "",
        )

    def _check_file(self) -> bool:
        assert self._file is not None
        observed = _now()
        previous_check, self._file_checked = self._file_checked, observed
        signature = _file_signature(self._file)
        if signature == self._file_signature:
            pending = self._file_pending
            if pending is not None and time.monotonic() - pending[0] >= _SETTLE_S:
                self._file_pending = None
                for kill in pending[1]:
                    self._apply(kill)
            return True
        self._file_signature = signature
        self._file_pending = None
        if signature is None:
            return True
        found = _read_kill_file(self._file)
        if found is None:
            return True
        mtime_ns = signature[1]
        made = (
            _file_kill_time(datetime.fromtimestamp(mtime_ns / 1e9, UTC), previous_check, observed)
            if mtime_ns >= 0
            else observed
        )
        by = f"kill file {self._file}"
        targets, named = found
        kills = [
            replace(
                new_kill(kind, target, f"{by} names {'all runs' if kind == 'all' else f'{kind} {target}'}", by),
                id=f"file:{mtime_ns:x}",
                created_at=made,
                source="file",
            )
            for kind, target in targets
        ]
        if named:
            for kill in kills:
                self._apply(kill)
        else:
            self._file_pending = (time.monotonic(), kills)
        return True


class _Outage:
    """A source of kills that keeps failing: logged at once, again every 30 s while it lasts, and when it ends."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._since: float | None = None
        self._logged = 0.0

    def failed(self, exc: BaseException) -> float | None:
        """Note a failure: None if it should not be logged now, else how long the source has been failing (0: new)."""
        now = time.monotonic()
        self.error = str(exc) or type(exc).__name__
        if self._since is None:
            self._since = self._logged = now
            return 0.0
        if now - self._logged < _ERROR_REPEAT_S:
            return None
        self._logged = now
        return now - self._since  # ≥ 30 s: never 0

    def recovered(self) -> float | None:
        """Note a success: how long the failures lasted, or None if there were none."""
        if self._since is None:
            return None
        lasted = time.monotonic() - self._since
        self._since = self.error = None
        return lasted
