"""How a checked call runs: its thread team, kernel variant and work-item size.

A plan is made from a call record (_args) and decides nothing about numbers: every variant
and every team size gives the same results, bit for bit.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
import numpy.typing as npt

from roialign_cy import _boxes, _dispatch, _runtime
from roialign_cy._args import Call, check_int

# Below this many (RoI x channel x bin) outputs a call runs on one thread: waking a thread
# team costs more than it saves.
SERIAL_WORK = 1 << 14
# Packed channel blocks (_channel_blocks.pxd) hold a multiple of BLOCK_QUANTUM channels (one
# 64-byte line of float32) and, when the map allows, about BLOCK_BYTES: a core's share of
# the caches.
BLOCK_QUANTUM = 16
BLOCK_BYTES = 2 << 20
# Beyond this a block of BLOCK_QUANTUM channels is no longer cache-resident (nor small: a
# 46341 x 46341 map would need 137 GB per thread), so huge maps walk each RoI instead.
MAX_PACKED_BYTES = 32 << 20
VARIANTS = ("per_roi", "packed")
# A map of more than LOCALITY_BYTES per image does not stay in the caches, and then the
# order the RoIs are pooled in decides how many of a RoI's taps the RoIs before it left
# there: a per-RoI forward given locality=True walks each image's RoIs by their centres'
# y (locality_order). Each RoI writes only its own output, so the numbers do not change.
# (benchmarks/RESULTS.md, "The channels-last gather: what binds it".)
LOCALITY_BYTES = 8 << 20
LOCALITY_ROIS = 16
_new = tuple.__new__  # builds a Plan without a Python-level __new__ call


class Plan(NamedTuple):
    """How one call runs (immutable)."""

    n_threads: int                   # the team size asked of OpenMP
    shared: bool                     # a default-sized team, shared with concurrent calls
    packed: bool                     # gather through cache-resident packed channel blocks
    block: int                       # channels per (image, channel block) work item
    roi_order: Optional[npt.NDArray[np.intp]]  # RoIs grouped by image (stable), or None ...
    image_first: Optional[npt.NDArray[np.intp]]  # ... where each image's RoIs start in roi_order
    # (a per-RoI forward planned with locality=True: roi_order is the order to pool the RoIs
    # in, image_first None)


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# A team never has more threads than the process has CPUs: more only costs (and libgomp
# exits the process when it cannot create a thread: num_threads=1000).
USABLE_CPUS = _usable_cpus()
# GNU libgomp's thread pool does not survive fork(): a child forked after ANY library of the
# parent (torch, NumPy's BLAS, this package) ran an OpenMP team hangs when it starts one.
# A forked child therefore runs every call on one thread, unless this variable says otherwise.
THREADS_AFTER_FORK_ENV = "ROIALIGN_CY_THREADS_AFTER_FORK"


class _ThreadState:
    """Whether this process is a fork() child where a thread team could hang."""

    forked = False


def _after_fork_in_child() -> None:
    """os.register_at_fork hook: a forked child with GNU libgomp stays serial (see above)."""
    _ThreadState.forked = (_runtime.GNU_OPENMP
                           and os.environ.get(THREADS_AFTER_FORK_ENV, "") in ("", "0"))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def team_size(num_threads: Any, work: int) -> int:
    """The thread count for a call of `work` output elements: None means OpenMP's default.

    Capped by the work (tiny calls run on one thread) and by the usable CPUs, and 1 in a
    serial build or in a forked child (see above). A bad num_threads fails on any call.
    """
    if num_threads is not None and not (type(num_threads) is int and 0 < num_threads < 2**31):
        num_threads = check_int(num_threads, "num_threads", minimum=1)
    if work < SERIAL_WORK or not _runtime.OPENMP_ENABLED or _ThreadState.forked:
        return 1
    requested = _runtime.openmp_max_threads() if num_threads is None else num_threads
    return max(1, min(requested, USABLE_CPUS, work // SERIAL_WORK))


def use_packed(map_shape: Tuple[int, ...], n_rois: int, pooled: Tuple[int, int],
               itemsize: int) -> bool:
    """Whether a call should gather through packed channel blocks or walk each RoI's planes.

    Channels-last features are read in place: their channels are already contiguous, and
    packing them measured slower. Channels-first features pay one packing pass over every
    image; walking a RoI's channel planes misses the cache on every plane instead. Packing
    measured faster from about one RoI per 32 map pixels per bin (box_head: K >= ~80).
    plan() has already ruled out channels-last maps and fewer than 4 RoIs per image.
    """
    n_images = map_shape[0]
    height, width = map_shape[2], map_shape[3]
    if height * width * BLOCK_QUANTUM * itemsize > MAX_PACKED_BYTES:
        return False
    return n_rois * pooled[0] * pooled[1] * 32 >= n_images * height * width


def packed_block(map_shape: Tuple[int, ...], channels_last: bool, itemsize: int, n_threads: int,
                 n_buffers: int) -> int:
    """Channels per packed block: as many as fit BLOCK_BYTES (at least BLOCK_QUANTUM), but
    few enough that every thread gets several (image, block) work items.

    n_buffers: packed blocks a thread holds at once (they share the budget).
    """
    n_images = map_shape[0]
    channels = map_shape[3] if channels_last else map_shape[1]
    n_pixels = map_shape[1] * map_shape[2] if channels_last else map_shape[2] * map_shape[3]
    quantum = BLOCK_QUANTUM
    all_channels = -(-channels // quantum) * quantum
    fitting = BLOCK_BYTES // n_buffers // (n_pixels * itemsize) // quantum * quantum
    block = min(all_channels, max(quantum, fitting))
    while block > quantum and n_images * -(-channels // block) < 4 * n_threads:
        block -= quantum
    return block


def channel_share(n_threads: int, n_images: int, channels: int) -> int:
    """Channels per work item of a per-RoI kernel split by (image, channel block): one item
    per thread at least, no more (each item walks all its image's RoIs again)."""
    if n_threads == 1 or channels == 0:
        return max(channels, 1)
    shares = max(1, min(channels, -(-n_threads // n_images)))
    return -(-channels // shares)


def locality_order(coords: npt.NDArray[Any], batch_index: npt.NDArray[np.intp],
                   image_bytes: int, level_of: Optional[npt.NDArray[np.intp]] = None
                   ) -> Optional[npt.NDArray[np.intp]]:
    """The order a per-RoI forward pools its RoIs in, None for as given: on a map of at
    least LOCALITY_BYTES an image (the largest level's, for a pyramid) and LOCALITY_ROIS
    RoIs, image by image (level by level first when level_of is given), each image's by
    the y of their centres (stable; the boxes are finite, _args checked them). Rows x1, y1,
    x2, y2, or rotated cx, cy, w, h, angle."""
    if len(coords) < LOCALITY_ROIS or image_bytes < LOCALITY_BYTES:
        return None
    centre_y = coords[:, 1] if coords.shape[1] == 5 else coords[:, 1] + coords[:, 3]
    keys = (centre_y, batch_index) if level_of is None else (centre_y, batch_index, level_of)
    return np.lexsort(keys).astype(np.intp, copy=False)


def plan(call: Call, num_threads: Any, variant: Optional[str], grouped: bool,
         packable: bool = True, n_buffers: int = 1, locality: bool = False) -> Plan:
    """The Plan of a checked call (_args.ForwardCall or BackwardCall).

    variant: None (the heuristic above picks), "per_roi" or "packed" (where the operator has
    no packed kernel for this call, packable=False, the per-RoI one runs). grouped: the
    kernel walks RoIs image by image even per RoI (the backward kernels). locality: the
    per-RoI kernel pools the RoIs in roi_order when given one (see LOCALITY_BYTES).
    """
    map_shape, channels_last = call.map_shape, call.channels_last
    itemsize = call.values.itemsize
    work = call.values.size if grouped else call.kernel_out.size
    if work < SERIAL_WORK and num_threads is None:
        n_threads = 1  # team_size's answer, the fast route
    else:
        n_threads = team_size(num_threads, work)
    n_images = map_shape[0]
    if variant is None:  # the cheap tests first: most small calls stop there
        packed = (packable and not channels_last and len(call.coords) >= 4 * n_images
                  and use_packed(map_shape, len(call.coords), call.pooled, itemsize))
    elif variant in VARIANTS:
        packed = packable and variant == "packed"
    else:
        raise ValueError(f"variant must be None or one of {VARIANTS}, got {variant!r}")
    roi_order = image_first = None
    block = 1  # unused by the per-RoI forward, whose work items are RoIs
    if packed:
        block = packed_block(map_shape, channels_last, itemsize, n_threads, n_buffers)
    elif grouped:
        block = channel_share(n_threads, n_images, map_shape[3] if channels_last else map_shape[1])
    if packed or grouped:
        roi_order, image_first = _boxes.group_by_image(call.batch_index, n_images)
    elif locality and len(call.coords) >= LOCALITY_ROIS:  # small calls stop at this test
        roi_order = locality_order(call.coords, call.batch_index,
                                   call.values.nbytes // max(n_images, 1))
    return _new(Plan, (n_threads, num_threads is None and n_threads > 1, packed, block,
                       roi_order, image_first))


class _SharedTeams:
    """Calls with num_threads=None that run at the same time from several Python threads
    share OpenMP's default size between them instead of each starting a full team (which
    would oversubscribe the cores: 8 pool threads x 16 OpenMP threads on 16 cores)."""

    lock = threading.Lock()
    active = 0  # default-sized multi-threaded calls running right now


def run(table: _dispatch.KernelTable, direction: str, build: Optional[str], call: Call, plan: Plan,
        operator_arguments: Tuple[Any, ...], what: str) -> None:
    """Run the operator's `direction` kernel for `build` (None: the default) on the plan's team.

    Every kernel takes one argument order: the call's arrays and geometry, then the
    operator's own `operator_arguments`, then the plan, the paused list, the first work item
    and the team size. A kernel returns after a time slice with the next item to run (0:
    done), so a long call reacts to Ctrl-C between slices (KeyboardInterrupt; `out` then
    holds partial results). Work items that walk an image's RoIs (the plan grouped them:
    image_first) may pause inside a slice; the paused list carries them to the next one
    (_work_items.run_items). MemoryError naming `what` when the kernel could not allocate
    its scratch.
    """
    build = _dispatch.SIMD if build is None else _dispatch.check_build(build)
    kernel = table[direction, build, call.values.dtype]
    n_threads = plan.n_threads
    if plan.shared:
        with _SharedTeams.lock:
            _SharedTeams.active += 1
            n_threads = max(1, n_threads // _SharedTeams.active)
    try:
        paused = None if plan.image_first is None else np.zeros(1 + 2 * n_threads, np.intp)
        arguments = (call.values, call.channels_last, call.coords, call.batch_index,
                     plan.roi_order, plan.image_first, call.spatial_scale, *call.pooled,
                     *operator_arguments, plan.packed, plan.block, paused, 0, n_threads)
        next_item = kernel(*arguments)
        while next_item > 0:  # a long call, in time slices: Ctrl-C is seen between them
            _runtime.check_signals()
            next_item = kernel(*arguments[:-2], next_item, n_threads)
    finally:
        if plan.shared:
            with _SharedTeams.lock:
                _SharedTeams.active -= 1
    if next_item < 0:
        raise MemoryError(f"{what}: could not allocate the per-thread scratch")
