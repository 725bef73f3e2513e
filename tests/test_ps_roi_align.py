"""ps_roi_align, ps_roi_align_backward and PSRoIAlign against the loop reference
(tests/reference.py), torchvision's golden numbers (bit for bit, forward and backward), the
adjoint identity, both layouts, dtypes, strides and byte order, out=, no boxes, thread-count
determinism of the backward, and the class (repr, equality, pickle, parameters)."""

import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from golden_ps import case_names, load_case, load_meta
from reference import reference_ps_roi_align
from roi_inputs import random_boxes, to_layout, to_nchw
from test_limits import UNDER_ASAN, _child

from roialign_cy import (PSRoIAlign, PSRoIPool, _args, _plan, _ps_roi_align, _runtime,
                         ps_roi_align, ps_roi_align_backward)

DTYPES = [np.float32, np.float64]
LAYOUTS = ["NCHW", "NHWC"]
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# (spatial_scale, output_size, C_out) triples each random test runs through
GEOMETRIES = [(1.0, (3, 3), 2), (0.5, (2, 3), 3), (1 / 16, (3, 2), 1)]


def random_case(rng, size, c_out, scale, n_images=3, dtype=np.float64, n_boxes=14):
    """Random (N, C_out * PH * PW, H, W) features and mixed boxes (see roi_inputs)."""
    height, width = (int(v) for v in rng.integers(5, 12, size=2))
    features = rng.uniform(-1, 1, (n_images, c_out * size[0] * size[1], height, width))
    return features.astype(dtype), random_boxes(rng, n_images, height, width, scale, n_boxes)


def pooled_shape(k, c_out, size, layout):
    """The result shape of k boxes, c_out output channels, size bins."""
    return (k, c_out) + tuple(size) if layout == "NCHW" else (k,) + tuple(size) + (c_out,)


# ---- numbers: the loop reference, torchvision's golden data ------------------------------------


@pytest.mark.parametrize("sampling_ratio", [1, 2, 0, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, layout, sampling_ratio):
    rng = np.random.default_rng([dtype == np.float32, layout == "NHWC", sampling_ratio + 1])
    for scale, size, c_out in GEOMETRIES:
        features, boxes = random_case(rng, size, c_out, scale, dtype=dtype)
        got = to_nchw(ps_roi_align(to_layout(features, layout), boxes, size, scale,
                                   sampling_ratio, layout=layout), layout)
        assert got.dtype == dtype and got.shape == (len(boxes), c_out) + size
        expected = reference_ps_roi_align(features, boxes, size, scale, sampling_ratio)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL[np.dtype(dtype)])


def test_golden_file_is_complete():
    meta = load_meta()
    assert meta["torch"] and meta["torchvision"]
    ops = {"ps_roi_align", "ps_roi_align_backward", "ps_roi_pool", "ps_roi_pool_backward"}
    assert {case["op"] for case in meta["cases"]} == ops
    assert {case["dtype"] for case in meta["cases"]} == {"float32", "float64"}
    for case in meta["cases"]:
        _, arrays = load_case(case["name"])
        assert {"input", "boxes", "output"} <= set(arrays)
        assert arrays["input"].dtype == np.dtype(case["dtype"])
        if case["op"].endswith("_backward"):
            assert arrays["grad_output"].shape == arrays["output"].shape
            assert arrays["grad_input"].shape == arrays["input"].shape


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("ps_roi_align"))
def test_matches_torchvision_golden_bit_for_bit(name, layout):
    """torchvision's numbers exactly; where it divides 0 by an empty adaptive grid (NaN), 0."""
    params, data = load_case(name)
    features, expected = data["input"], data["output"]
    size = tuple(params["output_size"])
    got = to_nchw(ps_roi_align(to_layout(features, layout), data["boxes"], size,
                               params["spatial_scale"], params["sampling_ratio"],
                               layout=layout), layout)
    assert got.dtype == features.dtype and got.shape == expected.shape
    empty_grid = np.isnan(expected)
    np.testing.assert_array_equal(got[~empty_grid], expected[~empty_grid])
    np.testing.assert_array_equal(got[empty_grid], 0)
    if params["sampling_ratio"] > 0:
        assert not empty_grid.any()


def test_golden_has_empty_adaptive_grids():
    """The premise of the NaN -> 0 rule above: some golden cases do hold torchvision's NaN."""
    assert any(np.isnan(load_case(name)[1]["output"]).any()
               for name in case_names("ps_roi_align"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", case_names("ps_roi_align_backward"))
def test_backward_matches_torchvision_golden_bit_for_bit(name, layout):
    """torchvision's autograd gradient exactly: every element sums its contributions in
    torchvision's order (RoIs ascending, samples, taps)."""
    params, data = load_case(name)
    features, grad_output = data["input"], data["grad_output"]
    got = ps_roi_align_backward(to_layout(grad_output, layout), data["boxes"],
                                to_layout(features, layout).shape,
                                tuple(params["output_size"]), params["spatial_scale"],
                                params["sampling_ratio"], layout=layout)
    assert got.dtype == features.dtype
    assert np.count_nonzero(got) > 0
    np.testing.assert_array_equal(got, to_layout(data["grad_input"], layout))


@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_matches_reference(layout, sampling_ratio):
    rng = np.random.default_rng([7, sampling_ratio + 1])
    for scale, size, c_out in GEOMETRIES:
        features, boxes = random_case(rng, size, c_out, scale, n_images=2)
        grad_output = rng.standard_normal((len(boxes), c_out) + size)
        got = ps_roi_align_backward(to_layout(grad_output, layout), boxes,
                                    to_layout(features, layout).shape, size, scale,
                                    sampling_ratio, layout=layout)
        _, expected = reference_ps_roi_align(features, boxes, size, scale, sampling_ratio,
                                             grad_output=grad_output)
        np.testing.assert_allclose(to_nchw(got, layout), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_adjoint_identity(sampling_ratio, layout, dtype):
    """<ps_roi_align(x), g> == <x, ps_roi_align_backward(g)> for any x, g."""
    rng = np.random.default_rng([sampling_ratio + 5, layout == "NHWC"])
    size, c_out = (3, 2), 3
    features, boxes = random_case(rng, size, c_out, 0.5, n_images=3, dtype=dtype, n_boxes=40)
    features = to_layout(features, layout)
    kwargs = dict(output_size=size, spatial_scale=0.5, sampling_ratio=sampling_ratio,
                  layout=layout)
    pooled = ps_roi_align(features, boxes, **kwargs).astype(np.float64)
    for _ in range(3):
        grad_output = rng.standard_normal(pooled.shape).astype(dtype)
        grad_input = ps_roi_align_backward(grad_output, boxes, features.shape, **kwargs)
        lhs = np.vdot(pooled, grad_output.astype(np.float64))
        rhs = np.vdot(features.astype(np.float64), grad_input.astype(np.float64))
        magnitude = np.vdot(np.abs(pooled), np.abs(grad_output.astype(np.float64)))
        assert magnitude > 10.0
        assert abs(lhs - rhs) <= (1e-13 if dtype == np.float64 else 1e-5) * magnitude


def test_channel_mapping():
    """Bin (c, ph, pw) reads input channel (c * PH + ph) * PW + pw and no other: a map that
    is constant v in channel v gives exactly that channel number."""
    size, c_out = (2, 3), 4
    channels = c_out * 6
    features = np.broadcast_to(np.arange(channels, dtype=np.float64)[None, :, None, None],
                               (1, channels, 6, 7))
    boxes = np.array([[0, 1.0, 1.0, 5.0, 4.0], [0, 0.0, 2.0, 6.5, 5.5]])
    got = ps_roi_align(features, boxes, size, sampling_ratio=2)
    c, ph, pw = np.meshgrid(np.arange(c_out), np.arange(2), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(got[0], (c * 2 + ph) * 3 + pw)
    np.testing.assert_array_equal(got[1], (c * 2 + ph) * 3 + pw)


def test_geometry_is_roi_align_aligned():
    """With C_out * PH * PW channels all equal, ps_roi_align is roi_align(aligned=True) of one
    of them: the 0.5 offset always, no 1x1 stretch of tiny boxes."""
    from roialign_cy import roi_align

    rng = np.random.default_rng(3)
    plane = rng.standard_normal((2, 1, 8, 9))
    features = np.repeat(plane, 2 * 2 * 3, axis=1)
    boxes = random_boxes(rng, 2, 8, 9, 1.0, n_boxes=14)
    for sr in (2, -1):
        ps = ps_roi_align(features, boxes, (2, 3), 1.0, sr)
        aligned = roi_align(plane, boxes, (2, 3), 1.0, sr, True)
        np.testing.assert_array_equal(ps, np.repeat(aligned, 2, axis=1))


# ---- forms: dtypes, strides, byte order, out=, no boxes, 3-D input, lists of boxes ----------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_is_float32_rounded(layout):
    rng = np.random.default_rng(4)
    features, boxes = random_case(rng, (2, 2), 3, 1.0)
    features = to_layout(features, layout).astype(np.float16)
    half = ps_roi_align(features, boxes, 2, 1.0, 2, layout=layout)
    single = ps_roi_align(features.astype(np.float32), boxes, 2, 1.0, 2, layout=layout)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, single.astype(np.float16))
    grad = rng.standard_normal(half.shape).astype(np.float16)
    half_grad = ps_roi_align_backward(grad, boxes, features.shape, 2, 1.0, 2, layout=layout)
    single_grad = ps_roi_align_backward(grad.astype(np.float32), boxes, features.shape, 2, 1.0,
                                        2, layout=layout)
    assert half_grad.dtype == np.float16
    np.testing.assert_array_equal(half_grad, single_grad.astype(np.float16))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strides_and_byte_order_give_identical_numbers(layout):
    rng = np.random.default_rng(5)
    features, boxes = random_case(rng, (3, 2), 2, 0.5, dtype=np.float32)
    features = to_layout(features, layout)
    expected = ps_roi_align(features, boxes, (3, 2), 0.5, -1, layout=layout)
    grad = rng.standard_normal(expected.shape).astype(np.float32)
    expected_grad = ps_roi_align_backward(grad, boxes, features.shape, (3, 2), 0.5, -1,
                                          layout=layout)
    wide = np.zeros(features.shape[:-1] + (2 * features.shape[-1],), np.float32)
    wide[..., ::2] = features
    for form in (features.astype(">f4"), np.asfortranarray(features), wide[..., ::2]):
        np.testing.assert_array_equal(ps_roi_align(form, boxes, (3, 2), 0.5, -1, layout=layout),
                                      expected)
    for form in (grad.astype(">f4"), np.asfortranarray(grad)):
        np.testing.assert_array_equal(
            ps_roi_align_backward(form, boxes, features.shape, (3, 2), 0.5, -1, layout=layout),
            expected_grad)
    np.testing.assert_array_equal(
        ps_roi_align(features, boxes.astype(">f8")[:, :], (3, 2), 0.5, -1, layout=layout),
        expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out(layout):
    """out= is written and returned, contiguous or strided, forward and backward."""
    rng = np.random.default_rng(6)
    features, boxes = random_case(rng, (2, 2), 3, 1.0)
    features = to_layout(features, layout)
    expected = ps_roi_align(features, boxes, 2, 1.0, 2, layout=layout)
    out = np.full(expected.shape, np.nan)
    assert ps_roi_align(features, boxes, 2, 1.0, 2, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expected)
    buffer = np.full(expected.shape[:-1] + (2 * expected.shape[-1],), -7.0)
    strided = buffer[..., ::2]
    assert ps_roi_align(features, boxes, 2, 1.0, 2, layout=layout, out=strided) is strided
    np.testing.assert_array_equal(strided, expected)
    np.testing.assert_array_equal(buffer[..., 1::2], -7.0)

    grad = rng.standard_normal(expected.shape)
    expected_grad = ps_roi_align_backward(grad, boxes, features.shape, 2, 1.0, 2, layout=layout)
    grad_out = np.full(features.shape[::-1], 5.0).T  # Fortran order, overwritten
    assert ps_roi_align_backward(grad, boxes, features.shape, 2, 1.0, 2, layout=layout,
                                 out=grad_out) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)


def test_out_overlapping_input_is_refused():
    features = np.zeros((1, 8, 6, 6))
    with pytest.raises(ValueError, match="out.*overlaps"):
        ps_roi_align(features, np.array([[0, 0.0, 0.0, 3.0, 3.0]]), 2,
                     out=features[:1, :2, :2, :2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_boxes(layout):
    features = to_layout(np.ones((2, 12, 5, 6), np.float32), layout)
    for boxes in (np.zeros((0, 5)), [np.zeros((0, 4))] * 2):
        result = ps_roi_align(features, boxes, 2, layout=layout)
        assert result.shape == pooled_shape(0, 3, (2, 2), layout)
        assert result.dtype == np.float32
        grad = ps_roi_align_backward(np.zeros(result.shape, np.float32), boxes, features.shape,
                                     2, layout=layout)
        assert grad.shape == features.shape
        np.testing.assert_array_equal(grad, 0)


def test_box_forms_and_one_image():
    """torchvision's list of (K_i, 4) boxes, and (K, 4) boxes for a 3-D image, equal (K, 5)."""
    rng = np.random.default_rng(8)
    features, boxes = random_case(rng, (2, 2), 2, 1.0, n_images=2)
    expected = ps_roi_align(features, boxes, 2, 1.0, 2)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    order = np.argsort(boxes[:, 0], kind="stable")
    np.testing.assert_array_equal(ps_roi_align(features, per_image, 2, 1.0, 2), expected[order])
    one = boxes[boxes[:, 0] == 1]
    np.testing.assert_array_equal(ps_roi_align(features[1], one[:, 1:], 2, 1.0, 2),
                                  ps_roi_align(features, one, 2, 1.0, 2))
    grad = rng.standard_normal((len(one), 2, 2, 2))
    np.testing.assert_array_equal(
        ps_roi_align_backward(grad, one[:, 1:], features.shape[1:], 2, 1.0, 2),
        ps_roi_align_backward(grad, np.column_stack([np.zeros(len(one)), one[:, 1:]]),
                              (1,) + features.shape[1:], 2, 1.0, 2)[0])


def test_channels_not_a_multiple_are_refused():
    with pytest.raises(ValueError, match=r"input has 10 channels.*multiple.*2 \* 3 = 6"):
        ps_roi_align(np.zeros((1, 10, 5, 5)), np.zeros((1, 5)), (2, 3))
    with pytest.raises(ValueError, match=r"input_shape has 10 channels.*multiple"):
        ps_roi_align_backward(np.zeros((1, 1, 2, 3)), np.zeros((1, 5)), (1, 10, 5, 5), (2, 3))
    with pytest.raises(ValueError, match=r"input has 10 channels"):  # NHWC: the last axis
        ps_roi_align(np.zeros((1, 5, 5, 10)), np.zeros((1, 5)), (2, 3), layout="NHWC")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_huge_boxes_with_adaptive_grid_return(layout):
    """A box hundreds of times the map: work bounded by the map, numbers as the reference's."""
    rng = np.random.default_rng(10)
    features = rng.standard_normal((1, 4, 6, 7))
    boxes = np.array([[0, -300.0, -200.0, 400.0, 300.0], [0, 1.0, -250.0, 5.0, 180.0]])
    got = ps_roi_align(to_layout(features, layout), boxes, 2, 1.0, -1, layout=layout)
    np.testing.assert_allclose(to_nchw(got, layout),
                               reference_ps_roi_align(features, boxes, (2, 2), 1.0, -1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sampling_ratio", [70, 300])
def test_large_grids(sampling_ratio, layout):
    """More than 64 samples per bin (bisection for the inside run), and past 2**18 samples
    per RoI (merged per pixel cell): the adjoint identity holds, and the 70 x 70 grid is the
    reference's."""
    rng = np.random.default_rng(sampling_ratio)
    features = rng.standard_normal((2, 8, 8, 10))
    boxes = np.array([[0, 1.0, 1.0, 6.0, 5.0], [0, -30.0, -20.0, 5.0, 7.0],
                      [1, 6.5, 5.0, 2.0, 1.5], [1, 9.0, 2.0, 40.0, 3.0]])
    kwargs = dict(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=sampling_ratio,
                  layout=layout)
    x = to_layout(features, layout)
    pooled = ps_roi_align(x, boxes, **kwargs)
    grad = rng.standard_normal(pooled.shape)
    grad_input = ps_roi_align_backward(grad, boxes, x.shape, **kwargs)
    magnitude = np.vdot(np.abs(pooled), np.abs(grad))
    assert abs(np.vdot(pooled, grad) - np.vdot(x, grad_input)) <= 1e-12 * magnitude
    if sampling_ratio == 70:
        np.testing.assert_allclose(to_nchw(pooled, layout),
                                   reference_ps_roi_align(features, boxes, (2, 2), 1.0, 70),
                                   rtol=0, atol=1e-12)


def test_huge_map_reads_and_scatters_in_place_with_the_same_numbers():
    """A map so big that one bin's packed buffer would pass 16 MB is pooled RoI by RoI and
    scattered into directly: the same numbers, bit for bit, as the packed kernels on a small
    map with the same boxes."""
    rng = np.random.default_rng(14)
    boxes = random_boxes(rng, 1, 20, 24, 1.0, n_boxes=20)
    boxes[:, 1:] = np.clip(boxes[:, 1:], -3, 17)  # well inside the small map too
    grad = rng.standard_normal((len(boxes), 1, 2, 2))
    small = ps_roi_align_backward(grad, boxes, (1, 4, 40, 40), 2, 1.0, 2)
    huge = ps_roi_align_backward(grad, boxes, (1, 4, 1600, 1500), 2, 1.0, 2)  # 77 MB
    np.testing.assert_array_equal(huge[:, :, :40, :40], small)
    assert not huge[:, :, 40:].any() and not huge[:, :, :, 40:].any()
    assert np.count_nonzero(small) > 100
    huge[:, :, :40, :40] = rng.standard_normal((1, 4, 40, 40))  # now the features
    np.testing.assert_array_equal(ps_roi_align(huge, boxes, 2, 1.0, 2),
                                  ps_roi_align(huge[:, :, :40, :40].copy(), boxes, 2, 1.0, 2))


def test_more_rois_than_the_roi_cache_holds():
    """20000 RoIs: their axis tables pass the packed kernels' 16 MB RoI cache, so the image
    is pooled RoI by RoI from the map and its gradient scattered directly: the results are
    the two halves' (computed apart, with the cache: bit for bit forward, to rounding
    backward) and still each other's adjoint."""
    rng = np.random.default_rng(16)
    features = rng.standard_normal((1, 49, 12, 13))
    boxes = random_boxes(rng, 1, 12, 13, 1.0, n_boxes=20000)  # ~1 kB of tables each
    grad = rng.standard_normal((len(boxes), 1, 7, 7))
    got = ps_roi_align_backward(grad, boxes, features.shape, 7, 1.0, 2)
    halves = sum(ps_roi_align_backward(grad[part], boxes[part], features.shape, 7, 1.0, 2)
                 for part in (slice(0, 10000), slice(10000, None)))  # each fits the cache
    np.testing.assert_allclose(got, halves, rtol=1e-12, atol=1e-9)
    pooled = ps_roi_align(features, boxes, 7, 1.0, 2)  # the forward pools RoI by RoI then
    np.testing.assert_array_equal(pooled, np.concatenate(
        [ps_roi_align(features, boxes[part], 7, 1.0, 2)
         for part in (slice(0, 10000), slice(10000, None))]))
    magnitude = np.vdot(np.abs(pooled), np.abs(grad))
    assert abs(np.vdot(pooled, grad) - np.vdot(features, got)) <= 1e-12 * magnitude


# ---- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_is_bit_identical_for_any_thread_count(layout):
    """Big enough for a team (the plan really splits it), results equal for 1, 2, 3 threads."""
    rng = np.random.default_rng(11)
    size, c_out = (3, 3), 16
    features, boxes = random_case(rng, size, c_out, 0.5, n_images=2, dtype=np.float32,
                                  n_boxes=300)
    features = to_layout(features, layout)
    grad = rng.standard_normal(pooled_shape(len(boxes), c_out, size, layout)).astype(np.float32)
    if _runtime.OPENMP_ENABLED and _plan.USABLE_CPUS > 1:
        assert _plan.team_size(3, grad.size) > 1
    results = [ps_roi_align_backward(grad, boxes, features.shape, size, 0.5, 2, layout=layout,
                                     num_threads=n) for n in (1, 2, 3)]
    forwards = [ps_roi_align(features, boxes, size, 0.5, 2, layout=layout, num_threads=n)
                for n in (1, 2, 3)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    for result in forwards[1:]:
        np.testing.assert_array_equal(result, forwards[0])


@pytest.mark.parametrize("block", [1, 5, 13])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_blocks_that_split_bins(layout, block, monkeypatch):
    """Work items of `block` input channels (boundaries that fall inside a group of PH * PW
    bins, as a thread team may cut them) give the same result and gradient, bit for bit."""
    rng = np.random.default_rng([15, block])
    size, c_out = (3, 3), 4
    features, boxes = random_case(rng, size, c_out, 0.5, n_images=2, n_boxes=20)
    features = to_layout(features, layout)
    grad = rng.standard_normal(pooled_shape(len(boxes), c_out, size, layout))
    expected = ps_roi_align(features, boxes, size, 0.5, 2, layout=layout)
    expected_grad = ps_roi_align_backward(grad, boxes, features.shape, size, 0.5, 2,
                                          layout=layout)
    monkeypatch.setattr(_plan, "channel_share", lambda n_threads, n_images, channels: block)
    np.testing.assert_array_equal(ps_roi_align(features, boxes, size, 0.5, 2, layout=layout),
                                  expected)
    got = ps_roi_align_backward(grad, boxes, features.shape, size, 0.5, 2, layout=layout)
    np.testing.assert_array_equal(got, expected_grad)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_forward_kernels_agree(sampling_ratio, monkeypatch):
    """The packed forward and the per-RoI one (long calls: PACKED_WORK) give the same
    numbers, bit for bit."""
    rng = np.random.default_rng([17, sampling_ratio + 1])
    features, boxes = random_case(rng, (3, 3), 5, 0.5, n_images=2, n_boxes=30)
    call = _args.forward_call(features, boxes, 3, 0.5, "NCHW", None, position_sensitive=True)
    assert _ps_roi_align._packed_forward(call, sampling_ratio)
    packed = ps_roi_align(features, boxes, 3, 0.5, sampling_ratio)
    monkeypatch.setattr(_ps_roi_align, "PACKED_WORK", 0)
    assert not _ps_roi_align._packed_forward(call, sampling_ratio)
    np.testing.assert_array_equal(ps_roi_align(features, boxes, 3, 0.5, sampling_ratio), packed)


# ---- PSRoIAlign ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_equals_functions(layout):
    rng = np.random.default_rng(12)
    features, boxes = random_case(rng, (3, 2), 2, 0.5, n_images=2)
    features = to_layout(features, layout)
    params = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=2)
    layer = PSRoIAlign(**params, layout=layout)
    expected = ps_roi_align(features, boxes, **params, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    assert not np.array_equal(PSRoIAlign((3, 2), 0.5, 1, layout=layout)(features, boxes),
                              expected)
    grad = rng.standard_normal(expected.shape)
    expected_grad = ps_roi_align_backward(grad, boxes, features.shape, **params, layout=layout)
    np.testing.assert_array_equal(layer.backward(grad, boxes, features.shape), expected_grad)
    out = np.empty_like(expected)
    assert layer(features, boxes, out=out, num_threads=1) is out
    np.testing.assert_array_equal(out, expected)
    grad_out = np.empty_like(features)
    assert layer.backward(grad, boxes, features.shape, out=grad_out, num_threads=2) is grad_out
    np.testing.assert_array_equal(grad_out, expected_grad)


def test_repr_and_equality():
    assert repr(PSRoIAlign([3, 4])) == ("PSRoIAlign(output_size=(3, 4), spatial_scale=1.0, "
                                        "sampling_ratio=-1, layout='NCHW')")
    layer = PSRoIAlign((2, 3), 0.125, 0, layout="NHWC")
    assert eval(repr(layer), {"PSRoIAlign": PSRoIAlign}) == layer
    assert PSRoIAlign(7) == PSRoIAlign((7, 7), 1, -1)
    for other in (PSRoIAlign(6), PSRoIAlign(7, 0.5), PSRoIAlign(7, sampling_ratio=2),
                  PSRoIAlign(7, layout="NHWC"), PSRoIPool(7), "PSRoIAlign(7)"):
        assert PSRoIAlign(7) != other
    with pytest.raises(TypeError):
        hash(PSRoIAlign(7))


@pytest.mark.parametrize("layer", [PSRoIAlign((3, 2), 0.5, 2, layout="NHWC"),
                                   PSRoIAlign(2, 0.25, -1)], ids=repr)
def test_pickle_round_trip(layer):
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and copy is not layer and repr(copy) == repr(layer)
    rng = np.random.default_rng(13)
    features, boxes = random_case(rng, layer.output_size, 2, 0.5)
    features = to_layout(features, layer.layout)
    np.testing.assert_array_equal(copy(features, boxes), layer(features, boxes))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), ValueError, "output_size"),
    (dict(output_size=2.5), TypeError, "output_size"),
    (dict(output_size=2, spatial_scale=0), ValueError, "spatial_scale"),
    (dict(output_size=2, spatial_scale="1"), TypeError, "spatial_scale"),
    (dict(output_size=2, sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(output_size=2, sampling_ratio=None), TypeError, "sampling_ratio"),
    (dict(output_size=2, layout="NWHC"), ValueError, "layout"),
])
def test_invalid_parameters_rejected_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSRoIAlign(**kwargs)


def test_layout_is_keyword_only():
    with pytest.raises(TypeError):
        PSRoIAlign(2, 1.0, -1, "NHWC")


# ---- limits: huge grids in bounded memory and time; Ctrl-C -------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_huge_sampling_ratios_fit_in_1_gib():
    """sampling_ratio 3000 / 10**9 and a huge box with the adaptive grid, both layouts,
    forward and backward: each under a second in a child limited to 1 GiB."""
    out = _child(f"""
        import time
        import numpy as np
        from roialign_cy import ps_roi_align, ps_roi_align_backward
        x = np.random.default_rng(0).random((1, 2 * 49, 32, 32), dtype=np.float32)
        boxes = np.array([[0, 1, 1, 20, 20], [0, -1e7, -1e7, 1e7, 1e7]], np.float32)
        for layout in ("NCHW", "NHWC"):
            xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            for sr in (3000, 10**9, -1):
                start = time.perf_counter()
                pooled = ps_roi_align(xl, boxes, 7, sampling_ratio=sr, layout=layout)
                grad = ps_roi_align_backward(np.ones_like(pooled), boxes, xl.shape, 7,
                                             sampling_ratio=sr, layout=layout)
                seconds = time.perf_counter() - start
                assert np.isfinite(pooled).all() and np.isfinite(grad).all()
                assert seconds < 1.0 or {UNDER_ASAN}, (layout, sr, seconds)
        print("ok")
    """, limit_gib=1)
    assert out.strip() == "ok"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX signals")
def test_sigint_interrupts_a_long_call():
    """Ctrl-C during a forward of several seconds: KeyboardInterrupt within a second (work
    items are RoIs, run in time slices), and the interpreter still works."""
    code = textwrap.dedent("""
        import signal, time
        import numpy as np
        from roialign_cy import ps_roi_align
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(0)
        x = rng.random((2, 16 * 49, 60, 60), dtype=np.float32)
        boxes = np.column_stack([rng.integers(0, 2, 4000), rng.uniform(0, 30, (4000, 2)),
                                 rng.uniform(30, 60, (4000, 2))])
        print("start", flush=True)
        try:
            ps_roi_align(x, boxes, 7, sampling_ratio=24, num_threads=1)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            small = ps_roi_align(np.ones((1, 1, 4, 4), np.float32), np.array([[0, 0, 0, 3, 3.0]]), 1)
            print("healthy", float(small.ravel()[0]), flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "start"
        time.sleep(1.0)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        lines = child.stdout.read().split("\n")
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert lines[0].startswith("interrupted"), lines
    assert float(lines[0].split()[1]) - sent < 1.0 or UNDER_ASAN
    assert lines[1] == "healthy 1.0"
