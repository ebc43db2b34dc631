"""The study's verdict in words: a short Markdown summary and one self-contained HTML report."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from analysis import figures
from analysis.compare import compare, ladder
from analysis.load import AnalysisError


def summary_markdown(url: str, study: str) -> str:
    """Optimal vs best default as a Markdown table plus the verdict against the seed spread."""
    row = compare(url, study).iloc[0]
    lines = [f"**{study}** ({row['dataset']}, {row['model']}): optimal vs best default", "",
             "| | best default | optimal |", "|---|---|---|"]
    lines += [f"| {label} | {a} | {b} |" for label, a, b in _table_rows(row)]
    lines += ["", verdict(row)]
    if row["differences"]:
        lines += ["", f"Settings that differ: {row['differences']}"]
    if row["ensemble_size"]:
        lines += ["", f"Ensemble of {row['ensemble_size']} final models (averaged softmax): "
                      f"{row['ensemble_test_top1']:.2f}% test top-1"]
    return "\n".join(lines) + "\n"


def verdict(row: pd.Series) -> str:
    """One sentence: does the optimum beat the default by more than the seed spread?

    The spread is sd_default + sd_optimal (sample sds over the final runs' seeds); the gain is
    called real only when |mean_optimal - mean_default| exceeds it, with >= 2 seeds a side.
    """
    diff, n_def, n_opt = row["difference"], row["default_n_seeds"], row["optimal_n_seeds"]
    if math.isnan(diff):
        return (f"No final test runs for both configs yet: only the validation difference is "
                f"known ({row['val_difference']:+.2f} points, measured on the split used for "
                "selection, so optimistic).")
    head = f"Difference of test means (optimal - default): {diff:+.2f} points"
    if pd.isna(row["exceeds_spread"]):
        return (f"{head} over {n_opt} / {n_def} seeds: too few seeds to compare with the seed "
                "spread (needs >= 2 per side).")
    if row["exceeds_spread"]:
        side = "gain" if diff > 0 else "loss"
        return (f"{head}; this {side} exceeds the seed spread (sd_default + sd_optimal = "
                f"{row['spread']:.2f}).")
    return (f"{head}; within the seed spread (sd_default + sd_optimal = {row['spread']:.2f}): "
            "no clear difference.")


def write_report(url: str, study: str, out_path: str | Path,
                 reference: dict[str, float] | None = None) -> Path:
    """Write ONE self-contained HTML file (plotly.js inlined once, works offline); return its path.

    The comparison and the ladder are required (their AnalysisError propagates); any other figure
    that cannot be drawn is replaced by a visible note saying why.
    """
    row = compare(url, study).iloc[0]
    lad = ladder(url, study, reference)
    sections = [
        ("Optimal vs best default", _summary_html(row)),
        ("Ladder", _figure_html(figures.ladder_figure(lad, f"{study}: the ladder"))
         + lad.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.2f}")),
    ]
    others: list[tuple[str, Callable[[], go.Figure]]] = [
        ("Search history", lambda: figures.history_figure(url, study)),
        ("Parameter importances", lambda: figures.importance_figure(url, study)),
        ("Search axes", lambda: figures.parallel_figure(url, study)),
        ("Validation curves", lambda: figures.curves_figure(url, study)),
    ]
    for title, make in others:
        try:
            body = _figure_html(make())
        except AnalysisError as e:
            body = f'<p class="note">Not drawn: {html.escape(str(e))}</p>'
        sections.append((title, body))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(study, sections), encoding="utf-8")
    return out


def _table_rows(row: pd.Series) -> list[tuple[str, str, str]]:
    def test(side: str) -> str:
        n = row[f"{side}_n_seeds"]
        if n == 0:
            return "no final runs yet"
        sd = row[f"{side}_test_sd"]
        spread = "" if math.isnan(sd) else f" ± {sd:.2f}"
        return f"{row[f'{side}_test_mean']:.2f}{spread} (n={n})"

    return [
        ("run id", f"#{row['default_run_id']}", f"#{row['optimal_run_id']}"),
        ("validation top-1 %", f"{row['default_val_top1']:.2f}", f"{row['optimal_val_top1']:.2f}"),
        ("test top-1 %, mean ± sd over seeds", test("default"), test("optimal")),
    ]


def _summary_html(row: pd.Series) -> str:
    cells = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td>"
                    f"<td>{html.escape(c)}</td></tr>" for a, b, c in _table_rows(row))
    parts = [f"<table><tr><th></th><th>best default</th><th>optimal</th></tr>{cells}</table>",
             f"<p><b>{html.escape(verdict(row))}</b></p>"]
    if row["differences"]:
        parts.append(f"<p>Settings that differ: {html.escape(row['differences'])}</p>")
    if row["ensemble_size"]:
        parts.append(f"<p>Ensemble of {row['ensemble_size']} final models (averaged softmax): "
                     f"{row['ensemble_test_top1']:.2f}% test top-1</p>")
    return "\n".join(parts)


def _figure_html(fig: go.Figure) -> str:
    # plotly.js is inlined once in <head>; each figure only carries its div and data.
    return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False,
                       default_height="480px")


def _page(study: str, sections: list[tuple[str, str]]) -> str:
    title = html.escape(f"nbtl-search report: {study}")
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
.note {{ color: #a33; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
