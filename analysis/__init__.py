"""Analysis of nbtl-search studies, read from the study database only.

The schema (`nbtl_runs`, `nbtl_epochs` and Optuna's own tables) is the contract: this package never
imports `nbtl_search`, torch, timm or optuna; from `trainer` it reads only the torch-free
vocabulary of per-part values (`trainer.per_part`).

    import analysis
    analysis.runs("sqlite:///nbtl.db", "demo_digits")      # one row per run, config flattened
    analysis.compare("sqlite:///nbtl.db", "demo_digits")   # optimal vs best default, one row
    analysis.ladder("sqlite:///nbtl.db", "demo_digits", reference={"state of the art": 92.0})
    analysis.report.write_report("sqlite:///nbtl.db", "demo_digits", "report.html")
"""

from analysis import figures, report, stats
from analysis.compare import compare, ensemble_accuracy, ladder
from analysis.load import AnalysisError, AnalysisWarning, epochs, runs, studies
from analysis.probe import probe, probe_summary
from analysis.report import summary_markdown, write_report

__all__ = [
    "AnalysisError",
    "AnalysisWarning",
    "compare",
    "ensemble_accuracy",
    "epochs",
    "figures",
    "probe",
    "probe_summary",
    "ladder",
    "report",
    "runs",
    "stats",
    "studies",
    "summary_markdown",
    "write_report",
]
