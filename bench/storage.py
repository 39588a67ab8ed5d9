"""Storage for ``explain_dataset``: one ``.npy`` folder per batch against one chunked
zarr array per field (tensorstore), on the same data.

Writes ``--gb`` GB of float32 rows of shape ``--row`` in batches of ``--batch`` rows, the
way ``explain_dataset`` does (one batch at a time, from host memory), then reads it back:

* ``npy``: the library's writer (per batch a temporary folder, ``np.save``, a CRC-32
  of each file in ``manifest.json``, an atomic rename); read with
  ``jaxlrp.dataset.load`` (memory-mapped ``.npy`` files, lazy); ``load(verify=True)``
  timed apart;
* ``npy-nohash``: ``np.save`` and a rename only, the scheme before the manifests (what
  the checksum costs);
* ``zarr3``: one zarr v3 array through tensorstore, one chunk per batch, no
  compression, with a ``crc32c`` checksum codec (integrity on read);
* ``zarr3-zstd``: the same with ``zstd`` compression (random floats hardly compress:
  this measures the codec's cost, not its gain);
* ``zarr3-shard16``: one shard per batch holding chunks of 16 rows (``sharding_indexed``
  codec), so that reading a few rows does not decode a whole batch.

Reads: everything sequentially (batch by batch, summed so nothing is kept) and 512
random rows. Reads follow the writes, so they come mostly from the page cache (the
machine has no way to drop it here): compare the formats with each other, not with
the disk. The machine is shared with other jobs; figures are medians of ``--repeats``.

    python bench/storage.py --gb 2 --batch 256 --row 64 64 3 --repeats 3

writes ``bench/storage.md`` and ``bench/storage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import _timing  # noqa: E402  (bench/_timing.py, the scripts' shared timing)

NOTE = """\
Decision (issue 13): `explain_dataset` keeps one `.npy` folder per batch, now with a
manifest (row range, shapes, CRC-32 per file) inside the atomic commit, and `load`
memory-maps the files. The `.npy` folders write 1.5-3x faster and read 3-10x faster
sequentially here, and a few random rows cost a page each instead of a whole chunk
or shard; integrity comes from the manifests (zarr's crc32c covers chunks but not
which chunks were ever written: an unwritten chunk reads as the fill value, zeros);
multi-host writing stays one folder per process and batch with no shared metadata to
resize; the files need only numpy. zarr through tensorstore would suit a store read
by other tools chunk-wise; it could be an export, with tensorstore as an extra."""


def _batches(n_batches: int, batch: int, row: tuple):
    rng = np.random.default_rng(0)
    block = rng.standard_normal((batch, *row), dtype=np.float32)
    for i in range(n_batches):
        yield i, block + np.float32(i)  # a fresh array per batch, as a device fetch gives


def write_npy(out: str, n_batches: int, batch: int, row: tuple, checksum: bool) -> None:
    """With ``checksum``: the library's own writer (``jaxlrp.dataset._store.write_part``: npy files, a
    manifest with CRC-32, an atomic rename); without: ``np.save`` and a rename only."""
    import jaxlrp.dataset._store as ds

    identity = {"fields": {"relevance": {"shape": list(row), "dtype": "float32"}}, "processes": 1}
    if checksum:
        ds._write_atomic_json(os.path.join(out, ds._META), {"run": identity})
    for i, a in _batches(n_batches, batch, row):
        folder = os.path.join(out, f"batch-{i:06d}-p000")
        if checksum:
            ds._write(folder, (i * batch, (i + 1) * batch), batch, {"relevance": a}, {}, identity)
            continue
        tmp = os.path.join(out, f".tmp-batch-{i:06d}-p000")
        os.makedirs(tmp)
        np.save(os.path.join(tmp, "relevance.npy"), a)
        os.replace(tmp, folder)


def read_npy(out: str, rng, checksum: bool) -> tuple:
    """``jaxlrp.dataset.load`` (memory-mapped, lazy; structural checks, no checksums), or
    for the plain folders ``np.load(mmap_mode="r")`` per batch."""
    import jaxlrp.dataset as ds

    with _timing.stopwatch() as seq:
        if checksum:
            r = ds.load(out, verify=False)["relevance"]
        else:
            r = ds.LazyRows(np.load(os.path.join(out, d, "relevance.npy"), mmap_mode="r") for d in sorted(os.listdir(out)))
        total = 0.0
        for part in r.parts:
            total += float(np.asarray(part, dtype=np.float64).sum())
    with _timing.stopwatch() as rand:
        idx = np.sort(rng.choice(len(r), 512, replace=False))
        sample = r[idx]
    return seq.seconds, rand.seconds, sample.shape


def verify_npy(out: str) -> float:
    """``load(verify=True)``: every file's CRC-32 against its manifest."""
    import jaxlrp.dataset as ds

    return _timing.time_call(lambda: ds.load(out, verify=True))


def _zarr_spec(out: str, shape: tuple, batch: int, zstd: bool, inner: int = 0) -> dict:
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if zstd:
        codecs.append({"name": "zstd", "configuration": {"level": 1}})
    codecs.append({"name": "crc32c"})
    if inner:  # one shard per batch (one file, one write), read back in chunks of `inner` rows
        codecs = [{
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [inner, *shape[1:]],
                "codecs": codecs,
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            },
        }]
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": os.path.join(out, "relevance.zarr")},
        "metadata": {
            "shape": list(shape),
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [batch, *shape[1:]]}},
            "codecs": codecs,
        },
        "create": True,
        "delete_existing": True,
    }


def write_zarr(out: str, n_batches: int, batch: int, row: tuple, zstd: bool, inner: int = 0) -> None:
    import tensorstore as ts

    store = ts.open(_zarr_spec(out, (n_batches * batch, *row), batch, zstd, inner)).result()
    for i, a in _batches(n_batches, batch, row):
        store[i * batch : (i + 1) * batch].write(a).result()


def read_zarr(out: str, rng, batch: int) -> tuple:
    import tensorstore as ts

    with _timing.stopwatch() as seq:
        store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(out, "relevance.zarr")}}).result()
        total = 0.0
        for s in range(0, store.shape[0], batch):
            total += float(np.asarray(store[s : s + batch].read().result(), dtype=np.float64).sum())
    with _timing.stopwatch() as rand:
        idx = np.sort(rng.choice(store.shape[0], 512, replace=False))
        sample = store[idx].read().result()  # fancy index: reads the chunks that hold the rows
    return seq.seconds, rand.seconds, sample.shape


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--row", type=int, nargs="+", default=[64, 64, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--formats", nargs="+", default=["npy", "npy-nohash", "zarr3", "zarr3-zstd", "zarr3-shard16"])
    ap.add_argument("--out", default=str(HERE / "storage"))
    args = ap.parse_args(argv)
    import jaxlrp.dataset  # noqa: F401  (imports outside the timings)
    import tensorstore  # noqa: F401
    row = tuple(args.row)
    row_bytes = 4 * int(np.prod(row))
    n_batches = max(1, round(args.gb * 1e9 / (row_bytes * args.batch)))
    gb = n_batches * args.batch * row_bytes / 1e9
    scratch = args.dir or tempfile.mkdtemp(prefix="jaxlrp-storage-")
    times = {fmt: {"w": [], "s": [], "r": [], "v": []} for fmt in args.formats}
    for rep in range(args.repeats):  # formats interleaved, so that a busy spell hits all of them
        for fmt in args.formats:
            t = times[fmt]
            out = os.path.join(scratch, fmt)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            with _timing.stopwatch() as write:
                if fmt.startswith("npy"):
                    write_npy(out, n_batches, args.batch, row, checksum=fmt == "npy")
                else:
                    inner = int(fmt.split("shard")[1]) if "shard" in fmt else 0
                    write_zarr(out, n_batches, args.batch, row, zstd="zstd" in fmt, inner=inner)
            t["w"].append(write.seconds)
            rng = np.random.default_rng(rep)
            if fmt.startswith("npy"):
                seq, rand, _ = read_npy(out, rng, fmt == "npy")
            else:
                seq, rand, _ = read_zarr(out, rng, args.batch)
            t["s"].append(seq)
            t["r"].append(rand)
            if fmt == "npy":
                t["v"].append(verify_npy(out))
            shutil.rmtree(out)
            print(fmt, rep, {k: round(x[-1], 2) for k, x in t.items() if x}, flush=True)
    results = {}
    for fmt, t in times.items():
        results[fmt] = {
            "write_GBps": gb / _timing.median(t["w"]),
            "read_seq_GBps": gb / _timing.median(t["s"]),
            "read_512_random_rows_s": _timing.median(t["r"]),
            "verify_GBps": gb / _timing.median(t["v"]) if t["v"] else None,
            "seconds": t,
        }
    if not args.dir:
        shutil.rmtree(scratch, ignore_errors=True)
    setup = {
        "GB": gb, "batches": n_batches, "batch_rows": args.batch, "row": list(row), "repeats": args.repeats,
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
    }
    pathlib.Path(args.out + ".json").write_text(json.dumps({"setup": setup, "results": results}, indent=1))
    lines = [
        f"# Storage: {gb:.2f} GB float32, {n_batches} batches of {args.batch} rows of {row}",
        "",
        f"`python bench/storage.py --gb {args.gb} --batch {args.batch} --row {' '.join(map(str, row))} "
        f"--repeats {args.repeats}`; medians; shared, noisy machine ({os.cpu_count()} CPUs); reads come "
        "from the page cache as far as it holds the data, and writes beyond its dirty limit go at disk speed.",
        "",
        "| format | write GB/s | sequential read GB/s | 512 random rows (s) | verify checksums GB/s |",
        "|---|---|---|---|---|",
    ]
    for fmt, x in results.items():
        ver = f"{x['verify_GBps']:.2f}" if x["verify_GBps"] else "-"
        lines.append(
            f"| {fmt} | {x['write_GBps']:.2f} | {x['read_seq_GBps']:.2f} | {x['read_512_random_rows_s']:.3f} | {ver} |"
        )
    lines += ["", NOTE]
    pathlib.Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
