"""Scenarios and device specifications: the one package the lab, the device processes and the
bridge all read a scenario through (it imports none of them).

- `scenario.components`: one module per component type (parameters, physics, bounds, model);
  `TYPES` is the registry.
- `scenario.schema`: the scenario document on pydantic v2; `parse`, `device_from_payload`.
- `scenario.catalog`: `load(name_or_path)`, configs/ and the generated `homesN` families.
- `scenario.home`: a device's convex model (its components behind one meter).
- `scenario.central`: the centralized optimum, the yardstick of ADMM.
- `scenario.errors`: `ScenarioError`, one line naming file, field path and device.
"""

from scenario.catalog import CONFIGS, generate_congested, generate_homes, load
from scenario.components import COMPONENT_TYPES, TYPES
from scenario.errors import ScenarioError
from scenario.horizon import Horizon, window_mask
from scenario.schema import (
    AdmmSpec,
    ChainSpec,
    DeviceSpec,
    FeederSpec,
    PlaybackSpec,
    Scenario,
    device_from_payload,
    parse,
)

__all__ = [
    "COMPONENT_TYPES", "CONFIGS", "TYPES", "AdmmSpec", "ChainSpec",
    "DeviceSpec", "FeederSpec", "Horizon", "PlaybackSpec", "Scenario", "ScenarioError",
    "device_from_payload", "generate_congested", "generate_homes", "load", "parse",
    "window_mask",
]
