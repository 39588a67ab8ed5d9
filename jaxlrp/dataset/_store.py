"""The store on disk: a run's identity (the explainer, the parameters' fingerprint,
the fields), the batch folders and their manifests, their integrity checks, the
atomic writes, and the writer's lock (see the :mod:`jaxlrp.dataset` docstring for
the layout and the guarantees)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
import zlib
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any  # a pytree of arrays (model variables) or of shardings
PathLike = Union[str, os.PathLike]

_FORMAT = 2
META = "meta.json"
MANIFEST = "manifest.json"
_BATCH = re.compile(r"batch-(\d{6})-p(\d{3})")

#: The private result of the jitted step: per example, how many finite relevance values
#: the storage cast (``dtype=``) turned into inf.
NONFINITE = "_nonfinite"


class DatasetLockedError(RuntimeError):
    """Another :func:`explain_dataset` is writing the same output directory (for the
    same process index)."""


# ----------------------------------------------------------------------------- batches


def stored_inputs(batch: Mapping[str, np.ndarray]) -> dict:
    """``{field: SHA-256}`` of the shape, dtype and bytes of each field of a batch: the
    fingerprint of what the batch feeds (``x`` and ``target``, and the fields the metrics
    are handed when there are metrics), so that a resume with other data of the same
    shape is refused."""
    digests = {}
    for k, v in sorted(batch.items()):
        a = np.ascontiguousarray(v)
        h = hashlib.sha256(f"{a.shape} {a.dtype}".encode())
        h.update(_bytes(a))
        digests[k] = h.hexdigest()
    return digests


def _bytes(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy (a ``memoryview``: numpy's stubs
    give arrays the buffer protocol only for Python >= 3.12)."""
    return a.reshape(-1).view(np.uint8).data


def _local_rows(a: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded array held by this process, in order."""
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
        return np.asarray(a)
    rows: dict[int, np.ndarray] = {}  # first row -> the shard's rows
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
    from .._core.trace import is_array

    leaves, treedef = jax.tree_util.tree_flatten(params)
    h = hashlib.sha256(_text(treedef, limit=10**9).encode())
    whole = True
    for leaf in leaves:
        if not is_array(leaf):
            h.update(f"static {_text(leaf)}".encode())
            continue
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            h.update(f"{leaf.shape} {leaf.dtype} split over hosts".encode())
            whole = False
            continue
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(_bytes(a))
    return {"sha256": h.hexdigest(), "leaves": len(leaves), "bytes_hashed": whole}


def explainer_config(explain: Callable) -> dict:
    """The settings of an explainer from :func:`jaxlrp.lrp` (the explained function under
    ``"fn"``, the composite, ``argnums``, ``start``, ``example_axes``, and
    ``relevance_dtype`` where it is not the default, so that stores written before
    it existed keep their identity): the fields of the :class:`jaxlrp.Explainer` it
    is, or that a wrapper such as :func:`jaxlrp.flax.lrp`'s names as
    ``__wrapped__``; ``{}`` for any other callable."""
    from ..explain import Explainer

    for candidate in (explain, getattr(explain, "__wrapped__", None)):
        if isinstance(candidate, Explainer):
            cfg = {"fn": candidate.fn, "composite": candidate.composite, "argnums": candidate.argnums,
                   "start": candidate.start, "example_axes": candidate.example_axes}
            dtype = candidate.relevance_dtype  # compared as a dtype: "float32" is the default too
            if dtype is None or np.dtype(dtype) != np.dtype(Explainer.relevance_dtype):  # the field's default
                cfg["relevance_dtype"] = dtype
            return cfg
    return {}


def _explainer(explain: Callable) -> dict:
    cfg = explainer_config(explain)
    name = getattr(explain, "__qualname__", type(explain).__qualname__)
    desc = {"function": f"{getattr(explain, '__module__', None)}.{name}"}
    desc.update({k: _text(v) for k, v in sorted(cfg.items()) if k != "fn"})
    return desc


def run_identity(explain, params, batch: dict, fields: dict, metrics: dict, batch_size: Optional[int] = None) -> dict:
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


def refuse_other_run(where: str, old: Mapping, new: Mapping) -> None:
    diff = _differences(old, new)
    if diff:
        raise ValueError(
            f"{where} holds a different run; it differs in\n  " + "\n  ".join(diff)
            + "\nUse another directory (or the settings of the run on disk)."
        )


def read_json(path: str) -> dict:
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


def batch_folders(out: str) -> dict:
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


def stored_identity(out: str) -> Optional[dict]:
    """The identity recorded in ``meta.json`` or, if it is gone, in a committed manifest."""
    path = os.path.join(out, META)
    if os.path.exists(path):
        return read_json(path).get("run", {})
    for name in batch_folders(out).values():
        manifest = os.path.join(out, name, MANIFEST)
        if os.path.exists(manifest):
            return read_json(manifest).get("run", {})
    return None


def check_meta(out: str, stored: Optional[dict], identity: dict, process: int) -> None:
    """Refuse a run that differs from the one on disk; (re)write ``meta.json`` on process 0."""
    if stored is not None:
        refuse_other_run(out, stored, identity)
    if process == 0 and not os.path.exists(os.path.join(out, META)):
        _write_atomic_json(os.path.join(out, META), {"run": identity})


# ------------------------------------------------------------------------- integrity


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def npy_header(path: PathLike) -> tuple:
    """``(shape, dtype)`` from a ``.npy`` header, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f".npy format version {version}")
        shape, _, dtype = read[version](f)
    return shape, dtype


def check_file(path: str, entry: Mapping, rows: int, checksum: bool) -> Optional[str]:
    """What is wrong with one stored file (``None``: nothing)."""
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size == 0:
        return "empty (0 bytes)"
    try:
        shape, dtype = npy_header(path)
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
        return f"{os.path.join(folder, MANIFEST)} is missing or malformed"
    files = manifest.get("files", {})
    start, stop = manifest.get("rows", (0, -1))
    for field in fields:
        path = os.path.join(folder, f"{field}.npy")
        if field not in files:
            return f"{path} is not in the manifest"
        problem = check_file(path, files[field], stop - start, checksum)
        if problem:
            return f"{path}: {problem}"
    return None


def _try_manifest(folder: str) -> Optional[dict]:
    try:
        return read_json(os.path.join(folder, MANIFEST))
    except ValueError:
        return None


def on_disk(folder: str, identity: dict, index: int, rows: tuple, inputs: dict) -> bool:
    """Whether batch ``index`` is committed and intact. A damaged one is removed (and
    recomputed by the caller); one from another run, with other rows or computed from
    other inputs (``inputs``: the fingerprint of the batch the data set gives now) is refused."""
    if not os.path.isdir(folder):
        return False
    manifest = _try_manifest(folder)
    if manifest is not None:
        refuse_other_run(folder, manifest.get("run", {}), identity)
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
        problem = f"{os.path.join(folder, MANIFEST)} lacks the fingerprint of the batch's inputs"
    if problem is None:
        return True
    warnings.warn(f"batch {index} on disk is damaged ({problem}); recomputing it", RuntimeWarning, stacklevel=3)
    shutil.rmtree(folder)
    return False


# ------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def locked(out: str, process: int):
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


def clean_partial(out: str, process: int) -> None:
    """Remove batches a crash left half-written (never committed) by this process."""
    suffix = f"-p{process:03d}"
    for name in os.listdir(out):
        if name.startswith(".tmp-batch-") and name.split(".")[1].endswith(suffix):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def write_part(
    folder: str, rows: tuple, padded: int, results: dict, batch: dict, identity: dict, inputs: Optional[dict] = None
) -> None:
    """Write one batch and its manifest into a temporary folder, then commit it with a rename.
    ``inputs``: the fingerprint of ``batch`` (:func:`stored_inputs`), if already taken."""
    parent, name = os.path.split(folder)
    m = _BATCH.fullmatch(name)
    assert m is not None, name
    n = rows[1] - rows[0]
    if NONFINITE in results:
        _refuse_overflow(int(m[1]), _local_rows(results[NONFINITE])[:n], results["relevance"].dtype)
    tmp = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    arrays = {"target": batch["target"]} if "target" in batch else {}
    for key, value in results.items():
        if key == NONFINITE:
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
        "inputs": stored_inputs(batch) if inputs is None else inputs,
        "run": identity,
    }
    _write_atomic_json(os.path.join(tmp, MANIFEST), manifest)
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


def dtype_of(name: str) -> np.dtype:
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
    crc = zlib.crc32(_bytes(a), crc)
    entry = {"shape": list(a.shape), "dtype": str(dtype), "bytes": size, "crc32": crc}
    return entry if bits is None else {**entry, "stored": str(bits)}


def finish_store(out: str, process: int, count: int, examples: int) -> None:
    """Refuse stale batches beyond the end of the data set, else record the end."""
    stale = sorted(name for (i, p), name in batch_folders(out).items() if p == process and i >= count)
    if stale:
        raise ValueError(
            f"the data set ended after {count} batches, but {out} holds batches beyond it from an earlier, "
            f"longer run: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}. Delete them to keep the "
            f"shorter run (they are left in place)"
        )
    _write_atomic_json(os.path.join(out, f"done-p{process:03d}.json"), {"batches": count, "examples": examples})

