"""explain_dataset: streamed, sharded, resumable explanations written to disk."""

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
import nets
from jaxlrp import composites, dataset
from jaxlrp.dataset import _read, _run, _store  # private helpers checked directly
from test_networks import RESNET

HERE = pathlib.Path(__file__).parent


def _setup(n=23):
    rng = np.random.default_rng(0)
    fn, params = nets.build(nets.random_layers(rng, RESNET, (6, 6, 3)))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = rng.normal(size=(n, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    explain = jaxlrp.lrp(fn, composites.EpsilonGammaBox(-3.0, 3.0))
    return explain, params, x, y


def _batches(x, y, size=8):
    return [{"x": x[i : i + size], "target": y[i : i + size], "mask": x[i : i + size] > 0} for i in range(0, len(x), size)]


def _mass(R, b):
    return jnp.sum(jnp.where(b["mask"], R, 0), axis=(1, 2, 3))


def _files(path):
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(pathlib.Path(path).rglob("*")) if p.is_file()
    }


def test_results_equal_one_jitted_call_and_last_batch_is_padded(tmp_path):
    explain, params, x, y = _setup()
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, metrics={"mass": _mass}, progress=False)
    assert (run.batches, run.computed, run.skipped, run.examples) == (3, 3, 0, 23)
    got = dataset.load(tmp_path)
    assert sorted(got) == ["mass", "relevance", "target"]
    ref = np.asarray(jax.jit(explain)(params, x, target=y))
    np.testing.assert_allclose(got["relevance"], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(got["target"], y)
    np.testing.assert_allclose(got["mass"], np.where(x > 0, ref, 0).sum(axis=(1, 2, 3)), rtol=1e-4, atol=1e-5)
    assert got["relevance"].dtype == np.float32


def test_arrays_tuples_dtype_and_fields(tmp_path):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, [x[:8], x[8:]], tmp_path / "a", progress=False, dtype=np.float16)
    a = dataset.load(tmp_path / "a")
    assert sorted(a) == ["relevance"] and a["relevance"].dtype == np.float16
    ref = np.asarray(jax.jit(explain)(params, x))  # target None: argmax
    np.testing.assert_allclose(a["relevance"], ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    jaxlrp.explain_dataset(explain, params, [(x[:8], y[:8]), (x[8:], y[8:])], tmp_path / "b", progress=False)
    b = dataset.load(tmp_path / "b", fields=["target"])
    assert list(b) == ["target"]
    np.testing.assert_array_equal(b["target"], y)


class _Crash(Exception):
    pass


def _crashing(items, after):
    for i, item in enumerate(items):
        if i == after:
            raise _Crash
        yield item


def test_resume_after_interruption_writes_the_same_files(tmp_path):
    explain, params, x, y = _setup(40)
    batches = _batches(x, y)
    full, part = tmp_path / "full", tmp_path / "part"
    jaxlrp.explain_dataset(explain, params, batches, full, metrics={"mass": _mass}, progress=False)
    with pytest.raises(_Crash):
        jaxlrp.explain_dataset(explain, params, _crashing(batches, 3), part, metrics={"mass": _mass}, progress=False)
    assert sorted(n for n in os.listdir(part) if n.startswith("batch-")) == [f"batch-{i:06d}-p000" for i in range(3)]
    # a batch caught half-written by the crash is discarded and recomputed
    os.makedirs(part / f".tmp-batch-000003-p000.{os.getpid() + 1}")
    (part / f".tmp-batch-000003-p000.{os.getpid() + 1}" / "relevance.npy").write_bytes(b"torn")
    run = jaxlrp.explain_dataset(explain, params, batches, part, metrics={"mass": _mass}, progress=False)
    assert (run.computed, run.skipped, run.examples) == (2, 3, 16)
    assert _files(part) == _files(full)


def test_refuses_a_different_run_in_the_same_directory(tmp_path):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different run"):
        jaxlrp.explain_dataset(explain, params, [x[:8, :5]], tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, resume=False, progress=False)


def test_bad_batches_and_metrics_are_named(tmp_path):
    explain, params, x, y = _setup(16)
    with pytest.raises(ValueError, match="'x' entry"):
        jaxlrp.explain_dataset(explain, params, [{"inputs": x}], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="'target' has shape"):
        jaxlrp.explain_dataset(explain, params, [(x, y[:3])], tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="one value per example"):
        jaxlrp.explain_dataset(
            explain, params, [x], tmp_path / "c", metrics={"total": lambda R, b: R.sum()}, progress=False
        )
    with pytest.raises(ValueError, match="more than the first batch"):
        jaxlrp.explain_dataset(explain, params, [x[:4], x], tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="reserved"):
        jaxlrp.explain_dataset(explain, params, [x], tmp_path / "e", metrics={"relevance": _mass}, progress=False)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path / "a")  # stderr is not a terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path / "b", progress=False)
    assert sys.stderr.getvalue() == ""
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path / "c")
    err = sys.stderr.getvalue()
    assert "2/2" in err and "examples/s" in err, err


# ------------------------------------------------------------------- issue 13: targets


def test_out_of_range_targets_stop_before_dispatch(tmp_path):
    explain, params, x, y = _setup(16)  # 4 classes
    for bad, row in ((7, 2), (-1, 5)):
        t = y.copy()
        t[8 + row] = bad
        out = tmp_path / str(bad)
        with pytest.raises(ValueError, match=rf"batch 1 has targets outside \[0, 4\): row {row} \(example {8 + row}\)"):
            jaxlrp.explain_dataset(explain, params, _batches(x, t), out, progress=False)
        assert sorted(n for n in os.listdir(out) if n.startswith("batch-")) == ["batch-000000-p000"]
    # an explainer jaxlrp cannot see into: negative targets are still refused
    wrapped = lambda p, x, target=None: explain(p, x, target=target)  # noqa: E731
    with pytest.raises(ValueError, match="outside the non-negative integers"):
        jaxlrp.explain_dataset(wrapped, params, [(x[:8], -y[:8] - 1)], tmp_path / "w", progress=False)


# ------------------------------------------------------------ issue 13: run identity


def test_resume_with_changed_settings_is_refused_and_says_what_differs(tmp_path):
    explain, params, x, y = _setup(48)
    out = tmp_path / "run"
    with pytest.raises(_Crash):  # 5 batches of 4 committed (the issue: 5 of 32, resumed with 64)
        jaxlrp.explain_dataset(explain, params, _crashing(_batches(x, y, 4), 5), out, progress=False)
    before = _files(out)
    other_params = jax.tree_util.tree_map(lambda a: a * 1.01, params)
    gamma = jaxlrp.lrp(explain.fn, composites.EpsilonGammaBox(-3.0, 3.0, gamma=0.5))
    cases = [
        (dict(batches=_batches(x, y, 8)), "batch_size: 4 on disk, 8 now"),
        (dict(batches=_batches(x, y, 4), explain=gamma), "explainer.composite"),
        (dict(batches=_batches(x, y, 4), params=other_params), "params.sha256"),
        (dict(batches=_batches(x, y, 4), dtype=np.float16), "fields.relevance.dtype: 'float32' on disk, 'float16' now"),
        (dict(batches=_batches(x, y.astype(np.int32), 4)), "fields.target.dtype"),
        (dict(batches=_batches(x, y, 4), metrics={"mass": _mass}), "metrics"),
    ]
    for delete_meta in (False, True):
        if delete_meta:
            os.remove(out / "meta.json")  # the manifests still know the run
        for change, message in cases:
            kw = dict(explain=explain, params=params, progress=False) | change
            with pytest.raises(ValueError, match=re.escape(message)):
                jaxlrp.explain_dataset(kw.pop("explain"), kw.pop("params"), kw.pop("batches"), out, **kw)
    assert {k: v for k, v in _files(out).items() if k != "meta.json"} == {k: v for k, v in before.items() if k != "meta.json"}
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y, 4), out, progress=False)  # the same settings
    assert (run.skipped, run.computed) == (5, 7) and (out / "meta.json").exists()
    np.testing.assert_array_equal(dataset.load(out)["target"], y)


def test_identity_is_stable_and_records_the_explainer(tmp_path):
    explain, params, x, y = _setup(8)
    jaxlrp.explain_dataset(explain, params, [(x, y)], tmp_path, progress=False)
    run = json.loads((tmp_path / "meta.json").read_text())["run"]
    assert run["explainer"]["composite"].startswith("EpsilonGammaBox([('first', ZBox(low=-3.0, high=3.0")
    assert run["batch_size"] == 8 and run["jaxlrp"] == jaxlrp.__version__
    assert run["fields"] == {"relevance": {"shape": [6, 6, 3], "dtype": "float32"}, "target": {"shape": [], "dtype": "int64"}}
    again = _store.run_identity(explain, params, {"x": x, "target": y}, {}, {})
    assert again["explainer"] == run["explainer"] and again["params"] == run["params"]
    # a lambda matcher and a large array are described without addresses or elisions
    c1 = composites.Composite([(lambda l: True, jaxlrp.rules.ZBox(np.zeros(2000), np.ones(2000)))])
    c2 = composites.Composite([(lambda l: True, jaxlrp.rules.ZBox(np.zeros(2000), np.r_[np.ones(1999), 2.0]))])
    assert "0x" not in _store._text(c1) and _store._text(c1) != _store._text(c2)


def test_shorter_data_set_on_resume_is_refused(tmp_path):
    explain, params, x, y = _setup(23)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)  # 8 + 8 + 7
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="longer run: batch-000002-p000"):
        jaxlrp.explain_dataset(explain, params, _batches(x[:16], y[:16]), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"holds examples \[16, 23\].*now gives examples \[16, 20\]"):
        jaxlrp.explain_dataset(explain, params, _batches(x[:20], y[:20]), tmp_path, progress=False)
    assert _files(tmp_path) == before
    assert len(dataset.load(tmp_path)["relevance"]) == 23


def test_a_batch_another_process_lacks_is_computed_here_too_and_kept(tmp_path, monkeypatch):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    before = _files(tmp_path)
    votes = iter([True, False])  # batch 1: this process has it, another one does not
    monkeypatch.setattr(_run, "_share", lambda mine: [mine, {**mine, "have": mine["have"] and next(votes)} if "have" in mine else mine])
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    assert (run.skipped, run.computed, run.repaired) == (1, 1, 0)
    assert _files(tmp_path) == before  # its own copy kept, not rewritten


# ------------------------------------------------------------- issue 13: damaged files


def test_damaged_batches_are_named_by_load_and_recomputed_on_resume(tmp_path):
    explain, params, x, y = _setup(32)
    kw = dict(metrics={"mass": _mass}, progress=False)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, **kw)
    good = _files(tmp_path)
    b = [tmp_path / f"batch-{i:06d}-p000" for i in range(4)]
    rel = np.load(b[0] / "relevance.npy")
    damage = [
        (b[0] / "relevance.npy", lambda p: np.save(p, rel[:5]), "shape (5, 6, 6, 3)"),  # replaced: fewer rows
        (b[1] / "target.npy", lambda p: p.write_bytes(b""), "empty (0 bytes)"),  # emptied
        (b[2] / "mass.npy", lambda p: p.write_bytes(p.read_bytes()[:-8]), "152 bytes instead of 160 (truncated"),  # truncated
        (b[3] / "relevance.npy", lambda p: np.save(p, rel[::-1]), "checksum mismatch"),  # same shape, other rows
    ]
    for path, spoil, message in reversed(damage):  # each spoiled file comes before the others
        spoil(path)
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
            dataset.load(tmp_path)
    with pytest.warns(RuntimeWarning, match="damaged") as caught:
        run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, **kw)
    assert (run.computed, run.repaired, run.skipped) == (4, 4, 0) and len(caught) == 4
    assert _files(tmp_path) == good
    (b[2] / "manifest.json").unlink()
    with pytest.raises(ValueError, match=re.escape(str(b[2] / "manifest.json"))):
        dataset.load(tmp_path)
    with pytest.warns(RuntimeWarning, match="manifest.json is missing"):
        run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, **kw)
    assert (run.repaired, run.skipped) == (1, 3) and _files(tmp_path) == good


def test_load_refuses_stray_batches_bad_meta_and_unknown_fields(tmp_path):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"unknown fields \['relevanse'\].*\['relevance', 'target'\]"):
        dataset.load(tmp_path, fields=["relevanse"])
    assert list(dataset.load(tmp_path, fields="target")) == ["target"]
    shutil.copytree(tmp_path / "batch-000001-p000", tmp_path / "batch-000005-p000")
    with pytest.raises(ValueError, match="outside the run: batch-000005-p000"):
        dataset.load(tmp_path)
    shutil.rmtree(tmp_path / "batch-000005-p000")
    (tmp_path / "batch-extra").mkdir()
    with pytest.raises(ValueError, match="batch-extra is not a batch"):
        dataset.load(tmp_path)
    (tmp_path / "batch-extra").rmdir()
    (tmp_path / "meta.json").write_text('{"run": {"fields": ')
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "meta.json")) + " is unreadable or malformed"):
        dataset.load(tmp_path)
    with pytest.raises(ValueError, match="meta.json is unreadable or malformed"):
        jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)


def test_load_refuses_a_done_file_without_a_batch_count(tmp_path):
    """``done-p000.json`` without its count was ``range(None)`` (TypeError); now named, and
    the fix it gives (remove it, resume) restores the run."""
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    done = tmp_path / "done-p000.json"
    for bad in ("{}", '{"batches": "2"}', '{"batches": -1}', '{"batches": true}'):
        done.write_text(bad)
        with pytest.raises(ValueError, match="done-p000.json is malformed: 'batches' is .*remove it and resume"):
            dataset.load(tmp_path)
    done.unlink()
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, resume=True, progress=False)
    assert (run.computed, run.skipped) == (0, 2)
    np.testing.assert_array_equal(dataset.load(tmp_path)["target"], y)


# ------------------------------------------------------------------ issue 13: the lock


def test_a_second_writer_gets_a_clear_error(tmp_path):
    explain, params, x, y = _setup(16)
    first_written, release = threading.Event(), threading.Event()

    def slow():  # the first writer holds the directory while it waits here
        yield x[:8], y[:8]
        first_written.set()
        release.wait(60)
        yield x[8:], y[8:]

    errors = []
    t = threading.Thread(target=lambda: _catch(errors, jaxlrp.explain_dataset, explain, params, slow(), tmp_path, progress=False))
    t.start()
    assert first_written.wait(120)
    try:
        with pytest.raises(jaxlrp.DatasetLockedError, match="being written by another explain_dataset"):
            jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    finally:
        release.set()
        t.join(120)
    assert not errors, errors
    assert isinstance(jaxlrp.DatasetLockedError("x"), RuntimeError)
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)  # lock released
    assert run.skipped == 2


def _catch(errors, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except Exception as e:  # reported by the test
        errors.append(e)


# ------------------------------------------------------------ issue 13: lazy reading


def test_load_is_lazy_and_indexes_like_the_concatenation(tmp_path):
    explain, params, x, y = _setup(23)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)
    R = dataset.load(tmp_path)["relevance"]
    assert isinstance(R, dataset.LazyRows) and all(isinstance(p, np.memmap) for p in R.parts)
    assert (R.shape, R.dtype, len(R.parts)) == ((23, 6, 6, 3), np.float32, 3)
    full = np.asarray(R)
    rng = np.random.default_rng(1)
    mask = rng.random(23) > 0.5
    for key in (0, -1, 9, slice(None), slice(5, 20), slice(7, 9), slice(20, 5), slice(None, None, -3),
                [3, 22, 3, 8], np.array([[1, 2], [16, 0]]), mask, (slice(4, 17), 2, slice(None), 0), (np.array([5, 1]), 0)):
        np.testing.assert_array_equal(R[key], full[key], err_msg=str(key))
    np.testing.assert_array_equal(R - R, 0 * full)
    with pytest.raises(IndexError):
        R[23]
    with pytest.raises(IndexError):
        R[[0, 23]]
    # many files: mapped on access, a few kept open (an open map holds a file descriptor)
    arrays = [np.full((i % 3 + 1, 2), i, np.int16) for i in range(40)]
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"part{i}.npy", a)
    many = dataset.LazyRows([tmp_path / f"part{i}.npy" for i in range(40)])
    np.testing.assert_array_equal(many[::-1], np.concatenate(arrays)[::-1])
    np.testing.assert_array_equal(np.asarray(many), np.concatenate(arrays))
    assert len(many.parts._open) <= 16
    with pytest.raises(ValueError, match="part 1 has shape"):
        dataset.LazyRows([np.zeros((2, 3)), np.zeros((2, 4))])


SHARDED = textwrap.dedent(
    """
    import os, sys, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import jaxlrp
    from test_dataset import _setup, _batches, _mass, _crashing, _Crash, _files
    assert jax.device_count() == 8, jax.devices()
    explain, params, x, y = _setup(52)  # 7 batches of 8 (padded to 8 rows, one per device) and 4
    batches = _batches(x, y)
    out = tempfile.mkdtemp()
    m = dict(metrics={{"mass": _mass}}, progress=False)
    one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    jaxlrp.explain_dataset(explain, params, batches, out + "/one", mesh=one, **m)
    jaxlrp.explain_dataset(explain, params, batches, out + "/eight", **m)
    # weights split over a model axis too: dense and conv kernels sharded on their last axis
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    spec = jax.tree_util.tree_map(lambda a: P(*([None] * (a.ndim - 1) + ["model"])) if a.ndim > 1 else P(), params)
    jaxlrp.explain_dataset(explain, params, batches, out + "/split", mesh=mesh, param_sharding=spec, **m)
    try:
        jaxlrp.explain_dataset(explain, params, _crashing(batches, 4), out + "/resumed", **m)
    except _Crash:
        pass
    run = jaxlrp.explain_dataset(explain, params, batches, out + "/resumed", **m)
    assert (run.computed, run.skipped) == (3, 4), run
    a = jaxlrp.dataset.load(out + "/one")
    scale = np.abs(a["relevance"]).max()
    for name in ("eight", "split", "resumed"):
        b = jaxlrp.dataset.load(out + "/" + name)
        err = float(np.abs(a["relevance"] - b["relevance"]).max() / scale)
        print(name, "max relative difference", err)
        assert err < 1e-5, (name, err)
        np.testing.assert_allclose(a["mass"], b["mass"], rtol=1e-4, atol=1e-5 * scale)
    assert _files(out + "/resumed") == _files(out + "/eight")
    print("ok")
    """
)


def test_sharded_over_8_devices_equals_one_device_and_resumes():
    code = SHARDED.format(tests=str(HERE))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok"), proc.stdout


# ------------------------------------------------ issue 25: dtypes, empty batches, Equinox


def test_bfloat16_and_other_ml_dtypes_are_stored_as_bits_and_read_back(tmp_path):
    explain, params, x, y = _setup(16)
    to8 = lambda R, b: jnp.sum(R, axis=(1, 2, 3)).astype(jnp.float8_e4m3fn)  # noqa: E731
    kw = dict(dtype=jnp.bfloat16, metrics={"total8": to8}, progress=False)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, **kw)
    got = dataset.load(tmp_path)  # verify=True: every checksum
    assert got["relevance"].dtype == jnp.bfloat16 and got["total8"].dtype == jnp.float8_e4m3fn
    ref = np.asarray(jax.jit(explain)(params, x, target=y))
    np.testing.assert_array_equal(np.asarray(got["relevance"]), ref.astype(jnp.bfloat16))
    np.testing.assert_array_equal(got["relevance"][3:9], ref[3:9].astype(jnp.bfloat16))  # lazy rows, viewed
    manifest = json.loads((tmp_path / "batch-000000-p000" / "manifest.json").read_text())
    assert manifest["files"]["relevance"]["dtype"] == "bfloat16" and manifest["files"]["relevance"]["stored"] == "uint16"
    raw = np.load(tmp_path / "batch-000000-p000" / "relevance.npy")  # readable without jaxlrp: the bits
    assert raw.dtype == np.uint16 and raw.view(jnp.bfloat16).tobytes() == ref[:8].astype(jnp.bfloat16).tobytes()
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, **kw)  # no "repair" on resume
    assert (run.skipped, run.computed, run.repaired) == (2, 0, 0)
    for dt in (jnp.float8_e5m2, jnp.int4, jnp.float4_e2m1fn):  # any ml_dtypes type, through the writer
        a = np.arange(6).reshape(3, 2).astype(dt)
        entry = _store._save(str(tmp_path / "a.npy"), a)
        assert _store.check_file(str(tmp_path / "a.npy"), entry, 3, True) is None
        back = dataset.LazyRows([_read._checked(str(tmp_path / "a.npy"), entry, 3, True)])
        assert back.dtype == dt and np.asarray(back).tobytes() == a.tobytes()


def test_float16_storage_overflow_is_refused_naming_the_batch(tmp_path):
    scale = lambda p, x: x * p["s"]  # noqa: E731  (an explainer: relevance = x * s)
    params = {"s": np.float32(2.0)}
    batches = [np.ones((4, 3), np.float32), np.full((4, 3), 1e5, np.float32)]
    with pytest.raises(OverflowError, match=r"batch 1: storing relevance as float16 turned 12 finite values into inf \(rows \[0, 1, 2, 3\]"):
        jaxlrp.explain_dataset(scale, params, batches, tmp_path, dtype=jnp.float16, progress=False)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("batch-")) == ["batch-000000-p000"]
    jaxlrp.explain_dataset(scale, params, batches, tmp_path / "b", dtype=jnp.bfloat16, progress=False)  # the fix
    np.testing.assert_allclose(np.asarray(dataset.load(tmp_path / "b")["relevance"], np.float32)[4:], 2e5, rtol=1e-2)


def test_empty_batches_are_refused_naming_the_batch(tmp_path):
    explain, params, x, y = _setup(8)
    for batches, index in (([x, x[:0]], 1), ([(x[:0], y[:0])], 0)):
        with pytest.raises(ValueError, match=rf"batch {index} is empty \('x' has shape \(0, 6, 6, 3\)\)"):
            jaxlrp.explain_dataset(explain, params, batches, tmp_path / str(index), progress=False)


def test_equinox_models_with_static_leaves(tmp_path):
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(5, 3, 6, 2, activation=jax.nn.relu, key=jax.random.PRNGKey(0))
    explain = jaxlrp.lrp(lambda m, x: jax.vmap(m)(x), composites.EpsilonPlus(), argnums=1)
    x = np.random.default_rng(0).normal(size=(12, 5))
    jaxlrp.explain_dataset(explain, model, [x[:8], x[8:]], tmp_path, progress=False)
    ref = np.asarray(eqx.filter_jit(explain)(model, x))
    np.testing.assert_allclose(dataset.load(tmp_path)["relevance"], ref, rtol=1e-6, atol=1e-9)
    run = jaxlrp.explain_dataset(explain, model, [x[:8], x[8:]], tmp_path, progress=False)
    assert run.skipped == 2
    other = eqx.nn.MLP(5, 3, 6, 2, activation=jax.nn.tanh, key=jax.random.PRNGKey(0))  # same arrays
    with pytest.raises(ValueError, match="params.sha256"):
        jaxlrp.explain_dataset(explain, other, [x[:8], x[8:]], tmp_path, progress=False)


# ------------------------------------------------ issue 28: the data of a resumed run


def test_resume_with_other_data_of_the_same_shape_is_refused(tmp_path):
    explain, params, x, y = _setup(24)
    with pytest.raises(_Crash):
        jaxlrp.explain_dataset(explain, params, _crashing(_batches(x, y), 2), tmp_path, progress=False)
    before = _files(tmp_path)
    other = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    for xs, ys, what in ((other, y, "'x'"), (x, (y + 1) % 3, "'target'"), (x[::-1], y[::-1], "'target', 'x'")):
        with pytest.raises(ValueError, match=rf"batch 0 on disk .* was computed from other data: its {what} differ"):
            jaxlrp.explain_dataset(explain, params, _batches(xs, ys), tmp_path, progress=False)
    assert _files(tmp_path) == before
    # with metrics, the fields they are handed count too
    out = tmp_path / "m"
    jaxlrp.explain_dataset(explain, params, _batches(x, y), out, metrics={"mass": _mass}, progress=False)
    changed = [{**b, "mask": ~b["mask"]} for b in _batches(x, y)]
    with pytest.raises(ValueError, match="its 'mask' differ"):
        jaxlrp.explain_dataset(explain, params, changed, out, metrics={"mass": _mass}, progress=False)
    run = jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path, progress=False)  # the same data
    assert (run.skipped, run.computed) == (2, 1)


def test_progress_bar_shows_in_jupyter_kernels_and_terminals(monkeypatch):
    """tqdm.auto: a widget in Jupyter (stderr is no terminal there), a text bar on a
    terminal, nothing in a log."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not _run._interactive()
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert _run._interactive()
    with _run._progress(False, 3) as bar:
        assert bar.disable
