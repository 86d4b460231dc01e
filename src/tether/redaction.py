"""Redaction: the one path every recorded or returned string goes through to lose known secret values.

A value is registered once (``default_scrubber().register(name, value)``) by
whatever reads it: the credential broker for a tool's scoped secret, the
gateway for a provider key it read from ``api_key_env``. From then on it — and
its base64 (three alignments, standard and URL-safe), URL, hex (both cases) and
JSON-escaped forms — becomes ``[secret:NAME]`` in span rows
(``tether.store.rows.build_row``), spans exported over OTLP
(``tether.trace.exporter.ScrubbingSpanExporter``), log records
(``install_log_scrubbing``), checkpoints, the tool-call ledger, approval
requests, audit rows, incidents, cost rows, error messages and the gateway's
responses to clients (bodies, stream events, headers passed on).

A leaf module: it imports nothing of tether but ``tether.errors``, so the
gateway and the model adapters use it without importing ``tether.guard``
(``tether.guard.credentials`` re-exports these names).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from tether.errors import ConfigError

__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_NAME",
    "SecretLogFilter",
    "SecretTooShort",
    "Scrubber",
    "default_scrubber",
    "install_log_scrubbing",
    "register_credential",
    "scrubbed_json",
]

logger = logging.getLogger(__name__)

#: Shortest value the scrubber accepts. Replacing every occurrence of a short
#: string ("abc", "1234", "admin") would mangle ordinary text in every span and
#: log line — and would still not protect it, since a short secret can be guessed.
MIN_SECRET_LENGTH: Final = 8

#: What a secret's name may be (it is shown as ``[secret:NAME]``, so nothing that needs escaping in JSON).
SECRET_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.:-]")


class SecretTooShort(ConfigError):
    """A secret value too short to be scrubbed from records without mangling ordinary text."""

    def __init__(self, name: str, length: int) -> None:
        self.name = name
        super().__init__(
            f"secret {name!r} is {length} characters long; tether only hands out secrets of at least "
            f"{MIN_SECRET_LENGTH} characters, because shorter ones cannot be scrubbed from traces and logs "
            "without mangling ordinary text: use a longer credential"
        )


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
    #: The probes as UTF-8, for bytes that are only decoded when they hold one (proxy bodies, stream events).
    byte_probes: tuple[bytes, ...]


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
    return _Compiled(
        tuple(probes),
        {p: tuple(e) for p, e in extensions.items()},
        labels,
        tuple(p.encode("utf-8") for p in probes),
    )


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
        if not SECRET_NAME.match(name):
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

    def scrub_bytes(self, data: bytes) -> bytes:
        """``data`` with every known value (any form) replaced; ``data`` itself when it holds none.

        The check runs on the bytes (no decoding) so a clean body costs one ``bytes.find``
        per probe; only bytes that hold a form are decoded, scrubbed and re-encoded
        (undecodable bytes survive as they were).
        """
        compiled = self._compiled
        if compiled is None:
            return data
        for probe in compiled.byte_probes:
            if probe in data:
                break
        else:
            return data
        text = data.decode("utf-8", "surrogateescape")
        return self.scrub(text).encode("utf-8", "surrogateescape")

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
    """The process-wide scrubber every record passes through (span rows, OTLP export, logs, stores, responses)."""
    return _DEFAULT_SCRUBBER


def scrubbed_json(value: Any, *, sort_keys: bool = False, scrubber: Scrubber | None = None) -> str:
    """``value`` as JSON text (``str()`` for what JSON cannot hold), with known secrets scrubbed from its strings.

    Scrubbed value by value, not in the encoded text, so the result stays valid
    JSON whatever a secret holds; a value with no secret costs one encoding and
    one search.
    """
    target = scrubber or _DEFAULT_SCRUBBER
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    text = orjson.dumps(value, default=str, option=option).decode()
    if not target.contains_secret(text):
        return text
    return orjson.dumps(target.scrub_value(orjson.loads(text)), option=option).decode()


_too_short_warned: set[str] = set()


def register_credential(name: str, value: str, scrubber: Scrubber | None = None) -> bool:
    """Register a credential tether read for itself (a provider key), whatever its shape; True if registered.

    Unlike ``Scrubber.register`` this never raises, because a credential that
    cannot be scrubbed must not stop the call it is for: a name with characters
    a secret name may not hold has them replaced, and a value shorter than
    ``MIN_SECRET_LENGTH`` (a local server's ``"EMPTY"``) is not registered — with
    one warning per name, since records may then show it.
    """
    target = scrubber or _DEFAULT_SCRUBBER
    if value in target._names:  # every call re-registers: the known case is one dict lookup
        return True
    name = _NAME_UNSAFE.sub("_", name)[:128] or "credential"
    if len(value) < MIN_SECRET_LENGTH:
        if name not in _too_short_warned:
            _too_short_warned.add(name)
            logger.warning(
                "tether: credential %s is shorter than %d characters, so it cannot be scrubbed from records "
                "without mangling ordinary text; use a longer key if it is a secret",
                name,
                MIN_SECRET_LENGTH,
            )
        return False
    target.register(name, value)
    return True


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
