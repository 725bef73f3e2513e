"""The one validation path: every public call is checked here, once, into a call record.

Each checker either returns the canonical form the kernels expect or raises a TypeError
(wrong kind of object) or ValueError (right kind, bad value) whose message names the argument.
Its first lines are the fast route for the usual form of its argument; forward_call and
backward_call take the same fast routes inline, so a usual call costs a handful of Python
calls. The records hold private views of every array the kernel reads or writes: shapes and
strides are read once, here, and nothing the caller does to its objects afterwards changes
what the kernel sees. The kernels trust these forms completely: C-contiguous in the layout,
native byte order, float32 or float64, boxes in the features' dtype, batch indices in [0, N).
"""

from __future__ import annotations

import math
import mmap
import numbers
import operator
import os
import sys
from typing import (Any, Callable, List, Literal, NamedTuple, NoReturn, Optional, SupportsIndex,
                    Tuple, Union)

import numpy as np
import numpy.typing as npt

from roialign_cy import _boxes

# What the public signatures accept (each checker takes any object and refuses the rest).
# Quoted where NumPy < 1.22 cannot subscript the class at run time. Unions of one-value
# Literals, not Literal["NCHW", "NHWC"]: mypy.stubtest reads that as a Union, which at run
# time it is not.
Layout = Union[Literal["NCHW"], Literal["NHWC"]]
Mode = Union[Literal["avg"], Literal["max"]]
Bool = Union[bool, np.bool_]
Real = Union[float, "np.floating[Any]", "np.integer[Any]"]
OutputSize = Union[SupportsIndex, Tuple[SupportsIndex, SupportsIndex], List[SupportsIndex]]

LAYOUTS: Tuple[Layout, ...] = ("NCHW", "NHWC")
MODES: Tuple[Mode, ...] = ("avg", "max")
_CHANNELS_LAST = {"NCHW": False, "NHWC": True}
MAX_MODE = {"avg": False, "max": True}  # mode -> max_mode
_new = tuple.__new__  # builds a record without a Python-level __new__ call
_INT32_MAX = 2**31 - 1
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_NDARRAY = np.ndarray  # the fast routes' tests, without an attribute lookup on np per call
_EMPTY = np.empty
_INT32 = np.dtype(np.int32)
# spatial_scale must lie in (_SCALE_LOW, _SCALE_HIGH] to stay finite and > 0 in float32.


def _scale_bounds(dtype: np.dtype[Any]) -> Tuple[float, float]:
    """(low, high): half the smallest subnormal and the largest finite value of dtype.

    nextafter(0, 1) rather than finfo.smallest_subnormal, which needs NumPy 1.22.
    """
    tiny = np.nextafter(dtype.type(0), dtype.type(1))
    return float(tiny) / 2, float(np.finfo(dtype).max)


_FLOAT32_SCALE_LOW, _FLOAT32_SCALE_HIGH = _scale_bounds(_FLOAT32)


def check_layout(layout: Any) -> Layout:
    """Return layout if it is "NCHW" or "NHWC"."""
    if type(layout) is not str or layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    # mypy 2 narrows a str by `in` to the Literal; mypy 1 (Python 3.9's) does not
    return layout  # type: ignore[return-value, unused-ignore]


def check_mode(mode: Any) -> Mode:
    """Return mode if it is "avg" or "max"."""
    if type(mode) is not str or mode not in MODES:
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    return mode  # type: ignore[return-value, unused-ignore]


def check_bool(value: Any, name: str) -> bool:
    """Return value as a bool: only bool and numpy.bool_ are accepted ('False' is truthy)."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_int(value: Any, name: str, minimum: Optional[int] = None) -> int:
    """Return value as a Python int (bools and floats refused), at least `minimum`."""
    if type(value) is int and (minimum is None or value >= minimum) and abs(value) <= _INT32_MAX:
        return value  # the common case, fast
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    if abs(result) > _INT32_MAX:
        raise ValueError(f"{name} must fit in 32 bits, got {result}")
    return result


def check_output_size(output_size: Any) -> Tuple[int, int]:
    """Return (PH, PW) from an int or a pair of ints, each >= 1."""
    if type(output_size) is int and 0 < output_size <= _INT32_MAX:  # the common cases, fast
        return output_size, output_size
    if type(output_size) is tuple and len(output_size) == 2:
        height, width = output_size
        if (type(height) is int and type(width) is int
                and 0 < height <= _INT32_MAX and 0 < width <= _INT32_MAX):
            return output_size
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"output_size must be an int or a pair (PH, PW), got {len(output_size)} values"
            )
        height, width = (check_int(v, "output_size", minimum=1) for v in output_size)
        return height, width
    size = check_int(output_size, "output_size", minimum=1)
    return size, size


def check_position_sensitive(channels: int, pooled: Tuple[int, int], name: str) -> int:
    """Return C_out = channels / (PH * PW) when the map's channels are a multiple of PH * PW
    (position-sensitive pooling: one input channel per output channel and bin)."""
    n_bins = pooled[0] * pooled[1]
    if channels % n_bins:
        raise ValueError(f"{name} has {channels} channels, which is not a multiple of "
                         f"output_size PH * PW = {pooled[0]} * {pooled[1]} = {n_bins} "
                         f"(position-sensitive pooling reads one channel per output bin)")
    return channels // n_bins


def check_scale_fits(scale: float, dtype: np.dtype[Any]) -> float:
    """Return scale if it stays finite and > 0 in the compute dtype (float32 can lose it)."""
    if dtype.itemsize < 8:
        if dtype is _FLOAT32:  # the common case: bounds computed once
            low, high = _FLOAT32_SCALE_LOW, _FLOAT32_SCALE_HIGH
        else:
            low, high = _scale_bounds(dtype)
        if not (low < scale <= high):
            raise ValueError(f"spatial_scale {scale!r} does not fit in {dtype.name}")
    return scale


def check_spatial_scale(spatial_scale: Any, name: str = "spatial_scale") -> float:
    """Return spatial_scale (or another positive real called `name`) as a float, finite
    and > 0."""
    if type(spatial_scale) is float and 0 < spatial_scale < math.inf:  # the common case, fast
        return spatial_scale
    if isinstance(spatial_scale, (bool, np.bool_)) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {spatial_scale!r}")
    try:
        scale = float(spatial_scale)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        raise ValueError(f"{name} must be finite and > 0, got an int beyond the float "
                         "range") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be finite and > 0, got {scale!r}")
    return scale


def compute_dtype(dtype: np.dtype[Any], name: str) -> np.dtype[Any]:
    """The dtype a float array of this dtype is computed in (float16 runs in float32)."""
    if dtype is _FLOAT32 or dtype is _FLOAT64:  # the common case, fast
        return dtype
    if dtype.kind != "f" or dtype.itemsize > 8:
        raise TypeError(f"{name} must be float16, float32 or float64, got {dtype}")
    return np.dtype(np.float32) if dtype.itemsize == 2 else np.dtype(dtype.type)


def check_features(array: Any, layout: str, name: str = "input",
                   canonical: bool = True) -> Tuple[npt.NDArray[Any], bool, np.dtype[Any]]:
    """Return (features as canonical 4-D, was_3d, result dtype) for a 3-D or 4-D float map.

    The array is copied only when it is not already C-contiguous, native-endian float32/64,
    and is otherwise returned as a private view (its shape cannot change under the kernel);
    canonical=False only checks (and returns a 4-D view, never a copy).
    """
    if type(array) is np.ndarray and array.ndim == 4:  # the common case: no conversion
        dtype = array.dtype
        if (dtype is _FLOAT32 or dtype is _FLOAT64) and (not canonical or array.flags.c_contiguous
                                                         and array.flags.aligned):
            shape = array.shape
            height, width = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
            if height and width:
                return array.view(), False, dtype
    features = np.asarray(array)
    dtype = features.dtype
    if dtype is _FLOAT32 or dtype is _FLOAT64:  # the common case: skip the slow checks
        result_dtype = dtype
    else:
        result_dtype = dtype.newbyteorder("=")
        dtype = compute_dtype(dtype, name)
    if features.ndim not in (3, 4):
        axes = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{name} must be 4-D {axes} or 3-D (one image), got shape {features.shape}")
    was_3d = features.ndim == 3
    if was_3d:
        features = features[np.newaxis]
    height, width = features.shape[1:3] if layout == "NHWC" else features.shape[2:4]
    if height == 0 or width == 0:
        raise ValueError(f"{name} has an empty feature map (H={height}, W={width})")
    if canonical:  # C-contiguous and aligned: the kernels read it through typed pointers
        features = np.require(features, dtype, ["C_CONTIGUOUS", "ALIGNED"])
    return (features.view() if features is array else features), was_3d, result_dtype


def _as_real_array(value: Any, name: str) -> npt.NDArray[np.float64]:
    """value as a C-contiguous, aligned float64 array, refusing complex, bool, non-numeric
    and ragged input."""
    try:
        array = np.asarray(value)
    except ValueError:  # NumPy's "inhomogeneous shape": a ragged nested list
        raise ValueError(f"{name} must be a rectangular array of numbers, got a ragged "
                         f"sequence") from None
    if array.dtype.kind not in "iuf":
        if array.dtype.kind == "O" and not isinstance(value, np.ndarray):
            # NumPy < 1.24 makes a ragged nested list an object array (with a warning)
            raise ValueError(f"{name} must be a rectangular array of numbers, got a ragged "
                             f"sequence")
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return np.require(array, np.float64, ["C_CONTIGUOUS", "ALIGNED"])


def _refuse_row(rows: npt.NDArray[Any], row: int, problem: int, n_images: int,
                dtype: np.dtype[Any], name: str) -> NoReturn:
    """Raise the ValueError naming bad box row `row` and what _boxes.split_rows found."""
    values = rows[row].tolist()
    if problem == _boxes.TOO_LARGE:
        raise ValueError(
            f"{name} row {row} does not fit in {dtype.name} (a coordinate is too large): {values}"
        )
    if problem == _boxes.INDEX_OUT_OF_RANGE:
        raise ValueError(
            f"{name} row {row}: batch index {values[0]:g} is outside [0, {n_images}) "
            f"for input with {n_images} image(s)"
        )
    if problem == _boxes.INDEX_NOT_INTEGER:
        raise ValueError(f"{name} row {row}: batch index {values[0]:g} is not an integer: {values}")
    raise ValueError(f"{name} row {row} has a NaN or infinite coordinate: {values}")


# The coordinates of a box row, by how many there are: axis-aligned or rotated boxes.
_ROW_NAMES = {4: "x1, y1, x2, y2", 5: "cx, cy, w, h, angle"}


def check_boxes(boxes: Any, n_images: int, was_3d: bool, dtype: np.dtype[Any],
                name: str = "boxes", n_coords: int = 4
                ) -> Tuple[npt.NDArray[np.intp], npt.NDArray[Any]]:
    """Return (batch_index intp (K,), coords dtype (K, n_coords) C-contiguous) from any box
    format.

    Accepted: an array (K, 1 + n_coords) of [batch_index, x1, y1, x2, y2] (n_coords 4) or
    [batch_index, cx, cy, w, h, angle] (5, rotated boxes); a list or tuple of N arrays
    (K_i, n_coords) whose position is the batch index; (K, n_coords) when the input was one
    3-D image.
    """
    width = n_coords + 1
    flags: Any = None
    if (type(boxes) is _NDARRAY and boxes.ndim == 2 and boxes.shape[1] == width
            and (boxes.dtype is _FLOAT32 or boxes.dtype is _FLOAT64)):
        flags = boxes.flags
    if flags is not None and flags.c_contiguous and flags.aligned:
        rows = boxes  # the usual form: read in place by split_rows
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) != n_images:
            raise ValueError(
                f"{name} as a list must hold one (K_i, {n_coords}) array per image: "
                f"got {len(boxes)} for {n_images} image(s)"
            )
        parts = []
        for i, per_image in enumerate(boxes):
            part = _as_real_array(per_image, f"{name}[{i}]")
            if part.ndim != 2 or part.shape[1] != n_coords:
                raise ValueError(f"{name}[{i}] must have shape (K_i, {n_coords}), got {part.shape}")
            parts.append(np.column_stack([np.full(len(part), float(i)), part]))
        rows = np.concatenate(parts) if parts else np.zeros((0, width))
    else:
        rows = _as_real_array(boxes, name)
        if was_3d and rows.ndim == 2 and rows.shape[1] == n_coords:
            rows = np.column_stack([np.zeros(len(rows)), rows])
        if rows.ndim != 2 or rows.shape[1] != width:
            expected = f"(K, {width}) or (K, {n_coords})" if was_3d else f"(K, {width})"
            raise ValueError(
                f"{name} must have shape {expected} [batch_index, {_ROW_NAMES[n_coords]}], "
                f"got {rows.shape}"
            )
    # Private arrays, written by the compiled check: the kernel never reads the caller's rows.
    batch_index, coords, row, problem = _boxes.split_rows(rows, n_images, dtype, n_coords)
    if row >= 0:
        _refuse_row(rows, row, problem, n_images, dtype, name)
    return batch_index, coords


def check_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype[Any],
              inputs: Tuple[Tuple[str, Any], ...],
              out_name: str = "out") -> Optional[npt.NDArray[Any]]:
    """Return a private view of a user-supplied output array, checked; None passes through."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{out_name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{out_name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"{out_name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{out_name} is read-only")
    span = _file_span(out)
    for name, value in inputs:
        if _shares_memory(out, span, value):
            raise ValueError(f"{out_name} overlaps an input ({name}): the kernel would "
                             f"overwrite what it reads")
    return out.view()


# (file identity (st_dev, st_ino), first byte, end byte) of a memory-mapped array.
_FileSpan = Tuple[Tuple[int, int], int, int]


def _shares_memory(out: npt.NDArray[Any], out_span: Optional[_FileSpan], value: Any) -> bool:
    """Whether `value` (an array, anything np.asarray reads in place: memoryviews, objects
    with __array_interface__, torch tensors..., or a list of such) may share memory with
    `out`, also through another mapping of the same file."""
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return any(_shares_memory(out, out_span, item) for item in value)
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception:  # not readable as an array: it fails its own check instead
            return False
    if np.may_share_memory(out, value):
        return True
    if out_span is None:
        return False
    span = _file_span(value)
    return (span is not None and span[0] == out_span[0] and span[1] < out_span[2]
            and out_span[1] < span[2])


def _file_span(array: Any) -> Optional[_FileSpan]:
    """(file identity, first byte, end byte) of the file an np.memmap-backed array maps, or
    None: two memmaps of one file are two buffers to NumPy, but one memory."""
    base = array
    while base is not None and getattr(base, "_mmap", None) is None:
        base = base.base if isinstance(base, np.ndarray) else None
    if base is None or not getattr(base, "filename", None):
        return None
    try:
        identity = os.stat(base.filename)
        mapped = np.frombuffer(base._mmap, np.uint8)
    except (OSError, ValueError, TypeError):  # file gone, or a closed map
        return None
    map_start = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY  # file byte of mapped[0]
    low, high = _byte_bounds(array)
    first = map_start + (low - mapped.__array_interface__["data"][0])
    return (identity.st_dev, identity.st_ino), first, first + (high - low)


# np.byte_bounds before NumPy 2, np.lib.array_utils.byte_bounds since (either one's stubs
# lack the other).
_byte_bounds: Callable[[npt.NDArray[Any]], Tuple[int, int]] = (
    getattr(np, "byte_bounds", None) or getattr(np.lib, "array_utils").byte_bounds)


def allocate(out: Optional[npt.NDArray[Any]], shape: Tuple[int, ...], compute: np.dtype[Any],
             zeroed: bool = False) -> npt.NDArray[Any]:
    """The array the kernel writes: `out` (a checked private view) itself when it is
    canonical, else a fresh array.

    zeroed: the kernel accumulates, so the array must start at 0.
    """
    if out is not None and out.dtype == compute and out.flags.c_contiguous:
        if zeroed:
            out.fill(0)
        return out
    if math.prod(shape) * compute.itemsize > sys.maxsize:
        raise MemoryError(f"the result of shape {tuple(shape)} cannot be allocated: too large")
    return np.zeros(shape, dtype=compute) if zeroed else np.empty(shape, dtype=compute)


def deliver(call: Call) -> npt.NDArray[Any]:
    """The result of a call (ForwardCall or BackwardCall) once its kernel ran: the caller's
    `out` (written through its private view unless the kernel wrote it in place), else the
    kernel's array in the result dtype."""
    result = call.result
    if call.out is None:
        return result if result.dtype == call.result_dtype else result.astype(call.result_dtype)
    if call.out_view is not result:
        np.copyto(call.out_view, result, casting="unsafe")  # type: ignore[arg-type]  # set with out
    return call.out


def check_input_shape(input_shape: Any, layout: str) -> Tuple[Tuple[int, ...], bool]:
    """Return the features' shape as a 4-D tuple, and whether it was 3-D (one image)."""
    if type(input_shape) is tuple and len(input_shape) == 4:  # the common case, fast
        n, d1, d2, d3 = input_shape
        if type(n) is type(d1) is type(d2) is type(d3) is int:
            height, width = (d1, d2) if layout == "NHWC" else (d2, d3)
            if height and width and min(input_shape) >= 0 and max(input_shape) <= _INT32_MAX:
                return input_shape, False
    try:
        shape = tuple(check_int(n, "input_shape", minimum=0) for n in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if len(shape) not in (3, 4):
        raise ValueError(f"input_shape must have 3 or 4 dimensions, got {shape}")
    was_3d = len(shape) == 3
    shape = (1,) + shape if was_3d else shape
    height, width = shape[1:3] if layout == "NHWC" else shape[2:4]
    if height == 0 or width == 0:
        raise ValueError(f"input_shape has an empty feature map (H={height}, W={width})")
    return shape, was_3d


def check_grad_output(grad_output: Any,
                      shape: Tuple[int, ...]) -> Tuple[npt.NDArray[Any], np.dtype[Any]]:
    """Return (grad_output canonical, result dtype), checking it has the pooled `shape`."""
    if type(grad_output) is np.ndarray:  # the common case: no conversion
        dtype = grad_output.dtype
        if ((dtype is _FLOAT32 or dtype is _FLOAT64) and grad_output.flags.c_contiguous
                and grad_output.flags.aligned and grad_output.shape == shape):
            return grad_output.view(), dtype
    grad = np.asarray(grad_output)
    result_dtype = grad.dtype.newbyteorder("=")
    dtype = compute_dtype(grad.dtype, "grad_output")
    if grad.shape != tuple(shape):
        raise ValueError(f"grad_output must have shape {tuple(shape)}, got {grad.shape}")
    grad = np.require(grad, dtype, ["C_CONTIGUOUS", "ALIGNED"])
    return (grad.view() if grad is grad_output else grad), result_dtype


def check_matching_input(input: Any, shape: Tuple[int, ...], dtype: np.dtype[Any],
                         name: str = "input") -> npt.NDArray[Any]:
    """Return `input` (the forward's features, which the kernel reads) as canonical `dtype`
    of the 4-D `shape` (a 3-D `input` only for one image)."""
    if input is None:
        raise ValueError(f"{name} is required: max pooling's gradient needs the features")
    if (type(input) is np.ndarray and input.dtype is dtype and input.shape == shape
            and input.flags.c_contiguous and input.flags.aligned):
        return input.view()  # the common case: already canonical
    features = np.asarray(input)
    compute_dtype(features.dtype, name)
    if features.shape != shape and not (shape[0] == 1 and features.shape == shape[1:]):
        raise ValueError(f"{name} must have shape {shape}, got {features.shape}")
    features = np.require(features.reshape(shape), dtype, ["C_CONTIGUOUS", "ALIGNED"])
    return features.view() if features is input else features


def check_argmax_fits(n_pixels: int, name: str) -> None:
    """Arg-max indices are int32, as torchvision's: refuse a map they cannot index."""
    if n_pixels > _INT32_MAX:
        raise ValueError(f"{name}: arg-max indices are int32 (as torchvision's), so the "
                         f"feature map may have at most {_INT32_MAX} pixels, got {n_pixels}")


def check_argmax(argmax: Any, grad_shape: Tuple[int, ...],
                 n_pixels: int) -> npt.NDArray[np.int32]:
    """Return roi_pool's arg-max indices as C-contiguous int32 of grad_shape, each checked to
    lie in [-1, n_pixels): the backward writes where they point (and checks each again
    where it uses it, since the caller can still change them)."""
    check_argmax_fits(n_pixels, "argmax")
    if (type(argmax) is np.ndarray and argmax.dtype is _INT32 and argmax.flags.c_contiguous
            and argmax.flags.aligned and argmax.shape == grad_shape
            and (not argmax.size or _boxes.all_within(argmax, -1, n_pixels))):
        return argmax.view()  # the usual form: roi_pool's own result, checked in one pass
    indices = np.asarray(argmax)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"argmax must hold integers (the second result of roi_pool(..., "
                        f"return_argmax=True)), got dtype {indices.dtype}")
    if indices.shape != tuple(grad_shape):
        raise ValueError(f"argmax must have grad_output's shape {tuple(grad_shape)}, "
                         f"got {indices.shape}")
    if indices.size:
        low, high = indices.min(), indices.max()
        if low < -1 or high >= n_pixels:
            bad = low if low < -1 else high
            raise ValueError(f"argmax holds {bad}, outside [-1, {n_pixels}): indices are "
                             f"y * W + x within a feature map of {n_pixels} pixels, or -1")
    indices = np.require(indices, np.int32, ["C_CONTIGUOUS", "ALIGNED"])
    return indices.view() if indices is argmax else indices


# ---- The call records ----------------------------------------------------------------------


class ForwardCall(NamedTuple):
    """One checked forward call (roi_align, roi_pool): private views, shapes read once."""

    values: npt.NDArray[Any]         # the features, (N, C, H, W) or (N, H, W, C), canonical
    channels_last: bool
    map_shape: Tuple[int, int, int, int]  # values.shape
    batch_index: npt.NDArray[np.intp]  # (K,), each in [0, N)
    coords: npt.NDArray[Any]         # (K, 4) x1, y1, x2, y2 (rotated: (K, 5)), features' dtype
    spatial_scale: float
    pooled: Tuple[int, int]          # (PH, PW)
    kernel_out: npt.NDArray[Any]     # what the kernel writes, (K, C, PH, PW) or (K, PH, PW, C)
    result: npt.NDArray[Any]         # the same array, as delivered
    out: Optional[npt.NDArray[Any]]  # the caller's out=, returned as the result ...
    out_view: Optional[npt.NDArray[Any]]  # ... and written through this private view of it
    result_dtype: np.dtype[Any]


class BackwardCall(NamedTuple):
    """One checked backward call: private views, shapes read once."""

    values: npt.NDArray[Any]         # grad_output, (K, C, PH, PW) or (K, PH, PW, C), canonical
    channels_last: bool
    map_shape: Tuple[int, int, int, int]  # the features' shape, 4-D
    batch_index: npt.NDArray[np.intp]
    coords: npt.NDArray[Any]
    spatial_scale: float
    pooled: Tuple[int, int]
    features: Optional[npt.NDArray[Any]]  # the forward's features, when the kernel reads them
    argmax: Optional[npt.NDArray[np.int32]]  # roi_pool's arg-max indices (private), or None
    kernel_out: npt.NDArray[Any]     # the gradient the kernel accumulates into (zeroed), 4-D
    result: npt.NDArray[Any]         # the same memory in input_shape (3-D for one image)
    out: Optional[npt.NDArray[Any]]
    out_view: Optional[npt.NDArray[Any]]
    result_dtype: np.dtype[Any]


# The single-map call records (the multi-level ones, below, share the fields _plan.run reads).
Call = Union[ForwardCall, BackwardCall]


def forward_call(input: Any, boxes: Any, output_size: Any, spatial_scale: Any, layout: Any,
                 out: Any, position_sensitive: bool = False, n_coords: int = 4) -> ForwardCall:
    """Check a forward call (roi_align, roi_pool, ...) into a ForwardCall.

    Each argument's usual form takes its checker's fast route inline; any other form goes
    through the checker, which converts it or raises naming the argument.
    position_sensitive: the map's C channels must be a multiple of PH * PW and the result
    has C / (PH * PW) channels (ps_roi_align, ps_roi_pool). n_coords: coordinates per box
    row (5 for rotated boxes, see check_boxes).
    """
    channels_last = _CHANNELS_LAST.get(layout) if type(layout) is str else None
    if channels_last is None:
        check_layout(layout)
    dtype: Any = input.dtype if type(input) is _NDARRAY and input.ndim == 4 else None
    flags: Any = input.flags if dtype is not None else None  # read only when dtype is not None
    features = None
    if (dtype is _FLOAT32 or dtype is _FLOAT64) and flags.c_contiguous and flags.aligned:
        features = input.view()  # check_features' fast route: a private view ...
        map_shape = features.shape  # ... whose shape cannot change under the kernel
        if not (map_shape[1] and map_shape[2] if channels_last else map_shape[2] and map_shape[3]):
            features = None  # an empty map: check_features raises
    if features is None:
        features, was_3d, result_dtype = check_features(input, layout)
        dtype = features.dtype
        map_shape = features.shape
    else:
        was_3d, result_dtype = False, dtype
    if type(output_size) is int and 0 < output_size <= _INT32_MAX:
        pooled = (output_size, output_size)
    else:
        pooled = check_output_size(output_size)
    if not (type(spatial_scale) is float and 0 < spatial_scale < math.inf):
        spatial_scale = check_spatial_scale(spatial_scale)
    batch_index, coords = check_boxes(boxes, map_shape[0], was_3d, dtype, "boxes", n_coords)
    if dtype is _FLOAT32 and not _FLOAT32_SCALE_LOW < spatial_scale <= _FLOAT32_SCALE_HIGH:
        check_scale_fits(spatial_scale, dtype)
    n_rois, channels = len(coords), map_shape[3] if channels_last else map_shape[1]
    if position_sensitive:
        channels = check_position_sensitive(channels, pooled, "input")
    ph, pw = pooled
    shape = (n_rois, ph, pw, channels) if channels_last else (n_rois, channels, ph, pw)
    if out is None and n_rois * channels * ph * pw * dtype.itemsize <= sys.maxsize:
        result, out_view = _EMPTY(shape, dtype), None
    elif out is None:
        result, out_view = allocate(None, shape, dtype), None  # MemoryError
    else:
        out_view = check_out(out, shape, result_dtype, (("input", input), ("boxes", boxes)))
        result = allocate(out_view, shape, dtype)
    return _new(ForwardCall, (features, channels_last, map_shape, batch_index, coords,
                              spatial_scale, pooled, result, result, out, out_view,
                              result_dtype))


def backward_call(grad_output: Any, boxes: Any, input_shape: Any, output_size: Any,
                  spatial_scale: Any, layout: Any, input: Any, needs_input: bool, out: Any,
                  argmax: Any = None, position_sensitive: bool = False,
                  n_coords: int = 4) -> BackwardCall:
    """Check a backward call into a BackwardCall (see forward_call).

    needs_input: the kernel reads the forward's features (`input`), which must then match
    input_shape. argmax: roi_pool's arg-max indices, or None. position_sensitive: as in
    forward_call, for input_shape's channels; n_coords as in forward_call. Every argument is
    checked, and `out` checked not to overlap any of them, before `out` is written (zeroed).
    """
    channels_last = _CHANNELS_LAST.get(layout) if type(layout) is str else None
    if channels_last is None:
        check_layout(layout)
    map_shape, was_3d = check_input_shape(input_shape, layout)
    if type(output_size) is int and 0 < output_size <= _INT32_MAX:
        pooled = (output_size, output_size)
    else:
        pooled = check_output_size(output_size)
    if not (type(spatial_scale) is float and 0 < spatial_scale < math.inf):
        spatial_scale = check_spatial_scale(spatial_scale)
    dtype = grad_output.dtype if type(grad_output) is np.ndarray else None
    if not (dtype is _FLOAT32 or dtype is _FLOAT64):
        grad_output = np.asarray(grad_output)
        dtype = compute_dtype(grad_output.dtype, "grad_output")
    batch_index, coords = check_boxes(boxes, map_shape[0], was_3d, dtype, "boxes", n_coords)
    if dtype is _FLOAT32 and not _FLOAT32_SCALE_LOW < spatial_scale <= _FLOAT32_SCALE_HIGH:
        check_scale_fits(spatial_scale, dtype)
    n_rois, channels = len(coords), map_shape[3] if channels_last else map_shape[1]
    if position_sensitive:
        channels = check_position_sensitive(channels, pooled, "input_shape")
    ph, pw = pooled
    grad, result_dtype = check_grad_output(
        grad_output, (n_rois, ph, pw, channels) if channels_last else (n_rois, channels, ph, pw))
    features = check_matching_input(input, map_shape, dtype) if needs_input else None
    indices = None
    if argmax is not None:
        indices = check_argmax(argmax, grad.shape,
                               map_shape[1] * map_shape[2] if channels_last
                               else map_shape[2] * map_shape[3])
    user_shape = map_shape[1:] if was_3d else map_shape
    if out is None and math.prod(map_shape) * dtype.itemsize <= sys.maxsize:
        result, out_view = np.zeros(user_shape, dtype), None
    elif out is None:
        result, out_view = allocate(None, user_shape, dtype, zeroed=True), None  # MemoryError
    else:
        out_view = check_out(out, user_shape, result_dtype,
                             (("grad_output", grad_output), ("boxes", boxes), ("input", input),
                              ("argmax", argmax)))
        result = allocate(out_view, user_shape, dtype, zeroed=True)
    kernel_out = result.reshape(map_shape) if was_3d else result
    return _new(BackwardCall, (grad, channels_last, map_shape, batch_index, coords, spatial_scale,
                               pooled, features, indices, kernel_out, result, out, out_view,
                               result_dtype))


# ---- Multi-level (feature pyramid) calls ---------------------------------------------------


def check_levels(features: Any, featmap_names: Any, layout: str
                 ) -> Tuple[Tuple[npt.NDArray[Any], ...], Tuple[Any, ...], np.dtype[Any]]:
    """Return (levels canonical 4-D, the caller's level objects, result dtype) of a pyramid.

    features: a sequence of per-level maps, finest first, or a dict (an OrderedDict) of them
    with featmap_names saying which, taken in the dict's order (as torchvision's
    MultiScaleRoIAlign does). Every level must have the same N, C and dtype.
    """
    if isinstance(features, dict):
        if featmap_names is None:
            raise ValueError("featmap_names is required when features is a dict: the names "
                             "of the levels to pool from")
        if isinstance(featmap_names, str) or not isinstance(featmap_names, (list, tuple)):
            raise TypeError(f"featmap_names must be a list of str, got {featmap_names!r}")
        names = list(featmap_names)
        if not names:
            raise ValueError("featmap_names must name at least one level")
        if len(set(names)) != len(names):
            raise ValueError(f"featmap_names has a repeated name: {names}")
        missing = [name for name in names if name not in features]
        if missing:
            raise ValueError(f"featmap_names {missing} are not keys of features "
                             f"(keys: {list(features)})")
        keys = [key for key in features if key in names]
        labels = [f"features[{key!r}]" for key in keys]
        given = tuple(features[key] for key in keys)
    elif isinstance(features, (list, tuple)):
        if featmap_names is not None:
            raise ValueError("featmap_names is only used when features is a dict")
        if not features:
            raise ValueError("features must hold at least one level")
        labels = [f"features[{i}]" for i in range(len(features))]
        given = tuple(features)
    else:
        raise TypeError(f"features must be a list of per-level arrays (finest first) or a "
                        f"dict of them, got {type(features).__name__}")
    levels: List[npt.NDArray[Any]] = []
    result_dtype: Optional[np.dtype[Any]] = None
    for label, level in zip(labels, given):
        array, was_3d, level_dtype = check_features(level, layout, label)
        if was_3d:
            axes = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
            raise ValueError(f"{label} must be 4-D {axes}, got shape {np.shape(level)}")
        if levels:
            first = levels[0]
            if level_dtype != result_dtype:
                raise ValueError(f"{label} has dtype {level_dtype}, {labels[0]} has "
                                 f"{result_dtype}: every level must have one dtype")
            channel_axis = 3 if layout == "NHWC" else 1
            if array.shape[0] != first.shape[0] or (array.shape[channel_axis]
                                                    != first.shape[channel_axis]):
                raise ValueError(f"{label} has shape {array.shape}, {labels[0]} has "
                                 f"{first.shape}: every level must have the same N and C")
        result_dtype = level_dtype
        levels.append(array)
    assert result_dtype is not None
    return tuple(levels), given, result_dtype


def check_level_shapes(level_shapes: Any, layout: str) -> Tuple[Tuple[int, int, int, int], ...]:
    """Return the per-level feature shapes of a pyramid (4-D each, same N and C)."""
    if isinstance(level_shapes, dict):
        level_shapes = list(level_shapes.values())
    if not isinstance(level_shapes, (list, tuple)) or not level_shapes or not all(
            isinstance(shape, (list, tuple)) for shape in level_shapes):
        raise TypeError(f"level_shapes must be a list of per-level shapes (N, C, H, W), "
                        f"got {level_shapes!r}")
    shapes: List[Tuple[int, ...]] = []
    for i, shape in enumerate(level_shapes):
        try:
            checked, was_3d = check_input_shape(tuple(shape), layout)
        except (TypeError, ValueError) as error:
            raise type(error)(str(error).replace("input_shape", f"level_shapes[{i}]")) from None
        if was_3d:
            raise ValueError(f"level_shapes[{i}] must have 4 dimensions, got {tuple(shape)}")
        channel_axis = 3 if layout == "NHWC" else 1
        if shapes and (checked[0] != shapes[0][0]
                       or checked[channel_axis] != shapes[0][channel_axis]):
            raise ValueError(f"level_shapes[{i}] is {checked}, level_shapes[0] is "
                             f"{shapes[0]}: every level must have the same N and C")
        shapes.append(checked)
    return tuple(shapes)  # type: ignore[arg-type]


def level_heights(shapes: Any, layout: str) -> List[int]:
    """Each level's map height."""
    return [shape[1] if layout == "NHWC" else shape[2] for shape in shapes]


class LevelForwardCall(NamedTuple):
    """One checked multi-level forward call: private views, shapes read once. The fields
    _plan reads are those of ForwardCall; values and map_shape are the finest level's."""

    values: npt.NDArray[Any]         # levels[0]
    channels_last: bool
    map_shape: Tuple[int, int, int, int]
    batch_index: npt.NDArray[np.intp]
    coords: npt.NDArray[Any]
    spatial_scale: float             # unused (1.0): each level has its own, in scales
    pooled: Tuple[int, int]
    kernel_out: npt.NDArray[Any]
    result: npt.NDArray[Any]
    out: Optional[npt.NDArray[Any]]
    out_view: Optional[npt.NDArray[Any]]
    result_dtype: np.dtype[Any]
    levels: Tuple[npt.NDArray[Any], ...]  # every level, canonical, one dtype
    level_shapes: Tuple[Tuple[int, int, int, int], ...]


class LevelBackwardCall(NamedTuple):
    """One checked multi-level backward call: the gradient arrays of every level."""

    values: npt.NDArray[Any]         # grad_output, canonical
    channels_last: bool
    map_shape: Tuple[int, int, int, int]  # the finest level's shape
    batch_index: npt.NDArray[np.intp]
    coords: npt.NDArray[Any]
    spatial_scale: float
    pooled: Tuple[int, int]
    kernel_outs: Tuple[npt.NDArray[Any], ...]  # what the kernel accumulates into (zeroed)
    outs: Optional[Tuple[npt.NDArray[Any], ...]]  # the caller's out= arrays ...
    out_views: Optional[Tuple[npt.NDArray[Any], ...]]  # ... and private views of them
    result_dtype: np.dtype[Any]
    level_shapes: Tuple[Tuple[int, int, int, int], ...]


def level_forward_call(features: Any, featmap_names: Any, boxes: Any, output_size: Any,
                       layout: Any, out: Any) -> LevelForwardCall:
    """Check a multi-level forward call into a LevelForwardCall (see forward_call)."""
    channels_last = _CHANNELS_LAST.get(layout) if type(layout) is str else None
    if channels_last is None:
        channels_last = _CHANNELS_LAST[check_layout(layout)]
    levels, given, result_dtype = check_levels(features, featmap_names, layout)
    pooled = check_output_size(output_size)
    dtype = levels[0].dtype
    map_shape = levels[0].shape
    batch_index, coords = check_boxes(boxes, map_shape[0], False, dtype)
    n_rois, channels = len(coords), map_shape[3] if channels_last else map_shape[1]
    ph, pw = pooled
    shape = (n_rois, ph, pw, channels) if channels_last else (n_rois, channels, ph, pw)
    out_view = check_out(out, shape, result_dtype, (("features", list(given)), ("boxes", boxes)))
    result = allocate(out_view, shape, dtype)
    return LevelForwardCall(levels[0], channels_last, map_shape, batch_index, coords, 1.0,
                            pooled, result, result, out, out_view, result_dtype, levels,
                            tuple(level.shape for level in levels))


def level_backward_call(grad_output: Any, boxes: Any, level_shapes: Any, output_size: Any,
                        layout: Any, out: Any) -> LevelBackwardCall:
    """Check a multi-level backward call into a LevelBackwardCall (see backward_call).

    out: None or one array per level (each checked as roi_align_backward's out, and not
    overlapping another). Every argument is checked before any out is written (zeroed).
    """
    channels_last = _CHANNELS_LAST.get(layout) if type(layout) is str else None
    if channels_last is None:
        channels_last = _CHANNELS_LAST[check_layout(layout)]
    shapes = check_level_shapes(level_shapes, layout)
    pooled = check_output_size(output_size)
    grad = np.asarray(grad_output) if type(grad_output) is not np.ndarray else grad_output
    dtype = compute_dtype(grad.dtype, "grad_output")
    map_shape = shapes[0]
    batch_index, coords = check_boxes(boxes, map_shape[0], False, dtype)
    n_rois, channels = len(coords), map_shape[3] if channels_last else map_shape[1]
    ph, pw = pooled
    grad, result_dtype = check_grad_output(
        grad_output, (n_rois, ph, pw, channels) if channels_last else (n_rois, channels, ph, pw))
    for shape in shapes:
        if math.prod(shape) * dtype.itemsize > sys.maxsize:
            raise MemoryError(f"the gradient of shape {shape} cannot be allocated: too large")
    if out is None:
        kernel_outs = tuple(allocate(None, shape, dtype, zeroed=True) for shape in shapes)
        return LevelBackwardCall(grad, channels_last, map_shape, batch_index, coords, 1.0,
                                 pooled, kernel_outs, None, None, result_dtype, shapes)
    if isinstance(out, np.ndarray) or not isinstance(out, (list, tuple)):
        raise TypeError(f"out must be a list of arrays, one per level, got "
                        f"{type(out).__name__}")
    if len(out) != len(shapes):
        raise ValueError(f"out must hold one array per level: got {len(out)} for "
                         f"{len(shapes)} level(s)")
    views = []
    for i, (array, shape) in enumerate(zip(out, shapes)):
        view = check_out(array, shape, result_dtype,
                         (("grad_output", grad_output), ("boxes", boxes)), f"out[{i}]")
        assert view is not None
        for j in range(i):
            if np.may_share_memory(view, out[j]):
                raise ValueError(f"out[{i}] overlaps out[{j}]: each level needs its own array")
        views.append(view)
    kernel_outs = tuple(allocate(view, shape, dtype, zeroed=True)
                        for view, shape in zip(views, shapes))
    return LevelBackwardCall(grad, channels_last, map_shape, batch_index, coords, 1.0, pooled,
                             kernel_outs, tuple(out), tuple(views), result_dtype, shapes)


def deliver_levels(call: LevelBackwardCall) -> List[npt.NDArray[Any]]:
    """The per-level gradients of a multi-level backward call once its kernel ran."""
    if call.outs is None or call.out_views is None:
        return [result if result.dtype == call.result_dtype else result.astype(call.result_dtype)
                for result in call.kernel_outs]
    for view, result in zip(call.out_views, call.kernel_outs):
        if view is not result:
            np.copyto(view, result, casting="unsafe")
    return list(call.outs)
