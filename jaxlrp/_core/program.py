"""A flat program representation of a jaxpr, the input of the LRP interpreter.

Call-like primitives (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, remat, ...;
see :data:`jaxlrp._core.primitives.CALLS`) are inlined, composing name stacks, so that
layer detection and fusion see one straight-line program: ``jax.nn.relu`` is a
``custom_jvp_call`` around a ``jit`` around ``max``, and becomes just ``max``.
Control flow (``scan``, ``cond``) stays one equation; its bodies are flattened on
demand with :func:`flatten`.

Only :mod:`jax.extend.core` is used, so this works on jax 0.10 and 0.11.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np
from jax.extend import core as jcore

from . import primitives as P


class Var:
    """A variable of a :class:`Program` (compared by identity)."""

    __slots__ = ("aval",)

    def __init__(self, aval):
        self.aval = aval

    @property
    def shape(self) -> tuple:
        return tuple(self.aval.shape)

    @property
    def dtype(self):
        return self.aval.dtype

    def __repr__(self):
        return f"Var({self.aval})"


class Lit:
    """A constant operand: a jaxpr literal or a closed-over constant."""

    __slots__ = ("val", "aval")

    def __init__(self, val, aval):
        self.val = val
        self.aval = aval

    @property
    def shape(self) -> tuple:
        return tuple(np.shape(self.val))

    @property
    def dtype(self):
        return self.aval.dtype

    def static(self) -> Optional[np.ndarray]:
        """The value as a NumPy array, or ``None`` when it is only known at run time
        (a constant closed over from an enclosing ``jit`` trace is a tracer).

        Analysis decisions must use this, never ``jnp`` on ``val``: under an outer
        ``jit``, ``jnp`` operations on constants are staged and return tracers.
        """
        try:
            return np.asarray(self.val)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return None


@dataclasses.dataclass(eq=False)
class Eqn:
    """One primitive application with its composed name stack."""

    prim: Any
    invars: list
    outvars: list
    params: dict
    name: str

    def bind(self, *args, params: Optional[dict] = None):
        """Apply the primitive to ``args`` with this equation's parameters (or ``params``)."""
        out = self.prim.bind(*args, **self.prim.get_bind_params(self.params if params is None else params))
        return list(out) if self.prim.multiple_results else [out]


@dataclasses.dataclass(eq=False)
class Program:
    invars: list
    outvars: list
    eqns: list


def readers(program: "Program") -> dict:
    """Variable -> indices of the equations that read it, in program order."""
    found: dict = {}
    for i, e in enumerate(program.eqns):
        for a in e.invars:
            if isinstance(a, Var):
                found.setdefault(a, []).append(i)
    return found


def producers(program: "Program") -> dict:
    """Variable -> index of the equation that computes it."""
    return {v: i for i, e in enumerate(program.eqns) for v in e.outvars}


def join_names(prefix: str, name: str) -> str:
    return "/".join(p for p in (prefix, name) if p)


def body(params: dict, key: str):
    """``(jaxpr, consts)`` of a sub-program parameter (closed or open jaxpr)."""
    sub = params[key]
    if isinstance(sub, jcore.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    return sub, ()


def flatten(jaxpr, consts=(), prefix: str = "") -> Program:
    """Flatten ``jaxpr`` (with its ``consts``) into a :class:`Program`."""
    invars = [Var(v.aval) for v in jaxpr.invars]
    eqns: list = []
    outs = _inline(jaxpr, consts, invars, prefix, eqns)
    return Program(invars, outs, eqns)


def _inline(jaxpr, consts, args, prefix, eqns) -> list:
    env: dict = {}

    def read(a):
        return Lit(a.val, a.aval) if isinstance(a, jcore.Literal) else env[a]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = Lit(c, v.aval)
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for e in jaxpr.eqns:
        name = join_names(prefix, str(e.source_info.name_stack))
        ins = [read(a) for a in e.invars]
        key = P.CALLS.get(e.primitive.name)
        if key is not None and key in e.params:
            sub, sub_consts = body(e.params, key)
            outs = _inline(sub, sub_consts, ins, name, eqns)
        else:
            outs = [Var(v.aval) for v in e.outvars]
            eqns.append(Eqn(e.primitive, ins, outs, dict(e.params), name))
        for v, o in zip(e.outvars, outs):
            env[v] = o
    return [read(a) for a in jaxpr.outvars]


def replay(program: Program, indices, env: dict, read, bind=None) -> dict:
    """Re-run equations ``indices`` of ``program`` (in order).

    ``env`` maps some variables to new values; every other operand is taken from
    ``read``. ``bind(e, args)`` applies an equation (default: a plain bind).
    Returns ``env`` extended with the outputs.
    """
    env = dict(env)
    for j in indices:
        e = program.eqns[j]
        args = [env[a] if isinstance(a, Var) and a in env else read(a) for a in e.invars]
        env.update(zip(e.outvars, e.bind(*args) if bind is None else bind(e, args)))
    return env
