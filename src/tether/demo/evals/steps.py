"""The building blocks of the versions' plans: tool calls, answers, pages and restarts as simulated-model steps."""

from __future__ import annotations

from typing import Any

from tether.models.scenario import Step


def _call(name: str, **arguments: Any) -> tuple[str, dict[str, Any]]:
    return name, arguments


def _do(*calls: tuple[str, dict[str, Any]], thought: str | None = None) -> Step:
    return Step.parallel(*calls, thought=thought)


_LIST = _do(_call("list_alerts"))


def _say(text: str) -> Step:
    return Step.answer(text)


def _page(team: str, summary: str) -> Step:
    return _do(_call("page_human", team=team, summary=summary))


def _restart_step(service: str) -> Step:
    return _do(_call("restart_service", service=service))
