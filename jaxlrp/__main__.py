"""The ``jaxlrp`` command: ``jaxlrp demo [--out DIR] [--seed N] ...``, ``jaxlrp --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]

_DEMO_HELP = "train a small CNN on synthetic shapes, explain it, write heatmaps and metrics"


def _missing_extra(error: ImportError):
    def run(args: argparse.Namespace) -> int:
        print(f"jaxlrp demo: error: {error.name or error} is not installed; "
              "install the demo's dependencies with: pip install 'jaxlrp[demo]'", file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, validate it before any work, run the command.

    Returns the exit status: 0 on success, 2 for invalid arguments (argparse's
    convention; the message goes to stderr, without a traceback).
    """
    ap = argparse.ArgumentParser(prog="jaxlrp", description="Layer-wise Relevance Propagation for JAX")
    ap.add_argument("--version", action="version", version=f"jaxlrp {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    d = sub.add_parser("demo", help=_DEMO_HELP, description=_DEMO_HELP)
    try:
        from . import demo
    except ImportError as e:  # flax, optax or pillow missing: say which extra to install
        d.add_argument("rest", nargs=argparse.REMAINDER)
        d.set_defaults(run=_missing_extra(e))
    else:
        demo.add_arguments(d)
        d.set_defaults(run=demo.main_demo)
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
