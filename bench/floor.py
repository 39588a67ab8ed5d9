r"""The least work each rule's formula needs: the FLOP floor of an explanation.

Unit: one forward product of the layer (``F`` multiply-adds, the layer's
``dot_general`` or ``conv_general_dilated`` at its own input). ``jax.grad`` of the
explained logit with respect to the input costs **2 units** per layer: the forward
product and one transposed product (no weight gradient is taken). The LRP rules
below also run the forward pass (1 unit), whose output :math:`z` (bias included) is
then free to the rule. A product whose input is the same for every example (the
bounds of z-box, the ones of flat and :math:`w^2`) is computed once per batch:
:math:`1/B` units for a batch of :math:`B`. Elementwise work (signs, masks,
divisions) and parameter-free layers (sums, pooling, activations) are not counted.

One constraint keeps the numerics as they are: a denominator that can be exactly
zero must not be computed as a difference of products (rounding noise, divided by
the stabiliser, would become relevance). Denominators that are at least :math:`|z|`
in size where they are used (gamma's) may be.

Per rule, with :math:`s` the stabilised quotients (one per term), per layer:

Epsilon, Zero, EpsilonStd, Relative (and ``ignore_bias``): :math:`z` (or
:math:`z - b`) is the denominator; numerator :math:`x \odot W^\top s`: **2 units**
(1.0x). Reached.

ZPlus, :math:`x \ge 0`: :math:`x W^+` (1), :math:`x \odot W^{+\top} s` (1): **3** (1.5x).
Signed :math:`x`: :math:`x^+W^+ + x^-W^-` needs both products (it is exactly zero
where no contribution is positive, so not :math:`(z + |x||W|)/2`), and both
transposes: **5** (2.5x). Reached.

Gamma, :math:`x \ge 0`: denominators :math:`z + \gamma x W^+` (:math:`z > 0`) and
:math:`(1+\gamma) z - \gamma x W^+` (:math:`z < 0`): one product :math:`x W^+`. The
numerator :math:`x \odot (W^\top(s_1 + (1+\gamma)s_2) + \gamma W^{+\top}(s_1 - s_2))`
needs two transposed products (the outputs with :math:`z < 0` use another weight,
:math:`W + \gamma W^-`, so no single linear map serves both): **4** (2.0x). Reached.
The classic rule (every output with :math:`W + \gamma W^+`, Montavon et al. 2019)
needs one transposed product, **3** (1.5x); it equals Zennit's generalised rule,
which this package implements, only where the relevance vanishes at :math:`z \le 0`.
That is proven per layer from the program and the rules
(:func:`jaxlrp._core.analysis.relu_gated`: a ReLU follows and everything reading it gives
zeros no relevance); on such *ReLU-gated* layers the :math:`z < 0` term is dropped
and the floor is **3** (1.5x; signed :math:`x`: **4**). Reached (signed: 5).
Signed :math:`x`: :math:`x^+W^+ + x^-W^-` as :math:`(z_{\text{nb}} + |x||W|)/2`
(safe: it is used only in sums with :math:`z` of its sign) costs 1, the numerator
:math:`x \odot W^\top(\cdot) + x^- \odot W^\top(\cdot) + |x| \odot W^{+\top}(\cdot)`
3: **5** (2.5x). Reached: **6** (the two products :math:`x^+W^+`, :math:`x^-W^-`).

AlphaBeta (:math:`\beta > 0`), :math:`x \ge 0`: :math:`x W^+` and :math:`x W^-`
(both can be exactly zero, so neither comes from :math:`z` minus the other), two
transposed products: **5** (2.5x). Signed: four sign-split products and four
transposes: **9** (4.5x). :math:`\beta = 0` is ZPlus. Reached.

ZBox: :math:`d = z - b - l W^+ - h W^-` with :math:`z` free and :math:`l W^+`,
:math:`h W = h W^+ + h W^-` the same for every example (:math:`2/B`); numerator
:math:`(x - h) \odot W^\top s + (h - l) \odot W^{+\top} s`: **3 + 2/B** (1.5x). Reached.

Flat: :math:`d = \mathbf 1 \cdot \mathbf 1` per output (:math:`1/B`); the transpose
of an all-ones weight is a box sum over the receptive field (no multiply-adds with
the weight): **1 + 1/B** (0.5x). Reached: **2 + 1/B** (the transposed product is
the layer's own, with a weight of ones).

WSquare: :math:`d = \mathbf 1 \cdot W^2` (:math:`1/B`), numerator :math:`W^{2\top} s`:
**2 + 1/B** (1.0x). Reached.

Pass on a weighted layer: the forward only, **1** (0.5x). Norm, Pass on
activations and the other parameter-free rules: no products.

Pruned (PLRP): the floor of its base rule (the threshold search is elementwise
work, not counted: the floor is a lower bound there).

The model's floor is :math:`\sum_l u_l F_l / \sum_l 2 F_l` over its dense and conv
layers (:func:`floor_ratio`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

from jaxlrp import composites, rules, variants
from jaxlrp._core.analysis import relu_gated


def units(rule: rules.Rule, nonnegative: bool, batch: int = 1, gated: bool = False) -> float:
    """The floor of ``rule`` on a dense/conv layer, in forward products of the layer
    (the forward pass included), for inputs known non-negative or not, at batch
    ``batch``, on a ReLU-gated layer or not (see the module docstring).

    Raises
    ------
    TypeError
        For a rule whose floor is not derived here.
    """
    b = 1.0 / max(int(batch), 1)
    if isinstance(rule, variants.Pruned):
        return units(rule.rule, nonnegative, batch, gated)
    if isinstance(rule, (rules.Epsilon, rules.EpsilonStd, rules.Gradient, variants.Relative)):
        return 2.0
    if isinstance(rule, rules.ZPlus) or (isinstance(rule, rules.AlphaBeta) and rule.beta == 0):
        return 3.0 if nonnegative else 5.0
    if isinstance(rule, rules.AlphaBeta):
        return 5.0 if nonnegative else 9.0
    if isinstance(rule, rules.Gamma):
        if rule.gamma == 0:
            return 2.0
        return (3.0 if nonnegative else 4.0) if gated else (4.0 if nonnegative else 5.0)
    if isinstance(rule, rules.ZBox):
        return 3.0 + 2 * b
    if isinstance(rule, rules.Flat):
        return 1.0 + b
    if isinstance(rule, rules.WSquare):
        return 2.0 + b
    if isinstance(rule, rules.Pass):
        return 1.0
    raise TypeError(f"no FLOP floor derived for {rule!r}; add it to bench/floor.py")


def _products(jaxpr, mult: int = 1) -> list:
    """``[(primitive, input shapes, output shape, multiply-adds)]`` of every product, in program order."""
    out = []
    for e in jaxpr.eqns:
        name = e.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            lhs, rhs = (v.aval.shape for v in e.invars)
            z = e.outvars[0].aval.shape
            if name == "dot_general":
                (lc, _), _ = e.params["dimension_numbers"]
                macs = math.prod(z) * math.prod(lhs[d] for d in lc)
            else:
                o = rhs[e.params["dimension_numbers"].rhs_spec[0]]
                macs = math.prod(z) * math.prod(rhs) // o
            out.append((name, (tuple(lhs), tuple(rhs)), tuple(z), mult * macs))
            continue
        length = e.params.get("length", 1) if name == "scan" else 1
        for p in e.params.values():
            for sub in p if isinstance(p, (list, tuple)) else (p,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    out += _products(inner, mult * length)
                elif hasattr(sub, "eqns"):
                    out += _products(sub, mult * length)
    return out


def layer_costs(fn: Callable, params: Any, x: Any, composite: Union[composites.Composite, str, None] = None,
                argnums: Optional[Union[int, Sequence[int]]] = None) -> list:
    """``[(layer key, rule, nonnegative, F, units)]`` of the dense and conv layers of ``fn(params, x)``."""
    from jaxlrp._core.trace import trace

    comp, box = composites.resolve(composite, None), []

    def traced(p, x_):  # under eval_shape: abstract values, nothing computed or allocated
        box.append(trace(fn, comp, argnums, (p, x_)))
        return 0.0

    jax.eval_shape(traced, params, x)
    t = box[0]
    gated = relu_gated(t.analysis, t.rules)
    found = _products(jax.make_jaxpr(fn)(params, x).jaxpr)
    batch = int(np.shape(x)[0]) if t.example_ndim >= 1 and np.ndim(x) else 1
    rows, k = [], 0
    for layer in t.layers:
        if layer.kind not in rules.WEIGHTED_KINDS:
            continue
        while k < len(found):
            prim, ins, z, macs = found[k]
            k += 1
            if prim == layer.primitive and z == tuple(layer.output_shape) and tuple(layer.input_shapes[0]) in ins:
                break
        else:
            raise ValueError(f"layer {layer.key!r} ({layer.primitive}) not found among the products of the jaxpr")
        rule = t.rules[layer.index]
        rows.append((layer.key, rule, layer.nonnegative, macs,
                     units(rule, layer.nonnegative, batch, layer.index in gated)))
    return rows


def floor_ratio(fn: Callable, params: Any, x: Any, composite: Union[composites.Composite, str, None] = None,
                argnums: Optional[Union[int, Sequence[int]]] = None) -> float:
    r"""The FLOP floor of ``jaxlrp.lrp(fn, composite)(params, x)`` relative to ``jax.grad``:
    :math:`\sum_l u_l F_l / \sum_l 2 F_l` over the dense and conv layers (:func:`units`).

    Traces ``fn`` only (nothing is computed); ``params`` and ``x`` may be arrays or
    ``jax.ShapeDtypeStruct`` s.
    """
    rows = layer_costs(fn, params, x, composite, argnums)
    total = sum(f for *_, f, _ in rows)
    return sum(u * f for *_, f, u in rows) / (2 * total)


if __name__ == "__main__":  # python bench/floor.py: the floors of bench/run.py's cells
    import argparse

    import jax.numpy as jnp

    import run as _run

    ap = argparse.ArgumentParser(description="FLOP floor of LRP relative to jax.grad")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(_run.MODELS))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--composites", nargs="+", default=list(_run.COMPOSITES), choices=list(_run.COMPOSITES))
    a = ap.parse_args()
    for m in a.models:
        cls, shape = _run.MODELS[m]
        model = cls()
        for bsz in a.batch:
            xs = jax.ShapeDtypeStruct((bsz,) + shape, jnp.float32)
            v = jax.eval_shape(model.init, jax.random.PRNGKey(0), xs)
            for c in a.composites:
                print(f"{m:>8} b={bsz:<4} {c:<22} floor x{floor_ratio(model.apply, v, xs, _run.COMPOSITES[c]()):.3f}")
