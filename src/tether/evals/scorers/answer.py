"""Answer scorers: ``exact``, ``contains``, ``regex``, ``json_schema``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import orjson

from tether.errors import UserError
from tether.evals.scorers.check import Check
from tether.evals.scorers.observation import Observation
from tether.evals.scorers.registry import scorer
from tether.evals.scorers.score import Score


@scorer("exact", kind="answer")
def _exact(obs: Observation, expected: str, strip: bool = True, case_sensitive: bool = True) -> Score:
    got, want = obs.output, expected
    if strip:
        got, want = got.strip(), want.strip()
    if not case_sensitive:
        got, want = got.lower(), want.lower()
    return Score(got == want, "answer matches" if got == want else f"answer is {obs.output[:120]!r}")


def exact(expected: str, *, strip: bool = True, case_sensitive: bool = True, label: str | None = None) -> Check:
    return Check("exact", {"expected": expected, "strip": strip, "case_sensitive": case_sensitive}, label)


@scorer("contains", kind="answer")
def _contains(
    obs: Observation, texts: Sequence[str] | str, any_of: bool = False, case_sensitive: bool = False
) -> Score:
    wanted = [texts] if isinstance(texts, str) else list(texts)
    haystack = obs.output if case_sensitive else obs.output.lower()
    missing = [t for t in wanted if (t if case_sensitive else t.lower()) not in haystack]
    passed = len(missing) < len(wanted) if any_of else not missing
    return Score(passed, "answer mentions " + ", ".join(map(repr, wanted)) if passed else f"answer lacks {missing!r}")


def contains(*texts: str, any_of: bool = False, case_sensitive: bool = False, label: str | None = None) -> Check:
    return Check("contains", {"texts": list(texts), "any_of": any_of, "case_sensitive": case_sensitive}, label)


@scorer("regex", kind="answer")
def _regex(obs: Observation, pattern: str, ignore_case: bool = False) -> Score:
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise UserError(f"regex check: {pattern!r} is not a valid regular expression ({exc})") from None
    found = compiled.search(obs.output)
    return Score(found is not None, f"matched {found.group(0)[:80]!r}" if found else f"no match for /{pattern}/")


def regex(pattern: str, *, ignore_case: bool = False, label: str | None = None) -> Check:
    return Check("regex", {"pattern": pattern, "ignore_case": ignore_case}, label)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@scorer("json_schema", kind="answer")
def _json_schema(obs: Observation, schema: Mapping[str, Any]) -> Score:
    text = obs.output.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Score(False, f"answer is not JSON ({exc})")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        return Score(False, f"{len(errors)} schema error(s); first at {where}: {first.message}")
    return Score(True, "answer is JSON that fits the schema")


def json_schema(schema: Mapping[str, Any], *, label: str | None = None) -> Check:
    jsonschema.Draft202012Validator.check_schema(schema)
    return Check("json_schema", {"schema": schema}, label)
