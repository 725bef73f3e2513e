"""Precise RoI Pooling: prroi_pool, prroi_pool_backward and PrRoIPool (IoU-Net).

Laid out as _roi_align.py: check once (_args), plan (_plan), run the compiled kernels of
_prroi_pool_kernels through the kernel table (_dispatch). The box gradient is a third
kernel, one work item per RoI.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, SupportsIndex, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _prroi_pool_kernels as _baseline
from roialign_cy._args import Bool, Layout, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _prroi_pool_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)
# A channels-first forward pools an image's RoIs over blocks of channels whose planes fill
# about this many bytes, so that they stay in a core's cache while every RoI reads them
# (each RoI reads all the pixels it covers: per RoI, the planes would come from memory).
FORWARD_BLOCK_BYTES = 1 << 20
# prroi_pool_backward(..., box_grad=True): the gradients w.r.t. the features and the boxes.
Gradients = Tuple[npt.NDArray[Any], npt.NDArray[Any]]


def prroi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
               spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
               out: Optional[npt.NDArray[Any]] = None,
               num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Precise RoI Pooling (IoU-Net): each bin the exact average of the bilinear interpolant.

    The definition of ``mmcv.ops.prroi_pool`` (whose kernels exist for GPUs only): box
    corners are ``x1 * spatial_scale`` etc. (no half-pixel offset), the RoI's size
    ``max(x2 - x1, 0)`` is split into ``PH x PW`` equal bins, and each bin is the integral
    of the map's bilinear interpolant over the bin divided by the bin's area, computed in
    closed form (no sampling grid, no quantization). Pixels lie at integer coordinates and
    pixels outside the map count as 0, so the interpolant falls linearly to 0 between the
    border pixel and the next one. A bin of zero area, so every bin of an inverted box
    (``x2 < x1`` or ``y2 < y1``), gives 0. Each bin reads only the map pixels it covers:
    the work stays bounded for boxes much larger than the map.

    Parameters
    ----------
    input : ndarray, float16, float32 or float64
        Features, ``(N, C, H, W)`` or ``(N, H, W, C)`` (`layout`); a 3-D array is one
        image. float16 is computed in float32.
    boxes, output_size, spatial_scale, layout, out, num_threads
        As in :func:`roi_align`.

    Returns
    -------
    ndarray
        ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)`` for NHWC, the dtype of `input`
        (`out` itself when given).

    Raises
    ------
    TypeError, ValueError, MemoryError
        As in :func:`roi_align`.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import prroi_pool
    >>> features = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)
    >>> prroi_pool(features, np.array([[0, 0.0, 0.0, 1.0, 1.0]]), output_size=2)[0, 0]
    array([[1.75, 2.25],
           [2.75, 3.25]], dtype=float32)
    """
    return forward(input, boxes, output_size, spatial_scale, layout, out, num_threads)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, layout: Layout = "NCHW",
            out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
            build: Optional[str] = None) -> npt.NDArray[Any]:
    """prroi_pool with the build forced; None: the build picked at import."""
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out)
    if call.kernel_out.size:
        channels_first = not call.channels_last
        plan = _plan.plan(call, num_threads, None, grouped=channels_first, packable=False,
                          locality=True)
        if channels_first:
            plan = plan._replace(block=_forward_block(call.map_shape, call.values.itemsize,
                                                      plan.n_threads))
        _plan.run(KERNELS, "forward", build, call, plan, (call.kernel_out,), "prroi_pool")
    return _args.deliver(call)


def _forward_block(map_shape: Tuple[int, ...], itemsize: int, n_threads: int) -> int:
    """Channels per (image, channel block) work item of a channels-first forward: planes
    of about FORWARD_BLOCK_BYTES, and enough items for every thread."""
    n_images, channels, height, width = map_shape
    block = max(1, min(channels, FORWARD_BLOCK_BYTES // max(1, height * width * itemsize)))
    while block > 1 and n_images * -(-channels // block) < 4 * n_threads:
        block //= 2
    return block


@overload
def prroi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                        input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                        spatial_scale: Real = 1.0, *, input: Optional[npt.ArrayLike] = None,
                        box_grad: Literal[False] = False, layout: Layout = "NCHW",
                        out: Optional[npt.NDArray[Any]] = None,
                        num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]: ...
@overload
def prroi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                        input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                        spatial_scale: Real = 1.0, *, input: Optional[npt.ArrayLike] = None,
                        box_grad: Literal[True], layout: Layout = "NCHW",
                        out: Optional[npt.NDArray[Any]] = None,
                        num_threads: Optional[SupportsIndex] = None) -> Gradients: ...
@overload
def prroi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                        input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                        spatial_scale: Real = 1.0, *, input: Optional[npt.ArrayLike] = None,
                        box_grad: Bool = False, layout: Layout = "NCHW",
                        out: Optional[npt.NDArray[Any]] = None,
                        num_threads: Optional[SupportsIndex] = None
                        ) -> Union[npt.NDArray[Any], Gradients]: ...


def prroi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                        input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                        spatial_scale: Real = 1.0, *, input: Optional[npt.ArrayLike] = None,
                        box_grad: Bool = False, layout: Layout = "NCHW",
                        out: Optional[npt.NDArray[Any]] = None,
                        num_threads: Optional[SupportsIndex] = None
                        ) -> Union[npt.NDArray[Any], Gradients]:
    """Gradient of :func:`prroi_pool` w.r.t. its features, and optionally its boxes.

    The feature gradient is the exact adjoint of the forward: bin ``b`` sends
    ``grad / area`` times each pixel's share of the bin's integral to that pixel. It is
    split by (image, channel block): bit-identical for any `num_threads`, without atomics.
    The box gradient is mmcv's ``prroi_pool`` coordinate gradient (the exact derivative of
    each bin's average w.r.t. its edges, through the box corners, in input coordinates:
    times `spatial_scale`), summed per RoI in one fixed order.

    Parameters
    ----------
    grad_output : ndarray, float16, float32 or float64
        Gradient of the pooled output, ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)``
        for NHWC.
    boxes, output_size, spatial_scale, layout
        Exactly as given to :func:`prroi_pool`.
    input_shape : tuple of int
        Shape of the features, ``(N, C, H, W)``/``(N, H, W, C)``, or 3-D for one image.
    input : ndarray, optional, keyword-only
        The forward's features, required with ``box_grad=True`` (the box gradient reads
        them), of `input_shape`.
    box_grad : bool, default False, keyword-only
        Also return the gradient w.r.t. the boxes.
    out : ndarray, optional, keyword-only
        Where to write the feature gradient (as in :func:`roi_align_backward`).
    num_threads : int, optional, keyword-only
        As in :func:`roi_align`.

    Returns
    -------
    grad_input : ndarray
        The feature gradient, of shape `input_shape` and the dtype of `grad_output`.
    grad_boxes : ndarray, only with ``box_grad=True``
        ``(K, 5)``, the dtype of `grad_output`: 0 in the batch column, then the gradient
        w.r.t. ``x1, y1, x2, y2``; 0 for a box whose bins have zero area.

    Raises
    ------
    TypeError, ValueError, MemoryError
        As in :func:`roi_align_backward`; ValueError naming `input` when ``box_grad=True``
        without it.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import prroi_pool_backward
    >>> features = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> grad, grad_boxes = prroi_pool_backward(np.ones((1, 1, 2, 2)),
    ...     np.array([[0, 0.0, 0.0, 1.0, 1.0]]), features.shape, 2, input=features,
    ...     box_grad=True)
    >>> grad[0, 0]
    array([[1., 1.],
           [1., 1.]])
    >>> grad_boxes
    array([[0., 2., 4., 2., 4.]])
    """
    return backward(grad_output, boxes, input_shape, output_size, spatial_scale, input,
                    box_grad, layout, out, num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input_shape: Sequence[SupportsIndex],
             output_size: OutputSize, spatial_scale: Real = 1.0,
             input: Optional[npt.ArrayLike] = None, box_grad: Bool = False,
             layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
             num_threads: Optional[SupportsIndex] = None,
             build: Optional[str] = None) -> Union[npt.NDArray[Any], Gradients]:
    """prroi_pool_backward with the build forced (see forward)."""
    if not (box_grad is True or box_grad is False):
        box_grad = _args.check_bool(box_grad, "box_grad")
    if box_grad and input is None:
        raise ValueError("input is required with box_grad=True: the box gradient reads the "
                         "features")
    call = _args.backward_call(grad_output, boxes, input_shape, output_size, spatial_scale,
                               layout, input, box_grad, out)
    if call.values.size:
        plan = _plan.plan(call, num_threads, None, grouped=True, packable=False)
        _plan.run(KERNELS, "backward", build, call, plan, (call.kernel_out,),
                  "prroi_pool_backward")
    if not box_grad:
        return _args.deliver(call)
    grad_boxes = np.zeros((len(call.coords), 5), call.values.dtype)
    if call.values.size:
        plan = _plan.plan(call, num_threads, None, grouped=False, packable=False)
        _plan.run(KERNELS, "box_backward", build, call, plan, (call.features, grad_boxes),
                  "prroi_pool_backward")
    grad_input = _args.deliver(call)
    return grad_input, grad_boxes.astype(call.result_dtype, copy=False)


class PrRoIPool(Pooler):
    """:func:`prroi_pool` with its parameters fixed, like ``mmcv.ops.PrRoIPool``.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import PrRoIPool
    >>> pool = PrRoIPool((2, 2), spatial_scale=0.5)
    >>> pool
    PrRoIPool(output_size=(2, 2), spatial_scale=0.5, layout='NCHW')
    >>> pool(np.ones((1, 3, 8, 8)), np.array([[0, 0.0, 0.0, 8.0, 8.0]])).shape
    (1, 3, 2, 2)
    """

    _fields = ("output_size", "spatial_scale", "layout")
    output_size: Tuple[int, int]
    spatial_scale: float
    layout: Layout

    def __init__(self, output_size: OutputSize, spatial_scale: Real = 1.0, *,
                 layout: Layout = "NCHW") -> None:
        self.output_size = _args.check_output_size(output_size)
        self.spatial_scale = _args.check_spatial_scale(spatial_scale)
        self.layout = _args.check_layout(layout)

    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Forward: :func:`prroi_pool` of `input` over `boxes`."""
        return prroi_pool(input, boxes, **self._params(), out=out, num_threads=num_threads)

    @overload
    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 input: Optional[npt.ArrayLike] = None, box_grad: Literal[False] = False,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]: ...
    @overload
    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 input: Optional[npt.ArrayLike] = None, box_grad: Literal[True],
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> Gradients: ...
    @overload
    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 input: Optional[npt.ArrayLike] = None, box_grad: Bool = False,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None
                 ) -> Union[npt.NDArray[Any], Gradients]: ...

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 input: Optional[npt.ArrayLike] = None, box_grad: Bool = False,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None
                 ) -> Union[npt.NDArray[Any], Gradients]:
        """Gradients: :func:`prroi_pool_backward`."""
        return prroi_pool_backward(grad_output, boxes, input_shape, **self._params(), input=input,
                                   box_grad=box_grad, out=out, num_threads=num_threads)
