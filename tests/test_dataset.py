"""explain_dataset: streamed, sharded, resumable explanations written to disk."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlrp
import nets
from jaxlrp import composites, dataset
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


def test_progress_goes_to_stderr(tmp_path, capsys):
    explain, params, x, y = _setup(16)
    jaxlrp.explain_dataset(explain, params, _batches(x, y), tmp_path)
    err = capsys.readouterr().err
    assert "batch 2/2" in err and "examples/s" in err


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
