"""Reading a run back: :func:`load` checks the manifests and the order of the
batches and returns each field as :class:`LazyRows` over memory-mapped files."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from numpy.lib.mixins import NDArrayOperatorsMixin

from ._store import (
    MANIFEST,
    META,
    PathLike,
    batch_folders,
    check_file,
    dtype_of,
    npy_header,
    read_json,
    refuse_other_run,
)

# ------------------------------------------------------------------------------ reading


class _Parts(Sequence):
    """The parts of a :class:`LazyRows`: arrays as given, and ``.npy`` paths memory-mapped
    on access, the last few kept open (each open map holds a file descriptor)."""

    def __init__(self, parts: Iterable, keep: int = 16):
        self._items = list(parts)
        self._open: OrderedDict = OrderedDict()
        self._keep = keep
        self.specs = [self._spec(p) for p in self._items]

    @staticmethod
    def _spec(item) -> tuple:
        if isinstance(item, tuple):  # (path, dtype): the file holds the bits of dtype
            return npy_header(item[0])[0], np.dtype(item[1])
        return npy_header(item) if isinstance(item, (str, os.PathLike)) else (item.shape, item.dtype)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, j: Any) -> Any:  # an int: a part; a slice: a list of parts
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        item = self._items[j]
        if not isinstance(item, (str, os.PathLike, tuple)):
            return item
        if j not in self._open:
            path, dtype = item if isinstance(item, tuple) else (item, None)
            mapped = np.load(path, mmap_mode="r")
            self._open[j] = mapped if dtype is None else mapped.view(dtype)
            while len(self._open) > self._keep:
                self._open.popitem(last=False)
        self._open.move_to_end(j)
        return self._open[j]


class LazyRows(NDArrayOperatorsMixin):
    """The rows of one field, concatenated over the batch files without reading them.

    The files are memory-mapped when rows are read; indexing the leading axis (an
    int, a slice, an array of ints or a boolean mask, optionally followed by indices
    of the other axes) reads only the rows it selects and returns a numpy array.
    ``np.asarray(rows)`` and arithmetic read everything.

    Parameters
    ----------
    parts:
        Arrays or paths of ``.npy`` files, one per batch (and process), in order;
        same dtype and trailing shape. A ``(path, dtype)`` pair reads the file's bits
        as ``dtype`` (how an ml_dtypes type such as bfloat16 is stored).

    Attributes
    ----------
    parts: a sequence of the parts; a path gives a read-only ``np.memmap``.
    shape, dtype, ndim, size, nbytes: as for the concatenated array.
    """

    def __init__(self, parts: Iterable):
        self.parts = _Parts(parts)
        if not len(self.parts):
            raise ValueError("LazyRows needs at least one part")
        (shape, self.dtype), specs = self.parts.specs[0], self.parts.specs
        odd = [j for j, (s, d) in enumerate(specs) if tuple(s[1:]) != tuple(shape[1:]) or d != self.dtype]
        if odd:
            (s, d), j = specs[odd[0]], odd[0]
            raise ValueError(f"part {j} has shape {s} {d}; part 0 {shape} {self.dtype}")
        self._offsets = np.cumsum([0] + [s[0] for s, _ in specs])
        self.shape = (int(self._offsets[-1]), *shape[1:])

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyRows(shape={self.shape}, dtype={self.dtype}, parts={len(self.parts)})"

    def __array__(self, dtype: Optional[DTypeLike] = None, copy: Optional[bool] = None) -> np.ndarray:
        a = self._span(0, len(self))
        return a if dtype is None else a.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if any(isinstance(o, LazyRows) for o in kwargs.get("out", ())):
            return NotImplemented  # read-only
        inputs = tuple(np.asarray(a) if isinstance(a, LazyRows) else a for a in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getitem__(self, key: Any) -> np.ndarray:
        head, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n = len(self)
        if isinstance(head, (int, np.integer)):
            i = int(head) + (n if head < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(head)} is out of bounds for {n} rows")
            j = int(np.searchsorted(self._offsets, i, side="right")) - 1
            return np.array(self.parts[j][(i - self._offsets[j], *rest)])
        if isinstance(head, slice) and head.step in (None, 1):
            lo, hi, _ = head.indices(n)
            rows = self._span(lo, max(lo, hi))
        elif isinstance(head, slice):
            rows = self._take(np.arange(*head.indices(n)))
        elif head is Ellipsis or head is None:
            return np.asarray(self)[key]
        else:
            rows = self._take(self._indices(head))
        return rows[(slice(None), *rest)] if rest else rows

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi``, copied part by part (no part stays open)."""
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        first = int(np.searchsorted(self._offsets, lo, side="right")) - 1
        for j in range(max(first, 0), len(self.parts)):
            o, e = int(self._offsets[j]), int(self._offsets[j + 1])
            if o >= hi:
                break
            a, b = max(lo, o), min(hi, e)
            if a < b:
                out[a - lo : b - lo] = self.parts[j][a - o : b - o]
        return out

    def _indices(self, head: ArrayLike) -> np.ndarray:
        idx = np.asarray(head)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"a boolean index must have shape ({len(self)},), got {idx.shape}")
            return np.nonzero(idx)[0]
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"rows are indexed by ints, slices or boolean masks, got {idx.dtype}")
        return idx

    def _take(self, idx: np.ndarray) -> np.ndarray:
        n, flat = len(self), idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"row index out of bounds for {n} rows")
        part = np.searchsorted(self._offsets, flat, side="right") - 1
        out = np.empty((flat.size, *self.shape[1:]), self.dtype)
        for j in np.unique(part):
            sel = part == j
            out[sel] = self.parts[j][flat[sel] - self._offsets[j]]
        return out.reshape(*idx.shape, *self.shape[1:])


def _checked(path: str, entry: Mapping, rows: int, checksum: bool) -> Union[str, tuple]:
    """``path``, after checking the file against its manifest entry; ``(path, dtype)`` for
    the bits of an ml_dtypes type (read as ``dtype``)."""
    problem = check_file(path, entry, rows, checksum)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}. Resume the run to recompute it")
    return path if "stored" not in entry else (path, dtype_of(entry["dtype"]))


def _ordered(out: str, identity: dict, process: Optional[int]) -> list:
    """The batch folders to read, batch-major then process; refuses gaps, stray batches and
    processes with different numbers of batches."""
    folders = batch_folders(out)
    n_proc = int(identity.get("processes", 1))
    procs = range(n_proc) if process is None else [process]
    if process is not None and not 0 <= process < n_proc:
        raise ValueError(f"process {process} is not one of the {n_proc} processes of {out}")
    stray = sorted(name for (i, p), name in folders.items() if p >= n_proc)
    counts: dict[int, int] = {}  # process -> its number of batches
    for p in procs:
        have = sorted(i for (i, q) in folders if q == p)
        done = os.path.join(out, f"done-p{p:03d}.json")
        k = read_json(done).get("batches") if os.path.exists(done) else len(have)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"{done} is malformed: 'batches' is {k!r}, not a count; remove it and resume the run")
        missing = sorted(set(range(k)) - set(have))
        if missing:
            raise ValueError(f"{out} lacks batch-{missing[0]:06d}-p{p:03d}: resume the run to compute it")
        stray += [folders[i, p] for i in have if i >= k]
        counts[p] = k
    if stray:
        raise ValueError(f"{out} holds batches outside the run: {', '.join(stray[:5])}; move them away")
    finished = all(os.path.exists(os.path.join(out, f"done-p{p:03d}.json")) for p in procs)
    if len(set(counts.values())) > 1 and not finished:  # unequal shares are read once every process finished
        raise ValueError(f"the processes of {out} wrote different numbers of batches {counts}: resume the run")
    if not counts or not max(counts.values()):
        raise FileNotFoundError(f"no batches in {out}")
    return [folders[i, p] for i in range(max(counts.values())) for p in procs if i < counts[p]]


def load(
    out: PathLike, fields: Optional[Iterable[str]] = None, process: Optional[int] = None, *, verify: bool = True
) -> dict[str, LazyRows]:
    """Open what :func:`explain_dataset` wrote, lazily concatenated over batches.

    Parameters
    ----------
    out:
        The output directory.
    fields:
        Which arrays (``"relevance"``, ``"target"``, metric names); default all.
    process:
        Only the batches of this process; default all processes, ordered by batch
        then process (the global order of a multi-host run).
    verify:
        Also compare every file's CRC-32 with its manifest (reads each file once,
        keeps nothing in memory). Without it, the manifests, the order of the
        batches and each file's size, shape and dtype are still checked.

    Returns
    -------
    dict
        ``{field: LazyRows}``, memory-mapped, the examples along the leading axis;
        ``np.asarray`` gives a numpy array.

    Raises
    ------
    ValueError
        A malformed ``meta.json`` or manifest, an unknown field, a damaged, missing or
        stray batch (the message names the file). A run still being written may be
        refused; it is read once each process has finished or stopped.
    """
    out = os.fspath(out)
    meta = os.path.join(out, META)
    if not os.path.exists(meta):
        raise FileNotFoundError(f"{meta} is missing (resuming the run restores it)")
    identity = read_json(meta).get("run")
    if not isinstance(identity, dict) or not isinstance(identity.get("fields"), dict):
        raise ValueError(
            f"{meta} is malformed: it lacks the run's identity (written by an older jaxlrp, or damaged); "
            f"remove it and resume the run"
        )
    available = sorted(identity["fields"])
    names = [fields] if isinstance(fields, str) else list(available if fields is None else fields)
    unknown = [f for f in names if f not in available]
    if unknown or not names:
        raise ValueError(f"unknown fields {unknown} for {out}, which holds {available}")
    parts: dict[str, list[Union[str, tuple]]] = {f: [] for f in names}  # field -> its files, in order
    stops: dict[int, int] = {}  # process -> the end of its rows so far
    for name in _ordered(out, identity, process):
        folder = os.path.join(out, name)
        manifest = read_json(os.path.join(folder, MANIFEST))
        refuse_other_run(folder, manifest.get("run", {}), identity)
        start, stop = manifest.get("rows", (None, None))
        p = int(name[-3:])
        if start != stops.get(p, 0):
            raise ValueError(f"{folder} holds examples from {start}, expected {stops.get(p, 0)}")
        stops[p] = stop
        for f in names:
            entry = manifest.get("files", {}).get(f)
            if entry is None:
                raise ValueError(f"{os.path.join(folder, MANIFEST)} lists no {f!r}")
            parts[f].append(_checked(os.path.join(folder, f"{f}.npy"), entry, stop - start, verify))
    return {f: LazyRows(v) for f, v in parts.items()}
