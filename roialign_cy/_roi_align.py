"""RoIAlign: roi_align, roi_align_backward and the RoIAlign class.

Each public function checks its arguments once into a call record (_args), plans how it runs
(_plan) and calls the compiled kernel of _roi_align_kernels through the kernel table
(_dispatch). `forward` and `backward` are those calls with the kernel variant and build
forced, for the tests.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, SupportsIndex, Tuple

import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _roi_align_kernels as _baseline
from roialign_cy._args import Bool, Layout, Mode, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _roi_align_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)


def _parameters(mode: Any, sampling_ratio: Any, aligned: Any) -> Tuple[bool, int, bool]:
    """(max_mode, sampling_ratio, aligned), checked: RoIAlign's own arguments."""
    max_mode = _args.MAX_MODE.get(mode) if type(mode) is str else None
    if max_mode is None:
        max_mode = _args.check_mode(mode) == "max"  # raises: mode is neither
    if not (type(sampling_ratio) is int and abs(sampling_ratio) < 2**31):
        sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
    if not (aligned is True or aligned is False):
        aligned = _args.check_bool(aligned, "aligned")
    return max_mode, sampling_ratio, aligned


def roi_align(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
              spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1, aligned: Bool = False,
              *, layout: Layout = "NCHW", mode: Mode = "avg",
              out: Optional[npt.NDArray[Any]] = None,
              num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
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
    return forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, layout, mode,
                   out, num_threads)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1, aligned: Bool = False,
            layout: Layout = "NCHW", mode: Mode = "avg", out: Optional[npt.NDArray[Any]] = None,
            num_threads: Optional[SupportsIndex] = None, variant: Optional[str] = None,
            build: Optional[str] = None) -> npt.NDArray[Any]:
    """roi_align with the kernel variant ("per_roi", "packed") and build forced; None: the
    plan's choice and the build picked at import."""
    max_mode, sampling_ratio, aligned = _parameters(mode, sampling_ratio, aligned)
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out)
    if call.kernel_out.size:
        plan = _plan.plan(call, num_threads, variant, grouped=False, locality=True)
        _plan.run(KERNELS, "forward", build, call, plan,
                  (sampling_ratio, aligned, max_mode, call.kernel_out), "roi_align")
    return _args.deliver(call)


def roi_align_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                       input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                       spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
                       aligned: Bool = False, *, layout: Layout = "NCHW", mode: Mode = "avg",
                       input: Optional[npt.ArrayLike] = None,
                       out: Optional[npt.NDArray[Any]] = None,
                       num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
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
    return backward(grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio,
                    aligned, layout, mode, input, out, num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input_shape: Sequence[SupportsIndex],
             output_size: OutputSize, spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
             aligned: Bool = False, layout: Layout = "NCHW", mode: Mode = "avg",
             input: Optional[npt.ArrayLike] = None, out: Optional[npt.NDArray[Any]] = None,
             num_threads: Optional[SupportsIndex] = None, variant: Optional[str] = None,
             build: Optional[str] = None) -> npt.NDArray[Any]:
    """roi_align_backward with the kernel variant and build forced (see forward). Max mode
    has no packed kernel: it always runs per RoI."""
    max_mode, sampling_ratio, aligned = _parameters(mode, sampling_ratio, aligned)
    call = _args.backward_call(grad_output, boxes, input_shape, output_size, spatial_scale,
                               layout, input, max_mode, out)
    if call.values.size:
        plan = _plan.plan(call, num_threads, variant, grouped=True, packable=not max_mode)
        _plan.run(KERNELS, "backward", build, call, plan,
                  (sampling_ratio, aligned, max_mode, call.features, call.kernel_out),
                  "roi_align_backward")
    return _args.deliver(call)


class RoIAlign(Pooler):
    """:func:`roi_align` with its parameters fixed, like ``torchvision.ops.RoIAlign``.

    Parameters are validated once, here. Instances are called like the function, have a
    :meth:`backward`, compare equal when their parameters are equal, and pickle (to ship
    them to worker processes).

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import RoIAlign
    >>> pool = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    >>> pool
    RoIAlign(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, aligned=True, mode='avg', layout='NCHW')
    >>> features = np.zeros((1, 8, 32, 32), dtype=np.float32)
    >>> pool(features, np.array([[0, 16.0, 16.0, 256.0, 256.0]])).shape
    (1, 8, 7, 7)
    """

    _fields = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "mode", "layout")
    output_size: Tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    mode: Mode
    layout: Layout

    def __init__(self, output_size: OutputSize, spatial_scale: Real = 1.0,
                 sampling_ratio: SupportsIndex = -1, aligned: Bool = False, *,
                 mode: Mode = "avg", layout: Layout = "NCHW") -> None:
        self.output_size = _args.check_output_size(output_size)
        self.spatial_scale = _args.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
        self.aligned = _args.check_bool(aligned, "aligned")
        self.mode = _args.check_mode(mode)
        self.layout = _args.check_layout(layout)


    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Forward: :func:`roi_align` of `input` over `boxes`."""
        return roi_align(input, boxes, **self._params(), out=out, num_threads=num_threads)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *, input: Optional[npt.ArrayLike] = None,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Gradient w.r.t. the features: :func:`roi_align_backward` (max mode needs `input`)."""
        return roi_align_backward(grad_output, boxes, input_shape, **self._params(), input=input,
                                  out=out, num_threads=num_threads)
