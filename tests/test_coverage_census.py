"""bench/coverage.py's census: every equation is counted under exactly one treatment."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

_PATH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "coverage.py"


def _bench():
    # loaded under its own name: "coverage" is also the coverage.py package
    spec = importlib.util.spec_from_file_location("jaxlrp_bench_coverage", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _net(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"])
    h = h + jax.lax.stop_gradient(h) * 0.0  # a stop on the path
    return jnp.tanh(h) @ p["w2"]


def test_census_partitions_the_equations_and_checks_the_identity():
    cov = _bench()
    rng = np.random.default_rng(0)
    p = {"w1": rng.normal(size=(4, 5)), "b1": rng.normal(size=5), "w2": rng.normal(size=(5, 3))}
    x = rng.normal(size=(2, 4))
    counts = cov.census(_net, (p, x), None)
    parts = sum(v for k, v in counts.items() if k not in ("equations", "layers"))
    assert parts == counts["equations"]
    assert counts["node:dense"] == 2 and counts["folded"] == 1
    relu = lambda p, x: jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
    assert cov.identity_error(relu, (p, x)) < 1e-12
    assert cov.identity_error(_net, (p, x)) > 1e-3  # tanh: no identity
