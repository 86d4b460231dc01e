"""Every code block in the README runs, top to bottom, in one fresh directory, with no network.

- ``python`` blocks run in a subprocess (each a script of its own), in README order;
- ``toml`` blocks are parsed and validated as ``tether.toml`` (``load_settings``); one marked
  ``<!-- readme-test: tether.toml -->`` becomes the directory's ``tether.toml`` for the blocks after it;
- ``bash`` blocks are ``uv run tether …`` lines, each run through the CLI (``python -m tether``), and must
  exit 0 unless the line's comment says ``exit code N``. Placeholders such as ``<run-id>`` are replaced by
  a real value from the store (``PLACEHOLDERS``).

A block that cannot run offline (or at all in a test) is marked
``<!-- readme-test: skip: REASON -->`` on the line above its fence; there may be only a few.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.config import Settings, load_settings
from tether.guard.approvals import ApprovalRequest, ApprovalStore
from tether.guard.policy import Policy
from tether.store import open_store

README = Path(__file__).resolve().parents[1] / "README.md"
LANGUAGES = {"python", "toml", "bash"}
MAX_SKIPPED = 3
TIMEOUT_S = 180

_FENCE = re.compile(
    r"^(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```$", re.M | re.S
)

# Loaded before every block's code: the same network block as tests/conftest.py, for the subprocesses.
_NO_NETWORK = """\
import ipaddress, socket
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def _local(address):
    if isinstance(address, (str, bytes)):
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
def _check(address):
    if not _local(address):
        raise ConnectionRefusedError(f"README examples may not touch the network: {address!r} blocked")
def _lookup(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "localhost"):
        try:
            local = ipaddress.ip_address(name).is_loopback
        except ValueError:
            local = False
        if not local:
            raise ConnectionRefusedError(f"README examples may not touch the network: lookup of {name!r} blocked")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = lambda self, address: (_check(address), _connect(self, address))[1]
socket.socket.connect_ex = lambda self, address: (_check(address), _connect_ex(self, address))[1]
socket.getaddrinfo = _lookup
"""


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    marker: str | None
    line: int

    @property
    def skip_reason(self) -> str | None:
        if self.marker is None or not self.marker.startswith("skip"):
            return None
        return self.marker.removeprefix("skip").lstrip(":").strip()

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(m["lang"].strip(), m["body"], m["marker"], text.count("\n", 0, m.start("body")))
        for m in _FENCE.finditer(text)
    ]


def _env() -> dict[str, str]:
    drop = {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "TETHER_DATABASE_URL", "TETHER_CONFIG", "TETHER_KILL_FILE"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OTEL_EXPORTER_OTLP")}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


# -- placeholders in shell lines, each a real value from the store at the time the line runs -------------


def _latest_run(cwd: Path) -> str:
    with open_store(f"sqlite:///{cwd / '.tether/tether.db'}") as store:
        runs = store.list_runs(limit=1)
    assert runs, "a README line needs a run id, but no run was stored by the blocks above it"
    return runs[0].run_id


def _pending_approval(cwd: Path) -> str:
    # What a run waiting on `restart_service` leaves for a person (made here: such a run would wait).
    with open_store(f"sqlite:///{cwd / '.tether/tether.db'}") as store:
        request = ApprovalRequest(
            run_id=_latest_run(cwd),
            agent="oncall",
            tool="restart_service",
            call_id="call_readme",
            arguments={"service": "checkout"},
            reason="irreversible: restart_service",
            context={"task": "checkout is down"},
        )
        return ApprovalStore(store).request(request, timeout_s=600).id


def _eval_of(version: str | None) -> Callable[[Path], str]:
    def find(cwd: Path) -> str:
        listed = _run([sys.executable, "-m", "tether", "eval", "list", "--json"], cwd)
        assert listed.returncode == 0, listed.stderr
        evals = [e for e in json.loads(listed.stdout) if version is None or e["agent_version"] == version]
        assert evals, f"a README line needs an eval of {version or 'any version'}, but none was run above it"
        return str(evals[0]["eval_id"])

    return find


PLACEHOLDERS: dict[str, Callable[[Path], str]] = {
    "run-id": _latest_run,
    "approval-id": _pending_approval,
    "careful-eval-id": _eval_of("oncall-careful"),
    "sloppy-eval-id": _eval_of("oncall-sloppy"),
    "eval-id": _eval_of(None),
}
_PLACEHOLDER = re.compile(r"<([a-z][a-z-]*)>")
_EXIT_CODE = re.compile(r"#.*\bexit code (\d+)")


def _shell_line(line: str, block: Block, cwd: Path) -> None:
    expected = int(m[1]) if (m := _EXIT_CODE.search(line)) else 0
    words = shlex.split(line, comments=True)
    assert words[:3] == ["uv", "run", "tether"], f"{block}: not a tether command: {line!r}"

    def value(match: re.Match[str]) -> str:
        assert match[1] in PLACEHOLDERS, f"{block}: unknown placeholder <{match[1]}> in {line!r}"
        return PLACEHOLDERS[match[1]](cwd)

    args = [_PLACEHOLDER.sub(value, word) for word in words[3:]]
    runner = _NO_NETWORK + "import runpy, sys\nsys.argv = ['tether', *sys.argv[1:]]\nrunpy.run_module('tether')\n"
    done = _run([sys.executable, "-c", runner, *args], cwd)
    assert done.returncode == expected, (
        f"{block}: `tether {' '.join(args)}` exited {done.returncode} (expected {expected})\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )


def _python_block(block: Block, cwd: Path, index: int) -> None:
    script = cwd / f"readme_example_{index}.py"
    script.write_text(f"{_NO_NETWORK}\n# {block}\n{block.body}", encoding="utf-8")
    done = _run([sys.executable, str(script)], cwd)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _validate_toml(block: Block, directory: Path) -> None:
    data = tomllib.loads(block.body)
    text = block.body
    # The guard's tables, until Settings has a [guard] of its own, are checked as the guard reads them.
    if "guard" in data and "guard" not in Settings.model_fields:
        Policy.from_mapping(data.pop("guard"), source=str(block))
        text = _dump(data)
    path = directory / "validate.toml"
    path.write_text(text, encoding="utf-8")
    load_settings(path)


def _dump(data: dict[str, object]) -> str:
    # Enough TOML for what the README's tables hold (tables of scalars, arrays and inline tables).
    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    return "\n".join(f"{json.dumps(k)} = {value(v)}" for k, v in data.items()) + "\n"


# -- the tests --------------------------------------------------------------------------------------------


def test_every_block_is_fenced_as_what_it_is_and_skips_are_few_and_explained() -> None:
    found = blocks()
    assert len(found) >= 10, "the README's code blocks were not found"
    for block in found:
        assert block.lang in LANGUAGES, f"{block}: fence it as one of {sorted(LANGUAGES)} (what it is)"
        if block.marker is not None:
            assert block.marker == "tether.toml" or block.skip_reason, f"{block}: unknown marker {block.marker!r}"
    skipped = [b for b in found if b.skip_reason is not None]
    assert len(skipped) <= MAX_SKIPPED, [str(b) for b in skipped]


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang == "toml"], ids=str)
def test_every_toml_block_is_valid_tether_toml(block: Block, tmp_path: Path) -> None:
    _validate_toml(block, tmp_path)


def test_an_invalid_toml_block_would_fail(tmp_path: Path) -> None:
    bad = Block("toml", '[routes.x]\ntiers = [["nope"]]\n', None, 0)
    with pytest.raises(Exception, match="nope"):
        _validate_toml(bad, tmp_path)


def test_a_failing_shell_line_fails_the_readme(tmp_path: Path) -> None:
    block = Block("bash", "", None, 0)
    with pytest.raises(AssertionError, match=r"exited [12] \(expected 0\)"):
        _shell_line("uv run tether runs show no-such-run", block, tmp_path)


def test_the_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    ran = 0
    for index, block in enumerate(blocks()):
        if block.skip_reason is not None:
            continue
        if block.lang == "toml":
            if block.marker == "tether.toml":
                (tmp_path / "tether.toml").write_text(block.body, encoding="utf-8")
            continue
        if block.lang == "python":
            _python_block(block, tmp_path, index)
        elif block.lang == "bash":
            lines = [line for line in block.body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            for line in lines:
                _shell_line(line, block, tmp_path)
        ran += 1
    assert ran >= 8
    assert (tmp_path / ".tether/tether.db").exists()
