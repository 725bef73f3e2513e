"""Feature-pyramid levels: which level each box is pooled from, and each level's scale.

The three rules are the frameworks' own formulas, evaluated as they evaluate them: in the
boxes' float type, one rounded operation at a time, eps where each puts it (read from their
sources; see SEMANTICS.md "Multi-level (FPN) pooling"):

- "torchvision", ``torchvision/ops/poolers.py`` ``LevelMapper``:
  ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``, clamped to
  ``[k_min, k_max]``, minus k_min;
- "detectron2", ``detectron2/modeling/poolers.py`` ``assign_boxes_to_levels`` (commit
  2bd05b42983468c50a1c80d5e7dc3952980e1cd4): ``floor(canonical_level + log2(sqrt(area) /
  canonical_box_size + 1e-8))``, clamped to ``[min_level, max_level]``, minus min_level;
- "mmdet", ``mmdet/models/roi_heads/roi_extractors/single_level_roi_extractor.py``
  ``SingleRoIExtractor.map_roi_levels`` (commit 5adf822f2deb071cba1ecd68f7ee225e4c796611):
  ``floor(log2(sqrt(area) / finest_scale + 1e-6))`` clamped to ``[0, num_levels - 1]``.

area is ``(x2 - x1) * (y2 - y1)``. A box with a negative area (inverted along one axis) has
no level in any framework (its NaN level matches none, so its output stays 0): here its
level is -1.
"""

from __future__ import annotations

import math
from typing import Any, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from roialign_cy import _args

# Unions of one-value Literals, as _args.Layout (mypy.stubtest reads them right).
LevelRule = Union[Literal["torchvision"], Literal["detectron2"], Literal["mmdet"]]
RULES: Tuple[LevelRule, ...] = ("torchvision", "detectron2", "mmdet")
# (canonical_scale, canonical_level) each rule takes for None; mmdet's canonical_scale is
# its finest_scale and it has no canonical level.
DEFAULTS = {"torchvision": (224.0, 4), "detectron2": (224.0, 4), "mmdet": (56.0, 0)}
NO_LEVEL = -1


def check_rule(rule: Any, name: str = "level_rule") -> LevelRule:
    """Return rule if it is one of RULES."""
    if type(rule) is not str or rule not in RULES:
        raise ValueError(f"{name} must be one of {RULES}, got {rule!r}")
    return rule  # type: ignore[return-value, unused-ignore]


def check_canonical(canonical_scale: Any, canonical_level: Any, rule: str) -> Tuple[float, int]:
    """(canonical_scale, canonical_level) checked, None taking the rule's defaults."""
    default_scale, default_level = DEFAULTS[rule]
    scale = default_scale if canonical_scale is None else _args.check_spatial_scale(
        canonical_scale, "canonical_scale")
    level = default_level if canonical_level is None else _args.check_int(
        canonical_level, "canonical_level")
    return scale, level


def box_levels(coords: npt.NDArray[Any], k_min: int, k_max: int, canonical_scale: float,
               canonical_level: int, rule: str) -> npt.NDArray[np.intp]:
    """Each box's level index (level - k_min; -1: none) from (K, 4) x1, y1, x2, y2 coords,
    evaluated in their float type (float32 or float64), as `rule` evaluates it."""
    t = coords.dtype.type
    x1, y1, x2, y2 = coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]
    with np.errstate(all="ignore"):
        size = np.sqrt((x2 - x1) * (y2 - y1))
        if rule == "torchvision":
            level = np.floor((t(canonical_level) + np.log2(size / t(canonical_scale)))
                             + t(1e-6))
            low, high = k_min, k_max
        elif rule == "detectron2":
            level = np.floor(t(canonical_level) + np.log2(size / t(canonical_scale) + t(1e-8)))
            low, high = k_min, k_max
        else:  # mmdet: 0-based already
            level = np.floor(np.log2(size / t(canonical_scale) + t(1e-6)))
            low, high = 0, k_max - k_min
        level = np.clip(level, low, high)
    result = np.full(len(coords), NO_LEVEL, dtype=np.intp)
    known = level == level  # not NaN
    result[known] = level[known].astype(np.intp) - low
    return result


def assign_levels(boxes: npt.ArrayLike, k_min: Any, k_max: Any,
                  canonical_scale: Optional[float] = None, canonical_level: Optional[int] = None,
                  rule: LevelRule = "torchvision") -> npt.NDArray[np.int64]:
    """The pyramid level each box is pooled from, by a framework's rule.

    Parameters
    ----------
    boxes : ndarray (K, 4) or (K, 5), or list of ndarrays (K_i, 4)
        ``[x1, y1, x2, y2]`` in input-image pixels; ``(K, 5)`` rows ``[batch_index, x1, y1,
        x2, y2]`` and torchvision's list of per-image arrays are accepted too. The formula
        is evaluated in the boxes' float type (float16 in float32, integers in float64).
    k_min, k_max : int
        The pyramid's first and last level (``-log2`` of their scales: 2 and 5 for strides
        4 to 32).
    canonical_scale : float, optional
        The box size (sqrt of its area) that maps to `canonical_level`. None: 224 for
        "torchvision" and "detectron2"; for "mmdet" its ``finest_scale``, 56.
    canonical_level : int, optional
        None: 4. Unused by "mmdet", which maps ``[0, 2 * finest_scale)`` to level 0.
    rule : {"torchvision", "detectron2", "mmdet"}
        torchvision's ``LevelMapper``, detectron2's ``assign_boxes_to_levels``, mmdet's
        ``SingleRoIExtractor.map_roi_levels``; each gives that framework's choice on its
        own inputs (float type and eps placement as in their current sources).

    Returns
    -------
    ndarray of int64, (K,)
        Each box's level minus k_min, in ``[0, k_max - k_min]``, as all three frameworks
        return it; -1 for a box with a negative area (inverted along one axis), which no
        framework pools (its output is 0).

    Raises
    ------
    TypeError, ValueError
        A bad argument, named: boxes of the wrong shape or with a NaN, k_max < k_min, an
        unknown rule, ...

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import assign_levels
    >>> boxes = np.array([[0, 0, 32, 32], [0, 0, 224, 224], [0, 0, 800, 800.]], np.float32)
    >>> assign_levels(boxes, 2, 5)
    array([0, 2, 3])
    >>> assign_levels(boxes, 2, 5, rule="mmdet")
    array([0, 2, 3])
    """
    rule = check_rule(rule, "rule")
    low = _args.check_int(k_min, "k_min")
    high = _args.check_int(k_max, "k_max")
    if high < low:
        raise ValueError(f"k_max must be >= k_min, got k_min={low}, k_max={high}")
    scale, level = check_canonical(canonical_scale, canonical_level, rule)
    coords = _box_coords(boxes)
    return box_levels(coords, low, high, scale, level, rule).astype(np.int64)


def _box_coords(boxes: Any) -> npt.NDArray[Any]:
    """(K, 4) coordinates of assign_levels' boxes, in their float type, checked finite."""
    if isinstance(boxes, (list, tuple)) and boxes and all(
            np.ndim(part) == 2 for part in boxes):
        parts = [np.asarray(part) for part in boxes]
        for i, part in enumerate(parts):
            if part.shape[1:] != (4,):
                raise ValueError(f"boxes[{i}] must have shape (K_i, 4), got {part.shape}")
        array = np.concatenate(parts)
    else:
        array = np.asarray(boxes)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"boxes must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] not in (4, 5):
        raise ValueError(f"boxes must have shape (K, 4) or (K, 5), got {array.shape}")
    dtype = (_args.compute_dtype(array.dtype, "boxes") if array.dtype.kind == "f"
             else np.dtype(np.float64))
    coords = np.ascontiguousarray(array[:, -4:], dtype=dtype)
    if not np.isfinite(coords).all():
        row = int(np.argmin(np.isfinite(coords).all(axis=1)))
        raise ValueError(f"boxes row {row} has a NaN or infinite coordinate: "
                         f"{array[row].tolist()}")
    return coords


def infer_scales(heights: Sequence[int], image_sizes: Any) -> List[float]:
    """Each level's scale from its height and the largest image height, as torchvision's
    _setup_scales/_infer_scale: ``2 ** round(log2(h / max_h))``, log2 and round (half to
    even) in float32. (torchvision infers from the height alone.)"""
    sizes = _check_image_sizes(image_sizes)
    max_h = max(h for h, _ in sizes)
    scales = []
    for height in heights:
        approx = np.float32(float(height) / float(max_h))
        with np.errstate(all="ignore"):
            exponent = float(np.round(np.log2(approx)))
        scales.append(2 ** exponent)
    return scales


def _check_image_sizes(image_sizes: Any) -> List[Tuple[int, int]]:
    """image_sizes as a list of (h, w) pairs of ints >= 1."""
    if isinstance(image_sizes, np.ndarray):
        image_sizes = image_sizes.tolist()
    if not isinstance(image_sizes, (list, tuple)) or not image_sizes:
        raise ValueError(f"image_sizes must be a non-empty list of (height, width), "
                         f"got {image_sizes!r}")
    sizes = []
    for size in image_sizes:
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"image_sizes must hold (height, width) pairs, got {size!r}")
        sizes.append((_args.check_int(size[0], "image_sizes", minimum=1),
                      _args.check_int(size[1], "image_sizes", minimum=1)))
    return sizes


def check_scales(scales: Any, n_levels: int) -> List[float]:
    """One spatial scale per level, each finite and > 0."""
    if isinstance(scales, np.ndarray):
        scales = scales.tolist()
    if not isinstance(scales, (list, tuple)):
        raise TypeError(f"scales must be a list of floats (one per level), got "
                        f"{type(scales).__name__}")
    if len(scales) != n_levels:
        raise ValueError(f"scales must hold one scale per level: got {len(scales)} for "
                         f"{n_levels} level(s)")
    return [_args.check_spatial_scale(scale, "scales") for scale in scales]


def level_range(scales: Sequence[float]) -> Tuple[int, int]:
    """(k_min, k_max) of a pyramid from its first and last scale, as torchvision's
    _setup_scales: ``int(-log2(scale))`` with log2 in float32."""
    with np.errstate(all="ignore"):
        k_min = -float(np.log2(np.float32(scales[0])))
        k_max = -float(np.log2(np.float32(scales[-1])))
    if not (math.isfinite(k_min) and math.isfinite(k_max)):
        raise ValueError(f"scales {list(scales)} do not fit in float32")
    return int(k_min), int(k_max)
