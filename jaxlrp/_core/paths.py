"""Paths in parameter pytrees: the one rule that names a layer after its weight, and
the lookup of a path in nested mappings.

A parameter path is the weight's position in the arguments of the explained function,
its keys joined by ``"/"`` (``jax.tree_util.keystr(path, simple=True, separator="/")``):
``"params/conv1/kernel"`` for linen variables, ``"blocks/0/conv1/kernel/value"`` for an
nnx state (the attribute path, the parameter's name, then the ``Variable``'s
``value``), ``"layers/0/weight"`` for an Equinox module, ``"w1"`` for a dict of arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["module_path", "layer_name", "lookup"]


def module_path(param_path: str) -> str:
    """The path of the module that owns the parameter at ``param_path``.

    The parameter's own name is dropped, and before it an nnx ``Variable``'s trailing
    ``value``. A path of one key is a plain pytree leaf with no module around it: the
    leaf names itself.

    Examples
    --------
    >>> module_path("blocks/0/conv1/kernel/value")  # nnx
    'blocks/0/conv1'
    >>> module_path("kernel/value")  # nnx, a parameter of the root module
    ''
    >>> module_path("params/Dense_0/kernel")  # linen variables
    'params/Dense_0'
    >>> module_path("layers/0/weight")  # Equinox
    'layers/0'
    >>> module_path("w1")  # a dict of arrays
    'w1'
    """
    parts = param_path.split("/")
    if len(parts) == 1:
        return param_path
    if parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts[:-1])


def layer_name(param_paths: Sequence[str]) -> str:
    """The name of a layer whose computation pushes no name (nnx, Equinox, plain
    pytrees): :func:`module_path` of its weight, ``""`` unless it has exactly one.

    >>> layer_name(("blocks/0/conv1/kernel/value",)), layer_name(()), layer_name(("a/w", "b/w"))
    ('blocks/0/conv1', '', '')
    """
    return module_path(param_paths[0]) if len(param_paths) == 1 else ""


def lookup(tree: Mapping, path: Sequence[Any]) -> Any:
    """The entry of nested mappings at ``path`` (its keys as strings), ``None`` if absent.

    >>> lookup({"params": {"fc": {"kernel": 1}}}, ("params", "fc", "kernel"))
    1
    >>> lookup({"params": {}}, ("params", "fc")) is None
    True
    """
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or str(key) not in node:
            return None
        node = node[str(key)]
    return node
