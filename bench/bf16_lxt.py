"""bfloat16 against float32 in LXT, the AttnLRP authors' implementation: the reference for ``bench/bf16.py``.

    python bench/bf16_lxt.py [--models 4] [--examples 16] [--out bench/bf16_lxt]

in the LXT environment of ``bench/compare_lxt.py`` (torch, ``lxt==2.1`` and the
``transformers==4.52.4`` LXT's README names; it imports that script's randomiser).

The same experiment as ``bench/bf16.py`` (a 12-layer decoder, width 32, 4 heads, MLP
64, vocabulary 64, 16 tokens, every parameter random, one model per seed; the map of
the last token's logit 3 at the input embeddings, in float32 and with the model and
its embedded input cast to bfloat16; per-example cosine of the two maps), run on
Hugging Face's ``LlamaForCausalLM`` (eager attention) explained by LXT 2.1's own
efficient-mode maps (``lxt.efficient.models.llama.attnLRP`` / ``cp_LRP``), unchanged:
LXT in bf16 as its users run it (Hugging Face's float32 softmax and RMSNorm
statistics, everything else in bf16, the relevance in bf16). Gradient x input of the
unpatched model is the control. LXT's patches are global, so each method runs in a
fresh process (``--child``).

The models are not the ones of ``bench/bf16.py`` (torch draws other weights, and HF's
Llama differs in details from ``jaxlrp.models.llama``); what is compared is how much
each implementation's maps move when the forward pass is rounded to bf16.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _cosines  # noqa: E402  (the table, shared with bf16.py)
import compare_lxt as cl  # noqa: E402  (the randomiser of the LXT harness)

VOCAB, DIM, LAYERS, HEADS, HIDDEN, TOKENS, TARGET = 64, 32, 12, 4, 64, 16, 3
METHODS = ("AttnLRP", "CP-LRP", "gradient x input")


def _model(seed: int):
    import torch
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                        attn_implementation="eager", attention_dropout=0.0)
    model = T.LlamaForCausalLM(cfg).to(torch.float32).eval()
    cl._randomise(model, gemma=False, seed=1000 + seed)
    return model


def _map(model, ids, dtype):
    """Gradient x input at the embeddings of the last token's logit ``TARGET`` (LXT's map when patched)."""
    m = copy.deepcopy(model).to(dtype)
    emb = m.get_input_embeddings()(ids).detach().requires_grad_()
    m(inputs_embeds=emb).logits[:, -1, TARGET].sum().backward()
    return (emb * emb.grad).float().detach().numpy().astype(np.float64)


def child(method: str, models: int, examples: int, out: str) -> None:
    import torch
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import llama as lxt_llama
    from transformers.models.llama import modeling_llama

    if method != "gradient x input":  # patch before building (LXT's order)
        monkey_patch(modeling_llama, lxt_llama.attnLRP if method == "AttnLRP" else lxt_llama.cp_LRP)
    cos = []
    for seed in range(models):
        model = _model(seed)
        ids = torch.tensor(np.random.default_rng(100 + seed).integers(0, VOCAB, (examples, TOKENS)))
        cos.append(_cosines.cosine(_map(model, ids, torch.float32), _map(model, ids, torch.bfloat16)))
    np.save(out, np.concatenate(cos))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=4, help="random models (seeds)")
    ap.add_argument("--examples", type=int, default=16, help="token sequences per model")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "bf16_lxt"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, out = args.child.split("|")
        return child(method, args.models, args.examples, out)
    import tempfile

    import lxt
    import torch
    import transformers

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            f = os.path.join(tmp, "cos.npy")
            subprocess.run([sys.executable, __file__, "--models", str(args.models), "--examples", str(args.examples),
                            "--child", f"{method}|{f}"], check=True)
            rows.append(_cosines.row(method, np.load(f)))
    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"lxt {getattr(lxt, '__version__', '2.1')}")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {versions}; one-minute load average "
               f"{load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it")
    cmd = f"python bench/bf16_lxt.py --models {args.models} --examples {args.examples}"
    _cosines.write(args.out, [
        f"Machine: {machine}. Command: `{cmd}` (LXT environment).",
        "",
        f"LXT 2.1 (efficient mode, its own Llama maps) on Hugging Face's Llama: cosine similarity of each "
        f"example's map in bf16 with the float32 model's, {args.models} random 12-layer decoders x "
        f"{args.examples} sequences (the experiment of bench/bf16.md, on LXT's side).",
    ], rows, machine, cmd)


if __name__ == "__main__":
    main()
