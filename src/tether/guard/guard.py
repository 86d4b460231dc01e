"""The guard: the boundary every tool call crosses, before it runs, failing closed.

For each call the agent loop asks ``authorize`` (after the call's arguments have
been validated against the tool's schema, before anything runs)::

    quarantined agent and a write/irreversible tool?  → denied
    tool not granted to the agent?                    → denied
    an argument outside its constraint?               → denied (a policy violation)
    approval "always", an irreversible tool, or a
    write/irreversible tool in a tainted run?         → needs approval
    otherwise                                         → allowed

and, after a tool whose output is untrusted has run, ``inspect`` scans the
output with the detectors and taints the run. Decisions and findings go on the
tool's span (``tether.guard.*``) for the trace.

A call that needs approval goes to the ``approver`` (``ApprovalStore.approver()``:
a person decides with ``tether approvals approve``); with no approver it is
**rejected** — failing closed, never running an unapproved irreversible call.
A ``recorder`` (``tether.guard.audit.StoreGuardRecorder``) keeps every decision
in the audit table, opens incidents for findings and quarantines an agent past
the policy's threshold, across processes; ``tether.open()``'s agents have one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether.guard.approvals import ApprovalRequest, ApprovalStatus, StoredApproval
from tether.guard.credentials import CredentialBroker, CredentialNotGranted, Scrubber, default_scrubber
from tether.guard.policy import Policy, ToolRule
from tether.guard.types import Decision, Detector, Finding, Verdict

__all__ = ["Approver", "Guard", "GuardRecorder", "RunGuard"]

#: Decides a call that needs approval: True/False, or the stored request once a person decided it
#: (``ApprovalStore.approver()``).
Approver = Callable[[ApprovalRequest], Awaitable[bool | StoredApproval]]


class GuardRecorder(Protocol):
    """Where decisions and findings are kept: the audit table, incidents, quarantine (``tether.guard.audit``).

    Called on the run's path: ``decision`` and ``finding`` must not block (queue, write in the background);
    ``quarantined`` answers from memory (refreshed in the background).
    """

    def decision(
        self, run: RunGuard, tool: str, call_id: str, arguments: Mapping[str, Any], decision: Decision, span: Any
    ) -> None:
        """Keep one decision (allowed, denied, needs approval, approved, rejected) with its reason."""
        ...

    def finding(self, run: RunGuard, tool: str | None, finding: Finding, span: Any) -> None:
        """Open an incident for a finding; past the policy's threshold the agent is quarantined."""
        ...

    def quarantined(self, agent: str) -> str | None:
        """Why the agent is quarantined, or None."""
        ...


@dataclass
class RunGuard:
    """What the guard knows about one run: whether it has read untrusted content, and its findings."""

    run_id: str
    agent: str
    tainted_by: str | None = None
    findings: list[Finding] = field(default_factory=list)


class Guard:
    """Authorizes tool calls by policy, risk and taint; scans untrusted output.

    Args:
        policy: the grants; ``Policy.open()`` (each agent's own tools, default approvals) when None.
        detectors: scanners for untrusted tool output (e.g. ``RuleScanner()``).
        approver: decides calls that need approval; without one they are rejected (fail closed).
        credentials: hands each (agent, tool) the secrets it declares and is granted, at call time.
        scrubber: removes known secret values from what goes back to the model (the process-wide one by
            default, which the credentials register every value they hand out with).
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        detectors: Sequence[Detector] = (),
        approver: Approver | None = None,
        credentials: CredentialBroker | None = None,
        scrubber: Scrubber | None = None,
        recorder: GuardRecorder | None = None,
    ) -> None:
        self.policy = policy or Policy.open()
        self.detectors = tuple(detectors)
        self.approver = approver
        self.credentials = credentials
        self.scrubber = scrubber or default_scrubber()
        self.recorder = recorder
        self.quarantined: dict[str, str] = {}  # agent -> why

    def bind(self, agent: str, tools: Mapping[str, Any]) -> None:
        """Check the policy against the tools the agent has (an unknown tool is a ``PolicyError``).

        The agent's granted secrets are registered with the scrubber now, so one the model
        echoes before a tool has received it is scrubbed from every record all the same.
        """
        self.policy.check_tools(agent, tools)
        if self.credentials is not None:
            self.credentials.register_granted(agent)

    def _rule(self, agent: str, tool: str) -> tuple[ToolRule | None, str | None]:
        grants = self.policy.for_agent(agent)
        if grants is None:
            if self.policy.default_allow_own_tools:
                return ToolRule(), None
            return None, f"agent {agent!r} has no grants in the policy: add [guard.agents.{agent}.tools]"
        if tool in grants.deny:
            return None, f"tool {tool!r} is denied to agent {agent!r} by the policy"
        rule = grants.tools.get(tool)
        if rule is None:
            return None, f"tool {tool!r} is not granted to agent {agent!r}: grant it in [guard.agents.{agent}.tools]"
        return rule, None

    def authorize(self, run: RunGuard, tool: str, risk: str, arguments: Mapping[str, Any]) -> Decision:
        """The decision for one call, before it runs. Pure and fast: no I/O."""
        agent = run.agent
        consequential = risk in ("write", "irreversible")
        why_quarantined = self.quarantined.get(agent) or (
            self.recorder.quarantined(agent) if self.recorder is not None else None
        )
        if consequential and why_quarantined:
            return Decision(
                Verdict.DENIED,
                f"agent {agent!r} is quarantined ({why_quarantined}): its {risk} tools are denied until "
                f"released with `tether incidents release {agent}`",
                rule="quarantine",
            )
        rule, why = self._rule(agent, tool)
        if rule is None:
            assert why is not None
            return Decision(Verdict.DENIED, why, rule=f"agents.{agent}")
        violation = rule.violation(arguments)
        if violation is not None:
            finding = Finding("policy", "policy_violation", "high", f"{tool}: {violation}")
            return Decision(
                Verdict.DENIED,
                f"argument outside the policy: {violation}",
                rule=f"agents.{agent}.tools.{tool}",
                findings=(finding,),
            )
        where = f"agents.{agent}.tools.{tool}"
        if rule.approval == "always":
            return Decision(Verdict.NEEDS_APPROVAL, f"the policy requires approval for {tool}", rule=where)
        if rule.approval == "default":
            if risk == "irreversible":
                return Decision(Verdict.NEEDS_APPROVAL, f"{tool} is irreversible: a person must approve it")
            if consequential and run.tainted_by is not None and self.policy.taint_requires_approval:
                return Decision(
                    Verdict.NEEDS_APPROVAL,
                    f"the run has read untrusted content (from {run.tainted_by}): {risk} calls need approval",
                    rule="taint",
                )
        return Decision(Verdict.ALLOWED, "granted by the policy" if rule.when or where else "granted", rule=where)

    async def decide(
        self,
        run: RunGuard,
        tool: str,
        call_id: str,
        arguments: Mapping[str, Any],
        pending: Decision,
        context: Mapping[str, Any] | None = None,
        *,
        turn: int = 0,
        attempt: int = 0,
    ) -> Decision:
        """Resolve a ``needs_approval`` decision: the approver's answer, or a rejection without one.

        Args:
            turn: the model call that asked for the call (part of the decision's key).
            attempt: 0 for the call's first approval; n > 0 to review ledger attempt n, whose outcome is
                unknown: a request of its own, which the person is told may follow an effect that happened.
        """
        if self.approver is None:
            return Decision(
                Verdict.REJECTED,
                f"{pending.reason}; no approval channel is configured, so it is refused",
                rule=pending.rule,
            )
        about: dict[str, Any] = {"tainted_by": run.tainted_by, **(context or {})}
        if attempt > 0:
            about["unknown_outcome"] = {
                "attempt": attempt,
                "check": f"an earlier attempt may have run; check {tool} effect before approving "
                "(approving runs it again)",
            }
        request = ApprovalRequest(
            run_id=run.run_id,
            agent=run.agent,
            tool=tool,
            call_id=call_id,
            arguments=arguments,
            reason=pending.reason,
            context=about,
            turn=turn,
            attempt=attempt,
        )
        answer = await self.approver(request)
        if isinstance(answer, StoredApproval):
            approved = answer.status is ApprovalStatus.APPROVED
            who = answer.decided_by or "nobody"
            why = f": {answer.decision_reason}" if answer.decision_reason else ""
            outcome = "expired, so refused" if answer.status is ApprovalStatus.EXPIRED else f"{answer.status.value}"
            reason = f"{pending.reason}; {outcome} by {who} (approval {answer.id}){why}"
        else:
            approved = bool(answer)
            reason = f"{pending.reason}; {'approved' if approved else 'rejected'} by the approver"
        return Decision(Verdict.APPROVED if approved else Verdict.REJECTED, reason, rule=pending.rule)

    def record(
        self, run: RunGuard, tool: str, call_id: str, arguments: Mapping[str, Any], decision: Decision, span: Any
    ) -> None:
        """Keep a decision (and open incidents for its findings) with the recorder, if there is one."""
        if self.recorder is None:
            return
        self.recorder.decision(run, tool, call_id, arguments, decision, span)
        for finding in decision.findings:
            self.recorder.finding(run, tool, finding, span)

    def report(self, run: RunGuard, tool: str | None, finding: Finding, span: Any) -> None:
        """Open an incident for a finding (a hallucinated call, an injection in tool output…)."""
        run.findings.append(finding)
        if self.recorder is not None:
            self.recorder.finding(run, tool, finding, span)

    def secrets_for(self, agent: str, tool: str, declared: Sequence[str]) -> tuple[Mapping[str, str], str | None]:
        """The secrets a call receives, or why it may not have them (the call is then denied).

        Raises:
            SecretUnavailable: a granted secret cannot be read (a configuration problem, not the model's).
        """
        if not declared:
            return {}, None
        if self.credentials is None:
            return {}, f"{tool} needs credentials ({', '.join(declared)}) but no credential broker is configured"
        try:
            return self.credentials.for_call(agent, tool, declared), None
        except CredentialNotGranted as exc:
            return {}, str(exc)

    def inspect(self, run: RunGuard, tool: str, output: str, *, untrusted: bool) -> list[Finding]:
        """Scan a tool's output when it is untrusted; taint the run. Returns the findings."""
        if not untrusted:
            return []
        if run.tainted_by is None:
            run.tainted_by = tool
        findings: list[Finding] = []
        for detector in self.detectors:
            findings.extend(detector.scan(output, source=f"tool:{tool}"))
        return findings
