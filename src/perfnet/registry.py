"""Registries: the analysis methods, the networks and the output writers, each filled by one
registration line in the package that owns the thing (DESIGN.md).

- methods: ``perfnet.conventional`` registers ssvd, csvd, osvd, tikhonov and boxnlr,
  ``perfnet.inference`` registers cnn. A method is ``run(series, **options) -> (maps, series the
  maps came from, aif.json content or None)``, named by ``"module:function"`` so that listing the
  methods (the CLI's choices, ``train --targets``) imports nothing heavy.
- networks: :data:`perfnet.models.NETWORKS` (training and inference build and call them by name).
- output writers: :data:`perfnet.io.writers.WRITERS`.

A new method is one module plus one ``register_method`` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perfnet.errors import PerfnetInputError

DEFAULT_METHOD = "osvd"


@dataclass(frozen=True)
class MethodSpec:
    """One analysis method: its name, family (``conventional`` | ``cnn``) and entry point."""

    name: str
    entry: str | Callable[..., Any]
    kind: str
    takes_weights: bool = False
    description: str = ""

    def runner(self) -> Callable[..., Any]:
        if callable(self.entry):
            return self.entry
        module, _, function = self.entry.partition(":")
        return getattr(importlib.import_module(module), function)

    def run(self, series: Any, **options: Any) -> Any:
        return self.runner()(series, method=self.name, **options)


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    entry: str | Callable[..., Any],
    *,
    kind: str = "conventional",
    takes_weights: bool = False,
    description: str = "",
) -> MethodSpec:
    """Add (or replace) a method of :func:`perfnet.analyze` and the CLI's ``--method``."""
    spec = MethodSpec(name, entry, kind, takes_weights, description)
    METHODS[name] = spec
    return spec


def _load_builtin() -> None:
    importlib.import_module("perfnet.conventional")
    importlib.import_module("perfnet.inference")


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered method names (optionally of one family), conventional ones first."""
    _load_builtin()
    order = {"conventional": 0, "cnn": 1}
    specs = sorted(METHODS.values(), key=lambda s: order.get(s.kind, 2))
    return tuple(s.name for s in specs if kind is None or s.kind == kind)


def method_spec(name: str) -> MethodSpec:
    _load_builtin()
    if name not in METHODS:
        raise PerfnetInputError(
            "--method", f"unknown method {name!r} (choose from {', '.join(method_names())})"
        )
    return METHODS[name]
