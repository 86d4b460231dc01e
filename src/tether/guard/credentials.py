"""Scoped credentials: secrets referenced by name, handed to a tool at call time, scrubbed from every record.

A tool declares the credentials it needs by name (``@tool(secrets=["pagerduty"])``);
the operator says where each one lives (``pagerduty = "env:PAGERDUTY_TOKEN"``,
``"file:/run/secrets/pd"``, or a scheme of their own such as ``vault:``) and
which (agent, tool) pairs may have it. At call time ``CredentialBroker.for_call``
reads the values — so a rotated secret is picked up on the next call — and
returns only those the tool declared *and* the pair was granted. The model never
sees them: they go into ``ToolContext.secrets``, not into the conversation.

Every value the broker hands out is registered with the process-wide
``Scrubber`` (``default_scrubber()``), and everything tether records passes
through it: span rows (both tracing paths build them in
``tether.store._rows.build_row``), spans exported over OTLP
(``tether.trace.exporter.ScrubbingSpanExporter``) and log records
(``install_log_scrubbing``). A known value, and its base64, URL, hex and
JSON-escaped forms, becomes ``[secret:NAME]``.

Errors (all ``UserError``: the message says what to fix, and never carries a value)::

    ConfigError
    ├── SecretUnavailable   a reference that cannot be read (unset variable, missing file, unknown scheme)
    └── SecretTooShort      a value too short to be scrubbed reliably
    CredentialNotGranted    a tool declared a secret its (agent, tool) pair was not granted
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from tether.errors import ConfigError, UserError

__all__ = [
    "MIN_SECRET_LENGTH",
    "ChainSecretStore",
    "CredentialBroker",
    "CredentialNotGranted",
    "EnvSecretStore",
    "FileSecretStore",
    "SecretLogFilter",
    "SecretRef",
    "SecretStore",
    "SecretTooShort",
    "SecretUnavailable",
    "Scrubber",
    "default_scrubber",
    "install_log_scrubbing",
]

logger = logging.getLogger(__name__)

#: Shortest value the scrubber accepts. Replacing every occurrence of a short
#: string ("abc", "1234", "admin") would mangle ordinary text in every span and
#: log line — and would still not protect it, since a short secret can be guessed.
MIN_SECRET_LENGTH: Final = 8

_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*$")
_SECRET_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class SecretUnavailable(ConfigError):
    """A secret reference that cannot be read. The message names the reference, never a value."""

    def __init__(self, ref: SecretRef | str, reason: str) -> None:
        self.ref = str(ref)
        self.reason = reason
        super().__init__(f"secret {self.ref} is unavailable: {reason}")


class SecretTooShort(ConfigError):
    """A secret value too short to be scrubbed from records without mangling ordinary text."""

    def __init__(self, name: str, length: int) -> None:
        self.name = name
        super().__init__(
            f"secret {name!r} is {length} characters long; tether only hands out secrets of at least "
            f"{MIN_SECRET_LENGTH} characters, because shorter ones cannot be scrubbed from traces and logs "
            "without mangling ordinary text: use a longer credential"
        )


class CredentialNotGranted(UserError):
    """A tool declared secrets that its (agent, tool) pair was not granted.

    Attributes:
        agent: the agent making the call.
        tool: the tool it called.
        missing: the declared names with no grant, sorted.
    """

    def __init__(self, agent: str, tool: str, missing: Iterable[str]) -> None:
        self.agent = agent
        self.tool = tool
        self.missing = tuple(sorted(missing))
        names = ", ".join(repr(n) for n in self.missing)
        super().__init__(
            f"tool {tool} needs secret(s) {names} but agent {agent} is not granted them for this tool: "
            f"grant them to ({agent!r}, {tool!r}), e.g. grants={{{agent!r}: {{{tool!r}: {list(self.missing)!r}}}}}"
        )


# --- references and stores ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: ``env:NAME``, ``file:/path``, or ``<scheme>:<path>`` for a registered store."""

    scheme: str
    path: str

    @classmethod
    def parse(cls, text: str | SecretRef) -> SecretRef:
        """Parse ``scheme:path``.

        Raises:
            ConfigError: no scheme, an empty path, or a scheme that is not ``[a-z][a-z0-9+.-]*``.
        """
        if isinstance(text, SecretRef):
            return text
        scheme, sep, path = text.partition(":")
        if not sep or not _SCHEME.match(scheme):
            raise ConfigError(
                f"secret reference {text!r} has no scheme: write env:VARIABLE, file:/path/to/file "
                "or <scheme>:<path> for a store you registered"
            )
        if not path:
            raise ConfigError(f"secret reference {text!r} names nothing after {scheme}:")
        return cls(scheme, path)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.path}"


@runtime_checkable
class SecretStore(Protocol):
    """Reads the value a reference points to, at the moment it is needed."""

    def get(self, ref: SecretRef) -> str:
        """The value.

        Raises:
            SecretUnavailable: it cannot be read (the message must not quote any value).
        """
        ...


class EnvSecretStore:
    """``env:NAME``: an environment variable, read at every call (so rotation works)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def get(self, ref: SecretRef) -> str:
        value = (os.environ if self._environ is None else self._environ).get(ref.path)
        if value is None:
            raise SecretUnavailable(ref, f"environment variable {ref.path} is not set")
        if not value:
            raise SecretUnavailable(ref, f"environment variable {ref.path} is empty")
        return value


class FileSecretStore:
    """``file:/path``: a file's contents without one trailing newline (as Docker and Kubernetes mount them).

    Args:
        root: relative paths are resolved against it (default: the working directory).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self._root = Path(root) if root is not None else None

    def get(self, ref: SecretRef) -> str:
        path = Path(ref.path)
        if self._root is not None and not path.is_absolute():
            path = self._root / path
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretUnavailable(ref, f"no file at {path}") from None
        except PermissionError:
            raise SecretUnavailable(ref, f"{path} is not readable by this process") from None
        except IsADirectoryError:
            raise SecretUnavailable(ref, f"{path} is a directory") from None
        except UnicodeDecodeError:
            # The exception's text quotes the offending bytes: never pass it on.
            raise SecretUnavailable(ref, f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise SecretUnavailable(ref, f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
        if not value:
            raise SecretUnavailable(ref, f"{path} is empty")
        return value


class _CallableStore:
    def __init__(self, func: Callable[[SecretRef], str]) -> None:
        self._func = func

    def get(self, ref: SecretRef) -> str:
        return self._func(ref)


class ChainSecretStore:
    """Sends each reference to the store registered for its scheme; ``env`` and ``file`` are built in.

    A store of your own plugs in by scheme, as a ``SecretStore`` or a plain callable::

        stores = ChainSecretStore()
        stores.register("vault", lambda ref: vault_client.read(ref.path))
    """

    def __init__(self, stores: Mapping[str, SecretStore | Callable[[SecretRef], str]] | None = None) -> None:
        self._stores: dict[str, SecretStore] = {"env": EnvSecretStore(), "file": FileSecretStore()}
        for scheme, store in (stores or {}).items():
            self.register(scheme, store)

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(sorted(self._stores))

    def register(self, scheme: str, store: SecretStore | Callable[[SecretRef], str]) -> None:
        """Serve ``<scheme>:...`` references from ``store`` (replacing any store for that scheme)."""
        if not _SCHEME.match(scheme):
            raise ConfigError(f"secret scheme {scheme!r} is not allowed: use [a-z][a-z0-9+.-]*, e.g. 'vault'")
        self._stores[scheme] = store if isinstance(store, SecretStore) else _CallableStore(store)

    def get(self, ref: SecretRef) -> str:
        store = self._stores.get(ref.scheme)
        if store is None:
            raise SecretUnavailable(
                ref, f"no store for scheme {ref.scheme!r} (known: {', '.join(self.schemes)}); register one first"
            )
        try:
            value = store.get(ref)
        except SecretUnavailable:
            raise
        except Exception as exc:
            # A plug-in's own error may quote what it read: keep only its type.
            raise SecretUnavailable(ref, f"the {ref.scheme} store failed ({type(exc).__name__})") from None
        if not isinstance(value, str):
            raise SecretUnavailable(ref, f"the {ref.scheme} store returned {type(value).__name__}, not str")
        return value


# --- scrubbing ----------------------------------------------------------------------------------------


def _b64_forms(raw: bytes) -> set[str]:
    """The value base64-encoded on its own, and the parts of it that survive inside a longer encoding.

    Inside a longer base64 stream (``Authorization: Basic base64(user:token)``) the
    value starts at one of three bit alignments; for each, the characters that
    depend on the value's bytes alone are the same whatever surrounds it.
    """
    forms = {base64.b64encode(raw).decode("ascii")}
    n = len(raw)
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode("ascii")
        start, end = -(-8 * k // 6), 8 * (k + n) // 6
        forms.add(encoded[start:end])
    forms |= {f.replace("+", "-").replace("/", "_") for f in forms}
    return forms


def _forms(value: str) -> set[str]:
    """Every form of ``value`` the scrubber looks for."""
    raw = value.encode("utf-8")
    forms = {value, raw.hex(), raw.hex().upper()}
    forms |= _b64_forms(raw)
    forms |= {urllib.parse.quote(value, safe=""), urllib.parse.quote(value), urllib.parse.quote_plus(value)}
    escaped = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1]}
    forms |= escaped
    forms |= {json.dumps(e, ensure_ascii=False)[1:-1] for e in escaped}  # JSON inside a JSON string
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


@dataclass(frozen=True, slots=True)
class _Compiled:
    """What ``scrub`` searches for, built once per registration.

    ``probes`` are the forms that contain no other form: a text holds a known
    form only if it holds a probe, so a clean text costs one ``str.find`` per
    probe. A probe's ``extensions`` are the longer forms that contain it (at an
    offset), checked only where the probe was found, so that the whole longer
    form is hidden (a secret inside a longer secret, a value inside its padded
    base64). Measured on this machine: Python's ``re`` with one alternation of
    the same ~70 forms took ~700 µs on 4 KB of clean text (it tries each
    alternative at each position); the probes take ~30 µs.
    """

    probes: tuple[str, ...]
    extensions: Mapping[str, tuple[tuple[int, str], ...]]
    labels: Mapping[str, str]


def _compile(names: Mapping[str, str]) -> _Compiled | None:
    if not names:
        return None
    labels: dict[str, str] = {}
    # Registration order decides which name a form shared by two values keeps.
    for value, name in names.items():
        for form in sorted(_forms(value)):
            labels.setdefault(form, f"[secret:{name}]")
    probes: list[str] = []
    extensions: dict[str, list[tuple[int, str]]] = {}
    # Shortest first: a form is a probe unless a shorter probe is inside it (then every form inside it is).
    for form in sorted(labels, key=lambda f: (len(f), f)):
        inside = [p for p in probes if p in form]
        if not inside:
            probes.append(form)
        for probe in inside:
            at = form.find(probe)
            while at != -1:
                extensions.setdefault(probe, []).append((at, form))
                at = form.find(probe, at + 1)
    return _Compiled(tuple(probes), {p: tuple(e) for p, e in extensions.items()}, labels)


class Scrubber:
    """Replaces known secret values (and their encoded forms) with ``[secret:NAME]``.

    Thread-safe: registration rebuilds what to search for under a lock and
    swaps it in whole; ``scrub`` reads whatever is current without locking.
    With nothing registered, ``scrub`` returns its argument at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # value -> name
        self._compiled: _Compiled | None = None

    @property
    def active(self) -> bool:
        """True when at least one secret is registered."""
        return self._compiled is not None

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"Scrubber({len(self._names)} secrets)"

    def register(self, name: str, value: str) -> None:
        """Scrub ``value`` from now on, shown as ``[secret:name]``; a value already known keeps its first name.

        Raises:
            SecretTooShort: the value has fewer than ``MIN_SECRET_LENGTH`` characters.
            ValueError: ``name`` is not 1-128 letters, digits or ``_.:-``.
        """
        if value in self._names:  # the common case (every call re-registers): no lock, no rebuild
            return
        if not _SECRET_NAME.match(name):
            raise ValueError(f"secret name {name!r} is not allowed: use 1-128 letters, digits or '_.:-'")
        if len(value) < MIN_SECRET_LENGTH:
            raise SecretTooShort(name, len(value))
        with self._lock:
            if value in self._names:
                return
            names = dict(self._names)
            names[value] = name
            self._compiled = _compile(names)
            self._names = names

    def forget(self, value: str) -> None:
        """Stop scrubbing ``value`` (e.g. a revoked credential that can no longer be used)."""
        with self._lock:
            if value in self._names:
                names = dict(self._names)
                del names[value]
                self._compiled = _compile(names)
                self._names = names

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._names = {}
            self._compiled = None

    def contains_secret(self, text: str) -> bool:
        """True when ``text`` holds a known value in any form."""
        compiled = self._compiled
        if compiled is None:
            return False
        return any(probe in text for probe in compiled.probes)

    def scrub(self, text: str) -> str:
        """``text`` with every known value (any form) replaced by ``[secret:NAME]``; ``text`` itself if none."""
        compiled = self._compiled
        if compiled is None:
            return text
        find = text.find
        hits: list[tuple[int, int, str]] | None = None
        for probe in compiled.probes:
            at = find(probe)
            if at == -1:
                continue
            if hits is None:
                hits = []
            labels, longer = compiled.labels, compiled.extensions.get(probe, ())
            while at != -1:
                hits.append((at, -(at + len(probe)), labels[probe]))
                for offset, form in longer:
                    begin = at - offset
                    if begin >= 0 and text.startswith(form, begin):
                        hits.append((begin, -(begin + len(form)), labels[form]))
                at = find(probe, at + 1)
        if hits is None:
            return text
        # Earliest first, longest first at one position; overlapping hits (one secret inside
        # another, two secrets sharing text) are hidden as one, named after the first.
        hits.sort()
        parts: list[str] = []
        position = 0
        for begin, negative_end, label in hits:
            end = -negative_end
            if begin < position:
                if end > position:
                    position = end
                continue
            parts.append(text[position:begin])
            parts.append(label)
            position = end
        parts.append(text[position:])
        return "".join(parts)

    def scrub_value(self, value: Any) -> Any:
        """A copy of ``value`` (strings, and lists, tuples and dicts of them, keys too) with secrets scrubbed.

        Returns ``value`` itself when nothing in it changed. Numbers, booleans and
        None pass through; any other object whose ``str`` holds a secret is
        replaced by its scrubbed ``str`` (as records store such objects anyway).
        """
        if self._compiled is None:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, (list, tuple)):
            items = [self.scrub_value(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return tuple(items) if isinstance(value, tuple) else items
        if isinstance(value, Mapping):
            return self.scrub_mapping(value)
        if value is None or isinstance(value, (int, float)):
            return value
        text = str(value)
        clean = self.scrub(text)
        return value if clean is text else clean

    def scrub_mapping(self, mapping: Mapping[str, Any]) -> Mapping[str, Any]:
        """``mapping`` with secrets scrubbed from keys and values; the same object when nothing changed."""
        if self._compiled is None:
            return mapping
        changed = False
        out: dict[str, Any] = {}
        for key, value in mapping.items():
            new_key = self.scrub(key) if isinstance(key, str) else key
            new_value = self.scrub_value(value)
            changed = changed or new_key is not key or new_value is not value
            out[new_key] = new_value
        return out if changed else mapping


_DEFAULT_SCRUBBER: Final = Scrubber()


def default_scrubber() -> Scrubber:
    """The process-wide scrubber every record passes through (span rows, OTLP export, logs)."""
    return _DEFAULT_SCRUBBER


# --- logs ---------------------------------------------------------------------------------------------


def _scrub_record(record: logging.LogRecord, scrubber: Scrubber) -> None:
    """Scrub a record's message, arguments, exception and stack text in place."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: keep what can be shown, scrubbed
        message = f"{record.msg} {record.args!r}"
    clean = scrubber.scrub(message)
    if clean is not message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_text is None:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        exc_text = scrubber.scrub(record.exc_text)
        if exc_text is not record.exc_text:
            record.exc_text = exc_text
            # A formatter that re-renders the exception object would bring the value back.
            record.exc_info = None
    if record.stack_info:
        record.stack_info = scrubber.scrub(record.stack_info)


class SecretLogFilter(logging.Filter):
    """A ``logging.Filter`` that scrubs each record it sees (put it on a handler to cover that handler)."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or _DEFAULT_SCRUBBER

    def filter(self, record: logging.LogRecord) -> bool:
        if self.scrubber.active:
            _scrub_record(record, self.scrubber)
        return True


_log_lock = threading.Lock()
_log_factory_installed = False


def install_log_scrubbing() -> None:
    """Scrub every log record in the process as it is created (idempotent; ``configure_tracing`` calls it).

    Done in the record factory rather than as a filter on the ``tether`` logger,
    because a logger's filters do not see records from its children
    (``tether.trace.exporter``) nor from libraries that may log a value (an HTTP
    client's debug lines). Attributes passed with ``extra=`` are set after the
    factory runs and are not covered: use ``SecretLogFilter`` on a handler for those.
    With no secret registered, the cost is one attribute check per record.
    """
    global _log_factory_installed
    with _log_lock:
        if _log_factory_installed:
            return
        previous = logging.getLogRecordFactory()
        scrubber = _DEFAULT_SCRUBBER

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if scrubber._compiled is not None:
                _scrub_record(record, scrubber)
            return record

        logging.setLogRecordFactory(factory)
        _log_factory_installed = True


# --- grants -------------------------------------------------------------------------------------------


class _SecretValues(Mapping[str, str]):
    """The secrets of one call: a read-only mapping whose repr shows names, never values."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"secret {name!r} was not granted to this call (granted: {sorted(self._values)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<secrets: {', '.join(sorted(self._values)) or 'none'}>"


Grants = Mapping[tuple[str, str], Iterable[str]] | Mapping[str, Mapping[str, Iterable[str]]]


def _normalise_grants(grants: Mapping[Any, Any]) -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], frozenset[str]] = {}
    for key, value in grants.items():
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
            pairs = [((key[0], key[1]), value)]
        elif isinstance(key, str) and isinstance(value, Mapping):
            pairs = [((key, tool), names) for tool, names in value.items()]
        else:
            raise ConfigError(
                f"grant {key!r} is not understood: use {{(agent, tool): [names]}} or {{agent: {{tool: [names]}}}}"
            )
        for pair, names in pairs:
            if isinstance(names, str):
                raise ConfigError(f"grant {pair!r}: give a list of secret names, not the string {names!r}")
            out[pair] = out.get(pair, frozenset()) | frozenset(names)
    return out


class CredentialBroker:
    """Hands each tool call the secrets it declared and its (agent, tool) pair was granted.

    Args:
        secrets: where each named secret lives: ``{"pagerduty": "env:PAGERDUTY_TOKEN"}``.
        grants: which secrets each (agent, tool) pair may receive, as
            ``{("oncall", "page"): ["pagerduty"]}`` or ``{"oncall": {"page": ["pagerduty"]}}``.
            There are no wildcards: least privilege means every pair is named.
        store: reads the references (default: ``env:`` and ``file:``; register more schemes on a
            ``ChainSecretStore``).
        scrubber: learns every value handed out (default: the process-wide one).

    Raises:
        ConfigError: a malformed reference, or a grant of a secret that ``secrets`` does not define.
    """

    def __init__(
        self,
        secrets: Mapping[str, SecretRef | str],
        grants: Grants,
        *,
        store: SecretStore | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        self._refs: dict[str, SecretRef] = {}
        for name, ref in secrets.items():
            if not _SECRET_NAME.match(name):
                raise ConfigError(f"secret name {name!r} is not allowed: use 1-128 letters, digits or '_.:-'")
            self._refs[name] = SecretRef.parse(ref)
        self._grants = _normalise_grants(grants)
        for (agent, tool), names in self._grants.items():
            unknown = sorted(names - self._refs.keys())
            if unknown:
                raise ConfigError(
                    f"grant ({agent!r}, {tool!r}) names secret(s) {unknown} that are not defined: "
                    f"add them to secrets, e.g. {{{unknown[0]!r}: 'env:{unknown[0].upper()}'}}"
                )
        self._store: SecretStore = store or ChainSecretStore()
        self._scrubber = scrubber or _DEFAULT_SCRUBBER

    def granted(self, agent: str, tool: str) -> frozenset[str]:
        """The names (agent, tool) may receive."""
        return self._grants.get((agent, tool), frozenset())

    def check(self, agent: str, tool: str, declared: Iterable[str]) -> None:
        """Raise ``CredentialNotGranted`` if ``declared`` holds a name not granted to (agent, tool); reads nothing."""
        missing = set(declared) - self.granted(agent, tool)
        if missing:
            raise CredentialNotGranted(agent, tool, missing)

    def for_call(self, agent: str, tool: str, declared: Iterable[str]) -> Mapping[str, str]:
        """The values of the secrets ``tool`` declared, read now.

        Raises:
            CredentialNotGranted: a declared name is not granted to (agent, tool).
            SecretUnavailable: a granted secret cannot be read.
            SecretTooShort: a value is too short to be scrubbed.
        """
        wanted = set(declared)
        self.check(agent, tool, wanted)
        values: dict[str, str] = {}
        for name in sorted(wanted):
            value = self._store.get(self._refs[name])
            # Registered before the tool sees it: whatever the tool does with it is scrubbed.
            self._scrubber.register(name, value)
            values[name] = value
        return _SecretValues(values)

    def __repr__(self) -> str:
        return f"CredentialBroker(secrets={sorted(self._refs)}, grants={len(self._grants)})"
