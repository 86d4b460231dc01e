"""What is wrong with a tether.toml, one line per problem, in the file's own terms.

An unknown key is reported as that key in its table, at any depth, with a
"did you mean" when a known key is close (``difflib``); the "field required"
that a typo of a required key also causes is dropped, so the typo is what
the reader sees. Other problems name the key and the table they are in.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tether.errors import ConfigError

__all__ = ["SettingsError", "closest", "describe_errors"]


class SettingsError(ConfigError):
    """A tether.toml (or TETHER_* variable) that does not validate; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more: run `tether config check` to list them)"
        super().__init__(self.problems[0] + (more if len(self.problems) > 1 else ""))


def closest(word: str, known: typing.Iterable[str]) -> str | None:
    """The known word ``word`` is most probably a typo of, or None when none is close."""
    found = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def _inner_models(annotation: Any) -> list[Any]:
    """The types a field's value (or its dict values / list items) may be."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return [t for a in args for t in _inner_models(a)]
    if origin is dict:
        return _inner_models(args[-1]) if args else []
    if origin in (list, tuple, set, frozenset):
        return [t for a in args if a is not Ellipsis for t in _inner_models(a)]
    if origin is typing.Annotated:
        return _inner_models(args[0])
    return [annotation]


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class of the table at ``loc`` (dict keys and list indexes are stepped through)."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for candidate in current:
            fields = candidate.model_fields if isinstance(candidate, type) and issubclass(candidate, BaseModel) else {}
            if isinstance(part, str) and part in fields:
                nxt.extend(_inner_models(fields[part].annotation))
                continue
            # A dict key or list index: the candidate is already the value type.
            nxt.append(candidate)
        current = nxt
    for candidate in current:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _nest(model: type[BaseModel], table: tuple[str, ...]) -> type[BaseModel]:
    from pydantic import create_model

    for name in reversed(table):
        model = create_model(f"At_{name}", **{name: (model, ...)})  # type: ignore[call-overload]
    return model


def _table(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"[{text}]" if text else "the top level"


def _value_error(error: ErrorDetails) -> str:
    return error["msg"].removeprefix("Value error, ")


def describe_errors(
    exc: ValidationError, model: type[BaseModel], source: str, *, table: tuple[str, ...] = ()
) -> list[str]:
    """One line per problem in ``exc``, unknown keys first (``table``: where ``model`` sits in the file)."""
    errors: list[ErrorDetails] = []
    for error in exc.errors():
        errors.append({**error, "loc": (*table, *error["loc"])})
    if table:
        model = _nest(model, table)
    unknown: list[str] = []
    other: list[str] = []
    typo_of: set[tuple[tuple[int | str, ...], str]] = set()
    for error in errors:
        if error["type"] != "extra_forbidden":
            continue
        loc = tuple(error["loc"])
        name = str(loc[-1])
        where = _model_at(model, loc[:-1])
        known = list(where.model_fields) if where is not None else []
        guess = closest(name, known)
        hint = f"; did you mean {guess!r}?" if guess else (f" (known: {', '.join(known)})" if known else "")
        if guess:
            typo_of.add((loc[:-1], guess))
        unknown.append(f"{source}: unknown key {name!r} in {_table(loc[:-1])}{hint}")
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            continue
        if error["type"] == "missing" and (loc[:-1], str(loc[-1])) in typo_of:
            continue  # reported as the typo that caused it
        if not loc:
            other.append(f"{source}: {_value_error(error)}")
        elif error["type"] == "missing":
            other.append(f"{source}: {_table(loc[:-1])} needs {loc[-1]!r}")
        elif error["type"] in ("model_type", "dict_type") and len(loc) >= 1:
            other.append(f"{source}: {_table(loc)} must be a table, got {type(error['input']).__name__}")
        elif error["type"] in ("value_error", "assertion_error") and error.get("ctx") is not None:
            other.append(f"{source}: {_table(loc)}: {_value_error(error)}")
        else:
            *parent, key = loc
            got = repr(error["input"])
            got = got if len(got) <= 60 else got[:57] + "..."
            other.append(f"{source}: {key!r} in {_table(parent)}: {_value_error(error)} (got {got})")
    return unknown + other
