"""The ``jaxlrp`` command: ``jaxlrp demo [--out DIR] [--seed N] ...``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import demo

    ap = argparse.ArgumentParser(prog="jaxlrp", description="Layer-wise Relevance Propagation for JAX")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    d = sub.add_parser("demo", help="train a small CNN on synthetic shapes, explain it, write heatmaps and metrics")
    demo.add_arguments(d)
    d.set_defaults(run=demo.main_demo)
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
