"""The project's central idea in one place: a value per part of the network, and the names a
study gives those values. Standard library only, so `analysis` (which never loads torch) reads
configs with the same rules the trainer trains with.

Parts, in this order everywhere: `new` (the re-initialised top layers), `upper` (transferred layers
above the lower cut), `lower` (the bottom `num_low` transferred layers). TrainConfig keeps three
per-part vectors (`VECTORS`); each holds one value (the same for every part) or three:

    lrs        = (lr,)    or  (lr_new, lr_upper, lr_lower)
    l2sp_rates = (l2sp,)  or  (0, l2sp_upper, l2sp_lower)     towards the pre-trained weights
    l2_rates   =              (l2_new, l2_upper, l2_lower)    towards zero

New layers have no pre-trained weights, so the new part's L2-SP entry pulls towards zero: it is L2
(`effective_rates`). That is why no `l2sp_new` axis exists: `l2_new` is the new part's pull.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

PARTS = ("new", "upper", "lower")
VECTORS = ("lrs", "l2sp_rates", "l2_rates")
# The axes a study searches a vector through: one value for every part, or one per part.
ONE_VALUE_AXIS = {"lrs": "lr", "l2sp_rates": "l2sp"}
PART_AXES = {
    "lrs": ("lr_new", "lr_upper", "lr_lower"),
    "l2sp_rates": ("l2sp_upper", "l2sp_lower"),  # the new part's entry is L2: see l2_new
    "l2_rates": ("l2_new", "l2_upper", "l2_lower"),
}
RATE_AXES = {  # axis -> the vector it sets
    **{axis: vector for vector, axis in ONE_VALUE_AXIS.items()},
    **{axis: vector for vector, axes in PART_AXES.items() for axis in axes},
}
# One column per part and pull, as analysis shows a config (`flat`).
FLAT_AXES = (*PART_AXES["lrs"], *PART_AXES["l2sp_rates"], *PART_AXES["l2_rates"])


def expand(values: float | Iterable[float]) -> tuple[float, float, float]:
    """(new, upper, lower) from one value or three; ValueError otherwise."""
    items = [values] if isinstance(values, (int, float)) else list(values)
    if len(items) not in (1, 3):
        raise ValueError(f"takes 1 or 3 values (new, upper, lower), got {len(items)}: {items}")
    floats = tuple(float(v) for v in items)
    return (floats[0],) * 3 if len(floats) == 1 else (floats[0], floats[1], floats[2])


def effective_rates(
    l2sp: Iterable[float], l2: Iterable[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(pull towards the pre-trained weights, pull towards zero) per part: the new part has
    nothing to be pulled back to, so its L2-SP rate adds to its L2 rate."""
    sp, zero = expand(l2sp), expand(l2)
    return (0.0, sp[1], sp[2]), (sp[0] + zero[0], zero[1], zero[2])


def vectors_from_axes(values: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """The vectors that rate-axis values set (`lr` or the three `lr_*`; `l2sp` or the per-part
    `l2sp_*`; the `l2_*`); a missing per-part rate is 0."""
    out: dict[str, tuple[float, ...]] = {}
    if "lr" in values:
        out["lrs"] = (values["lr"],)
    elif "lr_new" in values:
        out["lrs"] = tuple(values[n] for n in PART_AXES["lrs"])
    if "l2sp" in values:
        out["l2sp_rates"] = (values["l2sp"],)
    elif any(n in values for n in PART_AXES["l2sp_rates"]):
        out["l2sp_rates"] = (0.0, *(values.get(n, 0.0) for n in PART_AXES["l2sp_rates"]))
    if any(n in values for n in PART_AXES["l2_rates"]):
        out["l2_rates"] = tuple(values.get(n, 0.0) for n in PART_AXES["l2_rates"])
    return out


def axes_from_vectors(fields: Mapping[str, Any]) -> dict[str, float]:
    """The inverse of `vectors_from_axes`, in every form a study can search: the per-part axes,
    and `lr` / `l2sp` as the new / upper part's value."""
    out: dict[str, float] = {}
    if "lrs" in fields:
        lrs = expand(fields["lrs"])
        out.update(zip(PART_AXES["lrs"], lrs), lr=lrs[0])
    if "l2sp_rates" in fields:
        sp = expand(fields["l2sp_rates"])
        out.update(zip(PART_AXES["l2sp_rates"], sp[1:]), l2sp=sp[1])
    if "l2_rates" in fields:
        out.update(zip(PART_AXES["l2_rates"], expand(fields["l2_rates"])))
    return out


def flat(config: Mapping[str, Any]) -> dict[str, float]:
    """A config's per-part values as `FLAT_AXES` columns: each part's lr, its pull towards the
    pre-trained weights and its pull towards zero (`effective_rates`); NaN where malformed."""
    try:
        lrs = expand(config.get("lrs", ()))
        sp, zero = effective_rates(config.get("l2sp_rates", 0.0), config.get("l2_rates", 0.0))
    except (TypeError, ValueError):
        return dict.fromkeys(FLAT_AXES, math.nan)
    return dict(zip(FLAT_AXES, (*lrs, *sp[1:], *zero)))


def normal(key: str, value: Any) -> Any:
    """A setting in a form where equal settings compare equal: [0.1] and [0.1, 0.1, 0.1] are the
    same per-part vector (one value = every part); 0 and 0.0 the same number."""
    if (
        key in VECTORS
        and isinstance(value, (int, float, list, tuple))
        and not isinstance(value, bool)
    ):
        try:
            return list(expand(value))
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [normal("", v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def show(value: Any) -> str:
    """A setting as a person reads it: 0.1, [0.1, 0.01, 0.001], unset."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return "unset" if value is None else str(value)
