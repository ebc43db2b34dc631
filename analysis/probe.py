"""The study's transferability probe (`nbtl-search probe`), read from `nbtl_probe`.

Per layer (counted from the top; layer 1, the new classifier, is not probed): `probe_acc` (ridge
probe accuracy %, pre-trained features), `random_acc` (the same architecture with random weights),
`fit` = probe_acc - random_acc, `logme`. Model-level values (LogME, H-score, LEEP, NCE, domain
similarity) and the suggested settings (`suggested.*`) have no layer.
"""

from __future__ import annotations

import pandas as pd

from analysis.load import AnalysisError, read_table

PROBE = "nbtl_probe"


def probe(url: str, study: str) -> pd.DataFrame:
    """One row per probed layer, one column per score; AnalysisError before any probe."""
    rows = _rows(url, study)
    layers = rows[rows["layer"].notna()]
    table = layers.pivot_table(
        index=["layer", "layer_name"], columns="score", values="value", sort=False
    ).reset_index()
    table.columns.name = None
    return table.astype({"layer": int})


def probe_summary(url: str, study: str) -> dict[str, float]:
    """Model-level scores, suggested settings (`suggested.new_layers`, ...) and timings."""
    rows = _rows(url, study)
    return dict(
        zip(rows.loc[rows["layer"].isna(), "score"], rows.loc[rows["layer"].isna(), "value"])
    )


def _rows(url: str, study: str) -> pd.DataFrame:
    rows = read_table(url, PROBE, study)
    if rows.empty:
        raise AnalysisError(f"study {study!r} has no probe yet: run `nbtl-search probe STUDY.yaml`")
    return rows
