"""What every verb shares: the `Verb` shape, argument types, the study file and its storage URL."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from nbtl_search.study.spec import StudySpec


class Verb:
    """One `nbtl-search VERB`: `help` is its one-line description; `study` says whether it takes
    a STUDY.yaml; `add_arguments` declares its flags, `take_action` runs it and returns the exit
    code. Bad input raises one of the user errors (`cli.main` prints one line, exit 2)."""

    name: ClassVar[str]
    help: ClassVar[str]
    study: ClassVar[bool] = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Flags beyond STUDY.yaml and --storage."""

    def take_action(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def number(kind: type, low: float, name: str = "") -> Callable[[str], float]:
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


COUNT = number(int, 1, "count")  # a number of trials, workers, seeds, ...
INDEX = number(int, 0, "index")
SECONDS = number(float, 1, "seconds")


def cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-image-cache",
        dest="image_cache",
        action="store_false",
        help="decode image files in every epoch instead of once per machine",
    )


def study_and_url(args: argparse.Namespace) -> tuple[StudySpec, str]:
    """The study file and its storage: --storage, else $NBTL_STORAGE, else the file's `storage`."""
    from nbtl_search.study.spec import load_spec

    spec = load_spec(args.study)
    return spec, resolve_url(args.storage, spec.storage)


def resolve_url(given: str | None, fallback: str) -> str:
    from nbtl_search.run.processes import STORAGE_ENV
    from nbtl_search.store.connection import check_url

    url = given if given is not None else os.environ.get(STORAGE_ENV) or fallback
    check_url(url)  # an empty or malformed URL fails here, not as a database in the current folder
    return url


def upgraded(url: str) -> str:
    """`url` after its tables are brought to this version's schema (`store.migrations`), for the
    verbs that hand it to `analysis`, which only reads; a database with no study is refused."""
    from nbtl_search.store.results import ResultStore

    ResultStore(url, create=False).close()
    return url


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def given(value: int | None, default: int) -> int:
    return default if value is None else value


def write_note(url: str, spec: StudySpec) -> None:
    """Put the optimal-vs-default summary on the study's optuna-dashboard page."""
    from nbtl_search.ui.dashboard_note import write_note

    write_note(url, spec)


def console():  # -> rich.console.Console
    """The console verbs print to; piped output keeps whole lines (logs, grep)."""
    from rich.console import Console

    return Console(soft_wrap=True)
