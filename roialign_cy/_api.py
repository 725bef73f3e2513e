"""Public functions: documentation, validation, one kernel call each."""

import numpy as np

from roialign_cy import _kernels
from roialign_cy import _validate as v


def _output_shape(n_rois, channels, pooled, layout):
    """(K, C, PH, PW) for NCHW, (K, PH, PW, C) for NHWC."""
    ph, pw = pooled
    return (n_rois, channels, ph, pw) if layout == "NCHW" else (n_rois, ph, pw, channels)


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              *, layout="NCHW", mode="avg", out=None, num_threads=None):
    """Pool a fixed-size feature map out of every region of interest (RoIAlign).

    Same arguments, defaults and numbers as ``torchvision.ops.roi_align`` on the CPU. Each
    output bin averages (or maxes) ``sampling_ratio x sampling_ratio`` bilinearly
    interpolated samples; nothing is rounded to the pixel grid.

    Parameters
    ----------
    input : ndarray, float16, float32 or float64
        Features, ``(N, C, H, W)`` for ``layout="NCHW"`` or ``(N, H, W, C)`` for
        ``layout="NHWC"``. A 3-D array is one image, ``(C, H, W)`` or ``(H, W, C)``. Any
        strides and byte order; float16 is computed in float32.
    boxes : ndarray (K, 5) or list of N ndarrays (K_i, 4)
        Regions in input-image pixels. Rows ``[batch_index, x1, y1, x2, y2]``; or, as in
        torchvision, one ``(K_i, 4)`` array ``[x1, y1, x2, y2]`` per image, whose position in
        the list is the batch index; or ``(K, 4)`` when `input` is 3-D. Any real dtype, cast
        to the features' dtype. Coordinates must be finite, batch indices integers in [0, N).
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; an int means square.
    spatial_scale : float, default 1.0
        Feature-map pixels per input-image pixel (1/stride, e.g. 0.25 for stride 4).
    sampling_ratio : int, default -1
        Samples per bin along each axis; ``<= 0`` means adaptive: ``ceil(roi_size / PH)``
        along y and ``ceil(roi_size / PW)`` along x.
    aligned : bool, default False
        True shifts boxes by -0.5 pixel (pixel centres, the Detectron2 convention). False is
        the legacy Mask R-CNN mode, which also stretches boxes smaller than 1x1 to 1x1.
    layout : {"NCHW", "NHWC"}, keyword-only
        Layout of `input` and of the result.
    mode : {"avg", "max"}, keyword-only
        ``"avg"`` is torchvision's RoIAlign. ``"max"`` takes the maximum of the bin's
        bilinearly interpolated samples (mmcv and Chainer's definition; a sample outside the
        map has value 0 and takes part; an empty grid gives 0). ONNX and ONNX Runtime's
        ``mode="max"`` instead maxes the individually weighted corner terms of each sample,
        which gives about a quarter of the interpolated value; roialign_cy does not copy that.
    out : ndarray, optional, keyword-only
        Array to write the result into (shape and dtype of the result, writeable, not
        overlapping the inputs). Reusing it avoids an allocation per call.
    num_threads : int, optional, keyword-only
        OpenMP threads for this call. None uses OpenMP's default (``OMP_NUM_THREADS`` or
        every core, and threadpoolctl limits). Small calls always run on one thread.

    Returns
    -------
    ndarray
        ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)`` for NHWC, the dtype of `input`
        (`out` itself when given).

    Raises
    ------
    TypeError
        An argument of the wrong kind: non-float features, non-int sizes, ...
    ValueError
        A bad value, naming the argument (and for boxes the row): wrong shape, unknown
        layout or mode, NaN/inf box, batch index not an integer or out of range, ...
    MemoryError
        The output or the per-thread sample tables cannot be allocated.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_align
    >>> features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> roi_align(features, boxes, output_size=1, sampling_ratio=2)
    array([[[[5.]]]], dtype=float32)
    """
    layout = v.check_layout(layout)
    mode = v.check_mode(mode)
    features, was_3d, result_dtype = v.check_features(input, layout)
    pooled = v.check_output_size(output_size)
    scale = v.check_spatial_scale(spatial_scale)
    sampling_ratio = v.check_int(sampling_ratio, "sampling_ratio")
    batch_index, coords = v.check_boxes(boxes, features.shape[0], was_3d, features.dtype)
    channels = features.shape[3] if layout == "NHWC" else features.shape[1]
    shape = _output_shape(len(coords), channels, pooled, layout)
    out = v.check_out(out, shape, result_dtype, (input, boxes))
    result = v.kernel_out(out, shape, features.dtype)
    n_threads = v.check_num_threads(num_threads, result.size)
    if result.size and not _kernels.roi_align_forward(
        features, layout == "NHWC", batch_index, coords, scale, pooled[0], pooled[1],
        sampling_ratio, bool(aligned), mode == "max", result, n_threads,
    ):
        raise MemoryError("roi_align: could not allocate the per-thread sample tables")
    return v.deliver(result, out, result_dtype)
