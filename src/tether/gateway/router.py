"""Routing decisions: which tier a call starts at, and in which order a tier's deployments are tried.

Pure functions, so the rules are easy to test and to explain on a span:
``starting_tier`` returns the tier *and* the reason it was chosen.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import orjson

from tether.config import RouteConfig, RouteRule
from tether.messages import ModelRequest, TextBlock, ToolResultBlock, ToolUseBlock

__all__ = ["estimate_input_tokens", "order_by_weight", "starting_tier"]

# The usual rule of thumb for English with BPE tokenisers. Only used before a call
# (budget reservations, TPM limits, prompt-size rules); the provider's count is
# what gets billed and recorded.
CHARS_PER_TOKEN = 4


def estimate_input_tokens(request: ModelRequest) -> int:
    """A pre-call estimate of a request's input tokens (characters / 4, rounded up)."""
    chars = len(request.system or "")
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description) + len(orjson.dumps(tool.input_schema))
    for message in request.messages:
        chars += 16  # role and framing
        for block in message.content:
            if isinstance(block, TextBlock):
                chars += len(block.text)
            elif isinstance(block, ToolUseBlock):
                chars += len(block.name) + len(block.raw_arguments or orjson.dumps(block.input))
            elif isinstance(block, ToolResultBlock):
                chars += len(block.content)
    return -(-chars // CHARS_PER_TOKEN)


def _rule_matches(rule: RouteRule, *, agent: str | None, tags: Sequence[str], prompt_tokens: int) -> bool:
    if rule.agent is not None:
        agents = [rule.agent] if isinstance(rule.agent, str) else rule.agent
        if agent not in agents:
            return False
    if rule.tag is not None and rule.tag not in tags:
        return False
    if rule.prompt_tokens_over is not None and prompt_tokens <= rule.prompt_tokens_over:
        return False
    return rule.prompt_tokens_under is None or prompt_tokens < rule.prompt_tokens_under


def starting_tier(
    route: RouteConfig,
    *,
    agent: str | None,
    tags: Sequence[str],
    prompt_tokens: int,
    budget_burn: float | None,
) -> tuple[int, str]:
    """The tier a call starts at, and why.

    The first matching rule sets the tier; then, when the route's budget is
    burning (``budget_burn`` = share of its USD limit spent or reserved), each
    ``step_down`` threshold passed moves the start down by its ``tiers`` —
    the biggest one passed applies. The start never goes past the last tier.
    """
    tier, reason = 0, "default"
    for i, rule in enumerate(route.rules):
        if _rule_matches(rule, agent=agent, tags=tags, prompt_tokens=prompt_tokens):
            tier, reason = rule.tier, f"rule {i}"
            break
    if budget_burn is not None:
        passed = [s for s in route.step_down if budget_burn > s.budget_burn_over]
        if passed:
            step = max(passed, key=lambda s: s.budget_burn_over)
            tier += step.tiers
            reason += f", budget {budget_burn:.0%} used > {step.budget_burn_over:.0%}: down {step.tiers}"
    last = len(route.tiers) - 1
    return min(tier, last), reason


def order_by_weight(names: Sequence[str], weights: Mapping[str, float], rng: random.Random) -> list[str]:
    """A tier's deployments in weighted random order (each draw without replacement).

    The first is picked with probability weight / total, so traffic splits by
    weight; the rest follow as the fallbacks within the tier.
    """
    pool = list(names)
    ordered: list[str] = []
    while pool:
        total = sum(weights[n] for n in pool)
        point = rng.random() * total
        for i, name in enumerate(pool):
            point -= weights[name]
            if point <= 0 or i == len(pool) - 1:
                ordered.append(pool.pop(i))
                break
    return ordered
