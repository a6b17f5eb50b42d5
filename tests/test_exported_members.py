"""The public facades export exactly their public names."""

from __future__ import annotations

import types

import pytest

import engine
import sessions


@pytest.mark.parametrize("module", [engine, sessions])
def test_all_is_sorted_and_complete(module: types.ModuleType) -> None:
    """__all__ is sorted, and names everything public the package exposes but submodules."""
    exported = list(module.__all__)
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(exported)


@pytest.mark.parametrize("module", [engine, sessions])
def test_exported_names_belong_to_the_package(module: types.ModuleType) -> None:
    """Every exported object is defined inside nanoedit's packages."""
    for name in module.__all__:
        value = getattr(module, name)
        owner = getattr(value, "__module__", module.__name__)
        assert owner.split(".")[0] in ("engine", "sessions"), name
