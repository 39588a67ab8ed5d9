"""What carrying a bf16 decoder's relevance in float32 costs, and how it shards.

    python bench/bf16_cost.py [--out bench/bf16_cost]

Runs on 8 host devices (``--xla_force_host_platform_device_count=8``, set here).

* XLA's temporary memory and FLOP count of AttnLRP on a 4-layer remat decoder
  (width 64, 4 heads, MLP 128) in bfloat16 over 8 x 256 tokens, against
  ``jax.grad`` of the same logit, with the relevance in float32 (the default) and
  in bfloat16 (``relevance_dtype=None``);
* the 2-layer decoder of ``tests/test_llm.py``'s sharded test in bfloat16, its
  parameters sharded FSDP x tensor-parallel over a 4 x 2 mesh: the largest
  difference of the sharded relevance from the single-device one (relative to the
  largest entry), and the collectives of the compiled programs against
  ``jax.grad``'s.

Writes ``bench/bf16_cost.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after the device count is set)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp import composites, diagnostics  # noqa: E402
from jaxlrp.models import llama  # noqa: E402

BF16 = jnp.bfloat16
DTYPES = {"float32": jnp.float32, "bfloat16 (relevance_dtype=None)": None}


def _bf16_params(cfg):
    return jax.tree_util.tree_map(lambda a: a.astype(BF16), llama.init(jax.random.key(0), cfg))


def _grad(fn):
    return jax.grad(lambda p, h: fn(p, h)[:, 3].sum().astype(jnp.float32), argnums=1)


def cost() -> dict:
    cfg = llama.Config(vocab=64, dim=64, layers=4, heads=4, hidden=128)
    params, h = _bf16_params(cfg), jnp.zeros((8, 256, cfg.dim), BF16)
    fn = llama.decoder(cfg, remat=True)

    def stats(f):
        c = jax.jit(f).lower(params, h).compile()
        ca = c.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return c.memory_analysis().temp_size_in_bytes, float(ca["flops"])

    grad = stats(_grad(fn))
    out = {}
    for name, rd in DTYPES.items():
        s = stats(lambda p, h, rd=rd: jaxlrp.lrp(fn, composites.AttnLRP(), relevance_dtype=rd)(p, h, target=3))
        out[name] = {"temp_vs_grad": s[0] / grad[0], "flops_vs_grad": s[1] / grad[1]}
    return out


def sharded() -> dict:
    cfg = llama.Config(vocab=64, dim=32, layers=2, heads=4, hidden=64)
    mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    params = _bf16_params(cfg)
    h = llama.embed(params, jax.random.randint(jax.random.key(1), (4, 16), 0, cfg.vocab))
    fn = llama.decoder(cfg, remat=True)
    psh = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), llama.param_specs(params),
                                 is_leaf=lambda a: isinstance(a, P))
    hsh = NamedSharding(mesh, P("fsdp"))
    ps, hs = jax.device_put(params, psh), jax.device_put(h, hsh)
    grad = jax.jit(_grad(fn), in_shardings=(psh, hsh), out_shardings=hsh).lower(ps, hs).compile()
    out = {"grad": {"collectives": diagnostics.collectives(grad)}}
    for name, rd in DTYPES.items():
        explain = jaxlrp.lrp(fn, composites.AttnLRP(), relevance_dtype=rd)
        single = np.asarray(jax.jit(lambda p, h: explain(p, h, target=3))(params, h), np.float64)
        c = jax.jit(lambda p, h: explain(p, h, target=3), in_shardings=(psh, hsh),
                    out_shardings=hsh).lower(ps, hs).compile()
        rel = np.asarray(c(ps, hs), np.float64)
        out[name] = {"max_rel_diff": float(np.abs(rel - single).max() / np.abs(single).max()),
                     "collectives": diagnostics.collectives(c)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "bf16_cost"))
    args = ap.parse_args()
    c, s = cost(), sharded()
    lines = [f"Command: `python bench/bf16_cost.py` (jax {jax.__version__}, 8 host devices).", "",
             "| relevance | temp memory / grad | FLOPs / grad | sharded vs single device | collectives (grad: "
             f"{sum(s['grad']['collectives'].values())}) |", "|---|---|---|---|---|"]
    for name in DTYPES:
        col = s[name]["collectives"]
        lines.append(f"| {name} | {c[name]['temp_vs_grad']:.2f}x | {c[name]['flops_vs_grad']:.2f}x | "
                     f"{s[name]['max_rel_diff']:.1e} | {sum(col.values())} ({col['all-gather']} all-gathers) |")
    lines.append(f"\njax.grad's collectives: {s['grad']['collectives']}")
    out = pathlib.Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"cost": c, "sharded": s}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
