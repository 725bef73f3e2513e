"""What RoIAlign fixes: RoIPool's quantization does not follow sub-pixel motion, RoIAlign does.

A smooth 64x64 map is shifted analytically by a fraction of a pixel and the boxes by the same
amount (spatial_scale 1, so image pixels are feature pixels). Ideally the pooled features do
not change at all. RoIAlign's only change is the difference of two bilinear interpolation
errors; RoIPool rounds the boxes to whole pixels, so it sees the content move under it.
"""

import numpy as np
import pytest

from roialign_cy import roi_align, roi_pool

SIZE = 64


def smooth_map(kind, shift):
    """A (1, 1, 64, 64) float64 map f(y - shift, x - shift): its content moved by +shift px."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    y, x = y - shift, x - shift
    if kind == "gaussian":
        values = np.exp(-((y - 30.0) ** 2 + (x - 34.0) ** 2) / (2 * 8.0**2))
    else:  # a 2-D sinusoid, wavelengths 24 and 32 px
        values = np.sin(2 * np.pi * x / 24) * np.cos(2 * np.pi * y / 32)
    return values[np.newaxis, np.newaxis]


def interior_boxes(n_boxes=60, seed=0):
    """(K, 5) boxes of 8..24 px, kept 8 px inside the map even after a 2 px shift."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(8, 30, (n_boxes, 2))
    return np.column_stack([np.zeros(n_boxes), corner, corner + rng.uniform(8, 24, (n_boxes, 2))])


def pooled_change(kind, shift, pool):
    """|pool(moved map, moved boxes) - pool(map, boxes)| for every output element."""
    boxes = interior_boxes()
    moved = boxes.copy()
    moved[:, 1:] += shift
    return np.abs(pool(smooth_map(kind, shift), moved) - pool(smooth_map(kind, 0.0), boxes))


def align_avg(features, boxes):
    """RoIAlign 7x7, 2x2 samples per bin, pixel-centre convention."""
    return roi_align(features, boxes, 7, 1.0, 2, True)


def align_max(features, boxes):
    """RoIAlign 7x7, max of an adaptive grid of samples."""
    return roi_align(features, boxes, 7, 1.0, -1, True, mode="max")


def pool_7x7(features, boxes):
    """RoIPool 7x7."""
    return roi_pool(features, boxes, 7, 1.0)


@pytest.mark.parametrize("align", [align_avg, align_max], ids=["avg", "max"])
@pytest.mark.parametrize("shift", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("kind", ["gaussian", "sinusoid"])
def test_roialign_follows_subpixel_shift_roipool_does_not(kind, shift, align):
    """Both maps have amplitude 1. Measured (0.3 px, gaussian): RoIAlign changes by about
    2e-3 at most and 2e-4 on average, RoIPool by about 7e-2 and 2e-2."""
    align_change = pooled_change(kind, shift, align)
    pool_change = pooled_change(kind, shift, pool_7x7)
    assert pool_change.mean() > 0.01  # RoIPool really moves: it does not follow
    assert align_change.mean() < 0.005  # RoIAlign hardly does
    assert align_change.mean() < 0.05 * pool_change.mean()
    assert align_change.max() < 0.2 * pool_change.max()


@pytest.mark.parametrize("shift", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["gaussian", "sinusoid"])
def test_whole_pixel_shift_is_followed_by_both(kind, shift):
    """The control: a whole-pixel shift moves RoIPool's grid with the content, so both follow
    (RoIPool exactly), which is what makes the sub-pixel failure a quantization effect."""
    np.testing.assert_array_equal(pooled_change(kind, shift, pool_7x7), 0)
    assert pooled_change(kind, shift, align_avg).max() < 1e-12
    assert pooled_change(kind, shift, align_max).max() < 1e-12


def test_roipool_ignores_small_box_moves():
    """Moving only the boxes by 0.1 px along x: RoIPool (rounding) mostly does not see it,
    RoIAlign (no rounding) responds for every box."""
    features = smooth_map("gaussian", 0.0)
    boxes = interior_boxes()
    moved = boxes.copy()
    moved[:, [1, 3]] += 0.1
    pool_same = np.all(pool_7x7(features, moved) == pool_7x7(features, boxes), axis=(1, 2, 3))
    align_same = np.all(align_avg(features, moved) == align_avg(features, boxes), axis=(1, 2, 3))
    assert pool_same.mean() > 0.5
    assert not align_same.any()
