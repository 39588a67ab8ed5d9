"""Benchmark: jaxlrp.concepts against zennit-crp on the same torchvision weights.

The torchvision model is built with seeded random weights (nothing is downloaded)
and loaded into jaxlrp with :func:`jaxlrp.models.load_torchvision`, as in
``bench/compare_zennit.py`` (whose helpers are reused: the seeded model, the input
batch, the composites, and Zennit *aligned* with the function jaxlrp explains: exact
BatchNorm merge, the global pool's stabiliser; see that script's docstring).

Agreement, in float64 on both sides, where the semantics coincide:

* conditional heatmaps: ``CondAttribution(model)(x, [{"y": [t], layer: [c]}], composite)``
  for ``--concepts`` channels ``c`` against ``concepts.conditional(...)(v, x,
  conditions=[{key: [c]}], target=t)`` summed over the colour channels (zennit-crp's
  heatmap is the channel sum); zennit-crp seeds with the target's own logit, as
  jaxlrp's ``target=``;
* concept relevance scores: ``ChannelConcept().attribute(relevances[layer],
  abs_norm=...)`` against ``concepts.relevance_scores(..., normalize=...)``, every
  channel of the layer, with and without normalisation;
* start-layer heatmaps (the reference heatmaps of relevance maximisation):
  ``start_layer=layer`` against ``start=key``.

Reported: the max relative difference ``max|a - b| / max|b|`` over all maps.

Wall time for ``--concepts`` conditional heatmaps of one image, float32, side by side:
zennit-crp's batched call (the image repeated once per condition, one forward and
one backward of that batch) against the jitted jaxlrp call that vmaps the K masks
(one forward, K backward passes), and the same chunked (``batch_size=--chunk``).
Medians of ``--repeats`` calls, interleaved over ``--rounds`` rounds.

Run (zennit-crp, torch, torchvision and zennit in a separate environment with jax)::

    python bench/compare_crp.py                      # resnet18, 64x64, layer3.1.conv1, 64 concepts
    python bench/compare_crp.py --size 224 --concepts 64 --out bench

writes ``crp.md`` and ``crp.json`` in ``--out`` (default ``bench``). Without the
optional packages it says what is missing and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _timing  # noqa: E402  (bench/_timing.py, the scripts' shared timing)


def _missing() -> list:
    out = []
    for mod in ("torch", "torchvision", "zennit", "crp"):
        try:
            __import__(mod)
        except ImportError as e:
            out.append(f"{mod} ({e})")
    return out


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def jax_key(torch_name: str) -> str:
    """``layer3.1.conv1`` -> ``ResNet/layer3_1/conv1`` (the jaxlrp ResNet's layer key)."""
    parts = torch_name.split(".")
    if parts[0].startswith("layer") and len(parts) == 3:
        return f"ResNet/{parts[0]}_{parts[1]}/{parts[2]}"
    return f"ResNet/{torch_name}"


def setup(args, dtype):
    """The torch model, the jaxlrp model and variables, the input on both sides, pool size."""
    import jax.numpy as jnp
    import torch

    import compare_zennit as cz
    from jaxlrp.models import load_torchvision

    model_t = cz.torch_model(args.model, args.seed, False)
    state = {k: v.detach().cpu().numpy() for k, v in model_t.state_dict().items()}
    model_j, variables = load_torchvision(args.model, state, dtype=dtype)
    x = cz.inputs(1, args.size, args.seed + 2).astype(dtype)
    xt = torch.from_numpy(x)
    model_t = model_t.double() if dtype == np.float64 else model_t
    pool_hw = []
    handle = model_t.avgpool.register_forward_pre_hook(lambda m, a: pool_hw.extend(a[0].shape[-2:]))
    with torch.no_grad():
        target = int(model_t(xt).argmax(-1)[0])
    handle.remove()
    return model_t, model_j, variables, xt, jnp.asarray(x.transpose(0, 2, 3, 1)), target, pool_hw


def agreement(args) -> dict:
    import jax
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept

    import compare_zennit as cz
    from jaxlrp import concepts

    jax.config.update("jax_enable_x64", True)
    model_t, model_j, v, xt, xj, t, pool_hw = setup(args, np.float64)
    key, chans = jax_key(args.layer), list(range(args.concepts))
    comp_j = cz.jaxlrp_composite(args.composite)
    attribution = CondAttribution(model_t)
    out = {"target": t}

    def comp_t():
        return cz.zennit_composite(args.composite, args.model, aligned=True, pool_hw=tuple(pool_hw))

    x_req = xt.clone().requires_grad_(True)
    res = attribution(x_req, [{"y": [t], args.layer: [c]} for c in chans], comp_t(), record_layer=[args.layer])
    heat_t = res.heatmap.numpy()
    crp = jax.jit(lambda v, x: concepts.conditional(model_j.apply, comp_j)(
        v, x, conditions=[{key: [c]} for c in chans], target=t))
    heat_j = np.asarray(crp(v, xj)).sum(-1)[:, 0]
    out["conditional_heatmaps"] = _rel(heat_j, heat_t)

    res = attribution(xt.clone().requires_grad_(True), [{"y": [t]}], comp_t(), record_layer=[args.layer])
    cc = ChannelConcept()
    for norm in (False, True):
        s_t = cc.attribute(res.relevances[args.layer], abs_norm=norm).numpy()
        s_j = concepts.relevance_scores(model_j.apply, comp_j, key, normalize=norm)(v, xj, target=t)
        out[f"relevance_scores{'_abs_norm' if norm else ''}"] = _rel(s_j, s_t)

    few = chans[:8]
    res = attribution(xt.clone().requires_grad_(True), [{args.layer: [c]} for c in few], comp_t(),
                      start_layer=args.layer)
    start_j = concepts.conditional(model_j.apply, comp_j)(v, xj, conditions=[{key: [c]} for c in few], start=key)
    out["start_layer_heatmaps"] = _rel(np.asarray(start_j).sum(-1)[:, 0], res.heatmap.numpy())
    jax.config.update("jax_enable_x64", False)
    return out


def timing(args) -> dict:
    import jax
    import torch
    from crp.attribution import CondAttribution

    import compare_zennit as cz
    from jaxlrp import concepts

    torch.set_num_threads(os.cpu_count())
    model_t, model_j, v, xt, xj, t, pool_hw = setup(args, np.float32)
    key, chans = jax_key(args.layer), list(range(args.concepts))
    comp_t = cz.zennit_composite(args.composite, args.model, aligned=False)
    comp_j = cz.jaxlrp_composite(args.composite)
    attribution = CondAttribution(model_t)
    conds_t = [{"y": [t], args.layer: [c]} for c in chans]
    conds_j = [{key: [c]} for c in chans]

    def zennit_crp():
        return attribution(xt.clone().requires_grad_(True), conds_t, comp_t).heatmap

    fns = {"zennit-crp": zennit_crp}
    with _timing.stopwatch() as sw:
        zennit_crp()
    first_s = {"zennit-crp": sw.seconds}
    compile_s = {}
    for name, bs in (("jaxlrp", None), (f"jaxlrp chunk {args.chunk}", args.chunk)):
        def fresh(bs=bs):  # a new jitted function each time: nothing cached from the last
            return jax.jit(lambda v, x: concepts.conditional(model_j.apply, comp_j, batch_size=bs)(
                v, x, conditions=conds_j, target=t))

        with _timing.stopwatch() as sw:  # trace, analysis, compile and run: what a user first waits for
            jax.block_until_ready(fresh()(v, xj))
        first_s[name] = sw.seconds
        with _timing.stopwatch() as sw:
            c = fresh().lower(v, xj).compile()
        compile_s[name] = sw.seconds
        fns[name] = lambda c=c: jax.block_until_ready(c(v, xj))
    per = _timing.interleaved(fns, args.repeats, args.rounds)
    return {"seconds": {n: _timing.median(r) for n, r in per.items()}, "compile_s": compile_s,
            "first_call_s": first_s}


def markdown(args, agree: dict, times: dict, load: tuple) -> str:
    import jax
    import torch

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, torch {torch.__version__}, "
        f"zennit-crp (crp) installed version {_crp_version()}. Command: `python bench/compare_crp.py "
        + " ".join(sys.argv[1:]) + "`",
        f"Load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}.",
        "",
        f"Model {args.model} (seeded random torchvision weights), input 1x3x{args.size}x{args.size}, "
        f"layer `{args.layer}` (`{jax_key(args.layer)}`), composite {args.composite}, target class {agree['target']}.",
        "",
        "Agreement (float64 both sides; max |jaxlrp - zennit-crp| / max |zennit-crp|):",
        "",
        "| quantity | max rel diff |",
        "|---|---|",
        f"| {args.concepts} conditional heatmaps (y = target, one channel each) | {agree['conditional_heatmaps']:.2e} |",
        f"| relevance scores of every channel (sum) | {agree['relevance_scores']:.2e} |",
        f"| relevance scores, abs_norm | {agree['relevance_scores_abs_norm']:.2e} |",
        f"| 8 start-layer heatmaps (reference heatmaps) | {agree['start_layer_heatmaps']:.2e} |",
        "",
        f"Wall time for {args.concepts} conditional heatmaps of one image (float32, medians; "
        f"zennit-crp eager with stock Zennit composite, jaxlrp jitted):",
        "",
        "| implementation | seconds | vs zennit-crp | first call (s) | compile (s) |",
        "|---|---|---|---|---|",
    ]
    base = times["seconds"]["zennit-crp"]
    for n, s in times["seconds"].items():
        c, first = times["compile_s"].get(n), times["first_call_s"][n]
        lines.append(f"| {n} | {s:.3f} | {s / base:.2f} | {first:.2f} | {'' if c is None else f'{c:.1f}'} |")
    lines += [
        "",
        "Notes. Agreement uses Zennit aligned with the function jaxlrp explains (exact BatchNorm merge, the "
        "global pool's stabiliser; see bench/compare_zennit.py), timing stock Zennit. The abs_norm row differs "
        "by zennit-crp's `+ 1e-10` in the denominator (jaxlrp divides by the sum of |R_c| exactly, 0 where it "
        "is 0). zennit-crp repeats the image once per condition (K forward passes and one batched backward); "
        "jaxlrp vmaps the K masks, and since the forward pass does not depend on them it stays unbatched: one "
        "forward, K backward passes in one XLA program (chunked with `batch_size`, bounded memory). "
        "First call: the first call in the process after the float64 agreement checks (zennit-crp: its first "
        "eager call; jaxlrp: trace, analysis, XLA compile and run of the jitted call); compile: a second "
        "lowering and compile of the same call, timed alone.",
    ]
    return "\n".join(lines) + "\n"


def _crp_version() -> str:
    from importlib.metadata import version

    return version("zennit-crp")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--layer", default="layer3.1.conv1")
    ap.add_argument("--concepts", type=int, default=64)
    ap.add_argument("--composite", default="epsilon_plus_flat")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    args = ap.parse_args()
    missing = _missing()
    if missing:
        print("missing optional packages:", ", ".join(missing), "\ninstall: pip install torch torchvision zennit zennit-crp")
        return 0
    load0 = os.getloadavg()[0]
    agree = agreement(args)
    print(json.dumps(agree, indent=1), flush=True)
    times = timing(args)
    print(json.dumps(times, indent=1), flush=True)
    md = markdown(args, agree, times, (load0, os.getloadavg()[0]))
    out = pathlib.Path(args.out)
    (out / "crp.md").write_text(md)
    (out / "crp.json").write_text(json.dumps({"args": vars(args), "agreement": agree, "timing": times}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
