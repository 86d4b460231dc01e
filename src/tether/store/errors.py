"""Errors of run look-ups and of opening a store that is not there; connection failures are
``tether.errors.StoreUnavailable``."""

from __future__ import annotations

from collections.abc import Sequence

from tether.errors import StoreError

__all__ = ["AmbiguousRunId", "NoStore", "RunNotFound"]


class RunNotFound(StoreError):
    """No run has this id, or an id starting with this prefix."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found: list runs with `tether runs`")


class AmbiguousRunId(StoreError):
    """Several runs have ids starting with this prefix.

    Attributes:
        candidates: some of the matching run ids (at most ``shown``), sorted.
    """

    shown = 5

    def __init__(self, prefix: str, candidates: Sequence[str], *, more: bool = False) -> None:
        self.prefix = prefix
        self.candidates = list(candidates)
        listed = ", ".join(self.candidates[: self.shown])
        if more or len(self.candidates) > self.shown:
            listed += ", …"
        super().__init__(f"run id prefix {prefix!r} matches several runs ({listed}): give more characters of the id")


class NoStore(StoreError):
    """Opening a store read-only found no tether database there (no file, or no tether schema in it).

    Attributes:
        url: the database looked at, without its password.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"no store at {url} — run `tether demo` or set TETHER_DATABASE_URL")
