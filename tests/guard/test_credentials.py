"""Scoped credentials: references, grants, rotation, and a canary that must appear in no record."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tether.errors import ConfigError, UserError
from tether.guard.credentials import (
    MIN_SECRET_LENGTH,
    ChainSecretStore,
    CredentialBroker,
    CredentialNotGranted,
    EnvSecretStore,
    FileSecretStore,
    Scrubber,
    SecretLogFilter,
    SecretRef,
    SecretTooShort,
    SecretUnavailable,
    default_scrubber,
    install_log_scrubbing,
)
from tether.store import SpanRecord, TraceStore, open_store
from tether.store.rows import INSERT_COLUMNS, build_row
from tether.trace.exporter import ScrubbingSpanExporter, scrub_span
from tether.trace.setup import configure_tracing

CANARY = "tether-canary-7f3a9c2e41b8d605"

# --- helpers (reused by the agent-loop canary tests) ----------------------------------------------------


def secret_forms(secret: str) -> set[str]:
    """The forms of ``secret`` that must not appear in any record: raw, base64, URL and hex encodings."""
    raw = secret.encode()
    forms = {
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        raw.hex(),
        raw.hex().upper(),
    }
    return {f for f in forms if f}


def store_texts(store: TraceStore) -> Iterator[tuple[str, str]]:
    """(where, text) for every value of every row of every table, and the SQLite files' raw bytes."""
    metadata = sa.MetaData()
    metadata.reflect(store.engine)
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for column, value in row._mapping.items():
                    if value is not None:
                        yield (
                            f"{table.name}.{column}",
                            value.decode("latin-1") if isinstance(value, bytes) else str(value),
                        )
    database = store.engine.url.database
    if store.engine.url.get_backend_name() == "sqlite" and database:
        for suffix in ("", "-wal", "-journal"):
            path = Path(database + suffix)
            if path.exists():
                yield str(path), path.read_bytes().decode("latin-1")


def assert_nowhere(
    secret: str,
    *,
    store: TraceStore | None = None,
    exported: Iterable[ReadableSpan] = (),
    logs: Iterable[logging.LogRecord] = (),
    texts: Iterable[str] = (),
) -> None:
    """Fail if ``secret``, or an encoded form of it, is in the store, an exported span, a log record or ``texts``."""
    places: list[tuple[str, str]] = []
    if store is not None:
        places.extend(store_texts(store))
    places.extend((f"exported span {span.name!r}", span.to_json()) for span in exported)
    for record in logs:
        rendered = logging.Formatter("%(message)s %(stack_info)s").format(record)
        places.append((f"log record {record.name}:{record.lineno}", f"{rendered} {record.__dict__!r}"))
    places.extend(("text", text) for text in texts)
    assert places, "nothing was searched"
    forms = secret_forms(secret)
    leaks = [(where, form) for where, text in places for form in forms if form in text]
    assert not leaks, f"secret found in: {leaks[:5]}"


@pytest.fixture
def scrubber() -> Iterator[Scrubber]:
    """The process-wide scrubber, emptied afterwards so no test leaks secrets into another."""
    default = default_scrubber()
    default.clear()
    yield default
    default.clear()


@pytest.fixture
def canary(scrubber: Scrubber) -> str:
    scrubber.register("canary", CANARY)
    return CANARY


# --- references ------------------------------------------------------------------------------------------


def test_references_parse_scheme_and_path() -> None:
    assert SecretRef.parse("env:PAGERDUTY_TOKEN") == SecretRef("env", "PAGERDUTY_TOKEN")
    assert SecretRef.parse("file:/run/secrets/pd") == SecretRef("file", "/run/secrets/pd")
    assert SecretRef.parse("vault:kv/data/pd#token") == SecretRef("vault", "kv/data/pd#token")
    assert str(SecretRef.parse("file:/a:b")) == "file:/a:b"


@pytest.mark.parametrize("text", ["PAGERDUTY_TOKEN", "env:", "ENV:X", ":x", "1x:y"])
def test_malformed_references_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError, match="secret reference"):
        SecretRef.parse(text)


@given(st.from_regex(r"[a-z][a-z0-9+.-]{0,10}", fullmatch=True), st.text(min_size=1))
def test_a_reference_survives_printing_and_parsing(scheme: str, path: str) -> None:
    ref = SecretRef(scheme, path)
    assert SecretRef.parse(str(ref)) == ref


def test_env_store_reads_the_variable_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    store = EnvSecretStore()
    monkeypatch.setenv("TETHER_TEST_TOKEN", "first-value-123")
    assert store.get(SecretRef.parse("env:TETHER_TEST_TOKEN")) == "first-value-123"
    monkeypatch.setenv("TETHER_TEST_TOKEN", "second-value-456")
    assert store.get(SecretRef.parse("env:TETHER_TEST_TOKEN")) == "second-value-456"


def test_missing_and_empty_variables_are_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_TEST_ABSENT", raising=False)
    with pytest.raises(SecretUnavailable, match=r"env:TETHER_TEST_ABSENT .*is not set") as info:
        EnvSecretStore().get(SecretRef.parse("env:TETHER_TEST_ABSENT"))
    assert info.value.ref == "env:TETHER_TEST_ABSENT"
    assert isinstance(info.value, ConfigError)
    monkeypatch.setenv("TETHER_TEST_ABSENT", "")
    with pytest.raises(SecretUnavailable, match="is empty"):
        EnvSecretStore().get(SecretRef.parse("env:TETHER_TEST_ABSENT"))


def test_file_store_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pd").write_text("token-abc-123\n")
    (tmp_path / "two").write_text("token-abc-123\n\n")
    (tmp_path / "crlf").write_bytes(b"token-abc-123\r\n")
    store = FileSecretStore()
    assert store.get(SecretRef.parse(f"file:{tmp_path}/pd")) == "token-abc-123"
    assert store.get(SecretRef.parse(f"file:{tmp_path}/two")) == "token-abc-123\n"
    assert store.get(SecretRef.parse(f"file:{tmp_path}/crlf")) == "token-abc-123"
    assert FileSecretStore(tmp_path).get(SecretRef.parse("file:pd")) == "token-abc-123"


def test_file_errors_name_the_file_but_never_its_contents(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable, match="no file at"):
        FileSecretStore().get(SecretRef.parse(f"file:{tmp_path}/absent"))
    with pytest.raises(SecretUnavailable, match="is a directory"):
        FileSecretStore().get(SecretRef.parse(f"file:{tmp_path}"))
    (tmp_path / "binary").write_bytes(b"\xffsecret-bytes-\xfe")
    with pytest.raises(SecretUnavailable, match="not UTF-8") as info:
        FileSecretStore().get(SecretRef.parse(f"file:{tmp_path}/binary"))
    assert "secret-bytes" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_scheme_of_your_own_plugs_in_with_a_callable() -> None:
    stores = ChainSecretStore()
    stores.register("vault", lambda ref: f"from-vault:{ref.path}")
    assert stores.get(SecretRef.parse("vault:kv/pd")) == "from-vault:kv/pd"
    assert stores.schemes == ("env", "file", "vault")
    with pytest.raises(SecretUnavailable, match=r"no store for scheme 'aws'.*env, file, vault"):
        stores.get(SecretRef.parse("aws:pd"))
    with pytest.raises(ConfigError, match="scheme"):
        stores.register("Vault!", lambda ref: "")


def test_a_failing_plugin_store_does_not_leak_what_it_read() -> None:
    def leaky(ref: SecretRef) -> str:
        raise RuntimeError(f"parse error near {CANARY}")

    stores = ChainSecretStore({"vault": leaky})
    with pytest.raises(SecretUnavailable, match=r"vault:pd .*RuntimeError") as info:
        stores.get(SecretRef.parse("vault:pd"))
    assert CANARY not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- grants ----------------------------------------------------------------------------------------------


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, scrubber: Scrubber) -> CredentialBroker:
    monkeypatch.setenv("TETHER_TEST_PD", "pagerduty-token-0001")
    monkeypatch.setenv("TETHER_TEST_GH", "github-token-000002")
    return CredentialBroker(
        {"pagerduty": "env:TETHER_TEST_PD", "github": SecretRef("env", "TETHER_TEST_GH")},
        {"oncall": {"page": ["pagerduty"], "triage": ["pagerduty", "github"]}, ("coder", "push"): ["github"]},
    )


def test_a_call_gets_what_the_tool_declared_and_the_pair_was_granted(broker: CredentialBroker) -> None:
    assert dict(broker.for_call("oncall", "page", ["pagerduty"])) == {"pagerduty": "pagerduty-token-0001"}
    assert dict(broker.for_call("oncall", "triage", ["github"])) == {"github": "github-token-000002"}
    assert dict(broker.for_call("coder", "push", [])) == {}
    assert broker.granted("oncall", "triage") == {"pagerduty", "github"}


def test_a_declared_secret_without_a_grant_is_refused_with_the_grant_to_add(broker: CredentialBroker) -> None:
    with pytest.raises(CredentialNotGranted) as info:
        broker.for_call("coder", "page", ["pagerduty"])
    error = info.value
    assert (error.agent, error.tool, error.missing) == ("coder", "page", ("pagerduty",))
    assert isinstance(error, UserError)
    assert "grants={'coder': {'page': ['pagerduty']}}" in str(error)
    assert "pagerduty-token-0001" not in str(error)
    with pytest.raises(CredentialNotGranted, match="'github'"):
        broker.for_call("oncall", "page", ["pagerduty", "github"])  # one missing name refuses the whole call


def test_values_are_read_at_each_call_so_rotation_works(
    broker: CredentialBroker, monkeypatch: pytest.MonkeyPatch, scrubber: Scrubber
) -> None:
    assert broker.for_call("oncall", "page", ["pagerduty"])["pagerduty"] == "pagerduty-token-0001"
    monkeypatch.setenv("TETHER_TEST_PD", "pagerduty-token-0002")
    assert broker.for_call("oncall", "page", ["pagerduty"])["pagerduty"] == "pagerduty-token-0002"
    # Both the old and the new value stay scrubbed: the old one may still sit in a cached output.
    assert scrubber.scrub("a pagerduty-token-0001 b pagerduty-token-0002") == (
        "a [secret:pagerduty] b [secret:pagerduty]"
    )


def test_values_handed_out_are_scrubbed_and_never_shown_by_repr(broker: CredentialBroker, scrubber: Scrubber) -> None:
    assert scrubber.scrub("github-token-000002") == "github-token-000002"  # nothing handed out yet
    secrets = broker.for_call("oncall", "triage", ["github", "pagerduty"])
    assert repr(secrets) == "<secrets: github, pagerduty>"
    assert "token" not in repr(broker)
    assert scrubber.scrub("Bearer github-token-000002") == "Bearer [secret:github]"
    with pytest.raises(KeyError, match="not granted"):
        secrets["aws"]


def test_a_grant_of_an_undefined_secret_fails_at_configuration() -> None:
    with pytest.raises(ConfigError, match=r"names secret\(s\) \['aws'\] that are not defined"):
        CredentialBroker({"pagerduty": "env:PD"}, {("oncall", "page"): ["aws"]})
    with pytest.raises(ConfigError, match="not the string"):
        CredentialBroker({"pagerduty": "env:PD"}, {("oncall", "page"): "pagerduty"})
    with pytest.raises(ConfigError, match="has no scheme"):
        CredentialBroker({"pagerduty": "PD_TOKEN"}, {})


def test_an_unscrubbable_short_value_is_not_handed_out(monkeypatch: pytest.MonkeyPatch, scrubber: Scrubber) -> None:
    monkeypatch.setenv("TETHER_TEST_PIN", "1234")
    broker = CredentialBroker({"pin": "env:TETHER_TEST_PIN"}, {("a", "t"): ["pin"]})
    with pytest.raises(SecretTooShort, match="4 characters long") as info:
        broker.for_call("a", "t", ["pin"])
    assert "1234" not in str(info.value)


# --- the scrubber ----------------------------------------------------------------------------------------


def test_with_nothing_registered_scrub_returns_its_input(scrubber: Scrubber) -> None:
    text = "nothing to see " * 10
    assert scrubber.scrub(text) is text
    attrs = {"a": "b"}
    assert scrubber.scrub_mapping(attrs) is attrs
    assert not scrubber.active


def test_a_value_is_found_in_every_trivial_encoding() -> None:
    scrubber = Scrubber()
    secret = "s3cr3t/token+value?x=1&y"
    scrubber.register("api", secret)
    raw = secret.encode()
    encoded = {
        "raw": f"Authorization: Bearer {secret}",
        "base64": base64.b64encode(raw).decode(),
        "base64 urlsafe": base64.urlsafe_b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "url": "https://x.test/?token=" + urllib.parse.quote(secret, safe=""),
        "url plus": urllib.parse.urlencode({"token": secret}),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }
    for kind, text in encoded.items():
        clean = scrubber.scrub(text)
        assert "[secret:api]" in clean, kind
        for form in secret_forms(secret):
            assert form not in clean, (kind, form)


@pytest.mark.parametrize("prefix", ["", "u:", "us:", "user:", "a-longer-user-name:"])
def test_a_value_inside_a_longer_base64_stream_is_found_at_any_alignment(prefix: str) -> None:
    scrubber = Scrubber()
    secret = "hunter2-hunter2-hunter2"
    scrubber.register("password", secret)
    header = "Basic " + base64.b64encode(f"{prefix}{secret}".encode()).decode()
    clean = scrubber.scrub(header)
    assert clean.count("[secret:password]") == 1
    # Only the characters that also encode the prefix, and at most two shared with the value, are left.
    left = clean.replace("[secret:password]", "").removeprefix("Basic ").rstrip("=")
    assert len(left) <= -(-len(prefix) * 4 // 3) + 2


def test_json_escaped_and_repr_forms_are_found() -> None:
    scrubber = Scrubber()
    secret = 'p"a\\ss\nw\u00f6rd-long'
    scrubber.register("db", secret)
    for text in (
        json.dumps({"password": secret}),
        json.dumps({"password": secret}, ensure_ascii=False),
        json.dumps({"outer": json.dumps({"password": secret})}),
        repr({"password": secret}),
        orjson.dumps({"password": secret}).decode(),
    ):
        clean = scrubber.scrub(text)
        assert "[secret:db]" in clean, text
        assert secret not in clean and "rd-long" not in clean, text


def test_the_longest_secret_wins_where_one_contains_another() -> None:
    scrubber = Scrubber()
    scrubber.register("password", "hunter2hunter2")
    scrubber.register("dsn", "postgresql://app:hunter2hunter2@db.internal/prod")
    assert scrubber.scrub("dsn=postgresql://app:hunter2hunter2@db.internal/prod") == "dsn=[secret:dsn]"
    assert scrubber.scrub("pw=hunter2hunter2.") == "pw=[secret:password]."


def test_secrets_that_overlap_in_the_text_are_both_hidden() -> None:
    scrubber = Scrubber()
    scrubber.register("a", "aaaa-bbbb-cccc")
    scrubber.register("b", "cccc-dddd-eeee")
    clean = scrubber.scrub("x aaaa-bbbb-cccc-dddd-eeee y")
    assert clean == "x [secret:a] y"
    assert scrubber.scrub("aaaaaaaaaaaa") == "aaaaaaaaaaaa"  # nothing registered matches
    scrubber.register("c", "zzzzzzzz")
    assert scrubber.scrub("zzzzzzzzzzz") == "[secret:c]"  # repeated value: the whole run is hidden


def test_short_values_are_refused_at_registration() -> None:
    scrubber = Scrubber()
    with pytest.raises(SecretTooShort, match=f"at least {MIN_SECRET_LENGTH} characters"):
        scrubber.register("pin", "1234567")
    with pytest.raises(ValueError, match="not allowed"):
        scrubber.register("bad name", "long-enough-value")
    assert not scrubber.active
    scrubber.register("ok", "12345678")
    assert scrubber.scrub("pin 12345678") == "pin [secret:ok]"


def test_a_value_keeps_its_first_name_and_can_be_forgotten() -> None:
    scrubber = Scrubber()
    scrubber.register("first", "shared-value-123")
    scrubber.register("second", "shared-value-123")
    assert scrubber.scrub("shared-value-123") == "[secret:first]"
    assert len(scrubber) == 1
    scrubber.forget("shared-value-123")
    assert scrubber.scrub("shared-value-123") == "shared-value-123"
    assert not scrubber.active


def test_nested_values_and_keys_are_scrubbed_without_copying_clean_ones() -> None:
    scrubber = Scrubber()
    scrubber.register("k", "key-material-99")

    class Opaque:
        def __str__(self) -> str:
            return "opaque key-material-99"

    clean_list = ["a", "b"]
    value = {"list": ["x", "key-material-99"], "tuple": ("key-material-99",), "key-material-99": 1, "clean": clean_list}
    scrubbed = scrubber.scrub_mapping(value)
    assert scrubbed == {
        "list": ["x", "[secret:k]"],
        "tuple": ("[secret:k]",),
        "[secret:k]": 1,
        "clean": clean_list,
    }
    assert scrubbed["clean"] is clean_list
    assert scrubber.scrub_value(Opaque()) == "opaque [secret:k]"
    assert scrubber.scrub_value(3.5) == 3.5


def test_registering_and_scrubbing_from_many_threads() -> None:
    scrubber = Scrubber()
    failures: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(8):
            secret = f"thread-{n}-secret-{i:04d}"
            scrubber.register(f"t{n}", secret)
            clean = scrubber.scrub(f"before {secret} after")
            if secret in clean:
                failures.append(secret)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(scrubber) == 64
    assert all(scrubber.scrub(f"thread-{n}-secret-0007") == f"[secret:t{n}]" for n in range(8))


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(st.characters(blacklist_categories=["Cs"]), min_size=MIN_SECRET_LENGTH, max_size=40),
    before=st.text(alphabet="xyz \n\"'\\", max_size=20),
    after=st.text(alphabet="xyz \n\"'\\", max_size=20),
)
def test_a_span_row_or_exported_span_never_holds_a_registered_value(secret: str, before: str, after: str) -> None:
    """Whatever the characters (quotes, backslashes, control characters, non-ASCII), the row is clean."""
    scrubber = default_scrubber()
    scrubber.clear()
    try:
        scrubber.register("s", secret)
        text = before + secret + after
        row = dict(
            zip(
                INSERT_COLUMNS,
                build_row(
                    "0" * 32,
                    "0" * 16,
                    None,
                    text,
                    {"value": text, "list": [text], "tether.run.id": text},
                    1,
                    2,
                    "error",
                    text,
                    [{"name": "exception", "time_ns": 1, "attributes": {"exception.message": text}}],
                ),
                strict=True,
            )
        )
        attrs, events = orjson.loads(row["attributes"]), orjson.loads(row["events"])  # still valid JSON
        recorded = [
            row["name"],
            row["status_message"],
            row["run_id"],
            attrs["value"],
            attrs["list"][0],
            events[0]["attributes"]["exception.message"],
        ]
        exported = scrub_span(
            ReadableSpan(
                text,
                attributes={"value": text, "list": (text,)},
                events=[Event("exception", {"exception.message": text})],
                status=Status(StatusCode.ERROR, text),
            ),
            scrubber,
        )
        assert exported.attributes is not None and exported.status.description is not None
        recorded += [
            exported.name,
            exported.status.description,
            str(exported.attributes["value"]),
            str(exported.attributes["list"][0]),  # type: ignore[index]
            str(exported.events[0].attributes["exception.message"]),  # type: ignore[index]
        ]
        for value in recorded:
            # The only way the value may show: rebuilt from the marker and the text around it.
            assert secret not in value or secret in before + "[secret:s]" + after
    finally:
        scrubber.clear()


# --- logs ------------------------------------------------------------------------------------------------


def test_log_records_are_scrubbed_as_they_are_created(canary: str, caplog: pytest.LogCaptureFixture) -> None:
    install_log_scrubbing()
    install_log_scrubbing()  # idempotent
    log = logging.getLogger("tether.some.module")
    with caplog.at_level(logging.DEBUG):
        log.warning("calling with token %s", canary)
        log.info(f"f-string with {canary}")
        try:
            raise ValueError(f"upstream rejected {canary}")
        except ValueError:
            log.exception("tool failed")
        logging.getLogger("a.third.party").debug("header Authorization: Bearer %s", canary)
    assert len(caplog.records) == 4
    assert "calling with token [secret:canary]" in caplog.text
    assert "ValueError: upstream rejected [secret:canary]" in caplog.text
    assert "Bearer [secret:canary]" in caplog.text
    assert_nowhere(canary, logs=caplog.records, texts=[caplog.text])


def test_a_clean_log_record_is_left_as_it_was(scrubber: Scrubber, caplog: pytest.LogCaptureFixture) -> None:
    scrubber.register("canary", CANARY)
    install_log_scrubbing()
    with caplog.at_level(logging.INFO):
        logging.getLogger("tether.x").info("%d spans", 3)
    assert caplog.records[0].args == (3,)


def test_the_log_filter_scrubs_what_it_sees() -> None:
    scrubber = Scrubber()
    scrubber.register("k", "key-material-99")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "using %s", ("key-material-99",), None)
    assert SecretLogFilter(scrubber).filter(record)
    assert record.getMessage() == "using [secret:k]"


# --- the canary through both tracing paths ---------------------------------------------------------------


def _emit_spans(tracing: Any, secret: str) -> None:
    """Spans carrying ``secret`` everywhere a span can carry text."""
    tracer = tracing.tracer
    b64 = base64.b64encode(secret.encode()).decode()
    with tracer.start_as_current_span(f"execute_tool echo {secret}") as span:
        span.set_attribute("gen_ai.tool.name", "echo")
        span.set_attribute("tether.run.id", f"run-{secret}")
        span.set_attribute("tool.output", f"the token is {secret}")
        span.set_attribute(
            "tool.output.encoded", f"b64={b64} url={urllib.parse.quote(secret)} hex={secret.encode().hex()}"
        )
        span.set_attribute("tool.arguments", json.dumps({"token": secret}))
        span.set_attribute("tool.tags", ["a", secret])
        span.add_event("tool.output.chunk", {"text": f"streamed {secret[:10]}", "more": f"{secret[10:]} done"})
        span.add_event("tool.output.chunk", {"text": secret})
        span.record_exception(RuntimeError(f"auth failed for {secret}"))
        span.set_status(Status(StatusCode.ERROR, f"auth failed for {secret}"))
    with pytest.raises(ValueError, match="escaping"), tracer.start_as_current_span("chat model"):
        raise ValueError(f"escaping {secret}")
    span = tracer.start_span("renamed")
    span.update_name(f"renamed {secret}")
    span.end()


@pytest.mark.parametrize("sdk", [False, True], ids=["recorder", "sdk"])
def test_a_canary_secret_is_in_no_span_row_exported_span_or_log(
    sdk: bool, canary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = InMemorySpanExporter()
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        tracing = configure_tracing(store, extra_exporters=[memory] if sdk else None, batch=False)
        assert type(tracing.provider).__name__ == ("TracerProvider" if sdk else "RecordingTracerProvider")
        with caplog.at_level(logging.DEBUG):
            _emit_spans(tracing, canary)
            logging.getLogger("tether.runtime").warning("tool echo returned %r", {"token": canary})
        tracing.flush()
        tracing.shutdown()

        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("select name, attributes, events, status_message from spans")).all()
        assert len(rows) == 3, rows
        assert_nowhere(canary, store=store, exported=memory.get_finished_spans(), logs=caplog.records)

    names = {row.name for row in rows}
    assert names == {"execute_tool echo [secret:canary]", "chat model", "renamed [secret:canary]"}
    tool_row = next(row for row in rows if row.name.startswith("execute_tool"))
    attrs = orjson.loads(tool_row.attributes)
    assert attrs["tool.output"] == "the token is [secret:canary]"
    assert attrs["tool.tags"] == ["a", "[secret:canary]"]
    assert json.loads(attrs["tool.arguments"]) == {"token": "[secret:canary]"}
    assert tool_row.status_message == "auth failed for [secret:canary]"
    assert "[secret:canary]" in tool_row.events
    if sdk:
        exported = {span.name: span for span in memory.get_finished_spans()}
        assert set(exported) == names
        assert exported["execute_tool echo [secret:canary]"].attributes["tool.output"] == "the token is [secret:canary]"
    assert "tool echo returned {'token': '[secret:canary]'}" in caplog.text


def test_spans_without_secrets_are_exported_as_they_are(canary: str) -> None:
    memory = InMemorySpanExporter()
    tracing = configure_tracing(None, extra_exporters=[memory], batch=False)
    with tracing.tracer.start_as_current_span("clean", attributes={"a": "b"}):
        pass
    with tracing.tracer.start_as_current_span("dirty", attributes={"a": canary}):
        pass
    tracing.shutdown()
    clean, dirty = memory.get_finished_spans()
    assert clean.attributes is not None and dict(clean.attributes) == {"a": "b"}
    assert dirty.attributes is not None and dirty.attributes["a"] == "[secret:canary]"
    assert scrub_span(clean, default_scrubber()) is clean


def test_a_scrubbing_exporter_with_its_own_scrubber_passes_flush_and_shutdown_through() -> None:
    scrubber = Scrubber()
    scrubber.register("mine", "only-this-exporter-knows")
    memory = InMemorySpanExporter()
    wrapped = ScrubbingSpanExporter(memory, scrubber)
    span = ReadableSpan("x only-this-exporter-knows")
    wrapped.export([span])
    assert [s.name for s in memory.get_finished_spans()] == ["x [secret:mine]"]
    assert wrapped.force_flush()
    wrapped.shutdown()
    assert memory._stopped


def test_records_written_directly_are_scrubbed_too(canary: str, tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        store.write_spans(
            [
                SpanRecord(
                    trace_id="1" * 32,
                    span_id="2" * 16,
                    parent_span_id=None,
                    run_id="r1",
                    name="ingested",
                    operation=None,
                    start_ns=1,
                    end_ns=2,
                    status="ok",
                    status_message=None,
                    attributes={"nested": {"deep": [canary]}, "tether.run.id": "r1"},
                    events=[],
                )
            ]
        )
        with store.engine.connect() as conn:
            attributes = conn.execute(sa.text("select attributes from spans")).scalar_one()
        assert orjson.loads(attributes)["nested"] == {"deep": ["[secret:canary]"]}
        assert_nowhere(canary, store=store)


def test_the_helper_finds_a_leak(scrubber: Scrubber, tmp_path: Path) -> None:
    """``assert_nowhere`` can fail: with nothing registered, the canary reaches the store."""
    with open_store(f"sqlite:///{tmp_path}/t.db") as store:
        tracing = configure_tracing(store)
        tracing.tracer.start_span("leak", attributes={"x": base64.b64encode(CANARY.encode()).decode()}).end()
        tracing.shutdown()
        with pytest.raises(AssertionError, match="secret found in"):
            assert_nowhere(CANARY, store=store)
    with pytest.raises(AssertionError, match="secret found in"):
        assert_nowhere(CANARY, texts=[binascii.hexlify(CANARY.encode()).decode()])
