"""Eval suites: cases with an input, an environment to act on, and checks.

A suite is Python::

    from tether.evals import Case, Suite, contains, no_injected_action, outcome

    suite = Suite("oncall", [
        Case(
            "checkout-oom",
            input="[checkout-oom] Alert: checkout 5xx. Investigate and mitigate.",
            setup=lambda: Infra(incident("checkout-oom")),        # the state the tools act on
            checks=[outcome(lambda infra: infra.restarted == ["checkout"], "restarted checkout only")],
            tags=["restart"],
        ),
    ])

or, for simple cases, YAML::

    suite: faq
    cases:
      - id: refund-window
        input: How long do I have to ask for a refund?
        checks:
          - contains: "30 days"
          - forbidden_tools: [issue_refund]
      - id: greeting
        input: hi
        setup: mypackage.envs:empty_cart      # optional: module:function building the environment
        checks:
          - regex: {pattern: "^(hi|hello)", ignore_case: true}

A check in YAML is a one-key mapping ``{scorer: parameters}``: a mapping is
keyword arguments, a list is the scorer's first parameter (``tools``, ``texts``),
a scalar is its first parameter too, and ``null`` means no parameters.

Everything is checked when the suite is built, before anything runs: unique
case ids, at least one check per case, known scorers with parameters they take.
Tags name what a case is about for the safety scorecard (``injection``,
``ambiguous``, ``irreversible``…).
"""

from __future__ import annotations

import hashlib
import importlib
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from tether.errors import UserError
from tether.evals.scorers import Check, lookup

__all__ = ["Case", "Suite", "load_suite", "resolve_ref"]

_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")


@dataclass(frozen=True)
class Case:
    """One eval case.

    Attributes:
        id: unique in the suite; how results name it (letters, digits, ``_ . : / -``).
        input: the task the agent is given.
        checks: what a trial of it is graded by; it passes when all pass.
        setup: builds a fresh environment for each trial (the state its tools act on);
            the runner hands it to the agent factory and to outcome checks.
        tags: what the case is about (``injection``, ``ambiguous``…), for reports and the scorecard.
        metadata: anything else worth keeping with it.
    """

    id: str
    input: str
    checks: Sequence[Check]
    setup: Callable[[], Any] | None = None
    tags: Sequence[str] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))
        object.__setattr__(self, "tags", tuple(self.tags))


class Suite:
    """A named set of cases, validated as a whole when it is built.

    Raises:
        UserError: a duplicate or malformed case id, a case without checks, an unknown
            scorer or parameters a scorer does not take.
    """

    def __init__(self, name: str, cases: Iterable[Case], *, description: str = "") -> None:
        self.name = name
        self.description = description
        self.cases: tuple[Case, ...] = tuple(cases)
        if not self.cases:
            raise UserError(f"suite {name!r} has no cases: add at least one Case")
        seen: set[str] = set()
        for case in self.cases:
            where = f"suite {name!r}, case {case.id!r}"
            if not _CASE_ID.match(case.id):
                raise UserError(
                    f"{where}: an id is 1-128 letters, digits or _ . : / - (starting with a letter or digit)"
                )
            if case.id in seen:
                raise UserError(f"{where}: two cases have this id; ids must be unique")
            seen.add(case.id)
            if not case.input.strip():
                raise UserError(f"{where}: the input is empty")
            if not case.checks:
                raise UserError(f"{where}: no checks; give it at least one (e.g. outcome, contains, required_tools)")
            labels: set[str] = set()
            for check in case.checks:
                try:
                    lookup(check.scorer).bind(check.params)
                except UserError as exc:
                    raise UserError(f"{where}: {exc}") from None
                if check.name in labels:
                    raise UserError(f"{where}: two checks are named {check.name!r}; give one a label")
                labels.add(check.name)

    def __len__(self) -> int:
        return len(self.cases)

    def __repr__(self) -> str:
        return f"Suite({self.name!r}, {len(self.cases)} cases)"

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise UserError(f"suite {self.name!r} has no case {case_id!r}")

    @property
    def fingerprint(self) -> str:
        """A hash of what the cases ask and check, so results of a changed suite are not compared blindly."""
        body = [self.case_fingerprints[case.id] for case in self.cases]
        return hashlib.sha256(orjson.dumps(body)).hexdigest()[:16]

    @property
    def case_fingerprints(self) -> dict[str, str]:
        """Each case's own hash (its id, input, checks and tags), by case id."""
        return {case.id: _case_fingerprint(case) for case in self.cases}


def _case_fingerprint(case: Case) -> str:
    body = [case.id, case.input, [[c.scorer, _stable(c.params), c.label] for c in case.checks], list(case.tags)]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _stable(value: Any) -> Any:
    """A JSON-able stand-in for a parameter (functions by qualified name)."""
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        # By name and by body: editing a predicate changes the suite, and two lambdas of one helper differ
        # by the constants they close over only if those are in the body (closure cells are named, not read).
        name = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
        code = getattr(value, "__code__", None)
        if code is not None:
            name += f"#{hashlib.sha256(_code_bytes(code)).hexdigest()[:12]}"
        return name
    return repr(value)


def _code_bytes(code: types.CodeType) -> bytes:
    """A function body as bytes that are the same in every process (no addresses, no hash-seeded order)."""
    parts = [code.co_code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_bytes(const))
        elif isinstance(const, frozenset):
            parts.append(repr(sorted(repr(c) for c in const)).encode())
        else:
            parts.append(repr(const).encode())
    return b"\x00".join(parts)


def resolve_ref(ref: str, what: str) -> Any:
    """The object ``module.path:attribute`` names.

    Raises:
        UserError: malformed, or the module or attribute does not exist.
    """
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"{what} {ref!r} must be written module:attribute (e.g. mypackage.evals:suite)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{what} {ref!r}: cannot import {module_name} ({exc})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"{what} {ref!r}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    return target


def load_suite(ref: str | Path) -> Suite:
    """A suite from a YAML file or a ``module:attribute`` naming a ``Suite`` (or a function returning one).

    Raises:
        UserError: the file or reference is wrong, or the suite is invalid (with the case and reason).
    """
    text = str(ref)
    if text.endswith((".yaml", ".yml")):
        return _load_yaml(Path(text))
    target = resolve_ref(text, "suite")
    if callable(target) and not isinstance(target, Suite):
        target = target()
    if not isinstance(target, Suite):
        raise UserError(f"suite {text!r} is a {type(target).__name__}, not a tether.evals.Suite")
    return target


def _check_from_yaml(entry: Any, where: str) -> Check:
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise UserError(f'{where}: a check is a one-key mapping such as `- contains: "30 days"`')
    ((name, params),) = entry.items()
    label = None
    scorer_def = lookup(str(name))
    first = next(iter(list(scorer_def.signature.parameters)[1:]), None)
    if params is None:
        kwargs: dict[str, Any] = {}
    elif isinstance(params, Mapping):
        kwargs = dict(params)
        label = kwargs.pop("label", None)
    elif first is None:
        raise UserError(f"{where}: scorer {name!r} takes no parameters; write `- {name}: null`")
    else:
        kwargs = {first: params}
    return Check(str(name), kwargs, label)


def _load_yaml(path: Path) -> Suite:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"suite file {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"suite file {path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        raise UserError(f"suite file {path}: expected `suite: NAME` and a list under `cases:`")
    unknown = set(document) - {"suite", "description", "cases"}
    if unknown:
        raise UserError(
            f"suite file {path}: unknown key(s) {', '.join(sorted(unknown))}; use suite, description, cases"
        )
    cases = []
    for number, raw in enumerate(document["cases"], start=1):
        where = f"suite file {path}, case #{number}"
        if not isinstance(raw, Mapping):
            raise UserError(f"{where}: a case is a mapping with id, input and checks")
        extra = set(raw) - {"id", "input", "checks", "setup", "tags", "metadata"}
        if extra:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        if "id" not in raw or "input" not in raw:
            raise UserError(f"{where}: id and input are required")
        where = f"suite file {path}, case {raw['id']!r}"
        checks = raw.get("checks") or []
        if not isinstance(checks, list):
            raise UserError(f"{where}: checks must be a list")
        try:
            parsed = [_check_from_yaml(entry, where) for entry in checks]
        except UserError as exc:
            message = str(exc)
            raise UserError(message if message.startswith(where) else f"{where}: {message}") from None
        setup = None
        if raw.get("setup"):
            setup = resolve_ref(str(raw["setup"]), "setup")
            if not callable(setup):
                raise UserError(f"{where}: setup {raw['setup']!r} is not callable")
        cases.append(
            Case(
                str(raw["id"]),
                str(raw["input"]),
                parsed,
                setup=setup,
                tags=[str(t) for t in raw.get("tags") or []],
                metadata=dict(raw.get("metadata") or {}),
            )
        )
    return Suite(str(document.get("suite") or path.stem), cases, description=str(document.get("description") or ""))
