"""A Llama-style decoder explained against ``jax.grad``: cost, memory, compile time, devices.

Three tables, written to ``bench/llm.md`` and ``bench/llm.json``:

* **model x devices**: :mod:`jaxlrp.models.llama` (scanned, remat blocks, AttnLRP),
  on 1 device and on 8 host devices with the parameters sharded FSDP x tensor
  parallel (:func:`jaxlrp.models.llama.param_specs`, mesh 4 x 2) and the batch over
  ``fsdp``: XLA's FLOP and memory ratios LRP/grad (per device), the collectives
  of both compiled programs (:func:`jaxlrp.diagnostics.collectives`), compile and
  run times;
* **depth**: compile times of LRP and grad with 4 and 32 scanned layers;
* **length**: XLA's peak memory (temporaries + arguments + outputs) of LRP and grad
  at long sequences, with and without remat (compiled, not run).

The gradient is ``jax.grad`` of the explained logit with respect to the embedded
sequence, the same function, the same shardings. Each device count runs in its own
process (``--xla_force_host_platform_device_count`` must be set before JAX starts).

    python bench/llm.py                      # all three tables
    python bench/llm.py --quick              # smaller model, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

if __name__ == "__main__" and "--cell" in sys.argv:  # a child: devices before JAX starts
    _devices = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "1"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_devices}"

import jax  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import _timing  # noqa: E402

import jaxlrp  # noqa: E402
from jaxlrp import composites, diagnostics  # noqa: E402
from jaxlrp.models import llama  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def _functions(cfg: llama.Config, remat: bool, target: int = 3):
    fn = llama.decoder(cfg, scan=True, remat=remat)
    explain = jaxlrp.lrp(fn, composites.AttnLRP())
    return (lambda p, h: explain(p, h, target=target)), jax.grad(lambda p, h: fn(p, h)[:, target].sum(), argnums=1)


def _placed(cfg: llama.Config, batch: int, seq: int, devices: int):
    """Parameters, embedded sequence and the jit keyword arguments for ``devices``."""
    params = llama.init(jax.random.key(0), cfg)
    h = llama.embed(params, jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab))
    if devices == 1:
        return params, h, {}
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((devices // 2, 2), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    psh = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), llama.param_specs(params),
                                 is_leaf=lambda a: isinstance(a, P))
    hsh = NamedSharding(mesh, P("fsdp"))
    params, h = jax.device_put(params, psh), jax.device_put(h, hsh)
    return params, h, {"in_shardings": (psh, hsh), "out_shardings": hsh}


def _compile(f, kw, *args):
    with _timing.stopwatch() as t:
        c = jax.jit(f, **kw).lower(*args).compile()
    return c, t.seconds


def _flops(c) -> float:
    ca = c.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def _memory(c) -> dict:
    m = c.memory_analysis()
    return {"temp": int(m.temp_size_in_bytes),
            "peak": int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)}


def cell(cfg: llama.Config, batch: int, seq: int, devices: int, remat: bool, run: bool) -> dict:
    """Compile (and optionally time) LRP and grad of one configuration."""
    params, h, kw = _placed(cfg, batch, seq, devices)
    lrp, grad = _functions(cfg, remat)
    lc, lt = _compile(lrp, kw, params, h)
    gc, gt = _compile(grad, kw, params, h)
    row = {"dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads, "hidden": cfg.hidden, "vocab": cfg.vocab,
           "batch": batch, "seq": seq, "devices": devices, "remat": remat, "params": llama.param_count(params),
           "compile_lrp_s": lt, "compile_grad_s": gt, "flops_ratio": _flops(lc) / _flops(gc),
           "memory_lrp": _memory(lc), "memory_grad": _memory(gc),
           "collectives_lrp": diagnostics.collectives(lc), "collectives_grad": diagnostics.collectives(gc)}
    if run:
        rounds = _timing.interleaved({"grad": lambda: gc(params, h), "lrp": lambda: lc(params, h)}, 2, 2)
        row["run_grad_s"], row["run_lrp_s"] = _timing.median(rounds["grad"]), _timing.median(rounds["lrp"])
    return row


def _child(args) -> None:
    cfg = llama.Config(vocab=args.vocab, dim=args.dim, layers=args.layers, heads=args.heads, hidden=args.hidden)
    print("ROW " + json.dumps(cell(cfg, args.batch, args.seq, args.devices, args.remat, args.run)), flush=True)


def _spawn(**kw) -> dict:
    cmd = [sys.executable, __file__, "--cell"]
    for k, v in kw.items():
        if isinstance(v, bool):
            cmd += [f"--{k}"] if v else []
        else:
            cmd += [f"--{k}", str(v)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    row = json.loads(next(line for line in out.splitlines() if line.startswith("ROW "))[4:])
    print(row, flush=True)
    return row


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _tables(model: list, depth: list, length: list) -> list:
    lines = ["### Model x devices (AttnLRP, scanned remat blocks; times under load)", "",
             "| width | layers | heads | batch x seq | params | devices | FLOPs LRP/grad | memory LRP/grad "
             "(peak, MiB per device) | collectives LRP / grad | compile LRP / grad (s) | run LRP / grad (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in model:
        ml, mg = r["memory_lrp"]["peak"], r["memory_grad"]["peak"]
        cl, cg = sum(r["collectives_lrp"].values()), sum(r["collectives_grad"].values())
        lines.append(f"| {r['dim']} | {r['layers']} | {r['heads']} | {r['batch']} x {r['seq']} | "
                     f"{r['params'] / 1e6:.2f} M | {r['devices']} | {r['flops_ratio']:.2f} | "
                     f"{ml / mg:.2f} ({_mib(ml)} / {_mib(mg)}) | {cl} / {cg} | "
                     f"{r['compile_lrp_s']:.1f} / {r['compile_grad_s']:.1f} | "
                     f"{r.get('run_lrp_s', float('nan')):.2f} / {r.get('run_grad_s', float('nan')):.2f} |")
    lines += ["", "### Compile time against depth (scanned layers; under load)", "",
              "| layers | compile LRP (s) | compile grad (s) | LRP/grad |", "|---|---|---|---|"]
    for r in depth:
        lines.append(f"| {r['layers']} | {r['compile_lrp_s']:.1f} | {r['compile_grad_s']:.1f} | "
                     f"{r['compile_lrp_s'] / r['compile_grad_s']:.2f} |")
    lines += ["", "### Peak memory at long sequences (XLA's memory analysis, 1 device)", "",
              "| width x layers | seq | remat | LRP (MiB) | grad (MiB) | LRP/grad | temporaries LRP/grad |",
              "|---|---|---|---|---|---|---|"]
    for r in length:
        ml, mg = r["memory_lrp"], r["memory_grad"]
        lines.append(f"| {r['dim']} x {r['layers']} | {r['seq']} | {'yes' if r['remat'] else 'no'} | "
                     f"{_mib(ml['peak'])} | {_mib(mg['peak'])} | {ml['peak'] / mg['peak']:.2f} | "
                     f"{ml['temp'] / mg['temp']:.2f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    for name, default in (("vocab", 1024), ("dim", 256), ("layers", 8), ("heads", 8), ("hidden", 704),
                          ("batch", 8), ("seq", 128), ("devices", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--run", action="store_true")
    p.add_argument("--quick", action="store_true", help="a small model and short sequences")
    p.add_argument("--out", default=str(HERE / "llm"))
    args = p.parse_args(argv)
    if args.cell:
        _child(args)
        return 0
    big = dict(vocab=args.vocab, dim=args.dim, heads=args.heads, hidden=args.hidden, batch=args.batch)
    small = dict(vocab=256, dim=64, heads=4, hidden=128, batch=1)
    if args.quick:
        big, args.seq = small | {"batch": 8}, 32
    model = [_spawn(**big, layers=args.layers, seq=args.seq, devices=d, remat=True, run=True) for d in (1, 8)]
    depth = [_spawn(**small, layers=n, seq=64, devices=1, remat=True, run=False) for n in (4, 32)]
    lengths = (256, 1024) if args.quick else (2048, 8192)
    length = [_spawn(**small, layers=2, seq=s, devices=1, remat=r, run=False) for s in lengths for r in (False, True)]
    machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
    cmd = "python bench/llm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Machine: {machine} (2 shared cores, under load: times are not figures; XLA's ratios are). "
             f"Command: `{cmd.strip()}`", ""] + _tables(model, depth, length)
    out = pathlib.Path(args.out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": cmd, "model": model,
                                                    "depth": depth, "length": length}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
