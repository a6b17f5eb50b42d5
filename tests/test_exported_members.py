"""The public facades export exactly their public names."""

from __future__ import annotations

import importlib
import types

import pytest

FACADES = [
    "engine",
    "engine.emulator",
    "engine.policy",
    "engine.providers",
    "engine.runtime",
    "engine.serve",
    "engine.state",
    "engine.wire",
    "sessions",
]
"""Every package whose `__init__` is the facade of its private modules."""


def _isort_order(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest.
    kind = 0 if name.upper() == name else 1 if name[0].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", FACADES)
def test_all_is_sorted_and_complete(name: str) -> None:
    """__all__ is sorted, and names everything public the package exposes but submodules."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_order)
    public = {
        attr
        for attr in dir(module)
        if not attr.startswith("_") and not isinstance(_member(module, attr), types.ModuleType)
    }
    assert public == set(exported)


def _member(module: types.ModuleType, attr: str) -> object:
    """The attribute; a lazily loaded face of an optional extra that is not installed (the MCP
    SDK, in the CI run at the dependency floors) counts as present."""
    try:
        return getattr(module, attr)
    except ModuleNotFoundError as exc:
        assert exc.name is not None and exc.name.split(".")[0] in ("mcp", "mcp_types")
        return object()


@pytest.mark.parametrize("name", FACADES)
def test_exported_names_belong_to_the_package(name: str) -> None:
    """Every exported class and function is defined inside nanoedit's packages (type aliases
    and constants are left out: their __module__ is typing's, or they have none)."""
    module = importlib.import_module(name)
    for attr in module.__all__:
        try:
            value = getattr(module, attr)
        except ModuleNotFoundError as exc:  # an optional extra's face (engine.serve's MCP)
            assert exc.name is not None and exc.name.split(".")[0] in ("mcp", "mcp_types")
            continue
        if not isinstance(value, type | types.FunctionType):
            continue
        owner = value.__module__
        assert owner.split(".")[0] in ("engine", "sessions"), attr


def test_the_emulator_loads_nothing_of_the_engine() -> None:
    """`import engine.emulator` in a fresh interpreter loads no engine module outside it."""
    import subprocess
    import sys

    probe = (
        "import sys, engine.emulator\n"
        "print(sorted(m for m in sys.modules if m.startswith('engine.')"
        " and not m.startswith('engine.emulator')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
