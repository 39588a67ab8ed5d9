"""Wall-clock timing shared by the benchmark scripts (``run.py``, ``compare_zennit.py``,
``gini.py``, ``storage.py``).

One way of timing everywhere: a call is timed from before it starts until its
result is ready (:func:`block` waits for JAX's asynchronous dispatch; anything else
is returned as it is), a *round* is the median of ``repeats`` such calls, and
functions that are compared are timed in interleaved rounds (one round of each,
then the next round of each, ...) after one warm-up call each, so that a busy spell
of a shared machine hits all of them; the figure reported is the median over the
rounds, and :func:`spread` of the round medians says how noisy they were.

    rounds = interleaved({"grad": lambda: g(v, x), "lrp": lambda: f(v, x)}, repeats=20, rounds=3)
    t_grad, t_lrp = median(rounds["grad"]), median(rounds["lrp"])
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Sequence

__all__ = ["block", "stopwatch", "time_call", "interleaved", "median", "spread"]


def block(result: Any) -> Any:
    """Wait until ``result`` is computed: ``jax.block_until_ready`` for JAX values
    (only if JAX is already imported: the storage benchmark never imports it),
    ``result`` itself otherwise."""
    jax = sys.modules.get("jax")
    return jax.block_until_ready(result) if jax is not None else result


class _Elapsed:
    seconds: float = float("nan")


@contextlib.contextmanager
def stopwatch() -> Iterator[_Elapsed]:
    """``with stopwatch() as t: ...``; then ``t.seconds`` is the block's wall time."""
    elapsed = _Elapsed()
    t0 = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.perf_counter() - t0


def time_call(f: Callable[[], Any], repeats: int = 1, warmup: int = 0) -> float:
    """Median wall time (s) of ``repeats`` calls of ``f()``, each waited for with
    :func:`block`, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        block(f())
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        block(f())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, rounds: int,
                warmup: int = 1) -> Dict[str, List[float]]:
    """Time several functions in interleaved rounds.

    Each function is called ``warmup`` times untimed first; then, ``rounds`` times,
    every function gets one round (:func:`time_call` with ``repeats``) in turn.
    Returns the round medians (s) per name, in the order of ``fns``.
    """
    for f in fns.values():
        for _ in range(warmup):
            block(f())
    out: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(max(1, rounds)):
        for name, f in fns.items():
            out[name].append(time_call(f, repeats))
    return out


def median(xs: Sequence[float]) -> float:
    """The median of ``xs`` (of round medians, usually)."""
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> float:
    """``(max - min) / median`` of ``xs``: how far the rounds disagree (noise)."""
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m > 0 else float("nan")
