"""Primitive tables: how each JAX primitive on the relevance path is treated.

The interpreter never tests for a primitive by name outside this module. Each set
below names one treatment; a primitive that is in none of them, and is reached by
relevance, raises :class:`jaxlrp.UnsupportedOperationError`.

Names cover jax 0.10 and 0.11 (``closed_call`` becomes ``eval_jaxpr`` at jax head;
remat is ``remat2`` or ``checkpoint``).
"""

from __future__ import annotations

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

# Linear in their input, with a weight operand: the layer's LRP rule.
# name -> layer kind (used by composites).
LINEAR: dict[str, str] = {
    "dot_general": "dense",
    "conv_general_dilated": "conv",
}

# Elementwise primitives. A chain of these fed by one tainted source forms an
# "activation" region whose relevance passes to the source unchanged.
ELEMENTWISE: frozenset[str] = frozenset(
    """add sub mul div max min neg exp exp2 log log1p expm1 tanh logistic
    integer_pow pow sqrt rsqrt cbrt abs sign select_n erf erfc erf_inv square
    sin cos tan asin acos atan sinh cosh asinh acosh atanh atan2 clamp
    convert_element_type copy copy_p round floor ceil nextafter rem lgamma
    digamma is_finite reduce_precision add_any""".split()
)

# These compute an inverse of a tainted value (``div`` only with a tainted
# denominator, the powers only with a negative exponent). A product of a tainted
# value with anything computed from such an inverse is a normalisation (LayerNorm,
# RMSNorm), which has no generic rule.
INVERSE: frozenset[str] = frozenset({"rsqrt", "div", "pow", "integer_pow"})

# Affine in their tainted operands, with the untainted float operands as a bias:
# with sources of different origin, a sum node (residual connections).
AFFINE: frozenset[str] = frozenset({"add", "sub", "add_any", "scatter-add", "scatter_add"})
# Elementwise functions with values in (0, 1): their outputs act as gates. A
# product of a gate and another value (LSTM/GRU cells, gated units) is a "gate"
# node: by default the signal takes all the relevance (Arras et al. 2017).
GATING: frozenset[str] = frozenset({"logistic"})
# Roots of a tainted value: a division by one is a normalisation (LayerNorm).
ROOTS: frozenset[str] = frozenset({"sqrt", "rsqrt"})
# Elementwise choice between tainted values of different origin.
SELECTING: frozenset[str] = frozenset({"max", "min", "select_n", "clamp"})  # -> plain VJP

# Linear, parameter-free aggregations: proportional split (the Norm rule).
# name -> layer kind.
SUMS: dict[str, str] = {
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
POOLS: dict[str, str] = {"reduce_window_max": "maxpool"}

# Structural operations: relevance follows the plain VJP (it moves values
# around, sums fan-out, and routes global max-pooling to the winner).
ROUTING: frozenset[str] = frozenset(
    """reshape transpose broadcast_in_dim squeeze expand_dims slice
    dynamic_slice dynamic_update_slice concatenate pad rev copy copy_p
    reduce_precision sharding_constraint stack unstack split reduce_max
    reduce_min reduce_window_min argmax argmin sort cummax
    cummin gather scatter optimization_barrier device_put mesh_cast reshard
    pvary pcast all_gather ppermute select_and_gather_add""".split()
)

# Control flow with a body that is interpreted.
CONTROL: frozenset[str] = frozenset({"scan", "cond", "shard_map"})

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
