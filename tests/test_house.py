"""The house rules that import-linter cannot state: no package imports another package's private names.

import-linter (``make lint``, contracts in pyproject.toml) keeps the layers, forbids cycles between the
modules of a package and imports of another package's private *modules*; a private *name* (``from
tether.models.openai import _usage``) it does not see, so this test reads every import in ``src/tether``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tether"


def _package_of(module: str, root: Path) -> str:
    """``tether.server.proxy`` → ``tether.gateway``; a top-level module (``tether.config``) is its own package."""
    parts = module.split(".")
    if len(parts) >= 2 and (root / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def private_name_imports(root: Path = SRC) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        mine = _package_of(_module_name(path, root), root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith("tether") or _package_of(node.module, root) == mine:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {node.module}.{alias.name}")
    return found


def test_no_package_imports_a_private_name_of_another() -> None:
    assert private_name_imports() == []


def test_the_check_sees_a_private_name_import(tmp_path: Path) -> None:
    pkg = tmp_path / "tether"
    (pkg / "gateway").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "gateway" / "wire.py").write_text("from tether.models.openai import _usage, parse\n")
    (pkg / "models" / "openai.py").write_text("from tether.models.base import _private_is_fine_here\n")
    assert private_name_imports(pkg) == ["tether/gateway/wire.py:1: tether.models.openai._usage"]
