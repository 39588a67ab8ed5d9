"""Agreement of the new jaxlrp.metrics with Quantus (and Captum's Infidelity) on the same numbers.

A small torch MLP and the same function in JAX (NHWC input, transposed to NCHW
inside) score the same inputs and relevance. The random parts are fixed so both
sides see the same numbers: IROF gets Quantus' own SLIC segments (scikit-image, as
Quantus computes them) and a constant baseline; ROAD runs with ``noise=0`` (the
imputation alone); monotonicity correlation with a constant baseline; random logit
with the other classes Quantus draws from its seed (recomputed here) and Spearman
similarity; Infidelity (Captum's definition) with Captum fed the same perturbations.
Quantus scores IROF and monotonicity on softmax probabilities by default; here it is
called with ``softmax=False`` (logits, as the jaxlrp side gets). Quantus 0.6.0 calls
``np.trapz``, which NumPy 2.4 removed: it is aliased to ``np.trapezoid`` here.

    python bench/compare_quantus.py          # prints a table, writes bench/quantus.md

Needs torch, quantus, captum and scikit-image (the optional torch environment).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

N, C, H, W, K = 4, 3, 16, 16, 5


def models(seed=0):
    import jax.numpy as jnp
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, K)).eval()
    w1, b1 = (jnp.asarray(p.detach().numpy()) for p in (net[1].weight, net[1].bias))
    w2, b2 = (jnp.asarray(p.detach().numpy()) for p in (net[3].weight, net[3].bias))

    def f(x):  # NHWC
        z = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        return jnp.tanh(z @ w1.T + b1) @ w2.T + b2

    return net, f


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main() -> int:
    try:
        import captum.metrics
        import quantus
        import torch
        import skimage.segmentation  # noqa: F401  (checked here, used in _single_channel)
    except ImportError as e:
        print(f"missing optional package: {e}")
        return 0
    import jax

    from jaxlrp import metrics

    warnings.filterwarnings("ignore")
    if not hasattr(np, "trapz"):  # Quantus 0.6.0 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid  # noqa: NPY201, NPY002  (reproduces Quantus' own draws)
    net, f = models()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, C, H, W)).astype(np.float32)
    xj = x.transpose(0, 2, 3, 1)
    y = np.asarray(f(xj)).argmax(1)
    a = rng.normal(size=(N, C, H, W)).astype(np.float32)
    aj = a.transpose(0, 2, 3, 1)
    kw = dict(normalise=False, abs=False, disable_warnings=True, display_progressbar=False)
    rows = []

    rows += _single_channel(x, a, kw)

    q = quantus.MonotonicityCorrelation(nr_samples=2, features_in_step=32, perturb_baseline=0.0,
                                        return_aggregate=False, **kw)
    q_scores = q(model=net, x_batch=x, y_batch=y, a_batch=a, device="cpu", softmax=False)
    j_scores = _monotonicity_chw(f, x, a, y)
    rows.append(("monotonicity correlation (baseline 0)", _rel(j_scores, q_scores)))

    def explain(model, inputs, targets, **_):
        g = jax.vmap(jax.grad(lambda v, t: f(v[None])[0, t]))(inputs.transpose(0, 2, 3, 1), np.asarray(targets))
        return np.asarray(g * inputs.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    a_gxi = explain(None, x, y)
    q = quantus.RandomLogit(num_classes=K, similarity_func=quantus.similarity_func.correlation_spearman,
                            return_aggregate=False, **kw)
    q_scores = q(model=net, x_batch=x, y_batch=y, a_batch=a_gxi, device="cpu", explain_func=explain)
    np.random.seed(42)  # noqa: NPY201, NPY002  (reproduces Quantus' own draws)
    idx = np.random.randint(0, K - 1, N)  # noqa: NPY201, NPY002  (reproduces Quantus' own draws)
    other = np.array([[c for c in range(K) if c != y[n]][idx[n]] for n in range(N)])
    explain_j = lambda v, t: jax.vmap(jax.grad(lambda u, s: f(u[None])[0, s]))(v, t) * v
    j_scores = metrics.random_logit(lambda v, t: explain_j(v, t).transpose(0, 3, 1, 2), xj, y, other=other)
    rows.append(("random logit (Spearman, Quantus' draw of the other class)", _rel(j_scores, q_scores)))

    n_samples = 6
    pert = rng.normal(size=(N * n_samples, C, H, W)).astype(np.float32) * 0.1

    def perturb(inputs):
        p = torch.from_numpy(pert)
        return p, inputs - p

    c_scores = captum.metrics.infidelity(net, perturb, torch.from_numpy(x), torch.from_numpy(a),
                                         target=torch.from_numpy(y), n_perturb_samples=n_samples).numpy()
    p_j = pert.reshape(N, n_samples, C, H, W).transpose(1, 0, 3, 4, 2)  # captum repeats each example n times
    j_scores = metrics.infidelity(f, xj, aj, y, perturbations=p_j)
    rows.append(("Infidelity vs Captum (same perturbations)", _rel(j_scores, c_scores)))

    md = ["Agreement of jaxlrp.metrics with Quantus " + quantus.__version__ + " and Captum (float32, "
          f"{N} inputs {C}x{H}x{W}, a tanh MLP; max relative difference over examples, ROAD: max abs "
          "difference of the accuracy curve). Command: `python bench/compare_quantus.py`", "",
          "| metric | max diff |", "|---|---|"]
    md += [f"| {name} | {d:.2e} |" for name, d in rows]
    text = "\n".join(md) + "\n"
    print(text)
    (pathlib.Path(__file__).resolve().parent / "quantus.md").write_text(text)
    return 0


def _single_channel(x, a, kw) -> list:
    """IROF and ROAD, which Quantus computes for one-channel images only."""
    import quantus
    from skimage.segmentation import slic

    from jaxlrp import metrics

    rows = []
    x1, a1 = x[:, :1], a[:, :1]  # Quantus' IROF and ROAD assume one channel (masks of shape (N, 1, H, W))
    net1, f1 = models_single()
    y1 = np.asarray(f1(x1.transpose(0, 2, 3, 1))).argmax(1)
    q = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, **kw)
    q_scores = q(model=net1, x_batch=x1, y_batch=y1, a_batch=a1, device="cpu", softmax=False)
    segs = np.stack([slic(np.moveaxis(im, 0, -1).astype("double"), start_label=0) for im in x1])
    j_scores = metrics.irof(f1, x1.transpose(0, 2, 3, 1), a1[:, 0], y1, segments=segs, baseline=0.0)
    rows.append(("IROF (SLIC segments, baseline 0, 1 channel)", _rel(j_scores, q_scores)))

    pct = [10, 30, 50, 70, 90]
    q = quantus.ROAD(percentages=pct, noise=0.0, return_aggregate=False, **kw)
    q(model=net1, x_batch=x1, y_batch=y1, a_batch=a1, device="cpu")
    q_curve = np.array([q.evaluation_scores[p] for p in pct])
    j_curve = np.asarray(metrics.road(f1, x1.transpose(0, 2, 3, 1), a1[:, 0], y1, percentages=pct)).mean(0)
    rows.append(("ROAD accuracy curve (noise 0, 1 channel)", float(np.max(np.abs(j_curve - q_curve)))))

    return rows


def _monotonicity_chw(f, x, a, y):
    """Monotonicity in Quantus' feature order (NCHW flattening): jaxlrp on NCHW arrays."""
    import jax.numpy as jnp

    from jaxlrp import metrics

    g = lambda v: f(jnp.transpose(v, (0, 2, 3, 1)))
    return metrics.monotonicity_correlation(g, x, a, y, draws=np.zeros((1,) + x.shape, np.float32),
                                            features_per_step=32)


def models_single(seed=1):
    import jax.numpy as jnp
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, K)).eval()
    w1, b1 = (jnp.asarray(p.detach().numpy()) for p in (net[1].weight, net[1].bias))
    w2, b2 = (jnp.asarray(p.detach().numpy()) for p in (net[3].weight, net[3].bias))

    def f(x):
        z = x.reshape(x.shape[0], -1)
        return jnp.tanh(z @ w1.T + b1) @ w2.T + b2

    return net, f


if __name__ == "__main__":
    sys.exit(main())
