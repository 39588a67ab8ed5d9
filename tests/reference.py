"""Independent float64 NumPy reference implementation of LRP rules.

This module is a *test oracle*.  It is deliberately simple and slow: every
layer is turned into an explicit dense matrix (one example, no batch axis) and
every rule is written as a handful of matrix-vector products, following the
semantics of the Zennit library.  It does not depend on the library under
test (nor on JAX).

Conventions
-----------
* Everything is computed in float64.
* Examples are single, channels-last (HWC for images); kernels are ``(*k, I, O)``.
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
* ``("conv", kernel, b, strides, padding_pairs, groups)`` with an optional
  seventh element ``rhs_dilation`` and eighth ``lhs_dilation`` (a transposed
  convolution); ``kernel`` of shape ``(*k, c_in // groups, c_out)`` for any
  number of spatial axes (input ``(*spatial, C)``); ``b`` of shape (c_out,) or
  None.  A BatchNorm after a layer is folded into its kernel and bias by the
  caller (``W' = W a``, ``b' = a (b - mean) + beta``, Zennit's MergeBatchNorm).
* ``("relu",)`` and ``("act", name)`` (see :data:`ACTIVATIONS`) -- elementwise;
  relevance passes unchanged.  An activation's own constants (hard_sigmoid's
  ``+3``, log_sigmoid's negations) are part of the activation, never of the
  layer before it.
* ``("affine", scale, shift)`` -- per-channel ``x * scale + shift`` that does not
  follow a layer (BatchNorm on the input or after an activation): elementwise,
  relevance passes unchanged.
* ``("glu",)`` -- ``a * sigmoid(g)`` of the two halves of the last axis; all
  relevance goes to ``a`` (the signal takes all).
* ``("linmap", M, out_shape)`` -- a parameter-free linear map (resizing,
  padding) with matrix ``M`` on the flattened example; relevance is routed by
  ``M.T`` (its plain VJP), as Zennit treats upsampling.
* ``("pool", M, out_shape)`` -- a parameter-free average (any window, padding,
  global or adaptive average pooling) with matrix ``M``; the ``"norm"`` rule.
* ``("maxpool", window, stride)`` with an optional fourth element ``padding``
  (``(low, high)`` pairs) -- any number of spatial axes.
* ``("avgpool", window, stride)`` -- 2-D, no padding.
* ``("flatten",)`` -- row-major ravel.
* ``("residual", main, skip)`` -- ``main(x) + skip(x)`` for two layer lists
  (``skip = []`` is the identity shortcut).
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
    "weighted_layers",
    "same_pads",
    "conv_transpose_pads",
    "conv_matrix_nd",
    "avgpool_matrix_nd",
    "maxpool_nd",
    "pad_matrix",
    "resize_matrix_1d",
    "resize_matrix",
    "ACTIVATIONS",
    "composite_rules",
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
# Part 3: more layers as explicit matrices (N-d convolutions, pooling,
# padding, resizing)
# ---------------------------------------------------------------------------
def same_pads(n, k, stride=1, dilation=1):
    """``(low, high)`` of ``'SAME'`` padding for one spatial axis (XLA's convention).

    The output has ``ceil(n / stride)`` positions; the total padding
    ``max((out - 1) * stride + (k - 1) * dilation + 1 - n, 0)`` is split with the
    smaller half first.
    """
    out = -(-int(n) // int(stride))
    eff = (int(k) - 1) * int(dilation) + 1
    total = max((out - 1) * int(stride) + eff - int(n), 0)
    return (total // 2, total - total // 2)


def conv_transpose_pads(k, stride, padding):
    """``(low, high)`` padding of the lhs-dilated convolution computing a transposed
    convolution (``lax.conv_transpose`` conventions) on one axis.

    ``k`` is the (dilated) kernel size; ``padding`` is ``"SAME"``, ``"VALID"`` or a
    ``(low, high)`` pair of the forward convolution.
    """
    k, s = int(k), int(stride)
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    else:
        low, high = (k - int(p) - 1 for p in padding)
        total = low + high
    return (low, total - low)


def _per_axis(v, n, default):
    if v is None:
        return (default,) * n
    if np.ndim(v) == 0:
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ValueError(f"expected {n} values, got {v!r}")
    return v


def _pad_list(padding, n):
    if padding is None:
        return ((0, 0),) * n
    p = tuple(tuple(int(a) for a in pair) for pair in padding)
    if len(p) != n or any(len(pair) != 2 for pair in p):
        raise ValueError(f"padding must be {n} (low, high) pairs, got {padding!r}")
    return p


def conv_matrix_nd(kernel, in_shape, strides=None, padding=None, rhs_dilation=None,
                   groups=1, lhs_dilation=None):
    """Matrix of an N-d convolution on one flattened channels-last example.

    The input ``(*spatial, C)`` is first dilated by ``lhs_dilation`` (``d - 1``
    zeros between neighbours; this is how a transposed convolution is computed),
    then padded (negative padding crops); output position ``o`` reads the dilated
    padded input at ``o * stride + t * rhs_dilation`` for kernel tap ``t``. Taps
    landing on padding or on dilation holes contribute nothing. Groups as in
    :func:`conv_matrix`.

    Parameters
    ----------
    kernel : array_like, shape (*k, c_in // groups, c_out)
    in_shape : tuple of int
        ``(*spatial, C)``.
    strides, rhs_dilation, lhs_dilation : int or tuple of int, optional
    padding : tuple of (low, high) pairs, optional
    groups : int, optional

    Returns
    -------
    A : ndarray, shape (prod(out_shape), prod(in_shape))
    out_shape : tuple of int
    """
    kernel = np.asarray(kernel, dtype=_F)
    nd = kernel.ndim - 2
    in_shape = tuple(int(a) for a in in_shape)
    if len(in_shape) != nd + 1:
        raise ValueError(f"input shape {in_shape} does not match a {nd}-d kernel")
    spatial, C = in_shape[:-1], in_shape[-1]
    ks, (cin_g, cout) = kernel.shape[:nd], kernel.shape[nd:]
    groups = int(groups)
    if C != cin_g * groups or cout % groups:
        raise ValueError(f"channels {C} / {cout} do not fit {cin_g} per group, {groups} groups")
    cout_g = cout // groups
    s, rd, ld = (_per_axis(v, nd, 1) for v in (strides, rhs_dilation, lhs_dilation))
    pads = _pad_list(padding, nd)
    out_sp = []
    for n, k, si, ri, li, (pl, ph) in zip(spatial, ks, s, rd, ld, pads):
        span = (n - 1) * li + 1 + pl + ph - ((k - 1) * ri + 1)
        out_sp.append(span // si + 1 if span >= 0 else 0)
    out_shape = tuple(out_sp) + (cout,)
    A = np.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))), dtype=_F)
    in_strides = np.cumprod((1,) + in_shape[::-1])[::-1][1:]  # row-major strides
    for o in np.ndindex(*out_sp):
        row0 = int(np.ravel_multi_index(o, out_sp)) * cout if out_sp else 0
        for t in np.ndindex(*ks):
            idx = []
            for oi, ti, si, ri, li, (pl, _), n in zip(o, t, s, rd, ld, pads, spatial):
                pos = oi * si + ti * ri - pl
                if pos < 0 or pos % li or pos // li >= n:
                    break
                idx.append(pos // li)
            else:
                col0 = int(np.dot(idx, in_strides[:-1])) if idx else 0
                for g in range(groups):
                    rows = slice(row0 + g * cout_g, row0 + (g + 1) * cout_g)
                    cols = slice(col0 + g * cin_g, col0 + (g + 1) * cin_g)
                    A[rows, cols] += kernel[t][:, g * cout_g:(g + 1) * cout_g].T
    return A, out_shape


def _windows_nd(in_shape, window, stride, padding):
    """Pooling windows over the spatial axes of a channels-last example.

    Returns ``out_shape`` and, per flat output index, the flat input indices of its
    window (row-major window order, padded positions left out) and the window size
    including padding.
    """
    in_shape = tuple(int(a) for a in in_shape)
    spatial, C = in_shape[:-1], in_shape[-1]
    nd = len(spatial)
    window = _per_axis(window, nd, 1)
    stride = _per_axis(stride, nd, 1)
    pads = _pad_list(padding, nd)
    out_sp = tuple((n + pl + ph - w) // s + 1 for n, w, s, (pl, ph) in zip(spatial, window, stride, pads))
    windows = []
    for o in np.ndindex(*out_sp):
        for c in range(C):
            row = int(np.ravel_multi_index(o + (c,), out_sp + (C,)))
            cols = []
            for t in np.ndindex(*window):
                pos = tuple(oi * si + ti - pl for oi, si, ti, (pl, _) in zip(o, stride, t, pads))
                if all(0 <= p < n for p, n in zip(pos, spatial)):
                    cols.append(int(np.ravel_multi_index(pos + (c,), in_shape)))
            windows.append((row, cols))
    return out_sp + (C,), windows, int(np.prod(window))


def avgpool_matrix_nd(in_shape, window, stride=None, padding=None, count_include_pad=True):
    """Matrix of N-d average pooling (any padding) on a channels-last example.

    With ``count_include_pad`` every window divides by its full size (padding
    counts as zeros), otherwise by its number of real inputs (Flax's
    ``avg_pool`` conventions). A global or adaptive average pool is the window
    that covers the whole axis (or ``n // out`` of it).
    """
    out_shape, windows, size = _windows_nd(in_shape, window, stride, padding)
    A = np.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))), dtype=_F)
    for row, cols in windows:
        for col in cols:
            A[row, col] += 1.0 / (size if count_include_pad else len(cols))
    return A, out_shape


def maxpool_nd(x, window, stride=None, padding=None):
    """N-d max pooling (padding never wins) of one channels-last example.

    Returns ``y`` and, per flat output index, the flat input index of the first
    maximal element of its window (row-major window order).
    """
    x = np.asarray(x, dtype=_F)
    out_shape, windows, _ = _windows_nd(x.shape, window, stride, padding)
    xf = x.ravel()
    y = np.zeros(int(np.prod(out_shape)), dtype=_F)
    winners = np.zeros(len(windows), dtype=np.int64)
    for row, cols in windows:
        best = cols[0]
        for col in cols[1:]:
            if xf[col] > xf[best]:
                best = col
        y[row], winners[row] = xf[best], best
    return y.reshape(out_shape), winners


def pad_matrix(in_shape, pads, mode="constant"):
    """0/1 matrix of ``numpy.pad`` on the spatial axes of a channels-last example.

    ``mode`` is ``"constant"`` (zeros), ``"wrap"`` (circular) or ``"reflect"``;
    the index bookkeeping is NumPy's own ``pad`` applied to an array of indices.
    """
    in_shape = tuple(int(a) for a in in_shape)
    idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    width = [tuple(p) for p in pads] + [(0, 0)]
    if mode == "constant":
        src = np.pad(idx, width, mode="constant", constant_values=-1)
    else:
        src = np.pad(idx, width, mode=mode)
    M = np.zeros((src.size, idx.size), dtype=_F)
    rows = np.nonzero(src.ravel() >= 0)[0]
    M[rows, src.ravel()[rows]] = 1.0
    return M, src.shape


def resize_matrix_1d(n_in, n_out, method="linear", antialias=True):
    """Interpolation matrix ``(n_out, n_in)`` of ``jax.image.resize`` along one axis.

    Output pixel ``i`` is centred at input coordinate ``(i + 0.5) n_in / n_out - 0.5``;
    ``"nearest"`` takes input ``floor((i + 0.5) n_in / n_out)``, ``"linear"`` weights
    inputs with a triangle kernel (widened by ``n_in / n_out`` when downsampling with
    ``antialias``), normalised to sum to one over the inputs that exist.
    """
    n_in, n_out = int(n_in), int(n_out)
    M = np.zeros((n_out, n_in), dtype=_F)
    inv = n_in / n_out
    for i in range(n_out):
        if method == "nearest":
            M[i, min(int(np.floor((i + 0.5) * inv)), n_in - 1)] = 1.0
            continue
        if method != "linear":
            raise ValueError(f"unknown resize method {method!r}")
        centre = (i + 0.5) * inv - 0.5
        width = max(inv, 1.0) if antialias else 1.0
        w = np.maximum(0.0, 1.0 - np.abs(centre - np.arange(n_in)) / width)
        M[i] = w / w.sum()
    return M


def resize_matrix(in_shape, out_spatial, method="linear", antialias=True):
    """Matrix of ``jax.image.resize`` of the spatial axes of a channels-last example."""
    in_shape = tuple(int(a) for a in in_shape)
    M = np.eye(in_shape[-1], dtype=_F)
    for n_in, n_out in reversed(list(zip(in_shape[:-1], out_spatial))):
        M = np.kron(resize_matrix_1d(n_in, n_out, method, antialias), M)
    return M, tuple(int(a) for a in out_spatial) + (in_shape[-1],)


# ---------------------------------------------------------------------------
# Part 4: elementwise activations (NumPy, float64)
# ---------------------------------------------------------------------------
def _softplus(x):
    return np.logaddexp(x, 0.0)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
_erf = np.vectorize(__import__("math").erf, otypes=[_F])

#: Elementwise activations by name (the names and constants of ``jax.nn``).
ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "hard_sigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "hard_swish": lambda x: x * _relu6(x + 3.0) / 6.0,
    "hard_tanh": lambda x: np.clip(x, -1.0, 1.0),
    "sigmoid": _sigmoid,
    "log_sigmoid": lambda x: -_softplus(-x),
    "softplus": _softplus,
    "sparse_plus": lambda x: np.where(x <= -1.0, 0.0, np.where(x >= 1.0, x, (x + 1.0) ** 2 / 4.0)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4.0)) / 2.0,
    "silu": lambda x: x * _sigmoid(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "tanh": np.tanh,
    "tanh_half": lambda x: np.tanh(x / 2.0),
    "soft_sign": lambda x: x / (np.abs(x) + 1.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3))),
    "gelu_erf": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
    "relu_shift": lambda x: np.maximum(x - 0.5, 0.0),
    "relu_pow": lambda x: np.maximum(x, 0.0) ** 1.5,
    "square": lambda x: x * x,
    "abs": np.abs,
    "sin": np.sin,
}

# Derivatives where network_grad needs them (piecewise-linear activations).
_ACT_GRADS = {
    "relu": lambda x: (x > 0).astype(_F),
    "leaky_relu": lambda x: np.where(x >= 0, 1.0, 0.01),
    "relu_shift": lambda x: (x > 0.5).astype(_F),
}


# ---------------------------------------------------------------------------
# Part 5: networks
# ---------------------------------------------------------------------------
def _nest(layers):
    """Turn ``residual_start`` / ``residual_add`` brackets into ``residual`` items."""
    out, stack = [], []
    for layer in layers:
        if layer[0] == "residual_start":
            stack.append(out)
            out = []
        elif layer[0] == "residual_add":
            if not stack:
                raise ValueError("residual_add without residual_start")
            main, out = out, stack.pop()
            out.append(("residual", main, []))
        else:
            out.append(layer)
    if stack:
        raise ValueError("unbalanced residual_start")
    return out


def _conv_args(layer):
    """Unpack a ``("conv", ...)`` tuple into the kernel, bias and keyword arguments."""
    _, kernel, b, strides, padding, groups, *rest = layer
    kernel = np.asarray(kernel, dtype=_F)
    dil = rest[0] if rest else None
    lhs = rest[1] if len(rest) > 1 else None
    return kernel, b, dict(strides=strides, padding=padding, rhs_dilation=dil,
                           groups=int(groups), lhs_dilation=lhs)


class _Ctx:
    """Per-pass bookkeeping: weighted layers in forward order, with ``first`` flags."""

    def __init__(self):
        self.weighted = []  # (kind, first)


def _fwd(layers, a, ctx, depth):
    """Forward pass over a (nested) layer list. Returns ``(out, records, depth)``."""
    recs = []
    for layer in layers:
        kind = layer[0]
        rec = {"input": a}
        if kind in ("dense", "conv"):
            if kind == "dense":
                _, w, b = layer
                if a.ndim != 1:
                    raise ValueError("dense layer needs a 1-D input; add ('flatten',)")
                w = np.asarray(w, dtype=_F)
                A, out_shape, bias = dense_matrix(w), (w.shape[1],), b
                to_matrix = dense_matrix
            else:
                w, b, kw = _conv_args(layer)
                A, out_shape = conv_matrix_nd(w, a.shape, **kw)

                def to_matrix(k, in_shape=a.shape, kw=kw):
                    return conv_matrix_nd(k, in_shape, **kw)[0]

                n_pos = int(np.prod(out_shape[:-1]))
                bias = None if b is None else np.tile(np.asarray(b, dtype=_F), n_pos)
            rec.update(A=A, weight=w, bias=None if bias is None else np.asarray(bias, dtype=_F),
                       to_matrix=to_matrix, index=len(ctx.weighted))
            ctx.weighted.append((kind, depth == 0))
            z = A @ a.ravel() + (0.0 if bias is None else rec["bias"])
            a, depth = z.reshape(out_shape), depth + 1
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "act":
            a = ACTIVATIONS[layer[1]](a)
        elif kind == "affine":
            a = a * np.asarray(layer[1], dtype=_F) + np.asarray(layer[2], dtype=_F)
        elif kind == "glu":
            h = a.shape[-1] // 2
            rec["halves"] = (a[..., :h], a[..., h:])
            a = a[..., :h] * _sigmoid(a[..., h:])
        elif kind in ("linmap", "pool"):
            _, A, out_shape = layer
            rec["A"] = A = np.asarray(A, dtype=_F)
            a = (A @ a.ravel()).reshape(out_shape)
        elif kind == "maxpool":
            a, rec["winners"] = maxpool_nd(a, *layer[1:])
        elif kind == "avgpool":
            _, window, stride = layer
            A, out_shape = avgpool_matrix(a.shape, window, stride)
            rec["A"] = A
            a = (A @ a.ravel()).reshape(out_shape)
        elif kind == "flatten":
            a = a.ravel()
        elif kind == "residual":
            _, main, skip = layer
            m, rec["main_recs"], dm = _fwd(main, a, ctx, depth)
            s, rec["skip_recs"], ds = _fwd(skip, a, ctx, depth)
            if m.shape != s.shape:
                raise ValueError(f"residual shapes differ: {m.shape} vs {s.shape}")
            rec["main"], rec["skip"] = m, s
            a, depth = m + s, max(dm, ds)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        recs.append(rec)
    return a, recs, depth


def _forward_trace(layers, x):
    """Forward pass; returns ``(out, records, ctx)``."""
    ctx = _Ctx()
    out, recs, _ = _fwd(_nest(layers), np.asarray(x, dtype=_F), ctx, 0)
    return out, recs, ctx


def forward(layers, x):
    """Network output for a single example.

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example (1-D vector or channels-last array).

    Returns
    -------
    ndarray
        The network output (logits).
    """
    return _forward_trace(layers, x)[0]


def weighted_layers(layers, x):
    """``(kind, first)`` of every dense/conv layer in forward order (main branch of a
    residual block before its shortcut); ``first`` means no dense/conv layer lies on
    the path from the input."""
    return list(_forward_trace(layers, x)[2].weighted)


def _rule_for_layer(rule, in_shape):
    """Split a ``(name, params)`` entry; broadcast zbox bounds to the layer input."""
    name, params = rule
    params = dict(params or {})
    for key in ("low", "high"):
        if key in params and params[key] is not None:
            params[key] = np.broadcast_to(np.asarray(params[key], dtype=_F), in_shape).ravel()
    return name, params


def _bwd(layers, recs, R, rule_of, st):
    """LRP backward pass over a (nested) layer list."""
    for layer, rec in zip(reversed(layers), reversed(recs)):
        kind, a = layer[0], rec["input"]
        if kind in ("dense", "conv"):
            name, params = _rule_for_layer(rule_of(rec["index"]), a.shape)
            R = lrp_linear(name, a.ravel(), rec["weight"], rec["bias"], R.ravel(),
                           rec["to_matrix"], **params).reshape(a.shape)
        elif kind in ("relu", "act", "affine"):
            pass
        elif kind == "glu":
            R = np.concatenate([R, np.zeros_like(R)], axis=-1)
        elif kind == "linmap":
            R = (rec["A"].T @ R.ravel()).reshape(a.shape)
        elif kind in ("pool", "avgpool"):
            A = rec["A"]
            R = lrp_linear("norm", a.ravel(), None, None, R.ravel(), lambda _: A,
                           stabilizer=st["pool"]).reshape(a.shape)
        elif kind == "flatten":
            R = R.reshape(a.shape)
        elif kind == "maxpool":
            Rin = np.zeros(a.size, dtype=_F)
            np.add.at(Rin, rec["winners"], R.ravel())
            R = Rin.reshape(a.shape)
        elif kind == "residual":
            q = safe_divide(R, stabilize(rec["main"] + rec["skip"], st["add"]))
            Rm = _bwd(layer[1], rec["main_recs"], rec["main"] * q, rule_of, st)
            Rs = _bwd(layer[2], rec["skip_recs"], rec["skip"] * q, rule_of, st)
            R = Rm + Rs
        else:  # pragma: no cover
            raise ValueError(f"unknown layer kind {kind!r}")
    return R


def forward_and_lrp(layers, x, R_out_fn, rules, pool_stabilizer=1e-6,
                    add_stabilizer=1e-6):
    """Forward pass followed by an LRP backward pass.

    Dense/conv layers use the given rules; activations (``relu``, ``act``) and
    unfolded per-channel affine maps (``affine``: a BatchNorm that does not follow
    a layer) pass relevance unchanged; ``linmap`` (resizing, padding) routes it by
    its transpose (the plain VJP); max pooling gives each window's relevance
    entirely to its first maximal element (overlapping windows add); average
    pooling (``avgpool``, ``pool``) uses the ``"norm"`` rule with
    ``pool_stabilizer``; ``glu`` gives all relevance to its signal half; a
    residual addition ``y = main + skip`` splits relevance as
    ``main * R / stab(y)`` and ``skip * R / stab(y)`` with ``add_stabilizer``.

    Parameters
    ----------
    layers : list of tuple
        Layer specification (see module docstring).
    x : array_like
        One example.
    R_out_fn : callable
        ``R_out_fn(logits) -> R_out`` with the shape of the logits.
    rules : list of (str, dict), or callable
        One ``(rule_name, params)`` per dense/conv layer in forward order, or
        ``rules(kind, first) -> (rule_name, params)`` (see :func:`composite_rules`).
    pool_stabilizer, add_stabilizer : float, optional

    Returns
    -------
    R_in : ndarray
        Relevance with the shape of ``x``.
    logits : ndarray
    """
    logits, recs, ctx = _forward_trace(layers, x)
    if callable(rules):
        rule_list = [rules(kind, first) for kind, first in ctx.weighted]
    else:
        rule_list = list(rules)
    if len(rule_list) != len(ctx.weighted):
        raise ValueError(f"{len(rule_list)} rules for {len(ctx.weighted)} dense/conv layers")
    R = np.asarray(R_out_fn(logits), dtype=_F)
    if R.shape != logits.shape:
        raise ValueError(f"R_out shape {R.shape} != logits shape {logits.shape}")
    st = {"pool": pool_stabilizer, "add": add_stabilizer}
    R = _bwd(_nest(layers), recs, R, rule_list.__getitem__, st)
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
        One example (1-D vector or channels-last array).
    target : int
        Index into the (flattened) logits.
    rules : list of (str, dict), or callable
        See :func:`forward_and_lrp`.
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


def _grad(layers, recs, g):
    for layer, rec in zip(reversed(layers), reversed(recs)):
        kind, a = layer[0], rec["input"]
        if kind in ("dense", "conv", "avgpool", "pool", "linmap"):
            g = (rec["A"].T @ g.ravel()).reshape(a.shape)
        elif kind == "relu":
            g = g * (a > 0)
        elif kind == "act":
            if layer[1] not in _ACT_GRADS:
                raise NotImplementedError(f"no derivative of {layer[1]!r} in the reference")
            g = g * _ACT_GRADS[layer[1]](a)
        elif kind == "affine":
            g = g * np.asarray(layer[1], dtype=_F)
        elif kind == "flatten":
            g = g.reshape(a.shape)
        elif kind == "maxpool":
            gin = np.zeros(a.size, dtype=_F)
            np.add.at(gin, rec["winners"], g.ravel())
            g = gin.reshape(a.shape)
        elif kind == "residual":
            g = _grad(layer[1], rec["main_recs"], g) + _grad(layer[2], rec["skip_recs"], g)
        else:  # pragma: no cover
            raise NotImplementedError(f"no gradient of {kind!r} in the reference")
    return g


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
    logits, recs, _ = _forward_trace(layers, x)
    g = np.zeros(logits.shape, dtype=_F)
    g.flat[target] = 1.0
    return _grad(_nest(layers), recs, g)


# ---------------------------------------------------------------------------
# Part 6: preset composites, restated (Zennit's definitions)
# ---------------------------------------------------------------------------
#: The keyword arguments a preset needs beyond its defaults: the z^B presets have no
#: default input bounds (jaxlrp refuses to guess them); the tests use [-3, 3].
PRESET_BOUNDS = {"epsilon_gamma_box": {"low": -3.0, "high": 3.0}, "zero_epsilon_gamma_box": {"low": -3.0, "high": 3.0}}


def preset_kwargs(name):
    """``composites.get(name, **preset_kwargs(name))`` builds any preset."""
    return dict(PRESET_BOUNDS.get(name, {}))


def composite_rules(name, epsilon=1e-6, stabilizer=1e-6, gamma=0.25, low=-3.0, high=3.0,
                    norm_stabilizer=None):
    """The rule of every dense/conv layer under a preset composite.

    ``name`` is one of ``"epsilon_plus"``, ``"epsilon_plus_flat"``,
    ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``,
    ``"epsilon_alpha2_beta1_flat"``, ``"attn_lrp"``, ``"cp_lrp"`` (on networks
    without attention: epsilon everywhere), ``"epsilon"`` (epsilon on every layer)
    or ``"zero"`` (LRP-0 on every layer). "flat" and "box" presets put their
    first-layer rule on every layer that no dense/conv layer precedes.

    Returns
    -------
    rules : callable
        ``rules(kind, first) -> (rule_name, params)`` for :func:`forward_and_lrp`.
    stabilizers : dict
        ``pool_stabilizer`` and ``add_stabilizer`` of the parameter-free layers:
        ``norm_stabilizer`` if given, else the preset's ``stabilizer`` (Zennit
        passes it to the Norm rules of sums and average pools).
    """
    eps = ("epsilon", {"epsilon": epsilon})
    conv = {
        "epsilon_plus": ("zplus", {"stabilizer": stabilizer}),
        "epsilon_plus_flat": ("zplus", {"stabilizer": stabilizer}),
        "epsilon_gamma_box": ("gamma", {"gamma": gamma, "stabilizer": stabilizer}),
        "epsilon_alpha2_beta1": ("alphabeta", {"alpha": 2.0, "beta": 1.0, "stabilizer": stabilizer}),
        "epsilon_alpha2_beta1_flat": ("alphabeta", {"alpha": 2.0, "beta": 1.0, "stabilizer": stabilizer}),
        "attn_lrp": eps, "cp_lrp": eps, "epsilon": eps, "zero": ("zero", {}),
    }
    if name not in conv:
        raise ValueError(f"unknown preset {name!r}")
    first = {
        "epsilon_plus_flat": ("flat", {"stabilizer": stabilizer}),
        "epsilon_alpha2_beta1_flat": ("flat", {"stabilizer": stabilizer}),
        "epsilon_gamma_box": ("zbox", {"low": low, "high": high, "stabilizer": stabilizer}),
    }.get(name)
    dense = ("zero", {}) if name == "zero" else eps

    def rules(kind, is_first):
        if is_first and first is not None:
            return first
        return conv[name] if kind == "conv" else dense

    ns = stabilizer if norm_stabilizer is None else norm_stabilizer
    return rules, {"pool_stabilizer": ns, "add_stabilizer": ns}


def cp_lrp_attention(x, wq, wk, wv, bv, wo, bo, position, target):
    """CP-LRP (Ali et al. 2022) of one single-head self-attention block, float64.

    The block is ``h = x + P v`` with ``P = softmax(q k^T / sqrt(d_k))``,
    ``q = x wq``, ``k = x wk``, ``v = x wv + bv``, and ``y = h wo + bo``; ``x`` is
    ``(L, D)``. The explained output is ``y[position, target]`` (its value is the
    initial relevance). Every rule is exact (no stabiliser): LRP-0 on the dense
    layers (the bias absorbs its share), the proportional split at the residual
    add, and the attention probabilities held constant, so that
    ``R_v = v * P^T (R_o / o)``. Nothing reaches ``q`` or ``k``.
    """
    q, k = x @ wq, x @ wk
    v = x @ wv + bv
    s = q @ k.T / np.sqrt(k.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    o = p @ v
    h = x + o
    y = h @ wo + bo
    r_y = np.zeros_like(y)
    r_y[position, target] = y[position, target]
    r_h = h * (safe_divide(r_y, y) @ wo.T)
    share = safe_divide(r_h, h)
    r_res, r_o = x * share, o * share
    r_v = v * (p.T @ safe_divide(r_o, o))
    return r_res + x * (safe_divide(r_v, v) @ wv.T)
