"""Primitive tables: what jaxlrp knows about each JAX primitive.

The analysis (:mod:`jaxlrp._core.analysis`) never tests for a primitive by name: it
looks the name up in its registry of treatments, which is filled from the tables
below (one table per treatment, so adding a primitive to an existing treatment is
one word here), and asks the per-primitive facts at the end of this module (signs,
inverses). A primitive that is in no table, and is reached by relevance, raises
:class:`jaxlrp.UnsupportedOperationError`. The tables of one treatment are
disjoint from those of another; :mod:`jaxlrp._core.analysis` checks it at import.

The rest of the core asks this module too, never a name of its own: the
canonisation (what may follow a layer and fold into it), parameter relevance
(what moves parameter entries unchanged), and the example axes, whose registry of
axis rules (:data:`jaxlrp._core.example_axes.AXIS_RULES`) is filled from the
``AXES_*`` tables below the way the treatments are; every primitive with a
treatment has an axis rule or is in :data:`AXES_UNTRACKED` (a test checks it).

Names cover jax 0.10 and 0.11 (``closed_call`` becomes ``eval_jaxpr`` at jax head;
remat is ``remat2`` or ``checkpoint``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import jax.numpy as jnp
import numpy as np

from .kinds import Kind

# Call-like primitives that are inlined: name -> parameter holding the body.
CALLS: dict[str, str] = {
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "eval_jaxpr": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}
# The calls among them that mark a rematerialised body (``jax.checkpoint``): a scan
# over one keeps the trade-off when it is evaluated (jaxlrp._core.interpreter).
REMAT: frozenset[str] = frozenset({"remat2", "checkpoint"})

# Linear in their input, with a weight operand: the layer's LRP rule.
# name -> layer kind.
LINEAR: dict[str, Kind] = {
    "dot_general": "dense",
    "conv_general_dilated": "conv",
}

# Elementwise primitives. A chain of these fed by one tainted source forms an
# "activation" region whose relevance passes to the source unchanged. With tainted
# operands of several origins, each group has its own treatment:
# ... sums (a "sum" node: residual connections) ...
ELEMENTWISE_SUMS: frozenset[str] = frozenset({"add", "sub", "add_any"})
# ... products (a scaling, a product node, or a pattern: gates, normalisers) ...
PRODUCTS: frozenset[str] = frozenset({"mul"})
# ... quotients (a scaling, or a pattern: softmax, normalisers) ...
QUOTIENTS: frozenset[str] = frozenset({"div"})
# ... choices between values (plain VJP) ...
SELECTING: frozenset[str] = frozenset({"max", "min", "select_n", "clamp"})
# ... and the rest, which have no rule for several origins.
ACTIVATIONS: frozenset[str] = frozenset(
    """neg exp exp2 log log1p expm1 tanh logistic integer_pow pow sqrt rsqrt cbrt
    abs sign erf erfc erf_inv square sin cos tan asin acos atan sinh cosh asinh
    acosh atanh atan2 convert_element_type copy copy_p round floor ceil nextafter
    rem lgamma digamma is_finite reduce_precision""".split()
)
ELEMENTWISE: frozenset[str] = ELEMENTWISE_SUMS | PRODUCTS | QUOTIENTS | SELECTING | ACTIVATIONS
# Elementwise steps that are linear in their one origin inside an activation region
# (with ``mul`` and ``div`` by constants, see jaxlrp._core.patterns.made_by): a region
# made of them only is no activation, so its value is not "activated" (a GLU factor).
LINEAR_STEPS: frozenset[str] = ELEMENTWISE_SUMS | frozenset(
    {"neg", "convert_element_type", "copy", "copy_p", "reduce_precision"})

# These compute an inverse of a tainted value (``div`` only with a tainted
# denominator, the powers only with a negative exponent). A product of a tainted
# value with anything computed from such an inverse is a normalisation (LayerNorm,
# RMSNorm), which has no generic rule.
INVERSE: frozenset[str] = frozenset({"rsqrt", "div", "pow", "integer_pow"})

# Affine in their tainted operands, with the untainted float operands as a bias:
# with sources of different origin, a sum node (residual connections).
AFFINE: frozenset[str] = frozenset({"add", "sub", "add_any", "scatter-add", "scatter_add"})
# Elementwise primitives whose outputs patterns look for (see jaxlrp._core.patterns):
# "root": a square root, a division by one is a normalisation (LayerNorm);
# "exp": part of a softmax. (Gates are not tagged: they are decided by the range
# of the value, whatever the primitives that compute it; see below.)
TAGS: dict[str, str] = {"sqrt": "root", "rsqrt": "root", "exp": "exp", "exp2": "exp"}

# Value ranges: the interval analysis that decides gates (jaxlrp._core.patterns.value_range).
# Elementwise functions that never decrease, as a function of one float (the bounds
# of the output are the function of the bounds of the input) ...
INCREASING: dict[str, Callable[[Any], Any]] = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log1p": np.log1p,
    "sqrt": np.sqrt, "cbrt": np.cbrt, "tanh": np.tanh, "logistic": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
    "erf": math.erf, "atan": np.arctan, "asinh": np.arcsinh, "sinh": np.sinh,
    "floor": np.floor, "ceil": np.ceil, "round": np.round,
    "convert_element_type": float, "copy": float, "copy_p": float, "reduce_precision": float,
}
# ... those that never increase ...
DECREASING: dict[str, Callable[[Any], Any]] = {
    "neg": lambda v: -v, "erfc": math.erfc, "rsqrt": lambda v: 1.0 / np.sqrt(v),
}
# ... and those with a fixed range whatever their input.
BOUNDED: dict[str, tuple[float, float]] = {"sin": (-1.0, 1.0), "cos": (-1.0, 1.0), "sign": (-1.0, 1.0)}
# Operations whose every output entry is one of their (floating-point) input
# entries or a constant operand: the output range is the union of the inputs'.
RANGE_COPYING: frozenset[str] = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice dynamic_slice
    dynamic_update_slice concatenate pad rev gather reduce_max reduce_min
    reduce_window_max reduce_window_min cummax cummin sort sharding_constraint stack
    unstack split optimization_barrier select_n""".split()
)

# Linear, parameter-free aggregations: proportional split (the Norm rule).
# name -> layer kind.
SUMS: dict[str, Kind] = {
    "reduce_sum": "sum",
    "cumsum": "sum",
    "reduce_window_sum": "avgpool",
    "scatter-add": "sum",
    "scatter_add": "sum",
    "psum": "sum",  # inside shard_map: the sum over devices
    "psum_invariant": "sum",
}

# Max pooling: a rule-bearing node whose default rule is winner-takes-all (the
# plain VJP); name -> layer kind.
POOLS: dict[str, Kind] = {"reduce_window_max": "maxpool"}

# Structural operations: relevance follows the plain VJP (it moves values
# around, sums fan-out, and routes global max-pooling to the winner).
ROUTING: frozenset[str] = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice
    dynamic_slice dynamic_update_slice concatenate pad rev
    sharding_constraint stack unstack split reduce_max
    reduce_min reduce_window_min argmax argmin sort cummax
    cummin gather scatter optimization_barrier device_put mesh_cast reshard
    pvary pcast all_gather ppermute select_and_gather_add""".split()
)

# Routing primitives whose every output entry is a copy of an input entry (or a
# constant), so a zero input is copied only to zeros (see
# jaxlrp._core.analysis.relu_gated).
COPYING: frozenset[str] = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice dynamic_slice
    concatenate pad rev reduce_max reduce_window_max sharding_constraint stack unstack
    split optimization_barrier""".split()
)
# Routing whose plain VJP is exact for LRP: each entry's relevance moves unchanged
# (copies, reshapes, index selections, layout and device placement). Other routing
# (``reduce_max``, ``sort``, ``scatter``, ``cummax``, ...) chooses among entries:
# ``jaxlrp.inspect`` reports it as a fallback.
EXACT_ROUTING: frozenset[str] = (COPYING - {"reduce_max", "reduce_window_max"}) | frozenset(
    """gather dynamic_update_slice device_put mesh_cast reshard pvary pcast all_gather
    ppermute""".split()
)
# The primitive of ReLU: ``max(x, 0)``.
RECTIFIERS: frozenset[str] = frozenset({"max"})

# Control flow with a body that is interpreted: name -> the position, among the
# equation's operands, of the operand the body's first input reads (``cond``'s
# first operand is the branch index). The analysis and the interpreter each
# register a handler for every name here (jaxlrp._core.analysis.CONTROL_FLOW,
# jaxlrp._core.interpreter.CONTROL_FLOW).
CONTROL: dict[str, int] = {"scan": 0, "cond": 1, "shard_map": 0}
# Loops among them: their body runs once per iteration, and the per-layer values of
# its nodes are stacked over the iterations (``params``: ``length``, ``num_consts``,
# ``num_carry``).
LOOPS: frozenset[str] = frozenset({"scan"})

# Primitives whose output carries no dependence on the input for relevance.
STOP: frozenset[str] = frozenset({"stop_gradient"})

# Known, but impossible on the relevance path: name -> hint for the error.
UNSUPPORTED_HINTS: dict[str, str] = {
    "while": "a while_loop cannot be reverse-differentiated; use lax.scan or "
    "lax.fori_loop with static bounds (it lowers to scan)",
    "reduce_prod": "a product over an axis has no LRP rule",
    "cumprod": "a cumulative product has no LRP rule",
    "custom_lin": "linearised programs cannot be explained; explain the original function",
}
# Opaque kernels (fused attention and the like): jaxlrp cannot see the computation
# inside, so it cannot give it AttnLRP's or CP-LRP's rules.
_KERNEL_HINT = (
    "an opaque kernel (a flash/splash attention kernel?): its computation cannot be "
    "analysed, so no softmax or attention rule can be applied. Explain the same model "
    "with the kernel's XLA reference instead, e.g. "
    "jax.nn.dot_product_attention(..., implementation='xla') or the kernel's reference "
    "attention in jax.numpy (a custom_vjp around it is fine: its forward is analysed)"
)
UNSUPPORTED_HINTS.update({
    name: _KERNEL_HINT for name in (
        "pallas_call", "triton_kernel_call", "dot_product_attention_fwd", "dot_product_attention_fwd_wrapper",
        "dot_product_attention_fp8_fwd", "dot_product_attention_fp8_fwd_wrapper",
    )
})

# Sign inference (to skip the negative-input branches of z+, gamma, alpha-beta):
# elementwise functions whose output is never negative ...
NONNEGATIVE: frozenset[str] = frozenset({"abs", "exp", "exp2", "logistic", "square", "sqrt", "rsqrt"})
# ... and operations that keep non-negative inputs non-negative.
SIGN_PRESERVING: frozenset[str] = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice dynamic_slice
    rev reduce_max reduce_window_max reduce_min reduce_window_min concatenate gather
    copy copy_p convert_element_type reduce_precision sharding_constraint max min
    reduce_sum reduce_window_sum cumsum add add_any mul stack split unstack
    optimization_barrier""".split()
)


# Canonisation (jaxlrp._core.canonize): what may follow a linear layer and belong to it.
# Collective sums over devices that may directly follow a linear layer inside
# shard_map (tensor parallelism): part of the layer, so its rule sees the global z.
COLLECTIVE_SUMS: frozenset[str] = frozenset({"psum", "psum_invariant"})
# Shape-only operations that may follow a linear layer (size-1 axes only); also
# those whose reader sees through them where they only drop unit axes.
UNIT_RESHAPES: frozenset[str] = frozenset({"reshape", "squeeze", "expand_dims"})
# Elementwise operations allowed in a foldable chain, each with an operand computed
# from parameters (a bias, BatchNorm statistics and scales); a chain of them after
# no layer is an unfolded normalisation (jaxlrp._core.analysis) ...
FOLDABLE: frozenset[str] = frozenset({"add", "sub", "mul", "div"})
# ... of those, the ones that scale (not only shift) the layer output ...
SCALING: frozenset[str] = frozenset({"mul", "div"})
# ... of those, the ones where the layer's value must be the first operand
# (``1 / z`` is not affine, ``b - z`` flips the sign) ...
FIRST_OPERAND_ONLY: frozenset[str] = frozenset({"div", "sub"})
# ... of those, the one that adds its parameter operand unchanged (a plain bias,
# whose share routes back to the parameter) ...
PLAIN_SHIFTS: frozenset[str] = frozenset({"add"})
# ... and value-preserving casts, allowed without one (to a float type).
CASTS: frozenset[str] = frozenset({"convert_element_type", "copy", "copy_p"})
# Axis permutations after the layer (``jax.vmap`` of ``W @ x``).
TRANSPOSES: frozenset[str] = frozenset({"transpose"})
# Broadcasts of a per-channel operand to the full output shape (Haiku's bias).
BROADCASTS: frozenset[str] = frozenset({"broadcast_in_dim"})

# Operations that move parameter entries without changing them (jaxlrp._core.parameters):
# their transpose routes each entry's relevance back to the entry it came from
# (broadcasts and reuse sum the relevance of the copies).
PARAMETER_ROUTING: frozenset[str] = frozenset({
    "reshape", "transpose", "convert_element_type", "squeeze", "expand_dims", "broadcast_in_dim", "copy",
    "copy_p", "slice", "dynamic_slice", "rev", "concatenate", "reduce_precision", "sharding_constraint",
})

# Example axes (jaxlrp._core.example_axes): how each primitive moves the axes that index
# examples; one table per axis rule, registered in example_axes.AXIS_RULES.
# Primitives that draw random numbers or operate on keys.
# Primitives whose result depends on the float format itself, not only on the
# values: under a widening (jaxlrp._core.widening) they run in the model's dtype.
FORMAT_DEPENDENT: frozenset[str] = frozenset({"bitcast_convert_type", "nextafter"})
# Explicit casts: under a widening the one place a result is rounded to the model's
# narrow format (the model asked for it; other results stay wide).
NARROWING: frozenset[str] = frozenset({"convert_element_type"})

RANDOM: frozenset[str] = frozenset(
    {"random_bits", "random_seed", "random_wrap", "random_unwrap", "threefry2x32", "rng_bit_generator"})
# Elementwise and other shape-preserving primitives: each axis stays where it is.
AXES_SAME: frozenset[str] = ELEMENTWISE | frozenset(
    """stop_gradient sharding_constraint optimization_barrier pad rev slice dynamic_slice
    dynamic_update_slice concatenate""".split()
)
# Axis moves by ``params``: ``broadcast_dimensions``, ``permutation``, ``dimensions``
# (squeezed), or the shapes (a reshape that keeps the example axes whole).
AXES_BROADCAST: frozenset[str] = BROADCASTS
AXES_TRANSPOSE: frozenset[str] = TRANSPOSES
AXES_SQUEEZE: frozenset[str] = frozenset({"squeeze"})
AXES_RESHAPE: frozenset[str] = frozenset({"reshape"})
# Reductions over ``params["axes"]``.
AXES_REDUCE: frozenset[str] = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin"})
# Scans along one axis: name -> the parameter that names it.
AXES_ALONG: dict[str, str] = {
    "cumsum": "axis", "cumprod": "axis", "cummax": "axis", "cummin": "axis", "cumlogsumexp": "axis",
    "sort": "dimension",
}
# Windowed reductions over ``params["window_dimensions"]``.
AXES_WINDOWED: frozenset[str] = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"})
# The linear layers (contracting the input with a weight) follow the kinds of
# :data:`LINEAR`: ``dense`` (``dimension_numbers`` of a dot) and ``conv``.
# Primitives with a relevance treatment whose outputs are not tracked (tracking is
# conservative: no report past them): gathers and scatters, stacking and splitting,
# unit-axis insertion, collectives and device placement, control flow.
AXES_UNTRACKED: frozenset[str] = frozenset(
    """expand_dims stack unstack split gather scatter scatter-add scatter_add
    select_and_gather_add device_put mesh_cast reshard pvary pcast all_gather ppermute
    psum psum_invariant""".split()
) | frozenset(CONTROL)


# ------------------------------------------------------------------ registries


def register(registry: dict, names: Iterable[str], entry: Any, what: str) -> None:
    """Enter ``entry`` for every primitive in ``names`` into ``registry`` (the
    analysis's treatments, the example-axis rules), each name only once: a second
    entry raises ``AssertionError`` naming ``what``, e.g. "has two treatments")."""
    for name in names:
        if name in registry:
            raise AssertionError(f"{name!r} has two {what}s")
        registry[name] = entry


# ------------------------------------------------------------------ per-primitive facts


def output_nonnegative(eqn: Any, tainted: tuple, inputs_nonnegative: bool) -> bool:
    """Whether ``eqn``'s outputs are provably ``>= 0`` (see :data:`NONNEGATIVE`).

    ``tainted`` are the positions of the relevance-carrying operands and
    ``inputs_nonnegative`` whether all of them are known to be non-negative; the
    other floating-point operands must be constants known to be non-negative.
    Linear layers never are (their outputs are unbounded).
    """
    name = eqn.prim.name
    if name in LINEAR:
        return False
    if name in NONNEGATIVE:
        return True
    if name == "integer_pow":
        return eqn.params["y"] % 2 == 0
    if name == "max" and any(_static_nonnegative(a) for a in eqn.invars):
        return True  # relu: max(x, 0)
    consts = all(
        _static_nonnegative(a) for k, a in enumerate(eqn.invars)
        if k not in tainted and jnp.issubdtype(a.dtype, jnp.inexact)
    )
    if name == "div":
        return tainted == (0,) and inputs_nonnegative and consts
    return name in SIGN_PRESERVING and inputs_nonnegative and consts


def inverts(eqn: Any, tainted: tuple) -> bool:
    """Whether ``eqn`` computes an inverse of one of its tainted operands
    (``div`` of a constant by one, a power with a negative exponent, ``rsqrt``).

    ``x / f(x)`` is no inverse: with one origin it is an activation
    (``silu(x) = x / (1 + exp(-x))``); with two it is a quotient node.
    """
    name = eqn.prim.name
    if name not in INVERSE:
        return False
    if name == "div":
        return tuple(tainted) == (1,)
    if name == "integer_pow":
        return eqn.params["y"] < 0
    if name == "pow":
        value = _static(eqn.invars[1])
        return 1 in tainted or value is None or bool(np.any(value < 0))
    return True


def _static(a: Any) -> Any:
    """The value of a literal operand known at trace time (NumPy), else ``None``."""
    static = getattr(a, "static", None)
    return static() if static is not None else None


def _static_nonnegative(a: Any) -> bool:
    value = _static(a)
    return value is not None and bool(np.all(value >= 0))
