"""What the canary-secret fault test needs beyond the shared harness: every encoding of a secret, counted
wherever it is searched; an upstream that echoes the key it was sent in all of them; an OTLP/HTTP receiver.

Deliberately independent of tether's own code (the encodings are computed here, not by the scrubber), so the
test searches for what a leak would look like rather than for what the scrubber knows to hide.
"""

from __future__ import annotations

import base64
import gzip
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiohttp import web

from tests.faults._support import HOST, Upstream


def encodings(secret: str) -> dict[str, str]:
    """Every form of ``secret`` a leak may take: raw, base64 at the three alignments (standard and URL-safe,
    the characters that depend on the secret alone, as they appear inside any longer base64 text), URL
    (quote and quote_plus), hex in both cases. Forms that coincide are listed once."""
    raw = secret.encode()
    n = len(raw)
    forms = {
        "raw": secret,
        "url": urllib.parse.quote(secret, safe=""),
        "url_plus": urllib.parse.quote_plus(secret),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode()
        core = encoded[-(-8 * k // 6) : 8 * (k + n) // 6]
        forms[f"base64@{k}"] = core
        forms[f"base64url@{k}"] = core.replace("+", "-").replace("/", "_")
    unique: dict[str, str] = {}
    for name, form in forms.items():
        if form not in unique.values():
            unique[name] = form
    return unique


def echoes(secret: str) -> str:
    """``secret`` written in each encoding a leaky upstream might use, space-separated."""
    raw = secret.encode()
    return " ".join(
        [
            secret,
            base64.b64encode(raw).decode(),
            base64.b64encode(b"u:" + raw).decode(),  # as in Authorization: Basic base64(user:key)
            base64.b64encode(b"k=" + raw + b"!").decode(),
            base64.urlsafe_b64encode(raw).decode(),
            urllib.parse.quote(secret, safe=""),
            raw.hex(),
            raw.hex().upper(),
        ]
    )


class Leaks:
    """Occurrences of each secret's encodings, per location."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.forms = {label: encodings(value) for label, value in secrets.items()}
        self.counts: dict[tuple[str, str], int] = {}
        self.examples: dict[tuple[str, str], str] = {}
        self.searched: set[str] = set()

    def search(self, location: str, text: str | bytes) -> None:
        """Count every form of every secret in ``text`` under ``location``."""
        self.searched.add(location)
        body = text.decode("latin-1") if isinstance(text, bytes) else text
        for label, forms in self.forms.items():
            for form_name, form in forms.items():
                found = body.count(form)
                if found:
                    key = (location, label)
                    self.counts[key] = self.counts.get(key, 0) + found
                    at = body.find(form)
                    self.examples.setdefault(key, f"{form_name}: …{body[max(0, at - 60) : at + len(form) + 20]!r}…")

    def search_all(self, location: str, texts: Iterable[str | bytes]) -> None:
        for text in texts:
            self.search(location, text)
        self.searched.add(location)

    def table(self) -> str:
        """One line per location that holds a secret: how many occurrences of which, with an example."""
        if not self.counts:
            return f"no secret in any of {len(self.searched)} locations"
        lines = [f"{sum(self.counts.values())} occurrences:"]
        for (location, label), found in sorted(self.counts.items()):
            lines.append(f"  {location:<48} {label:<14} {found:>4}   {self.examples[(location, label)]}")
        return "\n".join(lines)


class EchoingUpstream(Upstream):
    """The harness's mock provider with ``echo`` on, but echoing the key in every encoding (``echoes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.echo = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        secret = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        headers: dict[str, str] = {k: v for k, v in request.headers.items() if k.lower() not in ("x-api-key",)}
        headers["authorization"] = f"Bearer {echoes(secret)}"
        return await super()._handle(request.clone(headers=headers))


class OtlpReceiver:
    """An OTLP/HTTP collector on loopback that keeps every payload posted to it (protobuf strings are raw UTF-8)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.payloads.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def received(self) -> list[bytes]:
        with self._lock:
            return list(self.payloads)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
