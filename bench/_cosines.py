"""Per-example cosine tables shared by ``bf16.py`` (jaxlrp) and ``bf16_lxt.py`` (LXT):
NumPy only, so that both environments import it."""

from __future__ import annotations

import json
import pathlib

import numpy as np

HEADER = ["| method | examples | worst | 1st percentile | median | share >= 0.99 |", "|---|---|---|---|---|---|"]


def cosine(a, b) -> np.ndarray:
    """The cosine similarity of each example's (leading axis) map in ``a`` and ``b``, in float64."""
    a, b = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (a, b))
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def row(method: str, c: np.ndarray) -> dict:
    """A table row: the worst, 1st percentile, median and share >= 0.99 of the cosines ``c``."""
    return {"method": method, "n": int(c.size), "worst": float(c.min()), "p1": float(np.percentile(c, 1)),
            "median": float(np.median(c)), "share_099": float(np.mean(c >= 0.99))}


def write(out: str, intro: list, rows: list, machine: str, command: str) -> None:
    """``out``.md (``intro`` lines, then the table) and ``out``.json; the table is printed."""
    lines = intro + [""] + HEADER + [
        f"| {r['method']} | {r['n']} | {r['worst']:.4f} | {r['p1']:.4f} | {r['median']:.5f} | {r['share_099']:.3f} |"
        for r in rows]
    path = pathlib.Path(out)
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows}, indent=1))
    print("\n".join(lines))
