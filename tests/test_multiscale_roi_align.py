"""multiscale_roi_align, multiscale_roi_align_backward, MultiScaleRoIAlign and assign_levels:
torchvision's golden numbers bit for bit, each framework's level rule (boundaries included),
the loop reference, the adjoint identity, layouts, dtypes, out=, empty inputs, the dict form,
thread counts, variants and builds, and the class (repr, equality, pickle)."""

import json
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from reference import (reference_infer_scales, reference_level,
                       reference_multiscale_roi_align)
from roi_inputs import to_layout, to_nchw

from roialign_cy import (MultiScaleRoIAlign, assign_levels, multiscale_roi_align,
                         multiscale_roi_align_backward, roi_align, roi_align_backward)
from roialign_cy import _dispatch
from roialign_cy import _multiscale_roi_align as ms

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "golden_multiscale.npz")
LAYOUTS = ("NCHW", "NHWC")


def golden_cases(op):
    """[(name, params, arrays)] of the golden file's cases of one op."""
    with np.load(GOLDEN) as data:
        meta = json.loads(str(data["meta"]))
        cases = []
        for case in meta["cases"]:
            if case["op"] != op:
                continue
            name = case["name"]
            arrays = {key.split("/", 1)[1]: data[key] for key in data.files
                      if key.startswith(name + "/")}
            cases.append(pytest.param(name, case["params"], arrays, id=name))
    return cases


def golden_kwargs(params):
    """The keyword arguments of the golden call (torchvision's MultiScaleRoIAlign)."""
    return dict(image_sizes=params["image_sizes"], canonical_scale=params["canonical_scale"],
                canonical_level=params["canonical_level"])


def golden_levels(arrays):
    """The pyramid of a golden case, finest first."""
    return [arrays[f"level_{j}"] for j in range(4)]


# ---- torchvision's numbers, bit for bit ------------------------------------------------------


@pytest.mark.parametrize("name, params, arrays", golden_cases("multiscale"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_golden_forward(name, params, arrays, layout):
    levels = golden_levels(arrays)
    pooled = multiscale_roi_align([to_layout(level, layout) for level in levels],
                                  arrays["boxes"], tuple(params["output_size"]),
                                  params["sampling_ratio"], layout=layout,
                                  **golden_kwargs(params))
    assert pooled.dtype == levels[0].dtype
    np.testing.assert_array_equal(to_nchw(pooled, layout), arrays["output"])


@pytest.mark.parametrize("name, params, arrays", golden_cases("multiscale"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_golden_backward(name, params, arrays, layout):
    levels = golden_levels(arrays)
    grads = multiscale_roi_align_backward(
        to_layout(arrays["grad_output"], layout), arrays["boxes"],
        [to_layout(level, layout).shape for level in levels], tuple(params["output_size"]),
        params["sampling_ratio"], layout=layout, **golden_kwargs(params))
    assert len(grads) == 4
    for j, grad in enumerate(grads):
        assert grad.dtype == levels[0].dtype
        np.testing.assert_array_equal(_to_nchw_map(grad, layout), arrays[f"grad_{j}"])


def _to_nchw_map(array, layout):
    """A feature map (N, H, W, C) back to (N, C, H, W) for NHWC."""
    return array if layout == "NCHW" else array.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name, params, arrays", golden_cases("multiscale"))
def test_golden_dict_form(name, params, arrays):
    """torchvision's OrderedDict with featmap_names: filtered in the dict's order, an extra
    map left out; the class called as m(features, boxes, image_sizes)."""
    levels = golden_levels(arrays)
    names = ["p2", "p3", "p4", "p5"]
    features = OrderedDict()
    for key in params["dict_keys"]:
        features[key] = arrays["unused"] if key == "unused" else levels[names.index(key)]
    per_image = [arrays["boxes"][arrays["boxes"][:, 0] == b, 1:]
                 for b in range(levels[0].shape[0])]
    pooler = MultiScaleRoIAlign(params["featmap_names"], tuple(params["output_size"]),
                                params["sampling_ratio"],
                                canonical_scale=params["canonical_scale"],
                                canonical_level=params["canonical_level"])
    order = np.argsort(arrays["boxes"][:, 0], kind="stable")  # per-image lists: image order
    np.testing.assert_array_equal(pooler(features, per_image, params["image_sizes"]),
                                  arrays["output"][order])
    np.testing.assert_array_equal(
        multiscale_roi_align(features, per_image, tuple(params["output_size"]),
                             params["sampling_ratio"], featmap_names=params["featmap_names"],
                             **golden_kwargs(params)),
        arrays["output"][order])


@pytest.mark.parametrize("name, params, arrays", golden_cases("multiscale"))
def test_golden_scales_match_torchvision(name, params, arrays):
    """The inferred scales are torchvision's; giving them explicitly changes nothing."""
    levels = golden_levels(arrays)
    heights = [level.shape[2] for level in levels]
    assert reference_infer_scales(heights, params["image_sizes"]) == params["scales"]
    pooled = multiscale_roi_align(levels, arrays["boxes"], tuple(params["output_size"]),
                                  params["sampling_ratio"], scales=params["scales"],
                                  canonical_scale=params["canonical_scale"],
                                  canonical_level=params["canonical_level"])
    np.testing.assert_array_equal(pooled, arrays["output"])


# ---- Level rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params, arrays", golden_cases("levels"))
def test_assign_levels_golden(name, params, arrays):
    """Each rule gives its framework's level on its own inputs, boundaries included; a box
    with a negative area gets -1 (the frameworks' NaN level pools nothing)."""
    levels = assign_levels(arrays["boxes"], params["k_min"], params["k_max"],
                           params["canonical_scale"], params["canonical_level"],
                           rule=params["rule"])
    assert levels.dtype == np.int64 and levels.shape == (len(arrays["boxes"]),)
    valid = arrays["valid"]
    np.testing.assert_array_equal(levels[valid], arrays["levels"][valid])
    assert (levels[~valid] == -1).all()


@pytest.mark.parametrize("name, params, arrays", golden_cases("levels"))
def test_assign_levels_reference(name, params, arrays):
    """The plain-loop reference of each formula agrees (and so with the framework)."""
    boxes = arrays["boxes"]
    scale = params["canonical_scale"]
    level = params["canonical_level"]
    expected = [reference_level(box, params["k_min"], params["k_max"], scale, level,
                                params["rule"], boxes.dtype) for box in boxes]
    expected = np.array([-1 if e is None else e for e in expected])
    np.testing.assert_array_equal(
        assign_levels(boxes, params["k_min"], params["k_max"], scale, level,
                      rule=params["rule"]), expected)


@pytest.mark.parametrize("rule, defaults", [("torchvision", (224, 4)), ("detectron2", (224, 4)),
                                            ("mmdet", (56, 0))])
def test_assign_levels_defaults_and_boundaries(rule, defaults):
    """None takes the rule's constants; a box exactly at a boundary goes up (the eps)."""
    sides = np.array([16.0, 55.0, 56.0, 111.9, 112.0, 224.0, 448.0, 1000.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    assert (assign_levels(boxes, 2, 5, rule=rule)
            == assign_levels(boxes, 2, 5, *defaults, rule=rule)).all()
    if rule == "mmdet":  # [0, 112) -> 0, [112, 224) -> 1, [224, 448) -> 2, beyond -> 3
        expected = [0, 0, 0, 0, 1, 2, 3, 3]
    else:  # 224 at level 4: [112, 224) -> 3, i.e. index 1 with k_min 2
        expected = [0, 0, 0, 0, 1, 2, 3, 3]
    assert assign_levels(boxes, 2, 5, rule=rule).tolist() == expected


def test_assign_levels_box_forms():
    """(K, 4), (K, 5) rows and per-image lists give the same levels; negative area -> -1."""
    rows = np.array([[0, 0, 0, 50, 60], [1, 5, 5, 300, 400], [0, 30, 0, 10, 10],
                     [1, 0, 0, 0, 0]], np.float64)
    by_rows = assign_levels(rows, 2, 5)
    assert by_rows.tolist() == [0, 2, -1, 0]
    np.testing.assert_array_equal(assign_levels(rows[:, 1:], 2, 5), by_rows)
    np.testing.assert_array_equal(
        assign_levels([rows[rows[:, 0] == b, 1:] for b in (0, 1)], 2, 5),
        by_rows[[0, 2, 1, 3]])
    assert assign_levels(np.zeros((0, 4)), 2, 5).shape == (0,)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rule="fpn"), ValueError, "rule"),
    (dict(rule=None), ValueError, "rule"),
    (dict(k_min=3, k_max=2), ValueError, "k_max"),
    (dict(k_min=2.0), TypeError, "k_min"),
    (dict(canonical_scale=0), ValueError, "canonical_scale"),
    (dict(canonical_scale="224"), TypeError, "canonical_scale"),
    (dict(canonical_level=4.5), TypeError, "canonical_level"),
    (dict(boxes=np.zeros((3, 3))), ValueError, "boxes"),
    (dict(boxes=np.array([[0, 0, np.nan, 1]])), ValueError, "boxes row 0"),
    (dict(boxes=np.zeros((2, 4), complex)), TypeError, "boxes"),
])
def test_assign_levels_refuses(kwargs, error, match):
    call = dict(boxes=np.zeros((2, 4)), k_min=2, k_max=5)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        assign_levels(**call)


# ---- The loop reference, bit-identity with roi_align, the adjoint ------------------------------


def pyramid(seed=0, dtype=np.float64, channels=3, n_images=2, image=(128, 160)):
    """A random 4-level pyramid (strides 4..32), boxes over every level, image sizes."""
    rng = np.random.default_rng(seed)
    levels = [rng.standard_normal((n_images, channels, -(-image[0] // s), -(-image[1] // s)))
              .astype(dtype) for s in (4, 8, 16, 32)]
    k = 40
    size = np.exp(rng.uniform(np.log(6), np.log(600), k))
    x1, y1 = rng.uniform(-20, image[1], k), rng.uniform(-20, image[0], k)
    boxes = np.stack([rng.integers(0, n_images, k), x1, y1, x1 + size,
                      y1 + size * rng.uniform(0.4, 2.5, k)], 1)
    boxes[3, 3] = boxes[3, 1] - 5  # inverted along x: no level, pooled to 0
    return rng, levels, boxes, [image] * n_images


@pytest.mark.parametrize("rule", ["torchvision", "detectron2", "mmdet"])
@pytest.mark.parametrize("aligned", [False, True])
def test_reference(rule, aligned):
    rng, levels, boxes, image_sizes = pyramid(1)
    pooled = multiscale_roi_align(levels, boxes, (4, 3), 2, image_sizes=image_sizes,
                                  aligned=aligned, level_rule=rule)
    scales = reference_infer_scales([level.shape[2] for level in levels], image_sizes)
    defaults = (56, 0) if rule == "mmdet" else (224, 4)
    level_of = [reference_level(box, 2, 5, *defaults, rule, np.float64) for box in boxes[:, 1:]]
    assert level_of[3] is None and len(set(level_of) - {None}) == 4  # every level used
    expected = reference_multiscale_roi_align(levels, boxes, (4, 3), scales, 2, level_of,
                                              aligned)
    np.testing.assert_allclose(pooled, expected, rtol=1e-12, atol=1e-12)
    assert not pooled[3].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_each_box_is_roi_align_of_its_level(dtype, layout, sampling_ratio):
    """Bit for bit, forward and backward, whatever the variant."""
    rng, levels, boxes, image_sizes = pyramid(2, dtype)
    levels = [to_layout(level, layout) for level in levels]
    level_of = assign_levels(boxes.astype(dtype), 2, 5)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    grad_output = to_layout(rng.standard_normal((len(boxes), 3, 5, 5)).astype(dtype), layout)
    for variant in ("per_roi", "packed"):
        pooled = ms.forward(levels, boxes, 5, sampling_ratio, image_sizes, layout=layout,
                            variant=variant)
        grads = ms.backward(grad_output, boxes, [level.shape for level in levels], 5,
                            sampling_ratio, image_sizes=image_sizes, layout=layout,
                            variant=variant)
        for j in range(4):
            mine = level_of == j
            np.testing.assert_array_equal(
                pooled[mine], roi_align(levels[j], boxes[mine], 5, scales[j], sampling_ratio,
                                        layout=layout))
            np.testing.assert_array_equal(
                grads[j], roi_align_backward(grad_output[mine], boxes[mine], levels[j].shape,
                                             5, scales[j], sampling_ratio, layout=layout))
        assert not pooled[level_of < 0].any()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("aligned", [False, True])
def test_adjoint_identity(layout, aligned):
    """<forward(x), g> == sum over levels of <x_l, backward(g)_l>."""
    rng, levels, boxes, image_sizes = pyramid(3)
    levels = [to_layout(level, layout) for level in levels]
    pooled = multiscale_roi_align(levels, boxes, 3, -1, image_sizes=image_sizes,
                                  aligned=aligned, layout=layout)
    grad_output = rng.standard_normal(pooled.shape)
    grads = multiscale_roi_align_backward(grad_output, boxes, [lv.shape for lv in levels], 3,
                                          -1, image_sizes=image_sizes, aligned=aligned,
                                          layout=layout)
    left = float(np.sum(pooled * grad_output))
    right = sum(float(np.sum(level * grad)) for level, grad in zip(levels, grads))
    assert left == pytest.approx(right, rel=1e-12)


# ---- dtypes, strides, out=, empty inputs ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes(dtype):
    """The result has the features' dtype; float16 is computed in float32."""
    _, levels, boxes, image_sizes = pyramid(4)
    levels = [level.astype(dtype) for level in levels]
    pooled = multiscale_roi_align(levels, boxes, 2, 2, image_sizes=image_sizes)
    assert pooled.dtype == dtype
    computed = np.float32 if dtype == np.float16 else dtype
    expected = multiscale_roi_align([level.astype(computed) for level in levels], boxes, 2, 2,
                                    image_sizes=image_sizes)
    np.testing.assert_array_equal(pooled, expected.astype(dtype))
    grads = multiscale_roi_align_backward(pooled, boxes, [lv.shape for lv in levels], 2, 2,
                                          image_sizes=image_sizes)
    assert all(grad.dtype == dtype for grad in grads)


def test_any_strides_and_read_only():
    """Non-contiguous, reversed, read-only levels give the contiguous result."""
    _, levels, boxes, image_sizes = pyramid(5)
    expected = multiscale_roi_align(levels, boxes, 3, 2, image_sizes=image_sizes)
    odd = []
    for level in levels:
        wide = np.zeros(level.shape[:3] + (2 * level.shape[3],))
        wide[..., ::2] = level
        view = wide[..., ::2]
        view.flags.writeable = False
        odd.append(view)
    np.testing.assert_array_equal(multiscale_roi_align(odd, boxes, 3, 2,
                                                       image_sizes=image_sizes), expected)


def test_out():
    """out= is written and returned; the backward's out is one array per level."""
    rng, levels, boxes, image_sizes = pyramid(6)
    expected = multiscale_roi_align(levels, boxes, 3, 2, image_sizes=image_sizes)
    out = np.full_like(expected, 7.0)
    assert multiscale_roi_align(levels, boxes, 3, 2, image_sizes=image_sizes, out=out) is out
    np.testing.assert_array_equal(out, expected)  # the no-level row is 0, not 7
    grad_output = rng.standard_normal(expected.shape)
    shapes = [level.shape for level in levels]
    grads = multiscale_roi_align_backward(grad_output, boxes, shapes, 3, 2,
                                          image_sizes=image_sizes)
    outs = [np.full(shape, 3.0) for shape in shapes]
    result = multiscale_roi_align_backward(grad_output, boxes, shapes, 3, 2,
                                           image_sizes=image_sizes, out=outs)
    assert all(a is b for a, b in zip(result, outs))
    for grad, written in zip(grads, outs):
        np.testing.assert_array_equal(written, grad)
    float32_outs = [np.zeros(shape, np.float32) for shape in shapes]
    with pytest.raises(ValueError, match=r"out\[0\].*dtype"):
        multiscale_roi_align_backward(grad_output, boxes, shapes, 3, 2, image_sizes=image_sizes,
                                      out=float32_outs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty(layout):
    """K = 0 gives an empty result and zero gradients; so does C = 0."""
    _, levels, _, image_sizes = pyramid(7)
    levels = [to_layout(level, layout) for level in levels]
    pooled = multiscale_roi_align(levels, np.zeros((0, 5)), 7, 2, image_sizes=image_sizes,
                                  layout=layout)
    assert pooled.shape == ((0, 3, 7, 7) if layout == "NCHW" else (0, 7, 7, 3))
    grads = multiscale_roi_align_backward(pooled, np.zeros((0, 5)), [lv.shape for lv in levels],
                                          7, 2, image_sizes=image_sizes, layout=layout)
    assert [g.shape for g in grads] == [lv.shape for lv in levels]
    assert not any(g.any() for g in grads)
    per_image = [np.zeros((0, 4)), np.zeros((0, 4))]
    assert multiscale_roi_align(levels, per_image, 2, image_sizes=image_sizes,
                                layout=layout).shape[0] == 0


def test_one_level():
    """A one-level pyramid is roi_align on it (torchvision skips the mapper then)."""
    _, levels, boxes, image_sizes = pyramid(8)
    keep = boxes[:, 3] >= boxes[:, 1]
    np.testing.assert_array_equal(
        multiscale_roi_align(levels[1:2], boxes[keep], 3, 2, image_sizes=image_sizes),
        roi_align(levels[1], boxes[keep], 3, 1 / 8, 2))


def test_skipped_level_is_left_unpooled_as_in_torchvision():
    """featmap_names skipping a level (torchvision's docstring example: 'feat1', 'feat3'):
    k_min..k_max spans 3 indices for 2 maps; torchvision pools index i from map i and leaves
    the last index unpooled. So does this."""
    _, levels, boxes, image_sizes = pyramid(9)
    pair = [levels[0], levels[2]]
    pooled = multiscale_roi_align(pair, boxes, 2, 2, image_sizes=image_sizes)
    index = assign_levels(boxes, 2, 4)
    assert (index == 2).any()
    assert not pooled[index == 2].any()
    np.testing.assert_array_equal(pooled[index == 1],
                                  roi_align(levels[2], boxes[index == 1], 2, 1 / 16, 2))


# ---- Threads, variants, builds ----------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_locality_order_changes_no_bit(layout, threads, monkeypatch):
    """The per-RoI forward pooling the RoIs by locality (level, image, centre's y: planned
    for pyramids beyond _plan.LOCALITY_BYTES) gives the given order's bits, each RoI in its
    own row, and roi_align's of each box's level."""
    from roialign_cy import _plan
    rng, levels, boxes, image_sizes = pyramid(12, np.float32, channels=5)
    levels = [to_layout(level, layout) for level in levels]

    def pooled():
        return ms.forward(levels, boxes, 5, 2, image_sizes, layout=layout, num_threads=threads,
                          variant="per_roi")

    given = pooled()
    monkeypatch.setattr(_plan, "LOCALITY_BYTES", 0)
    monkeypatch.setattr(_plan, "LOCALITY_ROIS", 1)
    np.testing.assert_array_equal(pooled(), given)
    level_of = assign_levels(boxes.astype(np.float32), 2, 5)
    for j, scale in enumerate([1 / 4, 1 / 8, 1 / 16, 1 / 32]):
        mine = level_of == j
        np.testing.assert_array_equal(given[mine], roi_align(levels[j], boxes[mine], 5, scale, 2,
                                                             layout=layout))
    assert not given[level_of < 0].any()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_thread_count_determinism(layout):
    """Bit-identical for any thread count and variant, forward and backward."""
    rng, levels, boxes, image_sizes = pyramid(10, channels=40)
    boxes = np.tile(boxes, (8, 1))
    levels = [to_layout(level, layout) for level in levels]
    shapes = [level.shape for level in levels]
    expected = multiscale_roi_align(levels, boxes, 7, 2, image_sizes=image_sizes,
                                    layout=layout, num_threads=1)
    grad_output = rng.standard_normal(expected.shape)
    expected_grads = multiscale_roi_align_backward(grad_output, boxes, shapes, 7, 2,
                                                   image_sizes=image_sizes, layout=layout,
                                                   num_threads=1)
    for variant in (None, "per_roi", "packed"):
        for threads in (1, 2, 3, 4):
            np.testing.assert_array_equal(
                ms.forward(levels, boxes, 7, 2, image_sizes, layout=layout,
                           num_threads=threads, variant=variant), expected)
            for grad, want in zip(ms.backward(grad_output, boxes, shapes, 7, 2,
                                              image_sizes=image_sizes, layout=layout,
                                              num_threads=threads, variant=variant),
                                  expected_grads):
                np.testing.assert_array_equal(grad, want)


@pytest.mark.parametrize("build", _dispatch.BUILDS)
def test_builds_agree(build):
    rng, levels, boxes, image_sizes = pyramid(11, np.float32)
    expected = ms.forward(levels, boxes, 4, 2, image_sizes, build="baseline")
    np.testing.assert_array_equal(ms.forward(levels, boxes, 4, 2, image_sizes, build=build),
                                  expected)
    grad_output = rng.standard_normal(expected.shape).astype(np.float32)
    shapes = [level.shape for level in levels]
    for grad, want in zip(ms.backward(grad_output, boxes, shapes, 4, 2, image_sizes=image_sizes,
                                      build=build),
                          ms.backward(grad_output, boxes, shapes, 4, 2, image_sizes=image_sizes,
                                      build="baseline")):
        np.testing.assert_array_equal(grad, want)


# ---- MultiScaleRoIAlign --------------------------------------------------------------------------


NAMES = ["p2", "p3", "p4", "p5"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_equals_functions(layout):
    """Calling and .backward give exactly the functions with the same params; the dict is
    keyed by featmap_names, a sequence is the levels themselves."""
    rng, levels, boxes, image_sizes = pyramid(12)
    levels = [to_layout(level, layout) for level in levels]
    params = dict(output_size=(3, 2), sampling_ratio=2, aligned=True, canonical_scale=180,
                  canonical_level=3, level_rule="detectron2", layout=layout)
    layer = MultiScaleRoIAlign(NAMES, **{k: v for k, v in params.items()
                                         if k not in ("output_size", "sampling_ratio")},
                               output_size=(3, 2), sampling_ratio=2)
    expected = multiscale_roi_align(levels, boxes, **params, image_sizes=image_sizes)
    features = dict(zip(NAMES, levels))
    np.testing.assert_array_equal(layer(features, boxes, image_sizes), expected)
    np.testing.assert_array_equal(layer(levels, boxes, image_sizes), expected)
    assert not np.array_equal(
        MultiScaleRoIAlign(NAMES, (3, 2), 2, layout=layout)(features, boxes, image_sizes),
        expected)
    grad_output = rng.standard_normal(expected.shape)
    shapes = [level.shape for level in levels]
    expected_grads = multiscale_roi_align_backward(grad_output, boxes, shapes, **params,
                                                   image_sizes=image_sizes)
    for grad, want in zip(layer.backward(grad_output, boxes, shapes, image_sizes),
                          expected_grads):
        np.testing.assert_array_equal(grad, want)
    out = np.empty_like(expected)
    assert layer(features, boxes, image_sizes, out=out, num_threads=2) is out
    np.testing.assert_array_equal(out, expected)


def test_class_repr_equality_hash():
    layer = MultiScaleRoIAlign(["a", "b"], 7, 2)
    assert repr(layer) == ("MultiScaleRoIAlign(featmap_names=['a', 'b'], output_size=(7, 7), "
                           "sampling_ratio=2, canonical_scale=None, canonical_level=None, "
                           "aligned=False, level_rule='torchvision', layout='NCHW')")
    assert eval(repr(layer), {"MultiScaleRoIAlign": MultiScaleRoIAlign}) == layer
    assert layer == MultiScaleRoIAlign(("a", "b"), (7, 7), 2)
    for other in (MultiScaleRoIAlign(["a"], 7, 2), MultiScaleRoIAlign(["a", "b"], 6, 2),
                  MultiScaleRoIAlign(["a", "b"], 7, 1),
                  MultiScaleRoIAlign(["a", "b"], 7, 2, aligned=True),
                  MultiScaleRoIAlign(["a", "b"], 7, 2, canonical_scale=200),
                  MultiScaleRoIAlign(["a", "b"], 7, 2, canonical_level=3),
                  MultiScaleRoIAlign(["a", "b"], 7, 2, level_rule="mmdet"),
                  MultiScaleRoIAlign(["a", "b"], 7, 2, layout="NHWC"), "layer"):
        assert layer != other
    with pytest.raises(TypeError):
        hash(layer)


def test_class_pickle_round_trip():
    layer = MultiScaleRoIAlign(NAMES, (3, 4), -1, canonical_level=5, level_rule="mmdet",
                               layout="NHWC")
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and copy is not layer and repr(copy) == repr(layer)
    _, levels, boxes, image_sizes = pyramid(13)
    levels = [to_layout(level, "NHWC") for level in levels]
    np.testing.assert_array_equal(copy(levels, boxes, image_sizes),
                                  layer(levels, boxes, image_sizes))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(featmap_names="p2"), TypeError, "featmap_names"),
    (dict(featmap_names=[]), ValueError, "featmap_names"),
    (dict(featmap_names=["a", "a"]), ValueError, "featmap_names"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(sampling_ratio=2.0), TypeError, "sampling_ratio"),
    (dict(level_rule="fpn"), ValueError, "level_rule"),
    (dict(canonical_scale=-1), ValueError, "canonical_scale"),
    (dict(canonical_level="4"), TypeError, "canonical_level"),
    (dict(aligned=1), TypeError, "aligned"),
    (dict(layout="nchw"), ValueError, "layout"),
])
def test_class_refuses_bad_parameters(kwargs, error, match):
    call = dict(featmap_names=NAMES, output_size=7, sampling_ratio=2)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        MultiScaleRoIAlign(**call)


def test_class_checks_the_levels_against_featmap_names():
    """A dict must hold every name; a sequence must hold one map per name."""
    _, levels, boxes, image_sizes = pyramid(14)
    layer = MultiScaleRoIAlign(NAMES, 2, 2)
    with pytest.raises(ValueError, match="featmap_names"):
        layer(dict(zip(NAMES[:3], levels)), boxes, image_sizes)
    with pytest.raises(ValueError, match="features holds 3"):
        layer(levels[:3], boxes, image_sizes)
    with pytest.raises(ValueError, match="image_sizes"):
        layer(levels, boxes, [])


def test_python_threads_share_the_pyramid():
    """Python threads pooling the same read-only pyramid at once (the GIL is released),
    each into its own out, with any team size: every result is the serial one."""
    from concurrent.futures import ThreadPoolExecutor

    _, levels, boxes, image_sizes = pyramid(15, np.float32, channels=16)
    for level in levels:
        level.flags.writeable = False
    boxes = np.tile(boxes, (5, 1))
    expected = multiscale_roi_align(levels, boxes, 7, 2, image_sizes=image_sizes, num_threads=1)
    outs = [np.empty_like(expected) for _ in range(8)]

    def call(i):
        return multiscale_roi_align(levels, boxes, 7, 2, image_sizes=image_sizes, out=outs[i],
                                    num_threads=1 + i % 3)

    with ThreadPoolExecutor(max_workers=4) as workers:
        returned = list(workers.map(call, range(8), timeout=120))
    for out, result in zip(outs, returned):
        assert result is out
        np.testing.assert_array_equal(out, expected)


def test_caller_swapping_its_levels_during_calls_cannot_crash():
    """Another thread replaces the caller's list items by maps of other shapes while calls
    run: the call reads its own snapshot of the pyramid, so each result is one of the two
    valid answers or a clean ValueError, never a crash."""
    import threading

    _, levels, boxes, image_sizes = pyramid(16, np.float32)
    small = [level[:, :, : level.shape[2] // 2 + 1, : level.shape[3] // 2 + 1].copy()
             for level in levels]
    shared = list(levels)
    stop = threading.Event()

    def vandal():
        while not stop.is_set():
            shared[0], shared[2] = small[0], small[2]
            shared[0], shared[2] = levels[0], levels[2]

    worker = threading.Thread(target=vandal)
    worker.start()
    try:
        for _ in range(100):
            try:
                multiscale_roi_align(shared, boxes, 3, 2, image_sizes=image_sizes, num_threads=2)
            except ValueError:
                pass
    finally:
        stop.set()
        worker.join()


@pytest.mark.parametrize("rule", ["torchvision", "detectron2", "mmdet"])
def test_random_pyramids_are_roi_align_per_level(rule):
    """Hypothesis: random pyramids (1 to 5 levels, any sizes, both layouts, float32/64),
    boxes and parameters; every box is roi_align of its level bit for bit, forward and
    backward, and the levels are assign_levels'."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(n_levels=st.integers(1, 5), n_images=st.integers(1, 3),
                      channels=st.integers(1, 5), height=st.integers(8, 70),
                      width=st.integers(8, 70), n_boxes=st.integers(0, 30),
                      layout=st.sampled_from(LAYOUTS),
                      dtype=st.sampled_from([np.float32, np.float64]),
                      output_size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
                      sampling_ratio=st.integers(-1, 3), aligned=st.booleans(),
                      variant=st.sampled_from([None, "per_roi", "packed"]),
                      threads=st.integers(1, 3), seed=st.integers(0, 2**31))
    def check(n_levels, n_images, channels, height, width, n_boxes, layout, dtype, output_size,
              sampling_ratio, aligned, variant, threads, seed):
        rng = np.random.default_rng(seed)
        image = (4 * height, 4 * width)
        levels = [to_layout(rng.standard_normal(
            (n_images, channels, -(-height // 2**j), -(-width // 2**j))).astype(dtype), layout)
            for j in range(n_levels)]
        size = np.exp(rng.uniform(np.log(1), np.log(4 * max(image)), n_boxes))
        x1 = rng.uniform(-0.2, 1.0, n_boxes) * image[1]
        y1 = rng.uniform(-0.2, 1.0, n_boxes) * image[0]
        boxes = np.stack([rng.integers(0, n_images, n_boxes), x1, y1,
                          x1 + size * rng.uniform(-0.2, 2, n_boxes),
                          y1 + size * rng.uniform(-0.2, 2, n_boxes)], 1)
        kwargs = dict(image_sizes=[image] * n_images, aligned=aligned, level_rule=rule,
                      layout=layout, num_threads=threads, variant=variant)
        pooled = ms.forward(levels, boxes, output_size, sampling_ratio, **kwargs)
        grad_output = rng.standard_normal(pooled.shape).astype(dtype)
        shapes = [level.shape for level in levels]
        grads = ms.backward(grad_output, boxes, shapes, output_size, sampling_ratio, **kwargs)
        scales = reference_infer_scales([level.shape[1 if layout == "NHWC" else 2]
                                         for level in levels], [image] * n_images)
        k_min, k_max = (int(-np.log2(np.float32(s))) for s in (scales[0], scales[-1]))
        level_of = assign_levels(boxes.astype(dtype), k_min, k_max, rule=rule)
        level_of[level_of >= n_levels] = -1  # a pyramid whose inferred scales skip a level
        assert not pooled[level_of < 0].any()
        for j in range(n_levels):
            mine = level_of == j
            np.testing.assert_array_equal(
                pooled[mine], roi_align(levels[j], boxes[mine], output_size, scales[j],
                                        sampling_ratio, aligned, layout=layout))
            np.testing.assert_array_equal(
                grads[j], roi_align_backward(grad_output[mine], boxes[mine], shapes[j],
                                             output_size, scales[j], sampling_ratio, aligned,
                                             layout=layout))

    check()
