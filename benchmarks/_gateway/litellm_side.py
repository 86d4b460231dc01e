"""LiteLLM's proxy, installed in its own virtual environment (``.bench/litellm``), never in tether's.

``python -m benchmarks._gateway.litellm_side`` creates or updates the
environment (``make bench`` runs it first); the benchmark calls the same
``ensure_venv()`` and reports LiteLLM's rows as missing, with the reason, when
it cannot be installed or started.

The pin: ``litellm[proxy]==1.106.2``. Newer releases (1.106.10 … 1.109.1) do
not resolve on this machine's registry (their pinned ``litellm-enterprise`` /
``litellm-proxy-extras`` builds or a newer ``certifi`` are not there); 1.106.2
is the newest that installs, and the one an unpinned install picks here.

Plus ``opentelemetry-sdk``, which ``litellm[proxy]`` 1.106.2 does not pull in
but its auth path imports on *every* request
(``user_api_key_auth._seed_request_destinations`` →
``litellm.integrations.otel.logger``): without it the import fails, is
swallowed, and is retried per request — about a third of LiteLLM's CPU in a
py-spy profile here. LiteLLM's own image installs it (extra
``proxy-runtime``); adding just that package keeps the comparison fair
without pulling in the rest of the image (ddtrace, sentry, langfuse…).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

LITELLM_VERSION = "1.106.2"
OTEL_SDK_VERSION = "1.45.2"  # the opentelemetry-api that litellm[proxy]==1.106.2 resolves to here
REQUIREMENTS = (f"litellm[proxy]=={LITELLM_VERSION}", f"opentelemetry-sdk=={OTEL_SDK_VERSION}")
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".bench" / "litellm"
BIN = VENV / "bin" / "litellm"
PYTHON = VENV / "bin" / "python"
MASTER_KEY = "sk-bench-litellm-master"  # LiteLLM's own auth on every request, like tether's virtual key


def _uv() -> str | None:
    return shutil.which("uv") or next(
        (str(p) for p in (Path.home() / ".local" / "bin" / "uv",) if p.exists()),
        None,
    )


def installed_versions() -> str | None:
    """``"<litellm> <opentelemetry-sdk>"`` as installed in the venv, or None."""
    if not PYTHON.exists() or not BIN.exists():
        return None
    proc = subprocess.run(
        [
            str(PYTHON),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'), m.version('opentelemetry-sdk'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def ensure_venv() -> str:
    """Create ``.bench/litellm`` with the pinned LiteLLM; ``""`` on success, else why not."""
    wanted = f"{LITELLM_VERSION} {OTEL_SDK_VERSION}"
    if installed_versions() == wanted:
        return ""
    uv = _uv()
    if uv is None:
        return "uv is not installed, so LiteLLM's virtual environment cannot be created"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    steps = [
        [uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(VENV)],
        [uv, "pip", "install", "--quiet", "--python", str(PYTHON), *REQUIREMENTS],
    ]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(cmd[:3])}` failed: {exc}"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(cmd[:3])} …` failed: {' / '.join(tail)}"
    versions = installed_versions()
    if versions != wanted:
        return f"the environment reports litellm/opentelemetry-sdk {versions!r}, expected {wanted!r}"
    return ""


def config_yaml(upstream_base_url: str, key_env: str) -> str:
    """One openai-compatible model whose api_base is the mock; no database; default logging."""
    return (
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream_base_url}\n"
        f"      api_key: os.environ/{key_env}\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )


def command(config: Path, port: int) -> list[str]:
    return [str(BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--telemetry", "False"]


def environment(key_env: str) -> dict[str, str]:
    """No network at start-up: the bundled model cost map, no telemetry, no database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_", "LITELLM_", "DATABASE_URL"))}
    env.update(
        {
            key_env: "sk-mock-upstream-dummy",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
        }
    )
    return env


if __name__ == "__main__":
    why = ensure_venv()
    if why:
        print(f"LiteLLM not installed: {why}", file=sys.stderr)
        sys.exit(1)
    print(f"LiteLLM {LITELLM_VERSION} ready in {VENV}")
