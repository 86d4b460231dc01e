"""The kill switch: stop a run, an agent's runs, or every run, from anywhere, now.

Four ways to ask, one effect::

    tether kill 3f9a0c2e41d7b6a5            # a run (its full id)
    tether kill --agent oncall              # every running run of an agent
    tether kill --all --reason "incident 4411"
    curl -X POST http://gateway:4000/v1/kill -H 'authorization: Bearer tk-…' -d '{"agent": "oncall"}'
    echo agent:oncall > "$TETHER_KILL_FILE" # or just: touch "$TETHER_KILL_FILE" (= all)

The first three write a row to the store's ``kills`` table (``KillStore``),
which every process and replica on the same database reads; the file is for an
operator on the machine (and keeps working when the database does not). In
code, ``KillSwitch.kill`` does the same as the CLI and also stops matching runs
of its own process at once.

A run is watched for the length of its work::

    switch = KillSwitch(store)                     # one per process, shared by every run
    async with switch.watch(run_id=run_id, agent="oncall") as watch:
        output = await loop()                      # cancelled when a kill for it arrives
    if watch.killed:
        ...                                        # end the run with StopReason.KILLED, watch.reason

What a kill matches: a run is killed by any kill **created after the run
started** that names its run id, its agent, or all runs. A kill made before a
run starts does not stop it (``tether kill --agent X`` stops X's runs, it does
not ban X) — with one exception: while the kill file says ``all`` (or is
empty), new runs are refused too: they are killed the moment they start.

How it arrives: one poller thread per switch (not per run) reads the rows
created since its last read (``created_at >= …``, on the ``created_at``
index) every ``poll_interval_s`` (25 ms), and checks every watching run
against them in memory; a second thread ``os.stat``-s the kill file on the
same beat, so a slow or dead database never delays the file. Both idle while
no run is watched. Threads rather than an asyncio task, so one switch serves
runs on any event loop (``Agent.run_sync`` makes a new loop per run): a kill
reaches a run's loop with ``call_soon_threadsafe`` and cancels the task that
entered ``watch`` — whatever it awaits (a model call, a tool, a sleep) raises
``CancelledError`` there, and its spans end as the stack unwinds, so the
partial trace is kept. Kill latency is the poll interval plus a query plus one
loop turn (measured ~15-30 ms on SQLite).

With Redis (``redis_url=``, ``[gateway] redis_url`` in tether.toml) a kill
also comes by push: ``KillStore`` publishes each kill on the pub/sub channel
``tether:kills`` once its row is committed (``tether kill`` and ``POST
/v1/kill`` do when a Redis URL is configured), and a third thread, subscribed
while runs are watched (and 1 s after), applies it as it arrives — about a
millisecond instead of a poll (``tether.guard.kill.redis``; measured on
PostgreSQL with the machine's Redis: p50 2 ms, p99 6 ms from the call that
records the kill, its insert and commit being most of it). The store stays
the source of truth and the poller keeps running: pub/sub delivers only to
whoever is subscribed at that moment, so a kill published while this switch
was disconnected, or not published at all (Redis down: the publisher logs a
warning, the kill still succeeds), arrives by the poll. Each kill is applied
once, whichever way it came first (they are told apart by id;
``kills_applied`` counts them by way). When Redis fails the thread logs an
error (again every 30 s), reports ``redis_error`` and reconnects with backoff
(up to 1 s). A message on the channel that is not a kill is logged and stops
nothing.

Cancellation follows Python 3.11's rules: the watch counts its own cancel
request and takes it back with ``Task.uncancel()`` on the way out, so an outer
``asyncio.timeout``, ``TaskGroup`` or a caller's own cancel still gets its
cancellation. ``RunWatch.__aexit__`` swallows the ``CancelledError`` only when
the kill was the only cancellation; if someone else cancelled too, it
propagates (``watch.killed`` still says the run was killed).

When the store cannot be read the switch does not go quiet: it logs an error
at once and again every 30 s while it lasts, retries with backoff (up to 1 s),
reports ``store_error``, and reads every kill made meanwhile when the store is
back (its read cursor only moves on success), so those kills still stop the
runs they name. Runs are not refused meanwhile (that would turn a database
blip into an outage); the kill file and in-process kills keep working.

Replicas compare kill times from their own clocks: keep machine clocks in sync
(NTP). Rows are re-read for ``overlap_s`` seconds (5 s) and told apart by id,
so a kill whose transaction commits late, or whose writer's clock is a little
behind, is not missed.

The kill file (``kill_file=`` or ``TETHER_KILL_FILE``): its appearance, or any
change of its modification time, size or inode, is a kill. Lines: ``all``,
``run:<id>``, ``agent:<name>``; blank lines and ``# comments`` are ignored; a
file with no valid line (empty, or unreadable) means all once it has stayed so
for 50 ms (``echo agent:x > file`` creates an empty file first). Keep it on a
local file system: a file kill counts as made at the file's modification time.
"""

from tether.guard.kill.file import parse_kill_file
from tether.guard.kill.record import (
    DEFAULT_POLL_INTERVAL_S,
    KILL_CHANNEL,
    KILL_FILE_ENV,
    Kill,
    TargetKind,
    new_kill,
    one_target,
)
from tether.guard.kill.store import KillStore
from tether.guard.kill.switch import KillSwitch, RunWatch

__all__ = [
    "DEFAULT_POLL_INTERVAL_S",
    "KILL_CHANNEL",
    "KILL_FILE_ENV",
    "Kill",
    "KillStore",
    "KillSwitch",
    "RunWatch",
    "TargetKind",
    "new_kill",
    "one_target",
    "parse_kill_file",
]
