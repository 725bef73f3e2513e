"""Property-based tests (hypothesis): random shapes, dtypes, layouts, strides and boxes.

- roi_align (avg and max) equals a reference on every kind of box: ordinary, inverted,
  zero-size, far outside, long enough for the sparse (> 64 samples per bin) path, exactly on
  the borders, batch indices at both ends; in float16, float32 and float64; NCHW and NHWC;
  one image or a batch; boxes as an array or a per-image list.
- Any strides, byte order or writeability give the very same bits as a C-contiguous copy,
  and both forward kernels (per RoI, and channel blocks) give the very same bits.
- roi_pool equals a loop reference of torchvision's quantized semantics.
- Finite features and finite boxes, however huge, give a finite result, quickly.
- The backwards are the adjoints of the forwards (float64): <f(x), g> == <x, f'(g)>.

Runs are reproducible (derandomize=True, no example database); set ROIALIGN_HYPOTHESIS_SCALE=10
for a ten times deeper run. Every test asserts how many examples it really ran and prints it.
"""

import contextlib
import os
import sys
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

from reference import reference_roi_align, reference_roi_align_in_dtype, reference_roi_pool

from roialign_cy import roi_align, roi_align_backward, roi_pool, roi_pool_backward

SCALE = int(os.environ.get("ROIALIGN_HYPOTHESIS_SCALE", "1"))
RAN = Counter()


def hypothesis_settings(max_examples):
    """Reproducible settings for CI: fixed example sequence, no deadline, no database."""
    return settings(
        max_examples=max_examples * SCALE, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


def report(capsys, name, minimum):
    """Print how many examples `name` ran and fail if filtering left too few."""
    with capsys.disabled():
        print(f"\n{name}: {RAN[name]} hypothesis examples ran "
              f"(total so far in test_properties: {sum(RAN.values())})")
    assert RAN[name] >= minimum * SCALE, f"{name} ran only {RAN[name]} examples"


@contextlib.contextmanager
def bounded_address_space(extra_gib=6):
    """Cap this process's address space a few GiB above its current size while the block
    runs, so a runaway allocation raises MemoryError instead of summoning the OOM killer
    (which would kill CI's whole test run). No-op off Linux and under AddressSanitizer."""
    try:
        import resource
    except ImportError:
        yield
        return
    if "asan" in os.environ.get("LD_PRELOAD", "") or not os.path.exists("/proc/self/statm"):
        yield
        return
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra_gib * 2**30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------

def compute_dtype(dtype):
    """The dtype the package computes in (float16 runs in float32)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

VIEWS = ["contiguous", "fortran", "negative", "sliced", "transposed", "big-endian", "readonly",
         "big-endian-fortran-readonly"]


def as_view(array, view):
    """An array equal to `array` with other strides / byte order / writeability."""
    if view == "contiguous":
        return np.ascontiguousarray(array)
    if view == "fortran":
        return np.asfortranarray(array)
    if view == "negative":
        flipped = np.ascontiguousarray(array[::-1, ..., ::-1])
        return flipped[::-1, ..., ::-1]
    if view == "sliced":
        big = np.full(tuple(2 * n + 1 for n in array.shape), np.nan, dtype=array.dtype)
        index = tuple(slice(1, 1 + 2 * n, 2) for n in array.shape)
        big[index] = array
        return big[index]
    if view == "transposed":
        order = tuple(reversed(range(array.ndim)))
        return np.ascontiguousarray(array.transpose(order)).transpose(order)
    if view == "big-endian":
        return array.astype(array.dtype.newbyteorder(">"))
    if view == "readonly":
        copy = array.copy()
        copy.flags.writeable = False
        return copy
    copy = np.asfortranarray(array.astype(array.dtype.newbyteorder(">")))
    copy.flags.writeable = False
    return copy


def to_layout(nchw, layout):
    """(N, C, H, W) -> the layout's axis order."""
    return nchw if layout == "NCHW" else np.moveaxis(nchw, 1, -1)


def from_layout(pooled, layout):
    """A (K, PH, PW, C) result as (K, C, PH, PW)."""
    return pooled if layout == "NCHW" else np.moveaxis(pooled, -1, 1)


@st.composite
def moderate_box(draw, n_images, height, width, spatial_scale):
    """One [batch, x1, y1, x2, y2] row in image pixels, of an adversarial kind."""
    kind = draw(st.sampled_from(["ordinary", "inverted", "zero-size", "border", "far-outside",
                                 "long-y", "long-x", "tiny", "whole-map"]))
    size = {"x": width, "y": height}

    def coordinate(axis):
        return draw(st.integers(8 * (-size[axis] - 3), 8 * (2 * size[axis] + 3))) / 8

    def border(axis):
        n = size[axis]
        return draw(st.sampled_from([-1.5, -1.0, -0.5, 0.0, 0.5, n - 1.0, n - 0.5, float(n),
                                     n + 0.5, n + 1.0]))

    if kind == "border":
        x1, x2 = sorted([border("x"), border("x")])
        y1, y2 = sorted([border("y"), border("y")])
    elif kind == "far-outside":
        sign = draw(st.sampled_from([-1, 1]))
        shift = draw(st.integers(20, 400))
        x1, y1 = sign * shift, draw(st.integers(-2, height + 2))
        x2, y2 = x1 + draw(st.integers(0, 4)), y1 + draw(st.integers(0, 4))
        if draw(st.booleans()):
            x1, y1, x2, y2 = y1, x1, y2, x2
    elif kind in ("long-y", "long-x"):  # > 64 samples per bin: the sparse candidate search
        lo, hi = -draw(st.integers(50, 200)) - 0.25, draw(st.integers(50, 200)) + 0.375
        a = coordinate("x" if kind == "long-y" else "y")
        b = a + draw(st.integers(0, 16)) / 8
        x1, x2, y1, y2 = (a, b, lo, hi) if kind == "long-y" else (lo, hi, a, b)
    elif kind == "tiny":
        x1, y1 = coordinate("x"), coordinate("y")
        x2, y2 = x1 + draw(st.integers(0, 4)) / 8, y1 + draw(st.integers(0, 4)) / 8
    elif kind == "whole-map":
        x1, y1, x2, y2 = 0.0, 0.0, float(width), float(height)
    else:
        x1, y1, x2, y2 = (coordinate("x"), coordinate("y"), coordinate("x"), coordinate("y"))
        if kind == "ordinary":
            x1, x2 = sorted([x1, x2])
            y1, y2 = sorted([y1, y2])
        elif kind == "inverted":
            x1, x2 = sorted([x1, x2], reverse=True)
            y1, y2 = sorted([y1, y2], reverse=draw(st.booleans()))
        else:
            x2, y2 = x1, y1
    batch = draw(st.sampled_from(sorted({0, n_images - 1}))
                 | st.integers(0, n_images - 1))
    # feature pixels -> image pixels; the scales are powers of two, so this is exact
    return [float(batch), x1 / spatial_scale, y1 / spatial_scale, x2 / spatial_scale,
            y2 / spatial_scale]


@st.composite
def forward_cases(draw, max_side=9):
    """Everything one roi_align/roi_pool call needs, plus how to hand it over."""
    n_images = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    spatial_scale = draw(st.sampled_from([1.0, 0.5, 0.25, 2.0]))
    k = draw(st.integers(0, 5))
    case = dict(
        dtype=draw(st.sampled_from([np.float16, np.float32, np.float64])),
        layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        shape=(n_images, draw(st.integers(1, 4)), height, width),
        one_image=n_images == 1 and draw(st.booleans()),
        output_size=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        spatial_scale=spatial_scale,
        sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3])),
        aligned=draw(st.booleans()),
        mode=draw(st.sampled_from(["avg", "max"])),
        boxes=np.array([draw(moderate_box(n_images, height, width, spatial_scale))
                        for _ in range(k)]).reshape(k, 5),
        view=draw(st.sampled_from(VIEWS)),
        box_form=draw(st.sampled_from(["array", "float32-array", "list"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    note(repr(case))
    return case


def make_features(case):
    """The case's feature map (N, C, H, W), finite, in its dtype."""
    rng = np.random.default_rng(case["seed"])
    return rng.standard_normal(case["shape"]).astype(case["dtype"])


def box_argument(case):
    """The case's boxes in its form, and the (K, 5) rows in the order of the result."""
    rows = case["boxes"]
    if case["one_image"]:
        return rows[:, 1:].copy(), rows
    if case["box_form"] == "float32-array":
        rows = rows.astype(np.float32).astype(np.float64)  # exact: eighths / powers of two
        return rows.astype(np.float32), rows
    if case["box_form"] == "list":
        order = np.argsort(rows[:, 0], kind="stable")
        per_image = [rows[rows[:, 0] == b, 1:] for b in range(case["shape"][0])]
        return per_image, rows[order]
    return rows, rows


def call_forward(function, features_nchw, case, boxes=None, **kwargs):
    """function on the case, the features handed over in its layout and view."""
    features = to_layout(features_nchw, case["layout"])
    if case["one_image"]:
        features = features[0]
    argument = box_argument(case)[0] if boxes is None else boxes
    extra = {} if function is roi_pool else dict(sampling_ratio=case["sampling_ratio"],
                                                 aligned=case["aligned"], mode=case["mode"])
    return function(as_view(features, case["view"]), argument, case["output_size"],
                    case["spatial_scale"], layout=case["layout"], **extra, **kwargs)


def tolerance(dtype, magnitude):
    """(rtol, atol) for comparing a result of `dtype` with a float64 reference."""
    if np.dtype(dtype) == np.float64:
        return 1e-11, 1e-12 * magnitude
    if np.dtype(dtype) == np.float32:
        return 1e-5, 2e-5 * magnitude
    return 2e-3, 2e-3 * magnitude  # float16 result of a float32 computation


def forced_kernel_results(function, features_nchw, case):
    """The result with the per-RoI kernel forced (spare NaN images: pixels dominate, few
    RoIs per image) and with the channel-block kernel forced (boxes repeated: RoIs
    dominate), both NCHW.

    The package picks its kernel from the ratio of RoI taps to pixels; both must agree
    bit for bit, and the spare images, full of NaN, must never be read.
    """
    rows = box_argument(case)[1]
    n, c, h, w = features_nchw.shape
    taps = max(len(rows), 1) * case["output_size"][0] * case["output_size"][1] * 16
    n_spare = max(-(-2 * taps // (h * w)), len(rows) // 4) + 1  # beyond any block threshold
    spare = np.full((n_spare, c, h, w), np.nan, dtype=features_nchw.dtype)
    per_roi_case = dict(case, one_image=False, box_form="array")
    per_roi = call_forward(function, np.concatenate([features_nchw, spare]), per_roi_case,
                           boxes=rows)
    # channel blocks need RoI taps >= pixels and at least 16 RoIs per image
    repeats = max(-(-(n * h * w) // max(taps, 1)), -(-16 * n // max(len(rows), 1))) + 1
    blocked = call_forward(function, features_nchw, per_roi_case,
                           boxes=np.concatenate([rows] * repeats))[:len(rows)]
    return from_layout(per_roi, case["layout"]), from_layout(blocked, case["layout"])


# ---------------------------------------------------------------------------------------------
# Forward properties
# ---------------------------------------------------------------------------------------------

@hypothesis_settings(500)
@given(case=forward_cases())
def _roi_align_matches_reference(case):
    RAN["roi_align vs reference"] += 1
    features = make_features(case)
    result = call_forward(roi_align, features, case)
    rows = box_argument(case)[1]
    expected_shape = (len(rows), case["shape"][1]) + case["output_size"]
    if case["layout"] == "NHWC":
        expected_shape = (len(rows),) + case["output_size"] + (case["shape"][1],)
    assert result.shape == expected_shape and result.dtype == np.dtype(case["dtype"])
    assert np.isfinite(result).all()
    result = from_layout(result, case["layout"])

    compute = features.astype(compute_dtype(case["dtype"]))
    args = (case["output_size"], case["spatial_scale"], case["sampling_ratio"],
            case["aligned"], case["mode"])
    expected = reference_roi_align_in_dtype(compute, rows, *args)
    rtol, atol = tolerance(case["dtype"], float(np.abs(compute).max(initial=0)))
    np.testing.assert_allclose(result.astype(np.float64), expected, rtol=rtol, atol=atol)
    if case["dtype"] == np.float64 and expected.size and expected.size * 64 < 20000:
        # the shared loop reference (float64 geometry): the same numbers
        loops = reference_roi_align(features, rows, *args[:-1], mode=case["mode"])
        np.testing.assert_allclose(result, loops, rtol=rtol, atol=atol)

    # any strides / byte order / writeability: the very bits of a contiguous native call
    contiguous = call_forward(roi_align, features, dict(case, view="contiguous"))
    np.testing.assert_array_equal(result, from_layout(contiguous, case["layout"]))
    # float16: computed in float32, rounded once
    if case["dtype"] == np.float16:
        in_float32 = call_forward(roi_align, features.astype(np.float32), case)
        np.testing.assert_array_equal(
            result, from_layout(in_float32, case["layout"]).astype(np.float16))
    # both kernels, bit for bit
    per_roi, blocked = forced_kernel_results(roi_align, features, case)
    np.testing.assert_array_equal(per_roi, result)
    np.testing.assert_array_equal(blocked, result)


def test_roi_align_matches_reference(capsys):
    _roi_align_matches_reference()
    report(capsys, "roi_align vs reference", 400)


@hypothesis_settings(250)
@given(case=forward_cases())
def _roi_pool_matches_reference(case):
    RAN["roi_pool vs reference"] += 1
    features = make_features(case)
    result = from_layout(call_forward(roi_pool, features, case), case["layout"])
    assert result.dtype == np.dtype(case["dtype"])
    rows = box_argument(case)[1]
    compute = features.astype(compute_dtype(case["dtype"]))
    expected = reference_roi_pool(compute, rows, case["output_size"], case["spatial_scale"])
    np.testing.assert_array_equal(result, expected.astype(case["dtype"]))
    contiguous = call_forward(roi_pool, features, dict(case, view="contiguous"))
    np.testing.assert_array_equal(result, from_layout(contiguous, case["layout"]))
    per_roi, blocked = forced_kernel_results(roi_pool, features, case)
    np.testing.assert_array_equal(per_roi, result)
    np.testing.assert_array_equal(blocked, result)


def test_roi_pool_matches_reference(capsys):
    _roi_pool_matches_reference()
    report(capsys, "roi_pool vs reference", 200)


# Finite, however huge: coordinates anywhere in the float type's finite range.
def huge_coordinate(dtype):
    finite = st.floats(allow_nan=False, allow_infinity=False,
                       width=32 if compute_dtype(dtype) == np.float32 else 64)
    landmarks = st.sampled_from([0.0, -1.0, 1e30, -1e30, 1e15, -1e15, 3.4e38, -3.4e38, 1e8,
                                 -1e8, 2.0**24, 2.0**31, -(2.0**31), 5e-324, 1e-30,
                                 9.1e15, -1.2e16, 2.0**53 + 2, -1.09951176e12])
    return st.one_of(landmarks, finite)


@st.composite
def huge_cases(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    n_images = draw(st.integers(1, 2))
    k = draw(st.integers(1, 4))
    rows = [[draw(st.integers(0, n_images - 1))] + [draw(huge_coordinate(dtype))
                                                    for _ in range(4)] for _ in range(k)]
    rows = np.array(rows, dtype=np.float64)
    if compute_dtype(dtype) == np.float32:
        rows[:, 1:] = np.clip(rows[:, 1:], -3.4e38, 3.4e38)
    case = dict(
        dtype=dtype, layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        shape=(n_images, draw(st.integers(1, 3)), draw(st.integers(1, 12)),
               draw(st.integers(1, 12))),
        one_image=False, output_size=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        spatial_scale=draw(st.sampled_from([1.0, 0.0625, 16.0, 1e-30, 1e30])),
        sampling_ratio=draw(st.sampled_from([-1, 0, 2])), aligned=draw(st.booleans()),
        mode=draw(st.sampled_from(["avg", "max"])), boxes=rows, view="contiguous",
        box_form="array", seed=draw(st.integers(0, 2**32 - 1)),
    )
    note(repr(case))
    return case


@hypothesis_settings(300)
@given(case=huge_cases())
def _huge_boxes_finite_and_fast(case):
    RAN["huge boxes finite"] += 1
    features = make_features(case)
    started = time.perf_counter()
    results = [call_forward(roi_align, features, case), call_forward(roi_pool, features, case)]
    results += forced_kernel_results(roi_align, features, case)
    grad = np.ones_like(results[0])
    rows = case["boxes"]
    geometry = (case["output_size"], case["spatial_scale"])
    align_args = geometry + (case["sampling_ratio"], case["aligned"])
    common = dict(layout=case["layout"])
    native = to_layout(features, case["layout"])
    results.append(roi_align_backward(grad, rows, native.shape, *align_args, **common))
    max_backward = roi_align_backward(grad, rows, native.shape, *align_args, mode="max",
                                      input=native, **common)
    results.append(roi_pool_backward(grad, rows, native, *geometry, **common))
    elapsed = time.perf_counter() - started
    for result in results + [max_backward]:
        assert np.isfinite(result).all()
    assert elapsed < 2.0, f"huge boxes took {elapsed:.2f}s: work must be bounded by the map"


def test_huge_boxes_finite_and_fast(capsys):
    with bounded_address_space():
        _huge_boxes_finite_and_fast()
    report(capsys, "huge boxes finite", 250)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("box", [[0, 0, 0, 1e30, 1e30], [0, -1e30, -1e30, 1e30, 1e30],
                                 [0, -1e30, 2, 1e30, 3], [0, -3.4e38, -3.4e38, 3.4e38, 3.4e38],
                                 [0, 1e30, 1e30, -1e30, -1e30], [0, 4, 4, 1e30, 5]])
def test_named_huge_boxes(dtype, box):
    """The boxes the issue names: adaptive grids of ~1e30 samples return at once, finite."""
    features = np.random.default_rng(3).random((1, 2, 10, 12)).astype(dtype)
    for mode in ("avg", "max"):
        for aligned in (False, True):
            started = time.perf_counter()
            with bounded_address_space():
                out = roi_align(features, np.array([box]), 3, aligned=aligned, mode=mode)
            assert time.perf_counter() - started < 1.0
            assert np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Backward properties
# ---------------------------------------------------------------------------------------------

@hypothesis_settings(250)
@given(case=forward_cases(), grad_seed=st.integers(0, 2**32 - 1))
def _backward_is_adjoint(case, grad_seed):
    """float64: <f(x), g> == <x, f'(g)> (avg, linear) and <f(x), g> == <x, f'(g; x)> (max,
    positively homogeneous), for roi_align and roi_pool, and the gradient does not depend
    on the strides of grad_output."""
    RAN["backward adjoint"] += 1
    case = dict(case, dtype=np.float64)
    features = make_features(case)
    native = to_layout(features, case["layout"])
    rows = box_argument(case)[1]
    rng = np.random.default_rng(grad_seed)
    common = dict(layout=case["layout"])
    align = (case["output_size"], case["spatial_scale"], case["sampling_ratio"],
             case["aligned"])
    pool = (case["output_size"], case["spatial_scale"])

    forward = roi_align(native, rows, *align, mode=case["mode"], **common)
    grad = rng.standard_normal(forward.shape)
    gradient = roi_align_backward(as_view(grad, case["view"]), rows, native.shape, *align,
                                  mode=case["mode"], input=native, **common)
    assert gradient.shape == native.shape and gradient.dtype == np.float64
    lhs, rhs = np.vdot(forward, grad), np.vdot(native, gradient)
    scale = np.abs(forward).sum() * np.abs(grad).max(initial=0) + 1e-300
    assert abs(lhs - rhs) <= 1e-10 * scale, (lhs, rhs)
    contiguous = roi_align_backward(grad, rows, native.shape, *align, mode=case["mode"],
                                    input=native, **common)
    np.testing.assert_array_equal(gradient, contiguous)
    for num_threads in (1, 2):  # deterministic: no atomics, no racing adds
        again = roi_align_backward(grad, rows, native.shape, *align, mode=case["mode"],
                                   input=native, num_threads=num_threads, **common)
        np.testing.assert_array_equal(gradient, again)

    if case["mode"] == "avg" and len(rows):
        # both backward kernels, bit for bit: channel blocks (RoIs repeated until they
        # dominate) and per image (the same RoIs, spare images in input_shape), whose
        # spare images must get exactly zero gradient
        n, h, w = case["shape"][0], case["shape"][2], case["shape"][3]
        taps = len(rows) * case["output_size"][0] * case["output_size"][1] * 16
        repeats = max(-(-(n * h * w) // taps), -(-16 * n // len(rows))) + 1
        many = np.concatenate([rows] * repeats)
        many_grad = rng.standard_normal((len(many),) + grad.shape[1:])
        blocked = roi_align_backward(many_grad, many, native.shape, *align, **common)
        n_spare = max(-(-2 * taps * repeats // (h * w)), len(many) // 4) + 1
        spare_shape = (n + n_spare,) + native.shape[1:]  # beyond any block threshold
        per_image = roi_align_backward(many_grad, many, spare_shape, *align, **common)
        np.testing.assert_array_equal(per_image[:n], blocked)
        assert not per_image[n:].any()
        # roi_pool_backward, both kernels likewise (spare images of NaN are never read)
        spare_input = np.concatenate([native, np.full((n_spare,) + native.shape[1:], np.nan)])
        blocked = roi_pool_backward(many_grad, many, native, *pool, **common)
        per_image = roi_pool_backward(many_grad, many, spare_input, *pool, **common)
        np.testing.assert_array_equal(per_image[:n], blocked)
        assert not per_image[n:].any()

    pooled = roi_pool(native, rows, *pool, **common)
    pool_gradient = roi_pool_backward(as_view(grad, case["view"]), rows, native, *pool,
                                      **common)
    lhs, rhs = np.vdot(pooled, grad), np.vdot(native, pool_gradient)
    assert abs(lhs - rhs) <= 1e-10 * (np.abs(pooled).sum() * np.abs(grad).max(initial=0) + 1e-300)


def test_backward_is_adjoint(capsys):
    _backward_is_adjoint()
    report(capsys, "backward adjoint", 200)


@hypothesis_settings(120)
@given(case=forward_cases(max_side=6), dtype=st.sampled_from([np.float16, np.float32]))
def _backward_low_precision(case, dtype):
    """float16/float32 gradients: returned in grad_output's dtype, any view gives the same
    bits, and (avg) they are the adjoint of the forward to the dtype's precision."""
    RAN["backward float16/32"] += 1
    features = make_features(dict(case, dtype=np.float64))
    native = to_layout(features, case["layout"])
    rows = box_argument(case)[1]
    align = (case["output_size"], case["spatial_scale"], case["sampling_ratio"],
             case["aligned"])
    common = dict(layout=case["layout"], mode=case["mode"])
    shape = roi_align(native, rows, *align, **common).shape
    grad64 = np.random.default_rng(case["seed"]).standard_normal(shape)
    grad = grad64.astype(dtype)
    inputs = native.astype(dtype)
    gradient = roi_align_backward(as_view(grad, case["view"]), rows, native.shape, *align,
                                  input=inputs, **common)
    assert gradient.dtype == np.dtype(dtype)
    again = roi_align_backward(grad, rows, native.shape, *align, input=inputs, **common)
    np.testing.assert_array_equal(gradient, again)
    if case["mode"] == "avg":
        # the adjoint identity at the dtype's precision (a float64 gradient is no reference
        # here: its geometry is float64, so a sample exactly on a border may flip sides)
        forward = roi_align(inputs, rows, *align, **common).astype(np.float64)
        lhs = np.vdot(forward, grad.astype(np.float64))
        rhs = np.vdot(inputs.astype(np.float64), gradient.astype(np.float64))
        scale = np.abs(forward).sum() * np.abs(grad.astype(np.float64)).max(initial=0) + 1e-30
        assert abs(lhs - rhs) <= (3e-3 if dtype == np.float16 else 3e-6) * scale, (lhs, rhs)


def test_backward_low_precision(capsys):
    _backward_low_precision()
    report(capsys, "backward float16/32", 100)


# ---------------------------------------------------------------------------------------------
# Regressions found by deeper runs of the properties above (ROIALIGN_HYPOTHESIS_SCALE=8), both
# fixed in 9f1d6aa: (1) where the float type rounds many grid samples of a huge box to one
# coordinate, the merged sample's weights were multiplied by its repeat count in max mode too
# (65536 x the value here, inf in float16, and 65536 x the gradient); (2) float64 boxes with
# coordinates just past 2**53 made the sample table grow without bound (the OOM killer took
# the test run).
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_max_mode_of_repeated_samples_is_the_sample(dtype):
    features = np.full((1, 1, 1, 1), 0.125, dtype)
    boxes = np.array([[0, 0.0, -1.09951176e12, 0.0, 0.0]])  # y: float32 ulp 65536 there
    pooled = roi_align(features, boxes, 1, mode="max")
    assert np.isfinite(pooled).all() and pooled.max() <= 0.125
    grad = roi_align_backward(np.ones((1, 1, 1, 1), dtype), boxes, features.shape, 1,
                              mode="max", input=features)
    assert grad.max() <= 1.0


_BOUNDED_CHILD = """
import json, os, resource, sys, time
sys.path[:] = json.loads(os.environ["ROIALIGN_TEST_SYS_PATH"])
import numpy as np
from roialign_cy import roi_align
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # MemoryError, not the OOM killer
features = np.ones((1, 1, 1, 2))
for magnitude, scale in ((1e15, 16.0), (9.1e15, 1.0), (1.2e16, 1.0), (1e16, 1.0)):
    started = time.perf_counter()
    try:
        out = roi_align(features, np.array([[0, -magnitude, 0, magnitude, 0]]), 1,
                        spatial_scale=scale)
    except MemoryError:
        print("MemoryError", magnitude, scale)
        sys.exit(1)
    print(magnitude, scale, out.ravel(), round(time.perf_counter() - started, 3))
    assert np.isfinite(out).all() and time.perf_counter() - started < 1.0
print("OK")
"""


@pytest.mark.skipif(sys.platform != "linux" or "asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="RLIMIT_AS guard: Linux, and not under AddressSanitizer")
def test_huge_float64_boxes_past_2_53_in_bounded_memory(tmp_path):
    import json
    import subprocess

    env = dict(os.environ, ROIALIGN_TEST_SYS_PATH=json.dumps(sys.path))
    proc = subprocess.run([sys.executable, "-c", _BOUNDED_CHILD], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        proc.stdout + proc.stderr[-2000:])
