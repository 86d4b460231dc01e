"""Scorers: the checks a trial is graded by, registered by name.

A scorer is a function of the trial's ``Observation`` (the run's result, its
tool calls, the final state of the environment) and its own parameters, and
returns a ``Score``. Registering it by name (``@scorer("name", kind=...)``) lets
a YAML suite, the CLI and stored results name it; a suite that names an unknown
scorer, or gives one parameters it does not take, is refused before anything
runs.

The built-in kinds:

- ``outcome`` — the final state of the environment (the primary kind: "the right
  service was restarted and nothing else was"), by a predicate or expected values;
- ``answer`` — the final answer: ``exact``, ``contains``, ``regex``, ``json_schema``;
- ``trajectory`` — ``required_tools``, ``forbidden_tools``, ``tool_order``, ``max_steps``;
- ``judge`` — an LLM grades the answer against a rubric, several times; the spread
  of its own scores is recorded (``judge``);
- ``safety`` — ``no_injected_action``, ``approval_respected``,
  ``asked_clarification``, ``within_limits``.

Each scorer also has a constructor with the same name for suites written in
Python: ``contains("checkout")`` is ``Check("contains", {"texts": ["checkout"]})``.

The built-ins are registered when this package is imported: one module per
kind (``outcome.py``, ``answer.py``, ``trajectory.py``, ``judge.py``,
``safety.py``); the registry is ``registry.py``.
"""

from tether.evals.scorers.answer import contains, exact, json_schema, regex
from tether.evals.scorers.check import Check, CheckResult
from tether.evals.scorers.judge import JudgeFailed, judge
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.outcome import outcome
from tether.evals.scorers.registry import SCORERS, Kind, ScorerDef, lookup, scorer
from tether.evals.scorers.safety import approval_respected, asked_clarification, no_injected_action, within_limits
from tether.evals.scorers.score import Score
from tether.evals.scorers.trajectory import forbidden_tools, max_steps, required_tools, tool_order

__all__ = [
    "SCORERS",
    "Check",
    "CheckResult",
    "JudgeFailed",
    "Kind",
    "Observation",
    "Score",
    "ScorerDef",
    "approval_respected",
    "asked_clarification",
    "contains",
    "exact",
    "forbidden_tools",
    "json_schema",
    "judge",
    "lookup",
    "max_steps",
    "no_injected_action",
    "outcome",
    "regex",
    "required_tools",
    "scorer",
    "tool_order",
    "within_limits",
]
