"""Tests for jaxlrp.synthetic."""

from __future__ import annotations

import re
import time

import jax
import numpy as np
import pytest

from jaxlrp import synthetic

MOTIFS = ("TATAAT", "GGATCC")


def _strings(x: np.ndarray) -> list[str]:
    """Decode one-hot sequences (n, L, 4) to strings."""
    return ["".join(synthetic.BASES[i] for i in row) for row in x.argmax(-1)]


def _occurrence_mask(sequence: str, motifs: tuple[str, ...]) -> np.ndarray:
    """Positions covered by any (possibly overlapping) motif occurrence."""
    covered = np.zeros(len(sequence), dtype=bool)
    for motif in motifs:
        for match in re.finditer(f"(?={motif})", sequence):
            covered[match.start() : match.start() + len(motif)] = True
    return covered


def _assert_same(a: synthetic.Dataset, b: synthetic.Dataset) -> None:
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


GENERATORS = [
    pytest.param(lambda key, n: synthetic.shapes(key, n), id="shapes"),
    pytest.param(lambda key, n: synthetic.dna_motifs(key, n), id="dna_motifs"),
    pytest.param(
        lambda key, n: synthetic.dna_motifs(key, n, multiclass=True), id="dna_multiclass"
    ),
    pytest.param(lambda key, n: synthetic.squares(key, n, size=40), id="squares"),
]


# ------------------------------------------------------------- common API


@pytest.mark.parametrize("make", GENERATORS)
def test_deterministic_per_seed(make):
    first, again = make(3, 40), make(3, 40)
    _assert_same(first, again)
    other = make(4, 40)
    assert not np.array_equal(first.x, other.x)


@pytest.mark.parametrize("make", GENERATORS)
def test_int_seed_matches_jax_keys(make):
    expected = make(11, 12)
    _assert_same(make(jax.random.key(11), 12), expected)
    _assert_same(make(jax.random.PRNGKey(11), 12), expected)
    _assert_same(make(np.int64(11), 12), expected)
    other = make(jax.random.fold_in(jax.random.key(11), 1), 12)
    assert not np.array_equal(other.x, expected.x)


@pytest.mark.parametrize("make", GENERATORS)
def test_dataset_unpacks_and_returns_numpy(make):
    dataset = make(0, 9)
    assert isinstance(dataset, synthetic.Dataset)
    x, y, mask = dataset
    assert x is dataset.x and y is dataset.y and mask is dataset.mask
    assert all(isinstance(a, np.ndarray) for a in dataset)
    assert x.dtype == np.float32 and y.dtype == np.int32 and mask.dtype == bool
    assert len(x) == len(y) == len(mask) == 9


@pytest.mark.parametrize("make", GENERATORS)
def test_single_example(make):
    x, y, mask = make(0, 1)
    assert x.shape[0] == y.shape[0] == mask.shape[0] == 1


@pytest.mark.parametrize(
    "bad_key",
    [-1, 2**64, 1.5, True, "seed", jax.random.split(jax.random.key(0), 2),
     np.zeros(2, dtype=np.int32)],
)
def test_invalid_keys(bad_key):
    with pytest.raises(ValueError, match="key|seed"):
        synthetic.shapes(bad_key, 4)


@pytest.mark.parametrize("bad_n", [0, -3, 2.0, True])
def test_invalid_n(bad_n):
    for make in (synthetic.shapes, synthetic.dna_motifs, synthetic.squares):
        with pytest.raises(ValueError, match="n must"):
            make(0, bad_n)


@pytest.mark.parametrize(
    "make",
    [*GENERATORS, pytest.param(lambda key, n: synthetic.squares(key, n), id="squares_100")],
)
def test_generation_is_fast(make):
    make(0, 20)  # the first call may import or warm up caches
    best = np.inf
    for _ in range(2):
        start = time.perf_counter()
        make(1, 2000)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"n=2000 took {best:.3f} s"


# ----------------------------------------------------------------- shapes


def test_shapes_shapes_and_labels():
    x, y, mask = synthetic.shapes(0, 101, size=24)
    assert x.shape == (101, 24, 24, 1) and mask.shape == (101, 24, 24)
    counts = np.bincount(y, minlength=4)
    assert counts.sum() == 101 and counts.max() - counts.min() <= 1
    assert len(synthetic.SHAPES) == 4


def test_shapes_masks_are_the_bright_objects():
    x, y, mask = synthetic.shapes(1, 200, noise=0.1)
    assert mask.any(axis=(1, 2)).all()
    assert (~mask).any(axis=(1, 2)).all()
    image = x[..., 0]
    inside = image[mask].mean()
    outside = image[~mask].mean()
    assert inside - outside > 0.8
    # without noise the image is exactly the mask times the intensity
    clean, _, clean_mask = synthetic.shapes(1, 50, noise=0.0, intensity=2.0)
    np.testing.assert_array_equal(clean[..., 0], 2.0 * clean_mask)


def test_shapes_objects_inside_and_scaled():
    _, _, mask = synthetic.shapes(2, 300, size=40, scale=(0.5, 0.5), classes=("square",))
    rows = mask.any(axis=2)
    extent = rows.sum(axis=1)
    # the bounding box spans half the image, give or take a pixel
    assert np.all(np.abs(extent - 20) <= 1)
    # no object touches the border
    assert not mask[:, 0].any() and not mask[:, -1].any()
    assert not mask[:, :, 0].any() and not mask[:, :, -1].any()


def test_shapes_classes_differ_in_geometry():
    _, y, mask = synthetic.shapes(3, 400, size=32, scale=(0.6, 0.6))
    # fill ratio of the bounding box: square ~1, disc ~pi/4, cross and
    # triangle about half
    fill = []
    for m in mask:
        r, c = np.nonzero(m)
        box = (r.max() - r.min() + 1) * (c.max() - c.min() + 1)
        fill.append(m.sum() / box)
    fill = np.array(fill)
    mean = {name: fill[y == i].mean() for i, name in enumerate(synthetic.SHAPES)}
    assert mean["square"] > 0.95
    assert 0.7 < mean["disc"] < 0.9
    assert mean["cross"] < 0.7 and mean["triangle"] < 0.65


def test_shapes_class_subset_relabels():
    _, y, mask = synthetic.shapes(0, 30, classes=("disc", "square"))
    assert set(np.unique(y)) == {0, 1}
    np.testing.assert_array_equal(np.bincount(y), [15, 15])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 8}, "size must be at least 16"),
        ({"classes": ()}, "at least one"),
        ({"classes": ("square", "hexagon")}, "hexagon"),
        ({"classes": ("disc", "disc")}, "repeat"),
        ({"classes": "disc"}, "sequence of names"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"intensity": 0.0}, "intensity"),
        ({"scale": (0.0, 0.5)}, "scale"),
        ({"scale": (0.6, 0.5)}, "scale"),
        ({"scale": 0.5}, "scale"),
    ],
)
def test_shapes_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.shapes(0, 4, **kwargs)


# -------------------------------------------------------------------- DNA


def test_dna_shapes_and_one_hot():
    x, y, mask = synthetic.dna_motifs(0, 64, length=50)
    assert x.shape == (64, 50, 4) and mask.shape == (64, 50)
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x.sum(-1), 1.0)
    np.testing.assert_array_equal(np.bincount(y), [32, 32])


def test_dna_background_is_roughly_uniform():
    x, _, mask = synthetic.dna_motifs(5, 500)
    frequency = x[~mask].mean(axis=0)
    np.testing.assert_allclose(frequency, 0.25, atol=0.01)


def test_dna_mask_marks_exactly_the_motif_occurrences():
    x, y, mask = synthetic.dna_motifs(1, 300, length=120, copies=(1, 4))
    for sequence, label, m in zip(_strings(x), y, mask):
        np.testing.assert_array_equal(_occurrence_mask(sequence, MOTIFS), m)
        if label == 0:
            assert not m.any()
            assert not any(motif in sequence for motif in MOTIFS)
        else:
            assert m.any()
    # positives draw each copy from both motifs
    positives = " ".join(s for s, label in zip(_strings(x), y) if label == 1)
    assert all(positives.count(motif) > 50 for motif in MOTIFS)


def test_dna_number_of_copies():
    x, y, mask = synthetic.dna_motifs(2, 200, length=100, copies=(2, 3))
    for sequence, label in zip(_strings(x), y):
        count = sum(len(re.findall(f"(?={m})", sequence)) for m in MOTIFS)
        assert count in ((0,) if label == 0 else (2, 3))
    _, y, mask = synthetic.dna_motifs(2, 50, length=100, copies=1)
    np.testing.assert_array_equal(mask.sum(axis=1), 6 * y)


def test_dna_copies_may_sit_at_both_ends():
    _, _, mask = synthetic.dna_motifs(0, 2000, length=20, motifs=("ACGTA",), copies=1)
    assert mask[:, 0].any() and mask[:, -1].any()


def test_dna_multiclass():
    motifs = ("TATAAT", "GGATCC", "CCCGGG")
    x, y, mask = synthetic.dna_motifs(3, 150, length=80, motifs=motifs, multiclass=True)
    np.testing.assert_array_equal(np.bincount(y), [50, 50, 50])
    for sequence, label, m in zip(_strings(x), y, mask):
        assert m.any()
        own = motifs[label]
        np.testing.assert_array_equal(_occurrence_mask(sequence, (own,)), m)
        assert not any(other in sequence for other in motifs if other != own)


def test_dna_motifs_of_different_lengths_and_lower_case():
    x, y, mask = synthetic.dna_motifs(4, 200, length=60, motifs=("gattaca", "CGCG"))
    for sequence, m in zip(_strings(x), mask):
        np.testing.assert_array_equal(
            _occurrence_mask(sequence, ("GATTACA", "CGCG")), m
        )


def test_dna_self_overlapping_motif():
    # "AAA" overlaps itself; background runs of A must be broken up
    x, y, mask = synthetic.dna_motifs(6, 200, length=40, motifs=("AAA",), copies=(1, 3))
    for sequence, label, m in zip(_strings(x), y, mask):
        np.testing.assert_array_equal(_occurrence_mask(sequence, ("AAA",)), m)
        if label == 0:
            assert not m.any()
        else:
            assert m.sum() in (3, 6, 9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": 6}, "less than the sequence length"),
        ({"motifs": ()}, "at least one motif"),
        ({"motifs": "TATAAT"}, "sequence of strings"),
        ({"motifs": ("TATANT",)}, "only the bases"),
        ({"motifs": ("",)}, "non-empty"),
        ({"motifs": ("ACG", "acg")}, "distinct"),
        ({"motifs": ("GGATCC", "GAT")}, "occurs inside"),
        ({"copies": 0}, "copies"),
        ({"copies": (3, 2)}, "copies"),
        ({"copies": (1, 2, 3)}, "copies"),
        ({"length": 20, "copies": 4}, "more than the sequence length"),
    ],
)
def test_dna_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.dna_motifs(0, 4, **kwargs)


def test_dna_impossible_motif_set_is_reported():
    with pytest.raises(ValueError, match="too short or too many"):
        synthetic.dna_motifs(0, 4, length=10, motifs=("A", "C", "G", "T"))


# ---------------------------------------------------------------- squares


def test_squares_layout_at_default_size():
    x, y, mask = synthetic.squares(0, 20)
    assert x.shape == (20, 100, 100, 1) and mask.shape == (20, 100, 100)
    np.testing.assert_array_equal(np.bincount(y), [10, 10])
    expected = np.zeros((100, 100), dtype=bool)
    expected[45:55, 20:30] = True
    assert np.all(mask == expected)

    image = x[..., 0]
    signal = np.zeros((20, 100, 100), dtype=np.float32)
    signal[:, 20:30, 70:80] = 0.5
    signal[:, 70:80, 70:80] = -0.5
    signal[:, 45:55, 20:30] = np.where(y == 0, 0.5, -0.5)[:, None, None]
    residual = image - signal
    assert np.abs(residual).max() <= 0.1 + 1e-6
    # the noise is uniform on [-0.1, 0.1]: mean ~0, std ~0.1 / sqrt(3)
    assert abs(residual.mean()) < 0.005
    assert abs(residual.std() - 0.1 / np.sqrt(3)) < 0.003
    assert residual.min() < -0.09 and residual.max() > 0.09


def test_squares_without_noise_is_exact():
    x, y, _ = synthetic.squares(1, 4, noise=0.0)
    for image, label in zip(x[..., 0], y):
        assert image[20:30, 70:80].tolist() == np.full((10, 10), 0.5).tolist()
        assert np.all(image[70:80, 70:80] == -0.5)
        assert np.all(image[45:55, 20:30] == (0.5 if label == 0 else -0.5))
        assert np.count_nonzero(image) == 300


@pytest.mark.parametrize("size, side", [(50, 5), (200, 20), (10, 1)])
def test_squares_scaled_coordinates(size, side):
    x, y, mask = synthetic.squares(0, 2, size=size, noise=0.0)
    assert x.shape == (2, size, size, 1)
    start = (45 * size + 50) // 100
    expected = np.zeros((size, size), dtype=bool)
    expected[start : start + side, (20 * size + 50) // 100 :][:, :side] = True
    np.testing.assert_array_equal(mask[0], expected)
    assert np.count_nonzero(x[0]) == 3 * side * side


@pytest.mark.parametrize(
    "kwargs, message", [({"size": 9}, "size"), ({"noise": -1.0}, "noise")]
)
def test_squares_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.squares(0, 4, **kwargs)


def test_deprecated_data_alias_warns_and_gives_the_same_objects(monkeypatch):
    """``jaxlrp.data`` (renamed ``jaxlrp.synthetic``) still imports for one release,
    warns on import, and its names are the very objects of ``jaxlrp.synthetic``."""
    import importlib
    import sys

    import jaxlrp

    monkeypatch.delitem(sys.modules, "jaxlrp.data", raising=False)
    monkeypatch.delitem(vars(jaxlrp), "data", raising=False)  # (delattr would import it)
    with pytest.warns(DeprecationWarning, match=r"jaxlrp\.data is deprecated.*jaxlrp\.synthetic.*next release"):
        old = importlib.import_module("jaxlrp.data")
    assert old.__all__ == synthetic.__all__
    for name in synthetic.__all__:
        assert getattr(old, name) is getattr(synthetic, name), name
    monkeypatch.delitem(sys.modules, "jaxlrp.data")
    monkeypatch.delitem(vars(jaxlrp), "data")
    with pytest.warns(DeprecationWarning, match="renamed jaxlrp.synthetic"):
        assert jaxlrp.data.shapes is synthetic.shapes  # the lazy attribute: the alias module
    assert "data" not in jaxlrp.__all__ and "synthetic" in jaxlrp.__all__
