"""One scenario error type, and the translation of pydantic's errors into it.

Every problem in a scenario file is reported as one line naming the file, the field path in
the document (`devices[3].components[1].capacity_kwh`), what was expected and what was found,
and the device it concerns: `ScenarioError`. Validation itself is pydantic's (scenario.schema);
`from_validation_error` turns the first of its errors into that line, reading the expectation
off the field's declaration (scenario.fields), so the text cannot drift from the check.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, NoReturn

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


class ScenarioError(ValueError):
    """A scenario problem: `file: path: expected ..., got ...`."""

    def __init__(self, file: str, path: str, expected: str, got: Any = None, *,
                 missing: bool = False, device: str | None = None) -> None:
        self.file, self.path, self.expected, self.device = file, path, expected, device
        where = f"{file}: {path or '<top>'}"
        if missing:
            msg = f"{where}: missing field; expected {expected}"
        elif got is None:
            msg = f"{where}: expected {expected}"
        else:
            msg = f"{where}: expected {expected}, got {_show(got)}"
        if device and not re.fullmatch(r"[a-z0-9_-]{1,64}", device):
            device = repr(device)  # one line, whatever the id holds
        if device and f"device {device}" not in msg:
            msg += f" [device {device}]"
        super().__init__(msg)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_NOTHING = "<nothing>"


def fail(expected: str, got: Any = _NOTHING, *, at: str = "", missing: bool = False
         ) -> NoReturn:
    """Raise from inside a validator: `at` extends the field path (".soc_init", "[95]")."""
    raise PydanticCustomError("scenario", "expected {expected}",
                              {"expected": expected, "got": got, "at": at, "missing": missing})


class Expect:
    """Annotated metadata: the expectation text of a field whose type alone does not say it.
    `{T}` stands for the horizon's slot count."""

    def __init__(self, text: str) -> None:
        self.text = text


def expectation(info: FieldInfo | None, slots: int | None = None) -> str:
    """What a field expects, in words, from its declaration."""
    if info is None:
        return "a value"
    for m in info.metadata:
        if isinstance(m, Expect):
            return m.text.replace("{T}", str(slots) if slots else "T")
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "expected" in extra:  # for models outside this package (conventions/)
        return str(extra["expected"])
    ann = _strip_optional(info.annotation)
    rng = range_text(info)
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer" + rng
    if ann is float:
        return "a number" + rng
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + " | ".join(str(a) for a in typing.get_args(ann))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"a {ann.__name__.lower()} mapping"
    return "a value"


def range_words(gt: float | None = None, ge: float | None = None, lt: float | None = None,
                le: float | None = None) -> str:
    """` > 0 and <= 1`: a range in words, for expectations."""
    parts = [f"{op} {v:g}" for op, v in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
             if v is not None]
    return (" " + " and ".join(parts)) if parts else ""


def range_text(info: FieldInfo) -> str:
    """The range a field declares (annotated_types metadata), in words."""
    bounds = {attr: getattr(m, attr) for m in info.metadata
              for cls, attr in ((at.Gt, "gt"), (at.Ge, "ge"), (at.Lt, "lt"), (at.Le, "le"))
              if isinstance(m, cls)}
    return range_words(**bounds)


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _members(ann: Any) -> list[type[BaseModel]]:
    """The models of a (discriminated) union, or [] when `ann` is not one."""
    ann = _strip_optional(ann)
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(ann) if isinstance(a, type) and
                issubclass(a, BaseModel)]
    return []


def _tag_of(model: type[BaseModel], discriminator: str) -> str:
    return typing.get_args(model.model_fields[discriminator].annotation)[0]


def _walk(root: type[BaseModel], loc: tuple) -> tuple[str, FieldInfo | None, Any]:
    """Follow pydantic's loc through the models: (path text, the field reached, the model or
    union that owns the last element)."""
    path, cur, info, owner = "", root, None, root
    for el in loc:
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            owner = cur
            info = cur.model_fields.get(str(el))
            path += f".{el}" if path else str(el)
            cur = _strip_optional(info.annotation) if info else None
        elif isinstance(el, int):
            path += f"[{el}]"
            args = typing.get_args(cur)
            cur = args[0] if args else None
            owner = cur
        elif _members(cur):
            match = [m for m in _members(cur) if el in {_tag_of(m, d) for d in
                     m.model_fields if typing.get_origin(m.model_fields[d].annotation)
                     is typing.Literal}]
            cur = match[0] if match else None
        else:  # a plain union branch label such as 'list[float]'
            continue
    return path, info, owner


def from_validation_error(err: ValidationError, file: str, root: type[BaseModel],
                          doc: Any, *, prefix: tuple = (), slots: int | None = None
                          ) -> ScenarioError:
    """The first of pydantic's errors as a ScenarioError naming file, path and device."""
    e = err.errors(include_url=False)[0]
    loc = prefix + tuple(e["loc"])
    kind, ctx, got = e["type"], e.get("ctx") or {}, e.get("input")
    path, info, owner = _walk(root, tuple(e["loc"]))
    if prefix:
        path = ".".join(str(p) for p in prefix) + ("." + path if path else "")
    device = _device_id(doc, loc)
    if kind == "scenario":
        g = ctx.get("got", _NOTHING)
        return ScenarioError(file, path + ctx.get("at", ""), ctx["expected"],
                             None if g == _NOTHING else g, missing=ctx.get("missing", False),
                             device=device)
    if kind == "missing":
        return ScenarioError(file, path, expectation(info, slots), missing=True, device=device)
    if kind == "extra_forbidden":
        known = ", ".join(owner.model_fields) if isinstance(owner, type) else "?"
        return ScenarioError(file, path, f"no such field (known: {known})", device=device)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = ctx.get("discriminator", "'type'").strip("'")
        tags = [_tag_of(m, disc) for m in _members(info.annotation if info else None)
                or _members(typing.get_args(owner)[0] if typing.get_args(owner) else owner)]
        what = "a component type" if disc == "type" else "one of"
        if kind == "union_tag_not_found":
            return ScenarioError(file, f"{path}.{disc}", f"{what} ({' | '.join(tags)})",
                                 missing=True, device=device)
        what = "a known component type:" if disc == "type" else "one of"
        return ScenarioError(file, f"{path}.{disc}", f"{what} " + " | ".join(tags),
                             ctx.get("tag"), device=device)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return ScenarioError(file, path, "a mapping", got, device=device)
    if kind == "value_error":  # a field validator's own words
        return ScenarioError(file, path, str(ctx.get("error", e["msg"])), got, device=device)
    if kind == "finite_number":
        return ScenarioError(file, path, "a finite number" + range_text(info), got,
                             device=device)
    return ScenarioError(file, path, expectation(info, slots), got, device=device)


def _device_id(doc: Any, loc: tuple) -> str | None:
    """The id of the device an error is about, when its entry has a readable one."""
    if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
        devs = doc.get("devices") if isinstance(doc, Mapping) else None
        if isinstance(devs, list) and loc[1] < len(devs) and isinstance(devs[loc[1]], Mapping):
            did = devs[loc[1]].get("id")
            return did if isinstance(did, str) else None
    if loc[:1] == ("device",) and isinstance(doc, Mapping):
        dev = doc.get("device")
        did = dev.get("id") if isinstance(dev, Mapping) else None
        return did if isinstance(did, str) else None
    return None
