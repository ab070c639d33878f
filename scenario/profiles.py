"""Daily profiles used by scenarios, as functions of the hour of day, resampled to any slot length.

Every profile is a periodic function of the local hour h in [0, 24). `resample(fn, hours)`
averages it over each slot (16 sub-samples), so a profile keeps its daily energy whatever the
slot length (15 min, 1 h, 5 min ...). Shapes are stylised but realistic in timing and size:

- residential base load (`residential`): a night floor of ~45 % of the daily mean, a morning
  peak around 07:30 (breakfast, showers) and a larger evening peak around 19:30 (cooking,
  lighting, TV), in the spirit of standard residential load profiles (e.g. the BDEW H0 or
  the UK Elexon class 1 profile). Scaled so that one day holds `daily_kwh`. `shift_h` moves
  the shape (an early or late household).
- PV (`pv`, `cloudy`): a clear-sky bell between sunrise and sunset, sin^1.5 of the solar
  angle, noon at 13:30 local summer time (~solar noon in central Europe on CEST). In June,
  sunrise ~05:30 and sunset ~21:30. Values are per kW of peak (kWp); `cloudy` scales by 0.55
  and adds two passing-cloud dips.
- price (`tou`, `flat`): a three-level time-of-use tariff in $/kWh. Off-peak 22:00-07:00,
  peak 17:00-21:00, shoulder otherwise (default: the mean of off-peak and peak).
- outdoor temperature (`summer`, `winter`, `mild`): a daily sinusoid with its minimum at
  05:00 and its maximum at 15:00 (mean/amplitude in TEMPERATURES, degC).
- evening curtailable load (`evening`): a smooth bump from 17:00 to 23:00 peaking at 20:00
  (e.g. air conditioning or a pool pump a household would give up at a price), per kW peak.
- hot water draw (`hot_water`): thermal kW taken out of a water heater by showers and dishes,
  peaks at 07:00 and 20:00, scaled to `daily_kwh` thermal per day.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

HourFn = Callable[[np.ndarray], np.ndarray]

SUBSAMPLES = 16

# degC: (daily mean, half the daily swing)
TEMPERATURES = {"summer": (24.0, 6.0), "winter": (2.0, 4.0), "mild": (12.0, 5.0)}

SUNRISE_H, SUNSET_H = 5.5, 21.5


def slot_hours(start_hour: float, slots: int, slot_h: float) -> np.ndarray:
    """Hour of day at the start of every slot."""
    return (start_hour + slot_h * np.arange(slots)) % 24.0


def resample(fn: HourFn, start_hour: float, slots: int, slot_h: float) -> np.ndarray:
    """Average of `fn` over every slot [start + k*slot_h, start + (k+1)*slot_h)."""
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES * slot_h
    h = (slot_hours(start_hour, slots, slot_h)[:, None] + offsets[None, :]) % 24.0
    return fn(h).mean(axis=1)


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Periodic Gaussian bump on the 24 h circle."""
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def residential_shape(h: np.ndarray) -> np.ndarray:
    """Unit-mean residential base load shape (see module docstring)."""
    raw = 0.45 + 0.55 * _bump(h, 7.5, 1.2) + 0.4 * _bump(h, 12.5, 1.5) + 1.4 * _bump(h, 19.5, 1.8)
    return raw / _RESIDENTIAL_MEAN


_grid = (np.arange(24 * 60) + 0.5) / 60.0
_RESIDENTIAL_MEAN = float(
    (0.45 + 0.55 * _bump(_grid, 7.5, 1.2) + 0.4 * _bump(_grid, 12.5, 1.5)
     + 1.4 * _bump(_grid, 19.5, 1.8)).mean()
)


def residential(daily_kwh: float, shift_h: float = 0.0) -> HourFn:
    return lambda h: daily_kwh / 24.0 * residential_shape((h - shift_h) % 24.0)


def pv_shape(h: np.ndarray, cloudy: bool = False) -> np.ndarray:
    """Output per kWp (0..1) of a clear (or cloudy) summer day."""
    x = (h - SUNRISE_H) / (SUNSET_H - SUNRISE_H)
    out = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 1.5, 0.0)
    if cloudy:
        out = 0.55 * out * (1.0 - 0.5 * _bump(h, 11.0, 0.6) - 0.4 * _bump(h, 15.5, 0.8))
    return out


def tou(offpeak: float, peak: float, shoulder: float | None = None) -> HourFn:
    mid = 0.5 * (offpeak + peak) if shoulder is None else shoulder

    def fn(h: np.ndarray) -> np.ndarray:
        out = np.full_like(h, mid, dtype=float)
        out[(h >= 22.0) | (h < 7.0)] = offpeak
        out[(h >= 17.0) & (h < 21.0)] = peak
        return out

    return fn


def flat(value: float) -> HourFn:
    return lambda h: np.full_like(h, value, dtype=float)


def outdoor_temperature(season: str) -> HourFn:
    mean, amp = TEMPERATURES[season]
    # minimum at 05:00, maximum at 15:00: a cosine with a 20 h "period" would be skewed, so use
    # a plain 24 h cosine peaking at 15:00 (its minimum falls at 03:00, close enough) and pull
    # the minimum towards 05:00 with a small second harmonic.
    return lambda h: mean + amp * (
        np.cos(2 * np.pi * (h - 15.0) / 24.0) + 0.15 * np.cos(4 * np.pi * (h - 17.0) / 24.0)
    ) / 1.15


def evening_shape(h: np.ndarray) -> np.ndarray:
    """Per kW peak: zero outside 17:00-23:00, a sin^2 bump peaking at 20:00."""
    x = (h - 17.0) / 6.0
    return np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)


def hot_water(daily_kwh: float) -> HourFn:
    mean = float((0.6 * _bump(_grid, 7.0, 0.7) + 0.4 * _bump(_grid, 20.0, 1.0)).mean())
    return lambda h: daily_kwh / 24.0 * (
        0.6 * _bump(h, 7.0, 0.7) + 0.4 * _bump(h, 20.0, 1.0)
    ) / mean


NAMED = {
    "price": ("tou", "flat"),
    "load": ("residential", "flat"),
    "pv": ("clear", "cloudy"),
    "temperature": tuple(TEMPERATURES),
    "curtailable": ("evening",),
    "draw": ("hot_water",),
}
