"""Does the demo's verdict hold? Runs `nbtl-search demo --seed K` for several K (each K draws another
train/val/test split of the digits and other training seeds) and tabulates the verdict, the gain
and its intervals, the ladder and the wall time of each run. Results go to bench/README.md.

    .venv/bin/python bench/demo_verdicts.py [--seeds 0,1,2,3,4] [--out DIR]

The source model is pre-trained once (the demo's own command) and cached as usual, so every run
after the first is a warm run: the figure the README's "under 3 minutes" is about. Runs one demo at
a time (each uses both cores of a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="demo-verdicts-"))
    out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console

    from nbtl_search.study.spec import load_spec
    from nbtl_search.ui.demo import DEMO_STUDY, ensure_source

    ensure_source(load_spec(DEMO_STUDY), Console())  # pre-trained once: every timed run is warm
    rows = []
    for k in (int(s) for s in args.seeds.split(",")):
        rows.append(run(k, out))
        print(rows[-1]["line"], flush=True)
    print(
        "\n| K | best default | optimum | default test | optimum test | gain | 95% CI over seeds | "
        "95% CI over test images | verdict | ladder (test mean per rung) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r["line"])
    verdicts = {r["verdict"] for r in rows}
    print(
        f"\nverdicts: {', '.join(sorted(verdicts))}; wall time {min(r['wall'] for r in rows):.0f}-"
        f"{max(r['wall'] for r in rows):.0f} s"
    )
    return 0


def run(k: int, out: Path) -> dict:
    import analysis

    folder = out / f"seed{k}"
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nbtl_search", "demo", "--seed", str(k)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"demo --seed {k} failed: {done.stderr[-2000:]}")
    url = f"sqlite:///{folder / 'nbtl.db'}"
    name = "demo_digits" if k == 0 else f"demo_digits-seed{k}"
    row = analysis.compare(url, name).iloc[0]
    lad = analysis.ladder(url, name)
    runs = analysis.runs(url, name).set_index("id")

    def describe(run_id: int) -> str:
        r = runs.loc[run_id]
        aa = r["cfg_aa"] if isinstance(r["cfg_aa"], str) else "-"
        return f"nl{r['new_layers']} lr{r['lr_new']:g} aa {aa}"

    ladder = " / ".join(f"{v:.1f}" for v in lad[lad["rung"] != "ensemble"]["test_mean"])
    line = (
        f"| {k} | {describe(row['default_run_id'])} | {describe(row['optimal_run_id'])} | "
        f"{row['default_test_mean']:.1f} ± {row['default_test_sd']:.1f} | "
        f"{row['optimal_test_mean']:.1f} ± {row['optimal_test_sd']:.1f} | "
        f"{row['difference']:+.1f} | [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}] | "
        f"[{row['bootstrap_low']:+.1f}, {row['bootstrap_high']:+.1f}] | {row['verdict']} | "
        f"{ladder} | {wall:.0f} |"
    )
    return {"line": line, "verdict": row["verdict"], "wall": wall}


if __name__ == "__main__":
    raise SystemExit(main())
