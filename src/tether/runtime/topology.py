"""Ready-made multi-agent shapes on agents-as-tools, and the registry a worker loads agents from.

Nothing here is a new engine: every shape is agents calling agents through ``Agent.as_tool()``, so
sub-runs, one trace, one budget tree (``Agent(budget_tree=...)``), handoff-bounce detection and
dispatch to other workers (``delegation.current_dispatcher``) work exactly as for hand-built trees.

* ``Supervisor`` — a star: an ``Agent`` whose tools are its workers' ``as_tool()``.
* A hierarchy — a ``Supervisor`` whose workers are themselves supervisors.
* ``Mesh`` — peers that may each hand work to any other; bounce detection stops ping-pong.
* ``AgentRegistry`` — the name → agent table a worker runs submitted runs from: registering a
  topology registers every agent inside it, so a sub-agent call sent to another worker finds its agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tether.errors import UserError
from tether.models.base import Model
from tether.runtime.agent import Agent, RunResult
from tether.runtime.delegation import ParentLink
from tether.runtime.tools import Tool

__all__ = ["AgentRegistry", "Mesh", "Supervisor", "UnknownAgent", "agents_of"]


def _summary(agent: Agent) -> str:
    first = agent.instructions.strip().split("\n", 1)[0][:200]
    return f"{agent.name}" + (f" ({first})" if first else "")


class Supervisor(Agent):
    """A star: an agent that hands parts of its task to its workers, each called as a tool.

    A worker may itself be a ``Supervisor`` (a hierarchy). Each worker call is a sub-run of that worker
    under this run — in this process, or on another worker when a dispatcher is set.

    Args:
        name: the supervisor's agent name.
        model: its model (a ``Model`` or a reference such as ``"sim:claude-sonnet-4-5"``).
        workers: the agents (or supervisors) it may hand work to; names must be distinct.
        instructions: its system prompt; by default one that names the workers and what each is for.
        tools: tools of its own, besides the workers.
        **agent_options: anything else ``Agent`` takes (``limits``, ``budget_tree``, ``guard``, ``durable``…).

    Raises:
        ValueError: no workers, or two with the same name.
    """

    def __init__(
        self,
        name: str,
        model: Model | str,
        *,
        workers: Sequence[Agent],
        instructions: str | None = None,
        tools: Iterable[Tool] = (),
        **agent_options: Any,
    ) -> None:
        if not workers:
            raise ValueError(f"supervisor {name} needs at least one worker")
        names = [w.name for w in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name} has two workers of the same name in {names}: names must differ")
        self.workers: tuple[Agent, ...] = tuple(workers)
        if instructions is None:
            instructions = (
                "You supervise other agents. Hand each part of the task to the worker suited to it, with "
                "everything it needs, using its tool; then answer with the combined result. Workers: "
                + "; ".join(_summary(w) for w in workers)
                + "."
            )
        super().__init__(
            name, model, instructions=instructions, tools=[*tools, *(w.as_tool() for w in workers)], **agent_options
        )


class Mesh:
    """Peers that may each hand work to any other (every agent gets the others' ``as_tool()``).

    Two peers bouncing the work back and forth end the chain with ``loop_detected``
    (``Limits.max_handoff_bounces``), across workers too. The agents are changed in place (they gain the
    peer tools), so an agent belongs to one mesh.

    Args:
        agents: the peers; names must be distinct.
        entry: the name of the agent a run starts at.

    Raises:
        ValueError: fewer than two agents, two with the same name, or ``entry`` is not one of them.
    """

    def __init__(self, agents: Sequence[Agent], *, entry: str) -> None:
        names = [a.name for a in agents]
        if len(agents) < 2:
            raise ValueError("a mesh needs at least two agents")
        if len(set(names)) != len(names):
            raise ValueError(f"a mesh has two agents of the same name in {names}: names must differ")
        if entry not in names:
            raise ValueError(f"mesh entry {entry!r} is not one of its agents: {', '.join(names)}")
        self.agents: dict[str, Agent] = {a.name: a for a in agents}
        self.entry: Agent = self.agents[entry]
        for agent in agents:
            for peer in agents:
                if peer is not agent:
                    agent.add_tool(peer.as_tool())

    @property
    def name(self) -> str:
        """The entry agent's name: what a run of the mesh is submitted as."""
        return self.entry.name

    async def run(self, task: str, *, run_id: str | None = None, parent: ParentLink | None = None) -> RunResult:
        """Run the mesh on ``task``, starting at its entry agent."""
        return await self.entry.run(task, run_id=run_id, parent=parent)

    def run_sync(self, task: str, *, run_id: str | None = None) -> RunResult:
        """``run`` for code that has no event loop."""
        return self.entry.run_sync(task, run_id=run_id)


def agents_of(item: Agent | Mesh) -> list[Agent]:
    """Every agent in ``item``: itself (or a mesh's peers), and every agent reachable through ``as_tool()`` tools."""
    found: dict[int, Agent] = {}
    pending: list[Agent] = list(item.agents.values()) if isinstance(item, Mesh) else [item]
    while pending:
        agent = pending.pop(0)
        if id(agent) in found:
            continue
        found[id(agent)] = agent
        pending.extend(t.delegates_to for t in agent.tools.values() if isinstance(t.delegates_to, Agent))
    return list(found.values())


class UnknownAgent(UserError):
    """No agent of that name is registered."""


class AgentRegistry:
    """The agents a worker can run, by name.

    ``register`` takes an ``Agent``, a ``Supervisor`` or a ``Mesh`` and registers every agent inside it
    (workers of workers, mesh peers, any agent reachable through an ``as_tool()`` tool), so a sub-agent
    call dispatched to any worker finds its agent by name.
    """

    def __init__(self, *items: Agent | Mesh) -> None:
        self._agents: dict[str, Agent] = {}
        for item in items:
            self.register(item)

    def register(self, item: Agent | Mesh) -> Agent | Mesh:
        """Register ``item`` and every agent inside it; returns ``item``.

        Raises:
            ValueError: another object is registered under one of the names (registering the same
                object again is fine).
            TypeError: ``item`` is neither an Agent nor a Mesh.
        """
        if not isinstance(item, Agent | Mesh):
            raise TypeError(f"{item!r} is not an Agent, Supervisor or Mesh: register one of those")
        agents = agents_of(item)
        for agent in agents:
            known = self._agents.get(agent.name)
            if known is not None and known is not agent:
                raise ValueError(
                    f"two different agents are named {agent.name!r}: each registered agent needs a unique name"
                )
        for agent in agents:
            self._agents[agent.name] = agent
        return item

    def get(self, name: str) -> Agent:
        """The agent named ``name``.

        Raises:
            UnknownAgent: none is; the message lists the registered names.
        """
        agent = self._agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self._agents)) or "none"
            raise UnknownAgent(f"no agent named {name!r} is registered (registered: {known}); register it in the app")
        return agent

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter([self._agents[n] for n in sorted(self._agents)])
