"""Explaining a data set: batches read from the iterator, placed on the mesh,
explained by one jitted step and written batch by batch; with several processes,
the agreements that keep them in step."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Sized
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike, DTypeLike

from ._store import (
    NONFINITE,
    Array,
    PathLike,
    PyTree,
    batch_folders,
    check_meta,
    clean_partial,
    dtype_of,
    explainer_config,
    finish_store,
    run_identity,
    stored_inputs,
    locked,
    on_disk,
    refuse_other_run,
    stored_identity,
    write_part,
)

#: One batch: ``x``, ``(x, target)`` or a mapping with ``"x"``, optional ``"target"`` and
#: further per-example arrays.
Batch = Union[ArrayLike, tuple[ArrayLike, ArrayLike], Mapping[str, ArrayLike]]
Metric = Callable[[Array, Mapping[str, Array]], Array]


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
    fn = explainer_config(explain).get("fn")
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
    from .._core.trace import is_array

    leaves, treedef = jax.tree_util.tree_flatten(params)
    where = [j for j, leaf in enumerate(leaves) if is_array(leaf)]

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
        if name in ("relevance", "target", "x", NONFINITE) or not name.isidentifier():
            raise ValueError(f"metric name {name!r} is reserved or not an identifier")
    mesh, data_sharding, n_local_shards = _data_mesh(mesh, data_axis)
    arrays, rebuild = _split(params)
    placed_arrays = _place_params(params, arrays, mesh, param_sharding)
    if total is None and isinstance(batches, Sized):
        total = len(batches)
    process = jax.process_index()
    os.makedirs(out, exist_ok=True)
    with contextlib.ExitStack() as held:
        failure = None
        try:  # a process that cannot start (locked, not resuming) stops the others too
            held.enter_context(locked(out, process))
            if not resume and batch_folders(out):
                raise FileExistsError(f"{out} already holds batches; pass resume=True to continue that run")
            clean_partial(out, process)
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


def _step_fn(explain: Callable, rebuild: Callable, metrics: dict, save_relevance: bool, dtype) -> Callable:
    def step(arrays, batch):
        kw = {"target": batch["target"]} if "target" in batch else {}
        relevance = explain(rebuild(arrays), batch["x"], **kw)
        result = {name: jnp.asarray(m(relevance, batch)) for name, m in metrics.items()}
        if save_relevance:
            result["relevance"] = relevance if dtype is None else relevance.astype(dtype)
            if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
                lost = jnp.isfinite(relevance) & ~jnp.isfinite(result["relevance"])
                result[NONFINITE] = jnp.sum(lost.reshape(lost.shape[0], -1), axis=1)
        return result

    return step


def _start(ctx: _Context, batch: dict, placed: dict, size: int) -> tuple:
    """The run's identity and the number of classes, from the first batch (``size``: the
    largest number of examples of the processes' first batches)."""
    stored = stored_identity(ctx.out)
    try:
        fields = dict(jax.eval_shape(ctx.step, ctx.arrays, placed))  # = ctx.step.eval_shape (a jitted step)
    except Exception:  # a batch the model cannot take: if it is not the run on disk, say that first
        if stored is not None:
            cheap = run_identity(ctx.explain, ctx.fingerprint_params, batch, {}, ctx.metrics, size)
            refuse_other_run(ctx.out, {**stored, "fields": {}}, cheap)
        raise
    fields.pop(NONFINITE, None)
    rows = placed["x"].shape[0] // jax.process_count()
    for name in ctx.metrics:
        if fields[name].ndim == 0 or fields[name].shape[0] != placed["x"].shape[0]:
            raise ValueError(
                f"metric {name!r} returned shape {fields[name].shape}; metrics must return one value per "
                f"example (leading axis of {rows})"
            )
    if "target" in batch:
        fields["target"] = jax.ShapeDtypeStruct(batch["target"].shape, batch["target"].dtype)
    identity = run_identity(ctx.explain, ctx.fingerprint_params, batch, fields, ctx.metrics, size)
    check_meta(ctx.out, stored, identity, ctx.process)
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
    return {k: np.zeros(shape, dtype_of(d)) for k, (shape, d) in spec.items()}


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
        self.pending: Optional[tuple] = None  # write_part arguments of the batch in flight
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
        inputs, folder = stored_inputs(fed), self._folder(index)
        existed = os.path.isdir(folder)
        return placed, on_disk(folder, self.identity, index, span, inputs), inputs, existed

    def _folder(self, index: int) -> str:
        return os.path.join(self.ctx.out, f"batch-{index:06d}-p{self.ctx.process:03d}")

    def _flush(self) -> None:
        if self.pending is not None:
            done, self.pending = self.pending, None
            self._attempt(write_part, *done)

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
                    if self.last is None:  # this process's batches were all on disk: feed its last again
                        self.last = _place(self.ctx, self._latest(), self.rows)
                    self.ctx.step(self.ctx.arrays, self.last)
                    self._flush()
                elif inputs is None:  # a batch is prepared unless it failed, and _agree raised that
                    raise RuntimeError(f"jaxlrp.dataset: batch {index} was not prepared (a bug)")
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
                    write_part(*self.pending)
            raise
        finish_store(self.ctx.out, self.ctx.process, self.count, self.start)
        elapsed = time.perf_counter() - self.t0
        return DatasetRun(
            self.ctx.out, self.count, self.computed, self.skipped, self.examples, elapsed, self.repaired
        )

    def _latest(self) -> dict:
        """The last batch of this process; every process has one once ``last`` is unset
        (the first step places zeros as ``last`` for a process without a batch)."""
        if self.latest is None:
            raise RuntimeError("jaxlrp.dataset: a masked share before any batch or placed zeros (a bug)")
        return self.latest

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
    from .._core.trace import is_array

    is_spec = lambda s: isinstance(s, (PartitionSpec, jax.sharding.Sharding))  # noqa: E731
    # jaxlib ships no stubs for PyTreeDef (its documented flatten_up_to is unknown to mypy)
    specs = jax.tree_util.tree_structure(params).flatten_up_to(spec)  # type: ignore[attr-defined]
    leaves = jax.tree_util.tree_leaves(params)
    chosen = [s for leaf, s in zip(leaves, specs) if is_array(leaf)]
    bad = [s for s in chosen if not is_spec(s)]
    if bad:
        raise ValueError(f"param_sharding holds {bad[0]!r} for an array of the parameters; give a PartitionSpec")
    return [jax.device_put(a, sharding(s)) for a, s in zip(arrays, chosen)]
