"""Non-binary fine-tuning of timm models: a typed library and `python -m trainer`.

This package never imports optuna or nbtl_search: a search talks to it only through a `Reporter`.
"""

from .config import InputError, TrainConfig
from .report import Decision, EpochMetrics, NullReporter, Reporter, StopReason, TrainResult

__all__ = [
    "Decision",
    "EpochMetrics",
    "InputError",
    "NullReporter",
    "Reporter",
    "StopReason",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "fit",
]


def __getattr__(name: str):
    # torch and timm take seconds to import; load them only when training is asked for
    if name in ("fit", "TrainingDiverged"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)
