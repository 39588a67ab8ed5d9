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
                                   the SHA-256 of its inputs, and for every file its
                                   shape, dtype, size and CRC-32
        relevance.npy              relevance, shape and dtype of the batch's x (an
                                   ml_dtypes type such as bfloat16: its bits, uint16)
        target.npy                 the batch's targets, if given
        <metric>.npy               one value per example for each metric
    out/done-p000.json             number of batches and rows, once process 0 finished
    out/.lock-p000                 the writer's lock (empty file)

The files are plain ``.npy`` (readable without jaxlrp; a bfloat16 file holds the
bits, ``np.load(f).view(ml_dtypes.bfloat16)``); :func:`load` memory-maps them, so
nothing is read before it is indexed. (Why ``.npy`` folders and not one
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
  row range differs from the one the data set now gives (e.g. another batch size),
  or whose inputs do: each manifest holds a SHA-256 of every field the batch feeds
  (``x``, ``target``, and with metrics the fields they are handed), and other data of
  the same shape (shuffled, another split) is refused naming the batch and the fields.
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
* **Storage dtype.** ``dtype=jnp.float16`` holds magnitudes up to 65504: a batch whose
  cast turns finite relevance into ``inf`` is refused with an ``OverflowError`` naming
  the batch and its rows (nothing of it is written; use ``jnp.bfloat16``). bfloat16 and
  every other ml_dtypes type are stored as their bits and read back as the type.
* **Empty batches** (0 examples) are refused with a ``ValueError`` naming the batch.
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
(or sharded as ``param_sharding`` says), and XLA partitions the explanation. The
parameters may hold non-array leaves (an Equinox module's activation functions):
they stay static, as in :func:`jaxlrp.lrp`.

On several hosts, start every process with :func:`jax.distributed.initialize` before
building the mesh (``jax.make_mesh`` over ``jax.devices()``, which lists the devices
of all hosts), and let each process iterate over *its own share* of the data: its
rows are combined into the global batch with
:func:`jax.make_array_from_process_local_data`, and each process writes the rows it
fed to its own ``-pNNN`` folders in a shared output directory. Every step the
processes agree (one small all-gather) on whether anyone still has a batch, on the
batches' fields, dtypes and trailing shapes, on what is on disk everywhere, and on
whether anyone failed: shares may have any sizes (a process whose share has run out
feeds its last batch again, masked, and writes nothing), and an error in one process
stops all of them (the others raise a ``RuntimeError`` naming it) instead of leaving
them in a collective::

    # on each of N hosts (SLURM and Cloud TPU: jax.distributed.initialize() alone)
    jax.distributed.initialize(coordinator_address="host0:1234",
                               num_processes=N, process_id=i)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    my_share = (b for k, b in enumerate(all_batches) if k % N == i)  # any split
    explain_dataset(explain, variables, my_share, "/shared/out", mesh=mesh)

:func:`load` orders the rows batch by batch and within a batch by process (with the
split above: the order of ``all_batches``).
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


def _as_batch(item, index: int) -> dict:
    """Iterator item ``index``: ``x``, ``(x, target)`` or a mapping with key ``"x"``."""
    if isinstance(item, Mapping):
        if "x" not in item:
            raise ValueError(f"batch {index}: a batch given as a mapping needs an 'x' entry, got keys {sorted(item)}")
        batch = dict(item)
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"batch {index}: a batch given as a tuple must be (x, target), got {len(item)} entries")
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
                f"batch {index}: every entry of a batch needs the same leading (example) axis; 'x' has shape "
                f"{batch['x'].shape} and '{k}' has shape {v.shape}"
            )
    if n == 0:
        raise ValueError(
            f"batch {index} is empty ('x' has shape {batch['x'].shape}); leave empty batches out of the data "
            f"set (a process whose share has run out simply stops yielding)"
        )
    return batch


def _inputs(batch: Mapping[str, np.ndarray]) -> dict:
    """``{field: SHA-256}`` of the shape, dtype and bytes of each field of a batch: the
    fingerprint of what the batch feeds (``x`` and ``target``, and the fields the metrics
    are handed when there are metrics), so that a resume with other data of the same
    shape is refused."""
    digests = {}
    for k, v in sorted(batch.items()):
        a = np.ascontiguousarray(v)
        h = hashlib.sha256(f"{a.shape} {a.dtype}".encode())
        h.update(a.reshape(-1).view(np.uint8))
        digests[k] = h.hexdigest()
    return digests


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


def _classes(explain: Callable, arrays: list, rebuild: Callable, x) -> Optional[int]:
    """The size of the explained output's last axis, for an explainer from :func:`jaxlrp.lrp`."""
    fn = (getattr(explain, "jaxlrp_config", None) or {}).get("fn")
    if fn is None:
        return None
    try:
        out = jax.eval_shape(lambda a, x: fn(rebuild(a), x), arrays, x)
    except Exception:  # the explainer takes other arguments: no check rather than a wrong one
        return None
    return int(out.shape[-1]) if getattr(out, "ndim", 0) else None


def _split(params) -> tuple[list, Callable[[list], PyTree]]:
    """The array leaves of ``params`` and the function that puts (placed or traced) arrays
    back among the static leaves: the split :func:`jaxlrp.lrp` makes, so that an Equinox
    module's activation functions, strings and Python numbers stay Python objects."""
    from .explain import _is_array

    leaves, treedef = jax.tree_util.tree_flatten(params)
    where = [j for j, leaf in enumerate(leaves) if _is_array(leaf)]

    def rebuild(arrays: list) -> PyTree:
        full = list(leaves)
        for j, a in zip(where, arrays):
            full[j] = a
        return jax.tree_util.tree_unflatten(treedef, full)

    return [leaves[j] for j in where], rebuild


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
    """SHA-256 of the tree structure and of every leaf's shape, dtype and bytes (a static,
    non-array leaf such as an Equinox module's activation function: its description)."""
    from .explain import _is_array

    leaves, treedef = jax.tree_util.tree_flatten(params)
    h = hashlib.sha256(_text(treedef, limit=10**9).encode())
    whole = True
    for leaf in leaves:
        if not _is_array(leaf):
            h.update(f"static {_text(leaf)}".encode())
            continue
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


def _identity(explain, params, batch: dict, fields: dict, metrics: dict, batch_size: Optional[int] = None) -> dict:
    import jaxlrp

    x = batch["x"]
    return {
        "format": _FORMAT,
        "jaxlrp": jaxlrp.__version__,
        "explainer": _explainer(explain),
        "params": _fingerprint(params),
        "batch_size": int(x.shape[0] if batch_size is None else batch_size),
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
    stored = entry.get("stored", entry.get("dtype"))  # "stored": the bits of an ml_dtypes type
    if list(shape) != entry.get("shape") or str(dtype) != stored or shape[0] != rows:
        return f"shape {shape} {dtype} instead of {tuple(entry.get('shape', ()))} {stored}"
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


def _on_disk(folder: str, identity: dict, index: int, rows: tuple, inputs: dict) -> bool:
    """Whether batch ``index`` is committed and intact. A damaged one is removed (and
    recomputed by the caller); one from another run, with other rows or computed from
    other inputs (``inputs``: the fingerprint of the batch the data set gives now) is refused."""
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
        before = manifest.get("inputs")
        if isinstance(before, dict) and before != inputs:
            changed = sorted(k for k in set(before) | set(inputs) if before.get(k) != inputs.get(k))
            raise ValueError(
                f"batch {index} on disk ({folder}) was computed from other data: its {', '.join(map(repr, changed))} "
                f"differ from what the data set gives now (same shapes, other values or order). Iterate over "
                f"the data as in the run on disk, or write to another directory"
            )
    problem = _damage(folder, manifest, identity["fields"], checksum=True)
    if problem is None and not isinstance(manifest.get("inputs") if manifest else None, dict):
        problem = f"{os.path.join(folder, _MANIFEST)} lacks the fingerprint of the batch's inputs"
    if problem is None:
        return True
    warnings.warn(f"batch {index} on disk is damaged ({problem}); recomputing it", RuntimeWarning, stacklevel=3)
    shutil.rmtree(folder)
    return False


#: Bytes each process contributes to one agreement (a JSON object, zero-padded).
_SHARE_BYTES = 16384


def _share(mine: dict) -> list:
    """``mine`` (a small JSON object) from every process, in process order: the one
    collective with which the processes agree, batch by batch, on what to do."""
    if jax.process_count() == 1:
        return [mine]
    from jax.experimental import multihost_utils

    raw = json.dumps(mine, sort_keys=True).encode()
    if len(raw) > _SHARE_BYTES and "spec" in mine:  # very many fields: compared by digest only
        mine = {**mine, "spec": {"sha256": hashlib.sha256(json.dumps(mine["spec"]).encode()).hexdigest()}}
        raw = json.dumps(mine, sort_keys=True).encode()
    buf = np.zeros(_SHARE_BYTES, np.uint8)
    buf[: len(raw)] = np.frombuffer(raw[:_SHARE_BYTES], np.uint8)
    got = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), _SHARE_BYTES)
    return [json.loads(bytes(row).rstrip(b"\0")) for row in got]


def _agree(index: int, stage: str, failure: Optional[BaseException], mine: dict) -> list:
    """Share ``mine`` and whether this process failed; if any process did, every process
    raises (this one its own error, the others a :class:`RuntimeError` naming it), so that
    no process is left waiting for the others in a collective."""
    error = None if failure is None else f"{type(failure).__name__}: {failure}"[:2000]
    shared = _share({**mine, "error": error})
    if failure is not None:
        raise failure
    failed = [(p, s["error"]) for p, s in enumerate(shared) if s["error"] is not None]
    if failed:
        raise RuntimeError(
            f"process {jax.process_index()} stops at batch {index} ({stage}) because "
            + "; ".join(f"process {p} failed: {e}" for p, e in failed)
        )
    return shared


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


def _write(
    folder: str, rows: tuple, padded: int, results: dict, batch: dict, identity: dict, inputs: Optional[dict] = None
) -> None:
    """Write one batch and its manifest into a temporary folder, then commit it with a rename.
    ``inputs``: the fingerprint of ``batch`` (:func:`_inputs`), if already taken."""
    parent, name = os.path.split(folder)
    m = _BATCH.fullmatch(name)
    assert m is not None, name
    n = rows[1] - rows[0]
    if _NONFINITE in results:
        _refuse_overflow(int(m[1]), _local_rows(results[_NONFINITE])[:n], results["relevance"].dtype)
    tmp = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    arrays = {"target": batch["target"]} if "target" in batch else {}
    for key, value in results.items():
        if key == _NONFINITE:
            continue
        a = _local_rows(value)
        if a.ndim == 0 or a.shape[0] != padded:
            raise ValueError(
                f"metric {key!r} returned shape {a.shape}; metrics must return one value per example "
                f"(leading axis of {padded})"
            )
        arrays[key] = a[:n]
    files = {key: _save(os.path.join(tmp, f"{key}.npy"), a) for key, a in sorted(arrays.items())}
    manifest = {
        "batch": int(m[1]),
        "process": int(m[2]),
        "rows": list(rows),
        "files": files,
        "inputs": _inputs(batch) if inputs is None else inputs,
        "run": identity,
    }
    _write_atomic_json(os.path.join(tmp, _MANIFEST), manifest)
    os.replace(tmp, folder)


def _refuse_overflow(index: int, lost: np.ndarray, dtype) -> None:
    """Refuse a batch whose storage cast turned finite relevance into ``inf``
    (``lost``: per example, the number of such values)."""
    if not lost.any():
        return
    rows = np.nonzero(lost)[0]
    raise OverflowError(
        f"batch {index}: storing relevance as {dtype} turned {int(lost.sum())} finite values into inf "
        f"(rows {rows[:5].tolist()}{' ...' if rows.size > 5 else ''}; {dtype} holds magnitudes up to "
        f"{float(jnp.finfo(dtype).max):g}). The batch was not written; store in jnp.bfloat16 (float32's "
        f"range in 2 bytes) or float32, in another directory"
    )


def _bits(dtype: np.dtype) -> Optional[np.dtype]:
    """The unsigned integer type a ``.npy`` file stores an ml_dtypes type (bfloat16, the
    float8 types, int4...) as: numpy's header can only call those ``|V2`` (void), which
    reads back as raw bytes, or ``<f1``, which does not read back. ``None`` for a type whose
    ``.npy`` header reads back as itself."""
    fmt = np.lib.format
    try:
        if fmt.descr_to_dtype(fmt.dtype_to_descr(dtype)) == dtype:
            return None
    except (TypeError, ValueError):  # a header numpy writes but cannot read ('<f1' for float8_e5m2)
        pass
    return np.dtype(f"u{dtype.itemsize}")


def _dtype(name: str) -> np.dtype:
    """A dtype from its name, ml_dtypes' included."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def _save(path: str, a: np.ndarray) -> dict:
    """``np.save`` and the file's manifest entry; the CRC-32 of the data is taken from
    memory (the same bytes as in the file), not by reading the file back. An ml_dtypes
    array is stored as its bits (``uint16`` for bfloat16); the manifest gives its
    ``dtype`` and the ``stored`` one, and :func:`load` views the bits as the former."""
    a = np.ascontiguousarray(a)
    dtype, bits = a.dtype, _bits(a.dtype)
    if bits is not None:
        a = a.view(bits)
    np.save(path, a)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        crc = zlib.crc32(f.read(size - a.nbytes))  # the .npy header
    crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    entry = {"shape": list(a.shape), "dtype": str(dtype), "bytes": size, "crc32": crc}
    return entry if bits is None else {**entry, "stored": str(bits)}


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
    """A tqdm bar: a widget in Jupyter, a text bar on a terminal's stderr, none otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", desc="jaxlrp", file=sys.stderr, disable=not (enabled and _interactive()))


def _interactive() -> bool:
    """Whether a person watches: a Jupyter kernel (where stderr is no terminal, and
    tqdm's own ``disable=None`` test would hide the bar) or a terminal."""
    return "ipykernel" in sys.modules or sys.stderr.isatty()


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
        handed to the metrics. Iterate in the same order on a restart (a batch whose
        inputs differ from those on disk is refused). The last batch
        may be smaller; it is padded to the first batch's size (no recompilation)
        and the padding is dropped; an empty batch is refused. Integer targets are checked on the host before
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
        For example, with masks of shape ``(N, H, W)`` for images ``(N, H, W, C)``:
        ``{"mass": lambda R, b: jaxlrp.metrics.relevance_mass_accuracy(R.sum(-1), b["mask"])}``.
    save_relevance:
        Write the relevance maps (else only targets and metrics).
    dtype:
        Store relevance in this dtype (e.g. ``jnp.bfloat16`` to halve the disk space
        and keep float32's range; ``np.float16`` refuses a batch it would overflow);
        default: as computed.
    resume:
        Skip batches already on disk (after checking that they belong to the same
        run and are intact). With ``False`` an existing output directory is an error.
    progress:
        A progress bar (``tqdm.auto``), process 0 only: a widget in a Jupyter
        kernel, a text bar when stderr is a terminal, and none otherwise (logs,
        batch jobs).
    total:
        Number of batches, for the progress bar (``len(batches)`` if it has one).

    Returns
    -------
    DatasetRun
        Counts and wall time; read the results with :func:`load`.

    Raises
    ------
    ValueError
        A different run in ``out``, other inputs than those of a batch on disk, a
        target out of range, stale batches beyond the end of the data set, malformed
        or empty batches or metrics.
    OverflowError
        ``dtype`` turned finite relevance of a batch into ``inf``.
    RuntimeError
        Another process (of a multi-process run) failed; its error is named.
    DatasetLockedError
        Another writer holds ``out`` (same process index).
    """
    out = os.fspath(out)
    metrics = dict(metrics or {})
    for name in metrics:
        if name in ("relevance", "target", "x", _NONFINITE) or not name.isidentifier():
            raise ValueError(f"metric name {name!r} is reserved or not an identifier")
    mesh, data_sharding, n_local_shards = _data_mesh(mesh, data_axis)
    arrays, rebuild = _split(params)
    placed_arrays = _place_params(params, arrays, mesh, param_sharding)
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)
    process = jax.process_index()
    os.makedirs(out, exist_ok=True)
    with contextlib.ExitStack() as held:
        failure = None
        try:  # a process that cannot start (locked, not resuming) stops the others too
            held.enter_context(_locked(out, process))
            if not resume and _batch_folders(out):
                raise FileExistsError(f"{out} already holds batches; pass resume=True to continue that run")
            _clean_partial(out, process)
        except Exception as e:
            failure = e
        _agree(0, "starting", failure, {})
        step = jax.jit(_step_fn(explain, rebuild, metrics, save_relevance, dtype))
        ctx = _Context(
            out, process, explain, placed_arrays, rebuild, params, metrics, step, data_sharding, n_local_shards
        )
        with _progress(progress and process == 0, total) as bar:
            return _Loop(ctx, batches, bar).run()


class _Context(NamedTuple):
    out: str
    process: int
    explain: Callable
    arrays: list  # the parameters' array leaves, placed on the mesh
    rebuild: Callable  # arrays -> the parameters (static leaves put back)
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


#: The private result of the jitted step: per example, how many finite relevance values
#: the storage cast (``dtype=``) turned into inf.
_NONFINITE = "_nonfinite"


def _step_fn(explain: Callable, rebuild: Callable, metrics: dict, save_relevance: bool, dtype) -> Callable:
    def step(arrays, batch):
        kw = {"target": batch["target"]} if "target" in batch else {}
        relevance = explain(rebuild(arrays), batch["x"], **kw)
        result = {name: jnp.asarray(m(relevance, batch)) for name, m in metrics.items()}
        if save_relevance:
            result["relevance"] = relevance if dtype is None else relevance.astype(dtype)
            if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
                lost = jnp.isfinite(relevance) & ~jnp.isfinite(result["relevance"])
                result[_NONFINITE] = jnp.sum(lost.reshape(lost.shape[0], -1), axis=1)
        return result

    return step


def _start(ctx: _Context, batch: dict, placed: dict, size: int) -> tuple:
    """The run's identity and the number of classes, from the first batch (``size``: the
    largest number of examples of the processes' first batches)."""
    stored = _stored_identity(ctx.out)
    try:
        fields = dict(ctx.step.eval_shape(ctx.arrays, placed))  # type: ignore[attr-defined]
    except Exception:  # a batch the model cannot take: if it is not the run on disk, say that first
        if stored is not None:
            cheap = _identity(ctx.explain, ctx.fingerprint_params, batch, {}, ctx.metrics, size)
            _refuse_other_run(ctx.out, {**stored, "fields": {}}, cheap)
        raise
    fields.pop(_NONFINITE, None)
    rows = placed["x"].shape[0] // jax.process_count()
    for name in ctx.metrics:
        if fields[name].ndim == 0 or fields[name].shape[0] != placed["x"].shape[0]:
            raise ValueError(
                f"metric {name!r} returned shape {fields[name].shape}; metrics must return one value per "
                f"example (leading axis of {rows})"
            )
    if "target" in batch:
        fields["target"] = jax.ShapeDtypeStruct(batch["target"].shape, batch["target"].dtype)
    identity = _identity(ctx.explain, ctx.fingerprint_params, batch, fields, ctx.metrics, size)
    _check_meta(ctx.out, stored, identity, ctx.process)
    return identity, _classes(ctx.explain, ctx.arrays, ctx.rebuild, placed["x"])


def _place(ctx: _Context, batch: dict, rows: int) -> dict:
    return {k: jax.make_array_from_process_local_data(ctx.data_sharding, _pad(v, rows)) for k, v in batch.items()}


def _spec(batch: Optional[dict]) -> Optional[dict]:
    return None if batch is None else {k: [list(v.shape), str(v.dtype)] for k, v in sorted(batch.items())}


def _check_specs(index: int, shared: list) -> None:
    """Refuse batches whose fields, dtypes or trailing shapes differ between processes;
    each process feeds its share of one global batch."""
    specs = {p: s["spec"] for p, s in enumerate(shared) if s["spec"] is not None}
    if any("sha256" in s for s in specs.values()):
        key = {p: json.dumps(s) for p, s in specs.items()}
    else:
        key = {p: json.dumps({k: [sh[1:], d] for k, (sh, d) in s.items()}) for p, s in specs.items()}
    if len(set(key.values())) > 1:
        shown = "; ".join(f"process {p}: {s}" for p, s in specs.items())
        raise ValueError(
            f"batch {index}: the processes' batches differ ({shown}). Every process must feed the same "
            f"fields with the same dtypes and trailing shapes"
        )


def _first_size(shared: list) -> int:
    """The largest number of examples of the processes' first batches: the batch size
    every share is padded to."""
    sizes = [s["spec"]["x"][0][0] for s in shared if s["spec"] is not None and "x" in s["spec"]]
    if not sizes:
        raise ValueError("a process without a first batch cannot build its share: the batches have too many fields")
    return max(sizes)


def _zeros(spec: dict) -> dict:
    """A batch of zeros described by ``spec`` (:func:`_spec`): the share of a process that
    has no batch of its own at the first step."""
    if "sha256" in spec:
        raise ValueError("a process without a first batch cannot build its share: the batches have too many fields")
    return {k: np.zeros(shape, _dtype(d)) for k, (shape, d) in spec.items()}


def _largest(shared: list) -> dict:
    """The spec of the largest first batch (:func:`_spec`)."""
    specs = [s["spec"] for s in shared if s["spec"] is not None]
    return max(specs, key=lambda s: s.get("x", [[0]])[0][0])


class _Loop:
    """One process's batch loop. Every step, the processes agree (:func:`_agree`) on
    whether anyone still has a batch, on its structure, on whether it is on disk
    everywhere, and on whether anyone failed; a process whose share has run out feeds
    its last batch again (or zeros) as a masked share and writes nothing, so that no
    process waits for a collective the others never enter."""

    def __init__(self, ctx: _Context, batches: Iterable, bar):
        self.ctx, self.it, self.bar, self.t0 = ctx, iter(batches), bar, time.perf_counter()
        self.identity: Optional[dict] = None
        self.classes: Optional[int] = None
        self.rows = 0  # padded rows per process, from the first batch
        self.count = self.start = 0  # this process's batches and examples so far
        self.computed = self.skipped = self.repaired = self.examples = 0
        self.pending: Optional[tuple] = None  # _write arguments of the batch in flight
        self.failure: Optional[BaseException] = None
        self.exhausted = False
        self.last: Optional[dict] = None  # the last share placed (fed again once this share has run out)
        self.latest: Optional[dict] = None  # this process's last batch (placed if ``last`` is not yet)

    def _attempt(self, fn: Callable, *args):
        """``fn(*args)``, or ``None`` with the error kept for the next agreement."""
        if self.failure is not None:
            return None
        try:
            return fn(*args)
        except Exception as e:  # raised once every process knows (see _agree)
            self.failure = e
            return None

    def _fetch(self, index: int) -> Optional[dict]:
        if self.exhausted:
            return None
        try:
            item = next(self.it)
        except StopIteration:
            self.exhausted = True
            return None
        batch = _as_batch(item, index)
        n = batch["x"].shape[0]
        if self.rows and n > self.rows:
            raise ValueError(f"batch {index} has {n} examples, more than the first batch's {self.rows} (padded)")
        return batch

    def _prepare(self, index: int, batch: Optional[dict], shared: list) -> tuple:
        """The identity (first step), the targets' check and whether the batch is on disk;
        ``(placed or None, have, inputs, existed)``; ``existed``: a folder was there."""
        placed = None
        if self.identity is None:
            size, shards = _first_size(shared), self.ctx.n_local_shards
            model = batch if batch is not None else _zeros(_largest(shared))
            self.rows = -(-size // shards) * shards
            placed = _place(self.ctx, model, self.rows)
            self.identity, self.classes = _start(self.ctx, model, placed, size)
            if batch is None:
                self.last, placed = placed, None
        if batch is None:
            return None, False, None, False
        if "target" in batch:
            _check_targets(batch["target"], self.classes, index, self.start)
        span = (self.start, self.start + batch["x"].shape[0])
        fed = batch if self.ctx.metrics else {k: v for k, v in batch.items() if k in ("x", "target")}
        inputs, folder = _inputs(fed), self._folder(index)
        existed = os.path.isdir(folder)
        return placed, _on_disk(folder, self.identity, index, span, inputs), inputs, existed

    def _folder(self, index: int) -> str:
        return os.path.join(self.ctx.out, f"batch-{index:06d}-p{self.ctx.process:03d}")

    def _flush(self) -> None:
        if self.pending is not None:
            done, self.pending = self.pending, None
            self._attempt(_write, *done)

    def run(self) -> DatasetRun:
        index = 0
        try:
            while True:
                batch = self._attempt(self._fetch, index)
                shared = _agree(index, "reading", self.failure, {"spec": _spec(batch)})
                if all(s["spec"] is None for s in shared):
                    break
                _check_specs(index, shared)
                prepared = self._attempt(self._prepare, index, batch, shared) or (None, False, None, False)
                placed, have, inputs, existed = prepared
                votes = _agree(index, "checking", self.failure, {"has": batch is not None, "have": bool(have)})
                if all(v["have"] for v in votes if v["has"]):
                    self.skipped += batch is not None
                elif batch is None:  # a masked share: computed, not written
                    if self.last is None:
                        self.last = _place(self.ctx, self.latest, self.rows)  # type: ignore[arg-type]
                    self.ctx.step(self.ctx.arrays, self.last)
                    self._flush()
                else:
                    self._compute(index, batch, placed, have, inputs)
                    self.repaired += existed and not have
                if batch is not None:
                    self.latest = batch
                    self.count, self.start = self.count + 1, self.start + batch["x"].shape[0]
                    self.bar.update(1)
                index += 1
            self._flush()
            _agree(index, "writing", self.failure, {})
        except BaseException:  # an error or interrupt: keep the batch already computed
            if self.pending is not None:
                with contextlib.suppress(Exception):  # (the error in hand is the one to report)
                    _write(*self.pending)
            raise
        _finish(self.ctx.out, self.ctx.process, self.count, self.start)
        elapsed = time.perf_counter() - self.t0
        return DatasetRun(
            self.ctx.out, self.count, self.computed, self.skipped, self.examples, elapsed, self.repaired
        )

    def _compute(self, index: int, batch: dict, placed: Optional[dict], have: bool, inputs: dict) -> None:
        self.last = placed if placed is not None else _place(self.ctx, batch, self.rows)
        results = self.ctx.step(self.ctx.arrays, self.last)  # dispatched asynchronously
        self._flush()  # the previous batch, written while this one runs
        if not have:  # (another process lacked it: this one computed it too, and keeps its copy)
            span = (self.start, self.start + batch["x"].shape[0])
            self.pending = (self._folder(index), span, self.rows, results, batch, self.identity, inputs)
        n = batch["x"].shape[0]
        self.computed += 1
        self.examples += n
        self.bar.set_postfix_str(f"{self.examples / (time.perf_counter() - self.t0):.1f} examples/s", refresh=False)


def _place_params(params, arrays: list, mesh: Mesh, spec) -> list:
    """``arrays`` (the array leaves of ``params``) on the mesh, as ``spec`` says."""
    if spec is None:
        spec = PartitionSpec()

    def sharding(s):
        return s if isinstance(s, jax.sharding.Sharding) else NamedSharding(mesh, s)

    if isinstance(spec, (PartitionSpec, jax.sharding.Sharding)):
        return [jax.device_put(a, sharding(spec)) for a in arrays]
    from .explain import _is_array

    is_spec = lambda s: isinstance(s, (PartitionSpec, jax.sharding.Sharding))  # noqa: E731
    specs = jax.tree_util.tree_structure(params).flatten_up_to(spec)  # type: ignore[attr-defined]
    leaves = jax.tree_util.tree_leaves(params)
    chosen = [s for leaf, s in zip(leaves, specs) if _is_array(leaf)]
    bad = [s for s in chosen if not is_spec(s)]
    if bad:
        raise ValueError(f"param_sharding holds {bad[0]!r} for an array of the parameters; give a PartitionSpec")
    return [jax.device_put(a, sharding(s)) for a, s in zip(arrays, chosen)]


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
            return _npy_header(item[0])[0], np.dtype(item[1])
        return _npy_header(item) if isinstance(item, (str, os.PathLike)) else (item.shape, item.dtype)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, j):
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


def _checked(path: str, entry: Mapping, rows: int, checksum: bool) -> Union[str, tuple]:
    """``path``, after checking the file against its manifest entry; ``(path, dtype)`` for
    the bits of an ml_dtypes type (read as ``dtype``)."""
    problem = _check_file(path, entry, rows, checksum)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}. Resume the run to recompute it")
    return path if "stored" not in entry else (path, _dtype(entry["dtype"]))


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
    finished = all(os.path.exists(os.path.join(out, f"done-p{p:03d}.json")) for p in procs)
    if len(set(counts.values())) > 1 and not finished:  # unequal shares are read once every process finished
        raise ValueError(f"the processes of {out} wrote different numbers of batches {counts}: resume the run")
    if not counts or not max(counts.values()):  # type: ignore[type-var]
        raise FileNotFoundError(f"no batches in {out}")
    return [folders[i, p] for i in range(max(counts.values())) for p in procs if i < counts[p]]  # type: ignore[type-var,operator]


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
