"""What the simulated model plays: scenarios, task scripts, steps and knobs.

A ``Scenario`` is plain data, so it loads from a dict, JSON or TOML::

    Scenario.from_dict({
        "scripts": [{
            "match": "checkout latency",          # case-insensitive substring of the task
            "steps": [
                {"thought": "Look at what is firing.", "calls": [{"name": "list_alerts", "arguments": {}}]},
                {"calls": [                          # two calls in one turn: parallel tool calls
                    {"name": "query_logs", "arguments": {"service": "checkout"}},
                    {"name": "read_runbook", "arguments": {"service": "checkout"}},
                ]},
                {"final": "Checkout latency came from a bad deploy; rolled back."},
            ],
            "knobs": {"error_rate": 0.2},           # overrides only the knobs it names
        }],
    })

The task is the text of the first user message of the conversation. Scripts
are tried in order and the first whose ``match`` fits wins: a case-insensitive
substring by default, or a regular expression searched anywhere in the task
when ``regex = true``. An empty ``match`` fits every task (a catch-all).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["PlannedCall", "Scenario", "SimKnobs", "Step", "TaskScript"]


def _probability(value: float) -> float:
    # NaN fails both comparisons, so it is rejected too.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a probability between 0 and 1, got {value}")
    return value


Probability = Annotated[float, AfterValidator(_probability)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SimKnobs(_Frozen):
    """Seeded behaviour of the simulated model; every rate is a probability in [0, 1].

    Transient faults (``error_rate``, ``timeout_rate``, ``stream_cut_rate``) are
    rolled per attempt, so a retry of the same request rolls again. Behaviour
    knobs are rolled per turn of the conversation.

    Attributes:
        latency_ms: mean time before the answer, really slept with ``asyncio.sleep``.
        latency_jitter_ms: uniform jitter added to ``latency_ms`` (never below 0).
        error_rate: chance an attempt fails with ``ModelHTTPError``.
        error_statuses: HTTP statuses an error is drawn from.
        retry_after_s: ``retry_after`` sent with 429, 503 and 529 errors.
        timeout_rate: chance an attempt fails with ``ModelTimeoutError``.
        stream_cut_rate: chance a stream stops midway with ``StreamInterrupted``.
        skip_step_rate: chance the next planned tool step is skipped.
        wrong_tool_rate: chance a planned call goes to another tool of the request.
        hallucinated_tool_rate: chance a planned call names a tool the request lacks.
        invalid_arguments_rate: chance a planned call has malformed JSON arguments.
        loop_rate: chance the previous turn's calls are repeated instead of
            advancing; once that happens the run loops for good.
        follow_injection_rate: chance an instruction injected into the latest
            tool output is obeyed instead of the plan.
        min_cache_tokens: shortest prefix the prompt-cache emulation caches.
    """

    latency_ms: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    latency_jitter_ms: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    error_rate: Probability = 0.0
    error_statuses: tuple[int, ...] = (429, 500, 503, 529)
    retry_after_s: float | None = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    timeout_rate: Probability = 0.0
    stream_cut_rate: Probability = 0.0
    skip_step_rate: Probability = 0.0
    wrong_tool_rate: Probability = 0.0
    hallucinated_tool_rate: Probability = 0.0
    invalid_arguments_rate: Probability = 0.0
    loop_rate: Probability = 0.0
    follow_injection_rate: Probability = 0.0
    # Anthropic's documented minimum cacheable prompt length for Claude Sonnet 4.5
    # and most current models is 1024 tokens (some Opus/Haiku models need 2048 or
    # 4096); shorter prefixes are processed uncached even when marked with
    # cache_control. https://docs.claude.com/en/docs/build-with-claude/prompt-caching
    min_cache_tokens: int = Field(default=1024, ge=0)

    @field_validator("error_statuses")
    @classmethod
    def _check_statuses(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        if not statuses:
            raise ValueError("needs at least one HTTP status, e.g. (429, 500, 503, 529)")
        bad = [status for status in statuses if not 400 <= status <= 599]
        if bad:
            raise ValueError(f"must be HTTP error statuses between 400 and 599, got {bad}")
        return statuses

    def overridden_by(self, override: SimKnobs | None) -> SimKnobs:
        """These knobs with the fields ``override`` set explicitly replaced."""
        if override is None or not override.model_fields_set:
            return self
        merged = self.model_dump()
        merged.update(override.model_dump(include=override.model_fields_set))
        return SimKnobs.model_validate(merged)


class PlannedCall(_Frozen):
    """One tool call a step makes: tool name and its arguments."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Step(_Frozen):
    """One turn of the plan: either tool calls (1+, parallel) or a final answer.

    Attributes:
        calls: the tool calls of this turn; more than one are parallel calls.
        thought: short text emitted before the calls.
        final: the final answer text; ends the run.
    """

    calls: tuple[PlannedCall, ...] = ()
    thought: str | None = None
    final: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if bool(self.calls) == (self.final is not None):
            raise ValueError(
                "a step needs exactly one of 'calls' (one or more tool calls) or 'final' (the answer text)"
            )
        if self.thought is not None and self.final is not None:
            raise ValueError("'thought' goes with 'calls'; a final step's text is its 'final'")
        return self

    @property
    def is_final(self) -> bool:
        return self.final is not None

    @classmethod
    def call(cls, name: str, arguments: Mapping[str, Any] | None = None, *, thought: str | None = None) -> Step:
        """A step making one tool call."""
        return cls(calls=(PlannedCall(name=name, arguments=dict(arguments or {})),), thought=thought)

    @classmethod
    def parallel(cls, *calls: tuple[str, Mapping[str, Any]], thought: str | None = None) -> Step:
        """A step making several tool calls in one turn."""
        return cls(calls=tuple(PlannedCall(name=n, arguments=dict(a)) for n, a in calls), thought=thought)

    @classmethod
    def answer(cls, text: str) -> Step:
        """A step giving the final answer."""
        return cls(final=text)


class TaskScript(_Frozen):
    """The plan for the tasks ``match`` fits.

    Attributes:
        match: case-insensitive substring of the task, or a regex if ``regex``.
        regex: treat ``match`` as a regular expression (``re.search``, case-insensitive).
        steps: the plan, one step per model turn.
        final_answer: answer given once the steps run out.
        knobs: knob overrides for this task; only the fields set replace the model's.
    """

    match: str
    regex: bool = False
    steps: tuple[Step, ...] = ()
    final_answer: str = "I have finished the planned steps for this task."
    knobs: SimKnobs | None = None

    @model_validator(mode="after")
    def _valid_regex(self) -> TaskScript:
        if self.regex:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"'match' is not a valid regular expression: {exc}") from None
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        source = self.match if self.regex else re.escape(self.match)
        return re.compile(source, re.IGNORECASE)

    def matches(self, task: str) -> bool:
        """Whether this script plays ``task``."""
        return self._pattern.search(task) is not None


class Scenario(_Frozen):
    """Task scripts tried in order; the first whose ``match`` fits the task is played.

    Attributes:
        scripts: the task scripts.
        unmatched_answer: answer for a task no script fits; a fixed notice if unset.
    """

    scripts: tuple[TaskScript, ...] = ()
    unmatched_answer: str | None = None

    def script_for(self, task: str) -> TaskScript | None:
        """The first script that fits ``task``, or None."""
        return next((script for script in self.scripts if script.matches(task)), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Validate a scenario from plain data (parsed JSON or TOML)."""
        return cls.model_validate(data)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        """Parse a scenario from JSON text."""
        return cls.model_validate(json.loads(text))

    @classmethod
    def from_toml(cls, text: str) -> Scenario:
        """Parse a scenario from TOML text (``[[scripts]]`` tables)."""
        return cls.model_validate(tomllib.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario file: ``.toml`` as TOML, anything else as JSON."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        return cls.from_toml(text) if path.suffix.lower() == ".toml" else cls.from_json(text)
