"""The default settings a study measures against, and the baseline grid that finds the best of them.

    default config = the study's dataset, model and train sections   (its whole training recipe:
                                                                       schedule, augmentation, mixup)
                   + binary transfer                                 (every field that TrainConfig
                                                                       marks `binary` at its default:
                                                                       new_layers 1, one lr, no L2-SP,
                                                                       no per-part L2)
                   + the fixed values of `default_settings`          (e.g. the baseline's value of an
                                                                       augmentation axis the search
                                                                       varies)
                   + one grid point                                  (lr, and any other key given
                                                                       as a list, e.g. weight_decay)

A searched recipe axis that `default_settings` does not name takes TrainConfig's default in the
baseline. So the default and the optimum differ only in what the comparison is about, and the
comparison lists every setting that differs.

The grid is extended past its edge: once every point has run, if the best one's lr is the largest
(smallest) lr tried, the next lr above (below) it on the 1-3-10 ladder is added, up to `extend`
points; a best default on the edge of its grid is not a best.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass
from typing import Any

from trainer.config import InputError, TrainConfig, field_flag, fields_with_role

from .checks import FIELD_HINTS, SpecError, check_type, mapping

DEFAULT_LRS = (0.001, 0.003, 0.01, 0.03)  # the baseline grid when default_settings gives no lr
DEFAULT_EXTEND = 2  # points the baseline may add past the edge of its lr grid
# Fields default_settings may set although train: fixes them for the search too: the baseline's
# own regularisation is part of what "best default" means (its weight-decay grid).
_OVERRIDABLE = frozenset(fields_with_role("regularisation"))


@dataclass(frozen=True)
class DefaultSettings:
    grid: dict[str, tuple]  # key -> values; "lr" first, always present
    fixed: dict[str, Any]  # TrainConfig field -> value
    extend: int = DEFAULT_EXTEND


def parse_default_settings(raw: Any, train: dict[str, Any]) -> DefaultSettings:
    raw = mapping("default_settings", raw)
    grid: dict[str, tuple] = {"lr": DEFAULT_LRS}
    fixed: dict[str, Any] = {}
    extend = DEFAULT_EXTEND
    for key, value in raw.items():
        path = f"default_settings.{key}"
        if key == "extend":
            extend = check_type(path, value, int)
            if extend < 0:
                raise SpecError(f"{path}: must be >= 0, got {extend}")
            continue
        hint = float if key == "lr" else _field_hint(path, key, train)
        if isinstance(value, list) and typing.get_origin(hint) is not tuple:
            if not value:
                raise SpecError(f"{path}: must list at least one value")
            values = tuple(check_type(f"{path}[{i}]", v, hint) for i, v in enumerate(value))
            if len(set(values)) < len(values):
                raise SpecError(f"{path}: lists a value twice: {list(values)}")
            grid[key] = values
        elif key == "lr":
            grid[key] = (check_type(path, value, float),)
        else:
            fixed[key] = check_type(path, value, hint)
    if any(not lr > 0 for lr in grid["lr"]):
        raise SpecError(f"default_settings.lr: must be > 0, got {list(grid['lr'])}")
    return DefaultSettings(grid=grid, fixed=fixed, extend=extend)


def _field_hint(path: str, key: Any, train: dict[str, Any]) -> Any:
    if key not in FIELD_HINTS:
        raise SpecError(
            f"{path}: not a TrainConfig field (default_settings takes lr, extend and "
            "training fields such as weight_decay, mixup, aa, reprob)"
        )
    if field_flag(key, "binary") or field_flag(key, "vector"):
        raise SpecError(
            f"{path}: the default settings are binary transfer, so {key} is fixed "
            f"there (new_layers 1, one lr, no L2-SP); give the lr grid as default_settings.lr"
        )
    if key not in fields_with_role("regularisation", "recipe") or not field_flag(key, "searchable"):
        raise SpecError(
            f"{path}: {key} is not a training setting the baseline can vary; set it "
            "in the dataset, model or train section"
        )
    if key in train and key not in _OVERRIDABLE:
        raise SpecError(
            f"{path}: train.{key} fixes it for the search; the default uses the "
            "study's own recipe, so give it in one place"
        )
    return FIELD_HINTS[key]


def grid_points(settings: DefaultSettings) -> list[dict[str, Any]]:
    """The baseline grid, lr-major."""
    keys = list(settings.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*settings.grid.values())]


def binary_transfer() -> dict[str, Any]:
    """TrainConfig's own defaults for every field the default settings fix (see module doc)."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.metadata["binary"]}


def default_fields(settings: DefaultSettings, point: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments of one baseline point (on top of the study's sections)."""
    values = {
        **binary_transfer(),
        **settings.fixed,
        **{k: v for k, v in point.items() if k != "lr"},
    }
    values["lrs"] = (point["lr"],)
    return values


def check_default_configs(settings: DefaultSettings, base: dict[str, Any]) -> None:
    for point in grid_points(settings):
        try:
            TrainConfig(**{**base, **default_fields(settings, point)})
        except InputError as e:
            raise SpecError(f"default_settings: {e} (grid point {point})") from None


# --- extending the grid past its edge ------------------------------------------------------------


def lr_ratio(settings: DefaultSettings) -> float:
    """The step between neighbouring lrs of the grid (geometric mean; sqrt(10) for a single lr)."""
    lrs = sorted(settings.grid["lr"])
    if len(lrs) < 2:
        return math.sqrt(10.0)
    return (lrs[-1] / lrs[0]) ** (1.0 / (len(lrs) - 1))


def next_lr(lr: float, ratio: float, up: bool) -> float:
    """The lr one step past `lr`, rounded to the 1-3-10 ladder when that is within half a step."""
    target = lr * ratio if up else lr / ratio
    exponent = math.floor(math.log10(target))
    ladder = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1.0, 3.0)]
    nice = min(ladder, key=lambda v: abs(math.log(v / target)))
    if abs(math.log(nice / target)) < math.log(ratio) / 2 and (nice > lr if up else nice < lr):
        return float(f"{nice:.3g}")
    return float(f"{target:.3g}")


def lr_bounds(settings: DefaultSettings) -> tuple[float, float]:
    """A range that holds every lr the grid and its extensions can reach (for Optuna's records)."""
    lrs, margin = settings.grid["lr"], lr_ratio(settings) ** (settings.extend + 1)
    return min(lrs) / margin, max(lrs) * margin


def extension(
    settings: DefaultSettings, finished: list[tuple[dict[str, Any], float]], extended: int
) -> dict[str, Any] | None:
    """The next point past the edge, or None. `finished` holds (params, value) of every finished
    baseline point; `extended` counts the points already added."""
    if extended >= settings.extend or not finished:
        return None
    best, _ = max(finished, key=lambda pv: pv[1])  # max(): the first (lowest trial) wins a tie
    tried = sorted({p["lr"] for p, _ in finished if _same_except_lr(p, best)})
    if len(tried) < 2:
        return None  # one lr: no edge to speak of
    if best["lr"] == tried[-1]:
        return {**best, "lr": next_lr(best["lr"], lr_ratio(settings), up=True)}
    if best["lr"] == tried[0]:
        return {**best, "lr": next_lr(best["lr"], lr_ratio(settings), up=False)}
    return None


def _same_except_lr(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == v for k, v in b.items() if k != "lr")
