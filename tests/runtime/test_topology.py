"""Topologies: a supervisor (star), supervisors of supervisors (hierarchy), a mesh of peers, and the registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether import semconv as sc
from tether.errors import UserError
from tether.messages import ModelRequest, ModelResponse, StopReason, ToolResultBlock
from tether.runtime import Agent, AgentRegistry, Limits, Mesh, Supervisor, UnknownAgent
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


def results(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def asking_all() -> FunctionModel:
    """A model that asks every tool it has at once, then joins the answers."""

    def answer(request: ModelRequest) -> ModelResponse:
        got = results(request)
        if got:
            return text_response(" + ".join(sorted(got)))
        return tool_response(*((t.name, {"task": "your part"}) for t in request.tools))

    return FunctionModel(answer)


def leaf(name: str, capture: SpanCapture) -> Agent:
    return Agent(
        name,
        FunctionModel(lambda r: text_response(f"{name} done")),
        instructions=f"You do {name}.",
        tracer=capture.tracer,
    )


async def test_a_supervisor_is_a_star_over_its_workers(capture: SpanCapture) -> None:
    logs, metrics = leaf("logs", capture), leaf("metrics", capture)
    supervisor = Supervisor("oncall", asking_all(), workers=[logs, metrics], tracer=capture.tracer)

    result = await supervisor.run("is checkout healthy?")

    assert result.stop_reason is StopReason.COMPLETED
    assert result.output == "logs done + metrics done"
    assert sorted(supervisor.tools) == ["ask_logs", "ask_metrics"]
    assert "logs (You do logs.)" in supervisor.instructions and "metrics" in supervisor.instructions
    subs = [s for s in capture.by_operation(sc.OP_INVOKE_AGENT) if (s.attributes or {}).get(sc.TETHER_RUN_DEPTH) == 1]
    assert sorted(str((s.attributes or {})[sc.GEN_AI_AGENT_NAME]) for s in subs) == ["logs", "metrics"]
    assert all((s.attributes or {})[sc.TETHER_PARENT_RUN_ID] == result.run_id for s in subs)


async def test_supervisors_of_supervisors_make_a_hierarchy(capture: SpanCapture) -> None:
    backend = Supervisor(
        "backend", asking_all(), workers=[leaf("db", capture), leaf("api", capture)], tracer=capture.tracer
    )
    frontend = Supervisor("frontend", asking_all(), workers=[leaf("web", capture)], tracer=capture.tracer)
    cto = Supervisor(
        "cto", asking_all(), workers=[backend, frontend], instructions="Run the company.", tracer=capture.tracer
    )

    result = await cto.run("ship it")

    assert result.stop_reason is StopReason.COMPLETED
    assert result.output == "api done + db done + web done"
    depths = {
        str((s.attributes or {})[sc.GEN_AI_AGENT_NAME]): (s.attributes or {}).get(sc.TETHER_RUN_DEPTH, 0)
        for s in capture.by_operation(sc.OP_INVOKE_AGENT)
    }
    assert depths == {"cto": 0, "backend": 1, "frontend": 1, "db": 2, "api": 2, "web": 2}
    assert len({s.context.trace_id for s in capture.spans}) == 1
    assert cto.instructions == "Run the company."


async def test_a_mesh_lets_peers_ask_each_other(capture: SpanCapture) -> None:
    def triage(request: ModelRequest) -> ModelResponse:
        got = results(request)
        return text_response(f"triaged: {got[0]}") if got else tool_response(("ask_billing", {"task": "refund?"}))

    alice = Agent("triage", FunctionModel(triage), tracer=capture.tracer)
    billing = leaf("billing", capture)
    mesh = Mesh([alice, billing], entry="triage")

    result = await mesh.run("customer wants money back")

    assert result.stop_reason is StopReason.COMPLETED and result.output == "triaged: billing done"
    assert mesh.name == "triage" and mesh.entry is alice
    assert sorted(alice.tools) == ["ask_billing"] and sorted(billing.tools) == ["ask_triage"]


async def test_peers_playing_ping_pong_in_a_mesh_end_with_loop_detected(capture: SpanCapture) -> None:
    def passing(to: str) -> FunctionModel:
        def answer(request: ModelRequest) -> ModelResponse:
            got = results(request)
            return text_response(got[0]) if got else tool_response((to, {"task": "not mine, yours"}))

        return FunctionModel(answer)

    limits = Limits(max_handoff_bounces=3)
    a = Agent("a", passing("ask_b"), limits=limits, tracer=capture.tracer)
    b = Agent("b", passing("ask_a"), limits=limits, tracer=capture.tracer)

    result = await Mesh([a, b], entry="a").run("whose is this?")

    assert result.stop_reason is StopReason.LOOP_DETECTED
    assert all(
        (s.attributes or {})[sc.TETHER_STOP_REASON] == "loop_detected" for s in capture.by_operation(sc.OP_INVOKE_AGENT)
    )


def test_shapes_refuse_what_cannot_work() -> None:
    model = FunctionModel(lambda r: text_response("x"))
    one, other, same = Agent("one", model), Agent("other", model), Agent("one", model)
    with pytest.raises(ValueError, match="at least one worker"):
        Supervisor("boss", model, workers=[])
    with pytest.raises(ValueError, match="same name"):
        Supervisor("boss", model, workers=[one, same])
    with pytest.raises(ValueError, match="at least two"):
        Mesh([one], entry="one")
    with pytest.raises(ValueError, match="entry 'nobody' is not one of its agents: one, other"):
        Mesh([one, other], entry="nobody")
    with pytest.raises(ValueError, match="same name"):
        Mesh([one, same], entry="one")


def test_the_registry_registers_every_agent_inside_a_topology() -> None:
    model = FunctionModel(lambda r: text_response("x"))
    db, api, web = Agent("db", model), Agent("api", model), Agent("web", model)
    backend = Supervisor("backend", model, workers=[db, api])
    cto = Supervisor("cto", model, workers=[backend, web])
    a, b = Agent("a", model), Agent("b", model)
    mesh = Mesh([a, b], entry="a")

    registry = AgentRegistry(cto)
    assert registry.register(mesh) is mesh
    registry.register(cto)  # the same objects again: fine

    assert registry.names() == ["a", "api", "b", "backend", "cto", "db", "web"]
    assert registry.get("db") is db and "web" in registry and "nobody" not in registry
    assert len(registry) == 7 and [x.name for x in registry] == registry.names()
    with pytest.raises(UnknownAgent, match=r"no agent named 'dbx' is registered \(registered: a, api, b") as info:
        registry.get("dbx")
    assert isinstance(info.value, UserError)
    with pytest.raises(ValueError, match="two different agents are named 'db'"):
        registry.register(Agent("db", model))
    assert registry.get("db") is db  # a refused registration changes nothing
    with pytest.raises(TypeError, match="not an Agent"):
        registry.register("db")  # type: ignore[arg-type]
    with pytest.raises(UnknownAgent, match=r"registered: none"):
        AgentRegistry().get("x")
