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
from analysis.probe import probe, probe_summary


def summary_markdown(url: str, study: str) -> str:
    """Optimal vs best default as a Markdown table, the verdict with its intervals, and notes."""
    row = compare(url, study).iloc[0]
    lines = [
        f"**{study}** ({row['dataset']}, {row['model']}): optimal vs best default",
        "",
        "| | best default | optimal |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {a} | {b} |" for label, a, b in _table_rows(row)]
    lines += ["", verdict(row)]
    if row["differences"]:
        lines += ["", f"Settings that differ: {row['differences']}"]
    if row["notes"]:
        lines += ["", f"Not a proven best: {row['notes']} (widen the grid or the range)."]
    lines += ladder_markdown(url, study)
    return "\n".join(lines) + "\n"


def ladder_markdown(url: str, study: str) -> list[str]:
    """The retrained ladder as Markdown lines (none before `final`)."""
    try:
        lad = ladder(url, study)
    except AnalysisError:
        return []
    lines = [
        "",
        "The ladder, each rung retrained with the same seeds:",
        "",
        "| rung | adds | test top-1 %, mean ± sd (n) |",
        "|---|---|---|",
    ]
    for i, r in lad.iterrows():
        sd = "" if math.isnan(r["test_sd"]) else f" ± {r['test_sd']:.2f}"
        value = "—" if math.isnan(r["test_mean"]) else f"{r['test_mean']:.2f}{sd} ({r['n_seeds']})"
        adds = r["adds"] or ("the best default" if i == 0 else "nothing (the rung above's runs)")
        lines.append(f"| {r['rung']} | {adds} | {value} |")
    return lines


def verdict(row: pd.Series) -> str:
    """The verdict in plain words; it follows from the 95% intervals of `compare` (a gain or a
    loss only when every interval that could be computed excludes 0)."""
    diff = row["difference"]
    if math.isnan(diff):
        return (
            f"Not tested yet: only the validation difference is known "
            f"({row['val_difference']:+.2f} points on the split used for selection, so "
            "optimistic). Run `nbtl-search final` for the test numbers."
        )
    intervals = []
    if not math.isnan(row["ci_low"]):
        intervals.append(f"{row['ci_low']:+.2f} to {row['ci_high']:+.2f} over seeds")
    if not math.isnan(row["bootstrap_low"]):
        intervals.append(
            f"{row['bootstrap_low']:+.2f} to {row['bootstrap_high']:+.2f} over the "
            f"{row['test_images']} test images"
        )
    ci = (
        f" (95% CI {'; '.join(intervals)})"
        if intervals
        else " (no interval: needs 2 or more seeds a side, or stored test predictions)"
    )
    head = f"Optimal minus default: {diff:+.2f} test top-1 points{ci}."
    if row["verdict"] == "gain":
        return f"{head} The optimum is better: every interval lies above 0."
    if row["verdict"] == "loss":
        return f"{head} The optimum is worse: every interval lies below 0."
    return f"{head} No clear difference: an interval includes 0."


def write_report(
    url: str, study: str, out_path: str | Path, reference: dict[str, float] | None = None
) -> Path:
    """Write ONE self-contained HTML file (plotly.js inlined once, works offline); return its path.

    The comparison is required (its AnalysisError propagates); the ladder or any figure that
    cannot be drawn yet is replaced by a visible note saying why.
    """
    row = compare(url, study).iloc[0]
    sections = [("Optimal vs best default", _summary_html(row))]
    try:
        lad = ladder(url, study, reference)
        sections.append(
            (
                "Ladder",
                _figure_html(figures.ladder_figure(lad, f"{study}: the ladder"))
                + lad.drop(columns="config_hash").to_html(
                    index=False, na_rep="—", float_format=lambda v: f"{v:.2f}"
                ),
            )
        )
    except AnalysisError as e:
        sections.append(("Ladder", f'<p class="note">Not drawn: {html.escape(str(e))}</p>'))
    sections.append(("Transferability probe", _probe_html(url, study)))
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

    def val_mean(side: str) -> str:
        return f"{row[f'{side}_val_mean']:.2f} (n={row[f'{side}_val_n']})"

    return [
        ("run id of the selected trial", f"#{row['default_run_id']}", f"#{row['optimal_run_id']}"),
        (
            "validation top-1 %, that trial",
            f"{row['default_val_top1']:.2f}",
            f"{row['optimal_val_top1']:.2f}",
        ),
        ("validation top-1 %, mean with its re-runs", val_mean("default"), val_mean("optimal")),
        ("test top-1 %, mean ± sd over seeds", test("default"), test("optimal")),
    ]


def _summary_html(row: pd.Series) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in _table_rows(row)
    )
    parts = [
        f"<table><tr><th></th><th>best default</th><th>optimal</th></tr>{cells}</table>",
        f"<p><b>{html.escape(verdict(row))}</b></p>",
    ]
    if row["differences"]:
        parts.append(f"<p>Settings that differ: {html.escape(row['differences'])}</p>")
    if row["notes"]:
        parts.append(
            f'<p class="note">Not a proven best: {html.escape(row["notes"])} '
            "(widen the grid or the range).</p>"
        )
    if row["ensemble_size"]:
        parts.append(
            f"<p>Ensemble of {row['ensemble_size']} final models (averaged softmax): "
            f"{row['ensemble_test_top1']:.2f}% test top-1</p>"
        )
    return "\n".join(parts)


def _probe_html(url: str, study: str) -> str:
    try:
        table, summary = probe(url, study), probe_summary(url, study)
    except AnalysisError as e:
        return f'<p class="note">Not shown: {html.escape(str(e))}</p>'
    model = ", ".join(
        f"{k} {v:.4g}" for k, v in summary.items() if not k.startswith(("suggested.", "seconds."))
    )
    suggested = ", ".join(
        f"{k.split('.', 1)[1]} {v:g}" for k, v in summary.items() if k.startswith("suggested.")
    )
    return (
        table.to_html(index=False, float_format=lambda v: f"{v:.2f}")
        + f"<p>{html.escape(model)}</p><p>Suggested: {html.escape(suggested or 'nothing')}</p>"
    )


def _figure_html(fig: go.Figure) -> str:
    # plotly.js is inlined once in <head>; each figure only carries its div and data.
    return fig.to_html(
        full_html=False, include_plotlyjs=False, include_mathjax=False, default_height="480px"
    )


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
