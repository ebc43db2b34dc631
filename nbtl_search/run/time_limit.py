"""A worker in a job with an end (a Slurm time limit): start a trial only if the trials measured so
far say it can finish before the end, less a margin.

The margin is the time the job keeps for itself at the end: `submit` asks Slurm to signal the job
that long before its limit (`--signal=B:USR1@MARGIN`), and a trial still running then is handed
back (failed, re-queued once) instead of being killed with the job. A trial's time is the longest
a finished trial of the study took: a complete trial as it ran, a pruned one as if it had run all
its epochs (every trial of a study has the same number of epochs, and any of them may run to the
end). With no finished trial yet, nothing is known and the first trials start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState


def trial_seconds(trials: list[FrozenTrial], epochs: int) -> float | None:
    """The longest a trial of these may take, from the finished ones; None if none finished."""
    longest = None
    for t in trials:
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        took = (t.datetime_complete - t.datetime_start).total_seconds()
        if t.state == TrialState.PRUNED and t.intermediate_values:
            took *= epochs / max(1, len(t.intermediate_values))
        elif t.state != TrialState.COMPLETE:
            continue
        longest = took if longest is None else max(longest, took)
    return longest


@dataclass(frozen=True)
class TimeLimit:
    """`left()`: seconds until the job ends (None: no end); `margin`: seconds kept at the end."""

    left: Callable[[], float | None]
    margin: float = 0.0

    def refuses(self, left: float | None, trials: list[FrozenTrial], epochs: int) -> str | None:
        """Why no trial may start with `left` seconds to go (one line), or None."""
        if left is None:
            return None
        usable = left - self.margin
        need = trial_seconds(trials, epochs)
        if usable <= 0:
            return f"the job ends in {left:.0f} s, within its {self.margin:.0f} s margin"
        if need is not None and need > usable:
            return (
                f"the job ends in {left:.0f} s: {usable:.0f} s before its margin, and a trial of "
                f"this study has taken up to {need:.0f} s"
            )
        return None
