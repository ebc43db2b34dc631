"""`demo`: the whole product offline on 2 CPU cores."""

from __future__ import annotations

import argparse

from .base import INDEX, Verb, console, resolve_url


class Demo(Verb):
    name = "demo"
    help = "offline CPU demo: baseline, search, re-ranking, ladder, final test (~3 min)"
    study = False

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", default=None, help="default: studies/demo_digits.yaml")
        p.add_argument(
            "--seed",
            type=INDEX,
            default=0,
            help="demo seed: changes the data split and every training seed",
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.study.spec import load_spec
        from nbtl_search.ui.demo import DEMO_STUDY, run_demo

        spec = load_spec(args.study or DEMO_STUDY)
        url = resolve_url(args.storage, spec.storage)
        return run_demo(spec, url, console(), seed=args.seed)
