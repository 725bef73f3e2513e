"""Position-sensitive RoIPool: ps_roi_pool, ps_roi_pool_backward and PSRoIPool.

Laid out as _roi_align.py: check once (_args, with the map's channels a multiple of
PH * PW), plan (_plan), run the compiled kernel of _ps_roi_pool_kernels through the kernel
table (_dispatch).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, SupportsIndex, Tuple

import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _ps_roi_pool_kernels as _baseline
from roialign_cy._args import Layout, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _ps_roi_pool_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)


def ps_roi_pool(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
                spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
                out: Optional[npt.NDArray[Any]] = None,
                num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Position-sensitive RoIPool (R-FCN): the average of each quantized bin.

    Same arguments, defaults and numbers as ``torchvision.ops.ps_roi_pool`` on the CPU.
    The features hold ``C = C_out * PH * PW`` channels: output bin ``(c, ph, pw)`` pools
    input channel ``(c * PH + ph) * PW + pw`` only. Box corners are rounded to feature
    pixels (``start = round(x1 * spatial_scale)``, ``end = round(x2 * spatial_scale)``,
    halves away from zero), the size is ``max(end - start, 1)`` (no +1, unlike
    :func:`roi_pool`), bin ``p`` covers ``[floor(p * bin), ceil((p + 1) * bin))`` offset by
    the start and clipped to ``[0, H - 1]`` (so, as in torchvision, the map's last row and
    column never take part), and the bin's elements are AVERAGED, not maxed; an empty bin
    gives 0.

    Parameters
    ----------
    input : ndarray, float16, float32 or float64
        Features, ``(N, C, H, W)`` or ``(N, H, W, C)`` (`layout`), C a multiple of
        ``PH * PW``; a 3-D array is one image. float16 is computed in float32.
    boxes, output_size, spatial_scale, layout, out, num_threads
        As in :func:`ps_roi_align`.

    Returns
    -------
    ndarray
        ``(K, C / (PH * PW), PH, PW)`` for NCHW or ``(K, PH, PW, C / (PH * PW))`` for NHWC,
        the dtype of `input` (`out` itself when given).

    Raises
    ------
    TypeError, ValueError
        As in :func:`ps_roi_align`.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import ps_roi_pool
    >>> features = np.arange(4 * 25, dtype=np.float32).reshape(1, 4, 5, 5)  # C = 1 * 2 * 2
    >>> ps_roi_pool(features, np.array([[0, 0.0, 0.0, 4.0, 4.0]]), output_size=2)
    array([[[[ 3., 30.],
             [63., 90.]]]], dtype=float32)
    """
    return forward(input, boxes, output_size, spatial_scale, layout, out, num_threads)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, layout: Layout = "NCHW",
            out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
            build: Optional[str] = None) -> npt.NDArray[Any]:
    """ps_roi_pool with the build forced; None: the build picked at import."""
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out,
                              position_sensitive=True)
    if call.kernel_out.size:
        plan = _plan.plan(call, num_threads, None, grouped=False, packable=False,
                          locality=True)
        _plan.run(KERNELS, "forward", build, call, plan, (call.kernel_out,), "ps_roi_pool")
    return _args.deliver(call)


def ps_roi_pool_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                         input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                         spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
                         out: Optional[npt.NDArray[Any]] = None,
                         num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Gradient of :func:`ps_roi_pool` with respect to its features: its exact adjoint.

    Bin ``(c, ph, pw)`` sends ``grad / count`` to each of its ``count`` elements in input
    channel ``(c * PH + ph) * PW + pw``, over the very bins the forward averages. This
    differs from torchvision's ``_ps_roi_pool_backward``, which is not the adjoint of its
    own forward: it clips the bins to ``[0, H]`` and ``[0, W]`` where the forward clips to
    ``[0, H - 1]`` and ``[0, W - 1]``, so for every bin reaching the map's last row or
    column it also sends gradient there and divides by the larger count (and a bin empty in
    the forward, ``[H - 1, H)``, still sends gradient); it also rounds float64 box corners
    through float32 (``roundf``). Wherever no bin reaches the last row or column (and, in
    float64, the corners round alike), the two gradients are the same, bit for bit. The
    work is split by (image, input channel block): bit-identical for any `num_threads`,
    without atomics.

    Parameters
    ----------
    grad_output : ndarray, float16, float32 or float64
        Gradient of the pooled output, ``(K, C / (PH * PW), PH, PW)`` for NCHW or
        ``(K, PH, PW, C / (PH * PW))`` for NHWC.
    boxes, output_size, spatial_scale, layout
        Exactly as given to :func:`ps_roi_pool`.
    input_shape : tuple of int
        Shape of the features, ``(N, C, H, W)``/``(N, H, W, C)``, or 3-D for one image.
    out, num_threads
        As in :func:`ps_roi_align_backward`.

    Returns
    -------
    ndarray
        The gradient, of shape `input_shape` and the dtype of `grad_output`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`ps_roi_align_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import ps_roi_pool_backward
    >>> grad = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> ps_roi_pool_backward(grad, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), (1, 1, 4, 4), 1)[0, 0]
    array([[0.25, 0.25, 0.  , 0.  ],
           [0.25, 0.25, 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.  ]], dtype=float32)
    """
    return backward(grad_output, boxes, input_shape, output_size, spatial_scale, layout, out,
                    num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input_shape: Sequence[SupportsIndex],
             output_size: OutputSize, spatial_scale: Real = 1.0, layout: Layout = "NCHW",
             out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
             build: Optional[str] = None) -> npt.NDArray[Any]:
    """ps_roi_pool_backward with the build forced (see forward)."""
    call = _args.backward_call(grad_output, boxes, input_shape, output_size, spatial_scale,
                               layout, None, False, out, position_sensitive=True)
    if call.values.size:
        plan = _plan.plan(call, num_threads, None, grouped=True, packable=False)
        _plan.run(KERNELS, "backward", build, call, plan, (call.kernel_out,),
                  "ps_roi_pool_backward")
    return _args.deliver(call)


class PSRoIPool(Pooler):
    """:func:`ps_roi_pool` with its parameters fixed, like ``torchvision.ops.PSRoIPool``.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import PSRoIPool
    >>> pool = PSRoIPool((2, 2), spatial_scale=0.5)
    >>> pool
    PSRoIPool(output_size=(2, 2), spatial_scale=0.5, layout='NCHW')
    >>> pool(np.ones((1, 3 * 2 * 2, 8, 8)), np.array([[0, 0.0, 0.0, 8.0, 8.0]])).shape
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
        """Forward: :func:`ps_roi_pool` of `input` over `boxes`."""
        return ps_roi_pool(input, boxes, **self._params(), out=out, num_threads=num_threads)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Gradient w.r.t. the features: :func:`ps_roi_pool_backward`."""
        return ps_roi_pool_backward(grad_output, boxes, input_shape, **self._params(), out=out,
                                    num_threads=num_threads)
