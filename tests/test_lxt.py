"""jaxlrp against LXT 2.1 (the AttnLRP authors' PyTorch implementation), without torch.

``tests/data/lxt/<arch>.npz`` holds tiny random-weight Hugging Face models (every
parameter random), their inputs, logits and LXT's float64 relevance at the input
embeddings (efficient mode: gradient x input of the patched model), written by
``bench/compare_lxt.py export``. ``tests/lxt_ports.py`` ports each model to plain
JAX; jaxlrp explains the port from the embedding lookup (``start=``) with every
stabiliser 0 and must equal LXT to ``1e-6`` (max-rel).

Issue 22's causes that still separate them are strict xfails naming the cause, so
each flips loudly when its fix lands; ``test_agrees_once_the_causes_are_emulated``
shows that the named causes are the whole difference: with each one's fix emulated
(a composite entry or the port's spelling, ``lxt_ports.EMULATIONS``) every case
agrees today.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import lxt_ports  # noqa: E402

ARCHS = sorted(p.stem for p in lxt_ports.DATA.glob("*.npz"))

#: the convention jaxlrp keeps on purpose: soft-capping's tanh is an activation
#: (identity rule, ``Pass``); ``attnlrp_gradtanh`` is LXT with the plain gradient there.
CONVENTIONS = {("gemma2", "attnlrp_gradtanh")}

CAUSE = {
    1: "cause 1: the SwiGLU/GeGLU product is treated as a sigmoid gate (SignalTakesAll); AttnLRP splits it uniformly",
    2: "cause 2: CP-LRP keeps each position's relevance (SignalTakesAll on probs @ v); LXT moves it through "
       "probs^T to the values of every position",
    3: "cause 3: constant summands (LayerNorm bias, position and token-type embeddings) absorb no share",
    4: "cause 4: tied embeddings: start= also selects the head's E.T and the lookup's relevance is halved",
}
CP_GATE = ("CP-LRP's gated MLP: LXT's cp_gated_mlp_forward holds the gate constant (all relevance to "
           "up_proj); jaxlrp's CPLRP splits a GELU-gated product uniformly")
SOFTCAP = ("soft-capping inside the softmax: jaxlrp's softmax rule linearises softmax(c tanh(s / c)) at s; "
           "LXT applies it at the capped scores, then the identity rule through tanh")

#: (arch, composite) -> the causes that separate jaxlrp from LXT today (found with
#: ``bench/compare_lxt.py compare --diagnose``); for CP-LRP, 1 is ``CP_GATE``.
KNOWN = {
    ("llama", "attnlrp"): (1,), ("llama", "cplrp"): (2,),
    ("mistral", "attnlrp"): (1,), ("mistral", "cplrp"): (2,),
    ("qwen2", "attnlrp"): (1,), ("qwen2", "cplrp"): (2,),
    ("qwen3", "attnlrp"): (1, 4), ("qwen3", "cplrp"): (2, 4),
    ("qwen3_moe", "attnlrp"): (1,),
    ("gemma3", "attnlrp"): (4,), ("gemma3", "cplrp"): (1, 2, 4),
    ("gemma2", "attnlrp"): (4, "softcap"), ("gemma2", "cplrp"): (1, 2, 4),
    ("gpt2", "attnlrp"): (3, 4), ("gpt2", "cplrp"): (2, 3, 4),
    ("bert", "attnlrp"): (3,),
    ("vit", "cplrp"): (2, 3),
}


def _cases():
    out = []
    for arch in ARCHS:
        for comp in lxt_ports.load(arch)["R"]:
            if (arch, comp) not in CONVENTIONS:
                out.append((arch, comp))
    return out


CASES = _cases()


def _reason(comp: str, causes: tuple) -> str:
    texts = [SOFTCAP if c == "softcap" else CP_GATE if (c == 1 and comp == "cplrp") else CAUSE[c] for c in causes]
    return "; ".join(texts)


def _marked(arch: str, comp: str):
    causes = KNOWN.get((arch, comp), ())
    if not causes:
        return pytest.param(arch, comp, id=f"{arch}-{comp}")
    return pytest.param(arch, comp, id=f"{arch}-{comp}",
                        marks=pytest.mark.xfail(strict=True, reason=_reason(comp, causes)))


pytestmark = pytest.mark.filterwarnings("ignore")  # the ports' unmatched-pattern hints are not the subject


def test_every_lxt_architecture_has_a_reference():
    assert {"llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert", "vit"} <= set(ARCHS)
    for arch in ARCHS:
        assert (lxt_ports.DATA / f"{arch}.npz").stat().st_size < 200_000


@pytest.mark.parametrize("arch", ARCHS)
def test_ports_compute_the_torch_logits(arch):
    data = lxt_ports.load(arch)
    fn, args, _ = lxt_ports.port(arch, data)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(*args)), data["logits"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch, comp", [_marked(a, c) for a, c in CASES])
def test_equals_lxt(arch, comp):
    R, note = lxt_ports.relevance(arch, comp)
    max_rel, cos = lxt_ports.agreement(R, lxt_ports.load(arch)["R"][comp])
    assert not note, note
    assert max_rel < 1e-6, f"max-rel {max_rel:.3g}, cosine {cos:.6f}"


@pytest.mark.slow
@pytest.mark.parametrize("arch, comp", [(a, c) for a, c in CASES if "softcap" not in KNOWN.get((a, c), ())])
def test_agrees_once_the_causes_are_emulated(arch, comp):
    causes = KNOWN.get((arch, comp), ())
    R, _ = lxt_ports.relevance(arch, comp, emulate=causes)
    max_rel, cos = lxt_ports.agreement(R, lxt_ports.load(arch)["R"][comp])
    assert max_rel < 1e-6, f"max-rel {max_rel:.3g}, cosine {cos:.6f} with causes {causes} emulated"
