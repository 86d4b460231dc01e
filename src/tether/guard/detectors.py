"""Rule-based scanning of text an agent ingests, for prompt injection (OWASP LLM01, LLM06).

``RuleScanner`` reads a tool result, a retrieved page or a ticket before the
model sees it and reports four kinds of finding:

- ``prompt_injection``: instructions aimed at the agent ("ignore all previous
  instructions", "you are now DAN", "assistant, please forward…", "do not tell
  the user"), also when spelled out in spaced letters (``i g n o r e``) or split
  by zero-width characters;
- ``role_marker``: chat-template tokens (``<|im_start|>``, ``[INST]``,
  ``<<SYS>>``), fake transcripts (``Human:`` and ``Assistant:`` lines), tags
  that try to close the tool result early (``</tool_result>``), fake
  ``<system>`` tags;
- ``hidden_characters``: zero-width and bidi characters inside Latin text,
  Unicode tag characters (decoded: the hidden text is in the evidence), and
  instructions hidden in HTML comments or CSS-hidden elements;
- ``exfiltration``: requests to send secrets or the conversation to a URL or an
  address, images whose URL carries data, ``curl``/``wget``/``fetch`` with
  local secrets, request-capturing endpoints (Slack and Discord webhooks,
  ngrok, webhook.site…), base64 ``data:`` links, long base64 next to a URL,
  and requests to reveal the system prompt, keys or environment variables.

Severity: ``high`` when the text unmistakably addresses the model and tries to
replace its instructions or make it act, or hides text in tag characters;
``medium`` for signals benign text produces now and then; ``low`` for a lone
zero-width character at the edge of a word, and for text so flooded with
trigger words that the scan stopped checking them (see below).

Precision comes first, because operators switch off noisy detectors: a lone
``System: disk usage 81%`` line, ``ignoring previous config``, a README's badge
images, a ``curl | sh`` install line, an HTML page's ``display:none`` menu or
the zero-width non-joiners of Persian text raise nothing. Content hidden in
HTML is reported only when it addresses an AI or holds another finding.

Matching is case-insensitive, takes any run of up to six spaces or punctuation
marks for a word break, reads JSON's ``\\n`` escapes as newlines, removes
invisible characters first (so "ig\\u200bnore" is "ignore"), and joins up runs
of single letters ("i g n o r e", "i.g.n.o.r.e").

Speed: the scan runs on every tool result, so it is linear in the text and
cheap on the common case. The lower-cased text is split once into words (at C
speed, on bytes); a rule runs only if one of its trigger words is there, and
then only as an anchored match where that word occurs. The few rules without
a trigger word start with a literal (``<``, ``#``, ``![``), which the regex
engine finds quickly. No pattern nests quantifiers over overlapping classes,
checks that look further read bounded windows, and the non-ASCII work
(hidden characters, removing them before matching) is skipped for ASCII text.
Each occurrence of a trigger word costs a step in Python, so a scan examines
at most one per 30 characters of text (one per 60 for any single word): text
flooded with trigger words ("ai: ai: ai: …") gets a ``low`` finding saying the
rest was not checked, instead of a slow scan.

Findings come out in text order, one per kind and span (a finding inside a
same-kind finding at least as severe is dropped). At most ``max_findings`` are
kept, highest severity first, and the last one kept says how many were
dropped; a rule reports at most ``max_findings`` matches, so on flooded input
that count is a lower bound.

``scan_many`` runs several detectors — this one and, say, a classifier that
implements ``Detector`` — and merges their findings.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

from tether.guard.types import Detector, Finding, Severity

__all__ = ["DEFAULT_MAX_FINDINGS", "EVIDENCE_LIMIT", "RuleScanner", "scan_many"]

#: How many findings one scan keeps by default.
DEFAULT_MAX_FINDINGS: Final = 20
#: Evidence longer than this is cut, ending in ``…``.
EVIDENCE_LIMIT: Final = 200

_INJECTION: Final = "prompt_injection"
_ROLE: Final = "role_marker"
_HIDDEN: Final = "hidden_characters"
_EXFIL: Final = "exfiltration"

_RANK: Final[dict[Severity, int]] = {"low": 0, "medium": 1, "high": 2}

# Zero-width characters, invisible operators, the BOM, bidi embeddings, overrides and isolates.
_FORMAT_CHARS: Final = "\u200b-\u200d\u2060-\u2064\ufeff\u202a-\u202e\u2066-\u2069"
_TAG_CHARS: Final = "\U000e0000-\U000e007f"
_INVISIBLE_RE: Final = re.compile(f"[{_FORMAT_CHARS}{_TAG_CHARS}]")
# The format characters one by one, and the UTF-8 lead of the tag block: looking for each with ``in`` is
# several times faster than running the class above over a non-ASCII text that holds none.
_FORMAT_SINGLES: Final = tuple(
    chr(c)
    for c in (*range(0x200B, 0x200E), *range(0x2060, 0x2065), 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
)
_TAG_UTF8_LEAD: Final = b"\xf3\xa0"
# Format characters with at most three visible characters between them ("i\u200bg\u200bn"). The two
# classes are disjoint, so the repetition cannot backtrack more than three steps.
_FORMAT_CLUSTER_RE: Final = re.compile(f"[{_FORMAT_CHARS}]+(?:[^\\s{_FORMAT_CHARS}]{{1,3}}[{_FORMAT_CHARS}]+)*")
_TAG_RUN_RE: Final = re.compile(f"[{_TAG_CHARS}]+")
_RENDER_RE: Final = re.compile(f"[{_FORMAT_CHARS}]|[{_TAG_CHARS}]+|[\\n\\r\\t]")
_LATIN_VISIBLE_RE: Final = re.compile("[!-~]")
_BLACK_FLAG: Final = "\U0001f3f4"  # subdivision flags (England, Scotland, Wales) are tag sequences after it

# Words are runs of ASCII letters and digits; everything else separates them.
_WORD_TABLE: Final = bytes(c if 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 else 0x20 for c in range(256))
# Base64 characters become "a", everything else a space: a long run of "a" is a long base64-looking run.
_BASE64_TABLE: Final = bytes(0x61 if 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or c in b"+/" else 0x20 for c in range(256))

# Pattern templates run on lower-cased text. A space stands for a word separator (one to six
# non-alphanumerics: "ignore  -- previous\ninstructions" matches), so a literal space must be written
# \x20. Words and separators share no character, which keeps optional-word repetitions linear.
_SEP: Final = r"[^a-z0-9]{1,6}"
# How far back a rule's ``before`` pattern may reach.
_BEFORE_WINDOW: Final = 60


class _Rule:
    """A pattern matched where one of its trigger words occurs.

    ``pattern`` must start with the trigger word; ``before``, if given, must match the text
    just before it, and ``unless_before`` must not ("never share your password" is advice,
    not a request). The rule is skipped unless the text also holds one of the ``requires``
    words, which the pattern needs further on ("system override" needs "override"). A
    ``squashable`` rule is also tried on spaced-out letters once joined up.
    """

    __slots__ = (
        "before",
        "kind",
        "message",
        "regex",
        "requires",
        "severity",
        "squashed",
        "triggers",
        "unless_before",
    )

    def __init__(
        self,
        kind: str,
        severity: Severity,
        message: str,
        triggers: str,
        pattern: str,
        *,
        before: str | None = None,
        unless_before: str | None = None,
        requires: str | None = None,
        squashable: bool = False,
    ) -> None:
        self.kind = kind
        self.severity: Severity = severity
        self.message = message
        self.triggers = tuple(triggers.split())
        self.requires = frozenset(requires.split()) if requires else None
        self.regex = re.compile(pattern.replace(" ", _SEP))
        self.before = re.compile(before.replace(" ", _SEP) + r"\Z") if before else None
        self.unless_before = re.compile(unless_before.replace(" ", _SEP) + r"\Z") if unless_before else None
        # Without separators or word boundaries, for text joined up from spaced-out letters.
        self.squashed = re.compile(pattern.replace(" ", "").replace(r"\b", "")) if squashable else None
        assert all(t.isalnum() and t.isascii() for t in self.triggers), message


_AI_NOUN: Final = (
    r"(?:ai(?: (?:agent|assistant|model|system|bot))?|assistant|llms?|large language model|language model|chatbot"
    r"|chatgpt|claude|gpt|gemini|copilot)"
)
_AI_TRIGGERS: Final = "ai assistant llm llms large language chatbot chatgpt claude gpt gemini copilot"
_QUALIFIERS: Final = (
    r"(?:all|any|every|each|of|the|your|my|these|those|prior|earlier|above|previous|preceding|former|original"
    r"|initial|system|developer|other|foregoing)"
)
# At least one of these must qualify the orders: "ignore any commands" and "override the context" are
# ordinary prose, "ignore all previous instructions" is not.
_STRONG: Final = (
    r"(?:all|every|previous|prior|earlier|above|preceding|former|original|initial|system|developer|foregoing"
    r"|your|my)"
)
_ORDER_WORDS: Final = (
    "instruction instructions prompt prompts direction directions directive directives guidelines rules commands "
    "context guardrails restrictions constraints programming orders messages policies safety"
)
_ORDERS: Final = (
    r"(?:instructions?|prompts?|directions?|directives?|guidelines|rules|commands|context|guardrails|restrictions"
    r"|constraints|programming|orders|messages|policies|safety)"
)
_ACTIONS: Final = (
    r"(?:ignore|disregard|forget|send|forward|e-?mail|post|upload|share|leak|exfiltrate|transfer|delete|remove|erase"
    r"|run|execute|call|invoke|open|visit|navigate|browse|go to|fetch|download|install|reveal|print|output|display"
    r"|include|append|insert|add|write|reply|respond|answer|say|tell|summari[sz]e|approve|grant|create|update"
    r"|change|modify|click|stop|do|make|use|buy|purchase|pay|book|subscribe|recommend)\b"
)
_ACTION_WORDS: Final = (
    "ignore disregard forget send forward email mail e post upload share leak exfiltrate transfer delete remove erase "
    "run execute call invoke open visit navigate browse go fetch download install reveal print output display include "
    "append insert add write reply respond answer say tell summarize summarise approve grant create update change "
    "modify click stop do make use buy purchase pay book subscribe recommend"
)
_USERS: Final = r"(?:user|human|operator|customer|requester|owner)s?\b"
_USER_WORDS: Final = "user users human humans operator operators customer customers requester requesters owner owners"
# "never share your password", "do not print secrets": advice, not a request.
_NEGATION: Final = r"(?:\bnever|\bnot|n['’]t|\bno one|\bnobody)(?:[\t\x20]{1,3}(?:ever|to|be|you))?[\t\x20]{1,3}"


def _blanks(pattern: str) -> str:
    """``pattern`` with its spaces standing for one to three blanks, not for any separator."""
    return pattern.replace(" ", r"[\t\x20]{1,3}")


_ASK_VERBS: Final = (
    r"(?:reveal|print|output|dump|leak|tell me|give me|send me|share|echo|disclose|expose|paste|write out|repeat)"
)
_ASK_QUALIFIERS: Final = r"(?:me|us|the|of|full|complete|entire|stored|current|available|contents|file)"
_REVEAL_VERBS: Final = (
    "reveal print show output display repeat dump leak tell give send share return echo write disclose expose paste"
    " recite spell"
)

_RULES: Final = (
    # --- instructions aimed at the agent
    _Rule(
        _INJECTION,
        "high",
        "text tells the agent to ignore its instructions",
        "ignore disregard forget bypass stop",
        rf"(?:ignore|disregard|forget|bypass|stop following) (?:{_QUALIFIERS} ){{0,2}}{_STRONG} "
        rf"(?:{_QUALIFIERS} ){{0,2}}{_ORDERS}\b",
        squashable=True,
        requires=_ORDER_WORDS,
    ),
    _Rule(
        _INJECTION,
        "high",
        "text tells the agent to ignore everything before it",
        "ignore disregard forget",
        r"(?:ignore|disregard|forget) (?:everything|anything|all) (?:(?:written|said|stated|you were told"
        r"|you have been told|mentioned) )?(?:above|before|previously|prior|so far|until now|up to (?:now|here))\b"
        r"|(?:ignore|disregard|forget) (?:the |all (?:of )?the )?(?:above|previous|preceding) (?:and|instead)\b",
        squashable=True,
        requires="above before previously prior far now here previous preceding",
    ),
    _Rule(
        _INJECTION,
        "high",
        "text tells the agent to forget what it was told",
        "forget",
        r"forget (?:everything|all) (?:you (?:know|were told|have been told|learned)"
        r"|your (?:instructions|rules|training|guidelines))\b",
        squashable=True,
        requires="know told learned instructions rules training guidelines",
    ),
    _Rule(
        _INJECTION,
        "high",
        "text tells the agent to hide something from the user",
        "do don dont never must mustn should shouldn keep hide",
        rf"(?:do not|don['’]?t|never|must not|mustn['’]?t|should not|shouldn['’]?t) (?:(?:tell|inform"
        rf"|(?:mention|reveal|show|disclose) (?:(?:this|it|that|anything) )?to) (?:the )?{_USERS}"
        rf"|let (?:the )?{_USERS} know\b)"
        rf"|(?:keep|hide) (?:this|it|these instructions|the following) (?:(?:secret|hidden|confidential) )?"
        rf"from (?:the )?{_USERS}",
        squashable=True,
        requires=_USER_WORDS,
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text tells the agent to act without the user knowing",
        "without",
        rf"without (?:telling|informing|notifying|alerting|letting) (?:the )?{_USERS}",
        squashable=True,
        requires=_USER_WORDS,
    ),
    _Rule(
        _INJECTION,
        "high",
        "text claims to give the agent its real task",
        "your",
        r"your (?:real|true|actual|secret|hidden) (?:task|goal|job|objective|purpose|mission|instructions?|role"
        r"|directive|assignment|orders)s? (?:is|are|will be|now is|is now)\b",
        squashable=True,
        requires="real true actual secret hidden",
    ),
    _Rule(
        _INJECTION,
        "high",
        "text tells the model what it must do as an AI",
        "as",
        rf"as an? (?:{_AI_NOUN}|artificial intelligence|ai language model) (?:you|it is your) (?:must|should|will"
        r"|shall|need to|have to|are required to|are obligated to|are instructed to|duty)\b",
        squashable=True,
        requires=f"{_AI_TRIGGERS} artificial",
    ),
    _Rule(
        _INJECTION,
        "high",
        "text gives the AI an order",
        f"{_AI_TRIGGERS} agent",
        rf"(?:{_AI_NOUN}|agent(?= please))(?: please)?[\t\x20]{{0,3}}[,:!-]{{1,3}} "
        rf"(?:(?:please|you must|you should|must|now|immediately|first|also|kindly|then) ){{0,2}}{_ACTIONS}",
        # At the start of a line or a sentence: "claude.ai: do not retry" names a website.
        before=r"(?:^|[\n>\"'(\[*#]|[.!?:;-][\t\x20])[\t\x20]*(?:(?:dear|hey|hi|hello|attention|note to|message to"
        r"|instructions for|important for|to) )?(?:the )?",
        requires=_ACTION_WORDS,
    ),
    _Rule(
        _INJECTION,
        "high",
        "text states what the AI must do",
        "important note attention urgent critical warning notice reminder",
        rf"(?:important|note|attention|urgent|critical|warning|notice|reminder)[\t\x20]{{0,3}}[:!-]{{0,3}} "
        rf"(?:for )?(?:the |all |any )?{_AI_NOUN}s? (?:must|should|shall|needs to|has to|is required to|will now"
        r"|is to|are to|must now)\b",
        requires=_AI_TRIGGERS,
    ),
    _Rule(
        _INJECTION,
        "high",
        "text announces a system override",
        "system admin administrator developer emergency root sudo god",
        r"(?:system|admin|administrator|developer|emergency|root|sudo|god) overrides?\b",
        squashable=True,
        requires="override overrides",
    ),
    _Rule(
        _INJECTION,
        "high",
        "text tells the model it is no longer bound by its rules",
        "you",
        rf"you are no longer (?:bound|restricted|limited|required|obligated|an? {_AI_NOUN}|claude|chatgpt)\b"
        r"|you are now (?:dan|in (?:developer|god|admin|jailbreak|jailbroken|unrestricted|dan|evil|sudo) mode"
        r"|(?:(?:an?|the) )?(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|unaligned|different|new)"
        r" (?:ai|assistant|model|bot|chatbot|persona|character|entity|version)|free (?:from|of))\b",
        squashable=True,
        requires="longer now",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text gives the model a new role",
        "you",
        r"you are now (?:an?|the|my|playing|acting as|roleplaying) (?:[a-z]+ ){0,2}(?:ai|assistant|bot|chatbot"
        r"|model|agent|persona|character|hacker|expert|pirate|shell|terminal|linux)\b",
        requires="now",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text gives the model a new role",
        "from",
        r"from now on you (?:are|will|must|shall|should|have to)\b",
        requires="now",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text asks the model to play a role",
        "act behave",
        r"(?:act|behave) as (?:an?|the|if|though|my)\b",
        before=r"(?:^|[.!?:;\n])[\t\x20]*(?:please )?",
        requires="as",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text asks the model to play a role",
        "you pretend roleplay role",
        r"you (?:will|must|should|shall|are to|now) (?:now )?(?:act|behave|pretend|roleplay|role-play|respond) as\b"
        r"|pretend (?:that )?you (?:are|['’]re)\b|role-?play as\b",
        requires="as are re",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text tells the agent to forget everything",
        "forget",
        r"forget (?:everything|all of that|all that|what (?:you were|i) told you)(?=[\t\x20]*(?:[.!,;:]|and\b|now\b))",
        squashable=True,
        requires="everything all what",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text tells the agent to override its rules",
        "override",
        rf"override (?:{_QUALIFIERS} ){{0,2}}{_STRONG} (?:{_QUALIFIERS} ){{0,2}}{_ORDERS}\b",
        squashable=True,
        requires=_ORDER_WORDS,
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text announces new instructions",
        "new updated revised real actual true secret hidden override system",
        # Blanks only between the words: "revised_prompt:" is a field name.
        _blanks(
            r"(?:new|updated|revised|real|actual|true|secret|hidden|override) (?:system )?"
            r"(?:instructions?|system prompt|prompt|directives?|orders)[\t\x20]{0,3}:|system prompt[\t\x20]{0,3}:"
        ),
        requires="instruction instructions prompt directive directives orders",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text addresses AI readers",
        "if",
        rf"if you (?:are|['’]?re) (?:an? )?(?:{_AI_NOUN}|automated (?:agent|system|assistant))\b",
        requires=_AI_TRIGGERS + " automated",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text addresses AI readers",
        "ai llm assistant language",
        r"(?:ai|llm|assistant|ai agent|language model)s? (?:reading|processing|parsing|summari[sz]ing|crawling"
        r"|scraping) this\b",
        requires="reading processing parsing summarizing summarising crawling scraping",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text addresses AI readers",
        "message messages instruction instructions note notes notice command directive memo",
        # Followed by a colon on the line ("Note to AI: …"); "instructions to Claude." is documentation.
        r"(?:message|instructions?|note|notice|command|directive|memo)s? (?:for|to) (?:the |any |all |every )?"
        r"(?:ai|llm|language model|ai (?:agent|assistant|model|system)|chatbot|claude|chatgpt|gpt)s?\b"
        r"(?=[^\n.:]{0,40}:)",
        requires=_AI_TRIGGERS,
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text addresses AI readers",
        "when",
        r"when the (?:ai|assistant|llm|model|agent) (?:reads|sees|processes|summari[sz]es|encounters|parses) this\b",
        requires="reads sees processes summarizes summarises encounters parses",
    ),
    _Rule(
        _INJECTION,
        "medium",
        "text asks for a jailbreak mode",
        "do dan developer god jailbreak jailbroken",
        r"(?:do anything now|(?:dan|developer|god|jailbreak|jailbroken) mode (?:enabled|activated|on|engaged))\b",
        squashable=True,
        requires="anything mode",
    ),
    _Rule(
        _ROLE,
        "medium",
        "fake end of tool output",
        "end",
        r"end of (?:the )?(?:tool|function) (?:output|results?|response)\b",
        requires="tool function",
    ),
    # --- requests for secrets, endpoints that collect them
    # Verb and object are separated by blanks only: "output, secrets" is a list, not a request.
    _Rule(
        _EXFIL,
        "high",
        "text asks for the system prompt",
        _REVEAL_VERBS,
        _blanks(
            r"(?:reveal|print|show|output|display|repeat|dump|leak|tell me|give me|send me|share|return|echo|write out"
            r"|disclose|expose|paste|recite|spell out) (?:(?:me|us|all|any|the|your|of|full|complete|entire|exact"
            r"|original|initial|hidden|verbatim|contents|text|current|every|its|this) ){0,4}"
            r"(?:system (?:prompt|message)|initial (?:prompt|instructions)|hidden instructions"
            r"|instructions you were given|prompt you were given|developer (?:prompt|message))\b"
        ),
        unless_before=_NEGATION,
        requires="prompt message instructions",
    ),
    _Rule(
        _EXFIL,
        "medium",
        "text asks for secrets, keys or environment variables",
        _REVEAL_VERBS,
        # "your" or "all" makes it a request to the reader; "dump the private key" is API documentation.
        _blanks(
            rf"{_ASK_VERBS} (?:{_ASK_QUALIFIERS} ){{0,2}}(?:your|all|every|any) (?:{_ASK_QUALIFIERS} ){{0,2}}"
            r"(?:api ?keys?|api_keys?|secret keys?|secrets|passwords?|credentials|access tokens?|auth tokens?"
            r"|bearer tokens?|private keys?|ssh keys?|environment variables|env vars|\.env(?: file)?"
            r"|aws (?:keys|credentials)|session cookies?|cookies)\b"
            rf"|{_ASK_VERBS} (?:{_ASK_QUALIFIERS} ){{0,4}}(?:~?/?\.ssh/id_[a-z0-9]+|id_rsa|~?/?\.aws/credentials"
            r"|/etc/(?:passwd|shadow))(?![\w/])"
        ),
        unless_before=_NEGATION,
        requires="your all every any ssh aws etc",
    ),
    _Rule(
        _EXFIL,
        "medium",
        "text asks for the system prompt",
        "what repeat",
        r"what (?:is|are|was|were) your (?:system prompt|initial instructions|instructions|original instructions)\b"
        r"|repeat (?:all )?(?:of )?(?:the )?(?:words|text|everything|instructions|content|lines) (?:above|before)\b",
        requires="your above before",
    ),
    _Rule(
        _EXFIL,
        "medium",
        "URL of a request-capturing endpoint (webhook, tunnel or request bin)",
        "hooks discord discordapp webhook requestbin pipedream ngrok interact oast burpcollaborator requestcatcher"
        " beeceptor hookbin postb canarytokens",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/|discord(?:app)?\.com/api/webhooks/"
        r"|webhook\.(?:site|office\.com)\b|requestbin\.(?:com|net)\b|pipedream\.net\b|ngrok(?:-free)?\.(?:io|app|dev)\b"
        r"|interact\.sh\b|oast\.(?:fun|me|pro|live|site|online)\b|burpcollaborator\.net\b|requestcatcher\.com\b"
        r"|beeceptor\.com\b|hookbin\.com\b|postb\.in\b|canarytokens\.com\b",
    ),
    _Rule(
        _EXFIL,
        "medium",
        "link to a base64 data: URI",
        "data",
        r"data:[a-z0-9.+/-]{1,60}(?:;[a-z0-9=.-]{1,40}){0,3};base64,",
        before=r"(?:\]\(|href\s{0,3}=\s{0,3}[\"']?)\s{0,3}",
        requires="base64",
    ),
    _Rule(
        _EXFIL,
        "medium",
        "data: URI with a page or a script",
        "data",
        r"data:(?:text/html|application/(?:x-)?javascript)[;,]",
        requires="html javascript",
    ),
)

_SQUASHABLE: Final = tuple(rule for rule in _RULES if rule.squashed is not None)


def _index_rules() -> dict[str, tuple[_Rule, ...]]:
    index: dict[str, list[_Rule]] = {}
    for rule in _RULES:
        for word in rule.triggers:
            index.setdefault(word, []).append(rule)
    return {word: tuple(rules) for word, rules in index.items()}


_RULES_BY_WORD: Final = _index_rules()
_TRIGGER_WORDS: Final = frozenset(_RULES_BY_WORD)
_SINGLE_LETTERS: Final = frozenset(chr(c) for c in range(0x61, 0x7B))
# Words that can make hidden HTML content read as orders to an AI; without one, it is not examined.
_AI_WORDS: Final = frozenset(
    {"ai", "llm", "llms", "assistant", "assistants", "chatbot", "chatgpt", "claude", "gpt", "gemini", "copilot"}
    | {"language", "agent", "agents"}
)
# Commands and scripts that send requests: a finding if a local or browser secret follows on the line.
_COMMANDS: Final = frozenset({"curl", "wget", "iwr", "irm", "invoke"})
# Browser secrets only: server code sends process.env tokens to its own APIs all the time.
_SCRIPTS: Final = frozenset({"fetch", "axios", "sendbeacon", "xmlhttprequest"})
# Verbs of "send <secrets> to <URL or address>".
_SENDS: Final = frozenset({"send", "post", "upload", "email", "mail", "forward", "transmit", "exfiltrate", "leak"})
# Words one of which must be in the text for the closing-tag pattern to run.
_CLOSING_TAG_WORDS: Final = frozenset(
    {"tool", "function", "search", "untrusted", "external", "document", "retrieved", "user", "observation"}
)
_WATCHED_WORDS: Final = frozenset(
    word.encode()
    for word in (
        _TRIGGER_WORDS
        | {word for rule in _RULES for word in rule.requires or ()}
        | _SINGLE_LETTERS
        | _AI_WORDS
        | _COMMANDS
        | _SCRIPTS
        | _SENDS
        | _CLOSING_TAG_WORDS
        | {"assistant", "human", "inst", "style", "img"}
    )
)

# Role markers in angle brackets, each pattern run only if the text could hold it (most HTML cannot).
_SPECIAL_TOKEN_RE: Final = re.compile(r"<\|\s{0,3}[a-z_]{2,32}\s{0,3}\|>")
_TEMPLATE_TAG_RE: Final = re.compile(r"<</?sys>>|<(?:start|end)_of_turn>")
_CLOSING_TAG_RE: Final = re.compile(
    r"</\s{0,2}(?:tool_results?|tool_response|tool_output|tool_use|function_results?|function_response"
    r"|function_output|function_calls|search_results?|untrusted[a-z_-]{0,30}|external_content|document_content"
    r"|retrieved_[a-z_]{1,30}|user_query|observation)\s{0,2}>|<(?:function_calls|tool_call)>"
)
_FAKE_SYSTEM_TAG_RE: Final = re.compile(
    r"<(?:system|system_prompt|system-prompt|sys|important_instructions|developer_instructions"
    r"|assistant_instructions|admin_instructions)(?:\s[^<>]{0,100})?>(?=[^<]{20})"
)
_INST_RE: Final = re.compile(r"\[/?INST\]")
# Starts at the newline before the heading (the text is given a leading newline), so runs of "#" are quick.
_HEADING_RE: Final = re.compile(
    r"\n[\t\x20]*(#{1,4}[\t\x20]*(?:system|instructions?|system prompt|human|assistant|response)[\t\x20]*:)"
)
_TRANSCRIPT_LINES: Final = 200
# A role label at the start of a line, with something said after it ("user:" alone opens a YAML mapping).
# Like the heading pattern it starts at the newline before, on text given a leading newline.
_ROLE_LINE_RE: Final = re.compile(r"\n[\t\x20>*_#]*(system|assistant|user|human|ai)[\t\x20*_]*:[\t\x20]*\S")

# "curl …" is a finding if a local secret shows up later on its line, within _COMMAND_WINDOW characters.
_COMMAND_SECRET_RE: Final = re.compile(
    r"(?:\$\(|`)[\t\x20]{0,3}(?:cat|env|printenv|base64|history|whoami|hostname|uname|ls|tar|gpg)\b|printenv\b"
    r"|/etc/passwd|/etc/shadow|\.ssh/|id_rsa|\.aws/credentials|\.env\b|\.netrc|\.git-credentials|\.bash_history"
)
_SCRIPT_SECRET_RE: Final = re.compile(r"document\.cookie|localstorage|sessionstorage")
_COMMAND_WINDOW: Final = 300

# "send <secrets> …" is a finding if an object follows within _OBJECT_WINDOW characters and a URL or an
# address within _DEST_WINDOW after that.
_SECRET_OBJECT_RE: Final = re.compile(
    r"(?:secrets?|credentials?|api[\x20_-]?keys?|passwords?(?![\x20_-]?(?:reset|change|expir|polic|strength))"
    r"|passwd|cookies?|conversations?"
    r"|chat[\x20_-]?(?:history|log|transcript)|system prompt|your (?:instructions|prompt)"
    r"|env(?:ironment)?[\x20_-]?(?:variables|vars)|\.env|private keys?|ssh keys?|id_rsa"
    r"|personal (?:data|information)|user data|customer data|pii|everything above)\b"
)
_OBJECT_WINDOW: Final = 70
# Between the verb and the object: words, blanks and commas ("send all API keys and passwords").
_PROSE_RE: Final = re.compile(r"[a-z0-9\t\x20,'’-]*")
# Between the object and the destination.
_TOWARDS_RE: Final = re.compile(r"\b(?:to|at|via|into|onto|using)\b")
_SEND_MESSAGE: Final = "text asks to send secrets or the conversation to a URL or address"
_DEST_WINDOW: Final = 150
_EMAIL_DOMAIN_RE: Final = re.compile(r"@[a-z0-9-]{1,63}\.[a-z]{2,}")
_TOKEN_END_RE: Final = re.compile(r"[\s)\]>\"']|$")

# The gaps stop at the next "[" or "<", where the next candidate starts, so no text is read twice.
_MD_IMAGE_RE: Final = re.compile(r"!\[[^\[\]\n]{0,300}\]\([\t\x20]{0,3}<?(https?://[^\s)>]{1,3000})")
_HTML_IMAGE_RE: Final = re.compile(r"<img\b[^<>]{0,500}?\bsrc\s{0,3}=\s{0,3}[\"']?(https?://[^\s\"'>]{1,3000})")
_MD_LINK_RE: Final = re.compile(r"\]\([\t\x20]{0,3}<?(https?://[^\s)>]{1,3000})")
# A placeholder in a URL naming what the attacker wants filled in: {secret}, $API_KEY, [DATA]…
# Documentation's own placeholders ({YOUR_API_KEY}) are left alone.
_URL_PLACEHOLDER_RE: Final = re.compile(
    r"(?:\{\{?|\$\{?|\$\(|\[|<|%7b|%24|%3c|%5b)(?!your)[a-z_\x20.-]{0,40}?(?:secret|key|token|password|passwd"
    r"|credential|conversation|history|prompt|chat|env|cookie|session|summary|message|email|ssn|card|data|info"
    r"|context|memory)"
)
_BASE64ISH_RE: Final = re.compile(r"[A-Za-z0-9+/_=-]{60,}")
# Runs of 40 or more are consumed whole, so shorter runs are the only ones retried: at most 40 steps each.
_LONG_RUN_RE: Final = re.compile(r"[a-z0-9+/]{40,}={0,2}")
_LONG_BASE64: Final = 200
_DATA_URI_RE: Final = re.compile(r"data(?::|%3a)[a-z0-9.+/-]{1,60}(?:;|%3b)base64(?:,|%2c)")
_TOKEN_BREAK_RE: Final = re.compile(r"[\s\"'()<>]")
_TOKEN_SEPARATORS: Final = (" ", "\n", "\t", '"', "'", "=", ":", ",", "(", "[", "{")
_DIGIT_RE: Final = re.compile(r"[0-9]")
_B64_URL_WINDOW: Final = 300

_SPACED_LETTERS_RE: Final = re.compile(r"(?<![a-z])(?:[a-z][\t\x20._*~|/\\:;,'\"-]{1,4}){5,}[a-z](?![a-z])")
_NON_LETTERS_RE: Final = re.compile(r"[^a-z]+")
# Spelling out even the shortest instruction ("god override") takes seven different letters.
_SPACED_MIN_LETTERS: Final = 7
# Six single letters in a row among the separated words; it starts with a literal, so it is quick to rule out.
_SPACED_GATE_RE: Final = re.compile(rb" [a-z] +[a-z] +[a-z] +[a-z] +[a-z] +[a-z] ")

_HIDDEN_STYLE_RE: Final = re.compile(
    r"style\s{0,3}=\s{0,3}[\"'][^\"'<>]{0,300}?(?:display\s{0,3}:\s{0,3}none|visibility\s{0,3}:\s{0,3}hidden"
    r"|font-size\s{0,3}:\s{0,3}0(?:\.0+)?(?:px|pt|em|rem|%)?\s{0,3}(?:[;\"']|!important)"
    r"|opacity\s{0,3}:\s{0,3}0(?:\.0+)?\s{0,3}[;\"'!]"
    r"|(?<![\w-])color\s{0,3}:\s{0,3}(?:#fff(?:fff)?|white|rgba?\(\s{0,3}255\s{0,3},\s{0,3}255\s{0,3},\s{0,3}255)\b)"
)
_TAG_NAME_RE: Final = re.compile(r"<([a-z][a-z0-9-]{0,30})")
_AI_ADDRESS_RE: Final = re.compile(
    r"\b(?:ai|llms?|assistants?|chatbot|chatgpt|claude|gpt|gemini|copilot|language models?|agents?)\b"
)
# Orders to the reader, not remarks about a product's assistant ("the assistant widget must load lazily").
_IMPERATIVE_RE: Final = re.compile(
    r"\b(?:ignore|disregard|instead|instructions?|prompt|you (?:must|should|will|are to)|do not|don't|never (?:tell"
    r"|mention|reveal)|always (?:say|reply|respond|answer|include|recommend|mention))\b"
)
_HIDDEN_BODY_LIMIT: Final = 1000
_HIDDEN_ELEMENTS_LIMIT: Final = 100


@dataclass(slots=True)
class _Candidate:
    kind: str
    severity: Severity
    message: str
    start: int  # in the original text
    end: int


class _View:
    """The text as the rules see it: invisible characters removed, lower-cased, with a way back to offsets.

    Attributes:
        clean: the text without invisible characters.
        low: ``clean`` lower-cased, with JSON's ``\\n``, ``\\r`` and ``\\t`` read as whitespace, offset for offset.
        octets: ``low`` as bytes, one per character (``?`` for any non-ASCII one), for the fast checks.
        separated: ``octets`` with every non-alphanumeric turned into a space.
        words: the watched words ``low`` contains.
        invisible: whether the text holds invisible characters.
    """

    __slots__ = ("_cuts", "clean", "invisible", "low", "octets", "separated", "words")

    def __init__(self, text: str) -> None:
        self.invisible = not text.isascii() and (
            any(map(text.__contains__, _FORMAT_SINGLES)) or _TAG_UTF8_LEAD in text.encode("utf-8", "surrogatepass")
        )
        # cuts[k]: where the k-th removed character would sit in the clean text (built in C: text flooded
        # with invisible characters has one per character).
        pieces = _INVISIBLE_RE.split(text) if self.invisible else [text]
        self._cuts = list(itertools.accumulate(map(len, pieces[:-1])))
        self.clean = "".join(pieces) if self._cuts else text
        low = self.clean.lower()
        if len(low) != len(self.clean):
            # U+0130 is the only character whose lower case is longer; offsets must not move.
            low = self.clean.replace("\u0130", "i").lower()
        if "\\" in low:
            # Tool output is often JSON: read its escaped newlines and tabs as the real thing, at the same
            # length, or "\\n\\nIGNORE" would be the single word "nnignore".
            low = low.replace("\\n", " \n").replace("\\r", "  ").replace("\\t", "  ")
        self.low = low
        # One byte per character, so offsets in bytes are offsets in the text; non-ASCII letters separate words.
        self.octets = low.encode("ascii", "replace")
        self.separated = self.octets.translate(_WORD_TABLE)
        self.words = frozenset(w.decode() for w in _WATCHED_WORDS.intersection(self.separated.split()))

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original-text span of ``clean[start:end]``."""
        if not self._cuts:
            return start, end
        first = start + bisect.bisect_right(self._cuts, start)
        if end <= start:
            return first, first
        return first, end + bisect.bisect_right(self._cuts, end - 1)

    def occurrences(self, word: str) -> Iterator[int]:
        """Where ``word`` occurs as a whole word in ``low``."""
        needle, separated = word.encode(), self.separated
        size, length = len(needle), len(separated)
        at = separated.find(needle)
        while at != -1:
            after = at + size
            if (at == 0 or separated[at - 1] == 0x20) and (after == length or separated[after] == 0x20):
                yield at
            at = separated.find(needle, at + 1)

    # The bare word is searched for and its ends checked: " word " would be faster to check but much
    # slower to find, as separated text is mostly spaces and the search skips ahead on its last byte.

    def find_word(self, word: str, start: int) -> int:
        """Where ``word`` first occurs as a whole word in ``low[start:]``, or -1."""
        needle, separated = word.encode(), self.separated
        at = separated.find(needle, start)
        while at != -1 and not self._whole(at, len(needle)):
            at = separated.find(needle, at + 1)
        return at

    def rfind_word(self, word: str, start: int, end: int) -> int:
        """Where ``word`` last starts as a whole word in ``low[start:end]``, or -1."""
        needle, separated = word.encode(), self.separated
        at = separated.rfind(needle, start, end + len(needle) - 1)
        while at != -1 and not self._whole(at, len(needle)):
            at = separated.rfind(needle, start, at + len(needle) - 1)
        return at

    def _whole(self, at: int, size: int) -> bool:
        separated, after = self.separated, at + size
        return (at == 0 or separated[at - 1] == 0x20) and (after == len(separated) or separated[after] == 0x20)


_BUDGET_MESSAGE: Final = "text repeats trigger words so often that the rest of them were not checked"


class _Budget:
    """How many trigger-word occurrences a scan examines, in proportion to the text's length.

    Ordinary text uses a small fraction of it; text flooded with trigger words ("ai: ai: ai: …")
    would otherwise cost a step in Python per word. Each word gets a share, so flooding one
    word does not hide another; running out is itself reported, as a low finding.
    """

    __slots__ = ("_per_word", "_words", "left", "ran_out_at")

    def __init__(self, size: int) -> None:
        self.left = size // 30 + 200
        self._per_word = size // 60 + 100
        self._words: dict[str, int] = {}
        self.ran_out_at: int | None = None

    def spend(self, at: int, word: str = "") -> bool:
        used = self._words.get(word, 0)
        if self.left <= 0 or used >= self._per_word:
            if self.ran_out_at is None:
                self.ran_out_at = at
            return False
        self.left -= 1
        self._words[word] = used + 1
        return True


class RuleScanner:
    """Finds prompt injection, role markers, hidden characters and exfiltration attempts with rules.

    Args:
        max_findings: the most findings one scan returns (highest severity first; the last
            one kept says how many more were dropped).
    """

    name: str = "rules"

    def __init__(self, *, max_findings: int = DEFAULT_MAX_FINDINGS) -> None:
        if max_findings < 1:
            raise ValueError(f"max_findings must be at least 1, got {max_findings}")
        self._max = max_findings

    def scan(self, text: str, *, source: str) -> list[Finding]:
        """Findings in ``text``, in text order (``source`` is not used: every source is treated alike)."""
        if not text:
            return []
        view = _View(text)
        found: list[_Candidate] = []
        if view.invisible:
            found.extend(self._hidden_characters(text))
        budget = _Budget(len(text))
        found.extend(self._word_rules(view, budget))
        if len(view.words & _SINGLE_LETTERS) >= _SPACED_MIN_LETTERS and _SPACED_GATE_RE.search(
            b" %s " % view.separated
        ):
            found.extend(self._spaced_letters(view, budget))
        found.extend(self._role_markers(view))
        if "assistant" in view.words or "human" in view.words:
            transcript = _transcript(view)
            if transcript is not None:
                found.append(transcript)
        found.extend(self._commands(view, budget, _COMMANDS, _COMMAND_SECRET_RE, "shell command sends local secrets"))
        found.extend(self._commands(view, budget, _SCRIPTS, _SCRIPT_SECRET_RE, "script sends browser secrets"))
        found.extend(self._send_secrets(view, budget))
        if "://" in view.low:
            found.extend(self._image_urls(view))
            found.extend(self._link_placeholders(view))
            if b"a" * _LONG_BASE64 in view.octets.translate(_BASE64_TABLE):
                found.extend(self._long_base64(view))
        if "<!--" in view.low or "style" in view.words:
            found.extend(self._hidden_html(view, found))
        if budget.ran_out_at is not None:
            at = budget.ran_out_at
            found.append(_Candidate(_INJECTION, "low", _BUDGET_MESSAGE, *view.span(at, min(len(view.low), at + 40))))
        return self._finish(text, found)

    def _word_rules(self, view: _View, budget: _Budget) -> Iterator[_Candidate]:
        low, words = view.low, view.words
        counts: dict[_Rule, int] = {}
        for word in sorted(words & _TRIGGER_WORDS):
            rules = [
                rule for rule in _RULES_BY_WORD[word] if rule.requires is None or not words.isdisjoint(rule.requires)
            ]
            if not rules:
                continue
            for at in view.occurrences(word):
                if not budget.spend(at, word):
                    break
                for rule in rules:
                    match = rule.regex.match(low, at)
                    if match is None:
                        continue
                    window = max(0, at - _BEFORE_WINDOW)
                    if rule.before is not None and rule.before.search(low, window, at) is None:
                        continue
                    if rule.unless_before is not None and rule.unless_before.search(low, window, at) is not None:
                        continue
                    if counts.get(rule, 0) >= self._max:
                        continue
                    counts[rule] = counts.get(rule, 0) + 1
                    yield _Candidate(rule.kind, rule.severity, rule.message, *view.span(at, match.end()))

    def _spaced_letters(self, view: _View, budget: _Budget) -> Iterator[_Candidate]:
        reported = 0
        for match in _SPACED_LETTERS_RE.finditer(view.low):
            hit = _squashed_match(_NON_LETTERS_RE.sub("", match.group()), budget, match.start())
            if hit is None:
                continue
            rule, spelled = hit
            message = f"{rule.message} (spelled out in spaced letters: {spelled!r})"
            yield _Candidate(_INJECTION, rule.severity, message, *view.span(match.start(), match.end()))
            reported += 1
            if reported >= self._max:
                return

    def _role_markers(self, view: _View) -> Iterator[_Candidate]:
        low = view.low
        if "<" in low:
            words = view.words
            patterns: list[tuple[re.Pattern[str], Severity, str]] = []
            if "<|" in low:
                patterns.append((_SPECIAL_TOKEN_RE, "high", "chat-template special token"))
            if "<<" in low or "_of_turn>" in low:
                patterns.append((_TEMPLATE_TAG_RE, "high", "chat-template marker"))
            if not words.isdisjoint(_CLOSING_TAG_WORDS):
                patterns.append((_CLOSING_TAG_RE, "high", "tag that tries to close the tool result early"))
            if "<sys" in low or "_instructions" in low:
                patterns.append((_FAKE_SYSTEM_TAG_RE, "medium", "fake system tag"))
            for pattern, severity, message in patterns:
                for match in _limit(pattern.finditer(low), self._max):
                    yield _Candidate(_ROLE, severity, message, *view.span(match.start(), match.end()))
        if "[" in low and "inst" in view.words:
            # Llama's markers are upper case; "x[inst]" is code indexing a list.
            for match in _limit(_INST_RE.finditer(view.clean), self._max):
                yield _Candidate(_ROLE, "high", "chat-template marker", *view.span(match.start(), match.end()))
        if "#" in low:
            for match in _limit(_HEADING_RE.finditer(f"\n{low}"), self._max):
                start, end = match.start(1) - 1, match.end(1) - 1
                yield _Candidate(_ROLE, "medium", "prompt-template heading", *view.span(start, end))

    def _hidden_characters(self, text: str) -> Iterator[_Candidate]:
        reported = 0
        for match in _TAG_RUN_RE.finditer(text):
            start, end = match.span()
            decoded = _decode_tags(match.group())
            if start > 0 and text[start - 1] == _BLACK_FLAG and len(decoded) <= 7:
                continue  # a subdivision flag such as England's
            yield _Candidate(_HIDDEN, "high", f"Unicode tag characters hide text: {decoded[:80]!r}", start, end)
            reported += 1
            if reported >= self._max:
                break
        reported = 0
        for match in _FORMAT_CLUSTER_RE.finditer(text):
            start, end = match.span()
            if start == 0 and match.group() == "\ufeff":
                continue  # a byte-order mark
            cluster = match.group()
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            # Zero-width joiners in emoji, non-joiners in Persian and bidi controls in Arabic or Hebrew
            # text are legitimate: only invisible characters touching Latin text are suspicious.
            if _LATIN_VISIBLE_RE.search(f"{before}{cluster}{after}") is None:
                continue
            count = len(cluster) - len(_INVISIBLE_RE.sub("", cluster))
            splits_word = _is_word_char(before) and _is_word_char(after)
            override = "\u202d" in cluster or "\u202e" in cluster
            severity: Severity = "medium" if count > 1 or splits_word or override else "low"
            what = "bidi override" if override else "invisible character" if count == 1 else "invisible characters"
            start, end = _widen_to_word(text, start, end)
            yield _Candidate(_HIDDEN, severity, f"{count} {what} inside text", start, end)
            reported += 1
            if reported >= self._max:
                return

    def _commands(
        self, view: _View, budget: _Budget, triggers: frozenset[str], secret: re.Pattern[str], message: str
    ) -> Iterator[_Candidate]:
        present = sorted(triggers & view.words)
        if not present:
            return
        low = view.low
        reported = 0
        for word in present:
            # Text before `clear` is known to hold no secret, so it is not searched twice.
            clear = 0
            at = view.find_word(word, 0)
            while at != -1:
                if not budget.spend(at, word):
                    return
                line_end = low.find("\n", at, at + _COMMAND_WINDOW)
                end = line_end if line_end != -1 else min(len(low), at + _COMMAND_WINDOW)
                hit = secret.search(low, max(at, clear), end)
                if hit is not None:
                    yield _Candidate(_EXFIL, "high", f"{message} over HTTP", *view.span(at, hit.end()))
                    reported += 1
                    if reported >= self._max:
                        return
                    at = view.find_word(word, hit.end())
                    continue
                clear = max(clear, end - 24)  # a secret may straddle the window's end
                # The last command inside this window reaches furthest; the ones before it add nothing.
                later = view.rfind_word(word, at + 1, end)
                at = later if later != -1 else view.find_word(word, end)

    def _send_secrets(self, view: _View, budget: _Budget) -> Iterator[_Candidate]:
        present = sorted(_SENDS & view.words)
        low = view.low
        if not present or ("://" not in low and "@" not in low):
            return
        reported = 0
        for word in present:
            clear = 0
            for at in view.occurrences(word):
                if not budget.spend(at, word):
                    break
                verb_end = at + len(word)
                if low[verb_end : verb_end + 1] not in (" ", "\t"):
                    continue  # "email=…", "post(…)": code, not a request
                line_end = low.find("\n", at, at + _OBJECT_WINDOW)
                end = line_end if line_end != -1 else min(len(low), at + _OBJECT_WINDOW)
                thing = _SECRET_OBJECT_RE.search(low, max(verb_end, clear), end)
                while thing is not None and _is_word_char(low[thing.start() - 1]):
                    thing = _SECRET_OBJECT_RE.search(low, thing.end(), end)  # "nosecrets" is not "secrets"
                if thing is None:
                    clear = max(clear, end - 24)
                    continue
                if _PROSE_RE.fullmatch(low, verb_end, thing.start()) is None:
                    continue
                dest = _destination(low, thing.end(), thing.end() + _DEST_WINDOW)
                if dest is None or _TOWARDS_RE.search(low, thing.end(), dest[0]) is None:
                    continue
                yield _Candidate(_EXFIL, "high", _SEND_MESSAGE, *view.span(at, dest[1]))
                reported += 1
                if reported >= self._max:
                    return

    def _image_urls(self, view: _View) -> Iterator[_Candidate]:
        low = view.low
        matches: list[re.Match[str]] = []
        if "![" in low:
            matches.extend(_limit(_MD_IMAGE_RE.finditer(low), 4 * self._max))
        if "img" in view.words:
            matches.extend(_limit(_HTML_IMAGE_RE.finditer(low), 4 * self._max))
        reported = 0
        for match in matches:
            verdict = _suspicious_image_url(view.clean[match.start(1) : match.end(1)])
            if verdict is None:
                continue
            severity, reason = verdict
            yield _Candidate(_EXFIL, severity, f"image URL {reason}", *view.span(match.start(), match.end()))
            reported += 1
            if reported >= self._max:
                return

    def _link_placeholders(self, view: _View) -> Iterator[_Candidate]:
        if "](" not in view.low:
            return
        reported = 0
        for match in _MD_LINK_RE.finditer(view.low):
            url = match.group(1)
            query = url.find("?")
            if query == -1 or _URL_PLACEHOLDER_RE.search(url, query) is None:
                continue
            message = "link URL is a template for sending secrets or the conversation"
            yield _Candidate(_EXFIL, "high", message, *view.span(match.start(1), match.end(1)))
            reported += 1
            if reported >= self._max:
                return

    def _long_base64(self, view: _View) -> Iterator[_Candidate]:
        reported = 0
        low, clean = view.low, view.clean
        for match in _LONG_RUN_RE.finditer(low):
            start, end = match.span()
            if end - start < _LONG_BASE64:
                continue
            window_start = max(0, start - _B64_URL_WINDOW)
            if low.rfind("://", window_start, start) == -1 and low.find("://", end, end + _B64_URL_WINDOW) == -1:
                continue
            if _in_data_uri(low, start):
                continue
            if not _looks_base64(clean[start:end]) or _in_jwt(low, start):
                continue
            yield _Candidate(_EXFIL, "medium", "long base64 data next to a URL", *view.span(start, end))
            reported += 1
            if reported >= self._max:
                return

    def _hidden_html(self, view: _View, found: Sequence[_Candidate]) -> Iterator[_Candidate]:
        low = view.low
        # Where earlier findings start, in original-text offsets like theirs.
        marks = sorted(c.start for c in found if c.kind in (_INJECTION, _EXFIL))
        examined = 0
        open_at = low.find("<!--")
        while open_at != -1 and examined < _HIDDEN_ELEMENTS_LIMIT:
            close_at = low.find("-->", open_at + 4)
            if close_at == -1:
                break
            examined += 1
            if _hides_instructions(view, marks, open_at + 4, close_at):
                message = "HTML comment holds instructions for the AI"
                yield _Candidate(_HIDDEN, "medium", message, *view.span(open_at, close_at + 3))
            open_at = low.find("<!--", close_at + 3)
        if "style" not in view.words:
            return
        for match in _HIDDEN_STYLE_RE.finditer(low):
            examined += 1
            if examined > _HIDDEN_ELEMENTS_LIMIT:
                return
            tag_at = low.rfind("<", max(0, match.start() - 500), match.start())
            tag = _TAG_NAME_RE.match(low, tag_at) if tag_at != -1 else None
            body_at = low.find(">", match.end(), match.end() + 500)
            if tag is None or body_at == -1:
                continue
            body_at += 1
            body_end = low.find(f"</{tag.group(1)}", body_at, body_at + _HIDDEN_BODY_LIMIT)
            if body_end == -1:
                body_end = min(len(low), body_at + _HIDDEN_BODY_LIMIT)
            if _hides_instructions(view, marks, body_at, body_end):
                style = low[match.start() : match.end()].rsplit(";", 1)[-1].split("=", 1)[-1].strip("\"' ")
                message = f"text hidden with CSS ({style}) holds instructions for the AI"
                yield _Candidate(_HIDDEN, "medium", message, *view.span(tag_at, body_end))

    def _finish(self, text: str, found: list[_Candidate]) -> list[Finding]:
        kept = _deduplicate(found)
        dropped = max(0, len(kept) - self._max)
        if dropped:
            kept.sort(key=lambda c: (-_RANK[c.severity], c.start))
            kept = kept[: self._max]
        kept.sort(key=lambda c: (c.start, -_RANK[c.severity], c.kind))
        findings = [
            Finding(
                detector=self.name,
                kind=c.kind,
                severity=c.severity,
                message=c.message,
                evidence=_evidence(text, c.start, c.end),
                start=c.start,
                end=c.end,
            )
            for c in kept
        ]
        if dropped:
            last = findings[-1]
            findings[-1] = replace(last, message=f"{last.message} (+{dropped} more findings not shown)")
        return findings


def scan_many(detectors: Iterable[Detector], text: str, source: str) -> list[Finding]:
    """Runs every detector on ``text`` and merges their findings in text order.

    Findings two detectors both report stay apart (they are two opinions); findings without
    an offset come last. A detector that raises is not caught: the guard fails closed.
    """
    merged: list[Finding] = []
    seen: set[Finding] = set()
    for detector in detectors:
        for finding in detector.scan(text, source=source):
            if finding not in seen:
                seen.add(finding)
                merged.append(finding)
    merged.sort(key=lambda f: (f.start is None, f.start or 0))
    return merged


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _limit(matches: Iterator[re.Match[str]], most: int) -> Iterator[re.Match[str]]:
    for count, match in enumerate(matches):
        if count >= most:
            return
        yield match


def _squashed_match(joined: str, budget: _Budget, at: int) -> tuple[_Rule, str] | None:
    """The first squashable rule that matches where one of its trigger words occurs in ``joined``."""
    for rule in _SQUASHABLE:
        assert rule.squashed is not None
        for word in rule.triggers:
            found = joined.find(word)
            while found != -1:
                if not budget.spend(at, word):
                    return None
                match = rule.squashed.match(joined, found)
                if match is not None:
                    return rule, match.group()
                found = joined.find(word, found + 1)
    return None


def _transcript(view: _View) -> _Candidate | None:
    labels: set[str] = set()
    first = last = -1
    # The first _TRANSCRIPT_LINES role lines are enough to tell, and bound the work on flooded text.
    for match in _limit(_ROLE_LINE_RE.finditer(f"\n{view.low}"), _TRANSCRIPT_LINES):
        labels.add(match.group(1))
        if first == -1:
            first = match.start(1) - 1
        last = match.end() - 1
    mimics = ("assistant" in labels and labels & {"user", "human", "system"}) or (
        "human" in labels and labels & {"assistant", "ai"}
    )
    if not mimics:
        return None
    roles = ", ".join(sorted(labels))
    return _Candidate(_ROLE, "medium", f"text mimics a chat transcript ({roles})", *view.span(first, last))


def _destination(low: str, start: int, end: int) -> tuple[int, int] | None:
    """Where the first URL or e-mail address in ``low[start:end]`` starts and ends, or None."""
    found: list[int] = []
    url = low.find("://", start, end)
    if url != -1:
        found.append(url)
    at = low.find("@", start, end)
    while at != -1:
        if at > 0 and (_is_word_char(low[at - 1]) or low[at - 1] in ".+-") and _EMAIL_DOMAIN_RE.match(low, at):
            found.append(at)
            break
        at = low.find("@", at + 1, end)
    if not found:
        return None
    first = min(found)
    token_end = _TOKEN_END_RE.search(low, first, min(len(low), first + EVIDENCE_LIMIT))
    return first, token_end.start() if token_end is not None else first


def _suspicious_image_url(url: str) -> tuple[Severity, str] | None:
    """Why an image URL looks like it carries data out (images load without a click), or None."""
    query_at = url.find("?")
    if query_at != -1:
        query = url[query_at + 1 :]
        if _URL_PLACEHOLDER_RE.search(query.lower()):
            return "high", "is a template for sending secrets or the conversation"
        for pair in query.split("&"):
            value = pair.partition("=")[2]
            if len(value) >= 40 and not value.lower().startswith(("data:", "data%3a")):  # a badge's logo
                return "medium", "carries a long query value"
    path = url[: query_at if query_at != -1 else len(url)]
    for segment in path.split("/")[3:]:
        if len(segment) >= 60 and _BASE64ISH_RE.fullmatch(segment) and _looks_base64(segment):
            return "medium", "carries encoded data in its path"
    return None


def _looks_base64(blob: str) -> bool:
    # Long paths and hex digests make long runs too; base64 mixes cases and digits and has few slashes.
    return (
        blob.lower() != blob
        and blob.upper() != blob
        and _DIGIT_RE.search(blob) is not None
        and blob.count("/") * 20 <= len(blob)
    )


def _in_data_uri(low: str, start: int) -> bool:
    """Whether the run at ``start`` is a data: URI's payload (an inline image, a badge's logo), maybe URL-encoded."""
    marker = low.rfind("base64", max(0, start - 2000), start)
    return (
        marker != -1
        and _DATA_URI_RE.search(low, max(0, marker - 70), marker + 9) is not None
        and _TOKEN_BREAK_RE.search(low, marker, start) is None
    )


def _in_jwt(low: str, start: int) -> bool:
    """Whether the run at ``start`` is part of a JSON Web Token, which API responses carry next to URLs."""
    if low.startswith("eyj", start):
        return True
    floor = max(0, start - 1000)
    token_start = max(low.rfind(separator, floor, start) for separator in _TOKEN_SEPARATORS) + 1 or floor
    return low.startswith("eyj", token_start) and "." in low[token_start:start]


def _hides_instructions(view: _View, marks: Sequence[int], start: int, end: int) -> bool:
    """Whether hidden content ``clean[start:end]`` holds another finding or reads as orders to an AI."""
    if start >= end:
        return False
    first, last = view.span(start, end)
    at = bisect.bisect_left(marks, first)
    if at < len(marks) and marks[at] < last:
        return True
    if not _AI_WORDS & view.words:
        return False
    low = view.low
    return _AI_ADDRESS_RE.search(low, start, end) is not None and _IMPERATIVE_RE.search(low, start, end) is not None


def _deduplicate(found: list[_Candidate]) -> list[_Candidate]:
    """One finding per kind and span: drops a finding inside a same-kind one at least as severe."""
    found.sort(key=lambda c: (c.kind, c.start, -c.end, -_RANK[c.severity]))
    kept: list[_Candidate] = []
    cover_kind, cover_end, cover_rank = "", -1, -1
    for candidate in found:
        rank = _RANK[candidate.severity]
        if candidate.kind == cover_kind and candidate.end <= cover_end and rank <= cover_rank:
            continue
        kept.append(candidate)
        if candidate.kind != cover_kind or candidate.end > cover_end:
            cover_kind, cover_end, cover_rank = candidate.kind, candidate.end, rank
    return kept


def _decode_tags(run: str) -> str:
    return "".join(chr(ord(c) - 0xE0000) for c in run if 0x20 <= ord(c) - 0xE0000 < 0x7F)


def _widen_to_word(text: str, start: int, end: int) -> tuple[int, int]:
    """Extends a span over the word around it (at most 20 characters each side), for readable evidence."""
    low_limit = max(0, start - 20)
    while start > low_limit and not text[start - 1].isspace():
        start -= 1
    high_limit = min(len(text), end + 20)
    while end < high_limit and not text[end].isspace():
        end += 1
    return start, end


def _render(match: re.Match[str]) -> str:
    s = match.group()
    if len(s) > 1 or "\U000e0000" <= s <= "\U000e007f":
        return f"[hidden: {_decode_tags(s)}]"
    return s.encode("unicode_escape").decode("ascii")


def _evidence(text: str, start: int, end: int) -> str:
    """``text[start:end]`` with invisible characters shown (escaped, or decoded for tag text), capped."""
    snippet = text[start : min(end, start + 4 * EVIDENCE_LIMIT)]
    shown = _RENDER_RE.sub(_render, snippet)
    if len(shown) > EVIDENCE_LIMIT or end - start > len(snippet):
        return shown[: EVIDENCE_LIMIT - 1] + "…"
    return shown
