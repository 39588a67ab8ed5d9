"""JAX twins of the reference networks of ``tests/reference.py``.

``build(layers)`` returns ``(fn, params)`` where ``fn(params, x)`` runs the layer list
on a batch (``x`` of shape ``(N, ...)``) with plain ``jax.lax`` operations, each
layer under ``jax.named_scope(f"layer{i}")`` so that composites can select layers
by name, and parameters in a dict keyed ``f"layer{i}"`` so they can be selected by
parameter path.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def build(layers):
    params = {}
    for i, layer in enumerate(layers):
        if layer[0] in ("dense", "conv"):
            params[f"layer{i}"] = {"kernel": jnp.asarray(layer[1])}
            if layer[2] is not None:
                params[f"layer{i}"]["bias"] = jnp.asarray(layer[2])

    def fn(params, x):
        stack = []
        for i, layer in enumerate(layers):
            kind = layer[0]
            with jax.named_scope(f"layer{i}"):
                if kind == "dense":
                    p = params[f"layer{i}"]
                    x = x @ p["kernel"]
                    if "bias" in p:
                        x = x + p["bias"]
                elif kind == "conv":
                    _, _, _, strides, padding, groups, *rest = layer
                    dil = rest[0] if rest else (1, 1)
                    p = params[f"layer{i}"]
                    x = lax.conv_general_dilated(
                        x, p["kernel"], tuple(strides), tuple(map(tuple, padding)),
                        rhs_dilation=tuple(dil), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                        feature_group_count=groups,
                    )
                    if "bias" in p:
                        x = x + p["bias"]
                elif kind == "relu":
                    x = jax.nn.relu(x)
                elif kind == "tanh":
                    x = jnp.tanh(x)
                elif kind == "maxpool":
                    _, w, s = layer
                    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, w, w, 1), (1, s, s, 1), "VALID")
                elif kind == "avgpool":
                    _, w, s = layer
                    x = lax.reduce_window(x, 0.0, lax.add, (1, w, w, 1), (1, s, s, 1), "VALID") / (w * w)
                elif kind == "flatten":
                    x = x.reshape(x.shape[0], -1)
                elif kind == "residual_start":
                    stack.append(x)
                elif kind == "residual_add":
                    x = x + stack.pop()
                else:
                    raise ValueError(kind)
        return x

    return fn, params


def random_layers(rng, spec, in_shape, bias=True):
    """Random float64 layers from a compact spec.

    ``spec`` items: ``("dense", n_out)``, ``("conv", k, c_out, stride, pad, groups)``
    (``pad`` a symmetric int), or any parameter-free layer tuple.
    """
    layers, shape = [], tuple(in_shape)
    for item in spec:
        kind = item[0]
        if kind == "dense":
            n_in = int(np.prod(shape))
            w = rng.normal(size=(n_in, item[1])) / np.sqrt(n_in)
            layers.append(("dense", w, rng.normal(size=item[1]) * 0.1 if bias else None))
            shape = (item[1],)
        elif kind == "conv":
            _, k, c_out, s, pad, g = item
            h, w_, c = shape
            kern = rng.normal(size=(k, k, c // g, c_out)) / np.sqrt(k * k * c / g)
            layers.append(("conv", kern, rng.normal(size=c_out) * 0.1 if bias else None,
                           (s, s), ((pad, pad), (pad, pad)), g))
            shape = ((h + 2 * pad - k) // s + 1, (w_ + 2 * pad - k) // s + 1, c_out)
        else:
            layers.append(item)
            if kind in ("maxpool", "avgpool"):
                _, win, s = item
                shape = ((shape[0] - win) // s + 1, (shape[1] - win) // s + 1, shape[2])
            elif kind == "flatten":
                shape = (int(np.prod(shape)),)
    return layers
