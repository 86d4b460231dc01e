"""Scoped credentials: secrets referenced by name, handed to a tool at call time, scrubbed from every record.

A tool declares the credentials it needs by name (``@tool(secrets=["pagerduty"])``);
the operator says where each one lives (``pagerduty = "env:PAGERDUTY_TOKEN"``,
``"file:/run/secrets/pd"``, or a scheme of their own such as ``vault:``) and
which (agent, tool) pairs may have it. At call time ``CredentialBroker.for_call``
reads the values — so a rotated secret is picked up on the next call — and
returns only those the tool declared *and* the pair was granted. The model never
sees them: they go into ``ToolContext.secrets``, not into the conversation.

Every value the broker hands out is registered with the process-wide
``Scrubber`` (``default_scrubber()``, in ``tether.redaction``), and everything
tether records or returns passes through it (see ``tether.redaction``). A known
value, and its base64, URL, hex and JSON-escaped forms, becomes ``[secret:NAME]``.

Errors (all ``UserError``: the message says what to fix, and never carries a value)::

    ConfigError
    ├── SecretUnavailable   a reference that cannot be read (unset variable, missing file, unknown scheme)
    └── SecretTooShort      a value too short to be scrubbed reliably
    CredentialNotGranted    a tool declared a secret its (agent, tool) pair was not granted
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from tether.errors import ConfigError, UserError

# The scrubber lives in the leaf module ``tether.redaction`` (so the gateway need not import the
# guard for it); its names are re-exported here, where they were first defined.
from tether.redaction import (
    MIN_SECRET_LENGTH,
    Scrubber,
    SecretLogFilter,
    SecretTooShort,
    default_scrubber,
    install_log_scrubbing,
)
from tether.redaction import SECRET_NAME as _SECRET_NAME

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

_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*$")


class SecretUnavailable(ConfigError):
    """A secret reference that cannot be read. The message names the reference, never a value."""

    def __init__(self, ref: SecretRef | str, reason: str) -> None:
        self.ref = str(ref)
        self.reason = reason
        super().__init__(f"secret {self.ref} is unavailable: {reason}")


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
        self._scrubber = scrubber or default_scrubber()

    def granted(self, agent: str, tool: str) -> frozenset[str]:
        """The names (agent, tool) may receive."""
        return self._grants.get((agent, tool), frozenset())

    def check(self, agent: str, tool: str, declared: Iterable[str]) -> None:
        """Raise ``CredentialNotGranted`` if ``declared`` holds a name not granted to (agent, tool); reads nothing."""
        missing = set(declared) - self.granted(agent, tool)
        if missing:
            raise CredentialNotGranted(agent, tool, missing)

    def register_granted(self, agent: str) -> int:
        """Read every secret granted to ``agent`` (for any tool) and register it with the scrubber; how many.

        Called when an agent is built (``Guard.bind``), so that a granted value the model
        echoes before any tool has received it — in a call's arguments, hence in the
        checkpoint and the approval request — is scrubbed too. A secret that cannot be
        read or is too short is skipped here: ``for_call`` raises for it when a tool needs it.
        """
        names = sorted({n for (who, _), granted in self._grants.items() if who == agent for n in granted})
        registered = 0
        for name in names:
            try:
                value = self._store.get(self._refs[name])
                self._scrubber.register(name, value)
            except (SecretUnavailable, SecretTooShort):
                continue
            registered += 1
        return registered

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
