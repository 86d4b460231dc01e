"""The public API is exactly what tether.__all__ lists."""

import tether


def test_all_names_exist_and_are_sorted_once() -> None:
    assert len(set(tether.__all__)) == len(tether.__all__)
    for name in tether.__all__:
        assert hasattr(tether, name), name


def test_every_public_class_or_function_imported_into_the_package_is_listed() -> None:
    public = {
        n
        for n, v in vars(tether).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("tether") and callable(v)
    }
    assert public <= set(tether.__all__), public - set(tether.__all__)
