"""Helpers of ``benchmarks.gateway_overhead``: mock upstream, wrk driver, LiteLLM set-up, process control."""
