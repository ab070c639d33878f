"""The Coordinator's integer arithmetic in Python, step for step, for bit-exact replay.

`lab verify` and the contract tests feed the Submitted events of a session through
`FixedAggregator` and require every figure of every RoundClosed event (r, s, eps_pri,
eps_dual, rho, rho_next, converged, stragglers, xbar, zbar, u) to be equal as integers.
Nothing overflows and no close fails, however a session diverges: rho is clamped to
[RHO_MIN, RHO_MAX] (step6_rho) and u saturates at +-MAX_LANE (`saturate`), as on chain.
Each function mirrors the internal function of Coordinator.vy with the same name; the
rounding rules are those of the contract's header (divisions half away from zero, isqrt
down). The float twin of the same steps is reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isqrt

from aggregator_contract import fixed_point as fp

WAD = fp.WAD
RHO_MIN = 10**9
RHO_MAX = 10**27
MAX_LANE = 2**63 - 1


def div(a: int, b: int) -> int:
    """a / b (b > 0) rounded half away from zero (the contract's `_div`)."""
    h = b // 2
    return (a + h) // b if a >= 0 else -((-a + h) // b)


def sqrt_wad(v: int) -> int:
    """isqrt(v * 1e18): sqrt of a 1e-18-unit square, in 1e-18 units, rounded down."""
    return isqrt(v * WAD)


def step2_average(s: int, n: int) -> int:
    return div(s, n)


def step3_zbar(u: int, xbar: int, zbar: int, price: int, cap_n: int, exp_n: int, rho: int,
               den: int, delta: int, alpha: int) -> tuple[int, int]:
    """(xhat, zbar+): over-relaxation, then the prox of g clipped to the box."""
    xh = div(alpha * xbar + (WAD - alpha) * zbar, WAD)
    z = div(rho * (u + xh) - delta * price, den)
    return xh, min(max(z, -exp_n), cap_n)


def saturate(v: int) -> int:
    """v clamped to the int64 lane, +-(2^63 - 1): where u saturates."""
    return min(max(v, -MAX_LANE), MAX_LANE)


def step4_u(u: int, xhat: int, zbar: int) -> int:
    """u+ = u + xhat - zbar+, saturated to the lane."""
    return saturate(u + xhat - zbar)


@dataclass(frozen=True)
class Params:
    """A session's AdmmParams as the contract holds them (integers)."""

    slots: int
    delta_wad: int
    gamma_wad: int
    rho0_wad: int
    eps_abs_wad: int
    eps_rel_wad: int
    mu_wad: int
    tau_wad: int
    max_rounds: int
    deadline_s: int
    alpha_wad: int
    viol_tol_nkw: int

    @classmethod
    def from_event(cls, p: dict) -> Params:
        return cls(**{k: int(p[k]) for k in cls.__dataclass_fields__})


RATIO_MAX = 10**36


def step5_residuals(c: dict, sq_x: int, sq_dx: int, n: int, slots: int, rho: int,
                    p: Params) -> dict:
    r = sqrt_wad(n * c["r2"])
    s = div(rho * sqrt_wad(sq_dx - 2 * c["sdx_d"] + n * c["dd"]), WAD)
    sqrt_p = isqrt(n * slots * WAD * WAD)
    abs_part = div(sqrt_p * p.eps_abs_wad, WAD)
    x_scale = max(sqrt_wad(sq_x), sqrt_wad(sq_x + 2 * c["s_zx"] + n * c["r2"]))
    y_scale = div(rho * sqrt_wad(n * c["uu"]), WAD)
    eps_pri = abs_part + div(p.eps_rel_wad * x_scale, WAD)
    eps_dual = abs_part + div(p.eps_rel_wad * y_scale, WAD)
    converged = (r <= eps_pri and s <= eps_dual
                 and max(c["imp"], c["exp"]) <= p.viol_tol_nkw)
    ra = min(div(r * WAD, x_scale), RATIO_MAX) if x_scale > 0 else RATIO_MAX
    rb = min(div(y_scale * WAD, s), RATIO_MAX) if s > 0 else RATIO_MAX
    factor = sqrt_wad(div(max(ra, 1) * max(rb, 1), WAD))
    return {"r": r, "s": s, "eps_pri": eps_pri, "eps_dual": eps_dual,
            "import_excess": c["imp"], "export_excess": c["exp"], "factor": factor,
            "converged": converged}


def step6_rho(res: dict, rho: int, p: Params) -> tuple[int, int]:
    """(rho_next, f): u is then divided by f (WAD: unchanged). f is clipped to
    [1/tau, tau], then to [RHO_MIN/rho, RHO_MAX/rho]; rho_next is clamped to
    [RHO_MIN, RHO_MAX] after rounding."""
    f = res["factor"]
    if f <= p.mu_wad and f * p.mu_wad >= WAD * WAD:
        return rho, WAD
    f = max(f, div(WAD * WAD, p.tau_wad), div(RHO_MIN * WAD, rho))
    f = min(f, p.tau_wad, div(RHO_MAX * WAD, rho))
    return min(max(div(rho * f, WAD), RHO_MIN), RHO_MAX), f


@dataclass
class FixedAggregator:
    """The contract's state of one session and its transitions, in integers."""

    params: Params
    price: list[int]  # 1e-9 $/kWh
    capacity: list[int]  # nkW
    export_limit: list[int]
    devices: list[str]
    round: int = 0
    rho: int = 0
    S: list[int] = field(default_factory=list)  # sum_i x_i
    snap: list[int] = field(default_factory=list)  # S at the last close
    zbar: list[int] = field(default_factory=list)
    u: list[int] = field(default_factory=list)
    sq_x: int = 0
    sq_dx: int = 0
    x: dict[str, list[int]] = field(default_factory=dict)  # each device's last submission
    submitted: set[str] = field(default_factory=set)
    finalized: bool = False
    ended: bool = False  # ended by the operator (end_session)

    def __post_init__(self) -> None:
        t = self.params.slots
        self.rho = self.rho or self.params.rho0_wad
        for name in ("S", "snap", "zbar"):
            if not getattr(self, name):
                setattr(self, name, [0] * t)
        if not self.u:  # the price start: u = delta pi / rho0
            self.u = [div(self.params.delta_wad * pi, self.params.rho0_wad) for pi in self.price]
        for d in self.devices:
            self.x.setdefault(d, [0] * t)

    @property
    def n(self) -> int:
        return len(self.devices)

    def submit(self, device: str, x: list[int]) -> None:
        """Fold one submission in (the contract's `submit`)."""
        old = self.x[device]
        for t, (xn, xo) in enumerate(zip(x, old, strict=True)):
            dx = xn - xo
            self.S[t] += dx
            self.sq_x += xn * xn - xo * xo
            self.sq_dx += dx * dx
        self.x[device] = list(x)
        self.submitted.add(device)

    def close(self) -> dict:
        """Steps 2-6 (the contract's `_close`). Returns the RoundClosed figures: integers,
        and xbar, zbar, u as packed words like the event."""
        p, n, rho = self.params, self.n, self.rho
        den = rho + div(n * p.delta_wad * p.gamma_wad, WAD)
        c = {"r2": 0, "dd": 0, "sdx_d": 0, "s_zx": 0, "uu": 0, "imp": 0, "exp": 0}
        xbar, zbar, u = [], [], []
        for t in range(p.slots):
            s_t, s_old = self.S[t], self.snap[t]
            xb, xbo = step2_average(s_t, n), step2_average(s_old, n)
            uo, zo = self.u[t], self.zbar[t]
            xh, zb = step3_zbar(uo, xb, zo, self.price[t], div(self.capacity[t], n),
                                div(self.export_limit[t], n), rho, den, p.delta_wad,
                                p.alpha_wad)
            un = step4_u(uo, xh, zb)
            gap = zb - xb
            wv = (xb - xbo) - (zb - zo) - div((WAD - p.alpha_wad) * (xb - zo), WAD)
            c["r2"] += gap * gap
            c["dd"] += wv * wv
            c["sdx_d"] += (s_t - s_old) * wv
            c["s_zx"] += s_t * gap
            c["uu"] += un * un
            c["imp"] = max(c["imp"], s_t - self.capacity[t])
            c["exp"] = max(c["exp"], -self.export_limit[t] - s_t)
            xbar.append(xb)
            zbar.append(zb)
            u.append(un)
        res = step5_residuals(c, self.sq_x, self.sq_dx, n, p.slots, rho, p)
        converged = res["converged"]
        rho_next, f = (rho, WAD) if converged else step6_rho(res, rho, p)
        if f != WAD:
            u = [saturate(div(v * WAD, f)) for v in u]
        out = {**res, "rho": rho, "rho_next": rho_next, "converged": converged,
               "stragglers": self.n - len(self.submitted), "round": self.round,
               "xbar": fp.pack(xbar), "zbar": fp.pack(zbar), "u": fp.pack(u)}
        self.snap = list(self.S)
        self.zbar, self.u, self.rho, self.sq_dx = zbar, u, rho_next, 0
        self.submitted = set()
        if converged or self.round + 1 >= p.max_rounds:
            self.finalized = True
        else:
            self.round += 1
        return out


    def end(self) -> None:
        """The operator's `end_session`: final, not converged, at the current round."""
        self.finalized = self.ended = True


EMITTED = ("r", "s", "eps_pri", "eps_dual", "rho", "rho_next", "converged", "stragglers",
           "import_excess", "export_excess", "factor", "xbar", "zbar", "u")
