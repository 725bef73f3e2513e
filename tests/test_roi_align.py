"""roi_align, roi_align_backward and RoIAlign against the loop reference (tests/reference.py),
torchvision's golden numbers, hand values, finite differences and the adjoint identity:
average and max mode, edge cases (boxes outside, tiny, inverted, huge; NaN features),
out= and empty inputs, and the classes (repr, equality, pickle, parameters)."""

import pickle

import numpy as np
import pytest

from golden import case_names, load_case, load_meta
from reference import reference_roi_align, reference_roi_align_backward, sample_grid, sample_values
from roi_inputs import assert_max_adjoint, align_nchw, random_boxes, to_layout, to_nchw

from roialign_cy import RoIAlign, RoIPool, roi_align, roi_align_backward


# ---- roi_align's numbers against the loop reference, torchvision's golden data, hand values. ---


DTYPES = [np.float32, np.float64]


LAYOUTS = ["NCHW", "NHWC"]


ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# (spatial_scale, output_size) triples each random test runs through
GEOMETRIES = [(1.0, (4, 4)), (0.5, (3, 5)), (1 / 16, (2, 3))]


def assert_close(actual, expected, dtype):
    """|actual - expected| <= the dtype's tolerance everywhere (NaN only where expected NaN)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL[np.dtype(dtype)])


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, layout, aligned, sampling_ratio, mode):
    seed = [dtype == np.float32, layout == "NHWC", aligned, sampling_ratio + 1, mode == "max"]
    rng = np.random.default_rng(seed)
    for scale, size in GEOMETRIES:
        height, width = rng.integers(5, 13, size=2)
        features = rng.uniform(-1, 1, (3, 2, height, width)).astype(dtype)
        boxes = random_boxes(rng, 3, height, width, scale, n_boxes=14)
        got = align_nchw(features, boxes, size, scale, sampling_ratio, aligned,
                         layout=layout, mode=mode)
        expected = reference_roi_align(features, boxes, size, scale, sampling_ratio, aligned, mode)
        assert got.dtype == dtype
        assert_close(got, expected, dtype)


LARGE_GRIDS = {
    # more than 64 samples per bin: the kernel then looks for the inside samples analytically
    "fixed_70": (70, [[0, 1.0, 1.0, 6.0, 5.0], [0, -30.0, -20.0, 5.0, 7.0],
                      [1, 6.5, 5.0, 2.0, 1.5], [1, 9.0, 2.0, 40.0, 3.0]]),
    "adaptive_huge": (-1, [[0, -300.0, 1.0, 400.0, 6.0], [1, 2.0, -250.0, 7.0, 180.0],
                           [1, -500.0, -3.0, -2.0, 4.0]]),
}


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grid", sorted(LARGE_GRIDS))
def test_large_grids_match_reference(grid, layout, aligned, mode):
    sampling_ratio, boxes = LARGE_GRIDS[grid]
    features = np.random.default_rng(7).uniform(-1, 1, (2, 2, 8, 10))
    got = align_nchw(features, np.array(boxes), (2, 1), 1.0, sampling_ratio, aligned,
                     layout=layout, mode=mode)
    expected = reference_roi_align(features, boxes, (2, 1), 1.0, sampling_ratio, aligned, mode)
    assert_close(got, expected, np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("roi_align"))
def test_matches_torchvision_golden(name, layout):
    params, arrays = load_case(name)
    features, expected = arrays["input"], arrays["output"]
    got = align_nchw(features, arrays["boxes"], tuple(params["output_size"]),
                     params["spatial_scale"], params["sampling_ratio"], params["aligned"],
                     layout=layout)
    assert got.dtype == features.dtype == expected.dtype
    assert got.shape == expected.shape
    assert_close(got, expected, features.dtype)


def test_golden_file_is_complete():
    meta = load_meta()
    assert meta["torch"] and meta["torchvision"]
    ops = {"roi_align", "roi_align_backward", "roi_pool", "roi_pool_backward"}
    assert {case["op"] for case in meta["cases"]} == ops
    for case in meta["cases"]:
        _, arrays = load_case(case["name"])
        assert {"input", "boxes", "output"} <= set(arrays)
        assert arrays["input"].dtype == np.dtype(case["dtype"])
        if case["op"].endswith("_backward"):
            assert arrays["grad_output"].shape == arrays["output"].shape
            assert arrays["grad_input"].shape == arrays["input"].shape


def test_seed_notebook_example():
    features = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1]
    boxes = np.array([[1.0, 4.0, 4.0, 4.0]])
    got = roi_align(features, boxes, output_size=4, spatial_scale=1.0, sampling_ratio=2,
                    aligned=False, layout="NHWC")
    row = np.array([[92.75, 93.75], [94.25, 95.25], [95.75, 96.75], [97.25, 98.25]])
    assert got.shape == (1, 4, 4, 2) and got.dtype == np.float32
    for ph in range(4):
        np.testing.assert_array_equal(got[0, ph], row)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_ramp_is_interpolated_exactly(dtype):
    """On a plane a*x + b*y + c every bin of an inside box equals the plane at the bin centre."""
    height, width = 9, 12
    y, x = np.mgrid[0:height, 0:width]
    features = (0.25 * x - 0.5 * y + 3.0).astype(dtype)[np.newaxis, np.newaxis]
    x1, y1, x2, y2 = 1.25, 2.5, 9.75, 7.0
    got = align_nchw(features, np.array([[0, x1, y1, x2, y2]]), (3, 4), 1.0, 3, True)
    start_x, start_y, bin_w, bin_h = x1 - 0.5, y1 - 0.5, (x2 - x1) / 4, (y2 - y1) / 3
    centre_x = start_x + (np.arange(4) + 0.5) * bin_w
    centre_y = start_y + (np.arange(3) + 0.5) * bin_h
    expected = 0.25 * centre_x[np.newaxis, :] - 0.5 * centre_y[:, np.newaxis] + 3.0
    assert_close(got[0, 0], expected, dtype)


# ---- roi_align_backward: torchvision's gradients, finite differences, the adjoint identity, ----


# (spatial_scale, output_size, sampling_ratio, aligned)
CONFIGS = [
    (1.0, (3, 3), 2, False),
    (1.0, (2, 3), -1, True),
    (0.5, (3, 2), 0, False),
    (0.5, (2, 2), 1, True),
]


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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("config", CONFIGS)
def test_backward_matches_loop_reference(config, mode, layout):
    """Random float64 cases against reference_roi_align_backward (ties are measure-zero here)."""
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
    expected = reference_roi_align_backward(features, boxes, grad_output, size, scale, sr, aligned, mode)
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
    assert_max_adjoint(lambda x: roi_align(x, boxes, **kwargs), features, grad_output,
                       grad_input, rng)


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


# ---- roi_align(mode="max") against the loop reference: random cases, outside bins, the 0 sample, ties. ---


# (spatial_scale, output_size, sampling_ratio, aligned)
CONFIGS_max = [
    (1.0, (3, 3), 2, False),
    (1.0, (2, 4), -1, True),
    (0.5, (4, 3), 0, False),
    (0.25, (3, 2), 3, True),
]


@pytest.fixture(params=["per_roi", "packed"])
def forward_path(request):
    """The forward kernel to force (the `variant` argument): per RoI, or packed channel blocks.

    The package picks one by a size heuristic; both must give the same numbers, so the
    reference tests go through each.
    """
    return request.param


def tolerance(dtype):
    """assert_allclose keywords for comparing a result of `dtype` with the float64 reference."""
    if dtype == np.float32:
        return dict(rtol=1e-5, atol=2e-5)
    return dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS_max)
def test_max_matches_reference(forward_path, config, dtype, layout):
    """Random features and a mix of ordinary, outside, tiny and inverted boxes."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng([CONFIGS_max.index(config), DTYPES.index(dtype)])
    height, width = int(rng.integers(7, 12)), int(rng.integers(7, 12))
    features = rng.standard_normal((2, 3, height, width)).astype(dtype)
    boxes = random_boxes(rng, 2, height, width, scale, n_boxes=14).astype(dtype)
    got = align_nchw(features, boxes, size, scale, sr, aligned, layout=layout, mode="max", variant=forward_path)
    expected = reference_roi_align(features, boxes, size, scale, sr, aligned, mode="max")
    assert got.dtype == dtype
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_of_boxes_fully_outside_is_zero(forward_path, dtype, layout):
    """Every sample outside: the bins are exactly 0, even over negative or NaN features."""
    features = np.full((1, 2, 6, 7), -3.0, dtype=dtype)
    features[0, 1] = np.nan  # nothing outside the map may be read, so NaN cannot leak in
    boxes = np.array([
        [0, 20.0, 20.0, 30.0, 28.0],     # below-right
        [0, -30.0, -25.0, -5.0, -2.5],   # above-left
        [0, -20.0, 1.0, -1.5, 4.0],      # left only, rows inside
        [0, 1.0, 7.5, 5.0, 40.0],        # below only, columns inside
    ], dtype=dtype)
    for sr, aligned in [(2, False), (-1, True), (-1, False)]:
        got = align_nchw(features, boxes, (3, 2), 1.0, sr, aligned, layout=layout, mode="max", variant=forward_path)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_outside_zero_sample_beats_negative_values(forward_path, dtype, layout):
    """Boxes partly outside over negative features: bins with an outside sample give 0.

    On the constant map -1 an inside sample is -1 and an outside one 0. Bins mixing both
    (their avg-mode reference lies strictly between -1 and 0) must give exactly 0 in max mode;
    the boxes are built so that such bins occur next to fully inside and fully outside ones.
    """
    features = np.full((1, 1, 8, 8), -1.0, dtype=dtype)
    # x bins [-3, 1] (samples -2 out, 0 in) and [1, 5]; y bins [-2.5, 1.75] (one sample out)
    # and [1.75, 6]; the second box's x bins are [3, 7] and [7, 11] (samples 8 in, 10 out).
    boxes = np.array([[0, -3.0, -2.5, 5.0, 6.0], [0, 3.0, 2.0, 11.0, 7.3],
                      [0, -9.0, 1.0, -5.0, 3.0]], dtype=dtype)
    got = align_nchw(features, boxes, (2, 2), 1.0, 2, False, layout=layout, mode="max", variant=forward_path)
    expected = reference_roi_align(features, boxes, (2, 2), 1.0, 2, False, mode="max")
    mean = reference_roi_align(features, boxes, (2, 2), 1.0, 2, False, mode="avg")
    mixed = (mean > -1) & (mean < 0)
    assert mixed.sum() >= 4 and (mean == -1).any() and (mean == 0).any()  # the premise
    np.testing.assert_array_equal(got[mixed], 0)
    np.testing.assert_array_equal(got[mean == 0], 0)
    np.testing.assert_allclose(got[mean == -1], -1, rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)

    # Random negative features: the 0 still wins where the reference says so.
    rng = np.random.default_rng(7)
    features = (-1.0 - rng.random((1, 2, 8, 8))).astype(dtype)
    got = align_nchw(features, boxes, (4, 4), 1.0, 2, False, layout=layout, mode="max", variant=forward_path)
    expected = reference_roi_align(features, boxes, (4, 4), 1.0, 2, False, mode="max")
    np.testing.assert_allclose(got, expected, **tolerance(dtype))
    assert (got == 0).any() and (got < -1).any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [2.5, -0.75])
def test_constant_map_ties(forward_path, value, dtype, layout):
    """A constant map: every inside sample ties; the max is the constant (0 where it loses)."""
    features = np.full((2, 3, 9, 10), value, dtype=dtype)
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 2, 9, 10, 1.0, n_boxes=14).astype(dtype)
    for sr, aligned in [(2, False), (-1, True)]:
        got = align_nchw(features, boxes, (3, 3), 1.0, sr, aligned, layout=layout, mode="max", variant=forward_path)
        expected = reference_roi_align(features, boxes, (3, 3), 1.0, sr, aligned, mode="max")
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
        at_value = np.isclose(got, value, rtol=1e-6, atol=0)
        assert np.all(at_value | (got == 0))
        assert at_value.any() and (got == 0).any()  # both inside bins and losing/outside ones


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_grid_gives_zero(forward_path, layout):
    """aligned=True, adaptive grid and an inverted box: no samples at all, so 0 (not -inf)."""
    features = np.full((1, 2, 6, 6), -4.0)
    boxes = np.array([[0, 4.0, 1.0, 2.0, 5.0],    # inverted along x only
                      [0, 1.0, 5.0, 4.0, 2.0]])   # inverted along y only
    got = align_nchw(features, boxes, (2, 2), 1.0, -1, True, layout=layout, mode="max", variant=forward_path)
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sr", [70, -1])
def test_max_with_large_grids(forward_path, sr, layout):
    """More than 64 samples per bin (fixed 70, or adaptive over a huge box) still match."""
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1, 2, 6, 7)) - 0.5
    boxes = np.array([
        [0, -150.0, 1.0, 160.0, 4.5],   # adaptive: ~100 samples per bin along x
        [0, 1.5, -120.0, 5.0, 130.0],   # and along y
        [0, 0.5, 0.5, 5.5, 4.0],
    ])
    if sr > 0:
        boxes = boxes[2:]  # 70 x 70 samples per bin is enough for the reference
    got = align_nchw(features, boxes, (2, 3), 1.0, sr, False, layout=layout, mode="max", variant=forward_path)
    expected = reference_roi_align(features, boxes, (2, 3), 1.0, sr, False, mode="max")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS_max)
def test_max_is_at_least_avg(config, layout):
    """max over the samples >= their mean (outside samples count as 0 in both)."""
    scale, size, sr, aligned = config
    rng = np.random.default_rng(100 + CONFIGS_max.index(config))
    features = rng.standard_normal((2, 3, 10, 9))
    boxes = random_boxes(rng, 2, 10, 9, scale, n_boxes=21)
    kwargs = dict(layout=layout)
    peak = align_nchw(features, boxes, size, scale, sr, aligned, mode="max", **kwargs)
    mean = align_nchw(features, boxes, size, scale, sr, aligned, mode="avg", **kwargs)
    assert np.all(peak >= mean - 1e-12)
    assert np.any(peak > mean + 0.1)  # and the two modes really differ


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_sample_wins(forward_path, layout):
    """A NaN tap makes its bins NaN in max mode, and leaves bins that never read it alone."""
    features = np.arange(64, dtype=np.float64).reshape(1, 1, 8, 8)
    features[0, 0, 1, 1] = np.nan
    boxes = np.array([[0, 0.0, 0.0, 8.0, 8.0]])
    got = align_nchw(features, boxes, 4, 1.0, 2, True, layout=layout, mode="max", variant=forward_path)
    expected = reference_roi_align(features, boxes, 4, 1.0, 2, True, mode="max")
    assert np.isnan(got[0, 0, 0, 0]) and np.isnan(expected[0, 0, 0, 0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_float16_in_float16_out(mode, layout):
    """float16 features give float16 results, computed in float32 then rounded once."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 3, 8, 9)).astype(np.float16)
    boxes = random_boxes(rng, 2, 8, 9, 1.0, n_boxes=10)
    half = roi_align(to_layout(features, layout), boxes, 3, 1.0, 2, False, layout=layout,
                     mode=mode)
    single = roi_align(to_layout(features.astype(np.float32), layout), boxes, 3, 1.0, 2, False,
                       layout=layout, mode=mode)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, single.astype(np.float16))
    expected = reference_roi_align(features.astype(np.float32), boxes, 3, 1.0, 2, False,
                                   mode=mode)
    np.testing.assert_allclose(to_nchw(half, layout), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_no_boxes(mode, layout):
    """K = 0 boxes, as a (0, 5) array or a list of empty per-image arrays: an empty result."""
    features = to_layout(np.ones((2, 3, 5, 6), dtype=np.float32), layout)
    expected_shape = (0, 3, 2, 4) if layout == "NCHW" else (0, 2, 4, 3)
    for boxes in (np.zeros((0, 5)), [np.zeros((0, 4)), np.zeros((0, 4))]):
        got = roi_align(features, boxes, (2, 4), layout=layout, mode=mode)
        assert got.shape == expected_shape
        assert got.dtype == np.float32


# ---- Boxes at and beyond the edges: outside, tiny, inverted, huge, and NaN features. -----------


MODES = ["avg", "max"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_boxes_fully_outside_give_zero(dtype, aligned, sampling_ratio, mode):
    features = np.random.default_rng(3).uniform(1, 2, (1, 3, 6, 8)).astype(dtype)
    boxes = np.array([[0, -20.0, -20.0, -3.0, -4.0], [0, 12.0, 1.0, 30.0, 5.0],
                      [0, 1.0, 9.0, 7.0, 40.0], [0, 9.5, 7.5, 9.5, 7.5]])
    got = align_nchw(features, boxes, 3, 1.0, sampling_ratio, aligned, mode=mode)
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_at_origin_does_not_leak(dtype, layout, mode):
    """torchvision multiplies X[0, 0] by 0 for outside samples; we never read it for them."""
    features = np.random.default_rng(4).uniform(-1, 1, (2, 2, 8, 8)).astype(dtype)
    features[0, :, 0, 0] = np.nan
    boxes = np.array([
        [0, -10.0, -10.0, -5.0, -5.0],   # fully outside
        [0, 5.0, 5.0, 20.0, 20.0],       # partly outside, far from the origin
        [0, -20.0, 3.0, 6.0, 6.0],       # partly outside, inside samples in rows >= 3
        [1, -3.0, -3.0, 2.0, 2.0],       # image 1 has no NaN
        [0, 0.0, 0.0, 2.0, 2.0],         # really samples the NaN
    ])
    got = align_nchw(features, boxes, 2, 1.0, 2, False, layout=layout, mode=mode)
    assert np.isfinite(got[:4]).all()
    assert np.isnan(got[4, :, 0, 0]).all()
    expected = reference_roi_align(features, boxes, 2, 1.0, 2, False, mode)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_boxes_with_adaptive_grid_return(dtype, aligned, mode):
    """A 1e30-pixel box would take forever if every sample were visited; inside ones only are."""
    features = np.random.default_rng(5).uniform(0, 1, (1, 2, 6, 7)).astype(dtype)
    boxes = np.array([[0, 0.0, 0.0, 1e30, 4.0], [0, -1e30, -1e30, 1e30, 1e30],
                      [0, 2.0, -1e30, 5.0, 6.0]])
    got = align_nchw(features, boxes, 7, 1.0, -1, aligned, mode=mode)
    assert np.isfinite(got).all()
    if mode == "avg":  # a few samples out of ~1e29 per bin: the mean is about 0
        assert np.abs(got).max() < 1e-20
    else:  # the max of values in [0, 1] and zeros
        assert ((got >= 0) & (got <= 1)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_adaptive_grid_gives_zero(layout, mode):
    """Aligned zero-size or one-axis-inverted boxes have no samples (torchvision crashes)."""
    features = -np.random.default_rng(6).uniform(1, 2, (1, 2, 6, 6))
    boxes = np.array([[0, 2.0, 2.0, 2.0, 2.0], [0, 4.0, 1.0, 2.0, 5.0], [0, 1.0, 5.0, 4.0, 2.0]])
    got = align_nchw(features, boxes, 2, 1.0, 0, True, layout=layout, mode=mode)
    np.testing.assert_array_equal(got, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_mode_counts_outside_samples_as_zero(layout):
    features = -np.random.default_rng(8).uniform(1, 2, (1, 3, 6, 6))
    inside = align_nchw(features, np.array([[0, 1.0, 1.0, 4.0, 4.0]]), 2, 1.0, 2, False,
                        layout=layout, mode="max")
    assert (inside < -1).all()
    # x from -6 to 4: the left bin's samples are all outside, the right bin's all inside
    half = align_nchw(features, np.array([[0, -6.0, 1.0, 4.0, 4.0]]), (1, 2), 1.0, 2, False,
                      layout=layout, mode="max")
    np.testing.assert_array_equal(half[..., 0], 0)
    assert (half[..., 1] < -1).all()
    # one bin, samples at x = -2 (outside) and x = 2 (inside): the outside 0 is the max
    mixed = align_nchw(features, np.array([[0, -4.0, 1.0, 4.0, 4.0]]), 1, 1.0, 2, False,
                       layout=layout, mode="max")
    np.testing.assert_array_equal(mixed, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_legacy_mode_stretches_tiny_boxes_to_one_pixel(dtype):
    features = np.random.default_rng(9).uniform(-1, 1, (1, 2, 7, 7)).astype(dtype)
    tiny = np.array([[0, 2.25, 3.5, 2.25, 3.5], [0, 2.25, 3.5, 2.5, 3.75]])
    one_pixel = np.array([[0, 2.25, 3.5, 3.25, 4.5], [0, 2.25, 3.5, 3.25, 4.5]])
    np.testing.assert_array_equal(align_nchw(features, tiny, 3, 1.0, 2, False),
                                  align_nchw(features, one_pixel, 3, 1.0, 2, False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_is_a_half_pixel_shift(dtype):
    features = np.random.default_rng(10).uniform(-1, 1, (1, 2, 9, 9)).astype(dtype)
    boxes = np.array([[0, 1.25, 2.0, 6.5, 7.75], [0, -2.0, 3.5, 4.0, 12.0]])
    shifted = boxes + [0, 0.5, 0.5, 0.5, 0.5]
    np.testing.assert_array_equal(align_nchw(features, shifted, 4, 1.0, 2, True),
                                  align_nchw(features, boxes, 4, 1.0, 2, False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_spatial_scale_scales_the_boxes(dtype):
    features = np.random.default_rng(11).uniform(-1, 1, (1, 2, 9, 9)).astype(dtype)
    boxes = np.array([[0, 4.0, 2.0, 13.0, 15.5], [0, -6.0, 3.0, 10.0, 24.0]])
    scaled = boxes * [1, 0.25, 0.25, 0.25, 0.25]
    for aligned in (False, True):
        np.testing.assert_array_equal(align_nchw(features, boxes, 3, 0.25, -1, aligned),
                                      align_nchw(features, scaled, 3, 1.0, -1, aligned))


# ---- `out=` writes in place and returns `out`; no boxes or no channels give empty results. -----


DTYPES_out = [np.float16, np.float32, np.float64]


def make_inputs(dtype, layout):
    """Random (2, 3, 8, 6) features in `layout` and 9 boxes."""
    rng = np.random.default_rng(1)
    features = to_layout(rng.uniform(-1, 1, (2, 3, 8, 6)).astype(dtype), layout)
    return features, random_boxes(rng, 2, 8, 6, 1.0, n_boxes=9)


def out_shape(k, layout):
    """Result shape of k boxes, 3 channels, 4x5 bins."""
    return (k, 3, 4, 5) if layout == "NCHW" else (k, 4, 5, 3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES_out)
def test_out_contiguous(dtype, layout):
    features, boxes = make_inputs(dtype, layout)
    expected = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout)
    out = np.full(out_shape(len(boxes), layout), np.nan, dtype=dtype)
    result = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES_out)
def test_out_non_contiguous_leaves_the_gaps_alone(dtype, layout):
    features, boxes = make_inputs(dtype, layout)
    expected = roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout)
    shape = out_shape(len(boxes), layout)
    buffer = np.full(shape[:-1] + (2 * shape[-1],), -7, dtype=dtype)
    out = buffer[..., ::2]
    assert roi_align(features, boxes, (4, 5), 1.0, 2, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(buffer[..., 1::2], -7)


def test_out_big_endian_and_fortran():
    features, boxes = make_inputs(np.float32, "NCHW")
    expected = roi_align(features, boxes, (4, 5), 1.0, 2)
    for out in (np.zeros(out_shape(len(boxes), "NCHW"), dtype=">f4"),
                np.zeros(out_shape(len(boxes), "NCHW"), dtype=np.float32, order="F")):
        assert roi_align(features, boxes, (4, 5), 1.0, 2, out=out) is out
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("boxes", [np.zeros((0, 5)), [np.zeros((0, 4)), np.zeros((0, 4))]],
                         ids=["k5", "list"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES_out)
def test_no_boxes_give_an_empty_result(dtype, layout, boxes):
    features, _ = make_inputs(dtype, layout)
    result = roi_align(features, boxes, (4, 5), 1.0, layout=layout)
    assert result.shape == out_shape(0, layout) and result.dtype == dtype
    out = np.empty(out_shape(0, layout), dtype=dtype)
    assert roi_align(features, boxes, (4, 5), 1.0, layout=layout, out=out) is out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_channels_give_an_empty_result(layout):
    features = np.zeros((1, 0, 5, 5)) if layout == "NCHW" else np.zeros((1, 5, 5, 0))
    result = roi_align(features, np.array([[0, 1.0, 1.0, 3.0, 3.0]]), 2, layout=layout)
    assert result.shape == ((1, 0, 2, 2) if layout == "NCHW" else (1, 2, 2, 0))


# ---- RoIAlign and RoIPool: the functions with fixed parameters, repr, equality, pickle, and ----


def case(layout, seed=0):
    """Random (N=2, C=3, 9x10) features in `layout`, 12 mixed boxes and a matching gradient."""
    rng = np.random.default_rng(seed)
    features = to_layout(rng.standard_normal((2, 3, 9, 10)), layout)
    boxes = random_boxes(rng, 2, 9, 10, 0.5, n_boxes=12)
    return rng, features, boxes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roialign_equals_functions(mode, layout):
    """Calling and .backward give exactly roi_align / roi_align_backward with the same params."""
    rng, features, boxes = case(layout)
    params = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    layer = RoIAlign(**params, mode=mode, layout=layout)
    expected = roi_align(features, boxes, **params, mode=mode, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    # The parameters are really used: other parameters give other numbers.
    assert not np.array_equal(RoIAlign((3, 2), 0.5, 2, False, mode=mode, layout=layout)(
        features, boxes), expected)

    grad_output = rng.standard_normal(expected.shape)
    expected_grad = roi_align_backward(grad_output, boxes, features.shape, **params, mode=mode,
                                       layout=layout, input=features)
    np.testing.assert_array_equal(layer.backward(grad_output, boxes, features.shape,
                                                 input=features), expected_grad)

    out = np.empty_like(expected)
    assert layer(features, boxes, out=out, num_threads=1) is out
    np.testing.assert_array_equal(out, expected)
    grad_out = np.empty_like(features)
    assert layer.backward(grad_output, boxes, features.shape, input=features, out=grad_out,
                          num_threads=2) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)


def test_roialign_max_backward_needs_input():
    """The max-mode layer's backward needs the features, like the function."""
    layer = RoIAlign(2, mode="max")
    with pytest.raises(ValueError, match="input"):
        layer.backward(np.ones((1, 1, 2, 2)), np.array([[0, 0.0, 0.0, 3.0, 3.0]]), (1, 1, 4, 4))


def test_repr():
    """repr shows every parameter, normalised (int output_size -> pair, strings quoted)."""
    text = repr(RoIAlign(7, 1 / 16, 2, True, mode="max", layout="NHWC"))
    assert text.startswith("RoIAlign(")
    for part in ("output_size=(7, 7)", "spatial_scale=0.0625", "sampling_ratio=2",
                 "aligned=True", "mode='max'", "layout='NHWC'"):
        assert part in text
    assert repr(RoIAlign([3, 4])) == ("RoIAlign(output_size=(3, 4), spatial_scale=1.0, "
                                      "sampling_ratio=-1, aligned=False, mode='avg', "
                                      "layout='NCHW')")
    assert repr(RoIPool(5, 0.25)) == ("RoIPool(output_size=(5, 5), spatial_scale=0.25, "
                                      "layout='NCHW')")


def test_repr_round_trips():
    """eval(repr(layer)) rebuilds an equal layer."""
    for layer in (RoIAlign((2, 3), 0.125, 0, True, mode="max", layout="NHWC"),
                  RoIPool(4, 0.5, layout="NHWC")):
        assert eval(repr(layer), {"RoIAlign": RoIAlign, "RoIPool": RoIPool}) == layer


def test_equality():
    """Equal when every parameter is equal (after normalisation), else not; never hashable."""
    assert RoIAlign(7) == RoIAlign((7, 7), 1, -1, False)
    assert RoIAlign(7, aligned=np.bool_(True)) == RoIAlign(7, aligned=True)
    for other in (RoIAlign(6), RoIAlign(7, 0.5), RoIAlign(7, sampling_ratio=2),
                  RoIAlign(7, aligned=True), RoIAlign(7, mode="max"),
                  RoIAlign(7, layout="NHWC"), RoIPool(7), "RoIAlign(7)"):
        assert RoIAlign(7) != other
    assert RoIPool(3, 0.5) == RoIPool((3, 3), 0.5)
    assert RoIPool(3, 0.5) != RoIPool(3, 0.25)
    assert RoIPool(3) != RoIPool(3, layout="NHWC")
    with pytest.raises(TypeError):
        hash(RoIAlign(7))
    with pytest.raises(TypeError):
        hash(RoIPool(7))


@pytest.mark.parametrize("layer", [
    RoIAlign((3, 2), 0.5, 2, True, mode="max", layout="NHWC"),
    RoIAlign(4, 0.25, -1, False),
    RoIPool((2, 3), 0.5, layout="NHWC"),
    RoIPool(3),
], ids=repr)
def test_pickle_round_trip(layer):
    """A pickled layer comes back equal and computes the same numbers."""
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and copy is not layer
    assert repr(copy) == repr(layer)
    _, features, boxes = case(layer.layout, seed=3)
    np.testing.assert_array_equal(copy(features, boxes), layer(features, boxes))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 0)), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), ValueError, "output_size"),
    (dict(output_size=2.5), TypeError, "output_size"),
    (dict(output_size=True), TypeError, "output_size"),
    (dict(output_size=2, spatial_scale=0), ValueError, "spatial_scale"),
    (dict(output_size=2, spatial_scale=-0.5), ValueError, "spatial_scale"),
    (dict(output_size=2, spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(output_size=2, spatial_scale="1"), TypeError, "spatial_scale"),
    (dict(output_size=2, layout="NWHC"), ValueError, "layout"),
])
@pytest.mark.parametrize("cls", [RoIAlign, RoIPool])
def test_invalid_parameters_rejected_at_construction(cls, kwargs, error, match):
    """Both layers validate their shared parameters once, when built."""
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(sampling_ratio=None), TypeError, "sampling_ratio"),
    (dict(mode="min"), ValueError, "mode"),
    (dict(aligned=1), TypeError, "aligned"),           # bool and numpy.bool_ only
    (dict(aligned="False"), TypeError, "aligned"),     # would be truthy
    (dict(mode=np.array("avg")), ValueError, "mode"),  # not NumPy's "truth value" error
    (dict(mode="AVG"), ValueError, "mode"),
])
def test_invalid_roialign_parameters(kwargs, error, match):
    """RoIAlign's own parameters: sampling_ratio an int, mode "avg" or "max"."""
    with pytest.raises(error, match=match):
        RoIAlign(2, **kwargs)


def test_layers_are_keyword_only_where_the_functions_are():
    """mode and layout are keyword-only, as in the functions."""
    with pytest.raises(TypeError):
        RoIAlign(2, 1.0, -1, False, "max")
    with pytest.raises(TypeError):
        RoIPool(2, 1.0, "NHWC")
