"""PLRP-M on deep random networks (issue 13 item 6): magnitude and conservation.

For a 45-layer bias-free ReLU MLP and a 12-conv bias-free CNN (float64, random
weights scaled sqrt(2/fan-in)), PLRP-M (p = 0.3) on top of LRP-0 and of
LRP-epsilon (1e-6): the ratio of max |R| at the input to the base rule's, and the
conservation error |sum R - f_c(x)| / |f_c(x)| (median over examples).

    PYTHONPATH=. python bench/plrp_stability.py
"""

from __future__ import annotations

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, "tests")

import nets  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp import composites, rules, variants  # noqa: E402


def mlp(depth=45, width=24):
    return [item for _ in range(depth - 1) for item in (("dense", width), ("relu",))] + [("dense", 5)], (16,)


def cnn(depth=12):
    spec = [item for _ in range(depth) for item in (("conv", 3, 8, 1, 1, 1), ("relu",))]
    return spec + [("flatten",), ("dense", 5)], (8, 8, 3)


def measure(spec, shape, base, p=0.3, n=16, seed=0):
    rng = np.random.default_rng(seed)
    layers = nets.random_layers(rng, spec, shape, bias=False)
    # He scaling, so that activations keep their size through the ReLUs
    layers = [(l[0], l[1] * np.sqrt(2.0)) + tuple(l[2:]) if l[0] in ("dense", "conv") else l for l in layers]
    fn, params = nets.build(layers)
    x = rng.normal(size=(n,) + shape)
    f = np.asarray(fn(params, x))
    target = f.argmax(-1)
    fc = f[np.arange(n), target]
    out = {}
    for name, comp in (("base", base), ("m", variants.pruned(base, p, mode="m"))):
        rel = np.asarray(jax.jit(lambda pa, x: jaxlrp.lrp(fn, comp)(pa, x, target=target))(params, x))
        out[name] = rel.reshape(n, -1)
    peak = np.abs(out["m"]).max(1) / np.abs(out["base"]).max(1)
    cons = {k: np.abs(v.sum(1) - fc) / np.abs(fc) for k, v in out.items()}
    finite = bool(np.all(np.isfinite(out["m"])))
    return {"finite": finite, "peak_ratio_median": float(np.median(peak)), "peak_ratio_max": float(peak.max()),
            "cons_base_median": float(np.median(cons["base"])), "cons_m_median": float(np.median(cons["m"])),
            "cons_m_max": float(cons["m"].max())}


def main():
    for net, (spec, shape) in (("MLP-45", mlp()), ("CNN-12", cnn())):
        for bname, base in (("LRP-0", composites.Composite([("linear", rules.Zero())])),
                            ("Epsilon", composites.Composite())):
            r = measure(spec, shape, base)
            print(f"{net:7s} {bname:8s} finite={r['finite']} max|R| ratio median {r['peak_ratio_median']:.3g} "
                  f"(max {r['peak_ratio_max']:.3g}); conservation error median base {r['cons_base_median']:.2g} "
                  f"PLRP-M {r['cons_m_median']:.2g} (max {r['cons_m_max']:.2g})")


if __name__ == "__main__":
    main()
