"""``--app module:object``: the agents a worker (or ``tether runs submit``) loads, by import path.

A submitted run names an agent, never a pickled object: each worker builds its agents by importing
the same code. ``object`` is a ``Tether`` (its registry: every agent ``tt.agent(...)`` made), an
``AgentRegistry``, or a callable that returns one of them. The current directory is on ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from tether.app import Tether
from tether.app import open as open_tether
from tether.errors import UserError
from tether.runtime.topology import AgentRegistry

__all__ = ["AppTarget", "load_app"]


@dataclass(frozen=True, slots=True)
class AppTarget:
    """What ``--app`` named: the tether to use and the agents to run.

    Attributes:
        tt: the ``Tether`` (the app's own, or ``tether.open()`` for a bare registry).
        registry: the agents by name.
        owned: whether ``tt`` was opened here (then the caller closes it).
    """

    tt: Tether
    registry: AgentRegistry
    owned: bool


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_app(spec: str) -> AppTarget:
    """Import ``module:object`` and make it a ``AppTarget``.

    Raises:
        UserError: the spec is malformed, the module or object does not exist, importing or calling it
            failed, or it is not a Tether or an AgentRegistry (one line naming what to fix).
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"--app {spec!r} is not module:object: e.g. --app myapp:tt (a Tether or an AgentRegistry)")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(
                f"--app {spec}: no module {module_name!r} on the path (the current directory is {cwd}): "
                "run from the directory that holds it or fix the name"
            ) from None
        raise UserError(f"--app {spec}: importing {module_name} failed: {_first_line(exc)}") from None
    except Exception as exc:
        raise UserError(f"--app {spec}: importing {module_name} failed: {_first_line(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UserError(
                f"--app {spec}: {module_name} has no {attribute!r}: name a Tether or an AgentRegistry"
            ) from None
    if callable(target) and not isinstance(target, Tether | AgentRegistry):
        try:
            target = target()
        except Exception as exc:
            raise UserError(f"--app {spec}: calling {attribute}() failed: {_first_line(exc)}") from None
    if isinstance(target, Tether):
        return AppTarget(target, target.registry, owned=False)
    if isinstance(target, AgentRegistry):
        return AppTarget(open_tether(), target, owned=True)
    raise UserError(
        f"--app {spec}: {attribute} is a {type(target).__name__}, not a Tether or an AgentRegistry "
        "(or a function returning one)"
    )
