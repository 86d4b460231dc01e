"""The eval store the commands read and write, opened with a one-line error when it cannot be."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

# tether.evals (with the scorers' jsonschema and YAML, the runner's gateway and models) is imported by the
# commands that use it, so that `tether --help` and the other command groups do not wait for it.
if TYPE_CHECKING:
    from tether.evals.results import EvalStore


@contextlib.contextmanager
def _evals(database: str | None) -> Iterator[EvalStore]:
    """The evals of the store at ``database`` (the configured one when None), for one command."""
    from tether.evals.results import EvalStore
    from tether.store import open_store

    store = open_store(database)
    try:
        yield EvalStore(store)
    finally:
        store.close()
