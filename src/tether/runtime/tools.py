"""Tools from typed Python functions.

``@tool`` turns a function into a ``Tool``: its name, the first paragraph of
its docstring as the description, and a JSON schema of its parameters built by
pydantic from the type hints (parameter descriptions come from the docstring's
``Args:`` section). Sync and async functions both work; a sync function runs in
a worker thread so a slow tool cannot stall other runs on the event loop.

A parameter annotated ``ToolContext`` is filled in by the runtime and is not
shown to the model; it carries the call's identity and the credentials the
policy grants this (agent, tool) — never seen by the model.

The guard reads three declarations: ``risk`` (``read``, ``write`` or
``irreversible``: irreversible calls need a person's approval by default),
``untrusted_output`` (the tool returns content from outside — web pages, tickets,
e-mail — so the run is tainted once it has read it), and ``secrets`` (names of
the credentials the tool needs, injected at call time).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args, get_type_hints, overload

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tether.errors import ToolDefinitionError
from tether.guard.types import Risk
from tether.messages import ToolSpec

__all__ = ["Tool", "ToolArgumentsError", "ToolContext", "tool"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What the runtime tells a tool about the call it is serving.

    ``idempotency_key`` is deterministic for (run, turn, call id), so a tool
    with side effects can de-duplicate a repeated call.
    """

    run_id: str
    agent: str
    turn: int
    call_id: str
    #: The credentials this (agent, tool) is granted, by name; never shown in repr, spans or logs.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.turn}:{self.call_id}"


class ToolArgumentsError(ValueError):
    """Arguments from the model that do not fit the tool's schema."""

    def __init__(self, tool: str, problems: list[str]) -> None:
        self.tool = tool
        self.problems = problems
        super().__init__(f"arguments for {tool} do not match its schema: " + "; ".join(problems))


def _doc_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """First paragraph of a Google-style docstring, and its ``Args:`` descriptions."""
    if not doc:
        return "", {}
    text = inspect.cleandoc(doc)
    description = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    match = re.search(r"^Args:\s*\n((?:[ \t]+.*\n?)+)", text, re.MULTILINE)
    if match:
        current: str | None = None
        for line in match.group(1).splitlines():
            entry = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if entry and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = entry.group(1)
                args[current] = entry.group(2).strip()
            elif current is not None and line.strip():
                args[current] += " " + line.strip()
    return description, args


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a function's signature and docstring make of a tool: the same for every closure of one function."""

    description: str
    is_async: bool
    context_param: str | None
    args_model: type[BaseModel]
    schema: dict[str, Any]


# Building the arguments model and its JSON schema costs milliseconds (pydantic), and factories that bind
# tools to per-run state (an eval builds an agent per trial) make the same function again and again: the
# shape is kept per (code, defaults, docstring, name), which fixes everything it is made of.
_SHAPES: dict[tuple[Any, ...], _Shape] = {}
_SHAPES_MAX = 4096


def _shape_of(func: Callable[..., Any], name: str) -> _Shape:
    key: tuple[Any, ...] | None
    try:
        code = getattr(func, "__code__", None)
        kwdefaults = getattr(func, "__kwdefaults__", None)
        key = (
            code,
            getattr(func, "__defaults__", None),
            tuple(sorted(kwdefaults.items())) if kwdefaults else None,
            func.__doc__,
            name,
            id(getattr(func, "__globals__", None)),
            # Evaluated annotations may differ between closures of one function (rare, but then so does the schema).
            repr(getattr(func, "__annotations__", None)),
        )
        hash(key)
    except TypeError:  # unhashable defaults: build it every time
        key = None
    if key is not None and key[0] is not None and key in _SHAPES:
        return _SHAPES[key]
    shape = _build_shape(func, name)
    if key is not None and key[0] is not None:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = shape
    return shape


def _build_shape(func: Callable[..., Any], name: str) -> _Shape:
    doc_description, arg_docs = _doc_parts(func.__doc__)
    try:
        hints = get_type_hints(func)
    except Exception as exc:  # unresolvable forward references, typos in annotations
        raise ToolDefinitionError(f"tool {name}: cannot read its type hints ({exc})") from None
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {name}: *args/**kwargs cannot be described to a model")
        annotation = hints.get(param.name)
        if annotation is ToolContext:
            context_param = param.name
            continue
        if annotation is None:
            raise ToolDefinitionError(
                f"tool {name}: parameter {param.name!r} has no type hint; annotate it (e.g. `{param.name}: str`)"
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, Field(default, description=arg_docs.get(param.name)))
    args_model: type[BaseModel] = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    schema = args_model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return _Shape(doc_description, inspect.iscoroutinefunction(func), context_param, args_model, schema)


class Tool:
    """A function the model may call, with the schema it is validated against."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        risk: Risk = "read",
        untrusted_output: bool = False,
        secrets: Iterable[str] = (),
    ) -> None:
        self.func = func
        self.name = name or func.__name__
        if not _TOOL_NAME.match(self.name):
            raise ToolDefinitionError(f"tool name {self.name!r} is not allowed: use 1-64 letters, digits, '_' or '-'")
        if risk not in get_args(Risk):
            raise ToolDefinitionError(f"tool {self.name}: risk {risk!r} is not one of read, write, irreversible")
        self.risk: Risk = risk
        self.untrusted_output = untrusted_output
        self.secrets: tuple[str, ...] = tuple(secrets)
        shape = _shape_of(func, self.name)
        self.description = description if description is not None else shape.description
        self.is_async = shape.is_async
        self._context_param = shape.context_param
        self._args_model = shape.args_model
        self.spec = ToolSpec(name=self.name, description=self.description, input_schema=shape.schema)
        #: The ``Agent`` this tool hands tasks to, for a tool made by ``Agent.as_tool()`` (registries find
        #: the agents of a topology through it); None for any other tool. Typed ``object``: tools sit below agents.
        self.delegates_to: object | None = None

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check the model's arguments against the schema.

        Raises:
            ToolArgumentsError: listing every problem, phrased for the model.
        """
        try:
            parsed = self._args_model.model_validate(arguments)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}" for err in exc.errors()
            ]
            raise ToolArgumentsError(self.name, problems) from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Validate the arguments and run the function; returns what it returned."""
        return await self.run(self.validate(arguments), context)

    async def run(self, kwargs: dict[str, Any], context: ToolContext) -> Any:
        """Run the function on arguments ``validate`` returned (the guard decides in between)."""
        kwargs = dict(kwargs)
        if self._context_param is not None:
            kwargs[self._context_param] = context
        if self.is_async:
            return await self.func(**kwargs)
        return await asyncio.to_thread(self.func, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def render_output(value: Any) -> str:
    """What the model sees of a tool's return value."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


@overload
def tool(func: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    risk: Risk = "read",
    untrusted_output: bool = False,
    secrets: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    risk: Risk = "read",
    untrusted_output: bool = False,
    secrets: Iterable[str] = (),
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@tool`` or ``@tool(risk="irreversible", secrets=["pagerduty"])``.

    Args:
        name: the name the model sees (default: the function's).
        description: what the model is told it does (default: the docstring's first paragraph).
        risk: ``read`` (default), ``write`` or ``irreversible``; irreversible calls need approval by default.
        untrusted_output: its output comes from outside (web, tickets, e-mail): reading it taints the run.
        secrets: names of the credentials it needs, injected into ``ToolContext.secrets`` at call time.
    """
    if func is not None:
        return Tool(func)

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f, name=name, description=description, risk=risk, untrusted_output=untrusted_output, secrets=secrets
        )

    return wrap


ToolFunction = Callable[..., Any] | Callable[..., Awaitable[Any]]
