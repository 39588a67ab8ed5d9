"""Independent float64 NumPy reference implementation of LRP rules.

This module is a *test oracle*.  It is deliberately simple and slow: every
layer is turned into an explicit dense matrix (one example, no batch axis) and
every rule is written as a handful of matrix-vector products, following the
semantics of the Zennit library.  It does not depend on the library under
test (nor on JAX).

Conventions
-----------
* Everything is computed in float64.
* Images are single examples in HWC layout; convolution kernels are HWIO.
* Flattening is always row-major, i.e. ``(h, w, c)`` order for images.
* ``x+ = max(x, 0)`` and ``x- = min(x, 0)`` (the same for weights and biases,
  applied elementwise on the weight array *before* building the matrix).
* ``stab(d, e) = d + e * s(d)`` with ``s(d) = +1`` where ``d >= 0`` and ``-1``
  where ``d < 0``.  Wherever a stabilised denominator is exactly zero the
  quotient is defined as zero.

Layer specification for the network helpers
-------------------------------------------
``layers`` is a list of tuples:

* ``("dense", w, b)`` -- ``w`` of shape (n_in, n_out), ``z = x @ w + b``;
  ``b`` may be None.  The input must be 1-D.
* ``("conv", kernel_hwio, b, strides, padding_pairs, groups)`` with an
  optional seventh element ``rhs_dilation``; ``b`` of shape (c_out,) or None.
* ``("relu",)``
* ``("maxpool", window, stride)`` -- 2-D, no padding.
* ``("avgpool", window, stride)`` -- 2-D, no padding.
* ``("flatten",)`` -- row-major ravel.
* ``("residual_start",)`` / ``("residual_add",)`` -- identity shortcut:
  ``residual_start`` remembers the current activation, ``residual_add`` adds
  the remembered activation to the current one (they nest like brackets).
"""

import numpy as np

__all__ = [
    "dense_matrix",
    "conv_output_shape",
    "conv_matrix",
    "avgpool_matrix",
    "maxpool_forward",
    "stabilize",
    "safe_divide",
    "lrp_linear",
    "forward",
    "forward_and_lrp",
    "network_lrp",
    "network_grad",
]

_F = np.float64


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _pair(v):
    """Return ``v`` as a pair of ints (an int ``k`` becomes ``(k, k)``)."""
    if np.ndim(v) == 0:
        return (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v


def _padding_pairs(padding):
    """Return padding as ``((low_h, high_h), (low_w, high_w))`` of ints."""
    p = tuple(tuple(int(a) for a in pair) for pair in padding)
    if len(p) != 2 or any(len(pair) != 2 for pair in p):
        raise ValueError(f"padding must be two (low, high) pairs, got {padding!r}")
    return p


def _pos(a):
    return np.maximum(a, 0.0)


def _neg(a):
    return np.minimum(a, 0.0)


# ---------------------------------------------------------------------------
# Part 1: layers as explicit matrices
# ---------------------------------------------------------------------------
def dense_matrix(w):
    """Matrix of a dense layer.

    Parameters
    ----------
    w : array_like, shape (n_in, n_out)
        Weight in flax layout (``z = x @ w + b``).

    Returns
    -------
    A : ndarray, shape (n_out, n_in)
        Matrix with ``z = A @ x + b``.
    """
    w = np.asarray(w, dtype=_F)
    if w.ndim != 2:
        raise ValueError(f"dense weight must be 2-D, got shape {w.shape}")
    return np.array(w.T, dtype=_F, copy=True)


def conv_output_shape(in_shape, kernel_shape, strides=(1, 1),
                      padding=((0, 0), (0, 0)), rhs_dilation=(1, 1)):
    """Output shape ``(H_out, W_out, C_out)`` of a 2-D convolution.

    Parameters
    ----------
    in_shape : tuple of int
        ``(H, W, C)``.
    kernel_shape : tuple of int
        ``(kh, kw, c_in_per_group, c_out)``.
    strides, padding, rhs_dilation
        As in :func:`conv_matrix`.

    Returns
    -------
    tuple of int
    """
    H, W, _ = (int(a) for a in in_shape)
    kh, kw, _, cout = (int(a) for a in kernel_shape)
    sh, sw = _pair(strides)
    (plh, phh), (plw, phw) = _padding_pairs(padding)
    dh, dw = _pair(rhs_dilation)
    eff_h = (kh - 1) * dh + 1
    eff_w = (kw - 1) * dw + 1
    span_h = H + plh + phh - eff_h
    span_w = W + plw + phw - eff_w
    out_h = span_h // sh + 1 if span_h >= 0 else 0
    out_w = span_w // sw + 1 if span_w >= 0 else 0
    return (out_h, out_w, cout)


def conv_matrix(kernel, in_shape, strides=(1, 1), padding=((0, 0), (0, 0)),
                rhs_dilation=(1, 1), groups=1):
    """Matrix of a 2-D convolution acting on one flattened HWC image.

    Output position ``(oh, ow)`` reads the (padded) input at
    ``h = oh * stride_h + i * dilation_h - pad_low_h`` (same for ``w``) for
    kernel tap ``(i, j)``.  Taps landing in the padding contribute nothing.
    Output channel ``o`` belongs to group ``g = o // (c_out // groups)`` and
    reads input channels ``g * c_in_g + ci`` for ``ci < c_in_g``.

    Parameters
    ----------
    kernel : array_like, shape (kh, kw, c_in // groups, c_out)
        HWIO kernel.
    in_shape : tuple of int
        ``(H, W, C)`` of the input image.
    strides : tuple of int, optional
        Window strides ``(sh, sw)``.
    padding : tuple of pairs, optional
        Explicit ``((low_h, high_h), (low_w, high_w))`` padding.
    rhs_dilation : tuple of int, optional
        Kernel dilation ``(dh, dw)``.
    groups : int, optional
        Feature group count.

    Returns
    -------
    A : ndarray, shape (prod(out_shape), H * W * C)
        ``conv(x).ravel() == A @ x.ravel()`` (no bias).
    out_shape : tuple of int
        ``(H_out, W_out, c_out)``.
    """
    kernel = np.asarray(kernel, dtype=_F)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be HWIO (4-D), got shape {kernel.shape}")
    H, W, C = (int(a) for a in in_shape)
    kh, kw, cin_g, cout = kernel.shape
    groups = int(groups)
    if C != cin_g * groups:
        raise ValueError(f"input channels {C} != kernel in-channels {cin_g} * groups {groups}")
    if cout % groups != 0:
        raise ValueError(f"c_out={cout} not divisible by groups={groups}")
    cout_g = cout // groups
    sh, sw = _pair(strides)
    (plh, _), (plw, _) = _padding_pairs(padding)
    dh, dw = _pair(rhs_dilation)
    out_shape = conv_output_shape(in_shape, kernel.shape, strides, padding, rhs_dilation)
    out_h, out_w, _ = out_shape

    A = np.zeros((out_h * out_w * cout, H * W * C), dtype=_F)
    for oh in range(out_h):
        for ow in range(out_w):
            for o in range(cout):
                row = (oh * out_w + ow) * cout + o
                g = o // cout_g
                for i in range(kh):
                    h = oh * sh + i * dh - plh
                    if h < 0 or h >= H:
                        continue  # padding
                    for j in range(kw):
                        w = ow * sw + j * dw - plw
                        if w < 0 or w >= W:
                            continue  # padding
                        for ci in range(cin_g):
                            c = g * cin_g + ci
                            col = (h * W + w) * C + c
                            A[row, col] += kernel[i, j, ci, o]
    return A, out_shape


def _pool_windows(in_shape, window, stride):
    """Enumerate 2-D pooling windows (no padding).

    Returns
    -------
    out_shape : tuple of int
        ``(H_out, W_out, C)``.
    windows : list of (int, list of int)
        For every flat output index, the flat input indices of its window in
        row-major window order.
    """
    H, W, C = (int(a) for a in in_shape)
    wh, ww = _pair(window)
    sh, sw = _pair(stride)
    out_h = (H - wh) // sh + 1 if H >= wh else 0
    out_w = (W - ww) // sw + 1 if W >= ww else 0
    windows = []
    for oh in range(out_h):
        for ow in range(out_w):
            for c in range(C):
                row = (oh * out_w + ow) * C + c
                cols = []
                for i in range(wh):
                    for j in range(ww):
                        h = oh * sh + i
                        w = ow * sw + j
                        cols.append((h * W + w) * C + c)
                windows.append((row, cols))
    return (out_h, out_w, C), windows


def avgpool_matrix(in_shape, window, stride):
    """Matrix of 2-D average pooling (no padding) on a flattened HWC image.

    Parameters
    ----------
    in_shape : tuple of int
        ``(H, W, C)``.
    window, stride : int or tuple of int

    Returns
    -------
    A : ndarray, shape (prod(out_shape), H * W * C)
        Entries ``1 / (wh * ww)`` on every window member.
    out_shape : tuple of int
    """
    out_shape, windows = _pool_windows(in_shape, window, stride)
    wh, ww = _pair(window)
    A = np.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))), dtype=_F)
    for row, cols in windows:
        for col in cols:
            A[row, col] += 1.0 / (wh * ww)
    return A, out_shape


def maxpool_forward(x, window, stride):
    """2-D max pooling (no padding) on one HWC image.

    Parameters
    ----------
    x : array_like, shape (H, W, C)
    window, stride : int or tuple of int

    Returns
    -------
    y : ndarray, shape (H_out, W_out, C)
    winners : ndarray of int, shape (H_out * W_out * C,)
        For every flat output index, the flat input index of the FIRST maximal
        element of its window (row-major window order).
    """
    x = np.asarray(x, dtype=_F)
    out_shape, windows = _pool_windows(x.shape, window, stride)
    xf = x.ravel()
    y = np.zeros(int(np.prod(out_shape)), dtype=_F)
    winners = np.zeros(int(np.prod(out_shape)), dtype=np.int64)
    for row, cols in windows:
        best = cols[0]
        for col in cols[1:]:
            if xf[col] > xf[best]:  # strict: keeps the first maximum
                best = col
        y[row] = xf[best]
        winners[row] = best
    return y.reshape(out_shape), winners


# ---------------------------------------------------------------------------
# Part 2: one-layer rules
# ---------------------------------------------------------------------------
def stabilize(d, e):
    """Zennit-style stabiliser ``d + e * s(d)``, ``s(d) = +1 if d >= 0 else -1``.

    Parameters
    ----------
    d : array_like
    e : float

    Returns
    -------
    ndarray
    """
    d = np.asarray(d, dtype=_F)
    return d + _F(e) * np.where(d >= 0, 1.0, -1.0)


def safe_divide(num, den):
    """Elementwise ``num / den`` with the quotient defined as 0 where ``den == 0``.

    Parameters
    ----------
    num, den : array_like
        Broadcastable arrays.

    Returns
    -------
    ndarray
    """
    num, den = np.broadcast_arrays(np.asarray(num, dtype=_F), np.asarray(den, dtype=_F))
    out = np.zeros(num.shape, dtype=_F)
    nz = den != 0
    out[nz] = num[nz] / den[nz]
    return out


_RULE_DEFAULTS = {
    "epsilon": {"epsilon": 1e-6},
    "zero": {},
    "zplus": {"stabilizer": 1e-6},
    "alphabeta": {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
    "gamma": {"gamma": 0.25, "stabilizer": 1e-6},
    "zbox": {"low": None, "high": None, "stabilizer": 1e-6},
    "flat": {"stabilizer": 1e-6},
    "wsquare": {"stabilizer": 1e-6},
    "norm": {"stabilizer": 1e-6},
}


def lrp_linear(rule, x, weight, bias, R, to_matrix, **params):
    """Relevance of one affine layer ``z = A(weight) @ x + bias`` by one LRP rule.

    Parameters
    ----------
    rule : str
        One of ``"epsilon"``, ``"zero"``, ``"zplus"``, ``"alphabeta"``,
        ``"gamma"``, ``"zbox"``, ``"flat"``, ``"wsquare"``, ``"norm"``.
    x : array_like, shape (n,)
        Layer input.
    weight : array_like or None
        The layer's weight in its native layout (ignored by ``"norm"``).
    bias : array_like, shape (m,), or None
        None means zero bias.
    R : array_like, shape (m,)
        Relevance at the layer output.
    to_matrix : callable
        ``to_matrix(weight_like) -> A`` of shape (m, n), for any array of the
        weight's shape (``"norm"`` calls ``to_matrix(None)``).
    **params
        Rule parameters (all rules also accept ``ignore_bias``, default False):

        * ``epsilon``: ``epsilon`` (1e-6)
        * ``zplus``, ``flat``, ``wsquare``, ``norm``: ``stabilizer`` (1e-6)
        * ``alphabeta``: ``alpha`` (2), ``beta`` (1), ``stabilizer``
        * ``gamma``: ``gamma`` (0.25), ``stabilizer``
        * ``zbox``: ``low``, ``high`` (required; broadcastable to (n,)),
          ``stabilizer``

    Returns
    -------
    R_in : ndarray, shape (n,)
    """
    if rule not in _RULE_DEFAULTS:
        raise ValueError(f"unknown rule {rule!r}")
    p = dict(_RULE_DEFAULTS[rule])
    p["ignore_bias"] = False
    unknown = set(params) - set(p)
    if unknown:
        raise TypeError(f"rule {rule!r} got unexpected parameters {sorted(unknown)}")
    p.update(params)

    x = np.asarray(x, dtype=_F)
    R = np.asarray(R, dtype=_F)
    if x.ndim != 1 or R.ndim != 1:
        raise ValueError("x and R must be 1-D")
    n, m = x.shape[0], R.shape[0]

    def M(wl):
        A = np.asarray(to_matrix(wl), dtype=_F)
        if A.shape != (m, n):
            raise ValueError(f"to_matrix returned shape {A.shape}, expected {(m, n)}")
        return A

    # The layer's true bias (the output z that selects gamma's branch keeps it, as in
    # Zennit); ``ignore_bias`` drops it from the denominators only.
    b_true = np.zeros(m, dtype=_F) if bias is None else np.broadcast_to(np.asarray(bias, dtype=_F), (m,)).copy()
    b = np.zeros(m, dtype=_F) if p["ignore_bias"] else b_true
    w = None if weight is None else np.asarray(weight, dtype=_F)
    xp, xn = _pos(x), _neg(x)

    if rule in ("epsilon", "zero"):
        eps = 0.0 if rule == "zero" else p["epsilon"]
        A = M(w)
        z = A @ x + b
        s = safe_divide(R, stabilize(z, eps))
        return x * (A.T @ s)

    stab = p["stabilizer"]

    if rule == "zplus":
        Ap, An = M(_pos(w)), M(_neg(w))
        d = Ap @ xp + An @ xn + _pos(b)
        s = safe_divide(R, stabilize(d, stab))
        return xp * (Ap.T @ s) + xn * (An.T @ s)

    if rule == "alphabeta":
        alpha, beta = _F(p["alpha"]), _F(p["beta"])
        Ap, An = M(_pos(w)), M(_neg(w))
        dp = Ap @ xp + An @ xn + _pos(b)
        dn = An @ xp + Ap @ xn + _neg(b)
        sp = safe_divide(R, stabilize(dp, stab))
        sn = safe_divide(R, stabilize(dn, stab))
        pos_part = xp * (Ap.T @ sp) + xn * (An.T @ sp)
        neg_part = xp * (An.T @ sn) + xn * (Ap.T @ sn)
        return alpha * pos_part - beta * neg_part

    if rule == "gamma":
        g = _F(p["gamma"])
        A = M(w)
        AP = M(w + g * _pos(w))
        AN = M(w + g * _neg(w))
        z = A @ x + b_true
        dpos = AP @ xp + AN @ xn + (b + g * _pos(b))
        dneg = AN @ xp + AP @ xn + (b + g * _neg(b))
        spos = safe_divide(R * (z > 0), stabilize(dpos, stab))
        sneg = safe_divide(R * (z < 0), stabilize(dneg, stab))
        return xp * (AP.T @ spos + AN.T @ sneg) + xn * (AN.T @ spos + AP.T @ sneg)

    if rule == "zbox":
        if p["low"] is None or p["high"] is None:
            raise TypeError("zbox needs 'low' and 'high'")
        low = np.broadcast_to(np.asarray(p["low"], dtype=_F), x.shape)
        high = np.broadcast_to(np.asarray(p["high"], dtype=_F), x.shape)
        A, Ap, An = M(w), M(_pos(w)), M(_neg(w))
        d = A @ x - Ap @ low - An @ high
        s = safe_divide(R, stabilize(d, stab))
        return x * (A.T @ s) - low * (Ap.T @ s) - high * (An.T @ s)

    if rule == "flat":
        A1 = M(np.ones_like(w))
        d = A1 @ np.ones(n, dtype=_F)
        s = safe_divide(R, stabilize(d, stab))
        return A1.T @ s

    if rule == "wsquare":
        A2 = M(w ** 2)
        d = A2 @ np.ones(n, dtype=_F) + b ** 2
        s = safe_divide(R, stabilize(d, stab))
        return A2.T @ s

    if rule == "norm":
        A = M(None)
        s = safe_divide(R, stabilize(A @ x, stab))
        return x * (A.T @ s)

    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------
# Part 3: sequential networks
# ---------------------------------------------------------------------------
def _conv_args(layer):
    """Unpack a ``("conv", ...)`` tuple into keyword arguments."""
    _, kernel, b, strides, padding, groups, *rest = layer
    dil = rest[0] if rest else (1, 1)
    return np.asarray(kernel, dtype=_F), b, dict(
        strides=_pair(strides), padding=_padding_pairs(padding),
        rhs_dilation=_pair(dil), groups=int(groups))


def _forward_trace(layers, x):
    """Forward pass recording what the backward passes need.

    Returns
    -------
    out : ndarray
        Network output.
    trace : list of dict
        One record per layer with at least the key ``"input"``.
    """
    a = np.asarray(x, dtype=_F)
    trace = []
    stack = []
    for layer in layers:
        kind = layer[0]
        rec = {"input": a}
        if kind == "dense":
            _, w, b = layer
            if a.ndim != 1:
                raise ValueError("dense layer needs a 1-D input; add ('flatten',)")
            A = dense_matrix(w)
            rec["A"] = A
            a = A @ a + (0.0 if b is None else np.asarray(b, dtype=_F))
        elif kind == "conv":
            kernel, b, kw = _conv_args(layer)
            A, out_shape = conv_matrix(kernel, a.shape, **kw)
            rec["A"] = A
            z = A @ a.ravel()
            if b is not None:
                z = z + np.tile(np.asarray(b, dtype=_F), int(np.prod(out_shape[:2])))
            a = z.reshape(out_shape)
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "maxpool":
            _, window, stride = layer
            a, winners = maxpool_forward(a, window, stride)
            rec["winners"] = winners
        elif kind == "avgpool":
            _, window, stride = layer
            A, out_shape = avgpool_matrix(a.shape, window, stride)
            rec["A"] = A
            a = (A @ a.ravel()).reshape(out_shape)
        elif kind == "flatten":
            a = a.ravel()
        elif kind == "residual_start":
            stack.append(a)
        elif kind == "residual_add":
            skip = stack.pop()
            if skip.shape != a.shape:
                raise ValueError(f"residual shapes differ: {skip.shape} vs {a.shape}")
            rec["main"], rec["skip"] = a, skip
            a = a + skip
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        trace.append(rec)
    if stack:
        raise ValueError("unbalanced residual_start")
    return a, trace


def forward(layers, x):
    """Network output for a single example.

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example (1-D vector or (H, W, C) image).

    Returns
    -------
    ndarray
        The network output (logits).
    """
    return _forward_trace(layers, x)[0]


def _rule_for_layer(rule, in_shape):
    """Split a ``(name, params)`` entry; broadcast zbox bounds to the layer input."""
    name, params = rule
    params = dict(params or {})
    for key in ("low", "high"):
        if key in params and params[key] is not None:
            params[key] = np.broadcast_to(np.asarray(params[key], dtype=_F), in_shape).ravel()
    return name, params


def forward_and_lrp(layers, x, R_out_fn, rules, pool_stabilizer=1e-6,
                    add_stabilizer=1e-6):
    """Forward pass followed by an LRP backward pass.

    Dense/conv layers use the given rules, ReLU and flatten pass relevance
    unchanged, max pooling gives each window's relevance entirely to its first
    maximal element (overlapping windows add), average pooling uses the
    ``"norm"`` rule with ``pool_stabilizer``, and a residual addition
    ``y = main + skip`` splits relevance as ``main * R / stab(y)`` and
    ``skip * R / stab(y)`` with ``add_stabilizer`` (the skip share is added back
    at the matching ``residual_start``).

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example.
    R_out_fn : callable
        ``R_out_fn(logits) -> R_out`` with the shape of the logits.
    rules : list of (str, dict)
        One ``(rule_name, params)`` per dense/conv layer, in order.
    pool_stabilizer : float, optional
        Stabiliser of the average-pooling ``"norm"`` rule.
    add_stabilizer : float, optional
        Stabiliser of the residual-addition split.

    Returns
    -------
    R_in : ndarray
        Relevance with the shape of ``x``.
    logits : ndarray
    """
    logits, trace = _forward_trace(layers, x)
    weighted = [i for i, layer in enumerate(layers) if layer[0] in ("dense", "conv")]
    if len(rules) != len(weighted):
        raise ValueError(f"{len(rules)} rules for {len(weighted)} dense/conv layers")
    rule_of = dict(zip(weighted, rules))

    R = np.asarray(R_out_fn(logits), dtype=_F)
    if R.shape != logits.shape:
        raise ValueError(f"R_out shape {R.shape} != logits shape {logits.shape}")
    stack = []
    for i in reversed(range(len(layers))):
        layer, rec = layers[i], trace[i]
        kind, a = layer[0], rec["input"]
        if kind in ("dense", "conv"):
            if kind == "dense":
                _, w, b = layer
                weight = np.asarray(w, dtype=_F)
                bias = None if b is None else np.asarray(b, dtype=_F)
                to_matrix = dense_matrix
            else:
                weight, b, kw = _conv_args(layer)
                in_shape = a.shape

                def to_matrix(k, in_shape=in_shape, kw=kw):
                    return conv_matrix(k, in_shape, **kw)[0]

                n_pos = R.shape[0] * R.shape[1]
                bias = None if b is None else np.tile(np.asarray(b, dtype=_F), n_pos)
            name, params = _rule_for_layer(rule_of[i], a.shape)
            R = lrp_linear(name, a.ravel(), weight, bias, R.ravel(), to_matrix,
                           **params).reshape(a.shape)
        elif kind in ("relu",):
            pass
        elif kind == "flatten":
            R = R.reshape(a.shape)
        elif kind == "maxpool":
            Rin = np.zeros(a.size, dtype=_F)
            np.add.at(Rin, rec["winners"], R.ravel())
            R = Rin.reshape(a.shape)
        elif kind == "avgpool":
            A = rec["A"]
            R = lrp_linear("norm", a.ravel(), None, None, R.ravel(), lambda _: A,
                           stabilizer=pool_stabilizer).reshape(a.shape)
        elif kind == "residual_add":
            den = stabilize(rec["main"] + rec["skip"], add_stabilizer)
            q = safe_divide(R, den)
            stack.append(rec["skip"] * q)
            R = rec["main"] * q
        elif kind == "residual_start":
            R = R + stack.pop()
        else:  # pragma: no cover
            raise ValueError(f"unknown layer kind {kind!r}")
    return R, logits


def network_lrp(layers, x, target, rules, pool_stabilizer=1e-6, add_stabilizer=1e-6):
    """LRP of one example for the logit ``target``.

    The output relevance is ``logits[target]`` at index ``target`` and zero
    elsewhere.  See :func:`forward_and_lrp` for the backward semantics.

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example (1-D vector or (H, W, C) image).
    target : int
        Index into the (flattened) logits.
    rules : list of (str, dict)
        One ``(rule_name, params)`` per dense/conv layer, in order.
    pool_stabilizer, add_stabilizer : float, optional
        See :func:`forward_and_lrp`.

    Returns
    -------
    R_in : ndarray
        Relevance with the shape of ``x``.
    logits : ndarray
    """
    def R_out_fn(logits):
        R = np.zeros(logits.shape, dtype=_F)
        R.flat[target] = logits.flat[target]
        return R

    return forward_and_lrp(layers, x, R_out_fn, rules, pool_stabilizer=pool_stabilizer,
                           add_stabilizer=add_stabilizer)


def network_grad(layers, x, target):
    """Exact gradient of ``logits[target]`` w.r.t. ``x`` by explicit backprop.

    ReLU derivative is 1 where the pre-activation is > 0 and 0 elsewhere; the
    max-pool gradient goes to the first maximal element of each window.

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example.
    target : int
        Index into the (flattened) logits.

    Returns
    -------
    grad : ndarray
        Gradient with the shape of ``x``.
    """
    logits, trace = _forward_trace(layers, x)
    g = np.zeros(logits.shape, dtype=_F)
    g.flat[target] = 1.0
    stack = []
    for i in reversed(range(len(layers))):
        kind, rec = layers[i][0], trace[i]
        a = rec["input"]
        if kind in ("dense", "conv", "avgpool"):
            g = (rec["A"].T @ g.ravel()).reshape(a.shape)
        elif kind == "relu":
            g = g * (a > 0)
        elif kind == "flatten":
            g = g.reshape(a.shape)
        elif kind == "maxpool":
            gin = np.zeros(a.size, dtype=_F)
            np.add.at(gin, rec["winners"], g.ravel())
            g = gin.reshape(a.shape)
        elif kind == "residual_add":
            stack.append(g)
        elif kind == "residual_start":
            g = g + stack.pop()
        else:  # pragma: no cover
            raise ValueError(f"unknown layer kind {kind!r}")
    return g
