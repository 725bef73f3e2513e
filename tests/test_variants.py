"""Every kernel variant gives the same numbers, bit for bit: the per-RoI and the packed
(channel-block) kernels, for every shape of transpose edge, and the baseline and AVX2 builds,
chosen through the explicit `variant=` and `build=` arguments of the operators' modules."""

import os
import subprocess
import sys

import numpy as np
import pytest
from reference import reference_roi_align
from roi_inputs import align_nchw, random_boxes, to_layout

from roialign_cy import _dispatch, _plan, _roi_align, _roi_pool

VARIANTS = ("per_roi", "packed")
needs_avx2 = pytest.mark.skipif("avx2" not in _dispatch.BUILDS,
                                reason="no AVX2 build here, or a CPU without AVX2")


def _calls(features, boxes, output_size, grad, layout="NCHW", **forced):
    """Every function of both operators on one input, with `forced` variant/build."""
    args = (boxes, output_size, 0.5)
    return {
        "avg": lambda: _roi_align.forward(features, *args, 2, True, layout=layout, **forced),
        "max": lambda: _roi_align.forward(features, *args, -1, False, layout=layout, mode="max",
                                          **forced),
        "backward": lambda: _roi_align.backward(grad, boxes, features.shape, output_size, 0.5,
                                                2, True, layout=layout, **forced),
        "max_backward": lambda: _roi_align.backward(grad, boxes, features.shape, output_size,
                                                    0.5, -1, False, layout=layout, mode="max",
                                                    input=features, **forced),
        "pool": lambda: _roi_pool.forward(features, *args, layout=layout, return_argmax=True,
                                          **forced),
        "pool_backward": lambda: _roi_pool.backward(grad, boxes, features, output_size, 0.5,
                                                    layout=layout, **forced),
    }


def _assert_same(results, reference, name):
    """Two results of one call (arrays, or roi_pool's (pooled, argmax)) are identical."""
    if isinstance(reference, tuple):
        for got, expected in zip(results, reference):
            np.testing.assert_array_equal(got, expected, err_msg=name)
    else:
        np.testing.assert_array_equal(results, reference, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4, 5, 17])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (4, 4), (3, 5), (7, 7)])
def test_packed_equals_per_roi_for_every_edge(output_size, channels, dtype):
    """The packed kernels move data through transposes (4 x 4 SSE tiles plus edges): for
    every shape of edge they give the per-RoI kernels' numbers bit for bit."""
    rng = np.random.default_rng(channels * 100 + output_size[0] * 10 + output_size[1])
    features = rng.standard_normal((2, channels, 11, 13)).astype(dtype)
    boxes = random_boxes(rng, 2, 11, 13, 0.5, n_boxes=30)
    grad = rng.standard_normal(_roi_align.forward(features, boxes, output_size, 0.5).shape)
    grad = grad.astype(dtype)
    per_roi = _calls(features, boxes, output_size, grad, variant="per_roi")
    packed = _calls(features, boxes, output_size, grad, variant="packed")
    for name in per_roi:
        _assert_same(packed[name](), per_roi[name](), name)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("channels", [3, 16, 37])
def test_forward_kernels_bit_identical(channels, mode, layout):
    """The per-RoI and the packed forward give the same bits (full and partial blocks), and
    the reference's numbers."""
    rng = np.random.default_rng(channels)
    features = rng.standard_normal((3, channels, 12, 13)).astype(np.float32)
    boxes = random_boxes(rng, 2, 12, 13, 0.5, n_boxes=30)  # image 2 has no RoI
    results = {variant: align_nchw(features, boxes, (3, 4), 0.5, -1, True, layout=layout,
                                   mode=mode, variant=variant) for variant in VARIANTS}
    assert np.array_equal(results["per_roi"], results["packed"])
    expected = reference_roi_align(features, boxes, (3, 4), 0.5, -1, True, mode=mode)
    np.testing.assert_allclose(results["packed"], expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_locality_order_changes_no_bit(n_threads, mode, layout, monkeypatch):
    """The per-RoI forward pooling the RoIs by locality (each image's by their centres' y,
    above _plan.LOCALITY_BYTES) gives the numbers of pooling them in their given order, and
    the reference's, with every RoI in its own row."""
    rng = np.random.default_rng([n_threads, mode == "max", layout == "NHWC"])
    features = rng.standard_normal((3, 5, 12, 13)).astype(np.float32)
    boxes = random_boxes(rng, 3, 12, 13, 0.5, n_boxes=40)

    def pooled():
        return align_nchw(features, boxes, (3, 4), 0.5, -1, True, layout=layout, mode=mode,
                          variant="per_roi", num_threads=n_threads)

    given = pooled()
    monkeypatch.setattr(_plan, "LOCALITY_BYTES", 0)
    monkeypatch.setattr(_plan, "LOCALITY_ROIS", 1)
    by_locality = pooled()
    np.testing.assert_array_equal(by_locality, given)
    expected = reference_roi_align(features, boxes, (3, 4), 0.5, -1, True, mode=mode)
    np.testing.assert_allclose(by_locality, expected, rtol=1e-5, atol=2e-5)


def _forwards():
    """Each other per-RoI forward the locality order applies to, as (name, call(features NCHW,
    boxes (K, 5), layout))."""
    import roialign_cy as ra

    def rotated(features, boxes, layout):
        centre = (boxes[:, 1:3] + boxes[:, 3:5]) / 2
        size = np.abs(boxes[:, 3:5] - boxes[:, 1:3])
        angle = np.linspace(-90, 90, len(boxes))[:, None]
        rows = np.hstack([boxes[:, :1], centre, size, angle]).astype(features.dtype)
        return ra.roi_align_rotated(features, rows, (3, 2), 0.5, 2, layout=layout)

    return [
        ("roi_pool", lambda f, b, layout: ra.roi_pool(f, b, (3, 2), 0.5, layout=layout,
                                                      return_argmax=True)),
        ("ps_roi_pool", lambda f, b, layout: ra.ps_roi_pool(f, b, (3, 2), 0.5, layout=layout)),
        ("roi_align_rotated", rotated),
        ("prroi_pool", lambda f, b, layout: ra.prroi_pool(f, b, (3, 2), 0.5, layout=layout)),
    ]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name, forward", _forwards(), ids=[n for n, _ in _forwards()])
def test_locality_order_changes_no_bit_in_other_operators(name, forward, layout, monkeypatch):
    """roi_pool, ps_roi_pool, roi_align_rotated and prroi_pool pool their RoIs by locality
    too, with the given order's bits, each RoI in its own row."""
    rng = np.random.default_rng(len(name))
    features = to_layout(rng.standard_normal((3, 12, 12, 13)).astype(np.float32), layout)
    boxes = random_boxes(rng, 3, 12, 13, 0.5, n_boxes=40).astype(np.float32)
    given = forward(features, boxes, layout)
    monkeypatch.setattr(_plan, "LOCALITY_BYTES", 0)
    monkeypatch.setattr(_plan, "LOCALITY_ROIS", 1)
    _assert_same(forward(features, boxes, layout), given, name)


def test_locality_order_is_planned_only_for_big_maps():
    """Small maps (the caches hold them) and few RoIs keep the given order, at no cost;
    a map beyond LOCALITY_BYTES per image gets each image's RoIs by their centres' y."""
    from roialign_cy import _args

    def order(features, boxes):
        call = _args.forward_call(features, boxes, 7, 0.25, "NHWC", None)
        return _plan.plan(call, 1, None, grouped=False, locality=True).roi_order

    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 2, 64, 64, 0.25, n_boxes=_plan.LOCALITY_ROIS)
    small = np.zeros((2, 8, 64, 64), np.float32)
    assert order(small, boxes) is None
    side = int(np.sqrt(_plan.LOCALITY_BYTES / 4 / 8)) + 1  # 8 channels a pixel, float32
    big = np.zeros((2, side, side, 8), np.float32)
    assert order(big, boxes[:-1]) is None  # one RoI short
    got = order(big, boxes)
    centre = boxes[:, 2] + boxes[:, 4]
    expected = sorted(range(len(boxes)), key=lambda k: (boxes[k, 0], centre[k]))
    np.testing.assert_array_equal(got, expected)


@needs_avx2
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_every_function_matches_between_builds(layout, dtype, variant):
    """The AVX2 build (256-bit vectors, no FMA) gives the baseline build's bits."""
    rng = np.random.default_rng(31)
    # 37 channels: a full 256-bit stretch, a 128-bit one and a scalar tail in every loop.
    features = to_layout(rng.standard_normal((2, 37, 19, 23)).astype(dtype), layout)
    boxes = random_boxes(rng, 2, 19, 23, 0.5, n_boxes=60)
    shape = _roi_align.forward(features, boxes, (5, 4), 0.5, layout=layout).shape
    grad = rng.standard_normal(shape).astype(dtype)
    baseline = _calls(features, boxes, (5, 4), grad, layout, variant=variant, build="baseline")
    avx2 = _calls(features, boxes, (5, 4), grad, layout, variant=variant, build="avx2")
    for name in baseline:
        _assert_same(avx2[name](), baseline[name](), name)


def test_unknown_variant_or_build_is_refused():
    features = np.ones((1, 1, 4, 4), np.float32)
    boxes = np.array([[0, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match="variant"):
        _roi_align.forward(features, boxes, 2, variant="blocked")
    with pytest.raises(ValueError, match="build"):
        _roi_pool.forward(features, boxes, 2, build="sse9")


def test_baseline_can_be_forced():
    """ROIALIGN_CY_SIMD=baseline selects the baseline build whatever the CPU."""
    code = "from roialign_cy import _dispatch; print(_dispatch.SIMD)"
    env_run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "ROIALIGN_CY_SIMD": "baseline"},
    )
    assert env_run.stdout.split() == ["baseline"]


def test_selected_build_is_reported():
    """The default build is AVX2 wherever it was built and the CPU has it."""
    from roialign_cy import _runtime

    import roialign_cy

    expected = "avx2" if "avx2" in _dispatch.BUILDS else "baseline"
    if os.environ.get("ROIALIGN_CY_SIMD", "").strip().lower() == "baseline":
        expected = "baseline"
    assert _dispatch.SIMD == expected == roialign_cy.show_config(print_out=False)["simd"]
    assert ("avx2" in _dispatch.BUILDS) <= bool(_runtime.cpu_has_avx2())
