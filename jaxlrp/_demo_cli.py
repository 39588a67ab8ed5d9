"""The command line of ``jaxlrp demo``: its settings, arguments and their validation.

Kept apart from :mod:`jaxlrp.demo` and free of JAX, Flax and NumPy imports, so that
``jaxlrp --help`` and argument errors answer at once, before anything is imported
or trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Callable

#: The smallest training set: one batch of :func:`jaxlrp.models.fit`.
MIN_TRAIN = 64


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one demo run (the command-line options)."""

    out: pathlib.Path = pathlib.Path("out")
    seed: int = 0
    train: int = 3000
    steps: int = 400
    explain: int = 128
    show: int = 6
    quiet: bool = False


def _integer_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {value}")
        return n

    return parse


_positive = _integer_at_least(1, "positive")
_non_negative = _integer_at_least(0, "non-negative")


def _directory(value: str) -> pathlib.Path:
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is not a directory")
    for parent in path.absolute().parents:  # the first existing ancestor must be a writable folder
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"cannot create {value}: {parent} is not a directory")
            break
    return path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options, with :class:`Config`'s defaults."""
    ap.add_argument("--out", type=_directory, default=Config.out,
                    help="output directory, created if absent (default: out)")
    ap.add_argument("--seed", type=_non_negative, default=Config.seed, help="random seed, >= 0 (default: 0)")
    ap.add_argument("--train", type=_positive, default=Config.train,
                    help=f"training images, >= {MIN_TRAIN} (default: %(default)s)")
    ap.add_argument("--steps", type=_positive, default=Config.steps, help="training steps (default: %(default)s)")
    ap.add_argument("--explain", type=_positive, default=Config.explain,
                    help="held-out images explained and scored (default: %(default)s)")
    ap.add_argument("--show", type=_positive, default=Config.show,
                    help="explained images in the heatmap grid, <= --explain (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")


def config(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The run's :class:`Config`, every combination checked before any work.

    An invalid one ends the program through ``ap.error`` (the demo's usage line and
    the message on stderr, exit status 2), as argparse does for a single option.
    """
    if args.train < MIN_TRAIN:
        ap.error(f"argument --train: must be at least {MIN_TRAIN} (one training batch), got {args.train}")
    if args.show > args.explain:
        ap.error(f"argument --show: the grid shows explained images, so --show ({args.show}) must not exceed "
                 f"--explain ({args.explain})")
    cfg = Config(args.out, args.seed, args.train, args.steps, args.explain, args.show, args.quiet)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)  # fail here, not after the run
    except OSError as e:
        ap.error(f"argument --out: {cfg.out}: {e.strerror}")
    return cfg
