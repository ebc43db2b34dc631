"""`probe`: how well the pre-trained weights fit the target, and the settings that suggests."""

from __future__ import annotations

import argparse
import sys

from .base import COUNT, Verb, console, study_and_url


class Probe(Verb):
    name = "probe"
    help = (
        "measure how well the pre-trained weights fit the target (one forward pass) and "
        "suggest settings"
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--suggest",
            action="store_true",
            help="print a study file that starts from the suggestion, ranges narrowed around it",
        )
        p.add_argument("--source-dataset", help="the source's dataset (for the domain similarity)")
        p.add_argument("--source-data-dir", help="its data_dir, if it has one")
        p.add_argument(
            "--scores",
            help="comma-separated subset of: logme, probe_acc, hscore, leep, nce, "
            "domain_similarity (default: all that apply)",
        )
        p.add_argument(
            "--max-images",
            type=COUNT,
            default=2000,
            help="class-balanced subset of the train split (default 2000)",
        )
        p.add_argument("--device", default=None, help="default: cuda if available, else cpu")

    def take_action(self, args: argparse.Namespace) -> int:
        from nbtl_search.probe import measure, rule
        from nbtl_search.probe.warm_study import warm_study_yaml
        from nbtl_search.run.preflight import preflight
        from nbtl_search.store.connection import StorageError
        from nbtl_search.store.results import ResultStore
        from nbtl_search.ui.probe_table import probe_table
        from trainer import InputError

        from .base import default_device

        spec, url = study_and_url(args)
        preflight(spec)  # the data, the checkpoint, and a model with a layer partition to probe
        try:  # read-only: a study that has not run yet has no baseline to take the lr from
            reader = ResultStore(url, create=False)
            lr, lr_from = rule.base_lr(spec, reader)
            reader.close()
        except StorageError:
            lr, lr_from = rule.base_lr(spec, None)
        scores = tuple(s.strip() for s in args.scores.split(",")) if args.scores else measure.SCORES
        source = None
        if args.source_dataset:
            source = {
                "dataset": args.source_dataset,
                "data_dir": args.source_data_dir,
                "extra": {},
            }
        elif args.source_data_dir:
            raise InputError("--source-data-dir needs --source-dataset")
        result = measure.run_probe(
            spec,
            base_lr=lr,
            scores=scores,
            source_dataset=source,
            max_images=args.max_images,
            device=args.device or default_device(),
        )
        store = ResultStore(url)  # everything checked and computed: now write
        store.replace_probe(spec.name, measure.rows(result))
        store.close()
        console().print(probe_table(spec, result, lr_from))
        if args.suggest:
            sys.stdout.write(warm_study_yaml(spec, result.suggestion))
        return 0
