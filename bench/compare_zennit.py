"""Benchmark: jaxlrp against Zennit (PyTorch) on the same torchvision weights.

For each (model, batch) the torchvision model is built with random, seeded weights
(``weights=None``; nothing is downloaded), its ``state_dict`` is exported to numpy
and loaded into jaxlrp with :func:`jaxlrp.models.load_torchvision`. Both sides get
the same input batch (NCHW for torch, NHWC for JAX: ImageNet-normalised random
pixels) and the same one-hot output seed (the torch model's predicted class), i.e.
Zennit's ``grad_output`` and jaxlrp's ``output_relevance=``. The script reports

* agreement: the logits' max abs difference, then per composite the relevance's
  max relative difference ``max|R_jax - R_zennit| / max|R_zennit|``, the Pearson
  correlation of the flattened maps and the relevance sums of both sides; once
  against stock Zennit and once against Zennit *aligned* with the function jaxlrp
  explains (see below); and a *float32 floor*: the largest max relative difference
  between Zennit's map of the input and its maps of the input times
  ``1 + 1e-7 n`` (``n`` standard normal, 3 draws), i.e. what rounding at float32
  resolution alone moves. Disagreements at or below the floor are rounding, not
  semantics: ReLU signs and max-pooling winners of near-tied activations flip, and
  LRP-epsilon with epsilon 1e-6 amplifies near-zero denominators (random-weight
  networks have many);
* wall time, side by side: the Zennit explanation (forward + backward of the model
  inside ``composite.context(model)``, hooks registered once), a plain PyTorch
  gradient of the same logit, the ``jax.jit``-ed jaxlrp explanation and the jitted
  ``jax.grad`` of the same logit; all warmed up, timed in interleaved rounds,
  medians of ``--repeats`` calls per round, median over rounds; torch uses
  ``torch.set_num_threads(os.cpu_count())``. Ratios: jaxlrp / Zennit, and each
  library against its own framework's gradient (timing: ``bench/_timing.py``). The
  spread column is the largest ``(max - min) / median`` of the round medians of a
  row's four timings (noise).

Composites, identical on both sides (defaults: epsilon 1e-6, stabiliser 1e-6,
gamma 0.25): ``epsilon`` (Epsilon on every conv/linear layer: jaxlrp's default
``Composite()``; in Zennit a ``LayerMapComposite`` over ``layer_map_base()``),
``epsilon_plus``, ``epsilon_plus_flat``, ``epsilon_gamma_box`` (the box is the
ImageNet-normalised pixel range, per channel, on both sides),
``epsilon_alpha2_beta1`` and ``epsilon_alpha2_beta1_flat``; and Zennit's other
presets, ``excitation_backprop`` (z+ on every conv/linear layer) and the modified
gradients ``guided_backprop``, ``deconvnet`` and ``beta_smooth`` (the gradient
everywhere but on the ReLUs; their maps are gradients, not times the input).
Zennit 0.5.1's ``ReLUBetaSmooth`` keeps the tensor of the ReLU's input from the
module's last forward call: torchvision's in-place ReLUs overwrite it with the
output (``sigmoid(beta relu(z))``, 0.5 where ``z < 0``), so stock Zennit's
``beta_smooth`` disagrees on every torchvision model; the *aligned* Zennit runs
the ReLUs out of place. On ResNet, whose blocks call one ReLU module two or three
times, the stored input is also the last call's, so even aligned ``beta_smooth``
rows of ResNets do not agree, by Zennit's error. BatchNorm: jaxlrp folds
it itself; Zennit gets its canonizers (``SequentialMergeBatchNorm`` for VGG,
``ResNetCanonizer`` for ResNet, which also turns the residual adds into ``Sum``
modules for the Norm rule).

Stock Zennit (0.5.1) explains a slightly different function than jaxlrp, in two
places, neither of them a rule: (1) its BatchNorm merge leaves each BatchNorm
computing ``x / sqrt(1 + eps)`` instead of the identity, so the canonized
ResNet/VGG-bn is not the original model (ResNet-50's logits move by ~1e-4
relative) and ``Pass`` hands the relevance through these BatchNorms unscaled;
(2) it puts the Norm rule on every average pooling: on VGG's
``AdaptiveAvgPool2d(7)``, the identity at 224x224 (and absent from jaxlrp's
program), that is ``R * x / (x + 1e-6 sign x)``; on ResNet's global mean it
stabilises the mean where jaxlrp stabilises the sum. The *aligned* Zennit merges
BatchNorm exactly (``running_var = 1 - eps``), passes relevance through the
identity pooling and divides the global pool's stabiliser by the pooled area; it
is used for the agreement columns only, the timings are stock Zennit. In float64
(checked by hand on VGG-16, VGG-11-bn, ResNet-18 and ResNet-50, all six
composites) aligned Zennit and jaxlrp agree to ~1e-11 (epsilon) and ~1e-14 (the
others); stock Zennit differs by up to ~2e-2 (epsilon) and ~3e-4 (the others) on
ResNet-50 for these two reasons alone.

By default the BatchNorm statistics/affine parameters and the biases are re-drawn
(seeded) after torchvision's initialisation, which sets them to 0/1 and so would
not exercise BatchNorm folding or the rules' bias terms; ``--plain-init`` keeps
torchvision's initialisation.

PyTorch, torchvision and Zennit are optional; install them (CPU is enough) into a
separate environment next to jaxlrp::

    pip install torch==2.14.1 torchvision==0.29.1 zennit

Run::

    python bench/compare_zennit.py --models vgg11 --size 64 --repeats 2 --rounds 2 --out /tmp/quick
    python bench/compare_zennit.py --models vgg16 resnet50 --batch 1 --repeats 3 --rounds 3

writes ``bench/zennit.md`` and ``bench/zennit.json`` (see ``--out``) and prints the
tables. Without torch, torchvision or Zennit it prints what is missing and the
install command, and exits with status 0 (nothing is measured, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _timing  # noqa: E402  (bench/_timing.py, the scripts' shared timing)

MODELS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
          "resnet18", "resnet34", "resnet50")
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box",
              "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "excitation_backprop", "guided_backprop",
              "deconvnet", "beta_smooth")
GRADIENT_COMPOSITES = ("guided_backprop", "deconvnet", "beta_smooth")  # the gradient but on ReLUs: no Norm
DEFAULT_COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 zennit"
EXIT_MISSING = 0  # exit status when the optional dependencies are missing
PERTURB, FLOOR_SAMPLES = 1e-7, 3  # relative input noise (about 1 float32 ulp) and draws, for the floor

# torchvision's ImageNet preprocessing (the same numbers as jaxlrp.models.IMAGENET_*)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _missing() -> list:
    out = []
    for mod in ("torch", "torchvision", "zennit"):
        try:
            __import__(mod)
        except ImportError as e:  # also a broken install (e.g. a missing shared library)
            out.append(f"{mod} ({e})")
    return out


# ------------------------------------------------------------------------ the models


def torch_model(name: str, seed: int, plain_init: bool):
    """The torchvision model with seeded random weights, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    if not plain_init:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0.0, 0.1, generator=g)
                    m.running_mean.normal_(0.0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
                elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                    m.bias.normal_(0.0, 0.05, generator=g)
    return model.eval()


def inputs(batch: int, size: int, seed: int) -> np.ndarray:
    """ImageNet-normalised random pixels, NCHW float32."""
    pixels = np.random.default_rng(seed).uniform(0.0, 1.0, (batch, 3, size, size)).astype(np.float32)
    return (pixels - MEAN[:, None, None]) / STD[:, None, None]


def bounds() -> tuple:
    """Per-channel ``(low, high)`` of the normalised pixels, shape ``(3,)``."""
    return -MEAN / STD, (1.0 - MEAN) / STD


def _exact_merge_batch_norm():
    """Zennit's ``SequentialMergeBatchNorm`` leaving an exact identity behind.

    Zennit 0.5.1 folds BatchNorm into the linear layer before it and then sets the
    BatchNorm to ``mean 0, var 1, weight 1, bias 0``, which still computes
    ``x / sqrt(1 + eps)``: the canonized model is not the original function (the
    relevance, passed through the BatchNorm unchanged by ``Pass``, no longer matches
    the activations). This variant sets ``running_var = 1 - eps`` instead.
    """
    from zennit.canonizers import SequentialMergeBatchNorm

    class ExactMergeBatchNorm(SequentialMergeBatchNorm):
        @staticmethod
        def merge_batch_norm(modules, batch_norm):
            SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.running_var.data.fill_(1.0 - batch_norm.eps)

    return ExactMergeBatchNorm()


def zennit_composite(comp: str, model_name: str, aligned: bool = False, pool_hw: tuple = ()):
    """Zennit's composite of the name, with the model family's canonizers.

    ``aligned``: remove Zennit's two deviations from the exact model function that
    jaxlrp explains (see ``--help`` of the script and the module docstring): an exact
    BatchNorm merge, and on the average pooling either nothing (VGG's adaptive pool
    on a 7x7 map is the identity; ``Pass``) or a Norm rule whose stabiliser is
    divided by the pooled area ``pool_hw`` (ResNet's global mean; jaxlrp stabilises
    the sum, Zennit the mean).
    """
    import torch
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit import types as zt
    from zennit.canonizers import CompositeCanonizer, SequentialMergeBatchNorm
    from zennit.torchvision import (
        ResNetBasicBlockCanonizer,
        ResNetBottleneckCanonizer,
        ResNetCanonizer,
    )

    if not aligned:
        canonizers = [ResNetCanonizer() if model_name.startswith("resnet") else SequentialMergeBatchNorm()]
    elif model_name.startswith("resnet"):  # ResNetCanonizer with the exact merge
        merge = _exact_merge_batch_norm()
        canonizers = [CompositeCanonizer((merge, ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()))]
    else:
        canonizers = [_exact_merge_batch_norm()]
    first = []  # entries taking precedence over the composite's own layer map
    if aligned and pool_hw:
        if model_name.startswith("resnet"):
            first = [(zt.AvgPool, zr.Norm(stabilizer=1e-6 / (pool_hw[0] * pool_hw[1])))]
        elif tuple(pool_hw) == (7, 7):
            first = [(zt.AvgPool, zr.Pass())]
    if comp == "epsilon":
        layer_map = first + zc.layer_map_base() + [
            (zt.Convolution, zr.Epsilon(epsilon=1e-6)),
            (torch.nn.Linear, zr.Epsilon(epsilon=1e-6)),
        ]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if comp == "epsilon_gamma_box":
        low, high = (torch.from_numpy(b).reshape(1, 3, 1, 1) for b in bounds())
        return zc.EpsilonGammaBox(low=low, high=high, layer_map=first, canonizers=canonizers)
    if comp in GRADIENT_COMPOSITES:
        return zc.COMPOSITES[comp](canonizers=canonizers)
    cls = {
        "excitation_backprop": zc.ExcitationBackprop,
        "epsilon_plus": zc.EpsilonPlus,
        "epsilon_plus_flat": zc.EpsilonPlusFlat,
        "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
        "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
    }[comp]
    return cls(layer_map=first, canonizers=canonizers)


def jaxlrp_composite(comp: str):
    from jaxlrp import composites

    if comp == "epsilon":
        return composites.Composite()
    if comp == "epsilon_gamma_box":
        low, high = bounds()  # (3,): broadcasts against NHWC
        return composites.EpsilonGammaBox(low, high)
    return composites.get(comp)


# -------------------------------------------------------------------------- helpers


class _relus_not_inplace:
    """Within the block, the model's ``ReLU(inplace=True)`` modules compute out of place.

    Zennit 0.5.1's ``ReLUBetaSmooth`` keeps the ReLU's input tensor for the backward
    pass; an in-place ReLU (torchvision's VGG and ResNet) overwrites it with the
    output, so the rule sees ``sigmoid(beta relu(z))`` (0.5 where ``z < 0``)
    instead of ``sigmoid(beta z)``. The aligned Zennit runs out of place.
    """

    def __init__(self, model):
        import torch

        self.relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU) and m.inplace]

    def __enter__(self):
        for m in self.relus:
            m.inplace = False

    def __exit__(self, *exc):
        for m in self.relus:
            m.inplace = True



def _stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of ``a`` (jaxlrp) with the reference ``b`` (Zennit)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    scale = np.max(np.abs(b))
    corr = np.corrcoef(a, b)[0, 1] if np.std(a) > 0 and np.std(b) > 0 else float("nan")
    return {
        "max_rel_diff": float(np.max(np.abs(a - b)) / scale) if scale > 0 else float("nan"),
        "pearson": float(corr),
        "sum_jaxlrp": float(a.sum()),
        "sum_zennit": float(b.sum()),
        "finite": bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b))),
    }


# ---------------------------------------------------------------------------- cells


def bench_model(name: str, batch: int, size: int, comps: list, repeats: int, rounds: int,
                seed: int, plain_init: bool) -> list:
    """All composites of one (model, batch): agreement first, then interleaved timing."""
    import jax
    import jax.numpy as jnp
    import torch

    import jaxlrp
    from jaxlrp.models import load_torchvision

    model_t = torch_model(name, seed, plain_init)
    state = {k: v.detach().cpu().numpy() for k, v in model_t.state_dict().items()}
    model_j, variables = load_torchvision(name, state)
    del state

    x_nchw = inputs(batch, size, seed + 2)
    xt = torch.from_numpy(x_nchw)
    xj = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))

    pool_hw = []  # spatial size of the average pooling's input (for the aligned composites)
    handle = model_t.avgpool.register_forward_pre_hook(lambda m, args: pool_hw.extend(args[0].shape[-2:]))
    with torch.no_grad():
        logits_t = model_t(xt).numpy()
    handle.remove()
    logits_j = np.asarray(jax.jit(model_j.apply)(variables, xj))
    logit_diff = float(np.max(np.abs(logits_j - logits_t)))
    target = logits_t.argmax(-1)
    seed_np = np.eye(logits_t.shape[-1], dtype=np.float32)[target]  # one-hot, (batch, classes)
    seed_t, seed_j = torch.from_numpy(seed_np), jnp.asarray(seed_np)
    print(f"{name} b={batch} {size}x{size}: logits max |jax - torch| = {logit_diff:.3g} "
          f"(max |logit| {np.max(np.abs(logits_t)):.3g}), target {target.tolist()}", flush=True)

    # torch: explanation inside the composite's context, and the plain gradient
    def torch_grad_of(m, x=xt):
        def run():
            xg = x.clone().requires_grad_(True)
            (r,) = torch.autograd.grad(m(xg), xg, grad_outputs=seed_t)
            return r
        return run

    torch_grad = torch_grad_of(model_t)
    # the input perturbed at float32 resolution: how much Zennit's own map moves (the floor)
    rng = np.random.default_rng(seed + 3)
    x_perturbed = [torch.from_numpy((x_nchw * (1 + PERTURB * rng.standard_normal(x_nchw.shape))).astype(np.float32))
                   for _ in range(FLOOR_SAMPLES)]

    # jax: the jitted gradient of the same logit, and the jitted explanations
    def grad_fn(v, x, s):
        return jax.grad(lambda x: jnp.sum(model_j.apply(v, x) * s))(x)

    with _timing.stopwatch() as compile_grad:
        jax_grad_c = jax.jit(grad_fn).lower(variables, xj, seed_j).compile()

    def jax_grad():
        return jax.block_until_ready(jax_grad_c(variables, xj, seed_j))

    cells = {}
    for comp in comps:
        explain = jaxlrp.lrp(model_j.apply, jaxlrp_composite(comp))
        with _timing.stopwatch() as compile_lrp:
            lrp_c = jax.jit(lambda v, x, s, explain=explain: explain(v, x, output_relevance=s)).lower(
                variables, xj, seed_j).compile()

        def jax_lrp(lrp_c=lrp_c):
            return jax.block_until_ready(lrp_c(variables, xj, seed_j))

        zcomp = zennit_composite(comp, name)
        with _timing.stopwatch() as enter:
            context = zcomp.context(model_t)
            modified = context.__enter__()
        try:
            r_zennit = torch_grad_of(modified)().numpy()
        finally:
            with _timing.stopwatch() as leave:
                context.__exit__(None, None, None)
        with zcomp.context(model_t) as modified:
            floor = max(_stats(torch_grad_of(modified, xp)().numpy(), r_zennit)["max_rel_diff"]
                        for xp in x_perturbed)
        with _relus_not_inplace(model_t), \
                zennit_composite(comp, name, aligned=True, pool_hw=tuple(pool_hw)).context(model_t) as modified:
            r_aligned = torch_grad_of(modified)().numpy()
        r_jax = np.asarray(jax_lrp()).transpose(0, 3, 1, 2)
        stats = _stats(r_jax, r_zennit)
        aligned = _stats(r_jax, r_aligned)
        stats.update(aligned_max_rel_diff=aligned["max_rel_diff"], aligned_pearson=aligned["pearson"],
                     sum_zennit_aligned=aligned["sum_zennit"], float32_floor=floor)
        cells[comp] = {"zcomp": zcomp, "jax_lrp": jax_lrp, "stats": stats,
                       "compile_lrp_s": compile_lrp.seconds, "context_ms": 1e3 * (enter.seconds + leave.seconds),
                       "zennit": [], "jaxlrp": []}
        print(f"  {comp:<26} rel diff {stats['max_rel_diff']:.2e}  pearson {stats['pearson']:.6f}  "
              f"sum zennit {stats['sum_zennit']:.4g} jaxlrp {stats['sum_jaxlrp']:.4g}  aligned: rel diff "
              f"{stats['aligned_max_rel_diff']:.2e}  pearson {stats['aligned_pearson']:.6f}  floor {floor:.1e}  "
              f"(compile {compile_lrp.seconds:.1f} s)", flush=True)

    # warm-up, then interleaved rounds over all the functions of this model; a Zennit
    # composite's hooks are registered for its own round only (one context at a time)
    tg, jg = [], []
    for _ in range(rounds):
        grads = _timing.interleaved({"torch": torch_grad, "jax": jax_grad}, repeats, 1, warmup=0)
        tg += grads["torch"]
        jg += grads["jax"]
        for cell in cells.values():
            with cell["zcomp"].context(model_t) as modified:
                cell["zennit"].append(_timing.time_call(torch_grad_of(modified), repeats, warmup=1))
            cell["jaxlrp"].append(_timing.time_call(cell["jax_lrp"], repeats, warmup=1))

    t_tg, t_jg = _timing.median(tg), _timing.median(jg)
    rows = []
    for comp, cell in cells.items():
        t_z, t_l = _timing.median(cell["zennit"]), _timing.median(cell["jaxlrp"])
        rows.append({
            "model": name, "batch": batch, "size": size, "composite": comp,
            "logits_max_abs_diff": logit_diff, "max_abs_logit": float(np.max(np.abs(logits_t))),
            "target": target.tolist(), **cell["stats"],
            "torch_grad_ms": 1e3 * t_tg, "zennit_ms": 1e3 * t_z,
            "jax_grad_ms": 1e3 * t_jg, "jaxlrp_ms": 1e3 * t_l,
            "jaxlrp_over_zennit": t_l / t_z, "zennit_over_torch_grad": t_z / t_tg,
            "jaxlrp_over_jax_grad": t_l / t_jg,
            "spread": max(_timing.spread(r) for r in (tg, jg, cell["zennit"], cell["jaxlrp"])),
            "rounds_ms": {k: [1e3 * t for t in v] for k, v in
                          (("torch_grad", tg), ("jax_grad", jg), ("zennit", cell["zennit"]),
                           ("jaxlrp", cell["jaxlrp"]))},
            "compile_grad_s": compile_grad.seconds, "compile_lrp_s": cell["compile_lrp_s"],
            "zennit_context_ms": cell["context_ms"],
        })
        r = rows[-1]
        print(f"  {comp:<26} torch grad {r['torch_grad_ms']:8.1f} ms  zennit {r['zennit_ms']:8.1f} ms  "
              f"jax grad {r['jax_grad_ms']:8.1f} ms  jaxlrp {r['jaxlrp_ms']:8.1f} ms  "
              f"jaxlrp/zennit x{r['jaxlrp_over_zennit']:.2f}  spread {r['spread']:.2f}", flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def _tables(rows: list, machine: str, cmd: str, load: tuple) -> list:
    lines = [
        f"Machine: {machine}. Command: `{cmd.strip()}`",
        f"Load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}.",
        "",
        "Agreement (float32; reference Zennit; one-hot seed on the torch model's predicted class):",
        "",
        ("| model | batch | composite | logits max abs diff | relevance max rel diff | Pearson | "
         "sum Zennit | sum jaxlrp | aligned: max rel diff | aligned: Pearson | float32 floor |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['composite']} | {r['logits_max_abs_diff']:.2e} | "
            f"{r['max_rel_diff']:.2e} | {r['pearson']:.7f} | {r['sum_zennit']:.4f} | {r['sum_jaxlrp']:.4f} | "
            f"{r['aligned_max_rel_diff']:.2e} | {r['aligned_pearson']:.7f} | {r['float32_floor']:.1e} |"
        )
    lines += [
        "",
        "Wall time (medians; torch eager, jax jitted):",
        "",
        ("| model | batch | composite | torch grad (ms) | Zennit (ms) | jax grad (ms) | jaxlrp (ms) | "
         "jaxlrp / Zennit | Zennit / torch grad | jaxlrp / jax grad | spread | compile grad / LRP (s) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['composite']} | {r['torch_grad_ms']:.1f} | "
            f"{r['zennit_ms']:.1f} | {r['jax_grad_ms']:.1f} | {r['jaxlrp_ms']:.1f} | "
            f"{r['jaxlrp_over_zennit']:.2f} | {r['zennit_over_torch_grad']:.2f} | "
            f"{r['jaxlrp_over_jax_grad']:.2f} | {r['spread']:.2f} | "
            f"{r['compile_grad_s']:.1f} / {r['compile_lrp_s']:.1f} |"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="jaxlrp vs Zennit: agreement and wall time on torchvision models")
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet50"], choices=MODELS)
    ap.add_argument("--composites", nargs="+", default=list(DEFAULT_COMPOSITES), choices=COMPOSITES)
    ap.add_argument("--batch", nargs="+", type=int, default=[1])
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--repeats", type=int, default=3, help="calls per timing round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-init", action="store_true",
                    help="keep torchvision's initialisation (BatchNorm identity, zero biases)")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "zennit"), help="output path stem")
    args = ap.parse_args(argv)
    if min(args.batch) < 1 or args.repeats < 1 or args.rounds < 1 or args.size < 32:
        ap.error("--batch, --repeats and --rounds must be positive, --size at least 32")

    missing = _missing()
    if missing:
        print("compare_zennit: skipped, the optional dependencies are missing: " + "; ".join(missing)
              + f"\ninstall them with: {INSTALL}", file=sys.stderr)
        return EXIT_MISSING

    from importlib.metadata import version

    import jax
    import torch
    import torchvision
    import zennit  # noqa: F401

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), torchvision {torchvision.__version__}, "
               f"zennit {version('zennit')}")
    load_before = os.getloadavg()[0]
    rows = []
    for m in args.models:
        for b in args.batch:
            rows += bench_model(m, b, args.size, args.composites, args.repeats, args.rounds,
                                args.seed, args.plain_init)
    cmd = "python bench/compare_zennit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = (load_before, os.getloadavg()[0])
    lines = _tables(rows, machine, cmd, load)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "command": cmd, "load_average": load, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
