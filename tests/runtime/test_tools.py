"""@tool: JSON schema from type hints, validation, sync and async functions."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from tether.errors import ToolDefinitionError
from tether.runtime import Tool, ToolArgumentsError, ToolContext, tool
from tether.runtime.tools import render_output

CTX = ToolContext(run_id="r", agent="a", turn=1, call_id="c")


@tool
def query_logs(service: str, pattern: str = "", minutes: int = 15, level: Literal["INFO", "ERROR"] = "ERROR") -> str:
    """Search a service's recent logs.

    More detail that the model does not need.

    Args:
        service: service name, e.g. checkout.
        pattern: only lines containing this text;
            empty for all.
        minutes: how far back to look.
    """
    return f"{service}:{pattern}:{minutes}:{level}"


def test_schema_comes_from_type_hints_and_docstring() -> None:
    schema = query_logs.spec.input_schema
    assert query_logs.spec.description == "Search a service's recent logs."
    assert schema["required"] == ["service"]
    assert schema["properties"]["minutes"] == {"default": 15, "description": "how far back to look.", "type": "integer"}
    assert schema["properties"]["pattern"]["description"] == "only lines containing this text; empty for all."
    assert schema["properties"]["level"]["enum"] == ["INFO", "ERROR"]
    assert schema["additionalProperties"] is False


async def test_sync_and_async_tools_are_invoked_with_validated_arguments() -> None:
    @tool
    async def double(x: int) -> int:
        """Double x."""
        return 2 * x

    assert await query_logs.invoke({"service": "api"}, CTX) == "api::15:ERROR"
    assert await double.invoke({"x": 4}, CTX) == 8


def test_every_schema_problem_is_listed() -> None:
    with pytest.raises(ToolArgumentsError) as err:
        query_logs.validate({"minutes": "soon", "level": "DEBUG", "extra": 1})
    fields = {p.split(":")[0] for p in err.value.problems}
    assert fields == {"service", "minutes", "level", "extra"}


def test_a_parameter_without_type_hint_is_a_definition_error() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ToolDefinitionError, match="no type hint"):
        tool(untyped)


def test_a_tool_name_the_providers_reject_is_a_definition_error() -> None:
    with pytest.raises(ToolDefinitionError, match="not allowed"):
        tool(name="restart service!")(lambda: None)


def test_varargs_cannot_be_described() -> None:
    def f(*args: int) -> None:
        return None

    with pytest.raises(ToolDefinitionError, match=r"\*args"):
        tool(f)


def test_outputs_are_rendered_as_text_for_the_model() -> None:
    assert render_output("plain") == "plain"
    assert render_output({"a": [1, 2]}) == '{"a":[1,2]}'
    assert render_output({1: "x"}) == '{"1":"x"}'
    assert render_output(object()).startswith("<object")


def test_tools_made_from_one_function_again_share_its_shape_but_not_its_state() -> None:
    def make(bound: list[str], default: int = 15) -> Tool:
        def query(service: str, minutes: int = default) -> str:
            """Search logs.

            Args:
                service: the service.
                minutes: how far back.
            """
            bound.append(service)
            return service

        return Tool(query)

    first_state: list[str] = []
    second_state: list[str] = []
    first, second = make(first_state), make(second_state)
    other_default = make([], default=60)

    assert first.spec == second.spec
    assert first.spec.input_schema["properties"]["minutes"]["default"] == 15
    # Defaults are part of the schema: a closure with another default is another shape.
    assert other_default.spec.input_schema["properties"]["minutes"]["default"] == 60
    asyncio.run(second.invoke({"service": "api"}, ToolContext("r", "a", 1, "c")))
    assert (first_state, second_state) == ([], ["api"])
