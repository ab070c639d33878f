"""What every component type is: its parameters (a pydantic model), what it derives from them
over the horizon, its analytic checks, its per-slot power bounds and its convex model.

A type is one module in scenario/components defining one `Component` subclass with a
`type: Literal["name"]` field; defining the class registers it (scenario.components.TYPES),
and the scenario schema, the device process, the centralized problem and the model
documentation all take it from there.

Sign convention: power in kW per slot, consumption positive, generation negative. Δ is the
slot length in hours, t = 0..T-1 the slots.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import cvxpy as cp
import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationInfo, model_validator

from scenario.fields import Id, horizon
from scenario.horizon import Horizon

REGISTRY: dict[str, type[Component]] = {}


class Model:
    """A component's convex model: `power` (T,) kW, `cost` ($ over the day) and
    `constraints`; further variables (a battery's energy, ...) are attributes."""

    def __init__(self, component_id: str, power: cp.Expression | np.ndarray,
                 cost: cp.Expression | float = 0.0,
                 constraints: list[cp.Constraint] | None = None, **variables: Any) -> None:
        self.id = component_id
        self.power = power if isinstance(power, cp.Expression) else cp.Constant(power)
        self.cost = cost if isinstance(cost, cp.Expression) else cp.Constant(cost)
        self.constraints = constraints or []
        for name, var in variables.items():
            setattr(self, name, var)


class Component(BaseModel):
    """Base of every component type (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    id: Id
    # True when feasibility needs a solve (the analytic `check` cannot settle it)
    solve_to_check: ClassVar[bool] = False

    _derived: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("type")
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            name = typing.get_args(field.annotation)[0]
            if name in REGISTRY and REGISTRY[name].__qualname__ != cls.__qualname__:
                raise TypeError(f"component type {name!r} defined twice")
            REGISTRY[name] = cls

    @model_validator(mode="after")
    def _over_horizon(self, info: ValidationInfo) -> Component:
        h = horizon(info)
        self._derived = dict(self.derive(h))
        self.check(h)
        return self

    # ---- what a type defines

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        """Quantities derived over the horizon (profiles scaled to per-slot series, ...)."""
        return {}

    def check(self, h: Horizon) -> None:
        """Cheap cross-field feasibility checks; `scenario.errors.fail(..., at=".field")`."""

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        """Per-slot (min, max) of this component's power in kW."""
        raise NotImplementedError

    def build(self, h: Horizon) -> Model:
        """The convex model: power, cost and constraints."""
        raise NotImplementedError

    def infeasible_hint(self) -> str:
        """What to change when the solve-based feasibility check finds no schedule."""
        return "no schedule satisfies the constraints"

    # ---- shared

    @property
    def params(self) -> dict[str, Any]:
        """Parameters and derived quantities by name (per-slot series as tuples)."""
        p = self.model_dump(exclude={"id", "type", "actuator"})
        p.update(self._derived)
        return p

    def series(self, key: str) -> np.ndarray:
        return np.asarray(self.params[key], dtype=float)
