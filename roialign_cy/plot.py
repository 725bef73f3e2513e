"""Pictures of what the pooling operators read: the Mask R-CNN paper's Figure 3, drawn for
any box (:func:`sampling_figure`), and RoIPool's quantized bins beside RoIAlign's
(:func:`pooling_comparison`).

Nothing drawn is derived here: the RoI, its bins, every sampling point, its bilinear taps
and weights, and RoIPool's bins come from ``roialign_cy._sampling_grid``, which runs the
kernels' own inline geometry code (``_sample_table.pxd``, ``_pool_bins.pxd``) on one box.

Coordinates are the feature map's, as roi_align samples it: pixel ``(i, j)`` holds the value
at ``x = j, y = i`` (the dashed grid's crossings), y pointing down. A box given in
input-image pixels lands at ``box * spatial_scale`` (minus 0.5 with ``aligned=True``).

Needs matplotlib, the ``plot`` extra: ``pip install "roialign-cy[plot]"``. ``import
roialign_cy`` never imports this module.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, SupportsIndex, Tuple, Union

import numpy as np
import numpy.typing as npt

try:
    from matplotlib.axes import Axes
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
except ImportError as _missing:  # private: stubtest reads the name as a module attribute
    raise ImportError(
        "roialign_cy.plot needs matplotlib, which is not installed: "
        'pip install "roialign-cy[plot]" (or pip install matplotlib)'
    ) from _missing

from roialign_cy import _args, _sampling_grid
from roialign_cy._args import Bool, OutputSize, Real

__all__ = ["sampling_figure", "pooling_comparison"]

# A figure shows every sampling point: past this many it is a blot, so it is refused.
MAX_SAMPLES = 10_000
# Maps up to this size on each side are shown whole; a larger one only around the RoI.
WHOLE_MAP = 32
# The grid is drawn over the view only; this many pixels are kept around the RoI.
MARGIN = 1.5

SampleIndex = Union[SupportsIndex, Tuple[SupportsIndex, SupportsIndex, SupportsIndex,
                                         SupportsIndex]]

_GRID_COLOR = "0.6"
_ROI_COLOR = "C0"
_SAMPLE_COLOR = "C3"
_TAP_COLOR = "C2"
_POOL_COLORS = ("C1", "C4")
_INSET = 0.07  # RoIPool bin outlines, inside their pixels
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
              "alpha": 0.85}


class _Checked(NamedTuple):
    """The checked arguments of one figure."""

    height: int
    width: int
    box: npt.NDArray[np.float64]   # (4,) x1, y1, x2, y2, C-contiguous
    pooled: Tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool


def _check(map_size: Any, box: Any, output_size: Any, spatial_scale: Any,
           sampling_ratio: Any, aligned: Any) -> _Checked:
    """Check a figure's arguments through roialign_cy's one validation path (_args)."""
    if not isinstance(map_size, (tuple, list)) or len(map_size) != 2:
        raise ValueError(f"map_size must be a pair (H, W), got {map_size!r}")
    height, width = (_args.check_int(size, "map_size", minimum=1) for size in map_size)
    try:
        shape = np.shape(box)
    except ValueError:  # a ragged sequence
        shape = None
    if shape != (4,):
        raise ValueError(f"box must be one box [x1, y1, x2, y2] (4 numbers), got {box!r}")
    _, coords = _args.check_boxes(np.asarray(box)[np.newaxis], 1, True, np.dtype(np.float64),
                                  "box")
    return _Checked(height, width, np.ascontiguousarray(coords[0]),
                    _args.check_output_size(output_size),
                    _args.check_spatial_scale(spatial_scale),
                    _args.check_int(sampling_ratio, "sampling_ratio"),
                    _args.check_bool(aligned, "aligned"))


def _samples(checked: _Checked) -> Tuple[Dict[str, float], Dict[str, npt.NDArray[Any]]]:
    """(the RoI's geometry, every sample and its taps), refusing grids too big to draw."""
    ph, pw = checked.pooled
    grid = _sampling_grid.roi_geometry(checked.box, checked.spatial_scale, checked.aligned,
                                       ph, pw, checked.sampling_ratio)
    n_samples = ph * pw * grid["grid_h"] * grid["grid_w"]
    if n_samples > MAX_SAMPLES:
        raise ValueError(
            f"sampling_ratio={checked.sampling_ratio} and output_size {ph}x{pw} give "
            f"{n_samples:.0f} sampling points ({grid['grid_h']:.0f}x{grid['grid_w']:.0f} per "
            f"bin) for this box; a figure shows at most {MAX_SAMPLES}: pass a smaller "
            f"output_size or sampling_ratio"
        )
    samples = _sampling_grid.roi_align_samples(checked.box, checked.spatial_scale,
                                               checked.aligned, ph, pw,
                                               checked.sampling_ratio, checked.height,
                                               checked.width)
    return grid, samples


def _sample_index(sample: Any, shape: Tuple[int, ...]) -> Optional[Tuple[int, int, int, int]]:
    """(ph, pw, iy, ix) of the chosen sample: None picks the first (None if there is none);
    a flat index counts in torchvision's order (bins row-major, iy outer, ix inner)."""
    n_samples = int(np.prod(shape))
    if sample is None:
        return None if n_samples == 0 else (0, 0, 0, 0)
    if isinstance(sample, (tuple, list)):
        if len(sample) != 4:
            raise ValueError(f"sample must be a flat index or (bin_y, bin_x, iy, ix), got "
                             f"{sample!r}")
        bin_y, bin_x, iy, ix = (_args.check_int(value, "sample") for value in sample)
        names = ("bin_y", "bin_x", "iy", "ix")
        for name, value, bound in zip(names, (bin_y, bin_x, iy, ix), shape):
            if not 0 <= value < bound:
                raise ValueError(f"sample {name}={value} is outside [0, {bound}) for this box "
                                 f"(bins {shape[0]}x{shape[1]}, {shape[2]}x{shape[3]} "
                                 f"samples per bin)")
        return bin_y, bin_x, iy, ix
    flat = _args.check_int(sample, "sample")
    if not -n_samples <= flat < n_samples:
        raise ValueError(f"sample {flat} is outside [-{n_samples}, {n_samples}): this box "
                         f"has {n_samples} sampling points")
    bin_y, bin_x, iy, ix = (int(i) for i in np.unravel_index(flat % n_samples, shape))
    return bin_y, bin_x, iy, ix


def _view(checked: _Checked, grid: Dict[str, float]) -> Tuple[float, float, float, float]:
    """(x_low, x_high, y_low, y_high) shown: the map (if small) and the RoI, with a margin."""
    ph, pw = checked.pooled
    roi_x = (grid["start_x"], grid["start_x"] + pw * grid["bin_w"])
    roi_y = (grid["start_y"], grid["start_y"] + ph * grid["bin_h"])
    xs, ys = list(roi_x), list(roi_y)
    if max(checked.height, checked.width) <= WHOLE_MAP:
        xs += [-1.0, float(checked.width)]
        ys += [-1.0, float(checked.height)]
    return (min(xs) - MARGIN, max(xs) + MARGIN, min(ys) - MARGIN, max(ys) + MARGIN)


def _draw_map(ax: Axes, checked: _Checked, view: Tuple[float, float, float, float]) -> None:
    """The feature map as in Figure 3: dashed lines through the pixels, a dot per pixel,
    within the view; and the region a sample must lie in to be read, [-1, W] x [-1, H]."""
    x_low, x_high, y_low, y_high = view
    cols = np.arange(max(0, int(np.ceil(x_low))), min(checked.width - 1, int(x_high)) + 1)
    rows = np.arange(max(0, int(np.ceil(y_low))), min(checked.height - 1, int(y_high)) + 1)
    top, bottom = max(y_low, 0.0), min(y_high, checked.height - 1.0)
    left, right = max(x_low, 0.0), min(x_high, checked.width - 1.0)
    segments = ([[(float(c), top), (float(c), bottom)] for c in cols.tolist()]
                + [[(left, float(r)), (right, float(r))] for r in rows.tolist()])
    ax.add_collection(LineCollection(segments, colors=_GRID_COLOR, linestyles="--",
                                     linewidths=0.8, gid="feature-grid", zorder=1))
    if len(cols) and len(rows):
        grid_x, grid_y = np.meshgrid(cols, rows)
        ax.scatter(grid_x.ravel(), grid_y.ravel(), s=9, color=_GRID_COLOR, gid="grid-points",
                   zorder=1)
    ax.add_patch(Rectangle((-1.0, -1.0), checked.width + 1.0, checked.height + 1.0, fill=False,
                           edgecolor=_GRID_COLOR, linestyle=":", linewidth=0.8,
                           gid="sampling-region", zorder=1))


def _map_legend() -> List[Any]:
    """Legend entries of what _draw_map draws."""
    return [Line2D([], [], color=_GRID_COLOR, linestyle="--", marker=".", label="feature map"),
            Line2D([], [], color=_GRID_COLOR, linestyle=":", label="[-1, W] x [-1, H]: read")]


def _draw_roi(ax: Axes, checked: _Checked, grid: Dict[str, float]) -> None:
    """The RoI as roi_align samples it (after legacy mode's 1x1 stretch) and its bins."""
    ph, pw = checked.pooled
    x0, y0 = grid["start_x"], grid["start_y"]
    x1, y1 = x0 + pw * grid["bin_w"], y0 + ph * grid["bin_h"]
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=_ROI_COLOR,
                           linewidth=2.0, gid="roi", zorder=3))
    segments = ([[(x0 + p * grid["bin_w"], y0), (x0 + p * grid["bin_w"], y1)]
                 for p in range(1, pw)]
                + [[(x0, y0 + p * grid["bin_h"]), (x1, y0 + p * grid["bin_h"])]
                   for p in range(1, ph)])
    ax.add_collection(LineCollection(segments, colors=_ROI_COLOR, linewidths=1.0, gid="bins",
                                     zorder=3))


def _sample_points(samples: Dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """(PH, PW, grid_h, grid_w, 2): every sample's (x, y), in torchvision's order."""
    y, x = samples["y"], samples["x"]
    ph, gh = y.shape
    pw, gw = x.shape
    points = np.empty((ph, pw, gh, gw, 2))
    points[..., 0] = x[np.newaxis, :, np.newaxis, :]
    points[..., 1] = y[:, np.newaxis, :, np.newaxis]
    return points


def _marker_area(ax: Axes, view: Tuple[float, float, float, float], spacing: float) -> float:
    """A scatter marker area (points**2) that keeps samples `spacing` apart from touching."""
    width_points = ax.get_window_extent().width * 72.0 / ax.figure.dpi
    per_unit = width_points / (view[1] - view[0])
    diameter = min(7.0, max(2.0, 0.6 * spacing * per_unit))
    return float(diameter ** 2)


def _draw_samples(ax: Axes, grid: Dict[str, float], samples: Dict[str, npt.NDArray[Any]],
                  view: Tuple[float, float, float, float]) -> None:
    """Every sampling point, in torchvision's order; hollow where it lies outside
    [-1, H] x [-1, W] (it contributes 0, nothing is read)."""
    points = _sample_points(samples).reshape(-1, 2)
    inside = samples["inside"].ravel()
    faces = np.zeros((len(points), 4))
    faces[inside] = to_rgba(_SAMPLE_COLOR)
    spacing = min(abs(grid["bin_h"]) / max(grid["grid_h"], 1.0),
                  abs(grid["bin_w"]) / max(grid["grid_w"], 1.0))
    ax.scatter(points[:, 0], points[:, 1], s=_marker_area(ax, view, spacing), facecolors=faces,
               edgecolors=_SAMPLE_COLOR, linewidths=1.0, gid="samples", zorder=4)


def _draw_taps(ax: Axes, samples: Dict[str, npt.NDArray[Any]],
               index: Tuple[int, int, int, int]) -> str:
    """The chosen sample's 4 bilinear taps, each with its weight beside it; its legend label."""
    ph, pw, iy, ix = index
    x, y = float(samples["x"][pw, ix]), float(samples["y"][ph, iy])
    ax.scatter([x], [y], s=110, facecolors="none", edgecolors="k", linewidths=1.2,
               gid="chosen-sample", zorder=5)
    where = f"{index}, x={x:.4g}, y={y:.4g}"
    if not samples["inside"][index]:
        ax.annotate("outside [-1, H] x [-1, W]:\ncontributes 0", (x, y), xytext=(8, 8),
                    textcoords="offset points", fontsize=8, bbox=_LABEL_BOX, gid="tap-weight")
        return where + " (outside: 0)"
    rows = samples["tap_rows"][index]
    cols = samples["tap_cols"][index]
    weights = samples["tap_weights"][index]
    ax.add_collection(LineCollection([[(x, y), (c, r)] for r, c in zip(rows, cols)],
                                     colors=_TAP_COLOR, linestyles=":", linewidths=1.2,
                                     gid="tap-links", zorder=4))
    ax.scatter(cols, rows, s=60, marker="s", color=_TAP_COLOR, gid="taps", zorder=5)
    # Clamped taps share a pixel (at the map's border): one label lists their weights.
    shared: Dict[Tuple[int, int], List[float]] = {}
    for r, c, w in zip(rows.tolist(), cols.tolist(), weights.tolist()):
        shared.setdefault((r, c), []).append(w)
    for (r, c), tap_weights in shared.items():
        dx, dy = np.sign(c - x) or 1.0, np.sign(r - y) or 1.0
        ax.annotate(" + ".join(f"{w:.4g}" for w in tap_weights), (c, r),
                    xytext=(7 * dx, 7 * dy), textcoords="offset points", fontsize=8,
                    ha="left" if dx > 0 else "right", va="top" if dy > 0 else "bottom",
                    color="k", bbox=_LABEL_BOX, gid="tap-weight", zorder=6)
    return where


def _finish(ax: Axes, view: Tuple[float, float, float, float], title: str,
            handles: Sequence[Any]) -> None:
    """Limits (y down, as an image), ticks on the pixels, title, legend below the axes."""
    x_low, x_high, y_low, y_high = view
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_high, y_low)
    ax.set_aspect("equal")
    if x_high - x_low <= 2 * WHOLE_MAP:
        ax.set_xticks(np.arange(np.ceil(x_low), np.floor(x_high) + 1))
    if y_high - y_low <= 2 * WHOLE_MAP:
        ax.set_yticks(np.arange(np.ceil(y_low), np.floor(y_high) + 1))
    ax.set_xlabel("x (feature-map column)")
    ax.set_ylabel("y (feature-map row)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
              fontsize=8, frameon=False)


def _box_text(checked: _Checked) -> str:
    """The box and scale as given, for titles."""
    box = ", ".join(f"{v:g}" for v in checked.box.tolist())
    scale = f" x {checked.spatial_scale:g}" if checked.spatial_scale != 1 else ""
    return f"box [{box}]{scale}"


def _draw_align(ax: Axes, checked: _Checked, grid: Dict[str, float],
                samples: Dict[str, npt.NDArray[Any]],
                index: Optional[Tuple[int, int, int, int]]) -> None:
    """sampling_figure's drawing, on ax: the taps of sample `index` (None: no taps)."""
    view = _view(checked, grid)
    _draw_map(ax, checked, view)
    _draw_roi(ax, checked, grid)
    _draw_samples(ax, grid, samples, view)
    handles = _map_legend() + [
        Line2D([], [], color=_ROI_COLOR, linewidth=2, label="RoI and its bins"),
        Line2D([], [], linestyle="", marker="o", color=_SAMPLE_COLOR, label="sampling points")]
    if not samples["inside"].all():
        handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none",
                              color=_SAMPLE_COLOR, label="outside: contribute 0"))
    if index is not None:
        label = _draw_taps(ax, samples, index)
        handles.append(Line2D([], [], linestyle=":", marker="s", color=_TAP_COLOR,
                              label=f"taps (weights) of {label}"))
    ph, pw = checked.pooled
    title = (f"RoIAlign: {ph}x{pw} bins, {grid['grid_h']:.0f}x{grid['grid_w']:.0f} samples per "
             f"bin\n{_box_text(checked)}, aligned={checked.aligned}")
    _finish(ax, view, title, handles)


def sampling_figure(map_size: Sequence[SupportsIndex], box: npt.ArrayLike,
                    output_size: OutputSize, spatial_scale: Real = 1.0,
                    sampling_ratio: SupportsIndex = 2, aligned: Bool = False, *,
                    sample: Optional[SampleIndex] = None,
                    ax: Optional[Axes] = None) -> Axes:
    """Draw what :func:`roialign_cy.roi_align` samples for one box: the paper's Figure 3.

    The feature map's grid, the RoI, its bins, every sampling point, and for one chosen
    sample its four bilinear taps with their weights written beside them. Every coordinate
    and weight comes from the kernels' own geometry code, evaluated in float64 (roi_align on
    float32 features evaluates it in float32: the same points to about 1e-7 pixel).

    Parameters
    ----------
    map_size : (int, int)
        The feature map's ``(H, W)``.
    box : array_like, 4 numbers
        ``[x1, y1, x2, y2]`` in input-image pixels, as a row of roi_align's `boxes`.
    output_size : int or (int, int)
        roi_align's pooled size ``(PH, PW)``: the bins.
    spatial_scale : float, default 1.0
        Feature-map pixels per input-image pixel, as in roi_align.
    sampling_ratio : int, default 2
        Samples per bin along each axis; ``<= 0``: adaptive, as in roi_align.
    aligned : bool, default False
        As in roi_align: True shifts the box by -0.5 pixel; False stretches a box under 1x1
        to 1x1 (the RoI drawn is the stretched one, the region really sampled).
    sample : int or (int, int, int, int), optional, keyword-only
        Whose taps to draw: ``(bin_y, bin_x, iy, ix)``, or a flat index in roi_align's
        order (bins row-major, then ``iy``, then ``ix``; negative counts from the end).
        None: the first sample of the first bin. A sample outside ``[-1, H] x [-1, W]`` has
        no taps (it contributes 0); the figure says so.
    ax : matplotlib.axes.Axes, optional, keyword-only
        Where to draw; None makes a new figure with ``matplotlib.pyplot``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on (`ax` when given; ``.figure`` is its figure). Its artists carry
        ``gid``s: ``"samples"`` (every sampling point, in roi_align's order; hollow, face
        alpha 0, where outside the map), ``"taps"``, ``"tap-weight"`` (texts), ``"roi"``,
        ``"bins"``, ``"feature-grid"``.

    Raises
    ------
    TypeError, ValueError
        A bad argument, named as roi_align names it; `sample` out of range; a grid of
        more than MAX_SAMPLES (10000) sampling points, too many to draw.
    ImportError
        At import of roialign_cy.plot, when matplotlib is not installed.

    Notes
    -----
    Coordinates are the feature map's: pixel ``(i, j)`` is the value at ``x = j, y = i``,
    y pointing down. A sample at ``(y, x)`` reads pixels ``floor(y), floor(y) + 1`` and
    ``floor(x), floor(x) + 1`` with weights ``(1 - ly, ly) x (1 - lx, lx)``; coordinates
    in ``[-1, 0)`` read row/column 0 and at or beyond ``H - 1`` the last row (torchvision's
    clamp), so taps can coincide at the border (their weights are then listed together).
    Maps larger than 32 pixels a side are shown around the RoI only.

    Examples
    --------
    >>> from roialign_cy.plot import sampling_figure
    >>> ax = sampling_figure((6, 6), [22, 13, 68, 61], output_size=2, spatial_scale=1 / 16)
    >>> ax.figure.savefig("figure3.png", dpi=100, bbox_inches="tight")  # doctest: +SKIP
    """
    checked = _check(map_size, box, output_size, spatial_scale, sampling_ratio, aligned)
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    grid, samples = _samples(checked)
    index = _sample_index(sample, samples["inside"].shape)
    if ax is None:  # only now: a bad argument leaves no empty figure behind
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(6.0, 6.5)).add_subplot()
    _draw_align(ax, checked, grid, samples, index)
    return ax


def _draw_pool(ax: Axes, checked: _Checked, grid: Dict[str, float]) -> None:
    """RoIPool's bins, as its kernels form them, on ax: each the pixels it maxes over."""
    ph, pw = checked.pooled
    y_start, y_end, x_start, x_end = _sampling_grid.roi_pool_bins(
        checked.box, checked.spatial_scale, ph, pw, checked.height, checked.width)
    view = _view(checked, grid)
    _draw_map(ax, checked, view)
    empty = 0
    for p in range(ph):
        for q in range(pw):
            if y_end[p] <= y_start[p] or x_end[q] <= x_start[q]:
                empty += 1
                continue
            # Pixels [start, end) are the cells around the crossings start .. end - 1.
            # Bins overlap (floor/ceil): each outline is drawn inset, so all stay visible.
            color = _POOL_COLORS[(p + q) % 2]
            ax.add_patch(Rectangle((x_start[q] - 0.5, y_start[p] - 0.5),
                                   float(x_end[q] - x_start[q]), float(y_end[p] - y_start[p]),
                                   facecolor=to_rgba(color, 0.15), edgecolor="none",
                                   gid="roi_pool-bin", zorder=2))
            ax.add_patch(Rectangle((x_start[q] - 0.5 + _INSET, y_start[p] - 0.5 + _INSET),
                                   x_end[q] - x_start[q] - 2 * _INSET,
                                   y_end[p] - y_start[p] - 2 * _INSET, fill=False,
                                   edgecolor=color, linewidth=1.5, zorder=2))
    x0, y0 = grid["start_x"], grid["start_y"]
    ax.add_patch(Rectangle((x0, y0), pw * grid["bin_w"], ph * grid["bin_h"], fill=False,
                           edgecolor=_ROI_COLOR, linewidth=2.0, linestyle="--", gid="roi",
                           zorder=3))
    handles = _map_legend() + [
        Line2D([], [], color=_ROI_COLOR, linewidth=2, linestyle="--", label="RoIAlign's RoI"),
        Rectangle((0, 0), 1, 1, facecolor=to_rgba(_POOL_COLORS[0], 0.15),
                  edgecolor=_POOL_COLORS[0], label="RoIPool bins (pixels maxed)")]
    suffix = f", {empty} empty (0)" if empty else ""
    title = (f"RoIPool: {ph}x{pw} bins quantized to pixels{suffix}\n{_box_text(checked)}, "
             f"rounded")
    _finish(ax, view, title, handles)


def pooling_comparison(map_size: Sequence[SupportsIndex], box: npt.ArrayLike,
                       output_size: OutputSize, spatial_scale: Real = 1.0,
                       sampling_ratio: SupportsIndex = 2, aligned: Bool = False, *,
                       axes: Optional[Sequence[Axes]] = None) -> Tuple[Axes, Axes]:
    """Draw RoIPool's quantized bins beside RoIAlign's on the same box: the misalignment
    the paper removes.

    Left, :func:`roialign_cy.roi_pool`'s bins (box corners rounded to pixels, bins floored
    and ceiled, clipped to the map), as its kernels form them, over the RoI that RoIAlign
    samples (dashed); right, :func:`sampling_figure` of the same arguments.

    Parameters
    ----------
    map_size, box, output_size, spatial_scale
        As in :func:`sampling_figure`; roi_pool takes these four.
    sampling_ratio, aligned
        As in :func:`sampling_figure`; they change the RoIAlign panel and the dashed RoI
        only (roi_pool has neither).
    axes : pair of matplotlib.axes.Axes, optional, keyword-only
        Where to draw (RoIPool, RoIAlign); None makes a new figure of two panels with
        ``matplotlib.pyplot``.

    Returns
    -------
    (matplotlib.axes.Axes, matplotlib.axes.Axes)
        The RoIPool axes (its bins carry ``gid="roi_pool-bin"``) and the RoIAlign axes (as
        :func:`sampling_figure`'s).

    Raises
    ------
    TypeError, ValueError
        As :func:`sampling_figure`; `axes` not a pair of Axes.

    Examples
    --------
    >>> from roialign_cy.plot import pooling_comparison
    >>> pool_ax, align_ax = pooling_comparison((7, 7), [22, 13, 68, 61], 3, 1 / 16)
    """
    checked = _check(map_size, box, output_size, spatial_scale, sampling_ratio, aligned)
    if axes is not None:
        pair = tuple(axes) if isinstance(axes, (tuple, list, np.ndarray)) else ()
        if len(pair) != 2 or not all(isinstance(ax, Axes) for ax in pair):
            raise TypeError(f"axes must be a pair of matplotlib Axes, got {axes!r}")
    grid, samples = _samples(checked)
    if axes is None:  # only now: a bad argument leaves no empty figure behind
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(11.0, 6.5))
        pair = (figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2))
    _draw_pool(pair[0], checked, grid)
    _draw_align(pair[1], checked, grid, samples, None)
    return pair[0], pair[1]
