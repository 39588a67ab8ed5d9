"""Gini sparseness: XLA's float sort vs the sort of the int32 bit patterns.

    python bench/gini.py [--n 64] [--d 150528] [--repeats 10]

Both compute jaxlrp.metrics.sparseness' sorted magnitudes on (n, d) float32
relevance (default: 64 ImageNet-sized maps, 224*224*3); the results are checked to
be identical, and the median wall time of each jitted sort is printed (CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlrp import metrics


def float_sort(a):
    return jnp.sort(jnp.abs(a), axis=1)


def bits_sort(a):
    return metrics._sort_magnitudes(jnp.abs(a))


def timed(f, a, repeats):
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=224 * 224 * 3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    a = jax.random.normal(jax.random.key(0), (args.n, args.d), jnp.float32)
    f, b = jax.jit(float_sort), jax.jit(bits_sort)
    assert np.array_equal(np.asarray(f(a)), np.asarray(b(a)))
    tf, tb = timed(f, a, args.repeats), timed(b, a, args.repeats)
    g = jax.jit(metrics.sparseness)
    tg = timed(g, a, args.repeats)
    print(f"{jax.devices()[0].platform} n={args.n} d={args.d}: float sort {tf * 1e3:.1f} ms, "
          f"bit-pattern sort {tb * 1e3:.1f} ms, speed-up {tf / tb:.2f}x; sparseness (bit sort) {tg * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
