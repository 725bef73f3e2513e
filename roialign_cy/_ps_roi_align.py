"""Position-sensitive RoIAlign: ps_roi_align, ps_roi_align_backward and PSRoIAlign.

Laid out as _roi_align.py: check once (_args, with the map's channels a multiple of
PH * PW), plan (_plan), run the compiled kernel of _ps_roi_align_kernels through the kernel
table (_dispatch). `forward` and `backward` are those calls with the build forced, for the
tests.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, SupportsIndex, Tuple

import numpy as np
import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _ps_roi_align_kernels as _baseline
from roialign_cy._args import Layout, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _ps_roi_align_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)
# The forward pools channels-first maps from packed copies of their planes (work items
# (image, channel block), several times faster) unless a call has more than this many
# sample x output evaluations: then its work items are RoIs, so that a long call runs in
# time slices (Ctrl-C) of bounded size.
PACKED_WORK = 1 << 26


def _sampling_ratio(sampling_ratio: Any) -> int:
    """sampling_ratio, checked: PSRoIAlign's own argument."""
    if type(sampling_ratio) is int and abs(sampling_ratio) < 2**31:
        return sampling_ratio
    return _args.check_int(sampling_ratio, "sampling_ratio")


def _packed_forward(call: _args.ForwardCall, sampling_ratio: int) -> bool:
    """Whether the forward may pool from packed copies (see PACKED_WORK): the call's
    evaluations, estimated from the sampling grids (adaptive: from the boxes' sizes, an
    over-estimate for boxes reaching outside the map), are few enough."""
    outputs = call.kernel_out.size
    if sampling_ratio > 0:
        return outputs * sampling_ratio * sampling_ratio <= PACKED_WORK
    if outputs > PACKED_WORK:
        return False
    ph, pw = call.pooled  # the adaptive grid: ceil(roi_width / PW) x ceil(roi_height / PH)
    sizes = (call.coords[:, 2:] - call.coords[:, :2]) * call.spatial_scale
    samples = np.prod(np.ceil(np.maximum(sizes, 0) / (pw, ph)), axis=1).mean()
    return bool(outputs * samples <= PACKED_WORK)


def ps_roi_align(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
                 spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1, *,
                 layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Position-sensitive RoIAlign (R-FCN, Light-Head R-CNN).

    Same arguments, defaults and numbers as ``torchvision.ops.ps_roi_align`` on the CPU.
    The features hold ``C = C_out * PH * PW`` channels, one group of ``PH * PW`` per output
    channel: output bin ``(c, ph, pw)`` pools input channel ``(c * PH + ph) * PW + pw``
    only. Each bin averages its sampling grid of bilinearly interpolated samples with
    :func:`roi_align`'s geometry for ``aligned=True`` (boxes shifted by -0.5 pixel, no
    stretching of tiny boxes). Where torchvision divides by an empty adaptive grid (an
    inverted box) and returns NaN, the result is 0, as in :func:`roi_align`.

    Parameters
    ----------
    input : ndarray, float16, float32 or float64
        Features, ``(N, C, H, W)`` for ``layout="NCHW"`` or ``(N, H, W, C)`` for
        ``layout="NHWC"``, C a multiple of ``PH * PW``; a 3-D array is one image. Any
        strides and byte order; float16 is computed in float32.
    boxes : ndarray (K, 5) or list of N ndarrays (K_i, 4)
        Regions in input-image pixels, in any of :func:`roi_align`'s forms.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; an int means square.
    spatial_scale : float, default 1.0
        Feature-map pixels per input-image pixel (1/stride).
    sampling_ratio : int, default -1
        Samples per bin along each axis; ``<= 0`` means adaptive, ``ceil(roi_size / PH)``
        along y and ``ceil(roi_size / PW)`` along x.
    layout : {"NCHW", "NHWC"}, keyword-only
        Layout of `input` and of the result.
    out : ndarray, optional, keyword-only
        Array to write the result into (shape and dtype of the result, writeable, not
        overlapping the inputs).
    num_threads : int, optional, keyword-only
        OpenMP threads for this call; None uses OpenMP's default. Small calls run on one
        thread.

    Returns
    -------
    ndarray
        ``(K, C / (PH * PW), PH, PW)`` for NCHW or ``(K, PH, PW, C / (PH * PW))`` for NHWC,
        the dtype of `input` (`out` itself when given).

    Raises
    ------
    TypeError
        An argument of the wrong kind.
    ValueError
        A bad value, naming the argument: among others, `input`'s channels not a multiple
        of ``PH * PW``, a NaN/inf box, a batch index out of range.
    MemoryError
        The output or the per-thread sample tables cannot be allocated.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import ps_roi_align
    >>> features = np.arange(4 * 25, dtype=np.float32).reshape(1, 4, 5, 5)  # C = 1 * 2 * 2
    >>> boxes = np.array([[0, 0.5, 0.5, 4.5, 4.5]])
    >>> ps_roi_align(features, boxes, output_size=2, sampling_ratio=2)
    array([[[[ 6., 33.],
             [66., 93.]]]], dtype=float32)
    """
    return forward(input, boxes, output_size, spatial_scale, sampling_ratio, layout, out,
                   num_threads)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
            layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
            num_threads: Optional[SupportsIndex] = None,
            build: Optional[str] = None) -> npt.NDArray[Any]:
    """ps_roi_align with the build forced; None: the build picked at import."""
    sampling_ratio = _sampling_ratio(sampling_ratio)
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out,
                              position_sensitive=True)
    if call.kernel_out.size:
        # grouped: work items are (image, channel block), each pooling all its image's RoIs
        plan = _plan.plan(call, num_threads, None, grouped=True, packable=False)
        plan = plan._replace(packed=_packed_forward(call, sampling_ratio))
        _plan.run(KERNELS, "forward", build, call, plan, (sampling_ratio, call.kernel_out),
                  "ps_roi_align")
    return _args.deliver(call)


def ps_roi_align_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                          input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                          spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1, *,
                          layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
                          num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Gradient of :func:`ps_roi_align` with respect to its features.

    Equals torchvision's ``_ps_roi_align_backward``: each sample of bin ``(c, ph, pw)``
    sends ``grad * w_i / count`` to its 4 bilinear taps in input channel
    ``(c * PH + ph) * PW + pw``. The work is split by (image, input channel block), so no
    two threads ever write the same element: results are bit-identical for any
    `num_threads`, without atomics.

    Parameters
    ----------
    grad_output : ndarray, float16, float32 or float64
        Gradient of the pooled output: ``(K, C / (PH * PW), PH, PW)`` for NCHW,
        ``(K, PH, PW, C / (PH * PW))`` for NHWC.
    boxes, output_size, spatial_scale, sampling_ratio, layout
        Exactly as given to :func:`ps_roi_align`.
    input_shape : tuple of int
        Shape of the features, ``(N, C, H, W)``/``(N, H, W, C)`` (C a multiple of
        ``PH * PW``), or 3-D for one image.
    out : ndarray, optional, keyword-only
        Array of shape `input_shape` to write the gradient into (overwritten, not added to).
    num_threads : int, optional, keyword-only
        As in :func:`ps_roi_align`.

    Returns
    -------
    ndarray
        The gradient, of shape `input_shape` and the dtype of `grad_output`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`ps_roi_align` (naming `input_shape` for its channels); also when
        `grad_output` does not have the pooled shape.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import ps_roi_align_backward
    >>> grad = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> boxes = np.array([[0, 0.5, 0.5, 2.5, 2.5]])
    >>> ps_roi_align_backward(grad, boxes, (1, 1, 3, 3), 1, sampling_ratio=2)[0, 0]
    array([[0.0625, 0.125 , 0.0625],
           [0.125 , 0.25  , 0.125 ],
           [0.0625, 0.125 , 0.0625]], dtype=float32)
    """
    return backward(grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio,
                    layout, out, num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input_shape: Sequence[SupportsIndex],
             output_size: OutputSize, spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
             layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
             num_threads: Optional[SupportsIndex] = None,
             build: Optional[str] = None) -> npt.NDArray[Any]:
    """ps_roi_align_backward with the build forced (see forward)."""
    sampling_ratio = _sampling_ratio(sampling_ratio)
    call = _args.backward_call(grad_output, boxes, input_shape, output_size, spatial_scale,
                               layout, None, False, out, position_sensitive=True)
    if call.values.size:
        plan = _plan.plan(call, num_threads, None, grouped=True, packable=False)
        _plan.run(KERNELS, "backward", build, call, plan, (sampling_ratio, call.kernel_out),
                  "ps_roi_align_backward")
    return _args.deliver(call)


class PSRoIAlign(Pooler):
    """:func:`ps_roi_align` with its parameters fixed, like ``torchvision.ops.PSRoIAlign``.

    Parameters are validated once, here. Instances are called like the function, have a
    :meth:`backward`, compare equal when their parameters are equal, and pickle.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import PSRoIAlign
    >>> pool = PSRoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2)
    >>> pool
    PSRoIAlign(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, layout='NCHW')
    >>> features = np.zeros((1, 3 * 7 * 7, 32, 32), dtype=np.float32)
    >>> pool(features, np.array([[0, 16.0, 16.0, 256.0, 256.0]])).shape
    (1, 3, 7, 7)
    """

    _fields = ("output_size", "spatial_scale", "sampling_ratio", "layout")
    output_size: Tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    layout: Layout

    def __init__(self, output_size: OutputSize, spatial_scale: Real = 1.0,
                 sampling_ratio: SupportsIndex = -1, *, layout: Layout = "NCHW") -> None:
        self.output_size = _args.check_output_size(output_size)
        self.spatial_scale = _args.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
        self.layout = _args.check_layout(layout)


    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Forward: :func:`ps_roi_align` of `input` over `boxes`."""
        return ps_roi_align(input, boxes, **self._params(), out=out, num_threads=num_threads)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Gradient w.r.t. the features: :func:`ps_roi_align_backward`."""
        return ps_roi_align_backward(grad_output, boxes, input_shape, **self._params(), out=out,
                                     num_threads=num_threads)
