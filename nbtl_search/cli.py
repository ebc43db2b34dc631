"""`nbtl-search VERB ...`: `main(argv) -> int`. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

VERBS = "run worker baseline final status best export report dashboard demo".split()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbtl-search", description=(
        "Hyperparameter search for non-binary transfer learning (timm + Optuna)."))
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str, study: bool = True) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help, description=help)
        if study:
            v.add_argument("study", metavar="STUDY.yaml", help="study file (see studies/)")
        v.add_argument("--storage", help="database URL (default: the study file's storage)")
        return v

    r = verb("run", "run the search: one worker process per GPU slot (or CPU worker)")
    _slot_args(r)
    r.add_argument("--trials", type=int, help="study budget: finished trials over all workers")
    r.add_argument("--timeout", type=float, help="seconds per worker")

    b = verb("baseline", "run the default-settings grid as its own study, without pruning")
    _slot_args(b)

    w = verb("worker", "join a study as ONE worker (how a study spans hosts)")
    w.add_argument("--device", help="torch device of this worker (default: cuda if available)")
    w.add_argument("--gpu", type=int, help="GPU index: sets CUDA_VISIBLE_DEVICES for this worker")
    w.add_argument("--trials", type=int, help="stop this worker after N trials")
    w.add_argument("--budget", type=int, help="override the study's budget of finished trials")
    w.add_argument("--timeout", type=float)
    w.add_argument("--threads", type=int, help="torch CPU threads")
    w.add_argument("--role", choices=["search", "default"], default="search")
    w.add_argument("--index", type=int, help="worker number: offsets the sampler seed (default: pid)")

    f = verb("final", "retrain the best search and best default configs on train+val, test them")
    f.add_argument("--seeds", type=int, help="seeds per config (default: the study file's final.seeds)")
    f.add_argument("--top-k", type=int, default=1, help="retrain the top K search configs (ensemble)")
    f.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    f.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")

    verb("status", "a table of trials and the best so far")
    verb("best", "print the best config as a study file with fixed values, ready to rerun")
    e = verb("export", "write runs and epochs as CSV")
    e.add_argument("--out", default=".", help="folder for runs.csv and epochs.csv")
    rp = verb("report", "write a self-contained HTML report: optimal vs default")
    rp.add_argument("--out", default="report.html")
    rp.add_argument("--reference", action="append", default=[], metavar="NAME=TOP1",
                    help="a reference test top-1 for the ladder, e.g. 'state of the art=78.3'")
    d = verb("dashboard", "serve optuna-dashboard on the study's storage")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)

    dm = verb("demo", "offline CPU demo: baseline + non-binary search + final test, ~2-3 min",
              study=False)
    dm.add_argument("--study", default=None, help="default: studies/demo_digits.yaml")
    return p


def _slot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    p.add_argument("--per-gpu", type=int, default=1, help="trials sharing each GPU (default 1)")
    p.add_argument("--workers", type=int, help="CPU workers (with --device cpu)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands  # heavy imports only after --help / argument errors

    try:
        return getattr(commands, args.verb)(args)
    except commands.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # NBTL_DEBUG=1 shows the traceback
        if os.environ.get("NBTL_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
