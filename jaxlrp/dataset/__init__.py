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

# The code lives in private files: _store (the run's identity, the batch folders, their
# integrity checks and the writer's lock), _run (explaining a data set, over several
# processes) and _read (load and LazyRows); this module is their one public place.

from ._read import LazyRows, load
from ._run import Batch as Batch  # the argument types, as before the split
from ._run import DatasetRun, explain_dataset
from ._run import Metric as Metric
from ._store import Array as Array
from ._store import DatasetLockedError
from ._store import PathLike as PathLike
from ._store import PyTree as PyTree

__all__ = ["explain_dataset", "load", "DatasetRun", "DatasetLockedError", "LazyRows"]

# The public classes keep the module they had before the split: the same repr and tracebacks
# (jaxlrp.dataset.DatasetLockedError), pickles of DatasetRun that still load, and one name
# per class in the documentation (jaxlrp.DatasetLockedError is documented as an alias of it).
for _cls in (DatasetRun, DatasetLockedError, LazyRows):
    _cls.__module__ = __name__
del _cls
