"""The one bad-input table for every public function, and every accepted form of the
arguments: each bad input is refused before any kernel runs, by a TypeError or ValueError
naming the argument (crash-prone ones also in a child interpreter); each odd but valid
form gives the canonical result."""

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import builtins
import numpy as np
import pytest

from roi_inputs import align_nchw, random_boxes, to_layout

import roialign_cy
from roialign_cy import (
    MultiScaleRoIAlign,
    PSRoIAlign,
    PSRoIPool,
    PrRoIPool,
    RoIAlign,
    RoIAlignRotated,
    RoIPool,
    _args,
    assign_levels,
    multiscale_roi_align,
    multiscale_roi_align_backward,
    prroi_pool,
    prroi_pool_backward,
    ps_roi_align,
    ps_roi_align_backward,
    ps_roi_pool,
    ps_roi_pool_backward,
    roi_align,
    roi_align_backward,
    roi_align_rotated,
    roi_align_rotated_backward,
    roi_pool,
    roi_pool_backward,
)


# ---- Every public entry point refuses bad input before any kernel runs, naming the argument. ---


N, C, H, W = 2, 3, 6, 7


PH = PW = 2


ENTRY_POINTS = {
    "roi_align": roi_align,
    "roi_align_backward": roi_align_backward,
    "roi_pool": roi_pool,
    "roi_pool_backward": roi_pool_backward,
    "RoIAlign": RoIAlign,
    "RoIPool": RoIPool,
    "multiscale_roi_align": multiscale_roi_align,
    "multiscale_roi_align_backward": multiscale_roi_align_backward,
    "MultiScaleRoIAlign": MultiScaleRoIAlign,
    "assign_levels": assign_levels,
    "ps_roi_align": ps_roi_align,
    "ps_roi_align_backward": ps_roi_align_backward,
    "ps_roi_pool": ps_roi_pool,
    "ps_roi_pool_backward": ps_roi_pool_backward,
    "PSRoIAlign": PSRoIAlign,
    "PSRoIPool": PSRoIPool,
    "roi_align_rotated": roi_align_rotated,
    "roi_align_rotated_backward": roi_align_rotated_backward,
    "RoIAlignRotated": RoIAlignRotated,
    "prroi_pool": prroi_pool,
    "prroi_pool_backward": prroi_pool_backward,
    "PrRoIPool": PrRoIPool,
}


ALL4 = ("roi_align", "roi_align_backward", "roi_pool", "roi_pool_backward")


FORWARD = ("roi_align", "roi_pool", "prroi_pool")


BACKWARD = ("roi_align_backward", "roi_pool_backward")


ALIGN = ("roi_align", "roi_align_backward")


CLASSES = ("RoIAlign", "RoIPool")


MULTI = ("multiscale_roi_align", "multiscale_roi_align_backward")


# A 2-level pyramid for (N, C) images of IMAGE_SIZE pixels: strides 4 and 8.
IMAGE_SIZES = [(24, 28)] * N


LEVEL_SHAPES = [(N, C, 6, 7), (N, C, 3, 4)]


# Position-sensitive pooling: the map has C_PS = C * PH * PW channels, the result C.
PS = ("ps_roi_align", "ps_roi_align_backward", "ps_roi_pool", "ps_roi_pool_backward")


PS_FORWARD = ("ps_roi_align", "ps_roi_pool")


PS_BACKWARD = ("ps_roi_align_backward", "ps_roi_pool_backward")


PS_CLASSES = ("PSRoIAlign", "PSRoIPool")


C_PS = C * PH * PW


# Rotated RoIAlign: box rows [batch_index, cx, cy, w, h, angle].
ROT = ("roi_align_rotated", "roi_align_rotated_backward")


def rotated_boxes(dtype=np.float64):
    """Two valid rotated boxes, one per image."""
    return np.array([[0, 2.5, 3.0, 4.0, 2.0, 30.0], [1, 3.0, 2.0, 2.0, 3.0, -45.0]], dtype=dtype)


def bad_rotated_row(value, column, row=1):
    """Valid rotated boxes with boxes[row, column] replaced by value."""
    def make(kwargs):
        rows = rotated_boxes()
        rows[row, column] = value
        return rows
    return make


# Precise RoI Pooling: its forward is in FORWARD; its backward takes input_shape, as
# roi_align_backward does (and `input` only with box_grad=True).
PR = ("prroi_pool", "prroi_pool_backward")


PR_BACKWARD = ("prroi_pool_backward",)


PR_CLASSES = ("PrRoIPool",)


def features(dtype=np.float32, shape=(N, C, H, W)):
    """A valid feature map."""
    return (np.arange(np.prod(shape)).reshape(shape) % 11).astype(dtype)


def boxes(dtype=np.float64):
    """Two valid boxes, one per image."""
    return np.array([[0, 0.5, 0.5, 4.0, 5.0], [1, 1.0, 0.0, 6.0, 3.0]], dtype=dtype)


def grad(shape=(N, C, PH, PW), dtype=np.float32):
    """A valid gradient of the pooled output."""
    return np.ones(shape, dtype=dtype)


def map_shape(name):
    """The (N, C, H, W) features of a valid call of `name`."""
    return (N, C_PS if name in PS else C, H, W)


def base_kwargs(name):
    """Keyword arguments of a valid call of entry point `name`."""
    if name in FORWARD:
        return dict(input=features(), boxes=boxes(), output_size=PH)
    if name in PS_FORWARD:
        return dict(input=features(shape=map_shape(name)), boxes=boxes(), output_size=PH)
    if name in PS_BACKWARD:
        return dict(grad_output=grad(), boxes=boxes(), input_shape=map_shape(name),
                    output_size=PH)
    if name in ("roi_align_backward",) + PR_BACKWARD:
        return dict(grad_output=grad(), boxes=boxes(), input_shape=(N, C, H, W), output_size=PH)
    if name == "roi_pool_backward":
        return dict(grad_output=grad(), boxes=boxes(), input=features(), output_size=PH)
    if name == "multiscale_roi_align":
        return dict(features=pyramid(), boxes=boxes(), output_size=PH, image_sizes=IMAGE_SIZES)
    if name == "multiscale_roi_align_backward":
        return dict(grad_output=grad(), boxes=boxes(), level_shapes=LEVEL_SHAPES,
                    output_size=PH, image_sizes=IMAGE_SIZES)
    if name == "MultiScaleRoIAlign":
        return dict(featmap_names=["p2", "p3"], output_size=PH, sampling_ratio=2)
    if name == "roi_align_rotated":
        return dict(input=features(), boxes=rotated_boxes(), output_size=PH)
    if name == "roi_align_rotated_backward":
        return dict(grad_output=grad(), boxes=rotated_boxes(), input_shape=(N, C, H, W),
                    output_size=PH)
    if name == "assign_levels":
        return dict(boxes=boxes()[:, 1:], k_min=2, k_max=5)
    return dict(output_size=PH)


def pyramid(dtype=np.float32):
    """A valid 2-level pyramid (LEVEL_SHAPES)."""
    return [features(dtype, shape) for shape in LEVEL_SHAPES]


def bad_row(value, column, row=1):
    """Valid boxes with boxes[row, column] replaced by value."""
    def make(kwargs):
        rows = boxes()
        rows[row, column] = value
        return rows
    return make


def readonly(array):
    """array, made read-only."""
    array.flags.writeable = False
    return array


def out_overlapping(kwargs, name):
    """An `out` of the right shape and dtype that is a view into one of the inputs."""
    if name in FORWARD + PS_FORWARD + ("roi_align_rotated",):  # out inside the features' buffer
        return kwargs["input"][:, :C, :PH, :PW]
    if name in PS_BACKWARD:  # grad_output is a view into out
        buffer = np.zeros(N * C_PS * H * W + 64, dtype=np.float32)
        kwargs["grad_output"] = buffer[40:40 + N * C * PH * PW].reshape(N, C, PH, PW)
        return buffer[:N * C_PS * H * W].reshape(map_shape(name))
    buffer = np.zeros(N * C * H * W + 64, dtype=np.float32)
    if name in ("roi_align_backward", "roi_align_rotated_backward") + PR_BACKWARD:  # grad_output inside out
        kwargs["grad_output"] = buffer[40:40 + N * C * PH * PW].reshape(N, C, PH, PW)
    else:  # out is a view into input
        kwargs["input"] = buffer[:N * C * H * W].reshape(N, C, H, W)
    return buffer[:N * C * H * W].reshape(N, C, H, W)


def out_overlapping_boxes(kwargs):
    """A float32 `out` sharing memory with float32 boxes."""
    buffer = np.zeros(64, dtype=np.float32)
    kwargs["boxes"] = buffer[:10].reshape(2, 5)
    kwargs["boxes"][:] = boxes()
    return buffer[:N * C * PH * PW].reshape(N, C, PH, PW)


def _overlapping_level_outs():
    """Two per-level gradient arrays sharing memory."""
    buffer = np.zeros(2 * N * C * 6 * 7, np.float32)
    return [buffer[:N * C * 6 * 7].reshape(LEVEL_SHAPES[0]),
            buffer[10:10 + N * C * 3 * 4].reshape(LEVEL_SHAPES[1])]


def _level_outs_over_grad_output(kwargs):
    """Per-level gradient arrays, the first sharing memory with grad_output."""
    buffer = np.zeros(N * C * 6 * 7, np.float32)
    kwargs["grad_output"] = buffer[:N * C * PH * PW].reshape(N, C, PH, PW)
    return [buffer.reshape(LEVEL_SHAPES[0]), np.zeros(LEVEL_SHAPES[1], np.float32)]


def out_shape(name, nhwc=False):
    """Shape of the result of a valid call of `name`."""
    if name in FORWARD + PS_FORWARD + ("roi_align_rotated",):
        return (N, PH, PW, C) if nhwc else (N, C, PH, PW)
    return map_shape(name)


@dataclass
class Case:
    """One bad input: entry point, changes to its valid kwargs, expected exception, regex."""

    name: str
    what: str
    changes: dict
    exc: type
    match: str
    crash_prone: bool = False
    marks: tuple = ()
    id: str = field(init=False)

    def __post_init__(self):
        self.id = f"{self.name}-{self.what}"

    def kwargs(self):
        """The call's keyword arguments; a callable change is computed from the others."""
        kwargs = base_kwargs(self.name)
        for key, value in self.changes.items():
            kwargs[key] = value(kwargs) if callable(value) else value
        return kwargs

    def call(self):
        """Call the entry point with the bad arguments (RuntimeWarnings silenced)."""
        kwargs = self.kwargs()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return ENTRY_POINTS[self.name](**kwargs)


CASES = []


def add(names, what, changes, exc, match, crash_prone=False, marks=()):
    """Add one case per entry point in `names`."""
    for name in (names,) if isinstance(names, str) else names:
        CASES.append(Case(name, what, dict(changes), exc, match, crash_prone, marks))


# ---- features (`input` of the forwards and of roi_pool_backward) ---------------------------
for name in FORWARD + ("roi_pool_backward",) + PS_FORWARD:
    add(name, "input-2d", {"input": features(shape=(H, W))}, ValueError, r"\binput\b")
    add(name, "input-5d", {"input": features(shape=(1, N, C, H, W))}, ValueError, r"\binput\b")
    add(name, "input-0d", {"input": np.float32(1)}, ValueError, r"\binput\b")
    for dtype in (np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object):
        add(name, f"input-{np.dtype(dtype).name}", {"input": features(dtype)}, TypeError,
            r"\binput\b")
    if np.dtype(np.longdouble).itemsize > 8:
        add(name, "input-longdouble", {"input": features(np.longdouble)}, TypeError, r"\binput\b")
    add(name, "input-str", {"input": "features"}, TypeError, r"\binput\b")


for name in FORWARD + PS_FORWARD:
    add(name, "input-empty-H", {"input": features(shape=(N, C, 0, W))}, ValueError,
        r"\binput\b.*empty")
    add(name, "input-empty-W", {"input": features(shape=(N, C, H, 0))}, ValueError,
        r"\binput\b.*empty")
    add(name, "input-empty-W-nhwc", {"input": features(shape=(N, H, 0, C)), "layout": "NHWC"},
        ValueError, r"\binput\b.*empty")
    add(name, "input-3d-empty", {"input": features(shape=(C, 0, W)),
                                 "boxes": np.zeros((1, 4))}, ValueError, r"\binput\b.*empty")


add("roi_pool_backward", "input-empty-H",
    {"input": features(shape=(N, C, 0, W)), "grad_output": grad()}, ValueError, r"\binput")


add("roi_pool_backward", "input-missing", {"input": None}, ValueError, r"\binput\b")


# ---- input_shape of roi_align_backward --------------------------------------------------------
for what, value, exc in [
    ("2d", (H, W), ValueError), ("5d", (1, N, C, H, W), ValueError),
    ("empty-H", (N, C, 0, W), ValueError), ("empty-W", (N, C, H, 0), ValueError),
    ("negative", (N, C, -1, W), ValueError), ("float", (N, C, 6.0, W), TypeError),
    ("int", 7, TypeError), ("none", None, TypeError), ("str", "NCHW", TypeError),
]:
    for name in ("roi_align_backward",) + PS_BACKWARD + PR_BACKWARD:
        add(name, f"input_shape-{what}", {"input_shape": value}, exc, r"input_shape")


# ---- channels of position-sensitive pooling: a multiple of PH * PW -----------------------------
for name in PS_FORWARD:
    add(name, "channels-not-multiple", {"input": features(shape=(N, C_PS + 1, H, W))},
        ValueError, r"\binput\b has 13 channels.*not a multiple of output_size")
    add(name, "channels-not-multiple-nhwc",
        {"input": features(shape=(N, H, W, C_PS)), "layout": "NHWC", "output_size": (2, 5)},
        ValueError, r"\binput\b has 12 channels.*not a multiple.*2 \* 5 = 10")
    add(name, "channels-fewer-than-bins", {"input": features(shape=(N, 3, H, W))}, ValueError,
        r"\binput\b has 3 channels.*multiple")
    add(name, "channels-3d", {"input": features(shape=(C_PS - 2, H, W)), "boxes": np.zeros((1, 4))},
        ValueError, r"\binput\b has 10 channels")
for name in PS_BACKWARD:
    add(name, "channels-not-multiple", {"input_shape": (N, C_PS + 1, H, W)}, ValueError,
        r"input_shape has 13 channels.*not a multiple of output_size")
    add(name, "channels-not-multiple-nhwc",
        {"input_shape": (N, H, W, 6), "layout": "NHWC"}, ValueError,
        r"input_shape has 6 channels.*multiple")
    add(name, "channels-output_size", {"output_size": 3}, ValueError,
        r"input_shape has 12 channels.*3 \* 3 = 9")


# ---- grad_output of the backwards ---------------------------------------------------------------
for name in BACKWARD + PS_BACKWARD + PR_BACKWARD:
    add(name, "grad_output-shape", {"grad_output": grad((N, C, PH + 1, PW))}, ValueError,
        r"grad_output.*shape")
    add(name, "grad_output-K", {"grad_output": grad((N + 1, C, PH, PW))}, ValueError,
        r"grad_output.*shape")
    add(name, "grad_output-nhwc-shape", {"grad_output": grad((N, PH, PW, C))}, ValueError,
        r"grad_output.*shape")
    add(name, "grad_output-3d", {"grad_output": grad((C, PH, PW))}, ValueError, r"grad_output")
    add(name, "grad_output-int", {"grad_output": grad(dtype=np.int32)}, TypeError, r"grad_output")
    add(name, "grad_output-complex", {"grad_output": grad(dtype=np.complex64)}, TypeError,
        r"grad_output")
    add(name, "grad_output-bool", {"grad_output": grad(dtype=np.bool_)}, TypeError,
        r"grad_output")


add("prroi_pool_backward", "box_grad-without-input", {"box_grad": True}, ValueError,
    r"\binput\b is required with box_grad")
add("prroi_pool_backward", "box_grad-input-shape",
    {"box_grad": True, "input": features(shape=(N, C, H, 5))}, ValueError, r"\binput\b.*shape")
add("prroi_pool_backward", "box_grad-input-int", {"box_grad": True, "input": features(np.int64)},
    TypeError, r"\binput\b")
add("prroi_pool_backward", "box_grad-input-3d",
    {"box_grad": True, "input": features(shape=(C, H, W))}, ValueError, r"\binput\b.*shape")
for what, value in [("str", "yes"), ("int", 1), ("none", None)]:
    add("prroi_pool_backward", f"box_grad-{what}", {"box_grad": value}, TypeError, r"box_grad")


add("roi_align_backward", "max-without-input", {"mode": "max"}, ValueError, r"\binput\b")


add("roi_align_backward", "max-input-shape", {"mode": "max", "input": features(shape=(N, C, H, 5))},
    ValueError, r"\binput\b.*shape")


add("roi_align_backward", "max-input-int", {"mode": "max", "input": features(np.int64)},
    TypeError, r"\binput\b")


# ---- boxes ----------------------------------------------------------------------------------------
for name in ALL4 + PR + MULTI + PS:
    add(name, "boxes-1d", {"boxes": boxes()[0]}, ValueError, r"boxes.*shape")
    add(name, "boxes-3d", {"boxes": boxes()[None]}, ValueError, r"boxes.*shape")
    add(name, "boxes-K4-with-4d-input", {"boxes": boxes()[:, 1:]}, ValueError, r"boxes.*shape")
    add(name, "boxes-K6", {"boxes": np.zeros((2, 6))}, ValueError, r"boxes.*shape")
    add(name, "boxes-complex", {"boxes": boxes(np.complex128)}, TypeError, r"boxes")
    add(name, "boxes-bool", {"boxes": np.ones((2, 5), bool)}, TypeError, r"boxes")
    add(name, "boxes-str", {"boxes": np.full((2, 5), "1")}, TypeError, r"boxes")
    add(name, "boxes-object", {"boxes": np.full((2, 5), None)}, TypeError, r"boxes")
    for column, label in [(1, "x1"), (2, "y1"), (3, "x2"), (4, "y2")]:
        add(name, f"boxes-nan-{label}", {"boxes": bad_row(np.nan, column)}, ValueError,
            r"boxes row 1\b", crash_prone=True)
    add(name, "boxes-inf", {"boxes": bad_row(np.inf, 3)}, ValueError, r"boxes row 1\b",
        crash_prone=True)
    add(name, "boxes-neg-inf", {"boxes": bad_row(-np.inf, 1)}, ValueError, r"boxes row 1\b",
        crash_prone=True)
    add(name, "boxes-overflow-float32", {"boxes": bad_row(1e39, 3)}, ValueError,
        r"boxes row 1\b", crash_prone=True)
    add(name, "boxes-first-row-bad", {"boxes": bad_row(np.nan, 2, row=0)}, ValueError,
        r"boxes row 0\b", crash_prone=True)
    for what, value in [("half", 0.5), ("minus-one", -1), ("N", N), ("huge", 1e20),
                        ("nan", np.nan), ("inf", np.inf), ("neg-inf", -np.inf),
                        ("tiny-fraction", 1 - 1e-12), ("int64-max", 2.0**63)]:
        add(name, f"batch_index-{what}", {"boxes": bad_row(value, 0)}, ValueError,
            r"boxes row 1\b.*batch index", crash_prone=True)
    add(name, "batch_index-int64-array-N", {"boxes": np.array([[0, 0, 0, 2, 2], [N, 0, 0, 2, 2]])},
        ValueError, r"boxes row 1\b.*batch index", crash_prone=True)
    add(name, "boxes-list-short", {"boxes": [boxes()[:1, 1:]]}, ValueError, r"boxes.*list")
    add(name, "boxes-list-long", {"boxes": [boxes()[:1, 1:]] * (N + 1)}, ValueError,
        r"boxes.*list")
    add(name, "boxes-list-empty", {"boxes": []}, ValueError, r"boxes.*list")
    add(name, "boxes-list-item-K5", {"boxes": [boxes()[:1, 1:], boxes()[:1]]}, ValueError,
        r"boxes\[1\]")
    add(name, "boxes-list-item-complex",
        {"boxes": [boxes(np.complex64)[:1, 1:], boxes()[:1, 1:]]}, TypeError, r"boxes\[0\]")
    add(name, "boxes-list-item-nan", {"boxes": [boxes()[:1, 1:], np.array([[0, np.nan, 1, 1]])]},
        ValueError, r"boxes row 1\b", crash_prone=True)


# ---- output_size ----------------------------------------------------------------------------------
for name in (ALL4 + PR + CLASSES + PR_CLASSES + MULTI + ("MultiScaleRoIAlign",) + PS
             + PS_CLASSES):
    for what, value, exc in [
        ("zero", 0, ValueError), ("negative", -1, ValueError), ("float", 2.0, TypeError),
        ("np-float", np.float64(2), TypeError), ("str", "2", TypeError), ("none", None, TypeError),
        ("bool", True, TypeError), ("pair-zero", (2, 0), ValueError),
        ("pair-float", (2, 2.5), TypeError), ("one-tuple", (2,), ValueError),
        ("triple", (2, 2, 2), ValueError), ("too-big", 2**40, ValueError),
    ]:
        add(name, f"output_size-{what}", {"output_size": value}, exc, r"output_size")


# ---- sampling_ratio -------------------------------------------------------------------------------
for name in (ALIGN + ("RoIAlign",) + MULTI + ("MultiScaleRoIAlign",)
             + ("ps_roi_align", "ps_roi_align_backward", "PSRoIAlign")):
    for what, value, exc in [
        ("float", 2.0, TypeError), ("half", 0.5, TypeError), ("str", "2", TypeError),
        ("none", None, TypeError), ("bool", True, TypeError), ("too-big", 2**40, ValueError),
    ]:
        add(name, f"sampling_ratio-{what}", {"sampling_ratio": value}, exc, r"sampling_ratio")


# ---- spatial_scale --------------------------------------------------------------------------------
for name in ALL4 + PR + CLASSES + PR_CLASSES + PS + PS_CLASSES:
    for what, value, exc in [
        ("zero", 0.0, ValueError), ("negative", -0.25, ValueError), ("nan", np.nan, ValueError),
        ("inf", np.inf, ValueError), ("neg-inf", -np.inf, ValueError),
        ("str", "1", TypeError), ("none", None, TypeError), ("complex", 1j, TypeError),
        ("bool", True, TypeError), ("array", np.array([1.0, 2.0]), TypeError),
    ]:
        add(name, f"spatial_scale-{what}", {"spatial_scale": value}, exc, r"spatial_scale")


# ---- layout and mode ------------------------------------------------------------------------------
for name in (ALL4 + PR + CLASSES + PR_CLASSES + MULTI + ("MultiScaleRoIAlign",) + PS
             + PS_CLASSES):
    for what, value in [("lower", "nchw"), ("chw", "CHW"), ("none", None), ("int", 0)]:
        add(name, f"layout-{what}", {"layout": value}, ValueError, r"layout")


for name in ALIGN + ("RoIAlign",):
    for what, value in [("mean", "mean"), ("upper", "MAX"), ("none", None), ("onnx", "max_onnx")]:
        add(name, f"mode-{what}", {"mode": value}, ValueError, r"mode")


# ---- out ------------------------------------------------------------------------------------------
for name in ALL4 + PR + PS:
    shape = out_shape(name)
    add(name, "out-list", {"out": lambda kw, s=shape: np.zeros(s).tolist()}, TypeError, r"\bout\b")
    add(name, "out-shape", {"out": np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32)},
        ValueError, r"\bout\b.*shape")
    add(name, "out-ndim", {"out": np.zeros(shape[1:], np.float32)}, ValueError, r"\bout\b.*shape")
    add(name, "out-float64", {"out": np.zeros(shape, np.float64)}, ValueError, r"\bout\b.*dtype")
    add(name, "out-float16", {"out": np.zeros(shape, np.float16)}, ValueError, r"\bout\b.*dtype")
    add(name, "out-int32", {"out": np.zeros(shape, np.int32)}, ValueError, r"\bout\b.*dtype")
    add(name, "out-readonly", {"out": lambda kw, s=shape: readonly(np.zeros(s, np.float32))},
        ValueError, r"\bout\b.*read-only")
    add(name, "out-overlaps-input", {"out": lambda kw, n=name: out_overlapping(kw, n)},
        ValueError, r"\bout\b.*overlaps", crash_prone=True)



# ---- rotated RoIAlign --------------------------------------------------------------------------
add("roi_align_rotated", "input-2d", {"input": features(shape=(H, W))}, ValueError, r"\binput\b")
add("roi_align_rotated", "input-int32", {"input": features(np.int32)}, TypeError, r"\binput\b")
add("roi_align_rotated", "input-empty-H", {"input": features(shape=(N, C, 0, W))}, ValueError,
    r"\binput\b.*empty")
add("roi_align_rotated_backward", "input_shape-2d", {"input_shape": (H, W)}, ValueError,
    r"input_shape")
add("roi_align_rotated_backward", "grad_output-shape", {"grad_output": grad((N, C, PH + 1, PW))},
    ValueError, r"grad_output.*shape")
add("roi_align_rotated_backward", "grad_output-int", {"grad_output": grad(dtype=np.int32)},
    TypeError, r"grad_output")
for name in ROT:
    add(name, "boxes-K5", {"boxes": boxes()}, ValueError, r"boxes.*shape.*\(K, 6\)")
    add(name, "boxes-1d", {"boxes": rotated_boxes()[0]}, ValueError, r"boxes.*shape")
    add(name, "boxes-K5-with-4d-input", {"boxes": rotated_boxes()[:, 1:]}, ValueError,
        r"boxes.*shape")
    add(name, "boxes-complex", {"boxes": rotated_boxes(np.complex128)}, TypeError, r"boxes")
    for column, label in [(1, "cx"), (2, "cy"), (3, "w"), (4, "h"), (5, "angle")]:
        add(name, f"boxes-nan-{label}", {"boxes": bad_rotated_row(np.nan, column)}, ValueError,
            r"boxes row 1\b", crash_prone=True)
        add(name, f"boxes-inf-{label}", {"boxes": bad_rotated_row(np.inf, column)}, ValueError,
            r"boxes row 1\b", crash_prone=True)
    add(name, "boxes-overflow-float32", {"boxes": bad_rotated_row(1e39, 5)}, ValueError,
        r"boxes row 1\b", crash_prone=True)
    for column, label in [(3, "w"), (4, "h")]:
        add(name, f"boxes-negative-{label}", {"boxes": bad_rotated_row(-1.0, column)}, ValueError,
            r"boxes row 1\b.*negative", crash_prone=True)
    for what, value in [("half", 0.5), ("minus-one", -1), ("N", N), ("nan", np.nan)]:
        add(name, f"batch_index-{what}", {"boxes": bad_rotated_row(value, 0)}, ValueError,
            r"boxes row 1\b.*batch index", crash_prone=True)
    add(name, "boxes-list-short", {"boxes": [rotated_boxes()[:1, 1:]]}, ValueError, r"boxes.*list")
    add(name, "boxes-list-item-K4", {"boxes": [rotated_boxes()[:1, 1:], boxes()[:1, 1:]]},
        ValueError, r"boxes\[1\].*\(K_i, 5\)")
    add(name, "boxes-list-item-nan",
        {"boxes": [rotated_boxes()[:1, 1:], np.array([[1, 1, 1, 1, np.nan]])]}, ValueError,
        r"boxes row 1\b", crash_prone=True)
for name in ROT + ("RoIAlignRotated",):
    for what, value, exc in [("zero", 0, ValueError), ("float", 2.0, TypeError),
                             ("pair-zero", (2, 0), ValueError)]:
        add(name, f"output_size-{what}", {"output_size": value}, exc, r"output_size")
    for what, value, exc in [("float", 2.0, TypeError), ("none", None, TypeError),
                             ("too-big", 2**40, ValueError)]:
        add(name, f"sampling_ratio-{what}", {"sampling_ratio": value}, exc, r"sampling_ratio")
    for what, value, exc in [("zero", 0.0, ValueError), ("nan", np.nan, ValueError),
                             ("str", "1", TypeError)]:
        add(name, f"spatial_scale-{what}", {"spatial_scale": value}, exc, r"spatial_scale")
    add(name, "layout-lower", {"layout": "nchw"}, ValueError, r"layout")
    for what, value in [("deg", "deg"), ("upper", "DEGREES"), ("none", None), ("int", 0)]:
        add(name, f"angle_unit-{what}", {"angle_unit": value}, ValueError, r"angle_unit")
    for what, value in [("str", "yes"), ("none", None), ("float", 1.0)]:
        add(name, f"clockwise-{what}", {"clockwise": value}, TypeError, r"clockwise")
        add(name, f"aligned-{what}", {"aligned": value}, TypeError, r"aligned")
for name in ROT:
    shape = out_shape(name)
    add(name, "out-list", {"out": lambda kw, s=shape: np.zeros(s).tolist()}, TypeError, r"\bout\b")
    add(name, "out-shape", {"out": np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32)},
        ValueError, r"\bout\b.*shape")
    add(name, "out-float64", {"out": np.zeros(shape, np.float64)}, ValueError, r"\bout\b.*dtype")
    add(name, "out-readonly", {"out": lambda kw, s=shape: readonly(np.zeros(s, np.float32))},
        ValueError, r"\bout\b.*read-only")
    add(name, "out-overlaps-input", {"out": lambda kw, n=name: out_overlapping(kw, n)},
        ValueError, r"\bout\b.*overlaps", crash_prone=True)
    add(name, "num_threads-zero", {"num_threads": 0}, ValueError, r"num_threads")


class _ArrayInterface:
    """An object NumPy reads through __array_interface__ (as a foreign array library's)."""

    def __init__(self, array):
        self.__array_interface__ = array.__array_interface__
        self._keep = array


def _argmax_in_out(kwargs):
    """roi_pool_backward's `out`, and arg-max indices (valid ones: pixel 0) in its memory."""
    out = np.zeros((N, C, H, W), np.float32)
    shape = kwargs["grad_output"].shape
    aliased = out.reshape(-1)[:int(np.prod(shape))].view(np.int32).reshape(shape)
    aliased[...] = 0
    kwargs["argmax"] = aliased
    return out


def _foreign_view_of_out(kwargs, name, wrap):
    """An `out`, and `input` (or grad_output) as a non-ndarray object sharing its memory."""
    if name in FORWARD + PS_FORWARD:
        out = np.zeros(out_shape(name), np.float32)
        buffer = np.zeros(int(np.prod(map_shape(name))), np.float32)
        kwargs["input"] = wrap(buffer.reshape(map_shape(name)))
        return buffer[:out.size].reshape(out.shape)
    buffer = np.zeros(int(np.prod(map_shape(name))), np.float32)
    key = ("grad_output" if name in ("roi_align_backward",) + PS_BACKWARD + PR_BACKWARD
           else "input")
    shape = (N, C, PH, PW) if key == "grad_output" else (N, C, H, W)
    kwargs[key] = wrap(buffer[:int(np.prod(shape))].reshape(shape))
    return buffer.reshape(map_shape(name))


for name in ALL4 + PR + PS:
    for what, wrap in [("memoryview", memoryview), ("array-interface", _ArrayInterface)]:
        add(name, f"out-overlaps-input-{what}",
            {"out": lambda kw, n=name, w=wrap: _foreign_view_of_out(kw, n, w)},
            ValueError, r"\bout\b.*overlaps", crash_prone=True)
add("roi_pool_backward", "out-overlaps-argmax", {"out": _argmax_in_out}, ValueError,
    r"\bout\b.*overlaps.*argmax", crash_prone=True)


# ---- booleans, and values NumPy or float() would reject in their own words --------------------
for name in ALIGN + ("RoIAlign",) + MULTI + ("MultiScaleRoIAlign",):
    for what, value in [("str", "False"), ("int", 1), ("none", None), ("array", np.array(True))]:
        add(name, f"aligned-{what}", {"aligned": value}, TypeError, r"aligned")
for name in ALIGN + ("RoIAlign",):
    add(name, "mode-array", {"mode": np.array("avg")}, ValueError, r"mode")
add("roi_pool", "return_argmax-str", {"return_argmax": "no"}, TypeError, r"return_argmax")
add("roi_pool", "return_argmax-int", {"return_argmax": 1}, TypeError, r"return_argmax")
for name in ALL4 + PR + CLASSES + PR_CLASSES + PS + PS_CLASSES:
    add(name, "spatial_scale-beyond-float", {"spatial_scale": 10**400}, ValueError,
        r"spatial_scale")
    add(name, "layout-array", {"layout": np.array(["NCHW"])}, ValueError, r"layout")
for name in MULTI + ("MultiScaleRoIAlign",):
    add(name, "layout-array", {"layout": np.array(["NCHW"])}, ValueError, r"layout")
for name in ALL4 + PR + MULTI + PS:
    add(name, "boxes-ragged-list-item",
        {"boxes": [np.zeros((1, 4)), [[1, 2, 3], [1, 2, 3, 4]]]}, ValueError, r"boxes\[1\]")
    add(name, "boxes-ragged", {"boxes": [[0, 1, 1, 3, 3], [1, 2, 2]]}, ValueError, r"boxes")


for name in FORWARD + PS_FORWARD:
    add(name, "out-overlaps-boxes", {"out": out_overlapping_boxes}, ValueError,
        r"\bout\b.*overlaps", crash_prone=True)
    add(name, "out-nchw-shape-for-nhwc",
        {"layout": "NHWC", "input": features(shape=(N, H, W, map_shape(name)[1])),
         "out": np.zeros((N, C, PH, PW), np.float32)}, ValueError, r"\bout\b.*shape")


# ---- num_threads ----------------------------------------------------------------------------------
for name in ALL4 + PR + MULTI + PS:
    for what, value, exc in [
        ("zero", 0, ValueError), ("negative", -1, ValueError), ("float", 2.0, TypeError),
        ("str", "2", TypeError), ("bool", True, TypeError), ("too-big", 2**40, ValueError),
    ]:
        add(name, f"num_threads-{what}", {"num_threads": value}, exc, r"num_threads")


# ---- requests whose result cannot be allocated: MemoryError, not a crash ---------------------------
# About 4e14 bytes: more than the 47-bit address space, so the allocation fails at once and the
# test never needs the memory, whatever the overcommit policy.
HUGE_BOXES = np.tile([[0, 0.0, 0.0, 2.0, 2.0]], (10**6, 1))


for name in FORWARD:
    add(name, "huge-output", {"input": features(shape=(1, 1, 4, 4)), "boxes": HUGE_BOXES,
                              "output_size": 10**4}, MemoryError, r"", crash_prone=True)
    add(name, "huge-output-channels", {"input": np.zeros((1, 10**5, 1, 1), np.float32),
                                       "boxes": HUGE_BOXES[:1000], "output_size": 10**3},
        MemoryError, r"", crash_prone=True)
    # beyond intp: numpy itself says "array is too big" (a ValueError); must be MemoryError
    add(name, "huge-output-beyond-intp", {"output_size": 2**31 - 1}, MemoryError, r"",
        crash_prone=True)


for name in ("roi_align_backward",) + PR_BACKWARD:
    add(name, "huge-input_shape",
        {"input_shape": (1, 1, 10**7, 10**7), "grad_output": grad((N, 1, PH, PW)),
         "boxes": np.array([[0, 0, 0, 2, 2], [0, 1, 1, 3, 3.0]])}, MemoryError, r"",
        crash_prone=True)


for name in PS_BACKWARD:
    add(name, "huge-input_shape",
        {"input_shape": (1, PH * PW, 10**7, 10**7), "grad_output": grad((N, 1, PH, PW)),
         "boxes": np.array([[0, 0, 0, 2, 2], [0, 1, 1, 3, 3.0]])}, MemoryError, r"",
        crash_prone=True)


add("roi_pool_backward", "huge-input-broadcast",
    {"input": np.broadcast_to(np.float32(0), (N, 1, 10**7, 10**7)),
     "grad_output": grad((N, 1, PH, PW))}, MemoryError, r"", crash_prone=True)

# ---- multi-level (FPN) pooling: the pyramid, its scales and level rule -----------------------------
def other_level(index, shape=None, dtype=np.float32):
    """The valid pyramid with level `index` replaced by a map of `shape` and `dtype`."""
    def make(kwargs):
        levels = pyramid()
        levels[index] = features(dtype, shape or LEVEL_SHAPES[index])
        return levels
    return make


add("multiscale_roi_align", "features-array", {"features": features()}, TypeError, r"features")
add("multiscale_roi_align", "features-none", {"features": None}, TypeError, r"features")
add("multiscale_roi_align", "features-empty", {"features": []}, ValueError, r"features")
add("multiscale_roi_align", "features-3d-level", {"features": other_level(1, (C, 3, 4))},
    ValueError, r"features\[1\] must be 4-D")
add("multiscale_roi_align", "features-other-N", {"features": other_level(1, (N + 1, C, 3, 4))},
    ValueError, r"features\[1\].*same N and C")
add("multiscale_roi_align", "features-other-C", {"features": other_level(1, (N, C + 1, 3, 4))},
    ValueError, r"features\[1\].*same N and C")
add("multiscale_roi_align", "features-other-dtype", {"features": other_level(1, None, np.float64)},
    ValueError, r"features\[1\].*dtype")
add("multiscale_roi_align", "features-int-level", {"features": other_level(0, None, np.int32)},
    TypeError, r"features\[0\]")
add("multiscale_roi_align", "features-empty-H", {"features": other_level(1, (N, C, 0, 4))},
    ValueError, r"features\[1\].*empty")
add("multiscale_roi_align", "featmap_names-with-list", {"featmap_names": ["p2", "p3"]},
    ValueError, r"featmap_names")
add("multiscale_roi_align", "featmap_names-missing",
    {"features": lambda kw: dict(zip(["p2", "p3"], pyramid()))}, ValueError, r"featmap_names")
add("multiscale_roi_align", "featmap_names-not-a-key",
    {"features": lambda kw: dict(zip(["p2", "p3"], pyramid())), "featmap_names": ["p2", "p4"]},
    ValueError, r"featmap_names.*p4")
add("multiscale_roi_align", "featmap_names-repeated",
    {"features": lambda kw: dict(zip(["p2", "p3"], pyramid())), "featmap_names": ["p2", "p2"]},
    ValueError, r"featmap_names")
add("multiscale_roi_align", "featmap_names-str",
    {"features": lambda kw: dict(zip(["p2", "p3"], pyramid())), "featmap_names": "p2"},
    TypeError, r"featmap_names")
for what, value, exc in [
    ("none", None, TypeError), ("empty", [], TypeError), ("3d", [(C, 6, 7), (C, 3, 4)], ValueError),
    ("other-C", [(N, C, 6, 7), (N, C + 1, 3, 4)], ValueError),
    ("negative", [(N, C, -6, 7), (N, C, 3, 4)], ValueError),
    ("float", [(N, C, 6.0, 7), (N, C, 3, 4)], TypeError),
]:
    add("multiscale_roi_align_backward", f"level_shapes-{what}", {"level_shapes": value}, exc,
        r"level_shapes")
add("multiscale_roi_align_backward", "grad_output-shape", {"grad_output": grad((N, C, PH + 1, PW))},
    ValueError, r"grad_output.*shape")
add("multiscale_roi_align_backward", "grad_output-int", {"grad_output": grad(dtype=np.int32)},
    TypeError, r"grad_output")
for name in MULTI:
    for what, changes, exc, match in [
        ("missing", {"image_sizes": None}, ValueError, r"image_sizes"),
        ("empty", {"image_sizes": []}, ValueError, r"image_sizes"),
        ("not-pairs", {"image_sizes": [24, 28]}, ValueError, r"image_sizes"),
        ("zero", {"image_sizes": [(0, 28)]}, ValueError, r"image_sizes"),
        ("float", {"image_sizes": [(24.0, 28)]}, TypeError, r"image_sizes"),
        ("and-scales", {"scales": [0.25, 0.125]}, ValueError, r"scales or image_sizes"),
    ]:
        add(name, f"image_sizes-{what}", changes, exc, match)
    for what, value, exc in [
        ("count", [0.25], ValueError), ("negative", [0.25, -0.125], ValueError),
        ("nan", [0.25, np.nan], ValueError), ("str", "0.25", TypeError),
        ("beyond-float32", [0.25, 1e-300], ValueError),
    ]:
        add(name, f"scales-{what}", {"scales": value, "image_sizes": None}, exc, r"scales")
for name in MULTI + ("MultiScaleRoIAlign",):
    for what, value in [("unknown", "fpn"), ("upper", "MMDET"), ("none", None), ("int", 0)]:
        add(name, f"level_rule-{what}", {"level_rule": value}, ValueError, r"level_rule")
    for what, value, exc in [("zero", 0, ValueError), ("nan", np.nan, ValueError),
                             ("str", "224", TypeError), ("bool", True, TypeError)]:
        add(name, f"canonical_scale-{what}", {"canonical_scale": value}, exc, r"canonical_scale")
    for what, value, exc in [("float", 4.0, TypeError), ("str", "4", TypeError),
                             ("too-big", 2**40, ValueError)]:
        add(name, f"canonical_level-{what}", {"canonical_level": value}, exc, r"canonical_level")
for what, value, exc in [("str", "p2", TypeError), ("empty", [], ValueError),
                         ("repeated", ["p2", "p2"], ValueError), ("none", None, TypeError)]:
    add("MultiScaleRoIAlign", f"featmap_names-{what}", {"featmap_names": value}, exc,
        r"featmap_names")
add("multiscale_roi_align", "out-shape", {"out": np.zeros((N, C, PH, PW + 1), np.float32)},
    ValueError, r"\bout\b.*shape")
add("multiscale_roi_align", "out-dtype", {"out": np.zeros((N, C, PH, PW), np.float64)},
    ValueError, r"\bout\b.*dtype")
add("multiscale_roi_align", "out-readonly",
    {"out": lambda kw: readonly(np.zeros((N, C, PH, PW), np.float32))}, ValueError,
    r"\bout\b.*read-only")
add("multiscale_roi_align", "out-overlaps-level",
    {"out": lambda kw: kw["features"][1][:, :, :PH, :PW]}, ValueError,
    r"\bout\b.*overlaps.*features", crash_prone=True)
add("multiscale_roi_align", "out-overlaps-boxes", {"out": out_overlapping_boxes}, ValueError,
    r"\bout\b.*overlaps", crash_prone=True)
add("multiscale_roi_align_backward", "out-array",
    {"out": np.zeros(LEVEL_SHAPES[0], np.float32)}, TypeError, r"\bout\b.*list")
add("multiscale_roi_align_backward", "out-count",
    {"out": lambda kw: [np.zeros(LEVEL_SHAPES[0], np.float32)]}, ValueError, r"\bout\b")
add("multiscale_roi_align_backward", "out-level-shape",
    {"out": lambda kw: [np.zeros(LEVEL_SHAPES[0], np.float32), np.zeros((N, C, 3, 5), np.float32)]},
    ValueError, r"out\[1\].*shape")
add("multiscale_roi_align_backward", "out-levels-overlap",
    {"out": lambda kw: _overlapping_level_outs()}, ValueError, r"out\[1\] overlaps out\[0\]",
    crash_prone=True)
add("multiscale_roi_align_backward", "out-overlaps-grad_output",
    {"out": _level_outs_over_grad_output}, ValueError, r"out\[0\].*overlaps.*grad_output",
    crash_prone=True)
# assign_levels
for what, changes, exc, match in [
    ("boxes-1d", {"boxes": np.zeros(4)}, ValueError, r"boxes.*shape"),
    ("boxes-K3", {"boxes": np.zeros((2, 3))}, ValueError, r"boxes.*shape"),
    ("boxes-K6", {"boxes": np.zeros((2, 6))}, ValueError, r"boxes.*shape"),
    ("boxes-complex", {"boxes": np.zeros((2, 4), complex)}, TypeError, r"boxes"),
    ("boxes-str", {"boxes": np.full((2, 4), "1")}, TypeError, r"boxes"),
    ("boxes-nan", {"boxes": bad_row(np.nan, 2)}, ValueError, r"boxes row 1\b"),
    ("boxes-inf", {"boxes": bad_row(np.inf, 3)}, ValueError, r"boxes row 1\b"),
    ("boxes-list-item-K5", {"boxes": [np.zeros((1, 4)), np.zeros((1, 5))]}, ValueError,
     r"boxes\[1\]"),
    ("k_min-float", {"k_min": 2.0}, TypeError, r"k_min"),
    ("k_min-str", {"k_min": "2"}, TypeError, r"k_min"),
    ("k_max-none", {"k_max": None}, TypeError, r"k_max"),
    ("k_max-below-k_min", {"k_max": 1}, ValueError, r"k_max"),
    ("k_max-too-big", {"k_max": 2**40}, ValueError, r"k_max"),
    ("rule-unknown", {"rule": "fpn"}, ValueError, r"rule"),
    ("rule-none", {"rule": None}, ValueError, r"rule"),
    ("rule-upper", {"rule": "Torchvision"}, ValueError, r"rule"),
    ("canonical_scale-zero", {"canonical_scale": 0}, ValueError, r"canonical_scale"),
    ("canonical_scale-negative", {"canonical_scale": -224}, ValueError, r"canonical_scale"),
    ("canonical_scale-str", {"canonical_scale": "224"}, TypeError, r"canonical_scale"),
    ("canonical_level-float", {"canonical_level": 4.0}, TypeError, r"canonical_level"),
    ("canonical_level-bool", {"canonical_level": True}, TypeError, r"canonical_level"),
]:
    add("assign_levels", what, changes, exc, match)


CASES_BY_ID = {case.id: case for case in CASES}


assert len(CASES_BY_ID) == len(CASES), "duplicate case ids"


CRASH_PRONE = [case for case in CASES if case.crash_prone]


# Package bugs found by this table: {case id: reason}. Marked xfail (not strict), so the suite
# stays green until a bug is fixed; delete the entry once it is. (Found and since fixed:
# roi_pool_backward named 'input_shape' for a bad `input`; outputs beyond intp raised numpy's
# "array is too big" ValueError; a RuntimeWarning escaped the float32 overflow check.)
KNOWN_BUGS = {}


def _param(case):
    marks = list(case.marks)
    if case.id in KNOWN_BUGS:
        marks.append(pytest.mark.xfail(strict=False, reason=KNOWN_BUGS[case.id]))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture
def tripwired_kernels(monkeypatch):
    """Replace every compiled entry point by a tripwire: validation must stop the call first."""
    from roialign_cy import _dispatch

    def tripwire(*args, **kwargs):
        raise AssertionError("a kernel ran before the bad input was refused")

    # Every operator's table, every build (_dispatch may pick the AVX2 one) and dtype.
    for table in _dispatch.TABLES:
        for key in table:
            monkeypatch.setitem(table, key, tripwire)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_refused(case, tripwired_kernels):
    with pytest.raises(case.exc) as info:
        case.call()
    message = str(info.value)
    assert re.search(case.match, message), f"message {message!r} does not match {case.match!r}"


def test_table_covers_every_entry_point(capsys):
    """Count the bad inputs; every entry point and argument family is in the table."""
    per_name = {name: sum(case.name == name for case in CASES) for name in ENTRY_POINTS}
    assert all(count >= 20 for count in per_name.values()), per_name
    families = {case.what.split("-")[0] for case in CASES}
    for family in ("input", "input_shape", "grad_output", "boxes", "batch_index", "output_size",
                   "sampling_ratio", "spatial_scale", "layout", "mode", "out", "num_threads",
                   "max", "huge"):
        assert family in families, family
    with capsys.disabled():
        print(f"\ntest_bad_inputs: {len(CASES)} bad inputs ({len(CRASH_PRONE)} also in a "
              f"child interpreter): {per_name}")


def test_out_untouched_when_refused():
    """A refused call leaves a user's `out` exactly as it was."""
    out = np.full((N, C, PH, PW), 7.0, np.float32)
    with pytest.raises(ValueError, match="boxes row 1"):
        roi_align(features(), bad_row(np.nan, 2)(None), PH, out=out)
    with pytest.raises(ValueError, match="batch index"):
        roi_pool(features(), bad_row(N, 0)(None), PH, out=out)
    assert (out == 7.0).all()


_CHILD = r"""
import importlib.util, json, os, sys, traceback
sys.path[:] = json.loads(os.environ["ROIALIGN_TEST_SYS_PATH"])
spec = importlib.util.spec_from_file_location("_bad_input_cases", sys.argv[1])
cases = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cases)
import roialign_cy
print("PACKAGE", roialign_cy.__file__, flush=True)
for case_id in sys.argv[2:]:
    print("START", case_id, flush=True)
    try:
        cases.CASES_BY_ID[case_id].call()
    except BaseException as error:
        names = ",".join(cls.__name__ for cls in type(error).__mro__)
        print("RAISED", case_id, names, flush=True)
    else:
        print("RETURNED", case_id, flush=True)
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def child_run(tmp_path_factory):
    """Run every crash-prone case in one child interpreter; return its exit code and lines."""
    env = dict(os.environ, ROIALIGN_TEST_SYS_PATH=json.dumps(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, os.path.abspath(__file__)]
        + [case.id for case in CRASH_PRONE],
        capture_output=True, text=True, timeout=300, env=env,
        cwd=tmp_path_factory.mktemp("child"),  # never the repo root: its roialign_cy is unbuilt
    )
    return proc


def test_child_interpreter_survives_every_crash_prone_case(child_run):
    lines = child_run.stdout.splitlines()
    started = [line.split()[1] for line in lines if line.startswith("START")]
    assert child_run.returncode == 0, (
        f"child died (exit {child_run.returncode}, negative = signal) while running "
        f"{started[-1] if started else '?'}\nstderr:\n{child_run.stderr[-3000:]}"
    )
    assert lines[-1] == "DONE"
    package = [line.split(maxsplit=1)[1] for line in lines if line.startswith("PACKAGE")]
    assert package == [roialign_cy.__file__], "the child imported another roialign_cy"


@pytest.mark.parametrize("case", [_param(case) for case in CRASH_PRONE])
def test_crash_prone_case_raises_in_child(case, child_run):
    outcome = [line for line in child_run.stdout.splitlines()
               if line.split()[1:2] == [case.id] and not line.startswith("START")]
    assert outcome, f"the child never finished {case.id} (exit {child_run.returncode})"
    parts = outcome[0].split()
    classes = parts[2].split(",") if len(parts) > 2 else []
    assert parts[0] == "RAISED", outcome[0]
    if case.exc.__name__ not in classes:  # re-raise the child's kind, so xfail(raises=) works
        raise getattr(builtins, classes[0], AssertionError)(
            f"child raised {classes[0]}, expected {case.exc.__name__}")


def test_box_overflow_check_is_silent():
    """Refusing a box that overflows float32 emits no RuntimeWarning (under -W error it would
    replace the ValueError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="boxes row 1"):
            roi_align(features(), bad_row(1e39, 3)(None), PH)


def test_the_tripwire_trips(tripwired_kernels):
    """The guard itself: a valid call does reach the (tripwired) kernels, whichever build
    _dispatch picked, so a bad input that slipped through validation would be caught above."""
    features = np.ones((1, 1, 4, 4), np.float32)
    boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(AssertionError, match="a kernel ran"):
        roi_align(features, boxes, 2)
    with pytest.raises(AssertionError, match="a kernel ran"):
        roi_pool_backward(np.ones((1, 1, 1, 1), np.float32), boxes, features, 1,
                          argmax=np.zeros((1, 1, 1, 1), np.int32))


# ---- Every bad argument raises the right exception, with a message naming the argument. --------


FEATURES = np.zeros((2, 3, 8, 8), dtype=np.float32)


BOXES = np.array([[0, 1.0, 1.0, 5.0, 5.0], [1, 2.0, 2.0, 6.0, 6.0], [0, 0.0, 0.0, 3.0, 3.0],
                  [1, 1.0, 2.0, 3.0, 4.0], [0, 4.0, 4.0, 7.0, 7.0]])


def with_box(row, column, value):
    """BOXES with one entry replaced."""
    boxes = BOXES.copy()
    boxes[row, column] = value
    return boxes


def read_only(array):
    """A read-only copy of array."""
    array = array.copy()
    array.setflags(write=False)
    return array


OVERLAP = np.zeros(2 * 3 * 8 * 8, dtype=np.float32)  # features and out share this memory


OUT = np.zeros((5, 3, 2, 2), dtype=np.float32)


# (id, arguments replacing the valid defaults, exception type, regex the message must match)
BAD_ARGUMENTS = [
    ("input_2d", {"input": np.zeros((8, 8), np.float32)}, ValueError, r"input must be 4-D"),
    ("input_5d", {"input": np.zeros((1, 2, 3, 8, 8), np.float32)}, ValueError,
     r"input must be 4-D"),
    ("input_int", {"input": FEATURES.astype(np.int32)}, TypeError, r"input must be float"),
    ("input_uint8", {"input": FEATURES.astype(np.uint8)}, TypeError, r"input must be float"),
    ("input_complex", {"input": FEATURES.astype(complex)}, TypeError, r"input must be float"),
    ("input_bool", {"input": FEATURES.astype(bool)}, TypeError, r"input must be float"),
    ("input_object", {"input": FEATURES.astype(object)}, TypeError, r"input must be float"),
    ("input_h0", {"input": np.zeros((2, 3, 0, 8), np.float32)}, ValueError, r"input has an empty"),
    ("input_w0", {"input": np.zeros((2, 3, 8, 0), np.float32)}, ValueError, r"input has an empty"),
    ("input_nhwc_h0", {"input": np.zeros((2, 0, 8, 3), np.float32), "layout": "NHWC"},
     ValueError, r"input has an empty"),
    ("layout_lower", {"layout": "nchw"}, ValueError, r"layout must be"),
    ("layout_none", {"layout": None}, ValueError, r"layout must be"),
    ("layout_chw", {"layout": "CHW"}, ValueError, r"layout must be"),
    ("mode_mean", {"mode": "mean"}, ValueError, r"mode must be"),
    ("mode_none", {"mode": None}, ValueError, r"mode must be"),
    ("output_size_0", {"output_size": 0}, ValueError, r"output_size must be >= 1"),
    ("output_size_neg", {"output_size": -3}, ValueError, r"output_size must be >= 1"),
    ("output_size_pair_0", {"output_size": (7, 0)}, ValueError, r"output_size must be >= 1"),
    ("output_size_float", {"output_size": 7.0}, TypeError, r"output_size must be an int"),
    ("output_size_bool", {"output_size": True}, TypeError, r"output_size must be an int"),
    ("output_size_str", {"output_size": "7"}, TypeError, r"output_size must be an int"),
    ("output_size_1", {"output_size": (7,)}, ValueError, r"output_size must be an int or a pair"),
    ("output_size_3", {"output_size": (7, 7, 7)}, ValueError,
     r"output_size must be an int or a pair"),
    ("output_size_huge", {"output_size": 2**40}, ValueError, r"output_size must fit in 32 bits"),
    ("scale_0", {"spatial_scale": 0}, ValueError, r"spatial_scale must be finite and > 0"),
    ("scale_neg", {"spatial_scale": -1}, ValueError, r"spatial_scale must be finite and > 0"),
    ("scale_nan", {"spatial_scale": float("nan")}, ValueError, r"spatial_scale must be finite"),
    ("scale_inf", {"spatial_scale": float("inf")}, ValueError, r"spatial_scale must be finite"),
    ("scale_str", {"spatial_scale": "0.5"}, TypeError, r"spatial_scale must be a real number"),
    ("scale_none", {"spatial_scale": None}, TypeError, r"spatial_scale must be a real number"),
    ("scale_complex", {"spatial_scale": 0.5j}, TypeError, r"spatial_scale must be a real number"),
    ("sampling_float", {"sampling_ratio": 2.5}, TypeError, r"sampling_ratio must be an int"),
    ("sampling_str", {"sampling_ratio": "2"}, TypeError, r"sampling_ratio must be an int"),
    ("sampling_bool", {"sampling_ratio": True}, TypeError, r"sampling_ratio must be an int"),
    ("boxes_k4", {"boxes": BOXES[:, 1:]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_k6", {"boxes": np.zeros((3, 6))}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_1d", {"boxes": BOXES[0]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_3d", {"boxes": BOXES[np.newaxis]}, ValueError, r"boxes must have shape \(K, 5\)"),
    ("boxes_3d_input_k3", {"input": FEATURES[0], "boxes": np.zeros((2, 3))}, ValueError,
     r"boxes must have shape \(K, 5\) or \(K, 4\)"),
    ("boxes_complex", {"boxes": BOXES.astype(complex)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_bool", {"boxes": BOXES.astype(bool)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_str", {"boxes": BOXES.astype(str)}, TypeError, r"boxes must hold real numbers"),
    ("boxes_nan", {"boxes": with_box(3, 2, np.nan)}, ValueError, r"boxes row 3 has a NaN"),
    ("boxes_inf", {"boxes": with_box(3, 4, np.inf)}, ValueError, r"boxes row 3 has a NaN or inf"),
    ("boxes_neg_inf", {"boxes": with_box(2, 1, -np.inf)}, ValueError, r"boxes row 2 has a NaN"),
    ("boxes_float32_overflow", {"boxes": with_box(4, 3, 1e39)}, ValueError,
     r"boxes row 4 does not fit in float32"),
    ("batch_half", {"boxes": with_box(1, 0, 0.5)}, ValueError,
     r"boxes row 1: batch index \S*0\.5\S* is not an integer"),
    ("batch_nan", {"boxes": with_box(2, 0, np.nan)}, ValueError, r"boxes row 2: .* not an integer"),
    ("batch_neg", {"boxes": with_box(2, 0, -1)}, ValueError,
     r"boxes row 2: batch index -1 is outside"),
    ("batch_n", {"boxes": with_box(3, 0, 2)}, ValueError, r"boxes row 3: batch index 2 is outside"),
    ("batch_3d_input", {"input": FEATURES[0], "boxes": BOXES}, ValueError,
     r"boxes row 1: batch index 1 is outside \[0, 1\)"),
    ("list_short", {"boxes": [BOXES[:, 1:]]}, ValueError, r"boxes as a list must hold one"),
    ("list_long", {"boxes": [BOXES[:, 1:]] * 3}, ValueError, r"boxes as a list must hold one"),
    ("list_k5", {"boxes": [BOXES, BOXES]}, ValueError, r"boxes\[0\] must have shape \(K_i, 4\)"),
    ("list_1d", {"boxes": [BOXES[:, 1:], BOXES[0, 1:]]}, ValueError,
     r"boxes\[1\] must have shape \(K_i, 4\)"),
    ("list_complex", {"boxes": [BOXES[:, 1:], BOXES[:, 1:].astype(complex)]}, TypeError,
     r"boxes\[1\] must hold real numbers"),
    ("list_nan", {"boxes": [BOXES[:2, 1:], with_box(1, 3, np.nan)[:, 1:]]}, ValueError,
     r"boxes row 3 has a NaN"),
    ("out_shape", {"out": np.zeros((5, 3, 2, 3), np.float32)}, ValueError,
     r"out must have shape"),
    ("out_layout", {"out": np.zeros((5, 2, 2, 3), np.float32)}, ValueError, r"out must have shape"),
    ("out_dtype", {"out": np.zeros((5, 3, 2, 2), np.float64)}, ValueError, r"out must have dtype"),
    ("out_float16", {"out": np.zeros((5, 3, 2, 2), np.float16)}, ValueError,
     r"out must have dtype"),
    ("out_read_only", {"out": read_only(OUT)}, ValueError, r"out is read-only"),
    ("out_overlaps_input", {"input": OVERLAP.reshape(2, 3, 8, 8),
                            "out": OVERLAP[:60].reshape(5, 3, 2, 2)}, ValueError,
     r"out overlaps an input"),
    ("out_overlaps_boxes", {"boxes": OVERLAP[:25].reshape(5, 5),
                            "out": OVERLAP[:60].reshape(5, 3, 2, 2)}, ValueError,
     r"out overlaps an input"),
    ("out_list", {"out": OUT.tolist()}, TypeError, r"out must be a numpy.ndarray"),
    ("threads_0", {"num_threads": 0}, ValueError, r"num_threads must be >= 1"),
    ("threads_neg", {"num_threads": -1}, ValueError, r"num_threads must be >= 1"),
    ("threads_float", {"num_threads": 1.5}, TypeError, r"num_threads must be an int"),
    ("threads_bool", {"num_threads": True}, TypeError, r"num_threads must be an int"),
]


# Narrowing 1e39 to float32 warns (overflow) before the ValueError; the error is what counts.
OVERFLOW_WARNING = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@pytest.mark.parametrize("overrides, error, message", [
    pytest.param(*row[1:], id=row[0], marks=[OVERFLOW_WARNING] if "overflow" in row[0] else [])
    for row in BAD_ARGUMENTS
])
def test_bad_argument_raises(overrides, error, message):
    arguments = {"input": FEATURES, "boxes": BOXES, "output_size": 2, **overrides}
    with pytest.raises(error, match=message):
        roi_align(**arguments)


def test_float128_input_is_refused():
    if not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    with pytest.raises(TypeError, match=r"input must be float"):
        roi_align(FEATURES.astype(np.float128), BOXES, 2)


def test_valid_defaults_pass():
    """The table's base call is valid, so each row fails for its own reason alone."""
    assert roi_align(FEATURES, BOXES, 2).shape == (5, 3, 2, 2)


@pytest.mark.parametrize("scale", [1e39, 1e-50])
def test_spatial_scale_that_float32_cannot_hold_is_refused(scale):
    """1e39 overflows float32 and 1e-50 underflows to 0: refused, not silently all zeros."""
    features = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="spatial_scale .* does not fit in float32"):
        roi_align(features, np.array([[0, 0, 0, 2, 2.0]]), 1, spatial_scale=scale)
    # float64 holds both
    assert np.isfinite(roi_align(features.astype(np.float64), np.array([[0, 0, 0, 2, 2.0]]), 1,
                                 spatial_scale=scale)).all()


# ---- Every accepted form of the arguments gives the same numbers as the canonical one. ---------


DTYPES = [np.float32, np.float64]


LAYOUTS = ["NCHW", "NHWC"]


MODES = ["avg", "max"]


def make_inputs(dtype, n_images=2, seed=0):
    """Random (N, 3, 7, 9) NCHW features and 10 boxes over them."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(-1, 1, (n_images, 3, 7, 9)).astype(dtype)
    return features, random_boxes(rng, n_images, 7, 9, 1.0, n_boxes=10)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_is_nchw_transposed(dtype, mode, sampling_ratio):
    features, boxes = make_inputs(dtype)
    for aligned in (False, True):
        nchw = align_nchw(features, boxes, (3, 4), 0.5, sampling_ratio, aligned, mode=mode)
        nhwc = roi_align(to_layout(features, "NHWC"), boxes, (3, 4), 0.5, sampling_ratio,
                         aligned, layout="NHWC", mode=mode)
        assert nhwc.shape == (len(boxes), 3, 4, 3)
        np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(
            align_nchw(features, boxes, (3, 4), 0.5, sampling_ratio, aligned, mode=mode,
                       layout="NHWC"), nchw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_list_of_boxes_equals_k5(dtype, layout):
    features, boxes = make_inputs(dtype, n_images=3)
    boxes[:, 0] = [0, 2, 0, 0, 2, 2, 0, 2, 0, 0]  # image 1 has no box
    features = to_layout(features, layout)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(3)]
    in_list_order = np.concatenate([boxes[boxes[:, 0] == i] for i in range(3)])
    expected = roi_align(features, in_list_order, 3, 1.0, 2, layout=layout)
    np.testing.assert_array_equal(roi_align(features, per_image, 3, 1.0, 2, layout=layout),
                                  expected)
    as_tuple_of_lists = tuple(part.tolist() for part in per_image[:1]) + tuple(per_image[1:])
    np.testing.assert_array_equal(
        roi_align(features, as_tuple_of_lists, 3, 1.0, 2, layout=layout), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_3d_input_is_one_image(layout):
    features, boxes = make_inputs(np.float32, n_images=1)
    boxes[:, 0] = 0
    image = to_layout(features, layout)[0]
    expected = roi_align(to_layout(features, layout), boxes, 2, 1.0, -1, layout=layout)
    np.testing.assert_array_equal(roi_align(image, boxes[:, 1:], 2, 1.0, -1, layout=layout),
                                  expected)
    np.testing.assert_array_equal(roi_align(image, boxes, 2, 1.0, -1, layout=layout), expected)


MEMORY_FORMS = {
    "fortran": np.asfortranarray,
    "negative_stride": lambda a: a[..., ::-1].copy()[..., ::-1],
    "sliced": lambda a: np.repeat(np.repeat(a, 2, axis=1), 3, axis=-1)[:, ::2, :, ::3],
    "read_only": lambda a: np.lib.stride_tricks.as_strided(a, writeable=False),
    "big_endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", sorted(MEMORY_FORMS))
def test_memory_forms_give_identical_numbers(form, dtype, layout):
    features, boxes = make_inputs(dtype)
    features = to_layout(features, layout)
    expected = roi_align(features, boxes, 3, 1.0, 2, layout=layout)
    odd_features = MEMORY_FORMS[form](features)
    odd_boxes = MEMORY_FORMS[form](boxes[np.newaxis, np.newaxis])[0, 0]
    np.testing.assert_array_equal(odd_features, features)  # the form keeps the values
    got = roi_align(odd_features, odd_boxes, 3, 1.0, 2, layout=layout)
    assert got.dtype == dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_boxes_are_cast_to_the_features_dtype(dtype):
    features, boxes = make_inputs(dtype)
    expected = roi_align(features, boxes.astype(dtype), 3, 0.5, 2)
    np.testing.assert_array_equal(roi_align(features, boxes, 3, 0.5, 2), expected)
    whole = np.round(boxes * [1, 4, 4, 4, 4])
    np.testing.assert_array_equal(roi_align(features, whole.astype(np.int64), 3, 0.5, 2),
                                  roi_align(features, whole, 3, 0.5, 2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float16_is_float32_rounded(layout, mode):
    features, boxes = make_inputs(np.float16)
    features = to_layout(features, layout)
    got = roi_align(features, boxes, 3, 1.0, -1, True, layout=layout, mode=mode)
    wide = roi_align(features.astype(np.float32), boxes, 3, 1.0, -1, True, layout=layout,
                     mode=mode)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, wide.astype(np.float16))


@pytest.mark.parametrize("output_size", [5, (5, 5), [5, 5], np.int64(5), (np.int32(5), 5)])
def test_output_size_forms(output_size):
    features, boxes = make_inputs(np.float64)
    expected = roi_align(features, boxes, (5, 5))
    np.testing.assert_array_equal(roi_align(features, boxes, output_size), expected)


# ---- Usual and odd forms of every argument, through the one validation path: the common call's ---


PH_common, PW_common = 3, 4


def _features(layout="NCHW", dtype=np.float32):
    features = np.random.default_rng(0).uniform(-1, 1, (N, C, H, W)).astype(dtype)
    return np.ascontiguousarray(features.transpose(0, 2, 3, 1)) if layout == "NHWC" else features


def _boxes(dtype=np.float32):
    return np.array([[0, 0.5, 1.0, 5.0, 4.5], [1, 2.0, 0.0, 6.0, 5.0], [1, -1.0, -2.0, 8.0, 9.0],
                     [0, 3.0, 3.0, 3.5, 3.2], [1, 0.0, 0.0, 0.0, 0.0]], dtype=dtype)


def _grad(n_rois, layout="NCHW", dtype=np.float32):
    shape = (n_rois, C, PH_common, PW_common) if layout == "NCHW" else (n_rois, PH_common, PW_common, C)
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(dtype)


def _byteswapped(array):
    return array.astype(array.dtype.newbyteorder(">" if array.dtype.byteorder != ">" else "<"))


def _bad_row(value, column, dtype=np.float32):
    boxes = _boxes(dtype)
    boxes[2, column] = value
    return boxes


def _list_of_boxes():
    boxes = _boxes()
    return [boxes[boxes[:, 0] == i, 1:] for i in range(N)]


# name -> changes to the base call; "features"/"boxes"/"grad" are built from their defaults.
VARIANTS = {
    "common": {},
    "nhwc": {"layout": "NHWC"},
    "float32-boxes": {"boxes": _boxes(np.float32)},
    "float64-boxes": {"boxes": _boxes(np.float64)},
    "float16": {"dtype": np.float16},
    "int-boxes": {"boxes": _boxes(np.float32).astype(np.int32)},
    "float16-boxes": {"boxes": _boxes(np.float16)},
    "byteswapped-boxes": {"boxes": _byteswapped(_boxes())},
    "fortran-boxes": {"boxes": np.asfortranarray(_boxes())},
    "strided-boxes": {"boxes": np.repeat(_boxes(), 2, axis=0)[::2]},
    "list-boxes": {"boxes": _list_of_boxes()},
    "nested-list-boxes": {"boxes": _boxes().tolist()},
    "no-boxes": {"boxes": np.zeros((0, 5), np.float32)},
    "boxes-k4": {"boxes": _boxes()[:, 1:].copy()},
    "boxes-3d": {"boxes": _boxes()[None]},
    "nan-box": {"boxes": _bad_row(np.nan, 3)},
    "inf-box": {"boxes": _bad_row(np.inf, 1)},
    "huge-box": {"boxes": _bad_row(1e39, 2, np.float64)},  # does not fit float32 features
    "fraction-index": {"boxes": _bad_row(0.5, 0)},
    "index-out-of-range": {"boxes": _bad_row(N, 0)},
    "negative-index": {"boxes": _bad_row(-1, 0)},
    "int-output-size": {"output_size": 3},
    "list-output-size": {"output_size": [PH_common, PW_common]},
    "numpy-output-size": {"output_size": (np.int64(PH_common), np.int64(PW_common))},
    "zero-output-size": {"output_size": (0, PW_common)},
    "bool-output-size": {"output_size": (True, PW_common)},
    "huge-output-size": {"output_size": (2**31, PW_common)},
    "three-output-size": {"output_size": (PH_common, PW_common, 1)},
    "numpy-scale": {"spatial_scale": np.float64(0.5)},
    "int-scale": {"spatial_scale": 1},
    "bool-scale": {"spatial_scale": True},
    "nan-scale": {"spatial_scale": float("nan")},
    "inf-scale": {"spatial_scale": float("inf")},
    "negative-scale": {"spatial_scale": -0.5},
    "tiny-scale": {"spatial_scale": 1e-46},
    "huge-scale": {"spatial_scale": 1e39},
    "bad-layout": {"layout": "nchw"},
    "layout-not-str": {"layout": 4},
    "numpy-str-layout": {"layout": np.str_("NHWC")},
    "noncontiguous-features": {"features_view": "noncontiguous"},
    "byteswapped-features": {"features_view": "byteswapped"},
    "3d-features": {"features_view": "3d"},
    "readonly-features": {"features_view": "readonly"},
    "list-features": {"features_view": "list"},
    "int-features": {"features_view": "int"},
    "empty-map": {"features_view": "empty"},
    "out": {"out": True},
    "num-threads-2": {"num_threads": 2},
    "num-threads-0": {"num_threads": 0},
    "num-threads-float": {"num_threads": 1.0},
}


def _view(array, how, layout):
    """The odd forms of an array (features, grad_output or roi_pool_backward's input)."""
    if how == "noncontiguous":
        return np.repeat(array, 2, axis=-1)[..., ::2]
    if how == "byteswapped":
        return _byteswapped(array)
    if how == "readonly":
        array = array.copy()
        array.flags.writeable = False
        return array
    if how == "list":
        return array.tolist()
    if how == "int":
        return array.astype(np.int32)
    if how == "empty":
        return array[:, :, :0] if layout == "NCHW" else array[:, :0]
    return array


def _call(function, variant, dtype):
    """Run `function` on the variant's arguments; the result or the exception raised."""
    changes = dict(VARIANTS[variant])
    layout = changes.pop("layout", "NCHW")
    dtype = changes.pop("dtype", dtype)
    how = changes.pop("features_view", None)
    boxes = changes.pop("boxes", _boxes(dtype))
    output_size = changes.pop("output_size", (PH_common, PW_common))
    spatial_scale = changes.pop("spatial_scale", 0.5)
    features = _features(layout if isinstance(layout, str) else "NCHW", dtype)
    grad = _grad(len(boxes) if hasattr(boxes, "__len__") and not isinstance(boxes, list)
                 else len(_boxes()), layout if isinstance(layout, str) else "NCHW", dtype)
    if function is roi_align_backward and how == "3d":
        how = None  # input_shape (below) is the 3-D case here
    if function in (roi_align, roi_pool, roi_pool_backward):
        features = _view(features, how, layout)
    else:
        grad = _view(grad, how, layout)
    if how == "3d" and function is not roi_align_backward:
        features = features[0]
    kwargs = {"layout": layout, **changes}
    if kwargs.get("out"):
        result_shape = np.shape(features) if "backward" in function.__name__ else grad.shape
        kwargs["out"] = np.full(result_shape, 7, np.asarray(grad).dtype)
    try:
        if function is roi_align:
            result = roi_align(features, boxes, output_size, spatial_scale, 2, False, **kwargs)
        elif function is roi_pool:
            result = roi_pool(features, boxes, output_size, spatial_scale, **kwargs)
        elif function is roi_align_backward:
            result = roi_align_backward(grad, boxes, features.shape, output_size, spatial_scale,
                                        2, True, **kwargs)
        else:
            result = roi_pool_backward(grad, boxes, features, output_size, spatial_scale,
                                       **kwargs)
    except Exception as error:  # noqa: BLE001 - compared below
        return type(error), str(error)
    return result.dtype, result.shape, result.tobytes()


FUNCTIONS = [roi_align, roi_pool, roi_align_backward, roi_pool_backward]


# The forms that hold the common call's very values (in float32: _boxes() rows are float32
# values, and 3.2 is not the same number in float64): they must give its very bytes.
SAME_VALUES = ("float32-boxes", "float64-boxes", "byteswapped-boxes", "fortran-boxes",
               "strided-boxes", "list-output-size", "numpy-output-size",
               "numpy-scale", "noncontiguous-features", "byteswapped-features",
               "readonly-features", "out", "num-threads-2")


# A refusal names the argument (for backward calls of another output size, grad_output).
ARGUMENT = r"\b(boxes|output_size|spatial_scale|layout|input|grad_output|num_threads|out)\b"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_every_form_is_the_common_call_or_refused_by_name(function, dtype, variant):
    """Each form of the arguments (what a separate fast path once had to agree on) either
    gives the common call's bytes, or a result of the right dtype, or a TypeError/ValueError
    naming the argument."""
    got = _call(function, variant, dtype)
    common = _call(function, "common", dtype)
    if isinstance(got[0], type) and issubclass(got[0], Exception):
        assert issubclass(got[0], (TypeError, ValueError, MemoryError)), got
        assert variant not in SAME_VALUES and variant != "common", got
        assert re.search(ARGUMENT, got[1]), got
        return
    if variant in SAME_VALUES and dtype == np.float32:
        assert got == common
    else:
        assert got[0] in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_usual_call_reads_the_features_in_place(layout, dtype):
    """The usual call takes the fast route: the record views the caller's features (no copy)
    through a private view (so no later x.shape = ... can change what the kernel sees)."""
    features, boxes, grad = _features(layout, dtype), _boxes(dtype), _grad(5, layout, dtype)
    for output_size, scale in (((PH_common, PW_common), 0.5), (PH_common, 1.0)):
        call = _args.forward_call(features, boxes, output_size, scale, layout, None)
        assert call.values is not features and call.values.base is features
    call = _args.backward_call(grad, boxes, features.shape, (PH_common, PW_common), 0.5, layout,
                               features, True, None)
    assert call.values.base is grad and call.features.base is features


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name not in
                                     ("common", "nhwc", "float32-boxes", "float64-boxes",
                                      "no-boxes", "int-output-size", "num-threads-2",
                                      "num-threads-0", "num-threads-float", "out",
                                      "readonly-features")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odd_forms_become_private_canonical_arrays(dtype, variant):
    """Every odd form that is accepted ends as private, canonical arrays in the call record
    (C-contiguous, aligned, native float32/64, nothing shared with the caller's boxes); every
    other form is refused by name."""
    changes = dict(VARIANTS[variant])
    layout = changes.pop("layout", "NCHW")
    features = _features(layout if isinstance(layout, str) else "NCHW", changes.pop("dtype", dtype))
    features = _view(features, changes.pop("features_view", None), layout)
    boxes = changes.pop("boxes", _boxes(dtype))
    try:
        call = _args.forward_call(features, boxes, changes.pop("output_size", (PH_common, PW_common)),
                                  changes.pop("spatial_scale", 0.5), layout, None)
    except (TypeError, ValueError, MemoryError) as error:
        assert re.search(ARGUMENT, str(error)), error
        return
    for array in (call.values, call.coords, call.batch_index, call.kernel_out):
        assert array.flags.c_contiguous and array.flags.aligned and array.dtype.isnative
    assert call.values.dtype in (np.float32, np.float64) and call.coords.dtype == call.values.dtype
    assert call.values is not features
    for part in boxes if isinstance(boxes, list) else [boxes]:
        assert not np.may_share_memory(call.coords, np.asarray(part))


@pytest.mark.parametrize("n_rois, n_images", [(0, 1), (1, 1), (7, 3), (500, 4), (3, 9)])
def test_group_by_image_is_a_stable_sort(n_rois, n_images):
    """The compiled counting sort equals argsort(kind="stable") + searchsorted."""
    from roialign_cy import _boxes as boxes_module

    batch_index = np.random.default_rng(n_rois).integers(0, n_images, n_rois).astype(np.intp)
    roi_order, image_first = boxes_module.group_by_image(batch_index, n_images)
    expected_order = np.argsort(batch_index, kind="stable")
    assert roi_order.dtype == image_first.dtype == np.intp
    np.testing.assert_array_equal(roi_order, expected_order)
    np.testing.assert_array_equal(
        image_first, np.searchsorted(batch_index[expected_order], np.arange(n_images + 1)))


@pytest.mark.parametrize("rows", [
    _boxes().astype(np.int64), _boxes().astype(np.int32), _byteswapped(_boxes()),
    np.asfortranarray(_boxes()), _boxes()[:, :4], _boxes()[::2],
], ids=["int64", "int32", "byteswapped", "fortran", "k4", "strided"])
def test_split_rows_refuses_what_it_cannot_read(rows):
    """_boxes reads raw pointers: any array the wrappers should never pass is refused."""
    from roialign_cy import _boxes as boxes_module

    with pytest.raises(ValueError):
        boxes_module.split_rows(rows, N, np.dtype(np.float32))
    with pytest.raises(ValueError):
        boxes_module.group_by_image(rows, N)


@pytest.mark.parametrize("values", [[-1, 0, 24], [-2, 0, 3], [0, 25, 3], [-1, -1, -1], []])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, ">i4"])
def test_argmax_range_check(values, dtype):
    """The compiled one-pass range check of int32 indices decides as NumPy's min() and max()."""
    from roialign_cy import _boxes as boxes_module

    indices = np.array(values, dtype=dtype)
    inside = all(-1 <= value < 25 for value in values)
    if indices.dtype == np.int32 and indices.dtype.isnative:
        assert boxes_module.all_within(indices, -1, 25) == inside
    if inside:
        _args.check_argmax(indices, indices.shape, 25)
    else:
        with pytest.raises(ValueError, match="outside"):
            _args.check_argmax(indices, indices.shape, 25)


def test_unaligned_boxes_and_argmax_are_accepted():
    """Unaligned C-contiguous boxes and arg-max indices (NumPy's '=f' / '=i' buffers) give
    the aligned arrays' results."""
    x = features()
    rows = boxes(np.float32)
    unaligned = np.frombuffer(b"\0" + rows.tobytes(), np.float32, offset=1).reshape(rows.shape)
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(roi_align(x, unaligned, PH), roi_align(x, rows, PH))
    pooled, argmax = roi_pool(x, rows, PH, return_argmax=True)
    indices = np.frombuffer(b"\0" + argmax.tobytes(), np.int32, offset=1).reshape(argmax.shape)
    assert not indices.flags.aligned
    grad = np.ones_like(pooled)
    np.testing.assert_array_equal(roi_pool_backward(grad, rows, x, PH, argmax=indices),
                                  roi_pool_backward(grad, rows, x, PH, argmax=argmax))


def test_out_mapping_the_same_file_as_the_input_is_refused(tmp_path):
    """Two np.memmaps of one file are two buffers to NumPy but one memory: refused."""
    path = tmp_path / "features.bin"
    x = np.memmap(path, np.float32, "w+", shape=(N, C, H, W))
    x[:] = features()
    x.flush()
    whole = np.memmap(path, np.float32, "r+", shape=out_shape("roi_align"))
    tail = np.memmap(path, np.float32, "r+", offset=(N * C * H * W - N * C * PH * PW) * 4,
                     shape=out_shape("roi_align"))
    for out in (whole, tail):
        before = np.array(out)
        with pytest.raises(ValueError, match="out overlaps"):
            roi_align(x, boxes(), PH, out=out)
        np.testing.assert_array_equal(out, before)
    elsewhere = np.memmap(tmp_path / "out.bin", np.float32, "w+", shape=out_shape("roi_align"))
    np.testing.assert_array_equal(roi_align(x, boxes(), PH, out=elsewhere),
                                  roi_align(np.array(x), boxes(), PH))
