"""Tests for jaxlrp.viz."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlrp import viz

BLUE = np.array([0, 0, 255])
RED = np.array([255, 0, 0])


def _close(colour: np.ndarray, target: np.ndarray, tol: int = 8) -> bool:
    return bool(np.all(np.abs(colour.astype(int) - target) <= tol))


# --------------------------------------------------------------- colormaps


@pytest.mark.parametrize("name", ["bwr", "seismic", "coldnhot", "gray", "hot"])
def test_colormap_shape_and_dtype(name):
    table = viz.colormap(name)
    assert table.shape == (256, 3)
    assert table.dtype == np.uint8
    # interpolated, so neighbouring entries differ by small steps only
    assert np.abs(np.diff(table.astype(int), axis=0)).max() <= 8


def test_colormap_names_constant_matches():
    assert set(viz.COLORMAPS) == {"bwr", "seismic", "coldnhot", "gray", "hot"}


def test_bwr_endpoints_and_middle():
    table = viz.colormap("bwr")
    assert _close(table[0], BLUE, tol=0)
    assert _close(table[-1], RED, tol=0)
    assert table[127].min() >= 250 and table[128].min() >= 250  # white-ish


def test_seismic_endpoints_darker_than_pure():
    table = viz.colormap("seismic")
    assert table[0, 2] < 200 and table[0, :2].max() == 0  # dark blue
    assert table[-1, 0] < 200 and table[-1, 1:].max() == 0  # dark red
    assert table[128].min() >= 250
    assert table[0, 2] < table[64, 2] and table[-1, 0] < table[192, 0]


def test_coldnhot_cold_black_hot():
    table = viz.colormap("coldnhot")
    assert _close(table[0], np.array([0, 255, 255]), tol=0)  # cyan
    assert table[127:129].max() <= 4  # black at zero
    assert _close(table[-1], np.array([255, 255, 0]), tol=0)  # yellow
    assert table[64, 2] > table[64, 0]  # negative side is blue-ish
    assert table[192, 0] > table[192, 2]  # positive side is red-ish


def test_gray_and_hot_endpoints():
    gray = viz.colormap("gray")
    assert gray[0].tolist() == [0, 0, 0] and gray[-1].tolist() == [255, 255, 255]
    assert np.all(gray[:, 0] == gray[:, 1]) and np.all(gray[:, 1] == gray[:, 2])
    hot = viz.colormap("hot")
    assert hot[0].tolist() == [0, 0, 0] and hot[-1].tolist() == [255, 255, 255]
    assert _close(hot[85], RED)
    # brightness increases monotonically for a sequential map
    assert np.all(np.diff(hot.astype(int).sum(axis=1)) >= 0)


def test_colormap_returns_fresh_array():
    table = viz.colormap("bwr")
    table[:] = 0
    assert viz.colormap("bwr")[0].tolist() == [0, 0, 255]


def test_unknown_colormap_lists_valid_names():
    with pytest.raises(ValueError, match="bwr.*seismic.*coldnhot.*gray.*hot.*Zennit.*matplotlib"):
        viz.colormap("no-such-map")


def test_matplotlib_colormaps_by_name_and_object():
    matplotlib = pytest.importorskip("matplotlib")
    table = viz.colormap("RdBu_r")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    np.testing.assert_array_equal(table, viz.colormap(matplotlib.colormaps["RdBu_r"]))
    expected = np.rint(np.asarray(matplotlib.colormaps["viridis"](np.linspace(0, 1, 256)))[:, :3] * 255)
    np.testing.assert_array_equal(viz.colormap("viridis"), expected)
    out = viz.heatmap(np.array([[-1.0, 0.0, 1.0]]), cmap="coolwarm")
    assert out.shape == (1, 3, 3)


# Zennit 0.5.1's ColorMap(spec).palette(), entries 0, 64, 128, 192, 255 (checked byte for
# byte on all 256 entries of these specifications against zennit.cmap.ColorMap)
_ZENNIT_PALETTES = {
    "00f,80:fff,f00": [[0, 0, 255], [127, 127, 255], [255, 255, 255], [255, 126, 126], [255, 0, 0]],
    "0ff,00f,80:000,f00,ff0,fff": [[0, 255, 255], [0, 0, 255], [0, 0, 0], [255, 133, 0], [255, 255, 255]],
    "10:f00,0f0,c0:00f": [[255, 0, 0], [115, 139, 0], [0, 185, 69], [0, 0, 255], [0, 0, 255]],
}


@pytest.mark.parametrize("spec", list(_ZENNIT_PALETTES))
def test_zennit_colormap_specifications(spec):
    table = viz.colormap(spec)
    assert table.shape == (256, 3)
    assert table[[0, 64, 128, 192, 255]].tolist() == _ZENNIT_PALETTES[spec]


def test_zennit_specification_positions_must_ascend():
    with pytest.raises(ValueError, match="ascend"):
        viz.colormap("80:f00,10:00f")


# --------------------------------------------------------------- normalize


def test_normalize_symmetric_zero_is_half():
    rel = np.array([[-2.0, 0.0, 1.0], [0.5, -1.0, 0.0]])
    out = viz.normalize(rel)
    assert out.shape == rel.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0, 1] == 0.5 and out[1, 2] == 0.5
    assert out[0, 0] == 0.0  # -max|R| -> 0
    assert out[0, 2] == pytest.approx(0.75)


def test_normalize_symmetric_percentile_clips():
    rel = np.concatenate([np.linspace(-1.0, 1.0, 99), [100.0]])
    out = viz.normalize(rel, percentile=90)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[-1] == 1.0
    # without clipping the outlier squashes everything near 0.5
    assert out[0] < 0.1
    assert viz.normalize(rel)[0] > 0.49


def test_normalize_non_symmetric_min_max():
    rel = np.array([2.0, 4.0, 6.0])
    np.testing.assert_allclose(viz.normalize(rel, symmetric=False), [0.0, 0.5, 1.0])


def test_normalize_constant_input_no_nan():
    zeros = np.zeros((4, 4))
    assert np.all(viz.normalize(zeros) == 0.5)
    assert np.all(viz.normalize(zeros, symmetric=False) == 0.0)
    assert np.all(viz.normalize(np.full((4, 4), 3.0), symmetric=False) == 0.0)
    # a percentile of zero (sparse map) falls back to max|R|, no NaN
    sparse = np.zeros(100)
    sparse[0] = 2.0
    out = viz.normalize(sparse, percentile=50)
    assert not np.isnan(out).any() and out[0] == 1.0 and out[1] == 0.5


def test_normalize_rejects_nan_and_bad_percentile():
    with pytest.raises(ValueError, match="NaN"):
        viz.normalize(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="percentile"):
        viz.normalize(np.ones(3), percentile=0)


# ----------------------------------------------------------------- heatmap


def _left_positive_right_negative(h: int = 8, w: int = 10) -> np.ndarray:
    rel = np.zeros((h, w))
    rel[:, : w // 2] = 1.0
    rel[:, w // 2 :] = -1.0
    return rel


def test_heatmap_left_red_right_blue():
    img = viz.heatmap(_left_positive_right_negative())
    assert img.shape == (8, 10, 3) and img.dtype == np.uint8
    assert np.all(img[:, :5] == RED)
    assert np.all(img[:, 5:] == BLUE)


def test_heatmap_zero_is_white_with_bwr():
    rel = np.zeros((3, 3))
    rel[0, 0], rel[2, 2] = 1.0, -1.0
    img = viz.heatmap(rel)
    assert img[1, 1].min() >= 250


def test_heatmap_maps_values_to_nearest_table_entry():
    ramp = np.linspace(0.0, 1.0, 256).reshape(1, 256)
    img = viz.heatmap(ramp, cmap="gray", symmetric=False)
    np.testing.assert_array_equal(img[0, :, 0], np.arange(256))


def test_heatmap_custom_table():
    table = np.array([[0, 255, 0], [255, 0, 255]], dtype=np.uint8)
    img = viz.heatmap(_left_positive_right_negative(), cmap=table)
    assert img[0, 0].tolist() == [255, 0, 255] and img[0, -1].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="uint8"):
        viz.heatmap(np.ones((2, 2)), cmap=table.astype(float))
    with pytest.raises(ValueError, match="shape"):
        viz.heatmap(np.ones((2, 2)), cmap=table[:, :2])


def test_heatmap_accepts_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    img = viz.heatmap(jnp.asarray(_left_positive_right_negative(), dtype=jnp.float32))
    np.testing.assert_array_equal(img, viz.heatmap(_left_positive_right_negative()))


def test_heatmap_channel_reductions():
    # pixels (channels last): zero, [1, -3] and [4, 0]
    rel = np.zeros((1, 3, 2))
    rel[0, 1] = [1.0, -3.0]
    rel[0, 2] = [4.0, 0.0]
    # sum: 0, -2, 4 -> white, half-way to blue, red
    summed = viz.heatmap(rel, reduce="sum")
    assert summed[0, 0].min() >= 250
    assert summed[0, 1, 2] == 255 and 120 <= summed[0, 1, 0] <= 136
    assert np.all(summed[0, 2] == RED)
    # abs_sum: 0, 4, 4 -> black, white, white
    abs_sum = viz.heatmap(rel, reduce="abs_sum", cmap="gray", symmetric=False)
    assert abs_sum[0, :, 0].tolist() == [0, 255, 255]
    # max_abs: 0, 3, 4 -> black, 3/4 gray, white
    max_abs = viz.heatmap(rel, reduce="max_abs", cmap="gray", symmetric=False)
    assert max_abs[0, :, 0].tolist() == [0, round(0.75 * 255), 255]


def test_heatmap_channel_axis_first():
    rel_last = np.stack([_left_positive_right_negative()] * 3, axis=-1)
    rel_first = np.moveaxis(rel_last, -1, 0)
    np.testing.assert_array_equal(
        viz.heatmap(rel_first, channel_axis=0), viz.heatmap(rel_last)
    )


def test_heatmap_unknown_reduction():
    with pytest.raises(ValueError, match="sum.*abs_sum.*max_abs"):
        viz.heatmap(np.ones((2, 2, 3)), reduce="mean")


def test_heatmap_rejects_1d_with_hint():
    with pytest.raises(ValueError, match=r"\(1, L\)"):
        viz.heatmap(np.ones(5))


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_heatmap_rejects_non_finite(bad, word):
    rel = np.ones((3, 3))
    rel[1, 1] = bad
    with pytest.raises(ValueError, match=f"non-finite.*{word}"):
        viz.heatmap(rel)


def test_heatmap_unknown_cmap():
    with pytest.raises(ValueError, match="valid names"):
        viz.heatmap(np.ones((2, 2)), cmap="nope")


# ----------------------------------------------------------------- overlay


def test_overlay_blends_grayscale_and_heatmap():
    image = np.zeros((8, 10, 3), dtype=np.uint8)  # black image
    rel = _left_positive_right_negative()
    out = viz.overlay(image, rel, alpha=0.5)
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 0, 0]  # half red over black
    assert out[0, -1].tolist() == [0, 0, 128]
    # alpha 0 is the grayscale image, alpha 1 the heatmap
    colour = np.zeros((8, 10, 3), dtype=np.uint8)
    colour[..., 0] = 255  # pure red image -> gray level 0.299 * 255
    gray = viz.overlay(colour, rel, alpha=0.0)
    assert np.all(gray == 76)
    np.testing.assert_array_equal(viz.overlay(colour, rel, alpha=1.0), viz.heatmap(rel))


def test_overlay_float_image_is_min_max_scaled():
    image = np.linspace(-3.0, 7.0, 21).reshape(3, 7)  # any range, 2-D
    out = viz.overlay(image, np.zeros((3, 7)), alpha=0.0)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[1, 3].tolist() == [128, 128, 128]  # 2.0 is half-way
    assert out[-1, -1].tolist() == [255, 255, 255]


def test_overlay_uint8_image_keeps_its_levels():
    image = np.full((2, 3), 100, dtype=np.uint8)  # not min-max scaled
    assert np.all(viz.overlay(image, np.zeros((2, 3)), alpha=0.0) == 100)
    white = np.full((2, 3, 3), 255, dtype=np.uint8)
    assert np.all(viz.overlay(white, np.zeros((2, 3)), alpha=0.0) == 255)


def test_overlay_shape_mismatch_and_alpha():
    with pytest.raises(ValueError, match="4x5"):
        viz.overlay(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(np.zeros((4, 5)), np.zeros((4, 5)), alpha=1.5)


# -------------------------------------------------------------------- grid


def _tile(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_grid_size_arithmetic():
    tiles = [_tile(4, 6, v) for v in (10, 20, 30, 40, 50)]
    out = viz.grid(tiles, ncols=3, pad=2)
    # 2 rows x 3 cols, padding between cells and around the border
    assert out.shape == (2 * 4 + 3 * 2, 3 * 6 + 4 * 2, 3)
    assert out.dtype == np.uint8
    assert np.all(out[2:6, 2:8] == 10)  # first tile after the pad
    assert np.all(out[2:6, 10:16] == 20)
    assert np.all(out[8:12, 10:16] == 50)
    assert np.all(out[8:12, 18:24] == 255)  # empty cell is background
    assert np.all(out[:2] == 255)


def test_grid_default_columns_and_scale():
    tiles = [_tile(3, 3, 0)] * 4
    out = viz.grid(tiles, pad=1, scale=4)  # 2x2 grid of 12x12 tiles
    assert out.shape == (2 * 12 + 3, 2 * 12 + 3, 3)
    assert np.all(out[1:13, 1:13] == 0)


def test_grid_pads_different_sizes_and_grayscale():
    small = np.full((2, 2), 7, dtype=np.uint8)  # grayscale (H, W)
    big = _tile(6, 4, 9)
    out = viz.grid([small, big], pad=0, background=(1, 2, 3))
    assert out.shape == (6, 8, 3)
    assert np.all(out[2:4, 1:3] == 7)  # centred in its 6x4 cell
    assert out[0, 0].tolist() == [1, 2, 3]
    assert np.all(out[:, 4:] == 9)


def test_grid_titles_add_band_and_draw_text():
    pytest.importorskip("PIL")
    tiles = [_tile(20, 40, 200), _tile(20, 40, 200)]
    plain = viz.grid(tiles, ncols=2, pad=2)
    titled = viz.grid(tiles, titles=["a", "relevance"], ncols=2, pad=2)
    assert titled.shape[1] == plain.shape[1]
    band = titled.shape[0] - plain.shape[0]
    assert band > 0
    # dark text pixels in each title's band; the background stays white
    assert titled[2 : 2 + band, 2:42].min() < 128
    assert titled[2 : 2 + band, 44:84].min() < 128
    assert np.all(titled[:2] == 255)
    # tiles are shifted down by the band, unchanged
    np.testing.assert_array_equal(titled[2 + band : 22 + band, 2:42], tiles[0])


def test_grid_titles_length_mismatch():
    with pytest.raises(ValueError, match="2 titles for 3 images"):
        viz.grid([_tile(2, 2, 0)] * 3, titles=["a", "b"])


def test_grid_rejects_empty_and_float_images():
    with pytest.raises(ValueError, match="at least one"):
        viz.grid([])
    with pytest.raises(ValueError, match="uint8"):
        viz.grid([np.zeros((2, 2, 3))])


# ---------------------------------------------------------------- save_png


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7)])
def test_save_png_round_trip(tmp_path, shape):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    target = tmp_path / "nested" / "dir" / "out.png"
    written = viz.save_png(str(target), image)
    assert written == target and target.is_file()
    with Image.open(target) as loaded:
        assert loaded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(loaded), image)


def test_save_png_rejects_float(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        viz.save_png(tmp_path / "x.png", np.zeros((2, 2, 3)))


# ----------------------------------------------------------- sequence_plot


def _one_hot(sequence: str) -> np.ndarray:
    return np.eye(4)[["ACGT".index(c) for c in sequence]]


def _colour_mask(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.all(image == colour, axis=-1)


def test_sequence_plot_shape_dtype_and_default_width():
    image = viz.sequence_plot(np.linspace(-1.0, 1.0, 30))
    assert image.dtype == np.uint8 and image.shape == (100, 240, 3)
    assert viz.sequence_plot(np.ones(5)).shape == (100, 120, 3)  # at least 120
    assert viz.sequence_plot(np.ones(1000)).shape == (100, 1600, 3)  # at most 1600
    assert viz.sequence_plot(np.ones(7), width=33, height=21).shape == (21, 33, 3)


def test_sequence_plot_bars_red_above_blue_below():
    relevance = np.array([1.0, -1.0, 0.0, 0.5])
    image = viz.sequence_plot(relevance, width=40, height=41)
    red, blue = _colour_mask(image, RED), _colour_mask(image, BLUE)
    zero = 20  # the grey zero line sits in the middle
    assert np.all(image[zero] == 150)
    # position 0 (columns 0..9, the last one a gap): full red bar above
    assert red[1:zero, 0:9].all() and not red[zero:, :10].any()
    assert not red[:, 9].any()
    # position 1: full blue bar below, nothing above
    assert blue[zero + 1 : 40, 10:19].all() and not blue[:zero, 10:20].any()
    # position 2: nothing but the zero line
    assert np.all(image[np.arange(41) != zero, 20:30] == 255)
    # position 3: a red bar half as tall as position 0
    height = red[:, 30].sum()
    assert abs(height - red[:, 0].sum() / 2) <= 1
    assert not blue.any(axis=0)[[0, 2, 3]].any()


def test_sequence_plot_sums_one_hot_channels():
    relevance = _one_hot("ACGT") * np.array([[1.0], [-2.0], [0.5], [2.0]])
    summed = viz.sequence_plot(relevance.sum(axis=1), width=40, height=40)
    per_channel = viz.sequence_plot(relevance, width=40, height=40)
    np.testing.assert_array_equal(per_channel, summed)


def test_sequence_plot_per_base_tracks():
    relevance = np.zeros((3, 4))
    relevance[0, 0] = 1.0  # A track, position 0, positive
    relevance[2, 3] = -1.0  # T track, position 2, negative
    image = viz.sequence_plot(relevance, per_base=True, width=70, height=80)
    assert image.shape == (80, 70, 3)
    red, blue = _colour_mask(image, RED), _colour_mask(image, BLUE)
    rows_red, cols_red = np.nonzero(red)
    rows_blue, cols_blue = np.nonzero(blue)
    assert rows_red.max() < 20 and cols_red.max() < 10 + 20  # A track, first bar
    assert rows_blue.min() >= 60 and cols_blue.min() >= 10 + 40  # T track, last bar
    # base labels in the gutter
    assert image[:, :10].min() < 128


def test_sequence_plot_letters_under_bars():
    relevance = np.array([1.0, -1.0, 0.5, 0.0, 0.2])
    plain = viz.sequence_plot(relevance, width=100, height=60)
    lettered = viz.sequence_plot(relevance, "ACGTN", width=100, height=60)
    assert not np.array_equal(plain, lettered)
    # the letters are dark grey, in a band below the lowest bar
    bars = _colour_mask(lettered, RED) | _colour_mask(lettered, BLUE)
    dark = (lettered.max(axis=-1) < 100) & ~bars
    lowest_bar = np.flatnonzero(bars.any(axis=1)).max()
    letter_rows = np.flatnonzero(dark.any(axis=1))
    assert letter_rows.size and letter_rows.min() > lowest_bar
    band = dark[lowest_bar + 1 :]
    for i in range(5):
        assert band[:, 20 * i : 20 * i + 20].any()
    # a one-hot sequence gives the same picture as the string
    np.testing.assert_array_equal(
        viz.sequence_plot(relevance, _one_hot("ACGT").tolist() + [[0, 0, 0, 0]],
                          width=100, height=60),
        lettered,
    )


def test_sequence_plot_skips_letters_that_do_not_fit():
    relevance = np.linspace(-1, 1, 50)
    image = viz.sequence_plot(relevance, "A" * 50, width=100, height=60)
    plain = viz.sequence_plot(relevance, width=100, height=60)
    np.testing.assert_array_equal(image, plain)


def test_sequence_plot_mask_shading():
    relevance = np.zeros(4)
    mask = np.array([False, True, True, False])
    image = viz.sequence_plot(relevance, mask=mask, width=40, height=30)
    shade = _colour_mask(image, np.array([255, 226, 140]))
    assert shade[:, 10:30].sum(axis=0).min() >= 28  # all but the zero line
    assert not shade[:, :10].any() and not shade[:, 30:].any()


def test_sequence_plot_narrow_image_keeps_peaks():
    relevance = np.zeros(1000)
    relevance[333] = 1.0
    relevance[777] = -0.5
    image = viz.sequence_plot(relevance, width=100, height=50)
    red_columns = np.flatnonzero(_colour_mask(image, RED).any(axis=0))
    blue_columns = np.flatnonzero(_colour_mask(image, BLUE).any(axis=0))
    assert red_columns.tolist() == [33] and blue_columns.tolist() == [77]


def test_sequence_plot_custom_cmap_ends():
    table = viz.colormap("coldnhot")
    image = viz.sequence_plot(np.array([1.0, -1.0]), width=20, height=20, cmap=table)
    assert _colour_mask(image, table[-1]).any() and _colour_mask(image, table[0]).any()


@pytest.mark.parametrize(
    "relevance, kwargs, message",
    [
        (np.zeros((5, 3)), {}, r"\(L, 4\)"),
        (np.zeros((2, 5, 4)), {}, "batch axis"),
        (np.array([0.0, np.nan]), {}, "NaN"),
        (np.array([]), {}, "empty"),
        (np.zeros(5), {"per_base": True}, "per_base"),
        (np.zeros(5), {"sequence": "ACG"}, "length 3"),
        (np.zeros(5), {"sequence": np.zeros((5, 3))}, "one-hot"),
        (np.zeros(5), {"mask": np.zeros(4, bool)}, "mask"),
        (np.zeros(5), {"width": 0}, "width"),
        (np.zeros(5), {"height": 4}, "height"),
        (np.zeros((5, 4)), {"per_base": True, "height": 20}, "height"),
        (np.zeros(5), {"mask_color": (0, 0)}, "mask_color"),
        (np.zeros(5), {"cmap": "no-such-map"}, "unknown colour map"),
        (np.zeros(5), {"percentile": 0.0}, "percentile"),
    ],
)
def test_sequence_plot_errors(relevance, kwargs, message):
    with pytest.raises(ValueError, match=message):
        viz.sequence_plot(relevance, **kwargs)


# ------------------------------------------------------- relevance_figure


def test_relevance_figure_rows_labels_and_shared_scale(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 8, 1))
    rows = {"small": 0.01 * x, "a rather long method name": 100.0 * x}
    fig = viz.relevance_figure(x, rows, column_titles=["a / a", "b / c", "d / d"],
                               header="titles: true / predicted", percentile=100)
    axes = fig.axes
    assert len(axes) == 3 * 4  # 3 rows (input + 2 methods) x (3 images + colour bar)
    # each method row is labelled once, on its first image; the others carry no label
    assert [ax.get_ylabel() for ax in axes].count("relevance") == 2  # the colour bars' label
    labels = [ax.get_ylabel() for ax in axes if ax.get_ylabel() not in ("", "relevance")]
    assert labels[0] == "input" and labels[1] == "small" and "long" in labels[2]
    assert len(labels) == 3
    # one symmetric colour scale per row, shared by its images
    images = [ax.images[0] for ax in axes if ax.images and ax.get_label() != "<colorbar>"]
    row2 = [im.get_clim() for im in images[3:6]]
    row3 = [im.get_clim() for im in images[6:9]]
    bound = float(np.abs(0.01 * x).max())
    assert all(c == pytest.approx((-bound, bound)) for c in row2)
    assert row3[0][1] == pytest.approx(1e4 * bound)
    assert fig.get_suptitle() == "titles: true / predicted"
    path = viz.save_figure(tmp_path / "sub" / "fig.png", fig)
    Image = pytest.importorskip("PIL.Image")
    with Image.open(path) as img:
        assert img.size[0] > 300 and img.size[1] > 300


def test_relevance_figure_reduces_channels_and_checks_shapes():
    pytest.importorskip("matplotlib")
    x = np.zeros((2, 4, 4, 3))
    fig = viz.relevance_figure(x, {"m": np.ones((2, 4, 4, 3))})
    assert len(fig.axes) == 2 * 3
    with pytest.raises(ValueError, match="shape"):
        viz.relevance_figure(x, {"m": np.ones((2, 5, 4))})
    with pytest.raises(ValueError, match="column titles"):
        viz.relevance_figure(x, {"m": np.ones((2, 4, 4))}, column_titles=["a"])
    with pytest.raises(ValueError, match="at least one row"):
        viz.relevance_figure(x, {})
    with pytest.raises(ValueError, match="NaN"):
        viz.relevance_figure(x, {"m": np.full((2, 4, 4), np.nan)})


def test_grid_row_labels_band_on_the_left():
    pytest.importorskip("PIL")
    tiles = [_tile(10, 10, 100)] * 4
    plain = viz.grid(tiles, ncols=2, pad=2)
    labelled = viz.grid(tiles, ncols=2, pad=2, row_labels=["input", "EpsilonPlusFlat"])
    assert labelled.shape[0] == plain.shape[0]
    band = labelled.shape[1] - plain.shape[1]
    assert band > 20
    np.testing.assert_array_equal(labelled[:, band:], plain)  # tiles unchanged, shifted right
    assert labelled[:, :band].min() < 128  # dark text in the band
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        viz.grid(tiles, ncols=2, row_labels=["a"])


# ------------------------------------------------- overlays, files, tokens, figures


def test_overlay_magnitude_weighting_keeps_light_images_readable():
    white = np.full((4, 4, 3), 255, dtype=np.uint8)
    rel = np.zeros((4, 4))
    rel[0, 0], rel[0, 1] = 1.0, 0.5
    out = viz.overlay(white, rel, alpha=1.0)
    assert out[0, 0].tolist() == [255, 0, 0]  # strongest: the full colour
    assert out[3, 3].tolist() == [255, 255, 255]  # no relevance: the image
    uniform = viz.overlay(white, rel, alpha=0.5, weight="uniform")
    assert uniform[0, 0].tolist() == [255, 127, 127]  # the old 50/50 blend washes out
    with pytest.raises(ValueError, match="weight"):
        viz.overlay(white, rel, weight="loud")


def test_save_png_refuses_another_suffix_and_save_image_writes_it(tmp_path):
    from PIL import Image

    image = viz.heatmap(np.linspace(-1, 1, 12).reshape(3, 4))
    with pytest.raises(ValueError, match="save_image"):
        viz.save_png(tmp_path / "h.jpg", image)
    written = viz.save_image(tmp_path / "sub" / "h.jpg", image, quality=95)
    with Image.open(written) as im:
        assert im.format == "JPEG" and im.size == (4, 3)
    with pytest.raises(ValueError, match="suffix"):
        viz.save_image(tmp_path / "h.unknown", image)


def test_token_heatmap_and_html():
    tokens = ["\u2581The", "\u2581cat", "<&>"]
    rel = np.array([0.0, 2.0, -2.0])
    image = viz.token_heatmap(tokens, rel, width=200)
    assert image.dtype == np.uint8 and image.shape[1] == 200 and image.shape[2] == 3
    reds = np.all(image == [255, 0, 0], axis=-1).sum()
    blues = np.all(image == [0, 0, 255], axis=-1).sum()
    assert reds > 50 and blues > 50  # both extremes drawn
    html_text = viz.token_html(tokens, rel[:, None] * np.ones((1, 4)))  # (L, D) summed over D
    assert "&lt;&amp;&gt;" in html_text and " cat" in html_text and "rgb(255,0,0)" in html_text
    with pytest.raises(ValueError, match="2 tokens"):
        viz.token_html(tokens[:2], rel)


def test_token_heatmap_wraps_long_sequences():
    tokens = [f" word{i}" for i in range(40)]
    image = viz.token_heatmap(tokens, np.linspace(-1, 1, 40), width=160)
    assert image.shape[0] > 100  # several lines


@pytest.mark.parametrize("suffix", [".pdf", ".svg"])
def test_relevance_figure_vector_output_with_colorbar_label(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    x = np.random.default_rng(0).normal(size=(2, 6, 6))
    fig = viz.relevance_figure(x, {"LRP": x}, cmap="00f,80:fff,f00", colorbar_label="R")
    assert fig.axes[-1].get_ylabel() == "R"
    path = viz.save_figure(tmp_path / f"fig{suffix}", fig)
    head = path.read_bytes()[:5]
    assert head == b"%PDF-" if suffix == ".pdf" else b"<?xml" in path.read_bytes()[:100]
