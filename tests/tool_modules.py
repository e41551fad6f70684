"""The scripts of ``tools/`` loaded as modules for tests (they are not part of the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str, alias: str | None = None) -> ModuleType:
    """A fresh module from ``tools/<name>.py`` (under ``alias``, default ``<name>_tool``)."""
    spec = importlib.util.spec_from_file_location(alias or f"{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
