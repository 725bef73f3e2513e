"""RoIPool: roi_pool, roi_pool_backward and the RoIPool class.

Laid out as _roi_align.py: check once (_args), plan (_plan), run the compiled kernel of
_roi_pool_kernels through the kernel table (_dispatch).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, SupportsIndex, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _roi_pool_kernels as _baseline
from roialign_cy._args import Bool, Layout, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _roi_pool_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)
# roi_pool(..., return_argmax=True): the pooled maxima and where each was found.
PooledWithArgmax = Tuple[npt.NDArray[Any], npt.NDArray[np.int32]]


def _n_pixels(call: _args.ForwardCall) -> int:
    """H * W of the call's feature map."""
    shape = call.map_shape
    return shape[1] * shape[2] if call.channels_last else shape[2] * shape[3]


@overload
def roi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
             spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             return_argmax: Literal[False] = False) -> npt.NDArray[Any]: ...
@overload
def roi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
             spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             return_argmax: Literal[True]) -> PooledWithArgmax: ...
@overload
def roi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
             spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             return_argmax: Bool = False) -> Union[npt.NDArray[Any], PooledWithArgmax]: ...


def roi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
             spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             return_argmax: Bool = False) -> Union[npt.NDArray[Any], PooledWithArgmax]:
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
    return forward(input, boxes, output_size, spatial_scale, layout, out, num_threads,
                   return_argmax)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, layout: Layout = "NCHW",
            out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
            return_argmax: Bool = False, variant: Optional[str] = None,
            build: Optional[str] = None) -> Union[npt.NDArray[Any], PooledWithArgmax]:
    """roi_pool with the kernel variant ("per_roi", "packed") and build forced; None: the
    plan's choice and the build picked at import."""
    if not (return_argmax is True or return_argmax is False):
        return_argmax = _args.check_bool(return_argmax, "return_argmax")
    if (return_argmax and type(input) is np.ndarray and input.ndim in (3, 4)
            and type(layout) is str):
        # Before forward_call may copy the features: a map int32 indices cannot address is
        # refused without converting gigabytes first.
        h, w = input.shape[-3:-1] if layout == "NHWC" else input.shape[-2:]
        _args.check_argmax_fits(h * w, "return_argmax")
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out)
    argmax: Optional[npt.NDArray[np.int32]] = None
    if return_argmax:
        _args.check_argmax_fits(_n_pixels(call), "return_argmax")
        argmax = np.empty(call.kernel_out.shape, np.int32)
    if call.kernel_out.size:
        plan = _plan.plan(call, num_threads, variant, grouped=False, locality=True)
        _plan.run(KERNELS, "forward", build, call, plan, (call.kernel_out, argmax), "roi_pool")
    pooled = _args.deliver(call)
    return (pooled, argmax) if argmax is not None else pooled


def roi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input: npt.ArrayLike,
                      output_size: OutputSize, spatial_scale: Real = 1.0, *,
                      layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
                      num_threads: Optional[SupportsIndex] = None,
                      argmax: Optional[npt.ArrayLike] = None) -> npt.NDArray[Any]:
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
    return backward(grad_output, boxes, input, output_size, spatial_scale, layout, out,
                    num_threads, argmax)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input: npt.ArrayLike,
             output_size: OutputSize, spatial_scale: Real = 1.0, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             argmax: Optional[npt.ArrayLike] = None, variant: Optional[str] = None,
             build: Optional[str] = None) -> npt.NDArray[Any]:
    """roi_pool_backward with the kernel variant and build forced (see forward). With
    `argmax` the arg-max scatter always runs."""
    if input is None:
        raise ValueError("input is required: roi_pool's gradient needs the features")
    _args.check_features(input, _args.check_layout(layout), canonical=False)  # converted below
    call = _args.backward_call(grad_output, boxes, np.shape(input), output_size, spatial_scale,
                               layout, input, argmax is None, out, argmax)
    if call.values.size:
        plan = _plan.plan(call, num_threads, variant, grouped=True, packable=call.argmax is None,
                          n_buffers=2)
        _plan.run(KERNELS, "backward", build, call, plan,
                  (call.features, call.argmax, call.kernel_out), "roi_pool_backward")
    return _args.deliver(call)


class RoIPool(Pooler):
    """:func:`roi_pool` with its parameters fixed, like ``torchvision.ops.RoIPool``.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import RoIPool
    >>> pool = RoIPool((2, 2), spatial_scale=0.5)
    >>> pool
    RoIPool(output_size=(2, 2), spatial_scale=0.5, layout='NCHW')
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

    @overload
    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None,
                 return_argmax: Literal[False] = False) -> npt.NDArray[Any]: ...
    @overload
    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None,
                 return_argmax: Literal[True]) -> PooledWithArgmax: ...
    @overload
    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None,
                 return_argmax: Bool = False) -> Union[npt.NDArray[Any], PooledWithArgmax]: ...

    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None,
                 return_argmax: Bool = False) -> Union[npt.NDArray[Any], PooledWithArgmax]:
        """Forward: :func:`roi_pool` of `input` over `boxes`."""
        return roi_pool(input, boxes, **self._params(), out=out, num_threads=num_threads,
                        return_argmax=return_argmax)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None,
                 argmax: Optional[npt.ArrayLike] = None) -> npt.NDArray[Any]:
        """Gradient w.r.t. the features: :func:`roi_pool_backward`."""
        return roi_pool_backward(grad_output, boxes, input, **self._params(), out=out,
                                 num_threads=num_threads, argmax=argmax)
