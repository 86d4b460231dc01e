"""Every span and attribute name tether writes, in one place.

Names follow the OpenTelemetry GenAI semantic conventions, which still change;
when they do, this is the only file to edit. tether's own attributes live under
``tether.*``.
"""

from __future__ import annotations

from typing import Final

# gen_ai.operation.name values
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_CHAT: Final = "chat"
OP_EXECUTE_TOOL: Final = "execute_tool"

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
ERROR_TYPE: Final = "error.type"

TETHER_RUN_ID: Final = "tether.run.id"
TETHER_COST_USD: Final = "tether.cost_usd"
TETHER_COST_KNOWN: Final = "tether.cost_known"
TETHER_PRICE_VERSION: Final = "tether.price_version"
TETHER_STOP_REASON: Final = "tether.stop_reason"
TETHER_SIMULATED: Final = "tether.simulated"
TETHER_TURN: Final = "tether.turn"
TETHER_TURNS: Final = "tether.turns"
TETHER_TOOL_CALLS: Final = "tether.tool_calls"
TETHER_TOOL_ERROR: Final = "tether.tool.error"
TETHER_TOOL_HALLUCINATED: Final = "tether.tool.hallucinated"
TETHER_TOOL_RISK: Final = "tether.tool.risk"
TETHER_TOOL_REPLAYED: Final = "tether.tool.replayed"
TETHER_RESUMED: Final = "tether.run.resumed"
#: On a sub-run (an agent called as a tool): the run that called it, and how deep it is in the run tree.
TETHER_PARENT_RUN_ID: Final = "tether.run.parent_id"
TETHER_RUN_DEPTH: Final = "tether.run.depth"
#: On a sub-run: the top-level run of its tree (on any worker).
TETHER_ROOT_RUN_ID: Final = "tether.run.root_id"
#: On a parked run's root span: the approval it waits for.
TETHER_PARKED_ON: Final = "tether.parked_on"
#: On a run refused by the budget tree: the run whose limit refused it.
TETHER_BUDGET_REFUSED_BY: Final = "tether.budget.refused_by"
TETHER_LOOP_WASTED_TOKENS: Final = "tether.loop.wasted_tokens"
TETHER_LOOP_WASTED_COST_USD: Final = "tether.loop.wasted_cost_usd"
TETHER_GUARD_DECISION: Final = "tether.guard.decision"
TETHER_GUARD_REASON: Final = "tether.guard.reason"
TETHER_GUARD_RULE: Final = "tether.guard.rule"
TETHER_GUARD_TAINTED: Final = "tether.guard.tainted"
#: Span event for each detector finding; its attributes are the finding's fields.
EVENT_GUARD_FINDING: Final = "tether.guard.finding"
TETHER_HALLUCINATED_TOOL_CALLS: Final = "tether.hallucinated_tool_calls"
TETHER_TASK: Final = "tether.task"
TETHER_OUTPUT: Final = "tether.output"
TETHER_ERROR_MESSAGE: Final = "tether.error.message"

# Tool input/output and task text kept on spans are capped at this many characters.
MAX_PAYLOAD_CHARS: Final = 4096


def span_name(operation: str, target: str) -> str:
    """Span names per the GenAI conventions: ``{operation} {model|tool|agent}``."""
    return f"{operation} {target}"


# Gateway decisions (on the chat span of the call).
TETHER_ROUTE: Final = "tether.route"
TETHER_ROUTE_TIER: Final = "tether.route.tier"
TETHER_ROUTE_REASON: Final = "tether.route.reason"
TETHER_DEPLOYMENT: Final = "tether.deployment"
TETHER_ATTEMPTS: Final = "tether.attempts"
TETHER_FALLBACKS: Final = "tether.fallbacks"
TETHER_CACHE_HIT: Final = "tether.cache.hit"

# The HTTP proxy (``tether gateway serve``), on the chat span of each request.
TETHER_KEY: Final = "tether.key"  # the virtual key's name, never its secret
TETHER_TAGS: Final = "tether.tags"
TETHER_STREAM: Final = "tether.stream"
TETHER_USAGE_ESTIMATED: Final = "tether.usage_estimated"  # usage never arrived (stream cut or abandoned)
TETHER_PROXY_API: Final = "tether.proxy.api"  # the client's wire format: openai | anthropic
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
