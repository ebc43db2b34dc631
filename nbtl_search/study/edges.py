"""A best setting on the edge of what was tried is not known to be a best: these notes say so.

For the baseline, the edge is the largest or smallest value tried of a grid key (lr after the
grid's extensions). For the search, it is the end of a range (within 2% of its width, on a log
scale for `log: true`) or the largest or smallest numeric choice. Natural limits are not edges:
a rate or probability at 0, one re-initialised layer, no lower part.
"""

from __future__ import annotations

import math
from typing import Any

from .axes import Axis
from .checks import is_number

_NEAR = 0.02  # share of a range's width that counts as its end
_FLOORS = {"new_layers": 1, "num_low": 0}  # smallest meaningful values: not an edge


def grid_notes(tried: dict[str, list[Any]], chosen: dict[str, Any]) -> list[str]:
    """`tried`: grid key -> values that ran; `chosen`: the best point's values."""
    notes = []
    for key, values in tried.items():
        numbers = sorted({v for v in values if is_number(v)})
        value = chosen.get(key)
        if len(numbers) < 2 or not is_number(value) or _natural_limit(key, value):
            continue
        if value == numbers[-1]:
            notes.append(f"{key} {value:g} is the largest value the baseline tried")
        elif value == numbers[0]:
            notes.append(f"{key} {value:g} is the smallest value the baseline tried")
    return notes


def range_notes(axes: dict[str, Axis], values: dict[str, Any]) -> list[str]:
    """`values`: the chosen trial's axis values (`axes.axis_values`)."""
    notes = []
    for name, axis in axes.items():
        value = values.get(name)
        if axis.kind == "fixed" or not is_number(value) or _natural_limit(name, value):
            continue
        if axis.kind == "categorical":
            numbers = sorted(c for c in axis.choices if is_number(c))
            if len(numbers) >= 2 and value in (numbers[0], numbers[-1]):
                side = "largest" if value == numbers[-1] else "smallest"
                notes.append(f"{name} {value:g} is the {side} choice of the search space")
            continue
        side = _range_side(axis, float(value))
        if side:
            notes.append(
                f"{name} {value:g} is at the {side} end of its range [{axis.low:g}, {axis.high:g}]"
            )
    return notes


def _range_side(axis: Axis, value: float) -> str | None:
    low, high = float(axis.low), float(axis.high)
    if high <= low:
        return None
    scale = math.log if axis.log else (lambda v: v)
    width = scale(high) - scale(low)
    if scale(high) - scale(value) <= _NEAR * width:
        return "upper"
    if scale(value) - scale(low) <= _NEAR * width:
        return "lower"
    return None


def _natural_limit(name: str, value: float) -> bool:
    return value == 0 or _FLOORS.get(name) == value
