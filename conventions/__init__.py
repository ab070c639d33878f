"""MQTT conventions of smart devices, one module each (conventions.base says what one is).

Importing the package imports every module in it; `REGISTRY` maps a protocol name to its
class and `Actuator` is the pydantic union the scenario schema uses, keyed on `protocol`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from conventions.base import (
    REGISTRY,
    Convention,
    MalformedPayload,
    Message,
    Reply,
    Report,
    dumps,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

PROTOCOLS: tuple[str, ...] = tuple(sorted(REGISTRY))
Actuator = Annotated[Union[tuple(REGISTRY[p] for p in PROTOCOLS)],  # noqa: UP007
                     Field(discriminator="protocol")]
_ADAPTER: TypeAdapter = TypeAdapter(Actuator)


def from_dict(settings: dict) -> Convention:
    """An actuator's convention from its settings (`{"protocol": ..., ...}`); raises
    pydantic.ValidationError, and ValueError for an unknown protocol."""
    return _ADAPTER.validate_python(settings)


__all__ = ["PROTOCOLS", "REGISTRY", "Actuator", "Convention", "MalformedPayload", "Message",
           "Reply", "Report", "dumps", "from_dict"]
