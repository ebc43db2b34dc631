"""`nbtl-search VERB ...`: `main(argv) -> int`. Bad input is one line on stderr and exit code 2,
before anything is written; a stopped command exits 128 + the signal number. The verbs, each with
its arguments and its action, are in `verbs/`."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .verbs import VERBS, Verb


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...`), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's is NoReturn
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nbtl-search",
        description="Hyperparameter search for non-binary transfer learning (timm + Optuna).",
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for cls in VERBS:
        verb = cls()
        v = sub.add_parser(cls.name, help=cls.help, description=cls.help)
        if cls.study:
            v.add_argument("study", metavar="STUDY.yaml", help="study file (see studies/)")
        v.add_argument(
            "--storage",
            help="database URL (default: $NBTL_STORAGE, else the study file's storage); keep "
            "passwords in ~/.pgpass",
        )
        verb.add_arguments(v)
        v.set_defaults(verb_object=verb)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    verb: Verb = args.verb_object
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress says what happens
        return verb.take_action(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (run.signals.Stopped)
        name = str(e) or "SIGINT"
        print(
            f"stopped ({name}): what was running is marked failed; the same command again runs it",
            file=sys.stderr,
        )
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except Exception as e:
        if _is_user_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if os.environ.get("NBTL_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def _is_user_error(e: Exception) -> bool:
    """Bad input from the user (a study file, a URL, a flag's value, data on disk)."""
    from nbtl_search.run.worker import StudyMismatch
    from nbtl_search.store.connection import StorageError
    from nbtl_search.study.checks import SpecError
    from trainer import InputError

    # analysis (pandas, plotly) is imported only by the verbs that read results: its error type
    # can only be raised if it is loaded
    analysis = sys.modules.get("analysis.load")
    known: tuple[type[Exception], ...] = (SpecError, StorageError, StudyMismatch, InputError)
    return isinstance(e, known) or (analysis is not None and isinstance(e, analysis.AnalysisError))
