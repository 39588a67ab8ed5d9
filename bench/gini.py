"""Gini sparseness: XLA's float sort vs the sort of the int32 bit patterns.

    python bench/gini.py [--n 64] [--d 150528] [--repeats 10] [--rounds 3]

Both compute jaxlrp.metrics.sparseness' sorted magnitudes on (n, d) float32
relevance (default: 64 ImageNet-sized maps, 224*224*3); the results are checked to
be identical, and the wall time of each jitted sort is printed (CPU): interleaved
rounds, medians of ``--repeats`` calls per round, median over rounds (bench/_timing.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp import metrics
from jaxlrp.metrics import _complexity

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _timing  # noqa: E402  (bench/_timing.py, the scripts' shared timing)


def float_sort(a):
    return jnp.sort(jnp.abs(a), axis=1)


def bits_sort(a):
    return _complexity._sort_magnitudes(jnp.abs(a))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=224 * 224 * 3)
    ap.add_argument("--repeats", type=int, default=10, help="calls per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    args = ap.parse_args()
    a = jax.random.normal(jax.random.key(0), (args.n, args.d), jnp.float32)
    f, b = jax.jit(float_sort), jax.jit(bits_sort)
    assert np.array_equal(np.asarray(f(a)), np.asarray(b(a)))
    g = jax.jit(metrics.sparseness)
    rounds = _timing.interleaved({"float": lambda: f(a), "bits": lambda: b(a), "gini": lambda: g(a)},
                                 args.repeats, args.rounds)
    tf, tb, tg = (_timing.median(rounds[k]) for k in ("float", "bits", "gini"))
    print(f"{jax.devices()[0].platform} n={args.n} d={args.d}: float sort {tf * 1e3:.1f} ms, "
          f"bit-pattern sort {tb * 1e3:.1f} ms, speed-up {tf / tb:.2f}x; sparseness (bit sort) {tg * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
