"""`nbtl-search VERB ...`: `main(argv) -> int`. Bad input is one line on stderr and exit code 2,
before anything is written; a stopped command exits 128 + the signal number."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...`), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _number(kind: type, low: float, name: str = "") -> Callable[[str], float]:
    """An argparse type: `kind` (int or float), finite, >= `low`."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"takes {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    parse.__name__ = name or kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, 1, "count")  # a number of trials, workers, seeds, ...
INDEX = _number(int, 0, "index")
SECONDS = _number(float, 1, "seconds")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nbtl-search",
        description=("Hyperparameter search for non-binary transfer learning (timm + Optuna)."),
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    def verb(name: str, help: str, study: bool = True) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help, description=help)
        if study:
            v.add_argument("study", metavar="STUDY.yaml", help="study file (see studies/)")
        v.add_argument(
            "--storage",
            help="database URL (default: $NBTL_STORAGE, else the study "
            "file's storage); keep passwords in ~/.pgpass",
        )
        return v

    r = verb("run", "run the search: one worker process per GPU slot (or CPU worker)")
    _slot_args(r)
    r.add_argument("--trials", type=COUNT, help="study budget: finished trials over all workers")
    r.add_argument("--timeout", type=SECONDS, help="seconds per worker")

    b = verb("baseline", "run the default-settings grid as its own study, without pruning")
    _slot_args(b)

    w = verb("worker", "join a study as ONE worker (how a study spans hosts)")
    w.add_argument("--device", help="torch device of this worker (default: cuda if available)")
    w.add_argument("--gpu", type=INDEX, help="GPU index: sets CUDA_VISIBLE_DEVICES for this worker")
    w.add_argument("--trials", type=COUNT, help="stop this worker after N trials")
    w.add_argument("--budget", type=COUNT, help="override the study's budget of finished trials")
    w.add_argument("--timeout", type=SECONDS)
    w.add_argument("--threads", type=COUNT, help="torch CPU threads")
    w.add_argument("--role", choices=["search", "default"], default="search")
    w.add_argument(
        "--index", type=INDEX, help="worker number: offsets the sampler seed (default: pid)"
    )
    _cache_arg(w)

    f = verb(
        "final",
        "re-rank on validation, then retrain the ladder from the best default to the "
        "optimum on train+val and test it",
    )
    f.add_argument(
        "--seeds", type=COUNT, help="seeds per config (default: the study's final.seeds)"
    )
    f.add_argument(
        "--top-k",
        type=COUNT,
        help="retrain the top K search configs (their ensemble; default final.top_k)",
    )
    f.add_argument(
        "--rerank-top-k",
        type=INDEX,
        help="configs per role re-run on validation before "
        "choosing (0 = off; default final.rerank_top_k)",
    )
    f.add_argument(
        "--rerank-seeds",
        type=INDEX,
        help="extra seeds per re-ranked config (default final.rerank_seeds)",
    )
    f.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    f.add_argument(
        "--jobs", type=COUNT, default=1, help="runs trained at once, each in its own process"
    )
    _cache_arg(f)

    pr = verb(
        "probe",
        "measure how well the pre-trained weights fit the target (one forward pass) "
        "and suggest settings",
    )
    pr.add_argument(
        "--suggest",
        action="store_true",
        help="print a study file that starts from the suggestion, ranges narrowed around it",
    )
    pr.add_argument("--source-dataset", help="the source's dataset (for the domain similarity)")
    pr.add_argument("--source-data-dir", help="its data_dir, if it has one")
    pr.add_argument(
        "--scores",
        help="comma-separated subset of: logme, probe_acc, hscore, leep, "
        "nce, domain_similarity (default: all that apply)",
    )
    pr.add_argument(
        "--max-images",
        type=COUNT,
        default=2000,
        help="class-balanced subset of the train split (default 2000)",
    )
    pr.add_argument("--device", default=None, help="default: cuda if available, else cpu")

    verb("status", "trials, grid coverage, the best so far and whether it sits on an edge")
    verb("best", "print the best config as a study file with fixed values, ready to rerun")
    e = verb("export", "write runs and epochs as CSV")
    e.add_argument("--out", default=".", help="folder for runs.csv and epochs.csv")
    rp = verb("report", "write a self-contained HTML report: optimal vs default")
    rp.add_argument("--out", default="report.html")
    rp.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=TOP1",
        help="a reference test top-1 for the ladder, e.g. 'state of the art=78.3'",
    )
    d = verb("dashboard", "serve optuna-dashboard on the study's storage")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=_number(int, 1, "port"), default=8080)

    dm = verb(
        "demo",
        "offline CPU demo: baseline, search, re-ranking, ladder, final test (~3 min)",
        study=False,
    )
    dm.add_argument("--study", default=None, help="default: studies/demo_digits.yaml")
    dm.add_argument(
        "--seed",
        type=INDEX,
        default=0,
        help="demo seed: changes the data split and every training seed",
    )
    return p


def _slot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    p.add_argument("--per-gpu", type=COUNT, default=1, help="trials sharing each GPU (default 1)")
    p.add_argument("--workers", type=COUNT, help="CPU workers (with --device cpu)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    _cache_arg(p)


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-image-cache",
        dest="image_cache",
        action="store_false",
        help="decode image files in every epoch instead of once per machine",
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    from . import commands  # heavy imports only after --help / argument errors

    try:
        return getattr(commands, args.verb)(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (commands.Stopped)
        name = str(e) or "SIGINT"
        print(
            f"stopped ({name}): what was running is marked failed; the same command again runs it",
            file=sys.stderr,
        )
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except Exception as e:
        if _is_user_error(e, commands.USER_ERRORS):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if os.environ.get("NBTL_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def _is_user_error(e: Exception, known: tuple[type[Exception], ...]) -> bool:
    # analysis (pandas, plotly) is imported only by the verbs that read results: its error type
    # can only be raised if it is loaded
    analysis = sys.modules.get("analysis.load")
    return isinstance(e, known) or (analysis is not None and isinstance(e, analysis.AnalysisError))
