"""Diagnostics: which rule each layer got, and where relevance is lost or created."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from . import composites as _composites
from .composites import Composite
from .explain import run, top_level_nodes, trace
from .rules import Rule

__all__ = ["inspect", "Report", "LayerRow"]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One rule-bearing layer: where it is, its rule and its relevance in and out."""

    key: str
    kind: str
    primitive: str
    param_paths: tuple
    input_shapes: tuple
    output_shape: tuple
    folded: tuple
    rule: str
    relevance_in: Optional[float]  # summed over the layer's inputs and all examples
    relevance_out: Optional[float]

    @property
    def conservation(self) -> Optional[float]:
        """``relevance_in / relevance_out`` (1 where the layer conserves relevance)."""
        if self.relevance_in is None or not self.relevance_out:
            return None
        return self.relevance_in / self.relevance_out


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`inspect` found.

    Attributes
    ----------
    rows:
        One :class:`LayerRow` per dense/conv/sum/avgpool/product layer, in program
        order (layers inside ``scan``/``cond`` bodies have no relevance sums).
    fallbacks:
        ``(key, primitive, treatment)`` of every other operation on the relevance
        path: activations (their rule, normally Pass) and routing operations
        (plain VJP).
    output_relevance, input_relevance:
        Total relevance at the output and at the explained input.
    """

    rows: tuple
    fallbacks: tuple
    output_relevance: float
    input_relevance: float

    def __str__(self) -> str:
        head = ("layer", "kind", "primitive", "params", "in -> out shape", "rule", "R in", "R out")
        lines = []
        for r in self.rows:
            shapes = ", ".join(str(s) for s in r.input_shapes) + f" -> {r.output_shape}"
            lines.append((
                r.key, r.kind + ("+" + "+".join(r.folded) if r.folded else ""), r.primitive,
                ",".join(r.param_paths) or "-", shapes, r.rule,
                _fmt(r.relevance_in), _fmt(r.relevance_out),
            ))
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*map(str, line)) for line in lines]
        out.append(f"relevance: output {_fmt(self.output_relevance)}, input {_fmt(self.input_relevance)}")
        if self.fallbacks:
            out.append("handled by a fallback:")
            out += [f"  {k}: {p} ({t})" for k, p, t in self.fallbacks]
        return "\n".join(out)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def inspect(
    fn: Callable,
    composite: Union[Composite, str, None] = None,
    *,
    rule: Optional[Rule] = None,
    argnums: Union[int, Sequence[int], None] = None,
    verbose: bool = True,
) -> Callable:
    """Explain once and report, per layer, the rule and the relevance in and out.

    ``jaxlrp.inspect(fn, composite)(*args, target=..., output_relevance=...)`` returns
    a :class:`Report` (and prints it as a table if ``verbose``). The per-layer sums
    show where relevance is absorbed (biases, stabilisers) or created, and the list of
    fallbacks shows every operation that got no explicit rule. Runs eagerly; not for
    use under ``jit``.
    """
    comp = _composites.resolve(composite, rule)

    @functools.wraps(fn)
    def report(*args, target=None, output_relevance=None) -> Report:
        t = trace(fn, comp, argnums, args)
        nodes = top_level_nodes(t)
        out, rel, taps = run(t, target, output_relevance, list(nodes))
        seed_total = float(np.sum(np.asarray(_seed(out, target, output_relevance))))
        rows = []
        for layer in t.layers:
            if layer.kind == "activation":
                continue
            tap = taps.get(layer.index)
            rows.append(LayerRow(
                key=layer.key, kind=layer.kind, primitive=layer.primitive, param_paths=layer.param_paths,
                input_shapes=layer.input_shapes, output_shape=layer.output_shape, folded=layer.folded,
                rule=repr(t.rules[layer.index]),
                relevance_in=None if tap is None else float(sum(jnp.sum(r) for r in tap[0])),
                relevance_out=None if tap is None else float(jnp.sum(tap[1])),
            ))
        fallbacks = [(l.key, l.primitive, f"activation: {t.rules[l.index]!r}") for l in t.layers if l.kind == "activation"]
        fallbacks += _routed(t.analysis)
        rep = Report(tuple(rows), tuple(fallbacks), seed_total, float(sum(jnp.sum(r) for r in rel)))
        if verbose:
            print(rep)
        return rep

    return report


def _seed(out, target, output_relevance):
    from .explain import initial_relevance

    return initial_relevance(out, target, output_relevance)


def _routed(an) -> list:
    found = []
    for i in an.routed:
        e = an.program.eqns[i]
        found.append((e.name or "<top level>", e.prim.name, "routing: plain VJP"))
    for subs in an.subs.values():
        for sub in subs:
            found += _routed(sub)
    return found
