"""Field types shared by the scenario schema and the component definitions.

Each is an `Annotated` type: pydantic checks it, the JSON Schema describes it, and its
expectation text (scenario.errors) is what a user reads when a value is wrong. Types that
depend on the horizon (slot indices, per-slot series, profiles resolved to series) read it
from the validation context, which scenario.schema fills before validating devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, WithJsonSchema

from scenario import profiles
from scenario.errors import Expect, fail, range_words
from scenario.horizon import Horizon

ID_PATTERN = r"^[a-z0-9_-]+$"


def param(default: Any = ..., *, doc: str, unit: str = "", gt: float | None = None,
          ge: float | None = None, le: float | None = None, validate_default: bool = False
          ) -> Any:
    """A component parameter: default (`...` = required), one-line doc, unit and range."""
    extra = {"unit": unit} if unit else None
    return Field(default, description=doc, gt=gt, ge=ge, le=le, json_schema_extra=extra,
                 validate_default=validate_default)


def horizon(info: ValidationInfo) -> Horizon:
    h = (info.context or {}).get("horizon")
    if h is None:
        raise RuntimeError("scenario types are validated with the horizon in the context")
    return h


def number(v: Any, at: str = "", *, gt: float | None = None, ge: float | None = None,
           le: float | None = None) -> float:
    rng = range_words(gt, ge, le)
    if v is None:
        fail("a number" + rng, at=at, missing=True)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail("a number" + rng, v, at=at)
    if not math.isfinite(v):
        fail("a finite number" + rng, v, at=at)
    if (gt is not None and not v > gt) or (ge is not None and not v >= ge) or (
            le is not None and not v <= le):
        fail("a number" + rng, v, at=at)
    return float(v)


def series(v: Any, slots: int, at: str = "", **rng: float | None) -> tuple[float, ...]:
    """Exactly T numbers."""
    if not isinstance(v, (list, tuple)) or len(v) != slots:
        if isinstance(v, (list, tuple)):
            fail(f"a list of {slots} numbers (one per slot) (got {len(v)} items)", at=at)
        fail(f"a list of {slots} numbers (one per slot)", v, at=at)
    return tuple(number(x, f"{at}[{i}]", **rng) for i, x in enumerate(v))


def known_keys(m: Mapping, allowed: tuple[str, ...]) -> None:
    for k in m:
        if k not in allowed:
            fail(f"no such field (known: {', '.join(allowed)})", at=f".{k}")


def _num_schema(**rng: float | None) -> dict:
    s: dict[str, Any] = {"type": "number"}
    for key, name in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("le", "maximum")):
        if rng.get(key) is not None:
            s[name] = rng[key]
    return s


def Series(**rng: float | None) -> Any:  # noqa: N802 - a type factory
    """A number (the same every slot) or a list of T numbers."""
    def check(v: Any, info: ValidationInfo) -> tuple[float, ...]:
        t = horizon(info).slots
        if isinstance(v, (list, tuple)):
            return series(v, t, **rng)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"a number or a list of {t} numbers" + range_words(**rng), v)
        return (number(v, **rng),) * t

    one = _num_schema(**rng)
    return Annotated[tuple[float, ...], BeforeValidator(check),
                     Expect("a number" + range_words(**rng) + " or a list of {T}"),
                     WithJsonSchema({"anyOf": [one, {"type": "array", "items": one}]})]


def _slot(v: Any, t: int, at: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"an integer slot index in 0..{t}", v, at=at)
    if not 0 <= v <= t:
        fail(f"a slot index within the horizon, 0..{t}", v, at=at)
    return int(v)


def _check_slot(v: Any, info: ValidationInfo) -> int:
    return _slot(v, horizon(info).slots)


def _check_window(v: Any, info: ValidationInfo) -> tuple[int, int]:
    t = horizon(info).slots
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        fail(f"[first_slot, end_slot] with slots in 0..{t} (the horizon has {t} slots)", v)
    a, b = _slot(v[0], t, "[0]"), _slot(v[1], t, "[1]")
    if a % t == b % t:  # [T, 0) is as empty as [5, 5)
        fail("a non-empty window (first_slot != end_slot, and not [T, 0])", list(v))
    return a, b


Slot = Annotated[int, BeforeValidator(_check_slot), Expect("a slot index in 0..{T}"),
                 WithJsonSchema({"type": "integer", "minimum": 0})]
Window = Annotated[tuple[int, int], BeforeValidator(_check_window),
                   Expect("[first_slot, end_slot]"),
                   WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": 0},
                                   "minItems": 2, "maxItems": 2})]


def Profile(kind: str, resolve: Callable[[str, Mapping, Horizon], tuple[float, ...]] | None = None,
            keys: tuple[str, ...] = ("profile",), **rng: float | None) -> Any:  # noqa: N802
    """A named daily profile of `profiles.NAMED[kind]` or a list of T numbers. With `resolve`,
    the value is resolved to T numbers here (names, or mappings `{profile: name, ...}` with
    `keys`); without it a name stays a name for the component to scale."""
    names = profiles.NAMED[kind]

    def check(v: Any, info: ValidationInfo) -> Any:
        h = horizon(info)
        if isinstance(v, (list, tuple)):
            return series(v, h.slots, **rng)
        if resolve is not None:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return (number(v, **rng),) * h.slots
            if isinstance(v, Mapping):
                known_keys(v, keys)
                name = v.get("profile")
                if name not in names:
                    fail("one of " + " | ".join(names), name, at=".profile")
                return resolve(name, v, h)
        if isinstance(v, str) and v in names:
            return resolve(v, {}, h) if resolve is not None else v
        fail(f"one of {' | '.join(names)} or a list of {h.slots} numbers", v)

    num = _num_schema(**rng)
    alts: list[dict] = [{"enum": list(names)}, {"type": "array", "items": num}]
    if resolve is not None:
        alts += [num, {"type": "object", "properties": {"profile": {"enum": list(names)}}}]
    text = f"one of {' | '.join(names)} or a list of {{T}} numbers"
    return Annotated[Any, BeforeValidator(check), Expect(text),
                     WithJsonSchema({"anyOf": alts})]


# ids name run-folder files, keys and MQTT topics: short, and safe in all three
Id = Annotated[str, Field(pattern=ID_PATTERN, max_length=64),
               Expect("an id matching [a-z0-9_-]+, at most 64 characters")]
