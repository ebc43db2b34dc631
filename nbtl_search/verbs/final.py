"""`final`: re-rank on validation, retrain the ladder on train+val, test it."""

from __future__ import annotations

import argparse

from .base import COUNT, INDEX, Verb, cache_arg, console, given, study_and_url, write_note


class Final(Verb):
    name = "final"
    help = (
        "re-rank on validation, then retrain the ladder from the best default to the "
        "optimum on train+val and test it"
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--seeds", type=COUNT, help="seeds per config (default: the study's final.seeds)"
        )
        p.add_argument(
            "--top-k",
            type=COUNT,
            help="retrain the top K search configs (their ensemble; default final.top_k)",
        )
        p.add_argument(
            "--rerank-top-k",
            type=INDEX,
            help="configs per role re-run on validation before choosing (0 = off; default "
            "final.rerank_top_k)",
        )
        p.add_argument(
            "--rerank-seeds",
            type=INDEX,
            help="extra seeds per re-ranked config (default final.rerank_seeds)",
        )
        p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
        p.add_argument(
            "--jobs", type=COUNT, default=1, help="runs trained at once, each in its own process"
        )
        cache_arg(p)

    def take_action(self, args: argparse.Namespace) -> int:
        import analysis
        from nbtl_search.final.retrain import FinalOptions, run_final

        from .base import default_device

        out = console()
        spec, url = study_and_url(args)
        knobs = spec.final
        opts = FinalOptions(
            seeds=given(args.seeds, knobs.seeds),
            top_k=given(args.top_k, knobs.top_k),
            rerank_top_k=given(args.rerank_top_k, knobs.rerank_top_k),
            rerank_seeds=given(args.rerank_seeds, knobs.rerank_seeds),
            device=args.device or default_device(),
            jobs=args.jobs,
            image_cache=args.image_cache,
        )
        run_final(spec, url, opts, out)
        write_note(url, spec)
        out.print(analysis.summary_markdown(url, spec.name))
        return 0
