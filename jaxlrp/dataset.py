"""Explain a whole data set: batches streamed through a jitted, sharded explainer
and written to disk as they are done, so that an interrupted run resumes.

>>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
>>> batches = ({"x": x[i:i + 256], "target": y[i:i + 256]} for i in range(0, len(x), 256))
>>> run = jaxlrp.dataset.explain_dataset(explain, variables, batches, "out/relevance")
>>> R = jaxlrp.dataset.load("out/relevance")["relevance"]   # lazy: read on indexing
>>> first, some, every = R[:10], R[[0, 5]], np.asarray(R)   # numpy arrays

Layout on disk (one folder per batch, committed by an atomic rename, so a crash
loses at most the batch in flight)::

    out/meta.json                  the run's identity (see below), written by process 0
    out/batch-000000-p000/         batch 0, written by process 0
        manifest.json              the run's identity, the batch's index and row range,
                                   and for every file its shape, dtype, size and CRC-32
        relevance.npy              relevance, shape and dtype of the batch's x
        target.npy                 the batch's targets, if given
        <metric>.npy               one value per example for each metric
    out/done-p000.json             number of batches and rows, once process 0 finished
    out/.lock-p000                 the writer's lock (empty file)

The files are plain ``.npy`` (readable without jaxlrp); :func:`load` memory-maps
them, so nothing is read before it is indexed. (Why ``.npy`` folders and not one
chunked zarr array per field: ``bench/storage.md``.)

Guarantees
----------
* **Identity.** A run is identified by the explainer (its qualified name and, for an
  explainer from :func:`jaxlrp.lrp`, the ``repr`` of its composite and ``argnums``),
  a SHA-256 fingerprint of the parameters (tree structure, shapes, dtypes and bytes of
  every leaf; a leaf split over several hosts contributes only its shape and dtype),
  the batch size, the shapes and dtypes of ``x`` and of every stored field, the
  metric names, the number of processes and the jaxlrp version. It is stored in
  ``meta.json`` and in every batch's manifest. A resume whose identity differs is
  refused with a ``ValueError`` that lists what differs; so is a batch on disk whose
  row range differs from the one the data set now gives (e.g. another batch size).
  Deleting ``meta.json`` changes nothing: it is rewritten after the manifests were
  checked. Metric *functions* and callable matchers are known by name only.
* **Integrity.** On resume every committed batch of this process is verified against
  its manifest (checksums included) before it is skipped; a damaged one (file
  missing, truncated, emptied or replaced, manifest missing) is recomputed, with a
  warning. :func:`load` checks the manifests, the identity, the order of the batches
  (no gap, no stray ``batch-*`` entry, every process alike) and every file's size,
  shape, dtype and row count, and names the bad file;
  ``verify=True`` (the default) also checks the checksums, which reads every file
  once. The checksums are CRC-32 (zlib): they catch accidental damage (truncation,
  bit rot, a file overwritten by another), not deliberate forgery.
* **Shorter data set.** When the iterator ends while batches beyond its end remain
  from an earlier, longer run, the run stops with a ``ValueError`` naming them and
  leaves them (and the earlier ``done`` record) in place: delete them to keep the
  shorter run. Kill and resume gives byte-identical files.
* **Targets** are checked on the host before a batch is dispatched: a target outside
  ``[0, classes)`` (``classes``: the last axis of the explained output, known for an
  explainer from :func:`jaxlrp.lrp`; otherwise only negative targets are caught) stops
  the run with a ``ValueError`` naming the batch and the rows.
* **One writer.** A run holds an exclusive lock (``fcntl.flock``) on
  ``.lock-pNNN`` for its whole duration; a second writer for the same process index
  gets :class:`DatasetLockedError` (on a network file system, as far as it supports
  ``flock``; NFS emulates it with byte-range locks).

Data parallelism: the examples of a batch are sharded over the ``data_axis`` of a
:class:`jax.sharding.Mesh` (by default all devices), the parameters are replicated
(or sharded as ``param_sharding`` says), and XLA partitions the explanation. On
several hosts, start every process with :func:`jax.distributed.initialize` before
building the mesh (``jax.make_mesh`` over ``jax.devices()``, which lists the devices
of all hosts), and let each process iterate over *its own share* of the data (same
batch sizes and number of batches on every host): its rows are combined into the
global batch with :func:`jax.make_array_from_process_local_data`, and each process
writes the rows it fed to its own ``-pNNN`` folders in a shared output directory
(processes agree, batch by batch, on what to skip)::

    # on each of N hosts (or with SLURM / Cloud TPU, where the arguments are implied)
    jax.distributed.initialize(coordinator_address="host0:1234",
                               num_processes=N, process_id=i)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    explain_dataset(explain, variables, my_share_of_batches, "/shared/out", mesh=mesh)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike, DTypeLike
from numpy.lib.mixins import NDArrayOperatorsMixin

__all__ = ["explain_dataset", "load", "DatasetRun", "DatasetLockedError", "LazyRows"]

Array = jax.Array
PyTree = Any  # a pytree of arrays (model variables) or of shardings
#: One batch: ``x``, ``(x, target)`` or a mapping with ``"x"``, optional ``"target"`` and
#: further per-example arrays.
Batch = Union[ArrayLike, tuple[ArrayLike, ArrayLike], Mapping[str, ArrayLike]]
PathLike = Union[str, os.PathLike]
Metric = Callable[[Array, Mapping[str, Array]], Array]

_FORMAT = 2
_META = "meta.json"
_MANIFEST = "manifest.json"
_BATCH = re.compile(r"batch-(\d{6})-p(\d{3})")


class DatasetLockedError(RuntimeError):
    """Another :func:`explain_dataset` is writing the same output directory (for the
    same process index)."""


class DatasetRun(NamedTuple):
    """What :func:`explain_dataset` did.

    Attributes
    ----------
    path: the output directory.
    batches: batches in the data set (as far as the iterator went).
    computed: batches explained in this run (``repaired`` included).
    skipped: batches found on disk, verified and not recomputed.
    examples: examples explained in this run.
    seconds: wall time of this run.
    repaired: damaged batches found on disk and recomputed.
    """

    path: str
    batches: int
    computed: int
    skipped: int
    examples: int
    seconds: float
    repaired: int = 0


# ----------------------------------------------------------------------------- batches


def _as_batch(item) -> dict:
    """An iterator item: ``x``, ``(x, target)`` or a mapping with key ``"x"``."""
    if isinstance(item, Mapping):
        if "x" not in item:
            raise ValueError(f"a batch given as a mapping needs an 'x' entry, got keys {sorted(item)}")
        batch = dict(item)
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"a batch given as a tuple must be (x, target), got {len(item)} entries")
        batch = {"x": item[0], "target": item[1]}
    else:
        batch = {"x": item}
    if batch.get("target") is None:
        batch.pop("target", None)
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = batch["x"].shape[0] if batch["x"].ndim else None
    for k, v in batch.items():
        if n is None or v.ndim == 0 or v.shape[0] != n:
            raise ValueError(
                f"every entry of a batch needs the same leading (example) axis; 'x' has shape "
                f"{batch['x'].shape} and '{k}' has shape {v.shape}"
            )
    return batch


def _check_targets(target: np.ndarray, classes: Optional[int], index: int, start: int) -> None:
    """Refuse targets outside ``[0, classes)`` (only negative ones when ``classes`` is unknown)."""
    if not np.issubdtype(target.dtype, np.integer):
        return  # float or other targets: the explainer's own checks apply
    bad = target < 0 if classes is None else (target < 0) | (target >= classes)
    if not bad.any():
        return
    rows = np.unique(np.nonzero(bad)[0])
    shown = ", ".join(f"row {r} (example {start + r}): {target[r].tolist()}" for r in rows[:5])
    more = f" and {len(rows) - 5} more rows" if len(rows) > 5 else ""
    span = f"[0, {classes})" if classes is not None else "the non-negative integers"
    raise ValueError(
        f"batch {index} has targets outside {span}: {shown}{more}. Fix the labels (the explained "
        f"output has {classes if classes is not None else 'an unknown number of'} classes)"
    )


def _classes(explain: Callable, params, x) -> Optional[int]:
    """The size of the explained output's last axis, for an explainer from :func:`jaxlrp.lrp`."""
    fn = (getattr(explain, "jaxlrp_config", None) or {}).get("fn")
    if fn is None:
        return None
    try:
        out = jax.eval_shape(fn, params, x)
    except Exception:  # the explainer takes other arguments: no check rather than a wrong one
        return None
    return int(out.shape[-1]) if getattr(out, "ndim", 0) else None


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """Pad the leading axis to ``n`` rows by repeating the last row (explained, then dropped)."""
    if a.shape[0] == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)])


def _local_rows(a: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded array held by this process, in order."""
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
        return np.asarray(a)
    rows = {}
    for shard in a.addressable_shards:
        start = shard.index[0].start or 0
        rows.setdefault(start, np.asarray(shard.data))
    return np.concatenate([rows[s] for s in sorted(rows)])


# ---------------------------------------------------------------------------- identity


def _text(obj: Any, limit: int = 2000) -> str:
    """A stable description of ``obj``: its ``repr`` with full arrays and without memory
    addresses; long ones are cut and completed by a hash of the whole."""
    with np.printoptions(threshold=sys.maxsize, floatmode="unique"):
        s = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))
    if len(s) > limit:
        s = s[: limit // 2] + f"... (sha256 {hashlib.sha256(s.encode()).hexdigest()})"
    return s


def _fingerprint(params) -> dict:
    """SHA-256 of the tree structure and of every leaf's shape, dtype and bytes."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    h = hashlib.sha256(_text(treedef, limit=10**9).encode())
    whole = True
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            h.update(f"{leaf.shape} {leaf.dtype} split over hosts".encode())
            whole = False
            continue
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return {"sha256": h.hexdigest(), "leaves": len(leaves), "bytes_hashed": whole}


def _explainer(explain: Callable) -> dict:
    cfg = getattr(explain, "jaxlrp_config", None) or {}
    name = getattr(explain, "__qualname__", type(explain).__qualname__)
    desc = {"function": f"{getattr(explain, '__module__', None)}.{name}"}
    desc.update({k: _text(v) for k, v in sorted(cfg.items()) if k != "fn"})
    return desc


def _identity(explain, params, batch: dict, fields: dict, metrics: dict) -> dict:
    import jaxlrp

    x = batch["x"]
    return {
        "format": _FORMAT,
        "jaxlrp": jaxlrp.__version__,
        "explainer": _explainer(explain),
        "params": _fingerprint(params),
        "batch_size": int(x.shape[0]),
        "x": {"shape": list(x.shape[1:]), "dtype": str(x.dtype)},
        "fields": {k: {"shape": list(s.shape[1:]), "dtype": str(s.dtype)} for k, s in sorted(fields.items())},
        "metrics": sorted(metrics),
        "processes": jax.process_count(),
    }


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old: Mapping, new: Mapping) -> list:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '<absent>')!r} on disk, {b.get(k, '<absent>')!r} now" for k in keys]


def _refuse_other_run(where: str, old: Mapping, new: Mapping) -> None:
    diff = _differences(old, new)
    if diff:
        raise ValueError(
            f"{where} holds a different run; it differs in\n  " + "\n  ".join(diff)
            + "\nUse another directory (or the settings of the run on disk)."
        )


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable or malformed ({e}); remove it or use another directory") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is malformed: expected a JSON object, got {type(obj).__name__}")
    return obj


def _write_atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _batch_folders(out: str) -> dict:
    """``{(index, process): name}`` of the committed batch folders; raises on stray ``batch-*``
    entries (wrong name, not a folder)."""
    found = {}
    for name in sorted(os.listdir(out)):
        if not name.startswith("batch-"):
            continue
        m = _BATCH.fullmatch(name)
        if m is None or not os.path.isdir(os.path.join(out, name)):
            raise ValueError(f"{os.path.join(out, name)} is not a batch written by explain_dataset; move it away")
        found[int(m[1]), int(m[2])] = name
    return found


def _stored_identity(out: str) -> Optional[dict]:
    """The identity recorded in ``meta.json`` or, if it is gone, in a committed manifest."""
    path = os.path.join(out, _META)
    if os.path.exists(path):
        return _read_json(path).get("run", {})
    for name in _batch_folders(out).values():
        manifest = os.path.join(out, name, _MANIFEST)
        if os.path.exists(manifest):
            return _read_json(manifest).get("run", {})
    return None


def _check_meta(out: str, stored: Optional[dict], identity: dict, process: int) -> None:
    """Refuse a run that differs from the one on disk; (re)write ``meta.json`` on process 0."""
    if stored is not None:
        _refuse_other_run(out, stored, identity)
    if process == 0 and not os.path.exists(os.path.join(out, _META)):
        _write_atomic_json(os.path.join(out, _META), {"run": identity})


# ------------------------------------------------------------------------- integrity


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _npy_header(path: str) -> tuple:
    """``(shape, dtype)`` from a ``.npy`` header, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f".npy format version {version}")
        shape, _, dtype = read[version](f)
    return shape, dtype


def _check_file(path: str, entry: Mapping, rows: int, checksum: bool) -> Optional[str]:
    """What is wrong with one stored file (``None``: nothing)."""
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size == 0:
        return "empty (0 bytes)"
    try:
        shape, dtype = _npy_header(path)
    except Exception as e:  # not a .npy header
        return f"not a readable .npy file ({e})"
    if list(shape) != entry.get("shape") or str(dtype) != entry.get("dtype") or shape[0] != rows:
        return f"shape {shape} {dtype} instead of {tuple(entry.get('shape', ()))} {entry.get('dtype')}"
    if size != entry.get("bytes"):
        return f"{size} bytes instead of {entry.get('bytes')} (truncated or padded)"
    if checksum and _crc32(path) != entry.get("crc32"):
        return "checksum mismatch (contents changed)"
    return None


def _damage(folder: str, manifest: Optional[dict], fields: Iterable[str], checksum: bool) -> Optional[str]:
    """What is wrong with a committed batch folder (``None``: nothing)."""
    if manifest is None:
        return f"{os.path.join(folder, _MANIFEST)} is missing or malformed"
    files = manifest.get("files", {})
    start, stop = manifest.get("rows", (0, -1))
    for field in fields:
        path = os.path.join(folder, f"{field}.npy")
        if field not in files:
            return f"{path} is not in the manifest"
        problem = _check_file(path, files[field], stop - start, checksum)
        if problem:
            return f"{path}: {problem}"
    return None


def _try_manifest(folder: str) -> Optional[dict]:
    try:
        return _read_json(os.path.join(folder, _MANIFEST))
    except ValueError:
        return None


def _on_disk(folder: str, identity: dict, index: int, rows: tuple) -> bool:
    """Whether batch ``index`` is committed and intact. A damaged one is removed (and
    recomputed by the caller); one from another run or with other rows is refused."""
    if not os.path.isdir(folder):
        return False
    manifest = _try_manifest(folder)
    if manifest is not None:
        _refuse_other_run(folder, manifest.get("run", {}), identity)
        if tuple(manifest.get("rows", ())) != rows:
            raise ValueError(
                f"{folder} holds examples {manifest.get('rows')} of the data set, but batch {index} now "
                f"gives examples {list(rows)} (batch sizes changed, or the data set did): use another directory"
            )
    problem = _damage(folder, manifest, identity["fields"], checksum=True)
    if problem is None:
        return True
    warnings.warn(f"batch {index} on disk is damaged ({problem}); recomputing it", RuntimeWarning, stacklevel=3)
    shutil.rmtree(folder)
    return False


def _every_process(flag: bool) -> bool:
    """``flag`` and-ed over all processes (each process skips a batch only if all do)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


# ------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def _locked(out: str, process: int):
    """Hold an exclusive ``flock`` on ``out/.lock-pNNN`` (never deleted: unlinking a lock
    file lets a third writer lock a new inode)."""
    path = os.path.join(out, f".lock-p{process:03d}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetLockedError(
                f"{out} is being written by another explain_dataset (it holds {path}); wait for it to "
                f"finish or write elsewhere"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _clean_partial(out: str, process: int) -> None:
    """Remove batches a crash left half-written (never committed) by this process."""
    suffix = f"-p{process:03d}"
    for name in os.listdir(out):
        if name.startswith(".tmp-batch-") and name.split(".")[1].endswith(suffix):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _write(folder: str, rows: tuple, padded: int, results: dict, batch: dict, identity: dict) -> None:
    """Write one batch and its manifest into a temporary folder, then commit it with a rename."""
    parent, name = os.path.split(folder)
    tmp = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    n = rows[1] - rows[0]
    arrays = {"target": batch["target"]} if "target" in batch else {}
    for key, value in results.items():
        a = _local_rows(value)
        if a.ndim == 0 or a.shape[0] != padded:
            raise ValueError(
                f"metric {key!r} returned shape {a.shape}; metrics must return one value per example "
                f"(leading axis of {padded})"
            )
        arrays[key] = a[:n]
    files = {key: _save(os.path.join(tmp, f"{key}.npy"), a) for key, a in sorted(arrays.items())}
    m = _BATCH.fullmatch(name)
    assert m is not None, name
    manifest = {"batch": int(m[1]), "process": int(m[2]), "rows": list(rows), "files": files, "run": identity}
    _write_atomic_json(os.path.join(tmp, _MANIFEST), manifest)
    os.replace(tmp, folder)


def _save(path: str, a: np.ndarray) -> dict:
    """``np.save`` and the file's manifest entry; the CRC-32 of the data is taken from
    memory (the same bytes as in the file), not by reading the file back."""
    a = np.ascontiguousarray(a)
    np.save(path, a)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        crc = zlib.crc32(f.read(size - a.nbytes))  # the .npy header
    crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return {"shape": list(a.shape), "dtype": str(a.dtype), "bytes": size, "crc32": crc}


def _finish(out: str, process: int, count: int, examples: int) -> None:
    """Refuse stale batches beyond the end of the data set, else record the end."""
    stale = sorted(name for (i, p), name in _batch_folders(out).items() if p == process and i >= count)
    if stale:
        raise ValueError(
            f"the data set ended after {count} batches, but {out} holds batches beyond it from an earlier, "
            f"longer run: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}. Delete them to keep the "
            f"shorter run (they are left in place)"
        )
    _write_atomic_json(os.path.join(out, f"done-p{process:03d}.json"), {"batches": count, "examples": examples})


def _progress(enabled: bool, total: Optional[int]):
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    # disable=None: tqdm's own test, off unless the stream is a terminal
    return tqdm(total=total, unit="batch", desc="jaxlrp", file=sys.stderr, disable=None if enabled else True)


# -------------------------------------------------------------------------------- run


def explain_dataset(
    explain: Callable[..., Any],
    params: PyTree,
    batches: Iterable[Batch],
    out: PathLike,
    *,
    mesh: Optional[Mesh] = None,
    data_axis: Union[str, tuple[str, ...]] = "data",
    param_sharding: PyTree = None,
    metrics: Optional[Mapping[str, Metric]] = None,
    save_relevance: bool = True,
    dtype: Optional[DTypeLike] = None,
    resume: bool = True,
    progress: bool = True,
    total: Optional[int] = None,
) -> DatasetRun:
    """Explain every batch of a data set and write the results to ``out``.

    Parameters
    ----------
    explain:
        ``explain(params, x, target=...) -> relevance``, e.g.
        ``jaxlrp.lrp(model.apply, composite)``; called with ``target`` only when the
        batch has one (otherwise the explainer's default, each example's argmax).
        It is jitted here; do not pass an already jitted function with fixed
        shardings.
    params:
        The first argument of ``explain`` (model variables), shared by all batches.
    batches:
        An iterable of batches, each ``x``, ``(x, target)`` or a mapping with ``"x"``
        and optional ``"target"`` and further per-example arrays (masks, labels)
        handed to the metrics. Iterate in the same order on a restart. The last batch
        may be smaller; it is padded to the first batch's size (no recompilation)
        and the padding is dropped. Integer targets are checked on the host before
        each batch is dispatched (see the module docstring).
    out:
        Output directory (created). Existing batches in it are verified and skipped
        when ``resume`` is true (see the module docstring for what is checked).
    mesh:
        Devices to shard over; ``None`` uses a one-axis mesh named ``data_axis`` over
        all of :func:`jax.devices`. Its axes are used as automatic (XLA-partitioned)
        axes, whatever their ``axis_types``.
    data_axis:
        The mesh axis (or axes) the examples are sharded over.
    param_sharding:
        ``None`` replicates the parameters on every device; otherwise a
        :class:`jax.sharding.PartitionSpec` or :class:`jax.sharding.Sharding` (or a
        pytree of them matching ``params``) for models whose weights must be split.
    metrics:
        ``{name: metric(relevance, batch) -> per-example values}``, evaluated in the
        jitted step; ``batch`` is the batch mapping (``"x"``, ``"target"``, masks...).
        For example ``{"mass": lambda R, b: jaxlrp.metrics.relevance_mass_accuracy(R, b["mask"])}``.
    save_relevance:
        Write the relevance maps (else only targets and metrics).
    dtype:
        Store relevance in this dtype (e.g. ``np.float16`` to halve the disk space);
        default: as computed.
    resume:
        Skip batches already on disk (after checking that they belong to the same
        run and are intact). With ``False`` an existing output directory is an error.
    progress:
        A progress bar (tqdm) on stderr, process 0 only, and only when stderr is a
        terminal.
    total:
        Number of batches, for the progress bar (``len(batches)`` if it has one).

    Returns
    -------
    DatasetRun
        Counts and wall time; read the results with :func:`load`.

    Raises
    ------
    ValueError
        A different run in ``out``, a target out of range, stale batches beyond the
        end of the data set, malformed batches or metrics.
    DatasetLockedError
        Another writer holds ``out`` (same process index).
    """
    out = os.fspath(out)
    metrics = dict(metrics or {})
    for name in metrics:
        if name in ("relevance", "target", "x") or not name.isidentifier():
            raise ValueError(f"metric name {name!r} is reserved or not an identifier")
    mesh, data_sharding, n_local_shards = _data_mesh(mesh, data_axis)
    fingerprint_params = params
    params = _place_params(params, mesh, param_sharding)
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    process = jax.process_index()
    os.makedirs(out, exist_ok=True)
    with _locked(out, process):
        if not resume and _batch_folders(out):
            raise FileExistsError(f"{out} already holds batches; pass resume=True to continue that run")
        _clean_partial(out, process)
        step = jax.jit(_step_fn(explain, metrics, save_relevance, dtype))
        ctx = _Context(out, process, explain, params, fingerprint_params, metrics, step, data_sharding, n_local_shards)
        with _progress(progress and process == 0, total) as bar:
            return _run(ctx, batches, bar)


class _Context(NamedTuple):
    out: str
    process: int
    explain: Callable
    params: Any
    fingerprint_params: Any
    metrics: dict
    step: Callable
    data_sharding: NamedSharding
    n_local_shards: int


def _data_mesh(mesh: Optional[Mesh], data_axis) -> tuple:
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()), (data_axis,) if isinstance(data_axis, str) else data_axis)
    # XLA partitions the explanation (GSPMD): explicit-sharding axes would require
    # every primitive of the model to say how its output is sharded.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    axes = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"data_axis {missing} not in the mesh's axes {mesh.axis_names}")
    n_shards = int(np.prod([mesh.shape[a] for a in axes]))
    return mesh, NamedSharding(mesh, PartitionSpec(axes)), max(1, n_shards // jax.process_count())


def _step_fn(explain: Callable, metrics: dict, save_relevance: bool, dtype) -> Callable:
    def step(p, batch):
        kw = {"target": batch["target"]} if "target" in batch else {}
        relevance = explain(p, batch["x"], **kw)
        result = {name: jnp.asarray(m(relevance, batch)) for name, m in metrics.items()}
        if save_relevance:
            result["relevance"] = relevance if dtype is None else relevance.astype(dtype)
        return result

    return step


def _start(ctx: _Context, batch: dict, placed: dict) -> tuple:
    """The run's identity and the number of classes, from the first batch."""
    stored = _stored_identity(ctx.out)
    try:
        fields = dict(ctx.step.eval_shape(ctx.params, placed))  # type: ignore[attr-defined]
    except Exception:  # a batch the model cannot take: if it is not the run on disk, say that first
        if stored is not None:
            cheap = _identity(ctx.explain, ctx.fingerprint_params, batch, {}, ctx.metrics)
            _refuse_other_run(ctx.out, {**stored, "fields": {}}, cheap)
        raise
    if "target" in batch:
        fields["target"] = jax.ShapeDtypeStruct(batch["target"].shape, batch["target"].dtype)
    identity = _identity(ctx.explain, ctx.fingerprint_params, batch, fields, ctx.metrics)
    _check_meta(ctx.out, stored, identity, ctx.process)
    return identity, _classes(ctx.explain, ctx.params, placed["x"])


def _place(ctx: _Context, batch: dict, rows: int) -> dict:
    return {k: jax.make_array_from_process_local_data(ctx.data_sharding, _pad(v, rows)) for k, v in batch.items()}


def _run(ctx: _Context, batches: Iterable, bar) -> DatasetRun:
    t0, computed, skipped, repaired, examples, start = time.perf_counter(), 0, 0, 0, 0, 0
    identity = classes = rows = None
    pending = None  # arguments of _write for the batch in flight: written while the next one runs
    i = -1
    try:
        for i, item in enumerate(batches):
            folder = os.path.join(ctx.out, f"batch-{i:06d}-p{ctx.process:03d}")
            batch = _as_batch(item)
            n = batch["x"].shape[0]
            if rows is None:
                rows = -(-n // ctx.n_local_shards) * ctx.n_local_shards
            if n > rows:
                raise ValueError(f"batch {i} has {n} examples, more than the first batch's {rows}")
            span, start = (start, start + n), start + n
            placed = None
            if identity is None:
                placed = _place(ctx, batch, rows)
                identity, classes = _start(ctx, batch, placed)
            if "target" in batch:
                _check_targets(batch["target"], classes, i, span[0])
            existed = os.path.isdir(folder)
            have = _on_disk(folder, identity, i, span)
            if _every_process(have):
                skipped += 1
                bar.update(1)
                continue
            results = ctx.step(ctx.params, placed or _place(ctx, batch, rows))  # dispatched asynchronously
            if pending is not None:
                done, pending = pending, None
                _write(*done)
            if not have:  # (another process lacked it: this one computed it too, and keeps its copy)
                pending = (folder, span, rows, results, batch, identity)
            computed += 1
            repaired += existed and not have
            examples += n
            bar.update(1)
            bar.set_postfix_str(f"{examples / (time.perf_counter() - t0):.1f} examples/s", refresh=False)
    finally:  # also on an error or interrupt: keep the batch already computed
        if pending is not None:
            _write(*pending)
    _finish(ctx.out, ctx.process, i + 1, start)
    return DatasetRun(ctx.out, i + 1, computed, skipped, examples, time.perf_counter() - t0, repaired)


def _place_params(params, mesh: Mesh, spec):
    if spec is None:
        spec = PartitionSpec()

    def sharding(s):
        return s if isinstance(s, jax.sharding.Sharding) else NamedSharding(mesh, s)

    if isinstance(spec, (PartitionSpec, jax.sharding.Sharding)):
        return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding(spec)), params)
    return jax.tree_util.tree_map(
        lambda a, s: jax.device_put(a, sharding(s)),
        params,
        spec,
        is_leaf=lambda s: isinstance(s, (PartitionSpec, jax.sharding.Sharding)),
    )


# ------------------------------------------------------------------------------ reading


class _Parts(Sequence):
    """The parts of a :class:`LazyRows`: arrays as given, and ``.npy`` paths memory-mapped
    on access, the last few kept open (each open map holds a file descriptor)."""

    def __init__(self, parts: Iterable, keep: int = 16):
        self._items = list(parts)
        self._open: OrderedDict = OrderedDict()
        self._keep = keep
        self.specs = [
            _npy_header(p) if isinstance(p, (str, os.PathLike)) else (p.shape, p.dtype) for p in self._items
        ]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        item = self._items[j]
        if not isinstance(item, (str, os.PathLike)):
            return item
        if j not in self._open:
            self._open[j] = np.load(item, mmap_mode="r")
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
        same dtype and trailing shape.

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

    def __array__(self, dtype=None, copy=None):
        a = self._span(0, len(self))
        return a if dtype is None else a.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if any(isinstance(o, LazyRows) for o in kwargs.get("out", ())):
            return NotImplemented  # read-only
        inputs = tuple(np.asarray(a) if isinstance(a, LazyRows) else a for a in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getitem__(self, key):
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

    def _indices(self, head) -> np.ndarray:
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


def _checked(path: str, entry: Mapping, rows: int, checksum: bool) -> str:
    """``path``, after checking the file against its manifest entry."""
    problem = _check_file(path, entry, rows, checksum)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}. Resume the run to recompute it")
    return path


def _ordered(out: str, identity: dict, process: Optional[int]) -> list:
    """The batch folders to read, batch-major then process; refuses gaps, stray batches and
    processes with different numbers of batches."""
    folders = _batch_folders(out)
    n_proc = int(identity.get("processes", 1))
    procs = range(n_proc) if process is None else [process]
    if process is not None and not 0 <= process < n_proc:
        raise ValueError(f"process {process} is not one of the {n_proc} processes of {out}")
    stray = sorted(name for (i, p), name in folders.items() if p >= n_proc)
    counts = {}
    for p in procs:
        have = sorted(i for (i, q) in folders if q == p)
        done = os.path.join(out, f"done-p{p:03d}.json")
        k = _read_json(done).get("batches") if os.path.exists(done) else len(have)
        missing = sorted(set(range(k)) - set(have))
        if missing:
            raise ValueError(f"{out} lacks batch-{missing[0]:06d}-p{p:03d}: resume the run to compute it")
        stray += [folders[i, p] for i in have if i >= k]
        counts[p] = k
    if stray:
        raise ValueError(f"{out} holds batches outside the run: {', '.join(stray[:5])}; move them away")
    if len(set(counts.values())) > 1:
        raise ValueError(f"the processes of {out} wrote different numbers of batches {counts}: resume the run")
    if not counts or not max(counts.values()):  # type: ignore[type-var]
        raise FileNotFoundError(f"no batches in {out}")
    return [folders[i, p] for i in range(max(counts.values())) for p in procs]  # type: ignore[type-var]


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
    meta = os.path.join(out, _META)
    if not os.path.exists(meta):
        raise FileNotFoundError(f"{meta} is missing (resuming the run restores it)")
    identity = _read_json(meta).get("run")
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
    parts, stops = {f: [] for f in names}, {}
    for name in _ordered(out, identity, process):
        folder = os.path.join(out, name)
        manifest = _read_json(os.path.join(folder, _MANIFEST))
        _refuse_other_run(folder, manifest.get("run", {}), identity)
        start, stop = manifest.get("rows", (None, None))
        p = int(name[-3:])
        if start != stops.get(p, 0):
            raise ValueError(f"{folder} holds examples from {start}, expected {stops.get(p, 0)}")
        stops[p] = stop
        for f in names:
            entry = manifest.get("files", {}).get(f)
            if entry is None:
                raise ValueError(f"{os.path.join(folder, _MANIFEST)} lists no {f!r}")
            parts[f].append(_checked(os.path.join(folder, f"{f}.npy"), entry, stop - start, verify))
    return {f: LazyRows(v) for f, v in parts.items()}
