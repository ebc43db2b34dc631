"""What the loop tells the outside world: per-epoch metrics, a `Reporter` that may stop it, the result.

The reporter is the only bridge to a search: the trainer never learns who is listening.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Protocol


class Decision(enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"


class StopReason(enum.Enum):
    COMPLETED = "completed"  # ran every epoch
    REPORTER = "reporter"  # the reporter answered STOP (e.g. pruned)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None  # None when training on train+val
    val_top1: float | None  # percent
    val_top5: float | None
    lrs: tuple[float, float, float]  # new, upper, lower at the end of the epoch
    penalty: float  # L2-SP/L2 penalty value at the last step of the epoch
    seconds: float
    images_per_s: float


class Reporter(Protocol):
    def report(self, epoch: int, metrics: EpochMetrics) -> Decision: ...


class NullReporter:
    def report(self, epoch: int, metrics: EpochMetrics) -> Decision:
        return Decision.CONTINUE


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochMetrics, ...]
    best_val_top1: float | None
    best_epoch: int | None
    test: dict[str, float] | None  # top1, top5, loss when the test split was evaluated
    wall_s: float
    images_per_s: float  # training images per second over the whole run
    stop_reason: StopReason
    num_classes: int
    device: str
    test_predictions: str | None = None  # path of test_predictions.npz (probs, labels) when saved
    # with save_test_predictions: the test split's softmax (N x classes) and labels, in memory
    test_probs: Any = dataclasses.field(default=None, repr=False)
    test_labels: Any = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values (the arrays stay out: they are in the .npz file)."""
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("test_probs", "test_labels")
        }
        d["stop_reason"] = self.stop_reason.value
        d["history"] = [dataclasses.asdict(m) for m in self.history]
        return d
