"""Space heating by an air-source heat pump whose COP follows the outdoor temperature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import cvxpy as cp
import numpy as np
from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from scenario.components.thermal import ThermalZone
from scenario.errors import Expect, fail
from scenario.fields import Series, number, param
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


class SpaceHeating(ThermalZone):
    """Space heating by an air-source heat pump in a building with thermal mass (the RC zone
    of `ThermalZone`, C the building's capacity). The COP falls as it gets colder outside:
    COP_t = cop(θ_out,t), linear between the points of `cop_curve` ([outdoor °C, COP] pairs)
    and flat beyond its ends. Electric power 0 <= p_t <= max_kw delivers COP_t p_t kW of heat;
    internal and solar gains add gains_t kW, so q_t = COP_t p_t + gains_t and
        θ_{t+1} = a θ_t + (1 - a)(θ_out,t + R (COP_t p_t + gains_t)),  θ_0 = t_init_c,
    with comfort t_min_c <= θ_{t+1} <= t_max_c. The same kWh of electricity is worth more heat
    in the mild afternoon than at the cold dawn, so the optimum preheats the thermal mass when
    the COP is high and the price low. Cost: loss_per_kw2h * Δ * Σ_t p_t² (part-load losses)
    plus comfort_per_c2h * Δ * Σ_t (θ_{t+1} - t_set_c)²."""

    type: Literal["space_heating"] = "space_heating"
    cop_curve: CopCurve = param(DEFAULT_COP_CURVE, doc="COP against outdoor temperature: "
                                "[t_out_c, cop] points")
    gains_kw: Series(ge=0) = param(0.0, doc="internal and solar heat gains", unit="kW",
                                   validate_default=True)

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        ts, cops = zip(*self.cop_curve, strict=True)
        cop_t = np.interp(np.array(self.t_out_c), ts, cops)
        return {**super().derive(h), "cop_t": tuple(float(c) for c in cop_t)}

    def heat_kw(self, p: cp.Variable, h: Horizon) -> cp.Expression:
        return cp.multiply(self.series("cop_t"), p) + np.array(self.gains_kw)

    def infeasible_hint(self) -> str:
        return (f"no power schedule within 0..{self.max_kw} kW keeps the building in "
                f"[{self.t_min_c}, {self.t_max_c}] degC with this COP curve; raise max_kw, "
                "widen the band or insulate (larger r_c_per_kw)")
