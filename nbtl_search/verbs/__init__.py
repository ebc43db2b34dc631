"""The CLI's verbs, one class each: its arguments (`add_arguments`) and its action
(`take_action`) read together, registered in `VERBS` (the order `nbtl-search --help` lists them).

Modules here import only the standard library at their top: `nbtl-search --help` and argument
errors must not wait for torch, timm or optuna, and a worker must never load pandas or plotly. Each
action imports what it needs.
"""

from __future__ import annotations

from .base import Verb
from .demo import Demo
from .final import Final
from .probe import Probe
from .results import Best, Dashboard, Export, Report, Status
from .search import Baseline, Run, Worker
from .submit import Submit

VERBS: tuple[type[Verb], ...] = (
    Run,
    Baseline,
    Worker,
    Submit,
    Final,
    Probe,
    Status,
    Best,
    Export,
    Report,
    Dashboard,
    Demo,
)

__all__ = ["VERBS", "Verb"]
