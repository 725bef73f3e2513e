"""roi_align_backward: torchvision's gradients, finite differences, the adjoint identity,
max mode's arg-max rules, determinism across thread counts, and its output handling."""

import math
import os

import numpy as np
import pytest
from golden import case_names, load_case
from reference import bilinear_taps
from roi_inputs import random_boxes, to_layout, to_nchw

from roialign_cy import _strategy, roi_align, roi_align_backward

LAYOUTS = ["NCHW", "NHWC"]
# (spatial_scale, output_size, sampling_ratio, aligned)
CONFIGS = [
    (1.0, (3, 3), 2, False),
    (1.0, (2, 3), -1, True),
    (0.5, (3, 2), 0, False),
    (0.5, (2, 2), 1, True),
]


def sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned, height, width):
    """Per bin (ph, pw), the bin's samples in (iy, ix) order, each a list of 4 bilinear taps
    (row, col, weight), or None for a sample outside [-1, H] x [-1, W]; and the divisor count.

    Written from SEMANTICS.md in float64, independently of the package.
    """
    pooled_h, pooled_w = output_size
    x1, y1, x2, y2 = (float(v) for v in box)
    offset = 0.5 if aligned else 0.0
    start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
    roi_w = (x2 * spatial_scale - offset) - start_x
    roi_h = (y2 * spatial_scale - offset) - start_y
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            samples = []
            for iy in range(grid_h):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    samples.append(bilinear_taps(height, width, y, x))
            bins[ph, pw] = samples
    return bins, max(grid_h * grid_w, 1)


def sample_values(plane, taps):
    """Value of one sample on a (C, H, W) plane: the bilinear sum, or 0 outside the map."""
    if taps is None:
        return np.zeros(plane.shape[0])
    return sum(w * plane[:, r, c] for r, c, w in taps)


def reference_backward(features, boxes, grad_output, output_size, spatial_scale,
                       sampling_ratio, aligned, mode):
    """Loop reference of the gradient w.r.t. (N, C, H, W) features, in float64.

    avg: each inside sample sends grad * w / count to its taps. max: the first maximum
    sample (in (iy, ix) order, outside samples being 0) sends grad * w to its taps; nothing
    when that sample is outside.
    """
    features = np.asarray(features, dtype=np.float64)
    _, channels, height, width = features.shape
    grad_input = np.zeros_like(features)
    for k, (batch_index, *box) in enumerate(np.asarray(boxes, dtype=np.float64)):
        b = int(batch_index)
        bins, count = sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned,
                                  height, width)
        for (ph, pw), samples in bins.items():
            grad = grad_output[k, :, ph, pw].astype(np.float64)
            if mode == "avg":
                for taps in filter(None, samples):
                    for r, c, w in taps:
                        grad_input[b, :, r, c] += grad * w / count
                continue
            if not samples:
                continue
            values = np.array([sample_values(features[b], taps) for taps in samples])
            for ch in range(channels):
                taps = samples[int(np.argmax(values[:, ch]))]  # argmax: the first maximum
                for r, c, w in taps or []:
                    grad_input[b, ch, r, c] += grad[ch] * w
    return grad_input


def max_margins(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """Per box: the smallest gap between the best and second-best sample of any bin and
    channel (outside samples counting as 0), and how many of its bins an outside 0 wins.

    Samples with the same taps (all outside ones; those clamped onto the same border pixel)
    tie harmlessly, whichever wins the gradient is the same: they count once.
    """
    _, _, height, width = features.shape
    margins, outside_wins = [], []
    for batch_index, *box in boxes:
        bins, _ = sample_grid(box, spatial_scale, output_size, sampling_ratio, aligned,
                              height, width)
        gap, wins = np.inf, 0
        for samples in bins.values():
            samples = list({None if t is None else tuple(t): t for t in samples}.values())
            if len(samples) < 2:
                continue
            values = np.array([sample_values(features[int(batch_index)], t) for t in samples])
            top2 = np.sort(values, axis=0)[-2:]
            gap = min(gap, float(np.min(top2[1] - top2[0])))
            wins += sum(samples[i] is None for i in np.argmax(values, axis=0))
        margins.append(gap)
        outside_wins.append(wins)
    return np.array(margins), np.array(outside_wins)


# --- torchvision's gradients ----------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_align_backward"))
def test_avg_backward_matches_torchvision(name, layout):
    """The golden autograd gradients of torchvision.ops.roi_align, in both layouts."""
    params, data = load_case(name)
    features, grad_output = data["input"], data["grad_output"]
    grad_input = roi_align_backward(
        to_layout(grad_output, layout),  # (K, C, PH, PW) -> (K, PH, PW, C) is the same move
        data["boxes"], to_layout(features, layout).shape, tuple(params["output_size"]),
        params["spatial_scale"], params["sampling_ratio"], params["aligned"], layout=layout,
    )
    expected = to_layout(data["grad_input"], layout)
    assert grad_input.dtype == features.dtype
    assert grad_input.shape == expected.shape
    if features.dtype == np.float32:
        np.testing.assert_allclose(grad_input, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(grad_input, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", case_names("roi_align_backward")[:1])
def test_avg_backward_golden_premise(name):
    """The golden gradients are not trivially zero: boxes really cover the map."""
    _, data = load_case(name)
    assert np.count_nonzero(data["grad_input"]) > data["grad_input"].size // 4


# --- the independent loop reference, including max mode's tie and 0 rules -------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("config", CONFIGS)
def test_backward_matches_loop_reference(config, mode, layout):
    """Random float64 cases against reference_backward (ties are measure-zero here)."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng([CONFIGS.index(config), mode == "max"])
    features = rng.standard_normal((2, 3, 7, 8))
    boxes = random_boxes(rng, 2, 7, 8, scale, n_boxes=14)
    grad_output = rng.standard_normal((len(boxes), 3) + size)
    got = roi_align_backward(
        to_layout(grad_output, layout),
        boxes, to_layout(features, layout).shape, size, scale, sr, aligned, layout=layout,
        mode=mode, input=to_layout(features, layout),
    )
    expected = reference_backward(features, boxes, grad_output, size, scale, sr, aligned, mode)
    np.testing.assert_allclose(to_nchw(got, layout), expected, rtol=1e-12, atol=1e-12)


def one_bin_max_gradient(value, box, layout="NCHW"):
    """Max-mode gradient of a 1x1 output (sampling_ratio 2) over a constant 6x6 map."""
    features = to_layout(np.full((1, 1, 6, 6), value), layout)
    grad = np.ones((1, 1, 1, 1))
    grad_input = roi_align_backward(grad, np.array([[0.0, *box]]), features.shape, 1,
                                    sampling_ratio=2, layout=layout, mode="max",
                                    input=features)
    return to_nchw(grad_input, layout)[0, 0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_backward_ties_go_to_first_sample(layout):
    """Box (0, 0, 4, 4): samples at (1,1), (1,3), (3,1), (3,3), exact ties on a constant map.

    The first sample in (iy, ix) order, (1, 1), takes the whole gradient (weight 1, on a pixel).
    """
    expected = np.zeros((6, 6))
    expected[1, 1] = 1.0
    np.testing.assert_array_equal(one_bin_max_gradient(2.0, (0.0, 0.0, 4.0, 4.0), layout),
                                  expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_backward_outside_zero_wins(layout):
    """Box (-6, 0, 2, 4): samples (y, x) = (1,-4) out, (1,0) in, (3,-4) out, (3,0) in.

    Over a negative map the outside 0 wins: no gradient at all. Over a positive map the
    first inside sample, on pixel (1, 0), wins.
    """
    box = (-6.0, 0.0, 2.0, 4.0)
    np.testing.assert_array_equal(one_bin_max_gradient(-1.5, box, layout), 0)
    expected = np.zeros((6, 6))
    expected[1, 0] = 1.0
    np.testing.assert_array_equal(one_bin_max_gradient(1.5, box, layout), expected)


def test_max_backward_zero_tie_goes_to_inside_sample():
    """Zero map, box (-6, 0, 2, 4): the outside sample (1, -4) and the inside (1, 0) tie at 0.

    Documented rule: the out-of-map 0 only wins when every inside sample is below 0, so on
    a tie the inside sample (1, 0), which sits on a pixel, takes the whole gradient.
    """
    expected = np.zeros((6, 6))
    expected[1, 0] = 1.0
    np.testing.assert_array_equal(one_bin_max_gradient(0.0, (-6.0, 0.0, 2.0, 4.0)), expected)


# --- finite differences of our own forward ----------------------------------------------------

def finite_difference_gradient(features, boxes, grad_output, step, **kwargs):
    """Central differences of <roi_align(x), grad_output> w.r.t. every element of x."""
    grad = np.zeros_like(features)
    flat, flat_grad = features.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        plus = np.vdot(roi_align(features, boxes, **kwargs), grad_output)
        flat[i] = saved - step
        minus = np.vdot(roi_align(features, boxes, **kwargs), grad_output)
        flat[i] = saved
        flat_grad[i] = (plus - minus) / (2 * step)
    return grad


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_avg_backward_matches_finite_differences(config, layout):
    """avg is linear in the features, so central differences agree to rounding."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng(40 + CONFIGS.index(config))
    features = to_layout(rng.standard_normal((2, 2, 6, 7)), layout)
    boxes = random_boxes(rng, 2, 6, 7, scale, n_boxes=10)
    kwargs = dict(output_size=size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned,
                  layout=layout)
    grad_output = rng.standard_normal(roi_align(features, boxes, **kwargs).shape)
    analytic = roi_align_backward(grad_output, boxes, features.shape, **kwargs)
    numeric = finite_difference_gradient(features, boxes, grad_output, 1e-3, **kwargs)
    assert np.abs(analytic).max() > 0.1
    np.testing.assert_allclose(analytic, numeric, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_max_backward_matches_finite_differences(config, layout):
    """max is piecewise linear: away from ties (margin >> step) differences are exact.

    Boxes whose best and second-best samples (outside ones counting as 0) are closer than
    1e-4 in any bin are dropped; enough must remain, including bins the outside 0 wins
    (mostly negative features, and boxes reaching well past the top-left border, where
    samples are more than a pixel apart so that at most one of them clamps onto column 0).
    """
    scale, size, sr, aligned = config
    rng = np.random.default_rng(60 + CONFIGS.index(config))
    features_nchw = rng.standard_normal((2, 2, 6, 7)) - 0.7
    past_border = np.array([[0, -10.0, -1.0, 5.0, 5.0], [1, 2.0, -9.0, 6.0, 4.0],
                            [0, -8.0, -8.0, 4.0, 3.0], [1, -12.0, 0.5, 3.0, 5.5]])
    past_border[:, 1:] /= scale
    boxes = np.concatenate([random_boxes(rng, 2, 6, 7, scale, n_boxes=28), past_border])
    margins, outside_wins = max_margins(features_nchw, boxes, size, scale, sr, aligned)
    keep = margins > 1e-4
    boxes = boxes[keep]
    assert len(boxes) >= 24
    assert outside_wins[keep].sum() >= 4 or sr == 1  # one sample per bin: nothing to beat
    features = to_layout(features_nchw, layout)
    kwargs = dict(output_size=size, spatial_scale=scale, sampling_ratio=sr, aligned=aligned,
                  layout=layout, mode="max")
    pooled = roi_align(features, boxes, **kwargs)
    grad_output = rng.standard_normal(pooled.shape)
    analytic = roi_align_backward(grad_output, boxes, features.shape, input=features, **kwargs)
    numeric = finite_difference_gradient(features, boxes, grad_output, 1e-6, **kwargs)
    assert np.abs(analytic).max() > 0.1
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-8)


# --- the adjoint identity ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_adjoint_identity_avg(sampling_ratio, aligned, layout):
    """<roi_align(x), g> == <x, roi_align_backward(g)> for any x, g: avg mode is linear."""
    rng = np.random.default_rng([sampling_ratio + 5, aligned])
    features = to_layout(rng.standard_normal((3, 4, 11, 13)), layout)
    boxes = random_boxes(rng, 3, 11, 13, 0.5, n_boxes=40)
    kwargs = dict(output_size=(4, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio,
                  aligned=aligned, layout=layout)
    pooled = roi_align(features, boxes, **kwargs)
    for _ in range(3):
        grad_output = rng.standard_normal(pooled.shape)
        grad_input = roi_align_backward(grad_output, boxes, features.shape, **kwargs)
        lhs, rhs = np.vdot(pooled, grad_output), np.vdot(features, grad_input)
        magnitude = np.vdot(np.abs(pooled), np.abs(grad_output))
        assert magnitude > 10.0
        assert abs(lhs - rhs) <= 1e-13 * magnitude


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("aligned", [False, True])
def test_adjoint_identity_max_at_the_point(aligned, layout):
    """Max mode is positively homogeneous, so <f(x), g> == <x, f'(x)^T g> at x itself.

    A bin won by an outside 0 contributes 0 on both sides; an empty grid too. It does not hold
    for another point y with the arg-max taken at x, which the second assertion checks.
    """
    rng = np.random.default_rng(int(aligned))
    features = to_layout(rng.standard_normal((2, 3, 9, 10)), layout)
    boxes = random_boxes(rng, 2, 9, 10, 1.0, n_boxes=30)
    kwargs = dict(output_size=3, sampling_ratio=-1, aligned=aligned, layout=layout, mode="max")
    pooled = roi_align(features, boxes, **kwargs)
    grad_output = rng.standard_normal(pooled.shape)
    grad_input = roi_align_backward(grad_output, boxes, features.shape, input=features, **kwargs)
    magnitude = np.vdot(np.abs(pooled), np.abs(grad_output))
    assert magnitude > 10.0
    assert abs(np.vdot(pooled, grad_output) - np.vdot(features, grad_input)) <= 1e-13 * magnitude
    other = rng.standard_normal(features.shape)
    gap = np.vdot(roi_align(other, boxes, **kwargs), grad_output) - np.vdot(other, grad_input)
    assert abs(gap) > 1e-3 * magnitude


# --- determinism across thread counts ---------------------------------------------------------

@pytest.fixture(scope="module")
def big_workload():
    """Features (2, 32, 48, 48) float32 and 400 boxes: enough work for every thread."""
    rng = np.random.default_rng(2024)
    features = rng.standard_normal((2, 32, 48, 48)).astype(np.float32)
    boxes = random_boxes(rng, 2, 48, 48, 1.0, n_boxes=400)
    # Plenty of ordinary overlapping boxes, so many RoIs add into the same feature elements.
    ordinary = rng.uniform(0, 40, (300, 2))
    extra = np.column_stack([rng.integers(0, 2, 300), ordinary,
                             ordinary + rng.uniform(4, 20, (300, 2))])
    return features, np.concatenate([boxes[:100], extra])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_threads_bit_identical(big_workload, mode, layout, monkeypatch):
    """roi_align and roi_align_backward give the same bits on 1 thread and on many.

    The forward's two kernels (per RoI; channel blocks, picked by the private heuristic
    _strategy.use_channel_blocks) are each forced in turn.
    """
    features_nchw, boxes = big_workload
    features = to_layout(features_nchw, layout)
    kwargs = dict(output_size=7, spatial_scale=1.0, sampling_ratio=2, aligned=True,
                  layout=layout, mode=mode)
    many = max(4, os.cpu_count() or 1)
    serial = roi_align(features, boxes, num_threads=1, **kwargs)
    for n_threads in (None, many):
        assert np.array_equal(roi_align(features, boxes, num_threads=n_threads, **kwargs), serial)
    for blocked in (False, True):  # both forward kernels, per RoI and blocked
        monkeypatch.setattr(_strategy, "use_channel_blocks", lambda *args, b=blocked: b)
        for n_threads in (1, many):
            assert np.array_equal(
                roi_align(features, boxes, num_threads=n_threads, **kwargs), serial)
    grad_output = np.random.default_rng(1).standard_normal(serial.shape).astype(np.float32)
    serial_grad = roi_align_backward(grad_output, boxes, features.shape, input=features,
                                     num_threads=1, **kwargs)
    assert np.count_nonzero(serial_grad) > serial_grad.size // 4
    for n_threads in (None, many):
        threaded = roi_align_backward(grad_output, boxes, features.shape, input=features,
                                      num_threads=n_threads, **kwargs)
        assert np.array_equal(threaded, serial_grad)


# --- dtypes, empty inputs, out= ---------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backward_no_boxes(mode, layout):
    """K = 0: the gradient is all zeros of input_shape (in out= too, which is overwritten)."""
    features = to_layout(np.ones((2, 3, 5, 6), dtype=np.float32), layout)
    grad_output = np.zeros((0, 3, 2, 2) if layout == "NCHW" else (0, 2, 2, 3), np.float32)
    kwargs = dict(layout=layout, mode=mode, input=features)
    grad = roi_align_backward(grad_output, np.zeros((0, 5)), features.shape, 2, **kwargs)
    assert grad.shape == features.shape and grad.dtype == np.float32
    np.testing.assert_array_equal(grad, 0)
    out = np.full(features.shape, 7.0, np.float32)
    assert roi_align_backward(grad_output, [np.zeros((0, 4))] * 2, features.shape, 2, out=out,
                              **kwargs) is out
    np.testing.assert_array_equal(out, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backward_float16(mode, layout):
    """float16 gradients give a float16 result: the float32 computation rounded once."""
    rng = np.random.default_rng(9)
    features = to_layout(rng.standard_normal((2, 3, 7, 8)), layout).astype(np.float16)
    boxes = random_boxes(rng, 2, 7, 8, 1.0, n_boxes=10)
    kwargs = dict(output_size=3, sampling_ratio=2, layout=layout, mode=mode)
    grad_output = rng.standard_normal(roi_align(features, boxes, **kwargs).shape)
    half = roi_align_backward(grad_output.astype(np.float16), boxes, features.shape,
                              input=features, **kwargs)
    single = roi_align_backward(grad_output.astype(np.float16).astype(np.float32), boxes,
                                features.shape, input=features.astype(np.float32), **kwargs)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, single.astype(np.float16))
    assert np.count_nonzero(half) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backward_out_in_place(mode, layout):
    """out= is overwritten (not added to) and returned: contiguous, strided and float16."""
    rng = np.random.default_rng(12)
    features = to_layout(rng.standard_normal((2, 3, 7, 8)), layout)
    boxes = random_boxes(rng, 2, 7, 8, 1.0, n_boxes=10)
    kwargs = dict(output_size=(2, 3), sampling_ratio=-1, layout=layout, mode=mode)
    grad_output = rng.standard_normal(roi_align(features, boxes, **kwargs).shape)
    expected = roi_align_backward(grad_output, boxes, features.shape, input=features, **kwargs)

    out = np.full(features.shape, np.nan)
    assert roi_align_backward(grad_output, boxes, features.shape, input=features, out=out,
                              **kwargs) is out
    np.testing.assert_array_equal(out, expected)

    strided = np.full(features.shape[::-1], 5.0).T  # Fortran order: not C-contiguous
    assert roi_align_backward(grad_output, boxes, features.shape, input=features, out=strided,
                              **kwargs) is strided
    np.testing.assert_array_equal(strided, expected)

    half = np.full(features.shape, 3.0, np.float16)
    result = roi_align_backward(grad_output.astype(np.float16), boxes, features.shape,
                                input=features.astype(np.float16), out=half, **kwargs)
    assert result is half
    np.testing.assert_allclose(half, expected, rtol=1e-2, atol=1e-2)


def test_backward_out_one_image():
    """A 3-D input_shape (one image, (K, 4) boxes) fills a 3-D out."""
    rng = np.random.default_rng(13)
    features = rng.standard_normal((3, 7, 8))
    boxes = np.array([[0.5, 1.0, 6.0, 5.5], [2.0, 0.0, 7.0, 7.0]])
    grad_output = rng.standard_normal((2, 3, 2, 2))
    out = np.full(features.shape, 9.0)
    result = roi_align_backward(grad_output, boxes, features.shape, 2, sampling_ratio=2, out=out)
    assert result is out
    batched = roi_align_backward(grad_output, np.column_stack([np.zeros(2), boxes]),
                                 (1,) + features.shape, 2, sampling_ratio=2)
    np.testing.assert_array_equal(out, batched[0])


def test_max_backward_needs_input():
    """Max mode finds the arg-max from the features, so input= is required."""
    with pytest.raises(ValueError, match="input"):
        roi_align_backward(np.ones((1, 1, 1, 1)), np.array([[0, 0.0, 0.0, 2.0, 2.0]]),
                           (1, 1, 4, 4), 1, mode="max")
