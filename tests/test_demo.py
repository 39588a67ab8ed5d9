"""The demo runs end to end (small settings) and writes a valid PNG and JSON."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxlrp.__main__ import main


def test_demo_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--train", "256", "--steps", "30", "--explain", "16",
               "--show", "3", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "relevance mass accuracy" in out and "demo.png" in out
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert len(summary["methods"]) >= 5
    for scores in summary["methods"].values():
        assert set(scores) >= {"conservation_error", "relevance_mass_accuracy", "aopc", "gini"}
        assert all(np.isfinite(v) for v in scores.values())
    img = np.asarray(Image.open(tmp_path / "demo.png"))
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 100  # matplotlib writes RGBA
    assert (tmp_path / "metrics.md").read_text().startswith("Test accuracy")


@pytest.mark.parametrize("args", [["demo", "--steps", "0"], ["demo", "--train", "10"], ["demo", "--seed", "x"], []])
def test_bad_arguments_exit_non_zero(args):
    proc = subprocess.run([sys.executable, "-m", "jaxlrp", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--seed", "-5"], "--seed: must be a non-negative integer"),
        (["demo", "--seed", "x"], "--seed: must be a non-negative integer"),
        (["demo", "--steps", "0"], "--steps: must be a positive integer"),
        (["demo", "--explain", "two"], "--explain: must be a positive integer"),
    ],
)
def test_invalid_arguments_exit_2_without_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_must_be_a_directory(tmp_path, capsys, monkeypatch):
    # checked before any work: the demo would otherwise train first
    monkeypatch.setattr("jaxlrp.demo.run", lambda cfg: pytest.fail("the demo ran"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--out", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--out" in err and "not a directory" in err and "Traceback" not in err


def test_version(capsys):
    from jaxlrp import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxlrp {__version__}"


def test_version_defined_once():
    import importlib.metadata
    import pathlib

    import jaxlrp
    from jaxlrp._version import __version__

    assert jaxlrp.__version__ == __version__
    pyproject = (pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert "dynamic = [\"version\"]" in pyproject and "\nversion =" not in pyproject.split("[tool.setuptools.dynamic]")[0]
    try:
        installed = importlib.metadata.version("jaxlrp")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == __version__


def test_core_import_needs_jax_and_numpy_only():
    code = ("import sys, jaxlrp; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'optax', 'PIL', 'matplotlib', 'rich'}); "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
