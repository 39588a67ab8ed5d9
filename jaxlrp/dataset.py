"""Explain a whole data set: batches streamed through a jitted, sharded explainer
and written to disk as they are done, so that an interrupted run resumes.

>>> explain = jaxlrp.lrp(model.apply, composites.EpsilonPlusFlat())
>>> batches = ({"x": x[i:i + 256], "target": y[i:i + 256]} for i in range(0, len(x), 256))
>>> run = jaxlrp.dataset.explain_dataset(explain, variables, batches, "out/relevance")
>>> R = jaxlrp.dataset.load("out/relevance")["relevance"]

Layout on disk (one folder per batch, committed by an atomic rename, so a crash
loses at most the batch in flight)::

    out/meta.json                  what was explained (checked on resume)
    out/batch-000000-p000/         batch 0, written by process 0
        relevance.npy              relevance, shape and dtype of the batch's x
        target.npy                 the batch's targets, if given
        <metric>.npy               one value per example for each metric

Data parallelism: the examples of a batch are sharded over the ``data_axis`` of a
:class:`jax.sharding.Mesh` (by default all devices), the parameters are replicated
(or sharded as ``param_sharding`` says), and XLA partitions the explanation. On
several hosts, start every process with :func:`jax.distributed.initialize` before
building the mesh (``jax.make_mesh`` over ``jax.devices()``, which lists the devices
of all hosts), and let each process iterate over *its own share* of the data (same
batch sizes on every host): its rows are combined into the global batch with
:func:`jax.make_array_from_process_local_data`, and each process writes the rows it
fed to its own ``-pNNN`` folders in a shared output directory::

    # on each of N hosts (or with SLURM / Cloud TPU, where the arguments are implied)
    jax.distributed.initialize(coordinator_address="host0:1234",
                               num_processes=N, process_id=i)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    explain_dataset(explain, variables, my_share_of_batches, "/shared/out", mesh=mesh)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["explain_dataset", "load", "DatasetRun"]

Array = Any
PathLike = Union[str, os.PathLike]
Metric = Callable[[Array, Mapping[str, Array]], Array]

_FORMAT = 1
_META = "meta.json"


class DatasetRun(NamedTuple):
    """What :func:`explain_dataset` did.

    Attributes
    ----------
    path: the output directory.
    batches: batches in the data set (as far as the iterator went).
    computed: batches explained in this run.
    skipped: batches found on disk and not recomputed.
    examples: examples explained in this run.
    seconds: wall time of this run.
    """

    path: str
    batches: int
    computed: int
    skipped: int
    examples: int
    seconds: float


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


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    """Pad the leading axis to ``n`` rows by repeating the last row (explained, then dropped)."""
    if a.shape[0] == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)])


def _local_rows(a: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded array held by this process, in order."""
    if a.is_fully_addressable:
        return np.asarray(a)
    rows = {}
    for shard in a.addressable_shards:
        start = shard.index[0].start or 0
        rows.setdefault(start, np.asarray(shard.data))
    return np.concatenate([rows[s] for s in sorted(rows)])


def _write_atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class _Progress:
    """A one-line progress report on stderr (no dependency)."""

    def __init__(self, enabled: bool, total: Optional[int]):
        self.enabled, self.total, self.t0, self.done = enabled, total, time.perf_counter(), 0

    def update(self, batch_index: int, examples: int, skipped: bool) -> None:
        if not self.enabled:
            return
        if not skipped:
            self.done += examples
        dt = time.perf_counter() - self.t0
        of = f"/{self.total}" if self.total else ""
        rate = f"{self.done / dt:.1f} examples/s" if self.done and dt > 0 else "resuming"
        sys.stderr.write(f"\rjaxlrp: batch {batch_index + 1}{of}, {rate}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def explain_dataset(
    explain: Callable,
    params: Any,
    batches: Iterable,
    out: PathLike,
    *,
    mesh: Optional[Mesh] = None,
    data_axis: Union[str, tuple] = "data",
    param_sharding: Any = None,
    metrics: Optional[Mapping[str, Metric]] = None,
    save_relevance: bool = True,
    dtype: Any = None,
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
        and the padding is dropped.
    out:
        Output directory (created). Existing batches in it are kept and skipped
        when ``resume`` is true.
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
        Skip batches already on disk (after checking that ``meta.json`` describes the
        same run). With ``False`` an existing output directory is an error.
    progress:
        Report progress on stderr (process 0 only).
    total:
        Number of batches, for the progress report (``len(batches)`` if it has one).

    Returns
    -------
    DatasetRun
        Counts and wall time; read the results with :func:`load`.
    """
    out = os.fspath(out)
    metrics = dict(metrics or {})
    for name in metrics:
        if name in ("relevance", "target", "x") or not name.isidentifier():
            raise ValueError(f"metric name {name!r} is reserved or not an identifier")
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
    n_local_shards = max(1, n_shards // jax.process_count())
    data_sharding = NamedSharding(mesh, PartitionSpec(axes))
    params = _place_params(params, mesh, param_sharding)
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)

    process = jax.process_index()
    os.makedirs(out, exist_ok=True)
    if not resume and any(n.startswith("batch-") for n in os.listdir(out)):
        raise FileExistsError(f"{out} already holds batches; pass resume=True to continue that run")
    _clean_partial(out, process)

    def step(p, batch):
        kw = {"target": batch["target"]} if "target" in batch else {}
        relevance = explain(p, batch["x"], **kw)
        result = {name: jnp.asarray(m(relevance, batch)) for name, m in metrics.items()}
        if save_relevance:
            result["relevance"] = relevance if dtype is None else relevance.astype(dtype)
        return result

    step = jax.jit(step)
    bar = _Progress(progress and process == 0, total)
    t0, computed, skipped, examples, rows, meta = time.perf_counter(), 0, 0, 0, None, None
    pending = None  # (folder, n, rows, device results, batch): written while the next batch runs
    i = -1
    try:
        for i, item in enumerate(batches):
            folder = os.path.join(out, f"batch-{i:06d}-p{process:03d}")
            batch = _as_batch(item)
            n = batch["x"].shape[0]
            if meta is None:
                meta = _check_meta(out, batch, metrics, save_relevance, process)
                rows = -(-n // n_local_shards) * n_local_shards
            if n > rows:
                raise ValueError(f"batch {i} has {n} examples, more than the first batch's {rows}")
            if resume and os.path.isdir(folder):
                skipped += 1
                bar.update(i, n, skipped=True)
                continue
            padded = {k: _pad(v, rows) for k, v in batch.items()}
            placed = {k: jax.make_array_from_process_local_data(data_sharding, v) for k, v in padded.items()}
            results = step(params, placed)  # dispatched asynchronously
            if pending is not None:
                done, pending = pending, None
                _write(*done)
            pending = (folder, n, rows, results, batch)
            computed += 1
            examples += n
            bar.update(i, n, skipped=False)
    finally:  # also on an error or interrupt: keep the batch already computed
        if pending is not None:
            _write(*pending)
        bar.close()
    return DatasetRun(out, i + 1, computed, skipped, examples, time.perf_counter() - t0)


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


def _describe(batch: dict, metrics: dict, save_relevance: bool) -> dict:
    x = batch["x"]
    return {
        "format": _FORMAT,
        "x": {"shape": list(x.shape[1:]), "dtype": str(x.dtype)},
        "target": "target" in batch,
        "metrics": sorted(metrics),
        "relevance": save_relevance,
        "processes": jax.process_count(),
    }


def _check_meta(out: str, batch: dict, metrics: dict, save_relevance: bool, process: int) -> dict:
    meta = _describe(batch, metrics, save_relevance)
    path = os.path.join(out, _META)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != meta:
            raise ValueError(
                f"{out} holds a different run ({old}); this one is {meta}. Use another directory."
            )
    elif process == 0:
        _write_atomic_json(path, meta)
    return meta


def _clean_partial(out: str, process: int) -> None:
    """Remove batches a crash left half-written (never committed) by this process."""
    suffix = f"-p{process:03d}"
    for name in os.listdir(out):
        if name.startswith(".tmp-batch-") and name.split(".")[1].endswith(suffix):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _write(folder: str, n: int, rows: int, results: dict, batch: dict) -> None:
    """Write one batch into a temporary folder, then commit it with a rename."""
    parent, name = os.path.split(folder)
    tmp = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    if "target" in batch:
        np.save(os.path.join(tmp, "target.npy"), batch["target"])
    for key, value in results.items():
        a = _local_rows(value)
        if a.ndim == 0 or a.shape[0] != rows:
            raise ValueError(
                f"metric {key!r} returned shape {a.shape}; metrics must return one value per example "
                f"(leading axis of {rows})"
            )
        np.save(os.path.join(tmp, f"{key}.npy"), a[:n])
    os.replace(tmp, folder)


def load(out: PathLike, fields: Optional[Iterable[str]] = None, process: Optional[int] = None) -> dict:
    """Read what :func:`explain_dataset` wrote, concatenated over batches.

    Parameters
    ----------
    out:
        The output directory.
    fields:
        Which arrays (``"relevance"``, ``"target"``, metric names); default all.
    process:
        Only the batches of this process; default all processes, ordered by batch
        then process (the global order of a multi-host run).

    Returns
    -------
    dict
        ``{field: numpy array}`` with the examples along the leading axis.
    """
    out = os.fspath(out)
    folders = sorted(
        n for n in os.listdir(out)
        if n.startswith("batch-") and (process is None or n.endswith(f"-p{process:03d}"))
    )
    if not folders:
        raise FileNotFoundError(f"no batches in {out}")
    names = fields or sorted(f[:-4] for f in os.listdir(os.path.join(out, folders[0])) if f.endswith(".npy"))
    result = {}
    for field in names:
        parts = []
        for folder in folders:
            path = os.path.join(out, folder, f"{field}.npy")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing")
            parts.append(np.load(path))
        result[field] = np.concatenate(parts)
    return result
