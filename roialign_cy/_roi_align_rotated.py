"""Rotated RoIAlign: roi_align_rotated, roi_align_rotated_backward and RoIAlignRotated.

Laid out as _roi_align.py: check once (_args, with rows of 5 coordinates), plan (_plan), run
the compiled kernel of _roi_align_rotated_kernels through the kernel table (_dispatch).
Before the kernel runs, the angle column of the call's private box array is turned into
radians, counter-clockwise, in the features' float type, exactly as detectron2 converts it
(``angle * M_PI / 180.0`` in double, then rounded). `forward` and `backward` are those calls
with the build forced, for the tests.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, SupportsIndex, Tuple, Union

import numpy as np
import numpy.typing as npt

from roialign_cy import _args, _dispatch, _plan
from roialign_cy import _roi_align_rotated_kernels as _baseline
from roialign_cy._args import Bool, Layout, OutputSize, Real
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _roi_align_rotated_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)
# Literals, not Literal["degrees", "radians"] (see _args.Layout).
AngleUnit = Union[Literal["degrees"], Literal["radians"]]
ANGLE_UNITS: Tuple[AngleUnit, ...] = ("degrees", "radians")


def check_angle_unit(angle_unit: Any) -> AngleUnit:
    """angle_unit, checked: "degrees" or "radians"."""
    if type(angle_unit) is str and angle_unit in ANGLE_UNITS:
        return angle_unit  # type: ignore[return-value, unused-ignore]
    raise ValueError(f"angle_unit must be one of {ANGLE_UNITS}, got {angle_unit!r}")


def _parameters(sampling_ratio: Any, aligned: Any, clockwise: Any,
                angle_unit: Any) -> Tuple[int, bool, bool, bool]:
    """(sampling_ratio, aligned, clockwise, degrees), checked: the operator's own arguments."""
    if not (type(sampling_ratio) is int and abs(sampling_ratio) < 2**31):
        sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
    if not (aligned is True or aligned is False):
        aligned = _args.check_bool(aligned, "aligned")
    if not (clockwise is True or clockwise is False):
        clockwise = _args.check_bool(clockwise, "clockwise")
    return sampling_ratio, aligned, clockwise, check_angle_unit(angle_unit) == "degrees"


def _prepare_boxes(coords: npt.NDArray[Any], aligned: bool, clockwise: bool,
                   degrees: bool) -> None:
    """Refuse negative sizes (aligned, as detectron2 asserts) and turn the call's private
    angle column into radians, counter-clockwise, in the boxes' dtype, in place."""
    if aligned and len(coords):
        bad = np.flatnonzero((coords[:, 2] < 0) | (coords[:, 3] < 0))
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"boxes row {row} has a negative width or height (aligned=True "
                             f"needs w, h >= 0, as detectron2): {coords[row].tolist()}")
    if degrees:  # detectron2: T theta = angle * M_PI / 180.0, computed in double
        coords[:, 4] = coords[:, 4].astype(np.float64) * np.pi / 180.0
    if clockwise:  # mmcv: theta = -theta
        np.negative(coords[:, 4], out=coords[:, 4])


def roi_align_rotated(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
                      spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
                      aligned: Bool = True, *, clockwise: Bool = False,
                      angle_unit: AngleUnit = "degrees", layout: Layout = "NCHW",
                      out: Optional[npt.NDArray[Any]] = None,
                      num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Pool a fixed-size feature map out of every rotated region of interest.

    The defaults give detectron2's ``ROIAlignRotated`` (angles in degrees,
    counter-clockwise, boxes shifted by -0.5 pixel); ``aligned=False, clockwise=True,
    angle_unit="radians"`` give mmcv's ``roi_align_rotated`` with the same arguments. Each
    output bin averages a ``grid_h x grid_w`` grid of bilinearly interpolated samples laid out
    in the box's own frame, rotated by the angle about the box's centre. With angle 0 the
    result is :func:`roi_align` (``aligned=True``) of the box
    ``[cx - w/2, cy - h/2, cx + w/2, cy + h/2]``, to float rounding.

    Parameters
    ----------
    input : ndarray, float16, float32 or float64
        Features, ``(N, C, H, W)`` for ``layout="NCHW"`` or ``(N, H, W, C)`` for
        ``layout="NHWC"``; a 3-D array is one image. Any strides and byte order; float16 is
        computed in float32.
    boxes : ndarray (K, 6) or list of N ndarrays (K_i, 5)
        Rotated regions in input-image pixels, rows ``[batch_index, cx, cy, w, h, angle]``;
        or one ``(K_i, 5)`` array ``[cx, cy, w, h, angle]`` per image, whose position in the
        list is the batch index; or ``(K, 5)`` when `input` is 3-D. Cast to the features'
        dtype. Every value must be finite; w and h must be >= 0 when `aligned`.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``; an int means square.
    spatial_scale : float, default 1.0
        Feature-map pixels per input-image pixel (1/stride).
    sampling_ratio : int, default -1
        Samples per bin along each axis; ``<= 0`` means adaptive: ``ceil(h * scale / PH)``
        along the box's height and ``ceil(w * scale / PW)`` along its width.
    aligned : bool, default True
        True shifts the centre by -0.5 pixel (pixel centres; detectron2 always does). False is
        mmcv's legacy mode: no shift, and boxes smaller than 1x1 are stretched to 1x1
        (negative sizes included).
    clockwise : bool, default False, keyword-only
        Whether a positive angle turns the box clockwise (mmcv's ``clockwise=True``) instead
        of counter-clockwise (detectron2).
    angle_unit : {"degrees", "radians"}, default "degrees", keyword-only
        Unit of the angle column: detectron2 takes degrees, mmcv radians.
    layout : {"NCHW", "NHWC"}, keyword-only
        Layout of `input` and of the result.
    out : ndarray, optional, keyword-only
        Array to write the result into (shape and dtype of the result, writeable, not
        overlapping the inputs).
    num_threads : int, optional, keyword-only
        OpenMP threads for this call. None uses OpenMP's default. Small calls run on one
        thread.

    Returns
    -------
    ndarray
        ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)`` for NHWC, the dtype of `input`
        (`out` itself when given).

    Raises
    ------
    TypeError
        An argument of the wrong kind.
    ValueError
        A bad value, naming the argument (and for boxes the row): wrong shape, NaN/inf box
        value, negative width or height with ``aligned=True``, batch index out of range,
        unknown angle_unit or layout, ...
    MemoryError
        The output or the per-thread scratch cannot be allocated.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_align_rotated
    >>> features = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 2.0, 2.0, 2.0, 2.0, 90.0]])
    >>> roi_align_rotated(features, boxes, output_size=2, sampling_ratio=1)
    array([[[[ 9.,  5.],
             [10.,  6.]]]], dtype=float32)
    """
    return forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, clockwise,
                   angle_unit, layout, out, num_threads)


def forward(input: npt.ArrayLike, boxes: npt.ArrayLike, output_size: OutputSize,
            spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1, aligned: Bool = True,
            clockwise: Bool = False, angle_unit: AngleUnit = "degrees", layout: Layout = "NCHW",
            out: Optional[npt.NDArray[Any]] = None, num_threads: Optional[SupportsIndex] = None,
            variant: Optional[str] = None, build: Optional[str] = None) -> npt.NDArray[Any]:
    """roi_align_rotated with the kernel variant ("per_roi", "packed") and build forced;
    None: roi_align's heuristic (_plan) and the build picked at import."""
    sampling_ratio, aligned, clockwise, degrees = _parameters(sampling_ratio, aligned,
                                                              clockwise, angle_unit)
    call = _args.forward_call(input, boxes, output_size, spatial_scale, layout, out, n_coords=5)
    _prepare_boxes(call.coords, aligned, clockwise, degrees)
    if call.kernel_out.size:
        plan = _plan.plan(call, num_threads, variant, grouped=False, locality=True)
        _plan.run(KERNELS, "forward", build, call, plan, (sampling_ratio, aligned, call.kernel_out),
                  "roi_align_rotated")
    return _args.deliver(call)


def roi_align_rotated_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                               input_shape: Sequence[SupportsIndex], output_size: OutputSize,
                               spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
                               aligned: Bool = True, *, clockwise: Bool = False,
                               angle_unit: AngleUnit = "degrees", layout: Layout = "NCHW",
                               out: Optional[npt.NDArray[Any]] = None,
                               num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Gradient of :func:`roi_align_rotated` with respect to its features.

    Equals detectron2's (and mmcv's) ``ROIAlignRotated`` backward: each sample sends
    ``grad * w_i / count`` to its 4 bilinear taps. The work is split by (image, channel
    block), so no two threads ever write the same element: results are bit-identical for any
    `num_threads`, without atomics.

    Parameters
    ----------
    grad_output : ndarray, float16, float32 or float64
        Gradient of the pooled output: ``(K, C, PH, PW)`` for NCHW, ``(K, PH, PW, C)`` for
        NHWC.
    boxes, output_size, spatial_scale, sampling_ratio, aligned, clockwise, angle_unit, layout
        Exactly as given to :func:`roi_align_rotated`.
    input_shape : tuple of int
        Shape of the features, ``(N, C, H, W)``/``(N, H, W, C)``, or 3-D for one image.
    out : ndarray, optional, keyword-only
        Array of shape `input_shape` to write the gradient into (overwritten, not added to).
    num_threads : int, optional, keyword-only
        As in :func:`roi_align_rotated`.

    Returns
    -------
    ndarray
        The gradient, of shape `input_shape` and the dtype of `grad_output`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`roi_align_rotated`; also when `grad_output` does not have the pooled
        shape.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import roi_align_rotated_backward
    >>> grad = np.ones((1, 1, 1, 1), dtype=np.float32)
    >>> boxes = np.array([[0, 1.5, 1.5, 2.0, 2.0, 0.0]])
    >>> roi_align_rotated_backward(grad, boxes, (1, 1, 3, 3), 1, sampling_ratio=2)[0, 0]
    array([[0.0625, 0.125 , 0.0625],
           [0.125 , 0.25  , 0.125 ],
           [0.0625, 0.125 , 0.0625]], dtype=float32)
    """
    return backward(grad_output, boxes, input_shape, output_size, spatial_scale, sampling_ratio,
                    aligned, clockwise, angle_unit, layout, out, num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike, input_shape: Sequence[SupportsIndex],
             output_size: OutputSize, spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
             aligned: Bool = True, clockwise: Bool = False, angle_unit: AngleUnit = "degrees",
             layout: Layout = "NCHW", out: Optional[npt.NDArray[Any]] = None,
             num_threads: Optional[SupportsIndex] = None, variant: Optional[str] = None,
             build: Optional[str] = None) -> npt.NDArray[Any]:
    """roi_align_rotated_backward with the kernel variant and build forced (see forward)."""
    sampling_ratio, aligned, clockwise, degrees = _parameters(sampling_ratio, aligned,
                                                              clockwise, angle_unit)
    call = _args.backward_call(grad_output, boxes, input_shape, output_size, spatial_scale,
                               layout, None, False, out, n_coords=5)
    _prepare_boxes(call.coords, aligned, clockwise, degrees)
    if call.values.size:
        plan = _plan.plan(call, num_threads, variant, grouped=True)
        _plan.run(KERNELS, "backward", build, call, plan,
                  (sampling_ratio, aligned, call.kernel_out), "roi_align_rotated_backward")
    return _args.deliver(call)


class RoIAlignRotated(Pooler):
    """:func:`roi_align_rotated` with its parameters fixed, like detectron2's
    ``ROIAlignRotated`` (and mmcv's ``RoIAlignRotated``).

    Parameters are validated once, here. Instances are called like the function, have a
    :meth:`backward`, compare equal when their parameters are equal, and pickle.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import RoIAlignRotated
    >>> pool = RoIAlignRotated(7, spatial_scale=1 / 16, sampling_ratio=2)
    >>> pool
    RoIAlignRotated(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, aligned=True, clockwise=False, angle_unit='degrees', layout='NCHW')
    >>> features = np.zeros((1, 8, 32, 32), dtype=np.float32)
    >>> pool(features, np.array([[0, 256.0, 256.0, 128.0, 64.0, 30.0]])).shape
    (1, 8, 7, 7)
    """

    _fields = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "clockwise",
               "angle_unit", "layout")
    output_size: Tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    clockwise: bool
    angle_unit: AngleUnit
    layout: Layout

    def __init__(self, output_size: OutputSize, spatial_scale: Real = 1.0,
                 sampling_ratio: SupportsIndex = -1, aligned: Bool = True, *,
                 clockwise: Bool = False, angle_unit: AngleUnit = "degrees",
                 layout: Layout = "NCHW") -> None:
        self.output_size = _args.check_output_size(output_size)
        self.spatial_scale = _args.check_spatial_scale(spatial_scale)
        self.sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
        self.aligned = _args.check_bool(aligned, "aligned")
        self.clockwise = _args.check_bool(clockwise, "clockwise")
        self.angle_unit = check_angle_unit(angle_unit)
        self.layout = _args.check_layout(layout)


    def __call__(self, input: npt.ArrayLike, boxes: npt.ArrayLike, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Forward: :func:`roi_align_rotated` of `input` over `boxes`."""
        return roi_align_rotated(input, boxes, **self._params(), out=out, num_threads=num_threads)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 input_shape: Sequence[SupportsIndex], *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Gradient w.r.t. the features: :func:`roi_align_rotated_backward`."""
        return roi_align_rotated_backward(grad_output, boxes, input_shape, **self._params(),
                                          out=out, num_threads=num_threads)
