"""OTEL_EXPORTER_OTLP_ENDPOINT sends the same spans to a collector (a real OTLP/HTTP endpoint on loopback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tether.runtime import Agent, tool
from tether.store import open_store
from tether.testing import ScriptedModel, text_response, tool_response
from tether.trace.setup import configure_tracing


class Collector(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        super().__init__(("127.0.0.1", 0), CollectorHandler)


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


async def test_spans_reach_the_collector_and_the_store(collector: Collector, tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        tracing = configure_tracing(store)
        assert tracing.exporters == ["store", "otlp"]
        model = ScriptedModel([tool_response(("lookup", {"key": "a"})), text_response("ok")])
        result = await Agent("exported", model, tools=[lookup], tracer=tracing.tracer).run("look up a")
        tracing.shutdown()
        stored = {s.name for s in store.get_run(result.run_id).spans}

    assert collector.requests, "the collector received nothing"
    path, content_type, _ = collector.requests[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    exported: dict[str, dict[str, object]] = {}
    for _, _, body in collector.requests:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    exported[span.name] = {a.key: a.value for a in span.attributes}
    assert set(exported) == stored == {"invoke_agent exported", "chat test-model", "execute_tool lookup"}
    assert exported["execute_tool lookup"]["gen_ai.tool.name"].string_value == "lookup"  # type: ignore[attr-defined]
    assert exported["invoke_agent exported"]["tether.run.id"].string_value == result.run_id  # type: ignore[attr-defined]
