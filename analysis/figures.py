"""Plotly figures of a study. Every function returns a `go.Figure` and never calls `.show()`.

No input -> AnalysisError; a figure is never silently empty. Only the importance figure degrades to
an annotated placeholder (too few trials, or Optuna could not compute importances), because that is
a fact about the search worth showing, not a missing input.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import sqlalchemy as sa

from analysis.load import AXES, AnalysisError, epochs, runs

_COMPLETE_COLOR, _PRUNED_COLOR, _DEFAULT_COLOR = "#1f77b4", "#aaaaaa", "#d62728"


def ladder_figure(df_ladder: pd.DataFrame, title: str) -> go.Figure:
    """The paper's figure: one bar per rung, test top-1 mean over the final runs' seeds with the
    sd as error bar, from the best default to the optimum, then the ensemble; `reference` rows
    become dashed horizontal lines."""
    refs = df_ladder[df_ladder["adds"] == "reference"]
    bars = df_ladder[df_ladder["adds"] != "reference"]
    if bars["test_mean"].isna().all():
        raise AnalysisError(
            "the ladder has no test results yet: run `nbtl-search final STUDY.yaml`"
        )
    y = bars["test_mean"].astype(float)
    labels = [f"{r} (n={n})" if n else r for r, n in zip(bars["rung"], bars["n_seeds"])]
    fig = go.Figure()
    fig.add_bar(
        x=labels,
        y=y,
        name="test top-1 (final runs)",
        marker_color="#08519c",
        error_y=dict(type="data", array=bars["test_sd"].fillna(0.0).astype(float)),
        text=[("" if math.isnan(v) else f"{v:.1f}") for v in y],
        textposition="outside",
        hovertext=bars["adds"],
        hoverinfo="text+y",
    )
    for _, ref in refs.iterrows():
        fig.add_hline(
            y=float(ref["test_mean"]),
            line_dash="dash",
            line_color="#444",
            annotation_text=f"{ref['rung']}: {ref['test_mean']:.1f}",
            annotation_position="top left",
        )
    values = pd.concat([y - bars["test_sd"].fillna(0.0), df_ladder["test_mean"]]).dropna()
    # Start the axis near the lowest bar: the ladder is about differences of a few points.
    low, high = max(0.0, values.min() - 5.0), min(100.0, values.max() + 3.0)
    fig.update_layout(
        title=title,
        yaxis_title="test top-1 accuracy (%)",
        yaxis_range=[low, max(high, low + 1.0)],
        showlegend=False,
    )
    return fig


def history_figure(url: str, study: str) -> go.Figure:
    """Validation top-1 of every search trial in order, the best so far, and the best default."""
    df = runs(url, study)
    search = df[
        (df["role"] == "search") & df["val_top1"].notna() & df["state"].isin(["complete", "pruned"])
    ].copy()
    complete = search[search["state"] == "complete"]
    if complete.empty:
        raise AnalysisError(
            f"study {study!r} has no complete search runs: run `nbtl-search run STUDY.yaml`"
        )
    search["x"] = search["trial_number"].astype("Float64").fillna(search["id"]).astype(float)
    search = search.sort_values(["x", "id"])
    fig = go.Figure()
    for state, color, symbol in (
        ("complete", _COMPLETE_COLOR, "circle"),
        ("pruned", _PRUNED_COLOR, "x"),
    ):
        part = search[search["state"] == state]
        if not part.empty:
            fig.add_scatter(
                x=part["x"],
                y=part["val_top1"],
                mode="markers",
                name=state,
                marker=dict(color=color, symbol=symbol),
                customdata=part["id"],
                hovertemplate="run %{customdata}: %{y:.2f}",
            )
    done = search[search["state"] == "complete"]
    fig.add_scatter(
        x=done["x"],
        y=done["val_top1"].cummax(),
        mode="lines",
        line_shape="hv",
        name="best so far",
        line_color=_COMPLETE_COLOR,
    )
    default = df[(df["role"] == "default") & (df["state"] == "complete")]["val_top1"].dropna()
    if default.empty:
        fig.add_annotation(
            text="no default baseline yet",
            xref="paper",
            yref="paper",
            x=0.01,
            y=0.02,
            showarrow=False,
        )
    else:
        fig.add_hline(
            y=float(default.max()),
            line_dash="dash",
            line_color=_DEFAULT_COLOR,
            annotation_text=f"best default {default.max():.1f}",
        )
    fig.update_layout(
        title=f"{study}: search history", xaxis_title="trial", yaxis_title="validation top-1 (%)"
    )
    return fig


def importance_figure(url: str, study: str) -> go.Figure:
    """Optuna's parameter importances (fANOVA, fixed seed) on the search study, or a figure whose
    annotation says why there are none."""
    import optuna  # only this figure needs it; keeps `import analysis` light

    runs(url, study)  # the usual errors (no tables, unknown study) come first
    fig = go.Figure()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            has_optuna = sa.inspect(conn).has_table("studies")
    finally:
        engine.dispose()
    try:
        if not has_optuna:
            raise LookupError("no Optuna tables in this database")
        # skip_table_creation: analysis only reads, it must not create Optuna's schema.
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        loaded = optuna.load_study(study_name=study, storage=storage)
        n = len(loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if n < 2:
            raise LookupError(f"{n} complete trial(s); importances need at least 2")
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(loaded, evaluator=evaluator)
        if not importances:
            raise LookupError("the trials have no parameters")
    except Exception as e:
        fig.add_annotation(
            text=f"no parameter importances: {e}",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
        fig.update_layout(
            title=f"{study}: parameter importances", xaxis_visible=False, yaxis_visible=False
        )
        return fig
    names = list(importances)[::-1]  # most important at the top
    fig.add_bar(x=[importances[k] for k in names], y=names, orientation="h")
    fig.update_yaxes(automargin=True)  # long parameter names keep their whole label
    fig.update_layout(
        title=f"{study}: parameter importances (fANOVA)",
        xaxis_title="share of the variance of validation top-1",
        margin=dict(l=20 + 7 * max(len(n) for n in names)),
    )
    return fig


def parallel_figure(url: str, study: str) -> go.Figure:
    """Parallel coordinates of the search axes (learning rates as log10) against validation top-1,
    over every complete search and default run."""
    df = runs(url, study)
    df = df[
        df["role"].isin(["search", "default"])
        & (df["state"] == "complete")
        & df["val_top1"].notna()
    ]
    if df.empty:
        raise AnalysisError(
            f"study {study!r} has no complete search or default runs: "
            "run `nbtl-search run STUDY.yaml`"
        )
    table = pd.DataFrame(index=df.index)
    for col in AXES:
        values = df[col].astype(float)
        table[f"log10 {col}" if col.startswith("lr_") else col] = (
            np.log10(values) if col.startswith("lr_") else values
        )
    table = table.dropna(axis=1, how="all").dropna(axis=0)
    table["val_top1"] = df["val_top1"].astype(float)
    dims = [dict(label=c, values=table[c]) for c in table.columns]
    fig = go.Figure(
        go.Parcoords(
            line=dict(color=table["val_top1"], colorscale="Viridis", showscale=True),
            dimensions=dims,
        )
    )
    fig.update_layout(title=f"{study}: search axes vs validation top-1")
    return fig


def curves_figure(url: str, study: str, top: int = 5) -> go.Figure:
    """Validation top-1 per epoch of the `top` best complete runs (search or default), plus the
    best default (dashed) so the optimum's curve is seen against it."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AnalysisError(f"top must be an integer >= 1, got {top!r}")
    df = runs(url, study)
    done = df[
        df["role"].isin(["search", "default"])
        & (df["state"] == "complete")
        & df["val_top1"].notna()
    ].sort_values(["val_top1", "id"], ascending=[False, True])
    chosen = done.head(top)
    default = done[done["role"] == "default"].head(1)
    chosen = pd.concat([chosen, default]).drop_duplicates("id")
    ep = epochs(url, study, run_ids=chosen["id"].tolist())
    if ep.empty:
        raise AnalysisError(f"study {study!r} has no per-epoch rows for its best runs")
    fig = go.Figure()
    for _, run in chosen.iterrows():
        rows = ep[ep["run_id"] == run["id"]]
        if rows.empty:
            continue
        trial = "" if pd.isna(run["trial_number"]) else f" t{int(run['trial_number'])}"
        fig.add_scatter(
            x=rows["epoch"],
            y=rows["val_top1"],
            mode="lines+markers",
            name=f"#{run['id']} {run['role']}{trial} ({run['val_top1']:.1f})",
            line_dash="dash" if run["role"] == "default" else "solid",
        )
    fig.update_layout(
        title=f"{study}: validation curves of the top {top} runs",
        xaxis_title="epoch",
        yaxis_title="validation top-1 (%)",
    )
    return fig
