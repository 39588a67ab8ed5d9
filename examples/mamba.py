"""State-space models: MambaLRP (Jafari et al. 2024) on a Mamba-style classifier.

A small Mamba (selective state-space) network, written here in Flax: each block is
RMSNorm -> input projection into a signal ``u`` and a gate ``z`` -> causal
depthwise convolution and SiLU on ``u`` -> input-dependent step ``Delta``, ``B`` and
``C`` -> the selective scan ``h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t``,
``y_t = C_t . h_t + D u_t`` (``jax.lax.associative_scan`` over the sequence: a
``jax.lax.scan`` whose body multiplies by values computed in the body crashes
jaxlrp's scan rebuild at this version, the same tracer leak as the known softmax
case) -> ``y * silu(z)`` ->
output projection, with a residual connection. The class is read from the last
position.

MambaLRP's rules, as its reference implementation makes them (its ``detach`` calls),
become in jaxlrp:

* the SiLU activations pass the relevance (``Pass``, every composite's default);
* RMSNorm's ``rsqrt`` is a constant (``SignalTakesAll`` on ``"normalize"``, the
  default);
* the input-dependent ``exp(Delta A)``, ``Delta B`` and ``C`` are constants inside
  the scan: the model wraps them in ``jax.lax.stop_gradient`` when built with
  ``lrp=True`` (the forward values do not change), so the scan is linear in ``u``
  and the state, and its sums get the Norm rule;
* the multiplicative gate ``y * silu(z)`` splits the relevance in halves
  (``Uniform``: MambaLRP's "half propagation"): :class:`jaxlrp.composites.MambaLRP`.

The task is long-range: 32 one-hot tokens (8 symbols); the class is whether a
trigger symbol occurs among the **first** 8 positions, and the class is read at the
**last** position. MambaLRP is compared with gradient x input (on the model without
the stop-gradients) by how much of the relevance lands on the trigger tokens.

::

    python examples/mamba.py --out examples/results

writes ``mamba.md`` / ``mamba.json`` (accuracy, conservation, trigger rank
accuracy and relevance share of both methods) and ``mamba.png``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlrp
from jaxlrp import composites, models

L, V, WINDOW, TRIGGER = 32, 8, 8, 0


class MambaBlock(nn.Module):
    """One Mamba block (pre-RMSNorm, residual); ``lrp`` stops the gradient of the
    scan's input-dependent parameters (MambaLRP)."""

    d_model: int = 16
    d_inner: int = 32
    d_state: int = 8
    d_conv: int = 4
    dt_rank: int = 4
    lrp: bool = False

    @nn.compact
    def __call__(self, x):  # (N, L, d_model)
        scale = self.param("norm", nn.initializers.ones, (self.d_model,))
        h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * scale
        u, z = jnp.split(nn.Dense(2 * self.d_inner, name="in_proj")(h), 2, axis=-1)
        u = nn.Conv(self.d_inner, (self.d_conv,), padding=((self.d_conv - 1, 0),),
                    feature_group_count=self.d_inner, name="conv1d")(u)
        u = jax.nn.silu(u)
        dbc = nn.Dense(self.dt_rank + 2 * self.d_state, use_bias=False, name="x_proj")(u)
        dt, B, C = jnp.split(dbc, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        dt_init = lambda k, shape, dtype=jnp.float32: jnp.log(jnp.expm1(  # Mamba's: Delta in [1e-3, 1e-1]
            jnp.exp(jax.random.uniform(k, shape, dtype, jnp.log(1e-3), jnp.log(1e-1)))))
        dt = jax.nn.softplus(nn.Dense(self.d_inner, bias_init=dt_init, name="dt_proj")(dt))  # (N, L, D)
        A = -jnp.exp(self.param("A_log", lambda k, s: jnp.log(jnp.tile(jnp.arange(1.0, s[1] + 1), (s[0], 1))),
                                (self.d_inner, self.d_state)))
        dA = jnp.exp(dt[..., None] * A)                                                # (N, L, D, S)
        dB = dt[..., None] * B[..., None, :]                                           # (N, L, D, S)
        if self.lrp:  # MambaLRP: the selection parameters are constants for the relevance
            dA, dB, C = jax.lax.stop_gradient(dA), jax.lax.stop_gradient(dB), jax.lax.stop_gradient(C)

        def combine(first, second):  # h -> a h + b, composed: (a2 a1, a2 b1 + b2)
            (a1, b1), (a2, b2) = first, second
            return a2 * a1, a2 * b1 + b2

        _, states = jax.lax.associative_scan(combine, (dA, dB * u[..., None]), axis=1)  # (N, L, D, S)
        y = jnp.sum(states * C[..., None, :], -1) + u * self.param("D", nn.initializers.ones, (self.d_inner,))
        y = y * jax.nn.silu(z)
        return x + nn.Dense(self.d_model, name="out_proj")(y)


class Mamba(nn.Module):
    """Embedding (a dense layer on one-hot tokens), Mamba blocks, RMSNorm, a head on the last position."""

    blocks: int = 2
    d_model: int = 16
    classes: int = 2
    lrp: bool = False

    @nn.compact
    def __call__(self, x):  # (N, L, V) one-hot
        h = nn.Dense(self.d_model, name="embed")(x)
        for i in range(self.blocks):
            h = MambaBlock(d_model=self.d_model, lrp=self.lrp, name=f"block{i}")(h)
        h = h[:, -1]
        h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-5)
        return nn.Dense(self.classes, name="head")(h)


def make_data(seed: int, n: int):
    """One-hot sequences; label 1 iff the trigger symbol occurs in the first WINDOW positions.
    The trigger never occurs elsewhere; half the sequences carry it (at one random early position)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, (n, L))
    labels = rng.integers(0, 2, n)
    where = rng.integers(0, WINDOW, n)
    tokens[labels == 1, where[labels == 1]] = TRIGGER
    return np.eye(V, dtype=np.float32)[tokens], labels.astype(np.int32), where


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args(argv)

    x_train, y_train, _ = make_data(args.seed, 4096)
    x, y, where = make_data(args.seed + 1, 256)
    model, model_lrp = Mamba(), Mamba(lrp=True)
    t0 = time.perf_counter()
    params, loss = models.fit(model.apply, model.init(jax.random.key(args.seed), x[:1]), x_train, y_train,
                              steps=args.steps, learning_rate=3e-3)
    logits = np.asarray(jax.jit(model.apply)(params, x))
    acc = float(np.mean(logits.argmax(-1) == y))
    print(f"trained Mamba in {time.perf_counter() - t0:.0f} s: loss {loss:.3f}, held-out accuracy {acc:.1%}")

    pos = y == 1  # explain the sequences that carry the trigger, for class 1
    target = np.ones(int(pos.sum()), np.int32)
    explain = jax.jit(jaxlrp.lrp(model_lrp.apply, composites.MambaLRP()))
    R = np.asarray(explain(params, x[pos], target=target)).sum(-1)          # (n, L): per token
    gxi = jax.jit(jaxlrp.attribution.gradient_x_input(model.apply))
    G = np.asarray(gxi(params, x[pos], target=target)).sum(-1)
    out = logits[pos, 1]
    results = {"held-out accuracy": acc, "sequences explained": int(pos.sum())}
    for name, rel in (("MambaLRP", R), ("gradient x input", G)):
        at = rel[np.arange(len(rel)), where[pos]]
        results[f"{name}: trigger ranked first"] = float(np.mean(rel.argmax(-1) == where[pos]))
        results[f"{name}: share of positive relevance on the trigger"] = float(
            np.mean(np.maximum(at, 0) / (np.maximum(rel, 0).sum(-1) + 1e-12)))
        results[f"{name}: sum of relevance / logit (median)"] = float(np.median(rel.sum(-1) / out))
    for k, v in results.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")

    outdir = pathlib.Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "mamba.json").write_text(json.dumps(results, indent=1))
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else
                                                   f"| {k} | {v} |" for k, v in results.items()]
    (outdir / "mamba.md").write_text(
        f"`python examples/mamba.py --seed {args.seed} --steps {args.steps}`: sequences of {L} tokens; the class "
        f"is set by a trigger among the first {WINDOW}, read at the last position.\n\n" + "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(7, 3.6), sharex=True)
    for ax, (name, rel) in zip(axes, (("MambaLRP", R), ("gradient x input", G))):
        shown = rel[:8] / (np.abs(rel[:8]).max(-1, keepdims=True) + 1e-12)
        ax.imshow(shown, cmap="bwr", vmin=-1, vmax=1, aspect="auto")
        ax.scatter(where[pos][:8], np.arange(8), marker="x", color="k", s=12)
        ax.set_ylabel(name, fontsize=8)
    axes[-1].set_xlabel("position (x: the trigger; the class is read at the last position)")
    fig.tight_layout()
    fig.savefig(outdir / "mamba.png", dpi=100)
    print(f"wrote {outdir / 'mamba.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
