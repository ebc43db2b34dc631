"""The verbs that read a study's results: `status`, `best`, `export`, `report`, `dashboard`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import Verb, console, number, study_and_url, upgraded


class Status(Verb):
    name = "status"
    help = "trials, grid coverage, the best so far and whether it sits on an edge"

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.ui.status import status_table

        spec, url = study_and_url(args)
        console().print(status_table(spec, url))
        return 0


class Best(Verb):
    name = "best"
    help = "print the best config as a study file with fixed values, ready to rerun"

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.ui.best import best_yaml

        spec, url = study_and_url(args)
        sys.stdout.write(best_yaml(spec, url))
        return 0


class Export(Verb):
    name = "export"
    help = "write runs and epochs as CSV"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default=".", help="folder for runs.csv and epochs.csv")

    def take_action(self, args: argparse.Namespace) -> int:
        import analysis

        spec, url = study_and_url(args)
        url = upgraded(url)
        out = Path(args.out)
        runs, epochs = analysis.runs(url, spec.name), analysis.epochs(url, spec.name)
        out.mkdir(parents=True, exist_ok=True)
        runs.to_csv(out / "runs.csv", index=False)
        epochs.to_csv(out / "epochs.csv", index=False)
        console().print(f"wrote {out / 'runs.csv'} and {out / 'epochs.csv'}")
        return 0


class Report(Verb):
    name = "report"
    help = "write a self-contained HTML report: optimal vs default"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default="report.html")
        p.add_argument(
            "--reference",
            action="append",
            default=[],
            metavar="NAME=TOP1",
            help="a reference test top-1 for the ladder, e.g. 'state of the art=78.3'",
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from analysis.report import write_report
        from trainer import InputError

        spec, url = study_and_url(args)
        url = upgraded(url)
        reference = {}
        for item in args.reference:
            name, _, value = item.rpartition("=")
            try:
                reference[name.strip()] = float(value)
            except ValueError:
                raise InputError(f"--reference takes NAME=TOP1, got {item!r}") from None
            if not name.strip():
                raise InputError(f"--reference takes NAME=TOP1, got {item!r}")
        path = write_report(url, spec.name, args.out, reference=reference or None)
        console().print(f"wrote {path}")
        return 0


class Dashboard(Verb):
    name = "dashboard"
    help = "serve optuna-dashboard on the study's storage"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=number(int, 1, "port"), default=8080)

    def take_action(self, args: argparse.Namespace) -> int:
        from optuna_dashboard import run_server

        from nbtl_search.store.connection import masked, open_rdb

        spec, url = study_and_url(args)
        storage = open_rdb(url, heartbeat=False, create=False)
        console().print(
            f"optuna-dashboard for {masked(url)} on http://{args.host}:{args.port} (Ctrl-C stops)"
        )
        try:
            run_server(storage, host=args.host, port=args.port)
        except KeyboardInterrupt:
            pass
        return 0
