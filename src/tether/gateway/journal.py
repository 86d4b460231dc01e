"""The cost journal: every accepted cost record on local disk until the ``costs`` table has it.

``CostWriter`` stores records in batches from a thread, so a process killed
(``kill -9``, the OOM killer) between a call's answer and the next batch would
lose what the call cost. The journal closes that gap: each record is appended
as one line (``os.write`` on an ``O_APPEND`` file) *before* the call's answer
leaves the gateway, and forgotten once its batch is committed. The page cache
keeps the line when the process dies; ``fsync = True`` also keeps it through
a power cut, at the cost of one disk flush per call.

Files: ``<dir>/costs-<pid>-<token>-<n>.jsonl``, each held under an exclusive
``flock`` by the process that writes it, so two replicas on one host never
share one and a live replica's file is never taken by another. A file rolls
over every ``segment_records`` lines; a file whose every line is stored is
deleted (the live one is truncated instead). At start-up ``adopt`` takes every
file no live process holds (left by a process that died) and hands back its
records; they are stored again under the same ids, and ``costs`` ignores a
row whose id it has (insert-or-ignore), so replaying twice stores once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

import orjson

from tether.messages import Usage
from tether.pricing import CostRecord

__all__ = ["DEFAULT_SEGMENT_RECORDS", "CostJournal", "JournalEntry", "Segment"]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_RECORDS: Final = 4096
_PATTERN: Final = "costs-*.jsonl"


@dataclass(eq=False)
class Segment:
    """One journal file and how many of its lines are not stored yet."""

    path: Path
    fd: int
    outstanding: int = 0
    lines: int = 0
    closed: bool = False  # rolled over (or adopted): it takes no more lines


@dataclass(slots=True)
class JournalEntry:
    """A cost record with the id its ``costs`` row gets, and the journal file that holds it (if any)."""

    id: str
    record: CostRecord
    segment: Segment | None = field(default=None)


def _encode(entry_id: str, record: CostRecord) -> bytes:
    usage = record.usage
    return (
        orjson.dumps(
            [
                entry_id,
                record.time_ns,
                record.route,
                record.deployment,
                record.provider,
                record.model,
                record.agent,
                record.key,
                record.run_id,
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
                None if record.cost_usd is None else str(record.cost_usd),
                record.price_version,
            ]
        )
        + b"\n"
    )


def _decode(line: bytes) -> tuple[str, CostRecord]:
    (
        entry_id,
        time_ns,
        route,
        deployment,
        provider,
        model,
        agent,
        key,
        run_id,
        input_tokens,
        output_tokens,
        cache_read,
        cache_write,
        cost,
        price_version,
    ) = orjson.loads(line)
    if not isinstance(entry_id, str) or not entry_id:
        raise ValueError("no id")
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    record = CostRecord(
        time_ns=time_ns,
        route=route,
        deployment=deployment,
        provider=provider,
        model=model,
        agent=agent,
        key=key,
        run_id=run_id,
        usage=usage,
        cost_usd=None if cost is None else Decimal(cost),
        price_version=price_version,
    )
    return entry_id, record


class CostJournal:
    """Append-only files of the cost records not stored yet; see the module docstring.

    Args:
        directory: where the files are (created if missing); one per host and store is enough:
            every process takes files of its own.
        fsync: flush each line to disk before the call's answer (survives a power cut; costs a disk flush).
        segment_records: lines per file before it rolls over.

    Raises:
        OSError: the directory cannot be created or written.
    """

    def __init__(self, directory: str | Path, *, fsync: bool = False, segment_records: int = DEFAULT_SEGMENT_RECORDS):
        if segment_records < 1:
            raise ValueError(f"segment_records must be at least 1, got {segment_records}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._segment_records = segment_records
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._serial = 0
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        self._closed = False
        self._failing = False
        self._active = self._new_segment()

    @property
    def files(self) -> list[Path]:
        """The journal files this process holds."""
        with self._lock:
            return [segment.path for segment in self._segments]

    @property
    def outstanding(self) -> int:
        """Lines of this process's files not stored yet."""
        with self._lock:
            return sum(segment.outstanding for segment in self._segments)

    def _new_segment(self) -> Segment:
        self._serial += 1
        final = self.directory / f"costs-{self._token}-{self._serial}.jsonl"
        partial = final.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # Locked before it has its real name, so no other process can adopt it in between.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(partial, final)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        segment = Segment(final, fd)
        self._segments.append(segment)
        return segment

    def adopt(self) -> list[JournalEntry]:
        """Take every journal file no live process holds, and return the records in them to store again.

        A file stays on disk (held by this process) until its records are stored; an unreadable line is
        skipped with a warning.
        """
        entries: list[JournalEntry] = []
        for path in sorted(self.directory.glob(_PATTERN)):
            with self._lock:
                if any(segment.path == path for segment in self._segments):
                    continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # stored and deleted by its owner meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live process holds it
            if not path.exists():
                os.close(fd)  # deleted between our open and our lock: nothing left in it
                continue
            with open(fd, "rb", closefd=False) as file:
                data = file.read()
            segment = Segment(path, fd, closed=True)
            found = 0
            for number, line in enumerate(data.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry_id, record = _decode(line)
                except (ValueError, TypeError, InvalidOperation, orjson.JSONDecodeError) as exc:
                    logger.warning("tether: skipping unreadable line %d of cost journal %s: %s", number, path, exc)
                    continue
                entries.append(JournalEntry(entry_id, record, segment))
                found += 1
            segment.lines = segment.outstanding = found
            with self._lock:
                self._segments.append(segment)
                if not found:
                    self._drop(segment)
        if entries:
            logger.warning(
                "tether: %d cost record(s) left in the journal by a process that stopped are being stored",
                len(entries),
            )
        return entries

    def append(self, entry_id: str, record: CostRecord) -> Segment | None:
        """Write one record's line; returns its file, or None when it could not be written (logged)."""
        line = _encode(entry_id, record)
        with self._lock:
            if self._closed:
                return None
            segment = self._active
            try:
                if segment.lines >= self._segment_records:
                    segment = self._roll_over()
                os.write(segment.fd, line)
                if self.fsync:
                    os.fdatasync(segment.fd)
            except OSError as exc:
                if not self._failing:
                    logger.error("tether: the cost journal in %s cannot be written: %s", self.directory, exc)
                self._failing = True
                return None
            self._failing = False
            segment.lines += 1
            segment.outstanding += 1
            return segment

    def _roll_over(self) -> Segment:
        old = self._active
        self._active = self._new_segment()
        old.closed = True
        if not old.outstanding:
            self._drop(old)
        return self._active

    def stored(self, entries: Iterable[JournalEntry]) -> None:
        """The ``costs`` table has these entries: forget their lines (files all of whose lines are stored go)."""
        with self._lock:
            touched: set[int] = set()
            done: list[Segment] = []
            for entry in entries:
                segment = entry.segment
                if segment is None:
                    continue
                entry.segment = None
                segment.outstanding -= 1
                if id(segment) not in touched:
                    touched.add(id(segment))
                    done.append(segment)
            for segment in done:
                if segment.outstanding:
                    continue
                if segment.closed:
                    self._drop(segment)
                else:
                    # The live file: every line in it is stored and no append runs (we hold the lock).
                    try:
                        os.ftruncate(segment.fd, 0)
                        segment.lines = 0
                    except OSError as exc:
                        logger.warning("tether: cannot truncate cost journal %s: %s", segment.path, exc)

    def _drop(self, segment: Segment) -> None:
        with contextlib.suppress(OSError):
            segment.path.unlink()
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        with contextlib.suppress(ValueError):
            self._segments.remove(segment)

    def close(self) -> None:
        """Release every file: those whose lines are all stored are deleted, the others stay for the next start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for segment in list(self._segments):
                if not segment.outstanding:
                    self._drop(segment)
                else:
                    with contextlib.suppress(OSError):
                        os.close(segment.fd)  # unlocks it: the next start adopts it
            kept = sum(segment.outstanding for segment in self._segments)
            self._segments.clear()
        if kept:
            logger.warning(
                "tether: %d cost record(s) are not stored yet; they stay in the journal in %s and are stored at "
                "the next start of the gateway",
                kept,
                self.directory,
            )
