r"""Canonisation: the affine operations after a dense or conv layer, folded into it.

LRP rules need a layer's full pre-activation :math:`z = W'x + b'`. The analysis finds
the chain of per-channel shifts and scales that follows a ``dot_general`` or
``conv_general_dilated`` (its bias ``add``; inference-mode BatchNorm's ``sub``,
``mul`` and ``add``) and folds it,

.. math:: \text{chain}(Wx) = a \odot (Wx) + c
          \quad\Rightarrow\quad W' = W \cdot \operatorname{diag}(a),\; b' = c,

which is what folding BatchNorm into the preceding convolution by hand gives
(Zennit's ``MergeBatchNorm``), for any layout. It happens on every call of an
explainer; nothing here needs to be called by users. The machinery lives in the
private core (``jaxlrp._core.canonize``, documented there); this module names it.
"""

from __future__ import annotations

from ._core.canonize import Chain, affine_chain, chain_coefficients, fold_scale, output_axis_map, reduced_shape

__all__ = ["Chain", "output_axis_map", "affine_chain", "chain_coefficients", "fold_scale", "reduced_shape"]
