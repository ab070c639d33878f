"""The registry of component types: every module here defines one (scenario.components.base).

Importing this package imports each module, and defining a `Component` subclass registers it,
so a new type is one new module (plus its tests and a scenario) and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from scenario.components.base import REGISTRY, Component, Model

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

TYPES: dict[str, type[Component]] = dict(sorted(REGISTRY.items()))
COMPONENT_TYPES: tuple[str, ...] = tuple(TYPES)

__all__ = ["COMPONENT_TYPES", "TYPES", "Component", "Model"]
