"""A kill: what it targets, why, and when; the limits on its fields."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal, cast, get_args

from tether.errors import UserError

if TYPE_CHECKING:
    pass


#: How often the store and the kill file are checked while a run is watched.
DEFAULT_POLL_INTERVAL_S: Final = 0.025
#: How far back each read of the store reaches again (late commits, small clock skew).
DEFAULT_OVERLAP_S: Final = 5.0
#: The environment variable naming the kill file.
KILL_FILE_ENV: Final = "TETHER_KILL_FILE"
#: The Redis pub/sub channel kills are published on (see ``tether.guard.kill.redis``).
KILL_CHANNEL: Final = "tether:kills"

TargetKind = Literal["run", "agent", "all"]
KillSource = Literal["store", "redis", "file", "local"]

_TARGET_KINDS: Final = frozenset(get_args(TargetKind))
_ALL_TARGET: Final = "*"  # the ``target`` column of a kill of all runs
_MAX_TARGET: Final = 256
_MAX_REASON: Final = 1_000
_DEFAULT_REASON: Final = "no reason given"
_MAX_BACKOFF_S: Final = 1.0
_ERROR_REPEAT_S: Final = 30.0
# The Redis thread waits this long for a message at a time: how soon it notices close() or idleness.
_REDIS_WAIT_S: Final = 0.1
# ...and stays subscribed this long after the last watched run ends (runs often follow one another).
_REDIS_LINGER_S: Final = 1.0
# The first reconnection is tried this soon (a dropped connection, a Redis restart), then backs off to 1 s.
_REDIS_RETRY_S: Final = 0.05
# A file's modification time comes from a coarse kernel clock (one jiffy, 1-10 ms) that may lag
# behind time.time(): a file kill counts as made this much after its mtime, so that a run started
# just before the file was touched is not spared.
_MTIME_SLACK_S: Final = 0.02
# A file with no valid line means all, but so does a file caught between its creation and its
# first write (``echo agent:x > KILL`` truncates, then writes): such a file must stay so this long.
_SETTLE_S: Final = 0.05


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Kill:
    """One kill request.

    Attributes:
        id: unique id (32 hex characters for kills in the store; ``file:…`` for the kill file).
        target_kind: ``run``, ``agent`` or ``all``.
        target: the run id or agent name; ``*`` for all.
        reason: why, as the person who asked said it.
        requested_by: who asked (``alice@host``, ``key:ops-bot``, ``kill file …``), if known.
        created_at: when it was made (UTC); it stops runs that started at or before this moment.
        source: where this process learned of it first: ``store``, ``redis`` (pub/sub), ``file`` or
            ``local`` (``KillSwitch.kill``).
    """

    id: str
    target_kind: TargetKind
    target: str
    reason: str
    requested_by: str | None
    created_at: datetime
    source: KillSource = "store"

    def matches(self, run_id: str, agent: str) -> bool:
        """Whether it names this run, this run's agent, or all runs (whatever their start)."""
        if self.target_kind == "all":
            return True
        return self.target == (run_id if self.target_kind == "run" else agent)

    @property
    def what(self) -> str:
        """``run 3f9a…``, ``agent oncall`` or ``all runs``."""
        return "all runs" if self.target_kind == "all" else f"{self.target_kind} {self.target}"

    @property
    def message(self) -> str:
        """One line for a span, a log or a person: what, who, why."""
        by = f" by {self.requested_by}" if self.requested_by else ""
        return f"killed ({self.what}{by}): {self.reason}"

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values (the CLI's and the HTTP endpoint's answer)."""
        return {
            "id": self.id,
            "target_kind": self.target_kind,
            "target": self.target,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "created_at": self.created_at.isoformat(),
        }


def new_kill(
    target_kind: str,
    target: str | None,
    reason: str | None = None,
    requested_by: str | None = None,
    *,
    source: KillSource = "store",
    created_at: datetime | None = None,
) -> Kill:
    """A checked ``Kill`` with a fresh id, made now.

    Raises:
        UserError: the kind is not run/agent/all, or a run/agent kill has no target.
    """
    if target_kind not in _TARGET_KINDS:
        raise UserError(f"invalid kill target kind {target_kind!r}: use 'run', 'agent' or 'all'")
    kind = cast(TargetKind, target_kind)
    if kind == "all":
        target = _ALL_TARGET
    else:
        target = target.strip() if isinstance(target, str) else ""
        if not target:
            raise UserError(f"a kill of a {kind} needs the {'run id' if kind == 'run' else 'agent name'}")
        if len(target) > _MAX_TARGET:
            raise UserError(f"the {kind} to kill is longer than {_MAX_TARGET} characters: is it really a {kind}?")
    text = " ".join(reason.split()) if isinstance(reason, str) else ""
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON] + "…"
    return Kill(
        id=uuid.uuid4().hex,
        target_kind=kind,
        target=target,
        reason=text or _DEFAULT_REASON,
        requested_by=requested_by,
        created_at=created_at if created_at is not None else _now(),
        source=source,
    )


def one_target(*, run_id: str | None, agent: str | None, all_runs: bool) -> tuple[TargetKind, str | None]:
    given = [name for name, value in (("run_id", run_id), ("agent", agent), ("all", all_runs)) if value]
    if len(given) != 1:
        listed = ", ".join(given) if given else "none"
        raise UserError(f"a kill needs exactly one target — a run id, an agent, or all — got {listed}")
    if all_runs:
        return "all", None
    return ("run", run_id) if run_id else ("agent", agent)
