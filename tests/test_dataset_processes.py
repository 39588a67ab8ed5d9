"""explain_dataset under ``jax.distributed`` with 2 and 3 processes on this machine
(localhost coordinator, CPU collectives): unequal shares, a share with no batch at all,
a kill and resume, data changed under a resume, and an error in one process that every
process reports. Each process is a subprocess running this file (``python
test_dataset_processes.py ...``, the recipe of docs/at_scale.md), with a timeout, so a
regression fails instead of hanging.

The rows every process wrote are compared byte for byte with a single-process run of
the same batches.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT = 240  # seconds for one multi-process job (a few seconds when it works)


# ------------------------------------------------------------------------- the workers


def _problem():
    """A tiny ReLU network, its explainer and 9 batches (8 of 4 examples, the last of 3)."""
    import jax
    import jax.numpy as jnp

    import jaxlrp
    from jaxlrp import composites

    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(5, 8)).astype(np.float32),
        "b1": rng.normal(size=8).astype(np.float32),
        "w2": rng.normal(size=(8, 3)).astype(np.float32),
        "b2": rng.normal(size=3).astype(np.float32),
    }

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    explain = jaxlrp.lrp(fn, composites.EpsilonPlus(epsilon=1e-3))
    x = rng.normal(size=(35, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=35)
    batches = [{"x": x[k : k + 4], "target": y[k : k + 4], "mask": x[k : k + 4] > 0} for k in range(0, 35, 4)]
    metrics = {"mass": lambda R, b: jnp.sum(jnp.where(b["mask"], R, 0), axis=1)}
    return explain, params, batches, metrics


def _share(batches: list, scheme: str, n: int, i: int) -> list:
    """This process's batches: ``modulo`` (batch k to process k % n, the docs' recipe) or
    ``front`` (the first 3 batches to process 0, the last one, of 3 examples, to process 1,
    none to the others)."""
    if scheme == "modulo":
        return [b for k, b in enumerate(batches) if k % n == i]
    return {0: batches[:3], 1: batches[8:]}.get(i, [])


def _worker(argv: list) -> None:
    """One process: ``out scheme phase [phase...]``; the coordinator, number of processes
    and process index come from the environment, as in the docs' localhost check."""
    import jax

    jax.config.update("jax_enable_x64", True)  # as the test session (int64 targets)
    jax.distributed.initialize(
        os.environ["COORDINATOR"], int(os.environ["NUM_PROCESSES"]), int(os.environ["PROCESS_ID"]),
        initialization_timeout=120,
    )
    import jaxlrp

    out, scheme, phases = argv[0], argv[1], argv[2:]
    n, i = jax.process_count(), jax.process_index()
    explain, params, batches, metrics = _problem()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    for phase in phases:
        mine = _share(batches, scheme, n, i)
        if phase == "kill" and i == n - 1:  # the last process dies on reading its third batch
            mine = _dying(mine, 2)
        if phase == "changed" and i == 1:  # other data of the same shapes in process 1's second batch
            mine[1] = {**mine[1], "x": mine[1]["x"][::-1]}
        if phase == "bad-target" and i == 1:
            mine[0] = {**mine[0], "target": mine[0]["target"] + 7}
        try:
            run = jaxlrp.explain_dataset(explain, params, mine, out, mesh=mesh, metrics=metrics, progress=False)
            print("RESULT", phase, json.dumps(run._asdict()), flush=True)
        except Exception as e:
            print("ERROR", phase, type(e).__name__, str(e).replace("\n", " "), flush=True)


def _dying(items: list, at: int):
    for k, item in enumerate(items):
        if k == at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item


# ------------------------------------------------------------------------------ harness


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(n: int, out: pathlib.Path, scheme: str, *phases: str, kill_rest_when_one_dies: bool = False) -> list:
    """Run ``n`` worker processes; their outputs (stdout + stderr) and return codes."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        JAX_PLATFORMS="cpu",  # CPU collectives, also on a machine with accelerators
        # one CPU device per process (a forced device count would give each several)
        XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f),
        COORDINATOR=f"localhost:{_free_port()}",
        NUM_PROCESSES=str(n),
        PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, str(HERE / "test_dataset_processes.py"), str(out), scheme, *phases]
    procs = [subprocess.Popen(cmd, env={**env, "PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(n)]
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if kill_rest_when_one_dies and any(p.poll() == -signal.SIGKILL for p in procs):
                for p in procs:  # the job is killed, as a scheduler does when one task dies
                    if p.poll() is None:
                        p.send_signal(signal.SIGKILL)
            time.sleep(0.1)
        hung = [i for i, p in enumerate(procs) if p.poll() is None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    logs = [p.communicate(timeout=60)[0] for p in procs]
    assert not hung, f"processes {hung} still running after {TIMEOUT} s:\n" + "\n----\n".join(logs)
    return [(p.returncode, log) for p, log in zip(procs, logs)]


def _results(runs: list, phase: str) -> list:
    """Each process's DatasetRun of ``phase`` (as a dict), or its error line."""
    got = []
    for rc, log in runs:
        line = [ln for ln in log.splitlines() if ln.startswith(("RESULT " + phase, "ERROR " + phase))]
        assert line, f"no outcome of {phase} (return code {rc}):\n{log}"
        kind, _, rest = line[0].split(" ", 2)
        got.append(json.loads(rest) if kind == "RESULT" else "ERROR " + rest)
    return got


def _single(tmp_path: pathlib.Path, batches: list) -> dict:
    """The single-process run of ``batches`` (CPU), loaded."""
    import jax

    import jaxlrp

    explain, params, _, metrics = _problem()
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices("cpu")[:1])
    out = tmp_path / f"single{len(list(tmp_path.iterdir()))}"
    jaxlrp.explain_dataset(explain, params, batches, out, mesh=mesh, metrics=metrics, progress=False)
    return {k: np.asarray(v) for k, v in jaxlrp.dataset.load(out).items()}


def _same_bytes(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


# -------------------------------------------------------------------------------- tests


def test_two_processes_unequal_shares_killed_and_resumed_equal_one_process(tmp_path):
    """9 batches over 2 processes (5 and 4): the job is killed (SIGKILL) in its third step
    and resumed; the rows equal a single-process run byte for byte. Then a resume with
    other data in process 1, and a target out of range in process 1: both processes stop
    with an error (process 1 its own, process 0 one naming process 1), none hangs."""
    import jaxlrp

    out = tmp_path / "out"
    runs = _launch(2, out, "modulo", "kill", kill_rest_when_one_dies=True)
    assert [rc for rc, _ in runs] == [-signal.SIGKILL] * 2, runs
    assert not (out / "done-p000.json").exists()
    runs = _launch(2, out, "modulo", "resume", "changed", "bad-target")
    assert [rc for rc, _ in runs] == [0, 0], runs
    resumed = _results(runs, "resume")
    assert [(r["batches"], r["skipped"] + r["computed"]) for r in resumed] == [(5, 5), (4, 4)], resumed
    assert all(r["skipped"] >= 1 for r in resumed), resumed  # the kill left committed batches
    _, _, batches, _ = _problem()
    _same_bytes({k: np.asarray(v) for k, v in jaxlrp.dataset.load(out).items()}, _single(tmp_path, batches))
    changed = _results(runs, "changed")
    assert "ERROR ValueError batch 1 on disk" in changed[1] and "'x'" in changed[1], changed
    assert changed[0].startswith("ERROR RuntimeError") and "process 1 failed" in changed[0], changed
    bad = _results(runs, "bad-target")
    assert "batch 0 has targets outside [0, 3)" in bad[1] and "process 1 failed" in bad[0], bad


def test_three_processes_one_without_batches_equal_one_process(tmp_path):
    """Shares of 3, 1 and 0 batches over 3 processes, first batches of 4, 3 and no
    examples: every process stops after the third step, process 2 writes nothing but its
    record, and each process's rows equal those of a single-process run byte for byte."""
    import jaxlrp

    out = tmp_path / "out"
    runs = _launch(3, out, "front", "run")
    assert [rc for rc, _ in runs] == [0, 0, 0], runs
    assert [(r["batches"], r["computed"]) for r in _results(runs, "run")] == [(3, 3), (1, 1), (0, 0)]
    assert json.loads((out / "done-p002.json").read_text())["batches"] == 0
    assert json.loads((out / "meta.json").read_text())["run"]["batch_size"] == 4  # the largest first batch
    _, _, batches, _ = _problem()
    ref = _single(tmp_path, batches)
    for p, rows in ((0, slice(0, 12)), (1, slice(32, 35))):
        got = {k: np.asarray(v) for k, v in jaxlrp.dataset.load(out, process=p).items()}
        _same_bytes(got, {k: v[rows] for k, v in ref.items()})
    both = jaxlrp.dataset.load(out)["relevance"]  # batch-major, then process
    assert len(both) == 3 * 4 + 3 and len(both.parts) == 4


if __name__ == "__main__":
    _worker(sys.argv[1:])
