"""Random features and boxes shared by the tests, and NCHW/NHWC conversions."""

import numpy as np

from roialign_cy import _roi_align


def random_boxes(rng, n_images, height, width, spatial_scale=1.0, n_boxes=12):
    """(K, 5) boxes mixing ordinary, partly/fully outside, tiny, zero-size and inverted ones."""
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rows = []
    for i in range(n_boxes):
        x1, y1 = rng.uniform(-0.3, 1.0) * img_w, rng.uniform(-0.3, 1.0) * img_h
        w, h = rng.uniform(0.05, 1.0) * img_w, rng.uniform(0.05, 1.0) * img_h
        kind = i % 7
        if kind == 1:  # fully outside, beyond the far corner
            x1, y1 = rng.uniform(1.2, 2.0) * img_w, rng.uniform(1.2, 2.0) * img_h
        elif kind == 2:  # tiny
            w, h = rng.uniform(0, 0.5) / spatial_scale, rng.uniform(0, 0.5) / spatial_scale
        elif kind == 3:  # zero size
            w, h = 0.0, 0.0
        elif kind == 4:  # inverted on both axes
            w, h = -w / 4, -h / 4
        elif kind == 5:  # inverted on one axis (an empty adaptive grid when aligned)
            w = -w / 4
        rows.append([rng.integers(n_images), x1, y1, x1 + w, y1 + h])
    return np.array(rows)


def to_layout(features_nchw, layout):
    """features_nchw (N, C, H, W) as a C-contiguous array in `layout`."""
    if layout == "NCHW":
        return np.ascontiguousarray(features_nchw)
    return np.ascontiguousarray(np.moveaxis(features_nchw, 1, -1))


def to_nchw(pooled, layout):
    """A (K, PH, PW, C) result viewed as (K, C, PH, PW); NCHW results unchanged."""
    return pooled if layout == "NCHW" else np.moveaxis(pooled, -1, 1)


def with_spare_images(features_nchw, n_taps):
    """features_nchw plus NaN images (no box may use them) until pixels outnumber n_taps."""
    _, channels, height, width = features_nchw.shape
    n_spare = -(-n_taps // (height * width))
    spare = np.full((n_spare, channels, height, width), np.nan, dtype=features_nchw.dtype)
    return np.concatenate([features_nchw, spare])


def align_nchw(features_nchw, boxes, output_size, *args, layout="NCHW", variant=None,
               **kwargs):
    """roi_align of features_nchw handed over in `layout`; the result as (K, C, PH, PW).

    variant: the forward kernel to force ("per_roi", "packed"), None for the package's pick.

    The package walks RoI by RoI when the map's pixels outnumber the RoIs' taps and packs
    channel blocks when the RoIs dominate. So every case also runs with spare NaN images
    appended (pixels dominate) and with its boxes repeated (RoIs dominate): all three must
    agree bit for bit, whichever kernel each one picks.
    """
    def run(features, rois):
        pooled = _roi_align.forward(to_layout(features, layout), rois, output_size, *args,
                                    layout=layout, variant=variant, **kwargs)
        return to_nchw(pooled, layout)

    result = run(features_nchw, boxes)
    boxes = np.asarray(boxes)
    if len(boxes):
        taps = 16 * len(boxes) * int(np.prod(np.broadcast_to(output_size, 2)))  # 4 samples x 4
        pixels = features_nchw[:, 0].size
        spare = run(with_spare_images(features_nchw, 4 * taps), boxes)
        repeated = run(features_nchw, np.tile(boxes, (-(-4 * pixels // taps), 1)))
        np.testing.assert_array_equal(spare, result)
        np.testing.assert_array_equal(repeated[:len(boxes)], result)
    return result


def assert_max_adjoint(forward, features, grad_output, grad_input, rng):
    """A max-pooling backward is the adjoint of its forward at these features (where the
    forward is linear: the arg-maxima are fixed), and not at other features.

    forward(x) is the pooled result for x; grad_input the backward of grad_output at
    `features`.
    """
    pooled = forward(features)
    magnitude = np.vdot(np.abs(pooled), np.abs(grad_output))
    assert magnitude > 10.0
    assert abs(np.vdot(pooled, grad_output) - np.vdot(features, grad_input)) <= 1e-13 * magnitude
    other = rng.standard_normal(features.shape)
    gap = np.vdot(forward(other), grad_output) - np.vdot(other, grad_input)
    assert abs(gap) > 1e-3 * magnitude
