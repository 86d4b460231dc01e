"""The public API is exactly what ``tether.__all__`` lists, and every name in it is real."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tether


def test_all_lists_each_name_once_and_nothing_private() -> None:
    assert len(set(tether.__all__)) == len(tether.__all__)
    private = [n for n in tether.__all__ if n.startswith("_") and n != "__version__"]
    assert not private, private


def test_the_lazy_map_and_all_agree() -> None:
    lazy = set(tether._EXPORTS) | {"__version__"}
    assert lazy == set(tether.__all__), lazy ^ set(tether.__all__)


def test_every_name_resolves_through_the_lazy_loader_in_a_fresh_interpreter() -> None:
    # A fresh interpreter: in this one, other tests have imported the modules already.
    check = (
        "import tether\n"
        "missing = [n for n in tether.__all__ if n not in vars(tether) and not hasattr(tether, n)]\n"
        "wrong = [n for n in tether.__all__ if n != '__version__' and getattr(tether, n) is None]\n"
        "print(missing, wrong)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []"


def test_each_lazy_name_is_the_object_its_module_defines() -> None:
    for name, module in tether._EXPORTS.items():
        assert getattr(tether, name) is getattr(importlib.import_module(module), name), name


def test_dir_lists_every_public_name() -> None:
    assert set(tether.__all__) <= set(dir(tether))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Gatway"):
        tether.Gatway  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_class_or_function_imported_into_the_package_is_listed() -> None:
    public = {
        n
        for n, v in vars(tether).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("tether") and callable(v)
    }
    assert public <= set(tether.__all__), public - set(tether.__all__)


def test_open_and_tether_are_public() -> None:
    assert {"open", "Tether"} <= set(tether.__all__)
    with tether.open() as tt:
        assert isinstance(tt, tether.Tether)
