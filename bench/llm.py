"""A Llama-style decoder explained against ``jax.grad``: cost, memory, compile time, devices.

Three tables, written to ``bench/llm.md`` and ``bench/llm.json``:

* **model x devices**: :mod:`jaxlrp.models.llama` (scanned, remat blocks, AttnLRP),
  on 1 device and on 8 host devices with the parameters sharded FSDP x tensor
  parallel (:func:`jaxlrp.models.llama.param_specs`, mesh 4 x 2) and the batch over
  ``fsdp``: XLA's FLOP and memory ratios LRP/grad (per device), the collectives
  of both compiled programs (:func:`jaxlrp.diagnostics.collectives`), compile and
  run times;
* **depth**: compile times of LRP and grad with 4 and 32 scanned layers, each
  compiled alone in a fresh process;
* **length**: XLA's peak memory (temporaries + arguments + outputs) of LRP and grad
  at long sequences, with and without remat (compiled, not run);
* **measured** (``--memory``): at 8k tokens, XLA's peak and the measured one, the
  resident memory a fresh process gains during one call (its maximum resident set
  size after the call minus its resident set size before it, compiled ahead);
* **longest** (``--memory``): the longest sequence (a multiple of 1024) whose
  relevance fits 24 GB (``24e9`` bytes) by XLA's memory analysis, remat blocks,
  batch 1 (compiled, not run), and the gradient's for comparison.

The gradient is ``jax.grad`` of the explained logit with respect to the embedded
sequence, the same function, the same shardings. Each device count runs in its own
process (``--xla_force_host_platform_device_count`` must be set before JAX starts).

    python bench/llm.py                      # all three tables
    python bench/llm.py --quick              # smaller model, for a smoke run
    python bench/llm.py --memory             # only the measured and longest tables (kept: the rest)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys

if __name__ == "__main__" and "--cell" in sys.argv:  # a child: devices before JAX starts
    _devices = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "1"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

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


def compile_one(cfg: llama.Config, batch: int, seq: int, remat: bool, which: str) -> dict:
    """Trace, lower and compile ``which`` (``"lrp"`` or ``"grad"``) alone, in a process
    that has compiled nothing else: the first compile of a process also pays for
    caches that a second one of the same model finds warm (about 0.1 s at 4 layers,
    a tenth of a compile time), so the two are timed in processes of their own."""
    params, h, kw = _placed(cfg, batch, seq, 1)
    f = dict(zip(("lrp", "grad"), _functions(cfg, remat)))[which]
    _, t = _compile(f, kw, params, h)
    return {"which": which, "layers": cfg.layers, "compile_s": t}


def _resident() -> int:
    """This process's resident set size now, in bytes."""
    return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_resident() -> int:
    """This process's maximum resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(cfg: llama.Config, seq: int, which: str, remat: bool) -> dict:
    """XLA's peak and the measured one of one call of ``which`` (``"lrp"`` or ``"grad"``).

    The call is compiled ahead, then run once; ``run`` is the maximum resident set
    size after it minus the resident set size before it (the memory the call
    needed beyond what the process held), valid where it exceeds the compiler's
    own high-water mark (``valid``).
    """
    params, h, _ = _placed(cfg, 1, seq, 1)
    f = dict(zip(("lrp", "grad"), _functions(cfg, remat)))[which]
    c = jax.jit(f).lower(params, h).compile()
    jax.block_until_ready((params, h))
    before, high = _resident(), _max_resident()
    jax.block_until_ready(c(params, h))
    after = _max_resident()
    return {"which": which, "dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads, "hidden": cfg.hidden,
            "seq": seq, "remat": remat, "xla": _memory(c), "run": after - before, "valid": after > high,
            "max_rss": after}


def longest(cfg: llama.Config, which: str, remat: bool, budget: float = 24e9, step: int = 1024) -> dict:
    """The longest multiple of ``step`` tokens (batch 1) whose XLA peak fits ``budget`` bytes."""
    f = dict(zip(("lrp", "grad"), _functions(cfg, remat)))[which]
    params = llama.init(jax.random.key(0), cfg)

    def peak(n: int) -> int:
        h = jax.ShapeDtypeStruct((1, n * step, cfg.dim), jnp.float32)
        return _memory(jax.jit(f).lower(params, h).compile())["peak"]

    lo, hi = 1, 2
    while peak(hi) <= budget:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
    return {"which": which, "dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads, "hidden": cfg.hidden,
            "vocab": cfg.vocab, "params": llama.param_count(params), "remat": remat, "budget": budget,
            "seq": lo * step, "peak": peak(lo), "peak_next": peak(lo + 1)}


def _child(args) -> None:
    cfg = llama.Config(vocab=args.vocab, dim=args.dim, layers=args.layers, heads=args.heads, hidden=args.hidden)
    if args.only:
        row = compile_one(cfg, args.batch, args.seq, args.remat, args.only)
    elif args.measure:
        row = measure(cfg, args.seq, args.measure, args.remat)
    elif args.longest:
        row = longest(cfg, args.longest, args.remat)
    else:
        row = cell(cfg, args.batch, args.seq, args.devices, args.remat, args.run)
    print("ROW " + json.dumps(row), flush=True)


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


def _tables(data: dict) -> list:
    model, depth, length = data["model"], data["depth"], data["length"]
    lines = ["### Model x devices (AttnLRP, scanned remat blocks)", "",
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
    lines += ["", "### Compile time against depth (scanned layers)", ""]
    if "depth_command" in data:
        lo, hi = sorted(data["depth_load"])
        lines += [f"Command: `{data['depth_command'].strip()}` (load average {lo:.2f}-{hi:.2f})", ""]
    separate = all(r.get("separate_processes") for r in depth)
    lines += ["Trace, lowering and XLA compilation of one call; " + (
              "LRP and grad each compiled alone in a fresh process, pairs of processes in alternating order: "
              "median times, and the median and range of the paired ratios." if separate else
              "each depth in fresh processes: median times, and the median and range of the per-process ratios."),
              "",
              f"| layers | {'process pairs' if separate else 'processes'} | compile LRP (s) | compile grad (s) | "
              "LRP/grad (median, range) |",
              "|---|---|---|---|---|"]
    for r in depth:
        ratios = r.get("compile_ratios", [r["compile_lrp_s"] / r["compile_grad_s"]])
        lines.append(f"| {r['layers']} | {len(ratios)} | {r['compile_lrp_s']:.1f} | {r['compile_grad_s']:.1f} | "
                     f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    lines += ["", "### Peak memory at long sequences (XLA's memory analysis, 1 device)", "",
              "| width x layers | seq | remat | LRP (MiB) | grad (MiB) | LRP/grad | temporaries LRP/grad |",
              "|---|---|---|---|---|---|---|"]
    for r in length:
        ml, mg = r["memory_lrp"], r["memory_grad"]
        lines.append(f"| {r['dim']} x {r['layers']} | {r['seq']} | {'yes' if r['remat'] else 'no'} | "
                     f"{_mib(ml['peak'])} | {_mib(mg['peak'])} | {ml['peak'] / mg['peak']:.2f} | "
                     f"{ml['temp'] / mg['temp']:.2f} |")
    return lines + _memory_tables(data)


def _memory_tables(data: dict) -> list:
    if "measured" not in data:
        return []
    lrp, grad = data["measured"]
    xl, xg = lrp["xla"]["peak"], grad["xla"]["peak"]
    lines = ["", f"### Peak memory at 8k tokens, XLA's and measured (`{data['memory_command'].strip()}`)", "",
             "Batch 1, remat blocks, one CPU device. Measured: the resident memory a fresh process gains during "
             "one call (maximum resident set size after it minus resident set size before it; the call "
             "compiled ahead).", "",
             "| width x layers | heads | seq | XLA LRP / grad (MiB) | XLA LRP/grad | measured LRP / grad (MiB) "
             "| measured LRP/grad |", "|---|---|---|---|---|---|---|"]
    flag = "" if lrp["valid"] and grad["valid"] else " (compile peak higher)"
    lines.append(f"| {lrp['dim']} x {lrp['layers']} | {lrp['heads']} | {lrp['seq']} | {_mib(xl)} / {_mib(xg)} | "
                 f"{xl / xg:.2f} | {_mib(lrp['run'])} / {_mib(grad['run'])}{flag} | "
                 f"{lrp['run'] / grad['run']:.2f} |")
    lines += ["", "### The longest sequence in 24 GB (XLA's memory analysis, compiled, not run)", "",
              "Batch 1, float32, one device, each block under `jax.checkpoint` (default policy: save nothing "
              "but the scan's carry), AttnLRP; the gradient of the same logit for comparison.", "",
              "| width x layers | heads | params | explainer | longest seq (multiple of 1024) | peak there (GB) "
              "| peak at +1024 (GB) |", "|---|---|---|---|---|---|---|"]
    for r in data["longest"]:
        lines.append(f"| {r['dim']} x {r['layers']} | {r['heads']} | {r['params'] / 1e6:.2f} M | "
                     f"{'AttnLRP' if r['which'] == 'lrp' else 'jax.grad'} | {r['seq']} | {r['peak'] / 1e9:.2f} | "
                     f"{r['peak_next'] / 1e9:.2f} |")
    return lines


def _depth_rows(small: dict, repeats: int) -> list:
    """Compile times at 4 and 32 scanned layers: ``repeats`` pairs of fresh
    processes per depth, one compiling LRP and one grad, in alternating order; the
    medians of the times and of the paired ratios (compile times vary by a third
    between processes)."""
    rows = []
    for n in (4, 32):
        pairs = []
        for i in range(repeats):
            order = ("lrp", "grad") if i % 2 == 0 else ("grad", "lrp")
            pairs.append({w: _spawn(**small, layers=n, seq=64, remat=True, only=w)["compile_s"] for w in order})
        rows.append({"layers": n, "repeats": repeats, "separate_processes": True,
                     "compile_lrp_s": statistics.median(p["lrp"] for p in pairs),
                     "compile_grad_s": statistics.median(p["grad"] for p in pairs),
                     "compile_ratios": [p["lrp"] / p["grad"] for p in pairs]})
    return rows


def _memory_rows(small: dict, big: dict) -> tuple:
    """The measured rows (8k tokens, remat, 2 heads: each process under 4 GB) and the longest rows."""
    cfg = small | {"heads": 2, "layers": 2}
    cfg.pop("batch")
    measured = [_spawn(**cfg, seq=8192, remat=True, measure=which) for which in ("lrp", "grad")]
    spec = {k: v for k, v in big.items() if k != "batch"}
    longest_rows = [_spawn(**spec, layers=8, remat=True, longest=which) for which in ("lrp", "grad")]
    return measured, longest_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--measure", default="", help=argparse.SUPPRESS)
    p.add_argument("--longest", default="", help=argparse.SUPPRESS)
    p.add_argument("--only", default="", help=argparse.SUPPRESS)
    for name, default in (("vocab", 1024), ("dim", 256), ("layers", 8), ("heads", 8), ("hidden", 704),
                          ("batch", 8), ("seq", 128), ("devices", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--run", action="store_true")
    p.add_argument("--quick", action="store_true", help="a small model and short sequences")
    p.add_argument("--memory", action="store_true", help="only the measured and longest tables")
    p.add_argument("--depth", action="store_true", help="only the compile-time-against-depth table")
    p.add_argument("--repeats", type=int, default=3, help="pairs of fresh processes (LRP, grad) per depth; medians reported")
    p.add_argument("--out", default=str(HERE / "llm"))
    args = p.parse_args(argv)
    if args.cell:
        _child(args)
        return 0
    big = dict(vocab=args.vocab, dim=args.dim, heads=args.heads, hidden=args.hidden, batch=args.batch)
    small = dict(vocab=256, dim=64, heads=4, hidden=128, batch=1)
    out = pathlib.Path(args.out)
    cmd = "python bench/llm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if args.memory:
        data = old | dict(zip(("measured", "longest"), _memory_rows(small, big)), memory_command=cmd)
    elif args.depth:
        load = os.getloadavg()[0]
        depth = _depth_rows(small, args.repeats)
        data = old | {"depth": depth, "depth_command": cmd, "depth_load": [load, os.getloadavg()[0]]}
    else:
        if args.quick:
            big, args.seq = small | {"batch": 8}, 32
        model = [_spawn(**big, layers=args.layers, seq=args.seq, devices=d, remat=True, run=True) for d in (1, 8)]
        depth = _depth_rows(small, args.repeats)
        lengths = (256, 1024) if args.quick else (2048, 8192)
        length = [_spawn(**small, layers=2, seq=s, devices=1, remat=r, run=False)
                  for s in lengths for r in (False, True)]
        machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}"
        data = {k: v for k, v in old.items() if k in ("measured", "longest", "memory_command")}
        data |= {"machine": machine, "command": cmd, "model": model, "depth": depth, "length": length}
    lines = [f"Machine: {data['machine']} ({data.get('cores', '2 cores')}). "
             f"Command: `{data['command'].strip()}`", ""] + _tables(data)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
