"""The probe's scores per layer, the model-level ones and the suggestion, as `probe` prints them."""

from __future__ import annotations

from rich.table import Table

from nbtl_search.probe.measure import ProbeResult
from nbtl_search.study.spec import StudySpec


def probe_table(spec: StudySpec, result: ProbeResult, lr_from: str) -> Table:
    """The probe's scores per layer, the model-level ones and the suggestion, as printed."""
    table = Table(
        title=f"{spec.name}: how well the pre-trained weights fit the target "
        f"({len(result.layers) + 1} layers; layer 1, the new classifier, left out)"
    )
    columns = [c for c in ("probe_acc", "random_acc", "fit", "logme") if c in result.layers[0]]
    for col in ("layer", "name", "dim", *columns):
        table.add_column(col)
    for r in result.layers:
        table.add_row(str(r["index"]), r["name"], str(r["dim"]), *(f"{r[c]:.2f}" for c in columns))
    lines = [", ".join(f"{k} {v:.4g}" for k, v in result.model.items())]
    if result.suggestion:
        s = result.suggestion
        lines.append(
            f"suggestion: new_layers {s['new_layers']}, lrs [{s['lr_new']:g}, "
            f"{s['lr_upper']:g}, {s['lr_lower']:g}] (base lr: {lr_from}), L2-SP "
            f"{s['l2sp_upper']:g}"
        )
        lines += [f"  because {r}" for r in result.reasons]
    lines.append(
        f"probe: {result.seconds['pass']:.2f} s of forward passes, "
        f"{result.seconds['scores']:.2f} s of scores ({result.seconds['total']:.1f} s in all, "
        "building the data and models included)"
    )
    table.caption = "\n".join(lines)
    return table
