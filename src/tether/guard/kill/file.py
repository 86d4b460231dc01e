"""The kill file: an operator touches it to kill runs (``TETHER_KILL_FILE``)."""

from __future__ import annotations

import builtins
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tether.guard.kill.record import _ALL_TARGET, _MTIME_SLACK_S, TargetKind

if TYPE_CHECKING:
    pass


#: One logger for the kill switch, whichever module logs.
logger = logging.getLogger("tether.guard.kill")


def parse_kill_file(text: str) -> tuple[builtins.list[tuple[TargetKind, str]], builtins.list[str]]:
    """The targets a kill file names, and its lines that name none.

    No valid line at all (an empty file, only comments or nonsense) means all
    runs: whoever made the file wanted something stopped.
    """
    targets, invalid = _parse_lines(text)
    return targets or [("all", _ALL_TARGET)], invalid


def _parse_lines(text: str) -> tuple[builtins.list[tuple[TargetKind, str]], builtins.list[str]]:
    targets: list[tuple[TargetKind, str]] = []
    invalid: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, sep, target = line.partition(":")
        kind, target = kind.strip().lower(), target.strip()
        if not sep and kind == "all":
            targets.append(("all", _ALL_TARGET))
        elif sep and kind in ("run", "agent") and target:
            targets.append(("run" if kind == "run" else "agent", target))
        else:
            invalid.append(raw.strip())
    return targets, invalid


def _file_signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError:
        # It is there, we just cannot look at it properly: its presence is what counts.
        return (-1, -1, -1, -1)
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def _read_kill_file(path: Path) -> tuple[builtins.list[tuple[TargetKind, str]], bool] | None:
    """The targets the file names now, and whether it named them (False: all, for want of a valid line).

    None if the file is gone.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("kill file %s exists but cannot be read (%s): killing all runs", path, exc.strerror or exc)
        return [("all", _ALL_TARGET)], False
    targets, invalid = _parse_lines(text)
    if invalid:
        logger.warning(
            "kill file %s: ignored %d line(s) that are not 'all', 'run:<id>' or 'agent:<name>': %s",
            path,
            len(invalid),
            "; ".join(repr(line[:80]) for line in invalid[:5]),
        )
    if not targets:
        return [("all", _ALL_TARGET)], False
    return targets, True


def _file_kill_time(mtime: datetime, previous_check: datetime | None, observed: datetime) -> datetime:
    """When a change of the kill file counts as made: never later than seen, never much before its mtime."""
    slack = timedelta(seconds=_MTIME_SLACK_S)
    if previous_check is not None and mtime < previous_check - slack:
        # Older than our last look, yet changed since: a back-dated mtime (touch -d). It is news now.
        return observed
    return min(observed, mtime + slack)


# --- watching runs ------------------------------------------------------------------------------
