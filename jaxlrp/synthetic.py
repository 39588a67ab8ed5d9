"""Synthetic data sets with ground-truth masks for testing explanations.

Each generator returns a :class:`Dataset` ``(x, y, mask)`` whose ``mask``
marks the input positions that carry the class information, so a relevance
map can be scored against the truth (e.g. relevance mass inside the mask).

* :func:`shapes`: small grey images with one geometric object each; the
  class is the kind of object.
* :func:`dna_motifs`: one-hot DNA sequences with planted motifs.
* :func:`squares`: the synthetic two-class task of Landt-Hayen et al. (2023),
  "Fact or Artifact? Revise Layer-wise Relevance Propagation on various ANN
  Architectures".

All generators are pure functions of their arguments: the same ``key`` gives
the same data on every call. They use numpy only (no compilation, nothing is
downloaded) and produce a few thousand examples in milliseconds. Arrays are
returned as freshly allocated numpy arrays, which JAX functions accept as
they are.

>>> from jaxlrp import synthetic
>>> x, y, mask = synthetic.shapes(0, 512)
>>> x.shape, y.shape, mask.shape
((512, 32, 32, 1), (512,), (512, 32, 32))
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple, Union

import jax
import numpy as np

__all__ = [
    "Dataset",
    "SHAPES",
    "BASES",
    "shapes",
    "dna_motifs",
    "squares",
]

#: Object kinds understood by :func:`shapes`.
SHAPES: tuple[str, ...] = ("square", "disc", "cross", "triangle")

#: Order of the one-hot channels produced by :func:`dna_motifs`.
BASES: str = "ACGT"

Key = Union[int, np.integer, jax.Array, np.ndarray]

_MAX_SEED = 2**64
# how often chance motif occurrences are searched for and mutated away before
# dna_motifs gives up; each round removes almost all of them
_MAX_CLEANING_ROUNDS = 200


class Dataset(NamedTuple):
    """A labelled data set with a ground-truth relevance mask.

    Unpacks as ``x, y, mask = dataset``. All fields are numpy arrays whose
    leading axis indexes the ``n`` examples.

    Attributes
    ----------
    x : numpy.ndarray
        Inputs, ``float32``, shape ``(n, ...)``; channels last.
    y : numpy.ndarray
        Integer class labels, ``int32``, shape ``(n,)``.
    mask : numpy.ndarray
        Boolean ground truth, ``True`` where the input carries the evidence
        for the label; the shape of ``x`` without the channel axis.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


# --------------------------------------------------------------------- seeds


def _key_words(key: Key) -> list[int]:
    """The 32-bit words that seed numpy for an int seed or a JAX key."""
    if isinstance(key, (bool, np.bool_)):
        raise ValueError(f"key must be an int seed or a jax.random key, got {key!r}")
    # int and np.integer named for mypy, which does not count them as numbers.Integral
    if isinstance(key, (int, np.integer, numbers.Integral)):
        seed = int(key)
        if not 0 <= seed < _MAX_SEED:
            raise ValueError(
                f"an int seed must be in [0, 2**64), got {seed}; pass a "
                "jax.random key for other seeds"
            )
        # the key data of jax.random.key(seed) with the default threefry
        # implementation, so an int and its key give the same data
        return [seed >> 32, seed & 0xFFFFFFFF]
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key must be a single jax.random key, got an array of keys "
                f"with shape {key.shape}"
            )
        key = jax.random.key_data(key)
    words = np.asarray(key)
    if words.dtype != np.uint32 or words.ndim != 1 or words.size == 0:
        raise ValueError(
            "key must be an int seed, a typed key from jax.random.key or a "
            "raw uint32 key from jax.random.PRNGKey, got "
            f"{type(key).__name__} with dtype {words.dtype} and shape "
            f"{words.shape}"
        )
    return [int(w) for w in words]


def _generator(key: Key) -> np.random.Generator:
    return np.random.default_rng(_key_words(key))


# --------------------------------------------------------------- validation


def _check_count(n: int, what: str = "n", minimum: int = 1) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {n!r}")
    if n < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {n}")
    return int(n)


def _check_real(value: float, what: str, low: float, high: float = np.inf,
                low_open: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    below = number <= low if low_open else number < low
    if not np.isfinite(number) or below or number > high:
        bracket = "(" if low_open else "["
        upper = "inf)" if high == np.inf else f"{high}]"
        raise ValueError(f"{what} must be in {bracket}{low}, {upper}, got {value!r}")
    return number


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Labels ``0..k-1`` in random order, counts differing by at most one."""
    return rng.permutation(np.arange(n) % k).astype(np.int32)


# -------------------------------------------------------------------- shapes


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in coordinates scaled so the object spans ``[-1, 1]``."""
    au, av = np.abs(u), np.abs(v)
    if kind == "square":
        return np.maximum(au, av) <= 1.0
    if kind == "disc":
        return u * u + v * v <= 1.0
    if kind == "cross":
        arm = 0.35
        return ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0))
    # triangle with its apex up and its base on the bottom edge
    return (v <= 1.0) & (au <= (v + 1.0) * 0.5)


def _shape_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Validate the ``classes`` of :func:`shapes`: distinct names from :data:`SHAPES`."""
    if isinstance(classes, str):
        raise ValueError(
            f"classes must be a sequence of names, got the string {classes!r}; "
            f"write ({classes!r},) for a single class"
        )
    names = tuple(classes)
    if not names:
        raise ValueError("classes must name at least one shape")
    unknown = [name for name in names if name not in SHAPES]
    if unknown:
        raise ValueError(
            f"unknown shape(s) {unknown}; valid names are: {', '.join(SHAPES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"classes must not repeat a shape, got {names}")
    return names


def _scale_range(scale: tuple[float, float]) -> tuple[float, float]:
    """Validate the ``scale`` of :func:`shapes`: a pair with ``0 < low <= high <= 1``."""
    try:
        low, high = (float(s) for s in scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a pair (low, high), got {scale!r}") from None
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale!r}")
    return low, high


def _rasterise_shapes(
    names: tuple[str, ...], y: np.ndarray, half: np.ndarray, centre: np.ndarray, size: int
) -> np.ndarray:
    """Boolean ``(n, size, size)``: object ``names[y[i]]`` of half extent ``half[i]`` at ``centre[i]``."""
    grid = np.arange(size, dtype=np.float32)
    mask = np.zeros((y.size, size, size), dtype=bool)
    for label, kind in enumerate(names):
        members = np.flatnonzero(y == label)
        if members.size == 0:
            continue
        scale_px = half[members, None, None].astype(np.float32)
        middle = centre[members, :, None, None].astype(np.float32)
        v = (grid[None, :, None] - middle[:, 0]) / scale_px
        u = (grid[None, None, :] - middle[:, 1]) / scale_px
        mask[members] = _shape_mask(kind, u, v)
    return mask


def shapes(
    key: Key,
    n: int,
    size: int = 32,
    *,
    classes: Sequence[str] = SHAPES,
    noise: float = 0.1,
    scale: tuple[float, float] = (0.35, 0.7),
    intensity: float = 1.0,
) -> Dataset:
    """Images of one geometric object each; the class is the object's kind.

    Every image holds one filled object of brightness ``intensity`` on a
    black background, at a random position and with a random size, plus
    i.i.d. Gaussian noise over the whole image. Objects are axis-aligned:
    a square, a disc, a plus-shaped cross or a triangle pointing up. The
    classes are easy for a small CNN.

    Parameters
    ----------
    key : int or jax.random key
        Seed. An int seed below ``2**32`` gives the same data as
        ``jax.random.key(seed)`` (default threefry implementation).
    n : int
        Number of examples, at least 1.
    size : int, default 32
        Height and width of the images in pixels, at least 16.
    classes : sequence of str, default SHAPES
        Object kinds, one class each: label ``i`` is ``classes[i]``. Any
        non-empty selection of distinct names from :data:`SHAPES`.
    noise : float, default 0.1
        Standard deviation of the Gaussian noise, non-negative.
    scale : (float, float), default (0.35, 0.7)
        Range of the object's extent (the side of its bounding box) as a
        fraction of ``size``; ``0 < low <= high <= 1``. The extent is drawn
        uniformly from it, and the object lies entirely inside the image.
    intensity : float, default 1.0
        Brightness of the object, positive.

    Returns
    -------
    Dataset
        ``x``: ``float32`` images of shape ``(n, size, size, 1)``;
        ``y``: ``int32`` labels of shape ``(n,)``, balanced (class counts
        differ by at most one) and in random order; ``mask``: ``bool`` of
        shape ``(n, size, size)``, true on the pixels of the object.

    Raises
    ------
    ValueError
        If ``n`` or ``size`` is too small, a class name is unknown or
        repeated, or ``noise``, ``scale`` or ``intensity`` is out of range.
    """
    n = _check_count(n)
    size = _check_count(size, "size", 16)
    names = _shape_classes(classes)
    noise = _check_real(noise, "noise", 0.0)
    intensity = _check_real(intensity, "intensity", 0.0, low_open=True)
    low, high = _scale_range(scale)

    rng = _generator(key)
    y = _balanced_labels(rng, n, len(names))
    # half the extent, in pixels; pixel centres sit at integer coordinates
    half = 0.5 * rng.uniform(low * size, high * size, n) - 0.5
    half = np.maximum(half, 1.0)
    margin = half[:, None]
    centre = margin + rng.random((n, 2)) * (size - 1 - 2 * margin)
    noise_field = rng.standard_normal((n, size, size), dtype=np.float32)

    mask = _rasterise_shapes(names, y, half, centre, size)

    x = noise_field
    x *= np.float32(noise)
    x += mask.astype(np.float32) * np.float32(intensity)
    return Dataset(x[..., None], y, mask)


# ---------------------------------------------------------------------- DNA


def _motif_codes(motifs: Sequence[str], length: int) -> list[np.ndarray]:
    """Validate motifs and encode them as base indices into :data:`BASES`."""
    if isinstance(motifs, str):
        raise ValueError(
            f"motifs must be a sequence of strings, got the string {motifs!r}; "
            f"write ({motifs!r},) for a single motif"
        )
    names = [m.upper() if isinstance(m, str) else m for m in motifs]
    if not names:
        raise ValueError("motifs must contain at least one motif")
    for motif in names:
        if not isinstance(motif, str) or not motif:
            raise ValueError(f"every motif must be a non-empty string, got {motif!r}")
        bad = sorted(set(motif) - set(BASES))
        if bad:
            raise ValueError(
                f"motif {motif!r} contains {bad}; only the bases {BASES} are allowed"
            )
        if len(motif) >= length:
            raise ValueError(
                f"motif {motif!r} has length {len(motif)}, which must be less "
                f"than the sequence length {length}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"motifs must be distinct, got {tuple(names)}")
    for a in names:
        for b in names:
            if a != b and a in b:
                raise ValueError(
                    f"motif {a!r} occurs inside motif {b!r}; the masks would "
                    "be ambiguous, so no motif may contain another"
                )
    lookup = {base: i for i, base in enumerate(BASES)}
    return [np.array([lookup[c] for c in m], dtype=np.int8) for m in names]


def _occurrences(seq: np.ndarray, motif: np.ndarray) -> np.ndarray:
    """Boolean ``(n, L - m + 1)``: does ``motif`` start at each position?"""
    m = motif.size
    width = seq.shape[1] - m + 1
    hit = seq[:, :width] == motif[0]
    for j in range(1, m):
        hit &= seq[:, j : j + width] == motif[j]
    return hit


def _remove_chance_occurrences(
    rng: np.random.Generator,
    seq: np.ndarray,
    codes: list[np.ndarray],
    planted_starts: list[np.ndarray],
    planted: np.ndarray,
) -> None:
    """Mutate background bases until motifs occur only where planted.

    ``seq`` is changed in place. A chance occurrence always contains a
    background base, because planted copies are separated by a gap and no
    motif contains another; one of its background bases, chosen at random,
    is replaced by a different random base.
    """
    for _ in range(_MAX_CLEANING_ROUNDS):
        clean = True
        for code, starts in zip(codes, planted_starts):
            m = code.size
            rows, cols = np.nonzero(_occurrences(seq, code) & ~starts)
            if rows.size == 0:
                continue
            clean = False
            offsets = cols[:, None] + np.arange(m)
            free = ~planted[rows[:, None], offsets]
            # a random free position inside each occurrence
            pick = np.argmax(rng.random(free.shape) * free, axis=1)
            where = offsets[np.arange(rows.size), pick]
            shift = rng.integers(1, 4, rows.size, dtype=np.int8)
            seq[rows, where] = (seq[rows, where] + shift) % 4
        if clean:
            return
    raise ValueError(
        "could not remove chance occurrences of the motifs from the "
        "background; the motifs are too short or too many"
    )


def _copy_range(copies: int | tuple[int, int]) -> tuple[int, int]:
    """Validate ``copies`` of :func:`dna_motifs` as an inclusive range."""
    if isinstance(copies, numbers.Integral) and not isinstance(copies, bool):
        pair = (copies, copies)
    else:
        pair = tuple(copies) if isinstance(copies, Sequence) else ()
        if len(pair) != 2:
            raise ValueError(
                f"copies must be an int or a pair (low, high), got {copies!r}"
            )
    low, high = (_check_count(c, "copies") for c in pair)
    if low > high:
        raise ValueError(f"copies must satisfy low <= high, got {copies!r}")
    return low, high


def _copy_starts(
    rng: np.random.Generator, count: np.ndarray, high_k: int, slot: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random non-overlapping starts of ``count[i]`` copies: ``(rows, slots, starts)``."""
    n = count.size
    # non-overlapping starts: sorted offsets in [0, free], then slot j moved
    # right by j slots, so consecutive starts are at least one slot apart
    free = length - count * slot + 1
    offset = np.floor(rng.random((n, high_k)) * (np.maximum(free, 0) + 1)[:, None])
    used = np.arange(high_k) < count[:, None]
    # sorting moves the unused (infinite) offsets behind the used ones, so
    # ``used`` still marks the used slots
    offset = np.sort(np.where(used, offset, np.inf), axis=1)
    rows, slots = np.nonzero(used)
    starts = offset[rows, slots].astype(np.intp) + slots * slot
    return rows, slots, starts


def _plant_copies(
    seq: np.ndarray,
    codes: list[np.ndarray],
    rows: np.ndarray,
    starts: np.ndarray,
    motif_of: np.ndarray,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Write motif ``motif_of[k]`` at ``(rows[k], starts[k])`` into ``seq``; return the masks."""
    n, length = seq.shape
    planted = np.zeros((n, length), dtype=bool)
    planted_starts = [np.zeros((n, length - c.size + 1), dtype=bool) for c in codes]
    for index, code in enumerate(codes):
        pick = motif_of == index
        r, s = rows[pick], starts[pick]
        positions = s[:, None] + np.arange(code.size)
        seq[r[:, None], positions] = code
        planted[r[:, None], positions] = True
        planted_starts[index][r, s] = True
    return planted, planted_starts


def dna_motifs(
    key: Key,
    n: int,
    length: int = 200,
    *,
    motifs: Sequence[str] = ("TATAAT", "GGATCC"),
    copies: int | tuple[int, int] = (1, 3),
    multiclass: bool = False,
) -> Dataset:
    """One-hot DNA sequences with planted motifs.

    The background is i.i.d. uniform over A, C, G, T. Motif copies are
    planted at random, non-overlapping positions, with at least one
    background base between copies. Afterwards background bases are mutated
    until no motif occurs anywhere except at the planted copies, so the mask
    is exactly the set of motif occurrences and the label is determined by
    the sequence.

    Two tasks are available:

    * binary (``multiclass=False``): label 1 means at least one motif is
      present, label 0 means none of the motifs occurs. Each copy in a
      positive sequence is one of ``motifs``, chosen uniformly.
    * multi-class (``multiclass=True``): one class per motif; a sequence of
      class ``c`` contains copies of ``motifs[c]`` only and no other motif.

    Parameters
    ----------
    key : int or jax.random key
        Seed; see :func:`shapes`.
    n : int
        Number of sequences, at least 1.
    length : int, default 200
        Sequence length; must exceed every motif length and leave room for
        the largest number of copies.
    motifs : sequence of str, default ("TATAAT", "GGATCC")
        Distinct motifs over ``ACGT`` (case-insensitive), none contained in
        another. The defaults are the bacterial -10 promoter box and the
        BamHI restriction site.
    copies : int or (int, int), default (1, 3)
        Number of planted copies per motif-bearing sequence: a fixed count
        or an inclusive range drawn uniformly per sequence; at least 1.
    multiclass : bool, default False
        Choose the multi-class task instead of the binary one.

    Returns
    -------
    Dataset
        ``x``: ``float32`` one-hot sequences of shape ``(n, length, 4)``,
        channels in the order of :data:`BASES`; ``y``: ``int32`` labels of
        shape ``(n,)``, balanced and in random order; ``mask``: ``bool`` of
        shape ``(n, length)``, true on the bases of the planted copies (all
        false for negatives).

    Raises
    ------
    ValueError
        If ``n`` or ``length`` is too small, a motif is invalid, or
        ``copies`` is out of range or does not fit into ``length``.
    """
    n = _check_count(n)
    length = _check_count(length, "length", 2)
    codes = _motif_codes(motifs, length)
    low_k, high_k = _copy_range(copies)
    slot = max(code.size for code in codes) + 1  # a motif plus a gap base
    if high_k * slot - 1 > length:
        raise ValueError(
            f"{high_k} copies of a motif of length {slot - 1} with gaps need "
            f"{high_k * slot - 1} bases, more than the sequence length {length}"
        )

    rng = _generator(key)
    n_classes = len(codes) if multiclass else 2
    y = _balanced_labels(rng, n, n_classes)
    seq = rng.integers(0, 4, (n, length), dtype=np.int8)

    count = rng.integers(low_k, high_k + 1, n)
    if not multiclass:
        count[y == 0] = 0
    if multiclass:
        which = np.repeat(y[:, None], high_k, axis=1)
    else:
        which = rng.integers(0, len(codes), (n, high_k))
    rows, slots, starts = _copy_starts(rng, count, high_k, slot, length)
    planted, planted_starts = _plant_copies(seq, codes, rows, starts, which[rows, slots])
    _remove_chance_occurrences(rng, seq, codes, planted_starts, planted)
    x = np.eye(4, dtype=np.float32)[seq]
    return Dataset(x, y, planted)


# ------------------------------------------------------------------ squares


def _scaled(coordinate: int, size: int) -> int:
    """A coordinate of the 100 x 100 original, rounded half up to ``size``."""
    return (coordinate * size + 50) // 100


def squares(key: Key, n: int, size: int = 100, *, noise: float = 0.1) -> Dataset:
    """The synthetic two-class squares task of Landt-Hayen et al. (2023).

    Every image is zero except for three squares of side 10 (for the
    default ``size=100``): two fixed ones present in every image, +0.5 at
    rows 20:30, columns 70:80 and -0.5 at rows 70:80, columns 70:80, and the
    class square at rows 45:55, columns 20:30 with value +0.5 (class 0) or
    -0.5 (class 1). I.i.d. uniform noise in ``[-noise, noise]`` is added to
    every pixel. Only the class square distinguishes the classes, so a
    faithful explanation puts its relevance there and not on the fixed
    squares. For other sizes every coordinate ``c`` becomes
    ``round(c * size / 100)`` (halves rounded up).

    Parameters
    ----------
    key : int or jax.random key
        Seed; see :func:`shapes`.
    n : int
        Number of images, at least 1.
    size : int, default 100
        Height and width of the images, at least 10.
    noise : float, default 0.1
        Half-width of the uniform noise, non-negative; 0.1 in the paper.

    Returns
    -------
    Dataset
        ``x``: ``float32`` images of shape ``(n, size, size, 1)``; ``y``:
        ``int32`` labels of shape ``(n,)``, balanced and in random order;
        ``mask``: ``bool`` of shape ``(n, size, size)``, true on the class
        square (the same in every image).

    Raises
    ------
    ValueError
        If ``n`` or ``size`` is too small or ``noise`` is negative.
    """
    n = _check_count(n)
    size = _check_count(size, "size", 10)
    noise = _check_real(noise, "noise", 0.0)

    def box(r0: int, r1: int, c0: int, c1: int) -> tuple[slice, slice]:
        return (slice(_scaled(r0, size), _scaled(r1, size)),
                slice(_scaled(c0, size), _scaled(c1, size)))

    upper, lower, middle = box(20, 30, 70, 80), box(70, 80, 70, 80), box(45, 55, 20, 30)
    rng = _generator(key)
    y = _balanced_labels(rng, n, 2)
    x = rng.random((n, size, size), dtype=np.float32)
    x *= np.float32(2.0 * noise)
    x -= np.float32(noise)
    x[(slice(None), *upper)] += np.float32(0.5)
    x[(slice(None), *lower)] -= np.float32(0.5)
    sign = np.where(y == 0, np.float32(0.5), np.float32(-0.5))
    x[(slice(None), *middle)] += sign[:, None, None]
    mask = np.zeros((n, size, size), dtype=bool)
    mask[(slice(None), *middle)] = True
    return Dataset(x[..., None], y, mask)
