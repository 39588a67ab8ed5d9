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
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
    assert (tmp_path / "metrics.md").read_text().startswith("Test accuracy")


@pytest.mark.parametrize("args", [["demo", "--steps", "0"], ["demo", "--train", "10"], ["demo", "--seed", "x"], []])
def test_bad_arguments_exit_non_zero(args):
    proc = subprocess.run([sys.executable, "-m", "jaxlrp", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error" in proc.stderr
