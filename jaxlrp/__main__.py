"""The ``jaxlrp`` command: ``jaxlrp demo [--out DIR] [--seed N] ...``, ``jaxlrp --version``.

Arguments are parsed and validated before JAX is imported, so ``--help`` and
argument errors answer at once; the demo's own usage line comes with its errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _demo_cli
from ._version import __version__

__all__ = ["main"]

_DEMO_HELP = "train a small CNN on synthetic shapes, explain it, write heatmaps and metrics"


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    ap = argparse.ArgumentParser(prog="jaxlrp", description="Layer-wise Relevance Propagation for JAX")
    ap.add_argument("--version", action="version", version=f"jaxlrp {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    d = sub.add_parser("demo", help=_DEMO_HELP, description=_DEMO_HELP)
    _demo_cli.add_arguments(d)
    return ap, d


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, validate it before any work, run the command.

    Returns the exit status: 0 on success, 2 for invalid arguments (argparse's
    convention: the usage line of the command and the message go to stderr,
    without a traceback).
    """
    ap, demo_parser = _parser()
    args, unknown = ap.parse_known_args(argv)
    if unknown:  # name them with the demo's usage, not the top level's
        demo_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    cfg = _demo_cli.config(demo_parser, args)
    try:
        from . import demo
    except ImportError as e:  # flax, optax, pillow or matplotlib missing: say which extra to install
        print(f"jaxlrp demo: error: {e.name or e} is not installed; "
              "install the demo's dependencies with: pip install 'jaxlrp[demo]'", file=sys.stderr)
        return 2
    return demo.run_and_report(cfg)


if __name__ == "__main__":
    sys.exit(main())
