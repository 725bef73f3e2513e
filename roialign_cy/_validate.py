"""Argument checking and conversion shared by every public function.

Each checker either returns the canonical form the kernels expect or raises a TypeError
(wrong kind of object) or ValueError (right kind, bad value) whose message names the argument.
The kernels trust these forms completely: C-contiguous in the layout, native byte order,
float32 or float64, boxes in the features' dtype, batch indices inside [0, N).
"""

import math
import numbers
import operator
import os
import sys
import threading

import numpy as np

from roialign_cy import _boxes, _kernels

LAYOUTS = ("NCHW", "NHWC")
MODES = ("avg", "max")
_INT32_MAX = 2**31 - 1
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
# Below this many (RoI x channel x bin) outputs a call runs on one thread: waking a thread
# team costs more than it saves.
_SERIAL_WORK = 1 << 14
# Channel blocks (_blocks.pxd) hold a multiple of BLOCK_QUANTUM channels (one 64-byte line
# of float32) and, when the map allows, about BLOCK_BYTES: a core's share of the caches.
BLOCK_QUANTUM = 16
BLOCK_BYTES = 2 << 20


def check_layout(layout):
    """Return layout if it is "NCHW" or "NHWC"."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def check_mode(mode):
    """Return mode if it is "avg" or "max"."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    return mode


def check_int(value, name, minimum=None):
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


def check_output_size(output_size):
    """Return (PH, PW) from an int or a pair of ints, each >= 1."""
    if type(output_size) is int and 0 < output_size <= _INT32_MAX:  # the common case, fast
        return output_size, output_size
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"output_size must be an int or a pair (PH, PW), got {len(output_size)} values"
            )
        return tuple(check_int(v, "output_size", minimum=1) for v in output_size)
    size = check_int(output_size, "output_size", minimum=1)
    return size, size


def check_spatial_scale(spatial_scale):
    """Return spatial_scale as a float, finite and > 0."""
    if type(spatial_scale) is float and 0 < spatial_scale < math.inf:  # the common case, fast
        return spatial_scale
    if isinstance(spatial_scale, (bool, np.bool_)) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale must be a real number, got {spatial_scale!r}")
    scale = float(spatial_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"spatial_scale must be finite and > 0, got {scale!r}")
    return scale


def compute_dtype(dtype, name):
    """The dtype a float array of this dtype is computed in (float16 runs in float32)."""
    if dtype.kind != "f" or dtype.itemsize > 8:
        raise TypeError(f"{name} must be float16, float32 or float64, got {dtype}")
    return np.dtype(np.float32) if dtype.itemsize == 2 else np.dtype(dtype.type)


def check_features(array, layout, name="input"):
    """Return (features as canonical 4-D, was_3d, result dtype) for a 3-D or 4-D float map.

    The array is copied only when it is not already C-contiguous, native-endian float32/64.
    """
    features = np.asarray(array)
    dtype = features.dtype
    if dtype is _FLOAT32 or dtype is _FLOAT64:  # the common case: skip the slow checks
        result_dtype = dtype
    else:
        result_dtype = dtype.newbyteorder("=")
        dtype = compute_dtype(dtype, name)
    if features.ndim not in (3, 4):
        shape = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{name} must be 4-D {shape} or 3-D (one image), got shape {features.shape}")
    was_3d = features.ndim == 3
    if was_3d:
        features = features[np.newaxis]
    height, width = features.shape[1:3] if layout == "NHWC" else features.shape[2:4]
    if height == 0 or width == 0:
        raise ValueError(f"{name} has an empty feature map (H={height}, W={width})")
    return np.ascontiguousarray(features, dtype=dtype), was_3d, result_dtype


def _as_real_array(value, name):
    """value as a C-contiguous float64 array, refusing complex, bool and non-numeric input."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def _split_rows(rows, n_images, dtype, name):
    """(batch_index, coords) from valid (K, 5) float64 rows; raise naming the first bad row."""
    batch_index = np.empty(len(rows), dtype=np.intp)
    coords = np.empty((len(rows), 4), dtype=dtype)
    row, problem = _boxes.split_rows(rows, n_images, batch_index, coords)
    if row < 0:
        return batch_index, coords
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


def check_boxes(boxes, n_images, was_3d, dtype, name="boxes"):
    """Return (batch_index intp (K,), coords dtype (K, 4) C-contiguous) from any box format.

    Accepted: an array (K, 5) of [batch_index, x1, y1, x2, y2]; a list or tuple of N arrays
    (K_i, 4) whose position is the batch index; (K, 4) when the input was one 3-D image.
    """
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != n_images:
            raise ValueError(
                f"{name} as a list must hold one (K_i, 4) array per image: "
                f"got {len(boxes)} for {n_images} image(s)"
            )
        parts = []
        for i, per_image in enumerate(boxes):
            part = _as_real_array(per_image, f"{name}[{i}]")
            if part.ndim != 2 or part.shape[1] != 4:
                raise ValueError(f"{name}[{i}] must have shape (K_i, 4), got {part.shape}")
            parts.append(np.column_stack([np.full(len(part), float(i)), part]))
        rows = np.concatenate(parts) if parts else np.zeros((0, 5))
    else:
        rows = _as_real_array(boxes, name)
        if was_3d and rows.ndim == 2 and rows.shape[1] == 4:
            rows = np.column_stack([np.zeros(len(rows)), rows])
        if rows.ndim != 2 or rows.shape[1] != 5:
            expected = "(K, 5) or (K, 4)" if was_3d else "(K, 5)"
            raise ValueError(
                f"{name} must have shape {expected} [batch_index, x1, y1, x2, y2], got {rows.shape}"
            )
    return _split_rows(rows, n_images, dtype, name)


class _ThreadState:
    """Whether this process started an OpenMP team, and whether it is a fork of one that did.

    GNU libgomp's thread pool does not survive fork(): a child that starts a team after its
    parent did hangs. Such children run every call on one thread instead.
    """

    team_started = False
    forked_after_team = False


def _after_fork_in_child():
    """os.register_at_fork hook: a child of a process with a live team must stay serial."""
    _ThreadState.forked_after_team = _ThreadState.team_started


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ThreadTeam:
    """Context manager giving one kernel call its OpenMP team size.

    Calls with num_threads=None that run at the same time from several Python threads share
    OpenMP's default size between them instead of each starting a full team (which would
    oversubscribe the cores: 8 pool threads x 16 OpenMP threads on 16 cores). An explicit
    num_threads is used as given. Results do not depend on the team size.
    """

    _lock = threading.Lock()
    _active = 0  # default-sized multi-threaded calls running right now

    __slots__ = ("n_threads", "shared")

    def __init__(self, n_threads, shared):
        self.n_threads = n_threads
        self.shared = shared and n_threads > 1

    def __enter__(self):
        if not self.shared:
            return self.n_threads
        with ThreadTeam._lock:
            ThreadTeam._active += 1
            active = ThreadTeam._active
        return max(1, self.n_threads // active)

    def __exit__(self, *exc_info):
        if self.shared:
            with ThreadTeam._lock:
                ThreadTeam._active -= 1


def check_num_threads(num_threads, work):
    """The thread count for a call of `work` output elements: None means OpenMP's default.

    Capped by the work (tiny calls run on one thread) and 1 in a serial build or in a
    process forked after this one started a thread team.
    """
    if num_threads is None:
        requested = _kernels.openmp_max_threads()
    else:
        requested = check_int(num_threads, "num_threads", minimum=1)
    if work < _SERIAL_WORK or not _kernels.OPENMP_ENABLED or _ThreadState.forked_after_team:
        return 1
    n_threads = max(1, min(requested, work // _SERIAL_WORK))
    if n_threads > 1:
        _ThreadState.team_started = True
    return n_threads


def check_out(out, shape, dtype, inputs):
    """Validate a user-supplied output array; None passes through."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for array in inputs:
        if isinstance(array, np.ndarray) and np.may_share_memory(out, array):
            raise ValueError("out overlaps an input array")
    return out


def kernel_out(out, shape, compute, zeroed=False):
    """The array the kernel writes: `out` itself when it is canonical, else a fresh array.

    zeroed: the kernel accumulates, so the array must start at 0.
    """
    if out is not None and out.dtype == compute and out.flags.c_contiguous:
        if zeroed:
            out.fill(0)
        return out
    if math.prod(shape) * compute.itemsize > sys.maxsize:
        raise MemoryError(f"the result of shape {tuple(shape)} cannot be allocated: too large")
    return np.zeros(shape, dtype=compute) if zeroed else np.empty(shape, dtype=compute)


def deliver(result, out, result_dtype):
    """Copy the kernel's result into `out` (if it was not written in place) and return it."""
    if out is None:
        out = result if result.dtype == result_dtype else result.astype(result_dtype)
    elif out is not result:
        np.copyto(out, result, casting="unsafe")
    return out


def check_input_shape(input_shape, layout):
    """Return the features' shape as a 4-D tuple, and whether it was 3-D (one image)."""
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


def check_grad_output(grad_output, shape):
    """Return (grad_output canonical, result dtype), checking it has the pooled `shape`."""
    grad = np.asarray(grad_output)
    result_dtype = grad.dtype.newbyteorder("=")
    dtype = compute_dtype(grad.dtype, "grad_output")
    if grad.shape != tuple(shape):
        raise ValueError(f"grad_output must have shape {tuple(shape)}, got {grad.shape}")
    return np.ascontiguousarray(grad, dtype=dtype), result_dtype


def check_matching_input(input, shape, dtype, name="input"):
    """Return `input` (needed to find arg-max samples) as canonical `dtype` of `shape`."""
    if input is None:
        raise ValueError(f"{name} is required: max pooling's gradient needs the features")
    features = np.asarray(input)
    compute_dtype(features.dtype, name)
    if features.shape not in (shape, shape[1:]):
        raise ValueError(f"{name} must have shape {shape}, got {features.shape}")
    return np.ascontiguousarray(features.reshape(shape), dtype=dtype)


def rois_by_image(batch_index, n_images):
    """(roi_order, image_first): RoIs grouped by image (stable), and where each image starts."""
    roi_order = np.argsort(batch_index, kind="stable").astype(np.intp)
    image_first = np.searchsorted(batch_index[roi_order], np.arange(n_images + 1))
    return roi_order, image_first.astype(np.intp)


def channel_blocks(n_threads, n_images, channels):
    """Channel blocks per image for the backward: enough work items to keep threads busy."""
    if n_threads == 1 or channels == 0:
        return 1
    return max(1, min(channels, -(-4 * n_threads // n_images)))


def packed_block_size(features_shape, layout, itemsize, n_threads, n_buffers=1):
    """Channels per packed block: as many as fit BLOCK_BYTES (at least BLOCK_QUANTUM), but
    few enough that every thread gets several (image, block) work items.

    n_buffers: packed blocks a thread holds at once (they share the budget).
    """
    n_images, channels = features_shape[0], channels_of(features_shape, layout)
    height, width = map_size(features_shape, layout)
    quantum = BLOCK_QUANTUM
    all_channels = -(-channels // quantum) * quantum
    fitting = BLOCK_BYTES // n_buffers // (height * width * itemsize) // quantum * quantum
    block = min(all_channels, max(quantum, fitting))
    while block > quantum and n_images * -(-channels // block) < 4 * n_threads:
        block -= quantum
    return block


def channels_of(shape, layout):
    """C of a 4-D (N, C, H, W) or (N, H, W, C) shape."""
    return shape[3] if layout == "NHWC" else shape[1]


def map_size(shape, layout):
    """(H, W) of a 4-D (N, C, H, W) or (N, H, W, C) shape."""
    return tuple(shape[1:3]) if layout == "NHWC" else tuple(shape[2:4])


def use_channel_blocks(features_shape, n_rois, pooled, layout):
    """Whether a channels-first call should pack channel blocks or walk each RoI's planes.

    Channels-last features are read in place: their channels are already contiguous, and
    packing them measured slower. Channels-first features pay one packing pass over every
    image; walking a RoI's channel planes misses the cache on every plane instead. Packing
    measured faster from about one RoI per 32 map pixels per bin (box_head: K >= ~80).
    """
    if layout == "NHWC" or n_rois < 4 * features_shape[0]:
        return False
    n_images, height, width = features_shape[0], *map_size(features_shape, layout)
    return n_rois * pooled[0] * pooled[1] * 32 >= n_images * height * width
