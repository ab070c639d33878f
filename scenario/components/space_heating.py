"""Space heating by an air-source heat pump whose COP follows the outdoor temperature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import cvxpy as cp
import numpy as np
from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from scenario import profiles
from scenario.components.base import Component, Model
from scenario.errors import Expect, fail
from scenario.fields import Profile, Series, number, param
from scenario.horizon import Horizon

# Air-to-water at 35 degC flow, in the spirit of EN 14825's rating points (A-7, A2, A7, A12)
DEFAULT_COP_CURVE = ((-7.0, 2.6), (2.0, 3.4), (7.0, 4.3), (12.0, 5.0))


def _cop_curve(v: Any, info: ValidationInfo) -> tuple[tuple[float, float], ...]:
    if not isinstance(v, (list, tuple)) or not v:
        fail("a non-empty list of [t_out_c, cop] points", v)
    points = []
    for i, pt in enumerate(v):
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            fail("a [t_out_c, cop] pair", pt, at=f"[{i}]")
        t = number(pt[0], f"[{i}][0]")
        cop = number(pt[1], f"[{i}][1]", gt=0, le=20)
        if points and t <= points[-1][0]:
            fail(f"a temperature above the previous point's {points[-1][0]:g} (points in "
                 "rising order)", t, at=f"[{i}][0]")
        points.append((t, cop))
    return tuple(points)


CopCurve = Annotated[
    tuple[tuple[float, float], ...], BeforeValidator(_cop_curve),
    Expect("a list of [t_out_c, cop] points in rising t_out_c"),
    WithJsonSchema({"type": "array", "items": {"type": "array", "items": {"type": "number"},
                                               "minItems": 2, "maxItems": 2}})]


class SpaceHeating(Component):
    """Space heating by an air-source heat pump in a building with thermal mass.
    The COP falls as it gets colder outside: COP_t = cop(θ_out,t), linear between the points of
    `cop_curve` ([outdoor °C, COP] pairs) and flat beyond its ends. Electric power
    0 <= p_t <= max_kw delivers COP_t p_t kW of heat; internal and solar gains add gains_t kW.
    The building is a first-order RC zone: with a = exp(-Δ/(R C)), the exact discretisation of
    C dθ/dt = (θ_out - θ)/R + COP p + gains is
        θ_{t+1} = a θ_t + (1 - a)(θ_out,t + R (COP_t p_t + gains_t)),  θ_0 = t_init_c,
    and comfort requires t_min_c <= θ_{t+1} <= t_max_c. The same kWh of electricity is worth
    more heat in the mild afternoon than at the cold dawn, so the optimum preheats the thermal
    mass when the COP is high and the price low. Cost: loss_per_kw2h * Δ * Σ_t p_t² (part-load
    losses) plus comfort_per_c2h * Δ * Σ_t (θ_{t+1} - t_set_c)²."""

    type: Literal["space_heating"] = "space_heating"
    solve_to_check = True
    max_kw: float = param(doc="electric power limit", unit="kW", gt=0)
    cop_curve: CopCurve = param(DEFAULT_COP_CURVE, doc="COP against outdoor temperature: "
                                "[t_out_c, cop] points", validate_default=False)
    r_c_per_kw: float = param(doc="thermal resistance R of the envelope", unit="°C/kW", gt=0)
    c_kwh_per_c: float = param(doc="thermal capacity C of the building", unit="kWh/°C", gt=0)
    t_init_c: float = param(doc="indoor temperature at the start", unit="°C")
    t_min_c: float = param(doc="comfort band floor", unit="°C")
    t_max_c: float = param(doc="comfort band ceiling", unit="°C")
    t_out_c: Profile("temperature", lambda name, m, h: h.series(
        profiles.outdoor_temperature(name))) = param(
        doc="outdoor temperature: a number, a list per slot or {profile: winter|mild|summer}",
        unit="°C")
    gains_kw: Series(ge=0) = param(0.0, doc="internal and solar heat gains", unit="kW",
                                   validate_default=True)
    comfort_per_c2h: float = param(0.0, doc="discomfort cost", unit="$/°C²h", ge=0)
    t_set_c: float | None = param(None, doc="preferred temperature (default: mid-band)",
                                  unit="°C")
    loss_per_kw2h: float = param(0.005, doc="quadratic part-load loss", unit="$/kW²h", ge=0)

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        ts, cops = zip(*self.cop_curve, strict=True)
        cop_t = np.interp(np.array(self.t_out_c), ts, cops)
        return {"cop_t": tuple(float(c) for c in cop_t),
                "t_set_c": self.t_set_c if self.t_set_c is not None else
                0.5 * (self.t_min_c + self.t_max_c)}

    def check(self, h: Horizon) -> None:
        if not self.t_min_c < self.t_max_c:
            fail(f"t_min_c < t_max_c ({self.t_max_c})", self.t_min_c, at=".t_min_c")
        if not self.t_min_c <= self.t_init_c <= self.t_max_c:
            fail(f"a temperature within the comfort band [{self.t_min_c}, {self.t_max_c}]",
                 self.t_init_c, at=".t_init_c")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), np.full(h.slots, self.max_kw)

    def build(self, h: Horizon) -> Model:
        t, dt = h.slots, h.delta_h
        a = float(np.exp(-dt / (self.r_c_per_kw * self.c_kwh_per_c)))
        cop = self.series("cop_t")
        p = cp.Variable(t, nonneg=True, name=f"{self.id}_p")
        temp = cp.Variable(t + 1, name=f"{self.id}_theta")
        drive = np.array(self.t_out_c) + self.r_c_per_kw * (
            cp.multiply(cop, p) + np.array(self.gains_kw))
        cons = [p <= self.max_kw, temp[0] == self.t_init_c,
                temp[1:] == a * temp[:-1] + (1 - a) * drive,
                temp[1:] >= self.t_min_c, temp[1:] <= self.t_max_c]
        cost = self.loss_per_kw2h * dt * cp.sum_squares(p)
        if self.comfort_per_c2h > 0:
            cost = cost + self.comfort_per_c2h * dt * cp.sum_squares(
                temp[1:] - self._derived["t_set_c"])
        return Model(self.id, p, cost, cons, temp=temp, cop=cop)

    def infeasible_hint(self) -> str:
        return (f"no power schedule within 0..{self.max_kw} kW keeps the building in "
                f"[{self.t_min_c}, {self.t_max_c}] degC with this COP curve; raise max_kw, "
                "widen the band or insulate (larger r_c_per_kw)")
