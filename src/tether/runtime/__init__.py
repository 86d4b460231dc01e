"""The agent runtime: the loop, tools and limits."""

from tether.runtime.agent import Agent, RunResult, RunState, ToolCallRecord
from tether.runtime.limits import Limits
from tether.runtime.tools import Tool, ToolArgumentsError, ToolContext, tool

__all__ = [
    "Agent",
    "Limits",
    "RunResult",
    "RunState",
    "Tool",
    "ToolArgumentsError",
    "ToolCallRecord",
    "ToolContext",
    "tool",
]
