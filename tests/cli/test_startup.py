"""``import tether.cli`` loads only what declaring the commands needs: ``tether --help`` and ``tether kill`` start fast.

Each command imports the store, the gateway, the evals and their dependencies when it runs (see
``tether.cli``); an import added back at the top of a command module makes every command pay for it.
"""

from __future__ import annotations

import json
import subprocess
import sys

# What only running a command needs: the store and its database drivers, the proxy's web stack, the evals'
# schema and YAML parsing, the price data, tracing. Each costs tens to hundreds of milliseconds to import.
NOT_AT_STARTUP = (
    "aiohttp",
    "genai_prices",
    "httpx",
    "jsonschema",
    "opentelemetry",
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "uvloop",
    "yaml",
    "tether.config",
    "tether.evals",
    "tether.gateway",
    "tether.guard",
    "tether.models",
    "tether.runtime",
    "tether.store",
)


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout))


def test_importing_the_cli_leaves_what_only_commands_need_unimported() -> None:
    loaded = _modules_after("import tether.cli")
    assert "tether.cli" in loaded
    heavy = sorted(m for m in loaded if any(m == name or m.startswith(name + ".") for name in NOT_AT_STARTUP))
    assert heavy == []
