"""Providers registered once: specs, look-ups with "did you mean", and the unpriced-model warning."""

from __future__ import annotations

import logging

import pytest

from tether.config import GatewayConfig, ProviderSettings
from tether.errors import ConfigError, UnknownModelError
from tether.gateway.gateway import Gateway
from tether.models import registry, resolve_model
from tether.models.base import Model, ProviderConfig
from tether.models.registry import (
    ApiKeyHeader,
    NoAuth,
    Pricing,
    ProviderSpec,
    SignedRequests,
    provider_kinds,
    provider_spec,
)
from tether.models.sim import SimModel
from tether.pricing import PriceRef


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_warned", set())


def test_the_built_in_providers_are_registered_with_their_wire_and_auth() -> None:
    assert provider_kinds() == ["anthropic", "openai", "sim"]
    anthropic, openai, sim = (provider_spec(k) for k in ("anthropic", "openai", "sim"))
    assert (anthropic.wire, anthropic.error_format, anthropic.default_key_env) == (
        "anthropic",
        "anthropic",
        "ANTHROPIC_API_KEY",
    )
    assert anthropic.auth.headers("k") == {"x-api-key": "k"}
    assert openai.auth.headers("k") == {"authorization": "Bearer k"}
    assert openai.auth.headers(None) == {}
    assert sim.wire is None and isinstance(sim.auth, NoAuth) and sim.default_key_env is None


def test_signed_requests_are_refused_until_supported() -> None:
    with pytest.raises(ConfigError, match="sigv4 request signing is not supported yet"):
        SignedRequests("sigv4", service="bedrock").headers("k")


def test_credentials_are_resolved_apart_from_the_kind() -> None:
    openai = provider_spec("openai")
    assert openai.key_env(ProviderSettings(kind="openai")) == "OPENAI_API_KEY"
    # An OpenAI-compatible server at its own URL: no key by default, one when asked for.
    local = ProviderSettings(kind="openai", base_url="http://127.0.0.1:8000/v1")
    assert openai.key_env(local) is None
    assert openai.key_env(local.model_copy(update={"auth": "api_key"})) == "OPENAI_API_KEY"
    assert openai.key_env(local.model_copy(update={"api_key_env": "VLLM_KEY"})) == "VLLM_KEY"
    assert provider_spec("anthropic").key_env(ProviderSettings(kind="anthropic", auth="none")) is None


def test_pricing_identity() -> None:
    assert provider_spec("openai").price_ref("gpt-4o") == PriceRef("openai", "gpt-4o")
    assert provider_spec("openai").price_ref("llama3", "http://127.0.0.1:8000/v1") is None
    assert provider_spec("sim").price_ref("claude-sonnet-4-5") == PriceRef("anthropic", "claude-sonnet-4-5")
    assert provider_spec("sim").price_ref("my-model") is None


def test_an_unknown_kind_names_the_known_ones_with_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider kind 'antropic' \(known: anthropic, openai, sim\); did"):
        provider_spec("antropic")
    with pytest.raises(UnknownModelError, match=r"unknown provider 'opnai' .*; did you mean openai:gpt-4o\?"):
        resolve_model("opnai:gpt-4o")


def test_a_new_provider_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(spec: ProviderSpec, settings: ProviderSettings, model: str, config: ProviderConfig) -> Model:
        return SimModel(model)

    spec = ProviderSpec(
        kind="acme",
        wire="openai",
        auth=ApiKeyHeader("x-acme-key"),
        default_base_url="https://api.acme.test/v1",
        default_key_env="ACME_KEY",
        error_format="openai",
        pricing=Pricing(provider_id="acme"),
        factory=build,
    )
    monkeypatch.setitem(registry._specs, "acme", spec)
    assert "acme" in provider_kinds()
    assert resolve_model("acme:claude-haiku-4-5").model_name == "claude-haiku-4-5"
    cfg = GatewayConfig.model_validate(
        {"providers": {"a": {"kind": "acme"}}, "deployments": {"d": {"provider": "a", "model": "claude-haiku-4-5"}}}
    )
    assert Gateway(cfg).deployments["d"].model.model_name == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("ref", "suggestion"),
    [("sim:claude-sonet-4-5", "did you mean sim:claude-sonnet-4-5?"), ("anthropic:claude-sonet-4-5", "did you mean")],
)
def test_a_typod_model_warns_once_that_it_has_no_price(
    ref: str, suggestion: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the model was built and ran unpriced without a word.
    with caplog.at_level(logging.WARNING, logger="tether.models"):
        resolve_model(ref)
        resolve_model(ref)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tether.models"]
    assert len(warnings) == 1
    assert f"model {ref} has no price" in warnings[0]
    assert suggestion in warnings[0] and "claude-sonnet-4-5" in warnings[0]


@pytest.mark.parametrize(
    "ref", ["sim:claude-sonnet-4-5", "anthropic:claude-sonnet-4-5", "openai:llama3@http://127.0.0.1:1/v1", "sim:x"]
)
def test_a_priced_or_deliberately_unpriced_model_does_not_warn(ref: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tether.models"):
        resolve_model(ref)
    assert not [r for r in caplog.records if r.name == "tether.models"]


def test_a_gateway_deployment_with_a_typod_model_warns_unless_priced_in_the_config(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tables = {"providers": {"s": {"kind": "sim"}}, "deployments": {"d": {"provider": "s", "model": "claude-sonet-4-5"}}}
    with caplog.at_level(logging.WARNING, logger="tether.models"):
        Gateway(GatewayConfig.model_validate(tables))
    assert ["has no price" in r.getMessage() for r in caplog.records if r.name == "tether.models"] == [True]
    caplog.clear()
    registry._warned.clear()
    priced = {**tables, "prices": {"claude-sonet-4-5": {"input_per_mtok": 1, "output_per_mtok": 2}}}
    with caplog.at_level(logging.WARNING, logger="tether.models"):
        Gateway(GatewayConfig.model_validate(priced))
    assert not [r for r in caplog.records if r.name == "tether.models"]
