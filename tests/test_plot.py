"""roialign_cy.plot draws exactly what roi_align and roi_pool read: the drawn sampling points
against torchvision's formula (written here) and against roi_align itself on maps whose
values reveal the coordinates; the taps and their weights; RoIPool's bins against roi_pool's
arg-max; the PNGs; and the optional dependency (matplotlib) never imported by the package."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from reference import quantized_bins, sample_grid

import roialign_cy
from roialign_cy import _sampling_grid

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot():
    """roialign_cy.plot on the Agg backend (skips without matplotlib)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from roialign_cy import plot

    return plot


def new_axes(n=1):
    """Fresh axes on a Figure of their own (no pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure()
    axes = [figure.add_subplot(1, n, i + 1) for i in range(n)]
    return axes[0] if n == 1 else axes


def artist(ax, gid):
    """The one artist (collection, patch or text) of ax with this gid."""
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, (gid, found)
    return found[0]


def drawn_points(ax):
    """(N, 2) x, y of every drawn sampling point, and whether each is filled (inside)."""
    samples = artist(ax, "samples")
    faces = samples.get_facecolors()
    return np.asarray(samples.get_offsets(), dtype=np.float64), faces[:, 3] > 0


# ---- torchvision's formula, written out (SEMANTICS.md), float64: the coordinates here; the taps
# and RoIPool's bins from tests/reference.py -------------------------------------------------


def reference_samples(box, scale, pooled, sampling_ratio, aligned):
    """(y (PH, grid_h), x (PW, grid_w), count): torchvision's sample coordinates."""
    offset = 0.5 if aligned else 0.0
    start_x, start_y = box[0] * scale - offset, box[1] * scale - offset
    end_x, end_y = box[2] * scale - offset, box[3] * scale - offset
    roi_w, roi_h = end_x - start_x, end_y - start_y
    if not aligned:  # legacy: at least 1x1
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    ph, pw = pooled
    bin_h, bin_w = roi_h / ph, roi_w / pw
    grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / ph), 0)
    grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / pw), 0)
    y = np.array([[start_y + p * bin_h + (i + 0.5) * bin_h / grid_h for i in range(grid_h)]
                  for p in range(ph)]).reshape(ph, grid_h)
    x = np.array([[start_x + p * bin_w + (i + 0.5) * bin_w / grid_w for i in range(grid_w)]
                  for p in range(pw)]).reshape(pw, grid_w)
    return y, x, max(grid_h * grid_w, 1)


def random_case(rng):
    """A random figure's arguments: small maps, boxes inside, across and outside them."""
    height, width = (int(v) for v in rng.integers(1, 12, 2))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 16]))
    x1, x2 = np.sort(rng.uniform(-4, width + 4, 2)) / scale
    y1, y2 = np.sort(rng.uniform(-4, height + 4, 2)) / scale
    box = [x1, y1, x2, y2]
    if rng.random() < 0.15:  # inverted or degenerate
        box = [x2, y1, x1, y1]
    pooled = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    sampling_ratio = int(rng.choice([-1, 0, 1, 2, 3]))
    aligned = bool(rng.random() < 0.5)
    return (height, width), [float(v) for v in box], pooled, scale, sampling_ratio, aligned


CASES = [random_case(np.random.default_rng(seed)) for seed in range(40)]
CASES.append(((5, 5), [1.0, 4.0, 4.0, 4.0], (4, 4), 1.0, 2, False))  # the seed example


@pytest.mark.parametrize("case", CASES)
def test_drawn_points_are_torchvisions_samples(plot, case):
    map_size, box, pooled, scale, sampling_ratio, aligned = case
    ax = plot.sampling_figure(map_size, box, pooled, scale, sampling_ratio, aligned,
                              ax=new_axes())
    points, filled = drawn_points(ax)
    y, x, _ = reference_samples(box, scale, pooled, sampling_ratio, aligned)
    (ph, grid_h), (pw, grid_w) = y.shape, x.shape
    expected = np.empty((ph, pw, grid_h, grid_w, 2))
    expected[..., 0] = x[None, :, None, :]
    expected[..., 1] = y[:, None, :, None]
    np.testing.assert_array_equal(points, expected.reshape(-1, 2))
    height, width = map_size
    inside = ((expected[..., 1] >= -1) & (expected[..., 1] <= height)
              & (expected[..., 0] >= -1) & (expected[..., 0] <= width))
    np.testing.assert_array_equal(filled, inside.ravel())


@pytest.mark.parametrize("case", CASES)
def test_roi_align_of_coordinate_maps_is_the_mean_of_the_drawn_points(plot, case):
    """roi_align of a map whose value is the column (row) index: each bin is the mean over its
    drawn samples of x (y) clamped to the map, 0 for a sample outside [-1, W] x [-1, H]."""
    map_size, box, pooled, scale, sampling_ratio, aligned = case
    height, width = map_size
    ax = plot.sampling_figure(map_size, box, pooled, scale, sampling_ratio, aligned,
                              ax=new_axes())
    points, inside = drawn_points(ax)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    features = np.stack([cols, rows])[np.newaxis]  # (1, 2, H, W)
    pooled_out = roialign_cy.roi_align(features, np.array([[0.0] + box]), pooled, scale,
                                       sampling_ratio, aligned)
    _, _, count = reference_samples(box, scale, pooled, sampling_ratio, aligned)
    ph, pw = pooled
    value = np.where(inside[:, None],
                     np.clip(points, 0, [width - 1, height - 1]), 0.0)
    per_bin = value.reshape(ph, pw, -1, 2).sum(axis=2) / count
    np.testing.assert_allclose(pooled_out[0, 0], per_bin[..., 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pooled_out[0, 1], per_bin[..., 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_taps_are_torchvisions_and_weights_sum_to_one(case):
    map_size, box, pooled, scale, sampling_ratio, aligned = case
    height, width = map_size
    samples = _sampling_grid.roi_align_samples(np.array(box), scale, aligned, *pooled,
                                               sampling_ratio, height, width)
    bins, _ = sample_grid(box, scale, pooled, sampling_ratio, aligned, height, width)
    grid_w = samples["inside"].shape[3]
    for index in np.ndindex(samples["inside"].shape):
        ph, pw, iy, ix = index
        rows, cols = samples["tap_rows"][index], samples["tap_cols"][index]
        weights = samples["tap_weights"][index]
        taps = bins[ph, pw][iy * grid_w + ix]
        if not samples["inside"][index]:
            assert taps is None
            assert rows.tolist() == cols.tolist() == [-1] * 4 and not weights.any()
            continue
        assert list(zip(rows.tolist(), cols.tolist(), weights.tolist())) == taps
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).all()


def test_float32_geometry_is_roi_aligns_float32_geometry():
    """The compiled module evaluates in the box's dtype, as the kernels do in the features'."""
    box = np.array([3.3, 1.7, 40.1, 29.9], np.float32)
    scale = 1 / 8
    samples = _sampling_grid.roi_align_samples(box, scale, True, 3, 2, 2, 6, 7)
    assert samples["x"].dtype == samples["tap_weights"].dtype == np.float32
    f = np.float32
    start = box[0] * f(scale) - f(0.5)
    bin_w = ((box[2] * f(scale) - f(0.5)) - start) / f(2)
    x = [[start + f(p) * bin_w + f(i + 0.5) * bin_w / f(2) for i in range(2)] for p in range(2)]
    np.testing.assert_array_equal(samples["x"], np.array(x, np.float32))
    rows, cols = np.mgrid[0:6, 0:7].astype(np.float32)
    pooled = roialign_cy.roi_align(cols[None, None], np.concatenate([[0], box])[None], (3, 2),
                                   scale, 2, True)
    np.testing.assert_allclose(pooled[0, 0], np.repeat(samples["x"].mean(axis=1)[None], 3, 0),
                               rtol=1e-6)


def test_chosen_sample_taps_and_weight_labels(plot):
    ax = plot.sampling_figure((6, 6), [22, 13, 68, 61], 2, 1 / 16, sample=(1, 0, 0, 1),
                              ax=new_axes())
    samples = _sampling_grid.roi_align_samples(np.array([22.0, 13, 68, 61]), 1 / 16, False, 2,
                                               2, 2, 6, 6)
    taps = np.asarray(artist(ax, "taps").get_offsets())
    np.testing.assert_array_equal(taps[:, 0], samples["tap_cols"][1, 0, 0, 1])
    np.testing.assert_array_equal(taps[:, 1], samples["tap_rows"][1, 0, 0, 1])
    chosen = np.asarray(artist(ax, "chosen-sample").get_offsets())[0]
    assert chosen.tolist() == [samples["x"][0, 1], samples["y"][1, 0]]
    labels = [t for t in ax.texts if t.get_gid() == "tap-weight"]
    assert len(labels) == 4  # inside the map: 4 distinct taps
    assert sum(float(t.get_text()) for t in labels) == pytest.approx(1.0, abs=2e-4)


def test_clamped_taps_share_a_label(plot):
    """The seed example: every sample on the last row, its two lower taps clamped onto it."""
    ax = plot.sampling_figure((5, 5), [1.0, 4.0, 4.0, 4.0], 4, ax=new_axes())
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "tap-weight"]
    assert len(labels) == 2 and all(" + " in text for text in labels)
    assert sum(float(w) for text in labels for w in text.split(" + ")) == pytest.approx(1.0)
    assert (np.asarray(artist(ax, "taps").get_offsets())[:, 1] == 4).all()


def test_sample_selection(plot):
    args = ((6, 6), [22, 13, 68, 61], 2, 1 / 16)

    def chosen(sample):
        ax = plot.sampling_figure(*args, sample=sample, ax=new_axes())
        return np.asarray(artist(ax, "chosen-sample").get_offsets()).tolist()

    first = chosen(None)
    assert first == chosen(0) == chosen((0, 0, 0, 0)) == chosen(-16)
    assert chosen(15) == chosen((1, 1, 1, 1)) == chosen(-1)
    assert chosen(6) == chosen((0, 1, 1, 0)) == chosen(np.int64(6))
    for bad in (16, -17, (0, 0, 0, 2), (2, 0, 0, 0), (0, 0, 0)):
        with pytest.raises(ValueError, match="sample"):
            chosen(bad)
    with pytest.raises(TypeError, match="sample"):
        chosen(1.5)


def test_outside_sample_is_hollow_and_has_no_taps(plot):
    ax = plot.sampling_figure((4, 4), [-6.0, -6.0, 2.0, 2.0], 2, sample=0, ax=new_axes())
    _, filled = drawn_points(ax)
    assert not filled[0] and filled.any()
    assert not [a for a in ax.get_children() if a.get_gid() == "taps"]
    assert "contributes 0" in artist(ax, "tap-weight").get_text()


def test_empty_grid_draws_no_samples(plot):
    """An inverted box with aligned=True and the adaptive grid: no sampling point at all."""
    ax = plot.sampling_figure((4, 4), [3.0, 3.0, 1.0, 1.0], 2, 1.0, 0, True, ax=new_axes())
    points, _ = drawn_points(ax)
    assert points.shape == (0, 2)
    assert not [a for a in ax.get_children() if a.get_gid() == "chosen-sample"]


@pytest.mark.parametrize("case", CASES)
def test_pool_bins_are_roi_pools(plot, case):
    map_size, box, pooled, scale, sampling_ratio, aligned = case
    height, width = map_size
    pool_ax, align_ax = plot.pooling_comparison(map_size, box, pooled, scale, sampling_ratio,
                                                aligned, axes=new_axes(2))
    assert align_ax.get_gid() is None and artist(align_ax, "samples") is not None
    ph, pw = pooled
    ys = quantized_bins(box[1], box[3], scale, ph, height, np.float64)
    xs = quantized_bins(box[0], box[2], scale, pw, width, np.float64)
    expected = [(x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0) for y0, y1 in ys for x0, x1 in xs
                if y1 > y0 and x1 > x0]
    drawn = [(r.get_x(), r.get_y(), r.get_width(), r.get_height())
             for r in pool_ax.patches if r.get_gid() == "roi_pool-bin"]
    assert drawn == expected
    # roi_pool's own arg-max on maps increasing (decreasing) in y * W + x: each bin's last
    # (first) pixel, so its corners.
    rising = np.arange(height * width, dtype=np.float64).reshape(1, 1, height, width)
    boxes = np.array([[0.0] + box])
    _, last = roialign_cy.roi_pool(rising, boxes, pooled, scale, return_argmax=True)
    _, first = roialign_cy.roi_pool(-rising, boxes, pooled, scale, return_argmax=True)
    found = [(f % width - 0.5, f // width - 0.5, (l % width) - (f % width) + 1,
              (l // width) - (f // width) + 1)
             for f, l in zip(first.ravel().tolist(), last.ravel().tolist()) if f >= 0]
    assert found == expected


def test_bad_arguments_are_named(plot):
    good = dict(map_size=(5, 5), box=[1, 1, 3, 3], output_size=2)
    bad = [
        (dict(map_size=5), ValueError, "map_size"),
        (dict(map_size=(0, 5)), ValueError, "map_size"),
        (dict(map_size=(5, 2.5)), TypeError, "map_size"),
        (dict(box=[1, 2, 3]), ValueError, "box"),
        (dict(box=[[1, 2, 3, 4]]), ValueError, "box"),
        (dict(box=[1, 2, np.nan, 4]), ValueError, "box"),
        (dict(box=["a", "b", "c", "d"]), TypeError, "box"),
        (dict(output_size=0), ValueError, "output_size"),
        (dict(output_size=(2, 2, 2)), ValueError, "output_size"),
        (dict(spatial_scale=-1.0), ValueError, "spatial_scale"),
        (dict(spatial_scale="1"), TypeError, "spatial_scale"),
        (dict(sampling_ratio=2.0), TypeError, "sampling_ratio"),
        (dict(aligned="yes"), TypeError, "aligned"),
        (dict(output_size=50, sampling_ratio=3), ValueError, "sampling_ratio"),
        (dict(ax="axes"), TypeError, "ax"),
    ]
    for change, error, name in bad:
        with pytest.raises(error, match=name):
            plot.sampling_figure(**{**good, **change})
        if "ax" not in change:
            with pytest.raises(error, match=name):
                plot.pooling_comparison(**{**good, **change}, axes=new_axes(2))
    with pytest.raises(TypeError, match="axes"):
        plot.pooling_comparison(**good, axes=[new_axes()])


def test_signatures_are_the_documented_ones(plot):
    import inspect

    assert list(inspect.signature(plot.sampling_figure).parameters) == [
        "map_size", "box", "output_size", "spatial_scale", "sampling_ratio", "aligned",
        "sample", "ax"]
    assert list(inspect.signature(plot.pooling_comparison).parameters) == [
        "map_size", "box", "output_size", "spatial_scale", "sampling_ratio", "aligned", "axes"]


def is_png(path):
    with open(path, "rb") as f:
        return os.path.getsize(path) > 1000 and f.read(8) == PNG_HEADER


def test_new_figures_and_png(plot, tmp_path):
    """Without ax/axes the functions make their own figure (pyplot), which saves as PNG."""
    import matplotlib.pyplot as plt

    ax = plot.sampling_figure((6, 6), [22, 13, 68, 61], 2, 1 / 16)
    ax.figure.savefig(tmp_path / "figure3.png", dpi=60)
    pool_ax, align_ax = plot.pooling_comparison((7, 7), [22, 13, 68, 61], 3, 1 / 16)
    assert pool_ax.figure is align_ax.figure
    pool_ax.figure.savefig(tmp_path / "comparison.png", dpi=60)
    plt.close("all")
    assert is_png(tmp_path / "figure3.png") and is_png(tmp_path / "comparison.png")


def run_python(code, *args, cwd=None):
    """Run code in a fresh interpreter (Agg backend), return the CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_demo_writes_the_seed_figure(plot, tmp_path):
    path = tmp_path / "seed.png"
    result = subprocess.run([sys.executable, "-m", "roialign_cy", "--figure", str(path)],
                            cwd=tmp_path, env=dict(os.environ, MPLBACKEND="Agg"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "92.75" in result.stdout and f"wrote {path}" in result.stdout
    assert is_png(path)


# ---- without matplotlib (these run whether or not it is installed) ---------------------------

NO_MATPLOTLIB = "import sys\nsys.modules['matplotlib'] = None  # as if not installed\n"


def test_package_and_demo_never_import_matplotlib(tmp_path):
    result = run_python("""
        import runpy, sys
        import roialign_cy
        assert "matplotlib" not in sys.modules, "import roialign_cy imported matplotlib"
        sys.argv = ["roialign_cy"]
        runpy.run_module("roialign_cy", run_name="__main__")
        assert "matplotlib" not in sys.modules, "the demo imported matplotlib"
        print("no matplotlib")
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("no matplotlib")


def test_plot_without_matplotlib_names_the_extra(tmp_path):
    result = run_python(NO_MATPLOTLIB + textwrap.dedent("""
        try:
            import roialign_cy.plot
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("imported without matplotlib")
    """), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'pip install "roialign-cy[plot]"' in result.stdout
    assert "matplotlib" in result.stdout


def test_demo_figure_without_matplotlib_says_so(tmp_path):
    result = run_python(NO_MATPLOTLIB + textwrap.dedent("""
        import runpy
        sys.argv = ["roialign_cy", "--figure", "seed.png"]
        runpy.run_module("roialign_cy", run_name="__main__")
    """), cwd=tmp_path)
    assert result.returncode == 1
    assert 'pip install "roialign-cy[plot]"' in result.stderr
    assert "92.75" in result.stdout and not (tmp_path / "seed.png").exists()
