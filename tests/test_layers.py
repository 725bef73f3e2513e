"""RoIAlign and RoIPool: the functions with fixed parameters, repr, equality, pickle, and
parameters refused at construction."""

import pickle

import numpy as np
import pytest
from roi_inputs import random_boxes, to_layout

from roialign_cy import (
    RoIAlign,
    RoIPool,
    roi_align,
    roi_align_backward,
    roi_pool,
    roi_pool_backward,
)

LAYOUTS = ["NCHW", "NHWC"]


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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_roipool_equals_functions(layout):
    """Calling and .backward give exactly roi_pool / roi_pool_backward."""
    rng, features, boxes = case(layout, seed=1)
    layer = RoIPool((2, 3), spatial_scale=0.5, layout=layout)
    expected = roi_pool(features, boxes, (2, 3), 0.5, layout=layout)
    np.testing.assert_array_equal(layer(features, boxes), expected)
    assert not np.array_equal(RoIPool((2, 3), 1.0, layout=layout)(features, boxes), expected)
    grad_output = rng.standard_normal(expected.shape)
    expected_grad = roi_pool_backward(grad_output, boxes, features, (2, 3), 0.5, layout=layout)
    np.testing.assert_array_equal(layer.backward(grad_output, boxes, features), expected_grad)
    out = np.empty_like(features)
    assert layer.backward(grad_output, boxes, features, out=out, num_threads=1) is out
    np.testing.assert_array_equal(out, expected_grad)
    pooled, argmax = layer(features, boxes, return_argmax=True)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(layer.backward(grad_output, boxes, features, argmax=argmax),
                                  expected_grad)


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
    assert RoIAlign(7, aligned=1) == RoIAlign(7, aligned=True)
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
