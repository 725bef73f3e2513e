"""Public functions: documentation, validation, one kernel call each."""

from types import SimpleNamespace

import numpy as np

from roialign_cy import _simd
from roialign_cy import _strategy as strategy
from roialign_cy import _threads as threads
from roialign_cy import _validate as v


def _forward_call(input, boxes, output_size, spatial_scale, layout, out, num_threads):
    """Validate what every forward shares; return the kernel's arguments and output."""
    common = None
    if out is None:
        common = v.common_forward(input, boxes, output_size, spatial_scale, layout)
    if common is not None:  # the usual argument forms, checked in one go
        features, pooled, scale, batch_index, coords, shape = common
        result_dtype = features.dtype
        result = np.empty(shape, dtype=result_dtype)
    else:
        layout = v.check_layout(layout)
        features, was_3d, result_dtype = v.check_features(input, layout)
        pooled = v.check_output_size(output_size)
        scale = v.check_spatial_scale(spatial_scale)
        batch_index, coords = v.check_boxes(boxes, features.shape[0], was_3d, features.dtype)
        v.check_scale_fits(scale, features.dtype)
        shape = v.output_shape(len(coords), v.channels_of(features.shape, layout), pooled, layout)
        out = v.check_out(out, shape, result_dtype, (input, boxes))
        result = v.kernel_out(out, shape, features.dtype)
    return SimpleNamespace(
        features=features, channels_last=layout == "NHWC", batch_index=batch_index,
        coords=coords, scale=scale, pooled=pooled, out=out, result=result,
        result_dtype=result_dtype, team=threads.team(num_threads, result.size),
    )


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
    mode = v.check_mode(mode)
    sampling_ratio = v.check_int(sampling_ratio, "sampling_ratio")
    call = _forward_call(input, boxes, output_size, spatial_scale, layout, out, num_threads)
    if call.result.size:
        with call.team as n_threads:
            done = _align_forward_kernel(call, layout, sampling_ratio, bool(aligned),
                                         mode == "max", n_threads)
        if not done:
            raise MemoryError("roi_align: could not allocate the per-thread sample tables")
    return v.deliver(call.result, call.out, call.result_dtype)


def _align_forward_kernel(call, layout, sampling_ratio, aligned, max_mode, n_threads):
    """Run the forward kernel that suits the call: channel blocks when RoIs are many."""
    shape = call.features.shape
    if not strategy.use_channel_blocks(shape, len(call.coords), call.pooled, layout,
                                       call.features.itemsize):
        return _simd.align("roi_align_forward", call.features.dtype)(
            call.features, call.channels_last, call.batch_index, call.coords, call.scale,
            *call.pooled, sampling_ratio, aligned, max_mode, call.result, n_threads,
        )
    roi_order, image_first = strategy.rois_by_image(call.batch_index, shape[0])
    return _simd.align("roi_align_forward_blocked", call.features.dtype)(
        call.features, call.channels_last, call.coords, roi_order, image_first, call.scale,
        *call.pooled, sampling_ratio, aligned, max_mode, call.result,
        strategy.packed_block_size(shape, layout, call.features.itemsize, n_threads), n_threads,
    )


def _backward_call(grad_output, boxes, input_shape, output_size, spatial_scale, layout,
                   input, needs_input, out, num_threads):
    """Validate what every backward shares; return the kernel's arguments and output."""
    common = None
    if out is None:
        common = v.common_backward(grad_output, boxes, input_shape, output_size, spatial_scale,
                                   layout, input, needs_input)
    if common is not None:  # the usual argument forms, checked in one go
        grad, pooled, scale, batch_index, coords, features = common
        shape, was_3d, result_dtype = input_shape, False, grad.dtype
        result = np.zeros(shape, dtype=result_dtype)
    else:
        layout = v.check_layout(layout)
        shape, was_3d = v.check_input_shape(input_shape, layout)
        pooled = v.check_output_size(output_size)
        scale = v.check_spatial_scale(spatial_scale)
        grad_probe = np.asarray(grad_output)
        dtype = v.compute_dtype(grad_probe.dtype, "grad_output")
        batch_index, coords = v.check_boxes(boxes, shape[0], was_3d, dtype)
        v.check_scale_fits(scale, dtype)
        grad, result_dtype = v.check_grad_output(
            grad_probe, v.output_shape(len(coords), v.channels_of(shape, layout), pooled, layout)
        )
        features = v.check_matching_input(input, shape, dtype) if needs_input else None
        user_shape = shape[1:] if was_3d else shape
        out = v.check_out(out, user_shape, result_dtype, (grad_output, boxes, input))
        result = v.kernel_out(out, user_shape, dtype, zeroed=True)
    team = threads.team(num_threads, grad.size)
    roi_order, image_first = strategy.rois_by_image(batch_index, shape[0])
    return SimpleNamespace(
        grad=grad, channels_last=layout == "NHWC", coords=coords, roi_order=roi_order,
        image_first=image_first, scale=scale, pooled=pooled, features=features, out=out,
        result=result, kernel_result=result.reshape(shape) if was_3d else result,
        result_dtype=result_dtype, team=team,
    )


def roi_align_backward(grad_output, boxes, input_shape, output_size, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False, *, layout="NCHW", mode="avg",
                       input=None, out=None, num_threads=None):
    """Gradient of :func:`roi_align` with respect to its features.

    Average mode equals torchvision's ``_roi_align_backward`` (each sample sends
    ``grad * w_i / count`` to its 4 bilinear taps). Max mode sends a bin's whole gradient,
    times the bilinear weights, to the taps of its arg-max sample (the first maximum in
    sample order; none when an out-of-map sample, value 0, is strictly the maximum: on a tie
    at 0 the inside sample takes it); it needs `input`.

    The work is split by (image, channel block), so no two threads ever write the same
    element: results are bit-identical for any `num_threads`, without atomics.

    Parameters
    ----------
    grad_output : ndarray, float16, float32 or float64
        Gradient of the pooled output: ``(K, C, PH, PW)`` for NCHW, ``(K, PH, PW, C)`` for
        NHWC.
    boxes, output_size, spatial_scale, sampling_ratio, aligned, layout, mode
        Exactly as given to :func:`roi_align`.
    input_shape : tuple of int
        Shape of the features, ``(N, C, H, W)``/``(N, H, W, C)``, or 3-D for one image.
    input : ndarray, optional, keyword-only
        The features of the forward call; required for ``mode="max"``, unused for "avg".
    out : ndarray, optional, keyword-only
        Array of shape `input_shape` to write the gradient into (overwritten, not added to).
    num_threads : int, optional, keyword-only
        As in :func:`roi_align`.

    Returns
    -------
    ndarray
        The gradient, of shape `input_shape` and the dtype of `grad_output`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`roi_align`; also when `grad_output` does not have the pooled shape, or
        `input` is missing or mis-shaped in max mode.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_align_backward
    >>> grad = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    >>> roi_align_backward(grad, boxes, (1, 1, 3, 3), 1, sampling_ratio=2)[0, 0]
    array([[0.0625, 0.125 , 0.0625],
           [0.125 , 0.25  , 0.125 ],
           [0.0625, 0.125 , 0.0625]], dtype=float32)
    """
    mode = v.check_mode(mode)
    sampling_ratio = v.check_int(sampling_ratio, "sampling_ratio")
    call = _backward_call(grad_output, boxes, input_shape, output_size, spatial_scale, layout,
                          input, mode == "max", out, num_threads)
    if call.grad.size:
        with call.team as n_threads:
            done = _align_backward_kernel(call, layout, sampling_ratio, bool(aligned),
                                          mode == "max", n_threads)
        if not done:
            raise MemoryError("roi_align_backward: could not allocate the per-thread tables")
    return v.deliver(call.result, call.out, call.result_dtype)


def _align_backward_kernel(call, layout, sampling_ratio, aligned, max_mode, n_threads):
    """Run the backward kernel that suits the call: channel blocks when RoIs are many."""
    shape = call.kernel_result.shape
    if not max_mode and strategy.use_channel_blocks(shape, len(call.coords), call.pooled,
                                                     layout, call.kernel_result.itemsize):
        return _simd.align("roi_align_backward_blocked", call.kernel_result.dtype)(
            call.grad, call.channels_last, call.coords, call.roi_order, call.image_first,
            call.scale, *call.pooled, sampling_ratio, aligned, call.kernel_result,
            strategy.packed_block_size(shape, layout, call.kernel_result.itemsize, n_threads),
            n_threads,
        )
    return _simd.align("roi_align_backward", call.kernel_result.dtype)(
        call.grad, call.channels_last, call.coords, call.roi_order, call.image_first,
        call.scale, *call.pooled, sampling_ratio, aligned, max_mode, call.features,
        call.kernel_result, strategy.channel_blocks(n_threads, shape[0], v.channels_of(shape, layout)),
        n_threads,
    )


def roi_pool(input, boxes, output_size, spatial_scale=1.0, *, layout="NCHW", out=None,
             num_threads=None, return_argmax=False):
    """Max-pool every region of interest on a quantized grid (RoIPool, Fast R-CNN).

    The baseline RoIAlign replaces, with ``torchvision.ops.roi_pool``'s exact semantics:
    box corners are rounded to feature pixels (``round(x * spatial_scale)``), the size is
    ``max(end - start + 1, 1)``, bin ``p`` covers ``[floor(p * bin), ceil((p + 1) * bin))``
    offset by the start and clipped to the map, an empty bin gives 0, and the first maximum
    wins (strict ``>``, so NaN features are never chosen).

    Parameters
    ----------
    input, boxes, output_size, spatial_scale, layout, out, num_threads
        As in :func:`roi_align`.
    return_argmax : bool, default False, keyword-only
        Also return where each maximum was found, as torchvision's op does internally:
        hand it to :func:`roi_pool_backward` (``argmax=``) and the backward needs no second
        search of the features.

    Returns
    -------
    ndarray
        ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)`` for NHWC, the dtype of `input`.
    argmax : ndarray of int32, only with ``return_argmax=True``
        Same shape: the pixel index ``y * W + x`` of each output element's maximum within
        its channel of its image, -1 for an empty bin (torchvision's convention and dtype;
        so ``H * W`` must stay below 2**31).

    Raises
    ------
    TypeError, ValueError, MemoryError
        As in :func:`roi_align`.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_pool
    >>> features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> roi_pool(features, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), output_size=2)[0, 0]
    array([[ 5.,  6.],
           [ 9., 10.]], dtype=float32)
    """
    call = _forward_call(input, boxes, output_size, spatial_scale, layout, out, num_threads)
    argmax = None
    if return_argmax:
        height, width = v.map_size(call.features.shape, layout)  # checked by _forward_call
        v.check_argmax_fits(height * width, "return_argmax")
        argmax = np.empty(call.result.shape, np.int32)
    if call.result.size:
        with call.team as n_threads:
            done = _pool_forward_kernel(call, layout, n_threads, argmax)
        if not done:
            raise MemoryError("roi_pool: could not allocate the per-thread bin tables")
    pooled = v.deliver(call.result, call.out, call.result_dtype)
    return (pooled, argmax) if return_argmax else pooled


def roi_pool_backward(grad_output, boxes, input, output_size, spatial_scale=1.0, *,
                      layout="NCHW", out=None, num_threads=None, argmax=None):
    """Gradient of :func:`roi_pool` with respect to its features.

    Each bin's gradient goes to the element that won its maximum (none for an empty bin),
    like torchvision's ``_roi_pool_backward``: taken from `argmax` when given, else found
    again from `input`. Split by (image, channel block): bit-identical for any
    `num_threads`.

    Parameters
    ----------
    grad_output : ndarray
        Gradient of the pooled output, shaped like :func:`roi_pool`'s result.
    boxes, output_size, spatial_scale, layout, out, num_threads
        As in :func:`roi_pool`.
    input : ndarray
        The features of the forward call (its shape is the gradient's shape; its values are
        only read when `argmax` is None).
    argmax : ndarray of integers, optional, keyword-only
        The second result of ``roi_pool(..., return_argmax=True)`` for these boxes: the
        backward then only scatters, which is much faster. Each index must lie in
        ``[-1, H * W)``; it is not checked against `input`'s values.

    Returns
    -------
    ndarray
        The gradient, shaped like `input`, in the dtype of `grad_output`.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_pool_backward
    >>> features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> grad = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> roi_pool_backward(grad, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), features, 1)[0, 0]
    array([[0., 0., 0., 0.],
           [0., 0., 0., 0.],
           [0., 0., 1., 0.],
           [0., 0., 0., 0.]], dtype=float32)
    """
    if input is None:
        raise ValueError("input is required: roi_pool's gradient needs the features")
    v.check_features(input, v.check_layout(layout), canonical=False)  # converted once, below
    shape = np.shape(input)
    call = _backward_call(grad_output, boxes, shape, output_size, spatial_scale, layout,
                          input, argmax is None, out, num_threads)
    if argmax is not None:
        height, width = v.map_size(call.kernel_result.shape, layout)  # checked above
        argmax = v.check_argmax(argmax, call.grad.shape, height * width)
    if call.grad.size:
        with call.team as n_threads:
            done = _pool_backward_kernel(call, layout, n_threads, argmax)
        if not done:
            raise MemoryError("roi_pool_backward: could not allocate the per-thread bin tables")
    return v.deliver(call.result, call.out, call.result_dtype)


def _pool_forward_kernel(call, layout, n_threads, argmax):
    """Run the RoIPool forward kernel that suits the call: channel blocks when RoIs are many.

    argmax: None, or an int32 array shaped like the result that receives the arg-max indices.
    """
    shape = call.features.shape
    if not strategy.use_channel_blocks(shape, len(call.coords), call.pooled, layout,
                                       call.features.itemsize):
        return _simd.pool("roi_pool_forward", call.features.dtype)(
            call.features, call.channels_last, call.batch_index, call.coords, call.scale,
            *call.pooled, call.result, n_threads, argmax,
        )
    roi_order, image_first = strategy.rois_by_image(call.batch_index, shape[0])
    return _simd.pool("roi_pool_forward_blocked", call.features.dtype)(
        call.features, call.channels_last, call.coords, roi_order, image_first, call.scale,
        *call.pooled, call.result,
        strategy.packed_block_size(shape, layout, call.features.itemsize, n_threads), n_threads,
        argmax,
    )


def _pool_backward_kernel(call, layout, n_threads, argmax):
    """Run the RoIPool backward kernel that suits the call: a scatter from the arg-max indices
    when given, else channel blocks when RoIs are many, else per RoI."""
    shape = call.kernel_result.shape
    if argmax is not None:
        return _simd.pool("roi_pool_backward_argmax", call.kernel_result.dtype)(
            call.grad, call.channels_last, argmax, call.roi_order, call.image_first,
            *call.pooled, call.kernel_result,
            strategy.channel_blocks(n_threads, shape[0], v.channels_of(shape, layout)), n_threads,
        )
    if not strategy.use_channel_blocks(shape, len(call.coords), call.pooled, layout,
                                       call.kernel_result.itemsize):
        return _simd.pool("roi_pool_backward", call.kernel_result.dtype)(
            call.grad, call.channels_last, call.coords, call.roi_order, call.image_first,
            call.scale, *call.pooled, call.features, call.kernel_result,
            strategy.channel_blocks(n_threads, shape[0], v.channels_of(shape, layout)), n_threads,
        )
    return _simd.pool("roi_pool_backward_blocked", call.kernel_result.dtype)(
        call.grad, call.channels_last, call.coords, call.roi_order, call.image_first,
        call.scale, *call.pooled, call.features, call.kernel_result,
        strategy.packed_block_size(shape, layout, call.kernel_result.itemsize, n_threads, n_buffers=2),
        n_threads,
    )
