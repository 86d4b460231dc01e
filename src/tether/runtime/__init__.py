"""The agent runtime: the loop, tools, limits, agents calling agents and their budget tree."""

from tether.runtime.agent import Agent, RunResult, RunState, ToolCallRecord
from tether.runtime.budget_tree import BudgetNode, BudgetRefused, BudgetTree, current_budget_tree
from tether.runtime.delegation import Dispatcher, DispatchResult, ParentLink, current_dispatcher
from tether.runtime.limits import Limits
from tether.runtime.tools import Tool, ToolArgumentsError, ToolContext, tool
from tether.runtime.topology import AgentRegistry, Mesh, Supervisor, UnknownAgent

__all__ = [
    "Agent",
    "AgentRegistry",
    "BudgetNode",
    "BudgetRefused",
    "BudgetTree",
    "DispatchResult",
    "Dispatcher",
    "Limits",
    "Mesh",
    "ParentLink",
    "RunResult",
    "RunState",
    "Supervisor",
    "Tool",
    "ToolArgumentsError",
    "ToolCallRecord",
    "ToolContext",
    "UnknownAgent",
    "current_budget_tree",
    "current_dispatcher",
    "tool",
]
