"""The scenario document (configs/SCHEMA.md) as pydantic v2 models.

`parse(doc, file)` validates a YAML-decoded document into a frozen `Scenario`; every problem
raises `ScenarioError` naming the file, the field path and the expectation, with the device
(scenario.errors). Validation runs in two passes: the horizon first, then the document with the
horizon in the validation context, so that per-slot series, slot indices and profiles are
checked and resolved against T. Component types come from the registry
(scenario.components.TYPES); the JSON Schema for editors is `Scenario.model_json_schema()`,
exported to configs/scenario.schema.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from aggregator_contract.reference import AdmmSettings, Feeder
from scenario import profiles
from scenario.components import TYPES
from scenario.errors import Expect, ScenarioError, fail, from_validation_error
from scenario.fields import ID_PATTERN, Id, Series, horizon, known_keys, number, series
from scenario.horizon import Horizon

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
SOLVERS = ("OSQP", "CLARABEL", "SCS")

AnyComponent = Annotated[Union[tuple(TYPES.values())],  # noqa: UP007 - built at run time
                         Field(discriminator="type")]


def _price(v: Any, info: ValidationInfo) -> tuple[float, ...]:
    h = horizon(info)
    if not isinstance(v, Mapping):
        if isinstance(v, (list, tuple)):
            return series(v, h.slots)
        fail(f"a price profile mapping or a list of {h.slots} numbers", v)
    name = v.get("profile")
    if name not in profiles.NAMED["price"]:
        fail("one of " + " | ".join(profiles.NAMED["price"]), name, at=".profile")
    if name == "tou":
        known_keys(v, ("profile", "offpeak", "peak", "shoulder"))
        off = number(v.get("offpeak"), ".offpeak")
        peak = number(v.get("peak"), ".peak")
        sh = None if v.get("shoulder") is None else number(v["shoulder"], ".shoulder")
        return h.series(profiles.tou(off, peak, sh))
    known_keys(v, ("profile", "value"))
    return h.series(profiles.flat(number(v.get("value"), ".value")))


Price = Annotated[
    tuple[float, ...], BeforeValidator(_price),
    Expect("a price profile mapping or a list of numbers"),
    WithJsonSchema({"anyOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "object", "properties": {"profile": {"const": "tou"}, "offpeak":
         {"type": "number"}, "peak": {"type": "number"}, "shoulder": {"type": "number"}},
         "required": ["profile", "offpeak", "peak"], "additionalProperties": False},
        {"type": "object", "properties": {"profile": {"const": "flat"},
         "value": {"type": "number"}}, "required": ["profile", "value"],
         "additionalProperties": False}]})]


class FeederSpec(BaseModel):
    """The shared feeder: energy price, import capacity C, export limit E and the losses."""

    model_config = _STRICT

    price: Price = Field(description="π in $/kWh: {profile: tou|flat, ...} or T numbers")
    capacity_kw: Series(gt=0) = Field(description="import capacity C (kW)")
    export_limit_kw: Series(ge=0) = Field(description="export limit E (kW)")
    gamma: float = Field(0.0, ge=0, description="γ in $/kW²h: the quadratic loss term")


_A = AdmmSettings()


def _upper(v: Any) -> Any:
    return v.upper() if isinstance(v, str) else v


class AdmmSpec(BaseModel):
    """The aggregator's settings (aggregator_contract.reference.AdmmSettings) and the devices'
    local-step solver. Ranges are those the Coordinator accepts, so a session always opens."""

    model_config = _STRICT

    rho0: float = Field(_A.rho0, ge=1e-9, le=1e9, description="first ρ")
    eps_abs: float = Field(_A.eps_abs, gt=0, le=1, description="absolute tolerance")
    eps_rel: float = Field(_A.eps_rel, ge=0, le=1, description="relative tolerance")
    max_rounds: int = Field(_A.max_rounds, ge=1, le=2**32 - 1)
    mu: float = Field(_A.mu, gt=1, le=1000, description="ρ changes only outside [1/mu, mu]")
    tau: float = Field(_A.tau, gt=1, le=100, description="largest change of ρ in a round")
    alpha: float = Field(_A.alpha, ge=1, le=1.99, description="over-relaxation (1 = plain)")
    viol_tol_kw: float = Field(_A.viol_tol_kw, gt=0, le=1e9,
                               description="feeder-limit tolerance for convergence (kW)")
    solver: Annotated[Literal[SOLVERS], BeforeValidator(_upper)] = Field(  # type: ignore
        "CLARABEL", description="the devices' local-step solver")

    def settings(self) -> AdmmSettings:
        return AdmmSettings(self.rho0, self.eps_abs, self.eps_rel, self.max_rounds, self.mu,
                            self.tau, self.alpha, self.viol_tol_kw)


class ChainSpec(BaseModel):
    """The private chain: Clique signers, block period, and how devices share nodes."""

    model_config = _STRICT

    signers: int = Field(1, ge=1, description="odd; 1 (period 0) or 3+ (period >= 1)")
    period: int = Field(0, ge=0, description="Clique block period (s)")
    nodes: Literal["per_device", "per_group"] = Field("per_device")
    group_size: int = Field(10, ge=1, description="devices per member node / process")
    round_deadline_s: int = Field(
        30, ge=1, lt=2**32,
        description="seconds of block time after a round starts from which a participant or "
                    "the operator may close it without its stragglers (the lab's orchestrator "
                    "does when the round stalls)")

    @model_validator(mode="after")
    def _clique(self) -> ChainSpec:
        if self.signers % 2 == 0:
            fail("an odd number of signers", self.signers, at=".signers")
        if self.signers > 1 and self.period < 1:
            fail("a period >= 1 s with several signers (docs/architecture.md)", self.period,
                 at=".period")
        return self


class PlaybackSpec(BaseModel):
    """How the MQTT bridge plays the finalized day."""

    model_config = _STRICT

    seconds_per_slot: float = Field(1.0, gt=0)
    realtime: bool = Field(False, description="follow the wall clock from horizon.start")


class DeviationSpec(BaseModel):
    """What a home did differently from its schedule, as its emulated meter measures it
    (docs/billing.md): a component's power scaled (a PV forecast error, `factor: 0.7`) or a
    switched load held on or off by hand (`switch: on`), over slots [from, to)."""

    model_config = _STRICT

    device: str = Field(description="the home (a device id)")
    component: str = Field(description="one of its components")
    slots: Annotated[tuple[int, int], BeforeValidator(
        lambda v: tuple(v) if isinstance(v, list) else v)] | None = Field(
        None, description="[from, to); all slots if absent")
    factor: float | None = Field(None, ge=0, le=10, description="metered = factor x scheduled")
    switch: Literal["on", "off"] | None = Field(None, description="a switched load held "
                                                "on (rated kW) or off by hand")

    @model_validator(mode="after")
    def _one(self) -> DeviationSpec:
        if (self.factor is None) == (self.switch is None):
            fail("exactly one of factor or switch", None, at="")
        if self.slots is not None and not 0 <= self.slots[0] < self.slots[1]:
            fail("slots [from, to) with 0 <= from < to", list(self.slots), at=".slots")
        return self


class BillingSpec(BaseModel):
    """Metering and billing after the playback (aggregator_contract/Billing.vy): the tariff's
    deviation terms, the homes' deposits, how meters post, and scripted deviations."""

    model_config = _STRICT

    enabled: bool = Field(True, description="meter and settle every home after the playback")
    readings: Literal["slot", "hourly"] = Field("slot", description="per-slot readings, or "
                                                "hourly totals with a hash of the slot readings")
    tolerance_wh: int = Field(20, ge=0, description="deviation tolerance per reading (Wh)")
    tolerance_pct: float = Field(5.0, ge=0, le=100, description="plus this % of |scheduled|")
    imbalance_pct: float = Field(50.0, ge=0, le=10000, description="deviation beyond the "
                                 "tolerance is charged at this % of the reading's |price|")
    deposit_usd: float = Field(50.0, ge=0, description="each home's deposit (1 ether = 1 $)")
    deviations: list[DeviationSpec] = Field(default_factory=list)

    def period_slots(self, slot_minutes: float) -> int:
        """Slots per reading: 1, or an hour's worth with hourly readings."""
        return max(1, round(60 / slot_minutes)) if self.readings == "hourly" else 1


class DeviceSpec(BaseModel):
    """One ADMM agent: a home's components behind one meter."""

    model_config = _STRICT

    id: Id
    components: Annotated[list[AnyComponent], Field(min_length=1),
                          Expect("a non-empty list of components")]

    _horizon: Horizon = PrivateAttr()
    _raw: Mapping[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep(cls, data: Any, handler: Any, info: ValidationInfo) -> DeviceSpec:
        dev = handler(data)
        dev._horizon = horizon(info)
        dev._raw = dict(data)
        seen: set[str] = set()
        for j, comp in enumerate(dev.components):
            if comp.id in seen:
                fail("an id unique within the device", comp.id, at=f".components[{j}].id")
            seen.add(comp.id)
        return dev

    @property
    def horizon(self) -> Horizon:
        return self._horizon

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._raw

    def slot_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.zeros(self.horizon.slots)
        hi = np.zeros(self.horizon.slots)
        for c in self.components:
            a, b = c.slot_bounds(self.horizon)
            lo, hi = lo + a, hi + b
        return lo, hi

    def power_bounds(self) -> tuple[float, float]:
        """Scalar (min_kw, max_kw) for the contract's whitelist: the extremes over slots of the
        summed component bounds, widened by 1 W and rounded outward to whole watts so that a
        solver's tolerance-level excess is not rejected."""
        lo, hi = self.slot_bounds()
        return (math.floor((float(lo.min()) - 1e-3) * 1000) / 1000,
                math.ceil((float(hi.max()) + 1e-3) * 1000) / 1000)

    def actuators(self) -> dict[str, Any]:
        """Component id -> its MQTT actuator, for the components that have one."""
        return {c.id: a for c in self.components
                if (a := getattr(c, "actuator", None)) is not None}

    def to_payload(self) -> dict:
        """All a device process needs: the horizon and this device's own scenario entry."""
        return {"horizon": self.horizon.to_dict(), "device": plain(self.raw)}


def _default_name(data: Any, info: ValidationInfo) -> Any:
    if isinstance(data, Mapping) and data.get("name") is None:
        data = {**data, "name": Path((info.context or {}).get("file", "scenario")).stem}
    return data


class Scenario(BaseModel):
    """A validated scenario. `raw` keeps the document as read; `source` names the file."""

    model_config = _STRICT

    name: Annotated[str, Field(pattern=ID_PATTERN, max_length=64),
                    Expect("a name matching [a-z0-9_-]+, at most 64 characters")] = Field(
        description="the scenario's name (default: the file's stem)")
    seed: int | None = Field(None, ge=0, description="only for generated scenarios")
    horizon: Annotated[Horizon, Expect("a horizon mapping (slots, slot_minutes)")]
    feeder: Annotated[FeederSpec, Expect("a feeder mapping (price, capacity_kw, ...)")]
    admm: AdmmSpec = Field(default_factory=AdmmSpec)
    chain: ChainSpec = Field(default_factory=ChainSpec)
    playback: PlaybackSpec = Field(default_factory=PlaybackSpec)
    billing: BillingSpec = Field(default_factory=BillingSpec)
    devices: Annotated[list[DeviceSpec], Field(min_length=1),
                       Expect("a non-empty list of devices")]

    _source: str = PrivateAttr("<memory>")
    _raw: Mapping[str, Any] = PrivateAttr(default_factory=dict)

    _name_default = model_validator(mode="before")(_default_name)

    @model_validator(mode="after")
    def _unique(self, info: ValidationInfo) -> Scenario:
        seen: set[str] = set()
        addrs: dict[tuple[str, str], str] = {}
        for i, d in enumerate(self.devices):
            if d.id in seen:
                fail("a device id unique in the scenario", d.id, at=f"devices[{i}].id")
            seen.add(d.id)
            for j, comp in enumerate(d.components):
                a = getattr(comp, "actuator", None)
                if a is None:
                    continue
                k = (a.protocol, a.address)
                for (proto, other), owner in addrs.items():
                    nested = other.startswith(k[1] + "/") or k[1].startswith(other + "/")
                    if proto == k[0] and (other == k[1] or nested):
                        fail(f"a {k[0]} address not already used by {owner} (nor a topic "
                             "level above or below it)", k[1],
                             at=f"devices[{i}].components[{j}].actuator")
                addrs[k] = f"{d.id}.{comp.id}"
        for k, dv in enumerate(self.billing.deviations):
            dev = next((d for d in self.devices if d.id == dv.device), None)
            comp = None if dev is None else next(
                (c for c in dev.components if c.id == dv.component), None)
            if comp is None:
                fail("a device id and one of its component ids", f"{dv.device}.{dv.component}",
                     at=f"billing.deviations[{k}]")
            if dv.switch is not None and "rated_kw" not in comp.params:
                fail("a switched component (with rated_kw) for `switch`", dv.component,
                     at=f"billing.deviations[{k}].component")
            if dv.slots is not None and dv.slots[1] > self.horizon.slots:
                fail(f"slots within [0, {self.horizon.slots}]", list(dv.slots),
                     at=f"billing.deviations[{k}].slots")
        if self.billing.readings == "hourly":
            k = self.billing.period_slots(self.horizon.slot_minutes)
            if k * self.horizon.slot_minutes != 60 or 100 % k or self.horizon.slots % k:
                fail("hourly readings need slots that fit an hour (60 / slot_minutes a "
                     "divisor of 100) and a whole number of hours in the horizon",
                     self.billing.readings, at="billing.readings")
        raw = (info.context or {}).get("doc", {}).get("feeder")
        self._feeder_can_hold(raw if isinstance(raw, Mapping) else {})
        return self

    def _feeder_can_hold(self, raw: Mapping) -> None:
        """The feeder box against what the homes must draw or feed in whatever they do:
        the sum of their least (most) power per slot above C (below -E) is infeasible."""
        bounds = [d.slot_bounds() for d in self.devices]
        lo, hi = sum(b[0] for b in bounds), sum(b[1] for b in bounds)
        cap, exp = np.array(self.feeder.capacity_kw), np.array(self.feeder.export_limit_kw)
        over = np.flatnonzero(lo > cap + 1e-9)
        if over.size:
            t = int(over[0])
            fail(f"at least the {lo[t]:.3f} kW the homes draw in slot {t} whatever they do "
                 f"(fixed loads and other inflexible power; {over.size} slots too low)",
                 float(cap[t]), at="feeder.capacity_kw" + (
                     f"[{t}]" if isinstance(raw.get("capacity_kw"), list) else ""))
        under = np.flatnonzero(hi < -exp - 1e-9)
        if under.size:
            t = int(under[0])
            fail(f"at least the {-hi[t]:.3f} kW the homes feed in in slot {t} whatever they "
                 f"do (PV that cannot be curtailed; {under.size} slots too low)",
                 float(exp[t]), at="feeder.export_limit_kw" + (
                     f"[{t}]" if isinstance(raw.get("export_limit_kw"), list) else ""))

    @property
    def source(self) -> str:
        return self._source

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._raw

    def feeder_params(self) -> Feeder:
        f = self.feeder
        return Feeder(self.horizon.delta_h, np.array(f.price), np.array(f.capacity_kw),
                      np.array(f.export_limit_kw), f.gamma)

    def admm_settings(self) -> AdmmSettings:
        return self.admm.settings()

    def device(self, device_id: str) -> DeviceSpec:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def to_yaml(self) -> str:
        return yaml.safe_dump(plain(self.raw), sort_keys=False, width=100)


def plain(v: Any) -> Any:
    """Plain Python (dict/list/float) for YAML/JSON dumps."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _horizon(data: Mapping, file: str) -> Horizon:
    raw = data.get("horizon")
    if raw is None:
        raise ScenarioError(file, "horizon", "a horizon mapping (slots, slot_minutes)",
                            missing=True)
    try:
        return Horizon.model_validate(raw)
    except ValidationError as e:
        raise from_validation_error(e, file, Horizon, data, prefix=("horizon",)) from None


def parse(data: Any, file: str = "<memory>", *, check_feasible: bool = True) -> Scenario:
    """Validate a scenario document (already YAML-decoded)."""
    if not isinstance(data, Mapping):
        raise ScenarioError(file, "", "a mapping", data)
    h = _horizon(data, file)
    try:
        scen = Scenario.model_validate(data, context={"horizon": h, "file": file,
                                                      "doc": data})
    except ValidationError as e:
        raise from_validation_error(e, file, Scenario, data, slots=h.slots) from None
    scen._source, scen._raw = file, data
    if check_feasible:
        _check_devices(scen)
    return scen


def _check_devices(scen: Scenario) -> None:
    """Solve-based feasibility of the components the analytic checks cannot settle."""
    from scenario.home import InfeasibleDevice, check_feasible

    for i, d in enumerate(scen.devices):
        try:
            check_feasible(d)
        except InfeasibleDevice as e:
            j = next((k for k, comp in enumerate(d.components) if comp.id == e.component), None)
            path = f"devices[{i}]" + (f".components[{j}]" if j is not None else "")
            raise ScenarioError(scen.source, path, f"feasible parameters ({e})",
                                device=d.id) from e


def device_from_payload(payload: Mapping, source: str = "<device payload>") -> DeviceSpec:
    """Rebuild a DeviceSpec from `DeviceSpec.to_payload()` (a device process's only input)."""
    if not isinstance(payload, Mapping) or "horizon" not in payload or "device" not in payload:
        raise ScenarioError(source, "", "a mapping with horizon and device", payload)
    h = _horizon(payload, source)
    try:
        return DeviceSpec.model_validate(payload["device"], context={"horizon": h})
    except ValidationError as e:
        raise from_validation_error(e, source, DeviceSpec, payload, prefix=("device",),
                                    slots=h.slots) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A scenario file's document; YAML errors (and keys given twice) as ScenarioError with
    the line."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ScenarioError(str(path), where, f"valid YAML ({e})") from e
