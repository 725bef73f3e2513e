"""roi_align, roi_pool and multiscale_roi_align over Dask arrays: feature maps of whole
datasets, in chunked stores (zarr, HDF5) larger than one machine's memory.

Each function takes the features as a dask array chunked along N (and optionally C) and the
boxes as NumPy, and returns the pooled boxes as a lazy dask array with known chunks, in the
order of the boxes. Everything is checked when the graph is built, by the in-memory
operator's own checks: the scalar arguments by a call of the in-memory operator on a
one-pixel stand-in map with no boxes (so both paths accept and refuse the same arguments),
the boxes by the package's box check against the real number of images.

The graph holds one task per (image block, channel block) (more where a block's pooled rows
would exceed dask's ``array.chunk-size``): each receives its block of features and only the
boxes of that block's images, renumbered from its first image, and runs the in-memory
operator on them, so every pooled value is the in-memory call's, bit for bit. The boxes are
grouped by image block once, on the client (a stable sort); when they were not already in
that order, the result is put back into the boxes' order by a dask take, which gathers each
output chunk from slices of the blocks' results (no task receives every pooled row).

Needs dask, the ``dask`` extra: ``pip install "roialign-cy[dask]"``. ``import roialign_cy``
never imports this module.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence, SupportsIndex,
                    Tuple, cast)

import numpy as np
import numpy.typing as npt

try:
    import dask
    import dask.array as da
    from dask.array.core import PerformanceWarning
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    from dask.utils import parse_bytes
except ImportError as _missing:  # private: stubtest reads the name as a module attribute
    raise ImportError(
        "roialign_cy.dask needs dask, which is not installed: "
        'pip install "roialign-cy[dask]" (or pip install "dask[array,distributed]")'
    ) from _missing

import roialign_cy
from roialign_cy import _args, _levels, _plan
from roialign_cy._args import Bool, Layout, Mode, OutputSize, Real
from roialign_cy._levels import LevelRule

__all__ = ["roi_align", "roi_pool", "multiscale_roi_align"]

# The in-memory operator with every argument but the features and the boxes bound.
Pool = Callable[[Any, npt.NDArray[Any]], npt.NDArray[Any]]
ImageSizes = Sequence[Tuple[SupportsIndex, SupportsIndex]]
_NO_BOXES = np.zeros((0, 5))


class _Axes(NamedTuple):
    """Where a layout keeps its axes (N is always 0)."""

    channels: int
    height: int
    width: int


_AXES = {"NCHW": _Axes(1, 2, 3), "NHWC": _Axes(3, 1, 2)}


class _Task(NamedTuple):
    """One pooling task: the image block it reads and the boxes it pools, as rows
    [batch index within the block, x1, y1, x2, y2] in the compute dtype."""

    block: int
    rows: npt.NDArray[Any]


class _Split(NamedTuple):
    """The boxes of one call split into tasks, and how to put their results back in order."""

    tasks: List[_Task]
    inverse: Optional[npt.NDArray[np.intp]]  # result_in_task_order[inverse]; None: in order


def roi_align(features: da.Array, boxes: npt.ArrayLike, output_size: OutputSize,
              spatial_scale: Real = 1.0, sampling_ratio: SupportsIndex = -1,
              aligned: Bool = False, *, layout: Layout = "NCHW", mode: Mode = "avg",
              num_threads: Optional[SupportsIndex] = 1) -> da.Array:
    """:func:`roialign_cy.roi_align` of a dask array of features, lazily.

    Parameters
    ----------
    features : dask.array.Array, float16, float32 or float64
        ``(N, C, H, W)`` for ``layout="NCHW"`` or ``(N, H, W, C)`` for ``"NHWC"``, chunked
        along N (a block of whole images per task) and optionally along C. A map chunked
        along H or W is rechunked to whole images, with a ``PerformanceWarning``.
    boxes : ndarray (K, 5) or list of N ndarrays (K_i, 4)
        As in :func:`roialign_cy.roi_align`, in memory: rows ``[batch_index, x1, y1, x2,
        y2]`` or one ``(K_i, 4)`` array per image. Each task receives only the boxes of
        its own images.
    output_size, spatial_scale, sampling_ratio, aligned, layout, mode
        As in :func:`roialign_cy.roi_align`.
    num_threads : int, optional, keyword-only, default 1
        OpenMP threads of each task's call (Dask already runs tasks in parallel); None
        uses OpenMP's default in each worker (distributed's nanny sets
        ``OMP_NUM_THREADS=1`` in the worker processes it starts).

    Returns
    -------
    dask.array.Array
        What the in-memory call returns, lazily, with known chunks, in the order of the
        boxes: ``(K, C, PH, PW)`` for NCHW and, as :func:`roialign_cy.roi_align` returns
        it for NHWC, ``(K, PH, PW, C)``; the dtype of `features`. Chunked along K by image
        block and along C as `features`.

    Raises
    ------
    TypeError, ValueError
        At graph construction, naming the argument: `features` not a 4-D dask array of
        floats with known chunk sizes, boxes of the wrong shape or with a batch index
        outside ``[0, N)``, and every check of :func:`roialign_cy.roi_align`.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from roialign_cy import dask as roi_dask
    >>> features = da.ones((4, 8, 32, 32), dtype=np.float32, chunks=(1, 8, 32, 32))
    >>> boxes = np.array([[3, 0.0, 0.0, 64.0, 64.0], [0, 8.0, 8.0, 40.0, 40.0]])
    >>> pooled = roi_dask.roi_align(features, boxes, 7, spatial_scale=0.5)
    >>> pooled.shape, float(pooled[0, 0, 0, 0].compute())
    ((2, 8, 7, 7), 1.0)
    """
    pool = functools.partial(roialign_cy.roi_align, output_size=output_size,
                             spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                             aligned=aligned, layout=layout, mode=mode, num_threads=num_threads)
    return _pool_images("roi_align", pool, features, boxes, layout, num_threads)


def roi_pool(features: da.Array, boxes: npt.ArrayLike, output_size: OutputSize,
             spatial_scale: Real = 1.0, *, layout: Layout = "NCHW",
             num_threads: Optional[SupportsIndex] = 1) -> da.Array:
    """:func:`roialign_cy.roi_pool` of a dask array of features, lazily.

    Parameters
    ----------
    features, boxes, num_threads
        As in :func:`roi_align`.
    output_size, spatial_scale, layout
        As in :func:`roialign_cy.roi_pool`.

    Returns
    -------
    dask.array.Array
        ``(K, C, PH, PW)`` for NCHW, ``(K, PH, PW, C)`` for NHWC (what the in-memory call
        returns), lazily, known chunks, in the order of the boxes.

    Raises
    ------
    TypeError, ValueError
        As in :func:`roi_align`, at graph construction.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from roialign_cy import dask as roi_dask
    >>> features = da.arange(2 * 16, dtype=np.float64, chunks=16).reshape(2, 1, 4, 4)
    >>> pooled = roi_dask.roi_pool(features, np.array([[1, 0.0, 0.0, 3.0, 3.0]]), 1)
    >>> pooled.compute()
    array([[[[31.]]]])
    """
    pool = functools.partial(roialign_cy.roi_pool, output_size=output_size,
                             spatial_scale=spatial_scale, layout=layout,
                             num_threads=num_threads)
    return _pool_images("roi_pool", pool, features, boxes, layout, num_threads)


def multiscale_roi_align(features: Sequence[da.Array], boxes: npt.ArrayLike,
                         output_size: OutputSize, sampling_ratio: SupportsIndex = -1, *,
                         image_sizes: Optional[ImageSizes] = None,
                         scales: Optional[Sequence[Real]] = None, aligned: Bool = False,
                         canonical_scale: Optional[Real] = None,
                         canonical_level: Optional[SupportsIndex] = None,
                         level_rule: LevelRule = "torchvision", layout: Layout = "NCHW",
                         num_threads: Optional[SupportsIndex] = 1) -> da.Array:
    """:func:`roialign_cy.multiscale_roi_align` of a pyramid of dask arrays, lazily.

    Each task receives its image block of every level and that block's boxes, and runs
    the in-memory call on them with the levels' scales fixed on the client (inferred from
    every image's size, as the in-memory call infers them): each box's level is chosen by
    the same rule, from the same scales, and pooled with the same numbers, bit for bit.

    Parameters
    ----------
    features : list of dask.array.Array
        The pyramid's maps, finest first, each ``(N, C, H_l, W_l)`` (NCHW) or ``(N, H_l,
        W_l, C)`` (NHWC), the same N, C and dtype. Image blocks are the first level's
        chunks along N (and channel blocks its chunks along C); a level chunked otherwise,
        or along H or W, is rechunked to match, with a ``PerformanceWarning``.
    boxes, num_threads
        As in :func:`roi_align`.
    output_size, sampling_ratio, image_sizes, scales, aligned, canonical_scale, \
canonical_level, level_rule, layout
        As in :func:`roialign_cy.multiscale_roi_align` (give `image_sizes` or `scales`).

    Returns
    -------
    dask.array.Array
        ``(K, C, PH, PW)`` for NCHW, ``(K, PH, PW, C)`` for NHWC (what the in-memory call
        returns), lazily, known chunks, in the order of the boxes.

    Raises
    ------
    TypeError, ValueError
        As in :func:`roi_align`, at graph construction; also levels with different N, C or
        dtype, and every check of :func:`roialign_cy.multiscale_roi_align`.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from roialign_cy import dask as roi_dask
    >>> pyramid = [da.ones((2, 4, 64 // s, 64 // s), chunks=(1, 4, 64 // s, 64 // s))
    ...            for s in (1, 2)]
    >>> boxes = [np.array([[0.0, 0.0, 32.0, 32.0]]), np.array([[0.0, 0.0, 250.0, 250.0]])]
    >>> roi_dask.multiscale_roi_align(pyramid, boxes, 2, 2, image_sizes=[(256, 256)] * 2).shape
    (2, 4, 2, 2)
    """
    arguments: Dict[str, Any] = dict(
        output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned,
        canonical_scale=canonical_scale, canonical_level=canonical_level, level_rule=level_rule,
        layout=layout, num_threads=num_threads)
    layout = _args.check_layout(layout)
    levels = _check_pyramid(features, layout)
    heights = [level.shape[_AXES[layout].height] for level in levels]
    widths = [level.shape[_AXES[layout].width] for level in levels]
    stand_ins = [np.zeros(_one_image(layout, height, width), levels[0].dtype)
                 for height, width in zip(heights, widths)]
    probe = roialign_cy.multiscale_roi_align(stand_ins, _NO_BOXES, image_sizes=image_sizes,
                                             scales=scales, **arguments)
    # The levels' scales, fixed here: the in-memory call infers them from the largest of
    # ALL the images, which no task sees.
    fixed = _levels.infer_scales(heights, image_sizes) if scales is None else scales
    pool = functools.partial(roialign_cy.multiscale_roi_align, scales=fixed, **arguments)
    levels = _align_levels(levels, layout)
    return _build("multiscale_roi_align", pool, levels, boxes, layout, probe, num_threads)


def _pool_images(label: str, pool: Pool, features: Any, boxes: Any, layout: Any,
                 num_threads: Any) -> da.Array:
    """The graph of a single-map operator: check, probe, split, build."""
    layout = _args.check_layout(layout)
    features = _check_map(features, "features", layout)
    probe = pool(np.zeros(_one_image(layout, 1, 1), features.dtype), _NO_BOXES)
    return _build(label, pool, [_whole_images(features, layout, "features")], boxes, layout,
                  probe, num_threads)


def _build(label: str, pool: Pool, levels: List[da.Array], boxes: Any, layout: Layout,
           probe: npt.NDArray[Any], num_threads: Any) -> da.Array:
    """The pooled dask array of a checked call whose scalar arguments `probe` (the
    in-memory call on a stand-in map with no boxes) has accepted."""
    if num_threads is not None:
        _plan.team_size(num_threads, 0)  # a bad num_threads fails here, not in a worker
    first = levels[0]
    axes = _AXES[layout]
    compute = _args.compute_dtype(first.dtype, "features")
    batch_index, coords = _args.check_boxes(boxes, first.shape[0], False, compute)
    ph, pw = probe.shape[1:3] if layout == "NHWC" else probe.shape[2:4]
    pooled = (ph, pw)
    channel_chunks = first.chunks[axes.channels]
    row_bytes = max(channel_chunks, default=0) * pooled[0] * pooled[1] * probe.itemsize
    split = _split_boxes(batch_index, coords, first.chunks[0], _rows_per_task(row_bytes))
    if not split.tasks:  # no boxes at all
        return _no_rows(first, layout, pooled, probe.dtype)
    name = f"{label}-" + tokenize(label, pool, [level.name for level in levels],
                                  batch_index, coords)
    graph = _task_graph(name, pool, levels, split.tasks, layout)
    rows = tuple(len(task.rows) for task in split.tasks)
    chunks = _pooled_shape(layout, rows, channel_chunks, ((pooled[0],), (pooled[1],)))
    # (cast: for mypy, dask's Array does not satisfy dask's own DaskCollection protocol)
    layer = HighLevelGraph.from_collections(name, graph, dependencies=cast(List[Any], levels))
    result = da.Array(layer, name, chunks, dtype=probe.dtype, meta=probe[:0])
    return result if split.inverse is None else result[split.inverse]


def _no_rows(features: da.Array, layout: Layout, pooled: Tuple[int, int],
             dtype: np.dtype[Any]) -> da.Array:
    """The result of a call without boxes: (0, C, PH, PW) (NHWC: (0, PH, PW, C)), its
    channels chunked as the features'."""
    channels = _AXES[layout].channels
    shape = _pooled_shape(layout, 0, features.shape[channels], pooled)
    chunks = _pooled_shape(layout, (0,), features.chunks[channels],
                           ((pooled[0],), (pooled[1],)))
    return da.zeros(shape, dtype=dtype, chunks=chunks)


def _task_graph(name: str, pool: Pool, levels: List[da.Array], tasks: List[_Task],
                layout: Layout) -> Dict[Any, Any]:
    """One task per (box task, channel block): the in-memory call on its image block's
    features (one block per level for a pyramid) and its rows only."""
    n_channel_blocks = len(levels[0].chunks[_AXES[layout].channels])
    single_map = len(levels) == 1
    graph: Dict[Any, Any] = {}
    for i, task in enumerate(tasks):
        for c in range(n_channel_blocks):
            blocks = [(level.name,) + _block_index(layout, task.block, c) for level in levels]
            graph[(name,) + _block_index(layout, i, c)] = (
                pool, blocks[0] if single_map else blocks, task.rows)
    return graph


def _split_boxes(batch_index: npt.NDArray[np.intp], coords: npt.NDArray[Any],
                 image_chunks: Tuple[int, ...], rows_per_task: int) -> _Split:
    """The boxes grouped by image block (a stable sort, skipped when they already are),
    cut into tasks of at most rows_per_task boxes; blocks without boxes get no task."""
    starts = np.cumsum((0,) + tuple(image_chunks))
    block_of = np.searchsorted(starts, batch_index, side="right") - 1
    order = inverse = None
    if np.any(block_of[1:] < block_of[:-1]):
        order = np.argsort(block_of, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        batch_index, coords, block_of = batch_index[order], coords[order], block_of[order]
    tasks = []
    ends = np.searchsorted(block_of, np.arange(len(image_chunks)), side="right")
    begin = 0
    for block, end in enumerate(ends.tolist()):
        for first in range(begin, end, rows_per_task):
            last = min(first + rows_per_task, end)
            rows = np.empty((last - first, 5), coords.dtype)
            rows[:, 0] = batch_index[first:last] - starts[block]  # within the block
            rows[:, 1:] = coords[first:last]
            tasks.append(_Task(block, rows))
        begin = end
    return _Split(tasks, inverse)


def _rows_per_task(row_bytes: int) -> int:
    """Boxes per task: as many as keep its pooled block within dask's array.chunk-size."""
    budget = parse_bytes(dask.config.get("array.chunk-size"))
    return max(1, budget // max(row_bytes, 1))


def _check_map(features: Any, name: str, layout: Layout) -> da.Array:
    """features if it is a 4-D dask array of floats with known chunk sizes and a
    non-empty map."""
    if not isinstance(features, da.Array):
        raise TypeError(f"{name} must be a dask array (for NumPy arrays use roialign_cy's "
                        f"own functions), got {type(features).__name__}")
    if features.ndim != 4:
        axes = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{name} must be 4-D {axes}, got shape {features.shape}")
    _args.compute_dtype(features.dtype, name)
    if any(math.isnan(size) for size in features.shape):
        raise ValueError(f"{name} has unknown chunk sizes {features.chunks}: call "
                         f"{name}.compute_chunk_sizes() first")
    height, width = features.shape[_AXES[layout].height], features.shape[_AXES[layout].width]
    if height == 0 or width == 0:
        raise ValueError(f"{name} has an empty feature map (H={height}, W={width})")
    return features


def _check_pyramid(features: Any, layout: Layout) -> List[da.Array]:
    """The levels of a pyramid of dask arrays, each checked, with the same N, C and dtype."""
    if not isinstance(features, (list, tuple)) or not features:
        raise TypeError(f"features must be a non-empty list of per-level dask arrays "
                        f"(finest first), got {type(features).__name__}")
    levels = [_check_map(level, f"features[{i}]", layout) for i, level in enumerate(features)]
    channels = _AXES[layout].channels
    first = levels[0]
    for i, level in enumerate(levels[1:], 1):
        if level.dtype != first.dtype:
            raise ValueError(f"features[{i}] has dtype {level.dtype}, features[0] has "
                             f"{first.dtype}: every level must have one dtype")
        if level.shape[0] != first.shape[0] or level.shape[channels] != first.shape[channels]:
            raise ValueError(f"features[{i}] has shape {level.shape}, features[0] has "
                             f"{first.shape}: every level must have the same N and C")
    return levels


def _whole_images(features: da.Array, layout: Layout, name: str) -> da.Array:
    """features with whole maps per block: a task needs every pixel its boxes may reach."""
    axes = _AXES[layout]
    if len(features.chunks[axes.height]) == 1 and len(features.chunks[axes.width]) == 1:
        return features
    warnings.warn(f"{name} is chunked along H or W (H chunks {features.chunks[axes.height]}, "
                  f"W chunks {features.chunks[axes.width]}): rechunked to whole images per "
                  f"block, a copy through the workers; store whole maps per chunk (one or a "
                  f"few images along N) to avoid it", PerformanceWarning, stacklevel=4)
    return features.rechunk({axes.height: -1, axes.width: -1})


def _align_levels(levels: List[da.Array], layout: Layout) -> List[da.Array]:
    """Every level in the first level's image and channel blocks, with whole maps."""
    axes = _AXES[layout]
    first = _whole_images(levels[0], layout, "features[0]")
    aligned = [first]
    for i, level in enumerate(levels[1:], 1):
        level = _whole_images(level, layout, f"features[{i}]")
        if (level.chunks[0], level.chunks[axes.channels]) != (first.chunks[0],
                                                            first.chunks[axes.channels]):
            warnings.warn(f"features[{i}] is chunked along N or C unlike features[0]: "
                          f"rechunked to features[0]'s image and channel blocks (each task "
                          f"reads one block of every level)", PerformanceWarning, stacklevel=3)
            level = level.rechunk({0: first.chunks[0], axes.channels: first.chunks[axes.channels]})
        aligned.append(level)
    return aligned


def _one_image(layout: Layout, height: int, width: int) -> Tuple[int, int, int, int]:
    """The shape of a one-image, one-channel stand-in map."""
    return (1, 1, height, width) if layout == "NCHW" else (1, height, width, 1)


def _block_index(layout: Layout, rows: int, channels: int) -> Tuple[int, int, int, int]:
    """A block's index along (N or K, C, H, W) in the layout's axis order."""
    return (rows, channels, 0, 0) if layout == "NCHW" else (rows, 0, 0, channels)


def _pooled_shape(layout: Layout, rows: Any, channels: Any, pooled: Tuple[Any, Any]
                  ) -> Tuple[Any, Any, Any, Any]:
    """(rows, channels, PH, PW) in the layout's axis order (sizes or chunks)."""
    ph, pw = pooled
    return (rows, channels, ph, pw) if layout == "NCHW" else (rows, ph, pw, channels)
