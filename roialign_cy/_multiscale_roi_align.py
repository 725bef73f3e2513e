"""Multi-level (FPN) RoIAlign: multiscale_roi_align, multiscale_roi_align_backward and the
MultiScaleRoIAlign class.

Each box is pooled from one level of a feature pyramid, chosen from its size by a
framework's rule (_levels). One kernel call pools every level: the compiled kernel
(_multiscale_roi_align_kernels) holds every level's map and each box's level, and runs
roi_align's own per-RoI code on it, so each box's numbers are roi_align's on its level, bit
for bit (and so torchvision's MultiScaleRoIAlign's). `forward` and `backward` are the
public calls with the kernel variant and build forced, for the tests.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, SupportsIndex, Tuple, Union, cast

import numpy as np
import numpy.typing as npt

from roialign_cy import _args, _boxes, _dispatch, _levels, _plan
from roialign_cy import _multiscale_roi_align_kernels as _baseline
from roialign_cy._args import Bool, Layout, OutputSize, Real
from roialign_cy._levels import LevelRule
from roialign_cy._pooler import Pooler

try:
    from roialign_cy import _multiscale_roi_align_kernels_avx2 as _avx2
except ImportError:  # not built: not x86-64, or a compiler without -mavx2
    _avx2 = None  # type: ignore[assignment]

KERNELS = _dispatch.kernel_table(_baseline, _avx2)

# Per-level maps: a sequence, finest first, or a dict of them (with featmap_names).
Features = Union[Sequence[npt.ArrayLike], Dict[Any, npt.ArrayLike]]
ImageSizes = Sequence[Tuple[SupportsIndex, SupportsIndex]]


def _parameters(sampling_ratio: Any, aligned: Any, level_rule: Any, canonical_scale: Any,
                canonical_level: Any) -> Tuple[int, bool, LevelRule, float, int]:
    """The operator's own arguments, checked."""
    sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
    aligned = _args.check_bool(aligned, "aligned")
    rule = _levels.check_rule(level_rule)
    scale, level = _levels.check_canonical(canonical_scale, canonical_level, rule)
    return sampling_ratio, aligned, rule, scale, level


def _pyramid(heights: List[int], scales: Any, image_sizes: Any) -> Tuple[List[float], int, int]:
    """(scales, k_min, k_max): given, or inferred from image_sizes as torchvision does."""
    if scales is not None and image_sizes is not None:
        raise ValueError("give scales or image_sizes, not both (image_sizes only serves to "
                         "infer the scales)")
    if scales is None:
        if image_sizes is None:
            raise ValueError("image_sizes (or scales) is required: the level scales are "
                             "inferred from the image sizes")
        checked = _levels.infer_scales(heights, image_sizes)
    else:
        checked = _levels.check_scales(scales, len(heights))
    k_min, k_max = _levels.level_range(checked)
    return checked, k_min, k_max


def _level_plan(call: Any, level_of: npt.NDArray[np.intp], n_levels: int, num_threads: Any,
                variant: Optional[str], work: int,
                grouped: bool) -> Tuple[_plan.Plan, npt.NDArray[np.intp]]:
    """(the Plan of a multi-level call, channels per work item of each level).

    As _plan.plan for one map, per level: the team, the variant (per RoI or packed channel
    blocks), each level's block (a cache-sized block of a small map holds more channels),
    and the RoIs grouped by (level, image); a per-RoI forward on a large pyramid gets the
    order to pool its RoIs in (see _plan.LOCALITY_BYTES).
    """
    n_threads = _plan.team_size(num_threads, work)
    shapes = call.level_shapes
    channels_last = call.channels_last
    n_images = call.map_shape[0]
    channels = call.map_shape[3] if channels_last else call.map_shape[1]
    itemsize = call.values.itemsize
    if variant is None:
        packed = not channels_last and len(call.coords) >= 4 * n_images and _use_packed(
            shapes, level_of, n_levels, call.pooled, itemsize)
    elif variant in _plan.VARIANTS:
        packed = variant == "packed"
    else:
        raise ValueError(f"variant must be None or one of {_plan.VARIANTS}, got {variant!r}")
    if packed:
        blocks = [_plan.packed_block(shape, channels_last, itemsize, n_threads, 1)
                  for shape in shapes]
    elif grouped:
        blocks = [_plan.channel_share(n_threads, n_images * n_levels, channels)] * n_levels
    else:
        blocks = [1] * n_levels
    roi_order = level_first = None
    if packed or grouped:
        # Groups level * N + image; RoIs without a level go to a last group no item reads.
        key = np.where(level_of >= 0, level_of * n_images + call.batch_index,
                       n_levels * n_images)
        roi_order, level_first = _boxes.group_by_image(np.ascontiguousarray(key, np.intp),
                                                       n_levels * n_images + 1)
    elif len(call.coords) >= _plan.LOCALITY_ROIS:  # the per-RoI forward; small calls stop here
        largest = max(int(np.prod(shape[1:])) for shape in shapes) * itemsize
        roi_order = _plan.locality_order(call.coords, call.batch_index, largest, level_of)
    plan = _plan.Plan(n_threads, num_threads is None and n_threads > 1, packed, max(blocks),
                      roi_order, level_first)
    return plan, np.array(blocks, dtype=np.intp)


def _use_packed(shapes: Sequence[Tuple[int, ...]], level_of: npt.NDArray[np.intp],
                n_levels: int, pooled: Tuple[int, int], itemsize: int) -> bool:
    """roi_align's rule (_plan.use_packed), over the pyramid: pack when the RoIs' bins
    outnumber the pixels of the levels they read, and every level's block is cache-sized."""
    counts = np.bincount(level_of[level_of >= 0], minlength=n_levels)
    pixels = bins = 0
    for shape, count in zip(shapes, counts):
        n_pixels = shape[2] * shape[3]
        if n_pixels * _plan.BLOCK_QUANTUM * itemsize > _plan.MAX_PACKED_BYTES:
            return False
        if count:
            pixels += shape[0] * n_pixels
            bins += int(count) * pooled[0] * pooled[1] * 32
    return bins >= pixels


def _levels_of(call: Any, n_levels: int, k_min: int, k_max: int, rule: LevelRule,
               canonical_scale: float, canonical_level: int) -> npt.NDArray[np.intp]:
    """Each RoI's level in [0, n_levels), or -1: no level (negative area, or an index past
    the last map, which torchvision leaves unpooled too)."""
    level_of = _levels.box_levels(call.coords, k_min, k_max, canonical_scale, canonical_level,
                                  rule)
    level_of[level_of >= n_levels] = _levels.NO_LEVEL
    return np.ascontiguousarray(level_of, dtype=np.intp)


def multiscale_roi_align(features: Features, boxes: npt.ArrayLike, output_size: OutputSize,
                         sampling_ratio: SupportsIndex = -1, *,
                         image_sizes: Optional[ImageSizes] = None,
                         scales: Optional[Sequence[Real]] = None, aligned: Bool = False,
                         canonical_scale: Optional[Real] = None,
                         canonical_level: Optional[SupportsIndex] = None,
                         level_rule: LevelRule = "torchvision", layout: Layout = "NCHW",
                         featmap_names: Optional[Sequence[Any]] = None,
                         out: Optional[npt.NDArray[Any]] = None,
                         num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
    """Pool every box from one level of a feature pyramid (FPN), chosen from its size.

    Same numbers as ``torchvision.ops.MultiScaleRoIAlign`` (whose roi_align runs with
    ``aligned=False``), bit for bit: each box's output is :func:`roi_align` of its level.
    One call pools every level (no loop over levels, no scatter copy).

    Parameters
    ----------
    features : sequence of ndarrays, or dict
        The pyramid's maps, finest first: ``(N, C, H_l, W_l)`` for NCHW or ``(N, H_l, W_l,
        C)`` for NHWC, the same N, C and dtype (float16, float32 or float64), any spatial
        sizes and strides. A dict (torchvision's OrderedDict) is filtered by
        `featmap_names`, in the dict's order, as torchvision does.
    boxes : ndarray (K, 5) or list of N ndarrays (K_i, 4)
        As in :func:`roi_align`: rows ``[batch_index, x1, y1, x2, y2]`` or one ``(K_i,
        4)`` array per image, in input-image pixels.
    output_size : int or (int, int)
        Pooled size ``(PH, PW)``.
    sampling_ratio : int, default -1
        As in :func:`roi_align` (``<= 0``: adaptive).
    image_sizes : list of (int, int), keyword-only
        The input images' (height, width). Each level's scale is inferred as torchvision
        does: ``2 ** round(log2(H_l / max height))``. Give this or `scales`.
    scales : list of float, keyword-only
        Each level's spatial scale (1/stride), instead of `image_sizes`.
    aligned : bool, default False, keyword-only
        As in :func:`roi_align`; torchvision's MultiScaleRoIAlign uses False, detectron2's
        ``ROIAlignV2`` pooler True.
    canonical_scale, canonical_level : optional, keyword-only
        The level rule's constants; None takes the rule's defaults (see
        :func:`assign_levels`).
    level_rule : {"torchvision", "detectron2", "mmdet"}, keyword-only
        How a box's level is chosen (see :func:`assign_levels`); k_min and k_max are
        ``int(-log2(scale))`` of the first and last level. A box the rule gives no level
        (a negative area, or, with "torchvision", an index past the last map when the
        levels skip one, as torchvision does) pools to 0.
    layout : {"NCHW", "NHWC"}, keyword-only
    featmap_names : list, optional, keyword-only
        With a dict `features`: the keys of the levels to pool from.
    out : ndarray, optional, keyword-only
        As in :func:`roi_align`; must not overlap any level or the boxes.
    num_threads : int, optional, keyword-only
        As in :func:`roi_align`.

    Returns
    -------
    ndarray
        ``(K, C, PH, PW)`` for NCHW or ``(K, PH, PW, C)`` for NHWC, in box order, the dtype
        of the features (`out` itself when given).

    Raises
    ------
    TypeError, ValueError
        A bad argument, named: levels with different N, C or dtype, a featmap name that is
        not a key, an unknown level_rule, neither image_sizes nor scales, and all of
        :func:`roi_align`'s checks.
    MemoryError
        The output or the per-thread scratch cannot be allocated.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import multiscale_roi_align
    >>> pyramid = [np.ones((1, 2, 64, 64), np.float32), np.ones((1, 2, 32, 32), np.float32)]
    >>> boxes = [np.array([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 250.0, 250.0]])]
    >>> multiscale_roi_align(pyramid, boxes, 2, 2, image_sizes=[(256, 256)]).shape
    (2, 2, 2, 2)
    """
    return forward(features, boxes, output_size, sampling_ratio, image_sizes, scales, aligned,
                   canonical_scale, canonical_level, level_rule, layout, featmap_names, out,
                   num_threads)


def forward(features: Features, boxes: npt.ArrayLike, output_size: OutputSize,
            sampling_ratio: SupportsIndex = -1, image_sizes: Optional[ImageSizes] = None,
            scales: Optional[Sequence[Real]] = None, aligned: Bool = False,
            canonical_scale: Optional[Real] = None,
            canonical_level: Optional[SupportsIndex] = None,
            level_rule: LevelRule = "torchvision", layout: Layout = "NCHW",
            featmap_names: Optional[Sequence[Any]] = None,
            out: Optional[npt.NDArray[Any]] = None,
            num_threads: Optional[SupportsIndex] = None, variant: Optional[str] = None,
            build: Optional[str] = None) -> npt.NDArray[Any]:
    """multiscale_roi_align with the kernel variant ("per_roi", "packed") and build forced."""
    sampling_ratio, aligned, rule, canonical, level0 = _parameters(
        sampling_ratio, aligned, level_rule, canonical_scale, canonical_level)
    call = _args.level_forward_call(features, featmap_names, boxes, output_size, layout, out)
    scale_list, k_min, k_max = _pyramid(_args.level_heights(call.level_shapes, layout),
                                        scales, image_sizes)
    for scale in scale_list:
        _args.check_scale_fits(scale, call.values.dtype)
    n_levels = len(call.levels)
    if num_threads is not None:
        _plan.team_size(num_threads, 0)  # a bad num_threads fails on any call
    if call.kernel_out.size:
        level_of = _levels_of(call, n_levels, k_min, k_max, rule, canonical, level0)
        unpooled = level_of < 0
        if unpooled.any():
            call.kernel_out[unpooled] = 0
        plan, blocks = _level_plan(call, level_of, n_levels, num_threads, variant,
                                   call.kernel_out.size, grouped=False)
        _plan.run(KERNELS, "forward", build, cast(_args.Call, call), plan,
                  (sampling_ratio, aligned, list(call.levels), level_of,
                   np.array(scale_list, dtype=np.float64), blocks, call.kernel_out),
                  "multiscale_roi_align")
    return _args.deliver(cast(_args.Call, call))


def multiscale_roi_align_backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                                  level_shapes: Sequence[Sequence[SupportsIndex]],
                                  output_size: OutputSize, sampling_ratio: SupportsIndex = -1,
                                  *, scales: Optional[Sequence[Real]] = None,
                                  image_sizes: Optional[ImageSizes] = None,
                                  aligned: Bool = False, canonical_scale: Optional[Real] = None,
                                  canonical_level: Optional[SupportsIndex] = None,
                                  level_rule: LevelRule = "torchvision",
                                  layout: Layout = "NCHW",
                                  out: Optional[Sequence[npt.NDArray[Any]]] = None,
                                  num_threads: Optional[SupportsIndex] = None
                                  ) -> List[npt.NDArray[Any]]:
    """Gradient of :func:`multiscale_roi_align` with respect to every level's features.

    The backward recomputes the forward's level assignment and scales from the same
    arguments: give it the same `boxes`, `output_size`, `sampling_ratio`, `aligned`,
    `level_rule`, `canonical_scale`, `canonical_level`, `layout`, and the same `scales` or
    `image_sizes`, with `level_shapes` the shapes of the forward's levels (in the order
    pooled: after featmap_names filtering). Each box's gradient is
    :func:`roi_align_backward`'s on its level (torchvision's, bit for bit). Work is split
    by (level, image, channel block): no two threads write the same element, no atomics,
    bit-identical results for any `num_threads`.

    Parameters
    ----------
    grad_output : ndarray
        Gradient of the pooled output, ``(K, C, PH, PW)`` (NCHW) or ``(K, PH, PW, C)``.
    boxes, output_size, sampling_ratio, scales, image_sizes, aligned, canonical_scale, \
canonical_level, level_rule, layout
        Exactly as given to :func:`multiscale_roi_align`.
    level_shapes : list of tuples of int
        The shape of each level's features, finest first.
    out : list of ndarrays, optional, keyword-only
        One array per level, of that level's shape, to write the gradients into
        (overwritten); they must not overlap each other or the inputs.
    num_threads : int, optional, keyword-only
        As in :func:`roi_align`.

    Returns
    -------
    list of ndarrays
        One gradient per level, of that level's shape and the dtype of `grad_output` (the
        arrays of `out` when given).

    Raises
    ------
    TypeError, ValueError
        As in :func:`multiscale_roi_align`; also when `grad_output` does not have the
        pooled shape or `level_shapes` do not share N and C.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import multiscale_roi_align_backward
    >>> grad = np.ones((1, 1, 1, 1), np.float32)
    >>> boxes = np.array([[0, 0.0, 0.0, 8.0, 8.0]])
    >>> grads = multiscale_roi_align_backward(grad, boxes, [(1, 1, 8, 8), (1, 1, 4, 4)], 1, 1,
    ...                                       image_sizes=[(8, 8)])
    >>> [float(g.sum()) for g in grads]
    [1.0, 0.0]
    """
    return backward(grad_output, boxes, level_shapes, output_size, sampling_ratio, scales,
                    image_sizes, aligned, canonical_scale, canonical_level, level_rule, layout,
                    out, num_threads)


def backward(grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
             level_shapes: Sequence[Sequence[SupportsIndex]], output_size: OutputSize,
             sampling_ratio: SupportsIndex = -1, scales: Optional[Sequence[Real]] = None,
             image_sizes: Optional[ImageSizes] = None, aligned: Bool = False,
             canonical_scale: Optional[Real] = None,
             canonical_level: Optional[SupportsIndex] = None,
             level_rule: LevelRule = "torchvision", layout: Layout = "NCHW",
             out: Optional[Sequence[npt.NDArray[Any]]] = None,
             num_threads: Optional[SupportsIndex] = None, variant: Optional[str] = None,
             build: Optional[str] = None) -> List[npt.NDArray[Any]]:
    """multiscale_roi_align_backward with the kernel variant and build forced."""
    sampling_ratio, aligned, rule, canonical, level0 = _parameters(
        sampling_ratio, aligned, level_rule, canonical_scale, canonical_level)
    call = _args.level_backward_call(grad_output, boxes, level_shapes, output_size, layout, out)
    scale_list, k_min, k_max = _pyramid(_args.level_heights(call.level_shapes, layout),
                                        scales, image_sizes)
    for scale in scale_list:
        _args.check_scale_fits(scale, call.values.dtype)
    n_levels = len(call.level_shapes)
    if num_threads is not None:
        _plan.team_size(num_threads, 0)
    if call.values.size:
        level_of = _levels_of(call, n_levels, k_min, k_max, rule, canonical, level0)
        plan, blocks = _level_plan(call, level_of, n_levels, num_threads, variant,
                                   sum(int(np.prod(shape)) for shape in call.level_shapes),
                                   grouped=True)
        _plan.run(KERNELS, "backward", build, cast(_args.Call, call), plan,
                  (sampling_ratio, aligned, list(call.kernel_outs), level_of,
                   np.array(scale_list, dtype=np.float64), blocks),
                  "multiscale_roi_align_backward")
    return _args.deliver_levels(call)


class MultiScaleRoIAlign(Pooler):
    """:func:`multiscale_roi_align` with its parameters fixed, like
    ``torchvision.ops.MultiScaleRoIAlign``: called as ``m(features, boxes, image_sizes)``.

    Parameters are validated once, here. Unlike torchvision's module, which keeps the
    scales it inferred on its first call, every call infers them from its own
    `image_sizes`. Instances have a :meth:`backward`, compare equal when their parameters
    are equal, and pickle.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import MultiScaleRoIAlign
    >>> pool = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
    >>> pool
    MultiScaleRoIAlign(featmap_names=['p2', 'p3'], output_size=(7, 7), sampling_ratio=2, canonical_scale=None, canonical_level=None, aligned=False, level_rule='torchvision', layout='NCHW')
    >>> features = {"p2": np.zeros((1, 4, 64, 64), np.float32),
    ...             "p3": np.zeros((1, 4, 32, 32), np.float32)}
    >>> pool(features, [np.array([[0.0, 0.0, 100.0, 100.0]])], [(256, 256)]).shape
    (1, 4, 7, 7)
    """

    _fields = ("featmap_names", "output_size", "sampling_ratio", "canonical_scale",
               "canonical_level", "aligned", "level_rule", "layout")
    featmap_names: List[Any]
    output_size: Tuple[int, int]
    sampling_ratio: int
    canonical_scale: Optional[float]
    canonical_level: Optional[int]
    aligned: bool
    level_rule: LevelRule
    layout: Layout

    def __init__(self, featmap_names: Sequence[Any], output_size: OutputSize,
                 sampling_ratio: SupportsIndex, *, canonical_scale: Optional[Real] = None,
                 canonical_level: Optional[SupportsIndex] = None, aligned: Bool = False,
                 level_rule: LevelRule = "torchvision", layout: Layout = "NCHW") -> None:
        if isinstance(featmap_names, str) or not isinstance(featmap_names, (list, tuple)):
            raise TypeError(f"featmap_names must be a list of names, got {featmap_names!r}")
        if not featmap_names or len(set(featmap_names)) != len(featmap_names):
            raise ValueError(f"featmap_names must be distinct names, at least one, got "
                             f"{list(featmap_names)}")
        self.featmap_names = list(featmap_names)
        self.output_size = _args.check_output_size(output_size)
        self.sampling_ratio = _args.check_int(sampling_ratio, "sampling_ratio")
        self.level_rule = _levels.check_rule(level_rule)
        _levels.check_canonical(canonical_scale, canonical_level, self.level_rule)
        self.canonical_scale = (None if canonical_scale is None
                                else _args.check_spatial_scale(canonical_scale,
                                                               "canonical_scale"))
        self.canonical_level = (None if canonical_level is None
                                else _args.check_int(canonical_level, "canonical_level"))
        self.aligned = _args.check_bool(aligned, "aligned")
        self.layout = _args.check_layout(layout)

    def _params(self) -> Dict[str, Any]:
        """The arguments this instance passes to the functions: featmap_names only picks
        the levels (see _levels)."""
        params = super()._params()
        del params["featmap_names"]
        return params

    def _levels(self, features: Features) -> Tuple[Features, Optional[List[Any]]]:
        """(features, featmap_names) for the function: a dict is filtered by name."""
        if isinstance(features, dict):
            return features, self.featmap_names
        if isinstance(features, (list, tuple)) and len(features) != len(self.featmap_names):
            raise ValueError(f"features holds {len(features)} level(s), featmap_names names "
                             f"{len(self.featmap_names)}: give one map per name")
        return features, None

    def __call__(self, features: Features, boxes: npt.ArrayLike, image_sizes: ImageSizes, *,
                 out: Optional[npt.NDArray[Any]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> npt.NDArray[Any]:
        """Forward: :func:`multiscale_roi_align` of `features` (a dict keyed by
        featmap_names, or a sequence of the levels) over `boxes`."""
        levels, names = self._levels(features)
        return multiscale_roi_align(levels, boxes, **self._params(), image_sizes=image_sizes,
                                    featmap_names=names, out=out, num_threads=num_threads)

    def backward(self, grad_output: npt.ArrayLike, boxes: npt.ArrayLike,
                 level_shapes: Sequence[Sequence[SupportsIndex]], image_sizes: ImageSizes, *,
                 out: Optional[Sequence[npt.NDArray[Any]]] = None,
                 num_threads: Optional[SupportsIndex] = None) -> List[npt.NDArray[Any]]:
        """Gradient w.r.t. each pooled level: :func:`multiscale_roi_align_backward`."""
        return multiscale_roi_align_backward(grad_output, boxes, level_shapes,
                                             **self._params(), image_sizes=image_sizes,
                                             out=out, num_threads=num_threads)
