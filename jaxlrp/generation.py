"""Generation attribution: every generated token of a language model, explained at once.

A causal language model ``fn(params, ids, ...) -> logits`` of shape ``(N, L, V)``
predicts the token at position :math:`p` from the logits at position :math:`p - 1`.
For a sequence whose last tokens were generated (or for any positions
:math:`p_1, \\dots, p_T`), :func:`explain_generation` explains each token
:math:`y_t = \\mathrm{ids}[n, p_t]` against every earlier position: the relevance of
the start layer (the embedding output, ``start=``) for the logit that chose it,

.. math:: R_t = \\mathrm{LRP}\\big(f, x;\\; \\rho_t\\big), \\qquad
          \\rho_t[n, q, v] = f_{n, q, v}(x)\\,[q = p_t - 1]\\,[v = y_{n,t}],

summed over the embedding axis into a :math:`T \\times L` matrix per example,
:math:`M[n, t, l] = \\sum_d R_t[n, l, d]`. Causal attention makes
:math:`M[n, t, l] = 0` for :math:`l \\ge p_t`: a token is explained by the prompt and
the tokens generated before it.

The LRP backward pass is the vector-Jacobian product of a modified forward pass
(:mod:`jaxlrp._core.interpreter`), so for a fixed input it is **linear in the seed**
:math:`\\rho`. All T seeds therefore share one forward pass, and their backward passes
are one :func:`jax.vmap` (or, with ``batch_size``, a :func:`jax.lax.map` over chunks
of it): one compiled call instead of T. The same linearity makes the explanation of a
multi-token target, the sum of the T logits (``joint=True``), the sum of the T rows.

With a left-padded batch and an attention mask that the model applies to its keys
(and positions counted from the first real token), the pad positions receive exactly
zero relevance and the real tokens the same relevance as the unpadded sequences.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import composites as _composites
from .composites import Composite
from ._core.checks import concrete
from ._core.eager import when_eager
from ._core.run import linearized
from ._core.trace import trace
from .rules import Rule

__all__ = ["explain_generation"]

Array = jax.Array
#: ``generated=``: the number T of final tokens, or their positions in ``ids``.
Generated = Union[int, Sequence[int], ArrayLike]


def _positions(generated: Generated, length: int) -> Array:
    """The positions of the explained tokens, a 1-D int array (checked when concrete)."""
    if isinstance(generated, (int, np.integer)) and not isinstance(generated, bool):
        if not 1 <= generated < length:
            raise ValueError(
                f"generated={generated} must be in [1, {length - 1}] for sequences of length {length} "
                "(the first token has no logits before it)"
            )
        return jnp.arange(length - generated, length)
    pos = jnp.asarray(generated)
    if pos.ndim != 1 or not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"generated must be an int or a 1-D sequence of int positions, got {generated!r}")
    value = concrete(pos)
    if value is not None and (np.any(value < 1) or np.any(value >= length)):
        raise ValueError(f"positions {value.tolist()} out of range [1, {length - 1}] for sequences of length {length}")
    return pos


def _ids_length(ids: ArrayLike) -> int:
    """L, the length of the token ids ``(N, L)``, which must be ints."""
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"the token ids must be an int array of shape (N, L), got {ids.dtype}{list(ids.shape)}")
    return ids.shape[1]


def _check_shapes(out: jax.ShapeDtypeStruct, ids: Array, starts: list) -> None:
    if out.ndim != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"the function must return logits of shape (N, L, V) = {tuple(ids.shape)} + (V,), got {out.shape}")
    shapes = [tuple(v.shape) for v in starts]
    if len(shapes) != 1 or shapes[0][:2] != tuple(ids.shape):
        raise ValueError(
            f"start= must select one value of shape (N, L, ...) = {tuple(ids.shape)} + (...) (the embedding "
            f"output); it selects {len(shapes)} of shapes {shapes}"
        )


def _seed(out: Array, ids: Array, position: Array) -> Array:
    """The output relevance that explains the token at ``position``: its own logit at
    ``position - 1``, zero elsewhere."""
    rows = jnp.arange(out.shape[1]) == position - 1
    tokens = jax.nn.one_hot(ids[:, position], out.shape[2], dtype=out.dtype)
    return out * rows[None, :, None] * tokens[:, None, :]


def _joint_seed(out: Array, ids: Array, positions: Array) -> Array:
    """The output relevance of the sum of the explained tokens' logits."""
    n = jnp.arange(ids.shape[0])[:, None]
    mask = jnp.zeros(out.shape, out.dtype).at[n, positions[None, :] - 1, ids[:, positions]].set(1)
    return out * mask


def explain_generation(
    fn: Callable[..., Array],
    composite: Union[Composite, str, None] = None,
    *,
    start: str,
    rule: Optional[Rule] = None,
    ids_argnum: int = 1,
    batch_size: Optional[int] = None,
    reduce: bool = True,
) -> Callable[..., Array]:
    """Explain each generated token of a causal language model against the earlier tokens.

    Parameters
    ----------
    fn:
        ``fn(params, ids, *rest) -> logits`` of shape ``(N, L, V)``, where
        ``logits[:, q]`` predicts the token at position ``q + 1`` (any causal LM, e.g.
        with an attention mask in ``rest``). Used unchanged.
    composite, rule:
        As for :func:`jaxlrp.lrp` (``composites.AttnLRP()``, ``"cp_lrp"``, ...).
    start:
        The layer to explain from, as for :func:`jaxlrp.lrp`: a glob on a module or
        parameter path selecting one value of shape ``(N, L, ...)``, usually the token
        embedding (``"*embed*"``).
    ids_argnum:
        The position of the token ids ``(N, L)`` among ``fn``'s arguments.
    batch_size:
        Tokens explained at once (chunks of the :func:`jax.vmap` over the T seeds,
        in one compiled loop); ``None``: all T at once. The T seeds have the shape
        of the logits, so this bounds the memory for large vocabularies.
    reduce:
        Sum the relevance over the trailing (embedding) axes: ``(N, T, L)``. With
        ``False`` the start value's shape is kept: ``(N, T, L, D)``.

    Returns
    -------
    callable
        ``explain(*args, generated, joint=False)``, ``args`` as for ``fn``:

        * ``generated``: an int T (the last T tokens of ``ids``, as after generating T
          tokens) or a 1-D int sequence of positions ``p_t`` in ``[1, L)``.
        * ``joint``: explain the sum of the T tokens' logits (the multi-token target)
          instead: ``(N, L)`` (``(N, L, D)`` with ``reduce=False``), equal to the sum
          of the T rows.

        It returns ``M`` with ``M[n, t, l]`` the relevance of position ``l`` for token
        ``p_t`` of example ``n``; zero for ``l >= p_t`` in a causal model. It composes
        with :func:`jax.jit` (``generated`` static when it is an int); called
        outside ``jax.jit`` it runs as one compiled program, cached with
        ``explain`` (new ids or positions of the same shapes reuse it).

    Raises
    ------
    ValueError
        ``start=`` selects no value or several, or the shapes are not ``(N, L)`` ids
        and ``(N, L, V)`` logits; a concrete position out of range.

    Examples
    --------
    A toy causal language model (each position's logits from the running sum of the
    embeddings so far), its last two tokens explained:

    >>> def lm(params, ids):
    ...     return jnp.cumsum(params["embed"][ids], axis=1) @ params["head"]
    >>> params = {"embed": jax.random.normal(jax.random.key(0), (5, 3)), "head": jnp.ones((3, 5))}
    >>> explain = jaxlrp.generation.explain_generation(lm, composites.AttnLRP(), start="embed")
    >>> M = jax.jit(explain, static_argnames="generated")(params, jnp.array([[1, 2, 3, 4]]), generated=2)
    >>> M.shape  # (N, T, L); M[0, 1, 3] == 0: token 3 is explained by positions 0-2
    (1, 2, 4)
    """
    comp = _composites.resolve(composite, rule)

    def body(*args_and_positions: Any, joint: bool) -> Array:
        *args, positions = args_and_positions
        t = trace(fn, comp, None, args, start=start, data_argnum=ids_argnum)
        ids = jnp.asarray(args[ids_argnum])
        out, back = linearized(t)
        _check_shapes(out, ids, t.starts)

        def relevance(seed: Array) -> Array:
            r = back(seed)[0][0]
            return r.reshape(r.shape[:2] + (-1,)).sum(-1) if reduce else r

        if joint:
            return relevance(_joint_seed(out, ids, positions))
        one = lambda p: relevance(_seed(out, ids, p))  # noqa: E731
        rows = jax.vmap(one)(positions) if batch_size is None else jax.lax.map(one, positions, batch_size=batch_size)
        return jnp.moveaxis(rows, 0, 1)

    # an eager call runs as one compiled program (not the interpreter's operations
    # one by one), cached with this explainer
    compiled = when_eager(body)

    def explain(*args: Any, generated: Generated, joint: bool = False) -> Array:
        positions = _positions(generated, _ids_length(args[ids_argnum]))
        return compiled(*args, positions, joint=bool(joint))

    return explain
