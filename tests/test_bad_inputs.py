"""Every public entry point refuses bad input before any kernel runs, naming the argument.

One table, CASES, holds every bad input: (entry point, what is changed from a valid call,
exception type, regex the message must match). Each case is checked in-process with the
compiled kernels replaced by tripwires (so "validated before any kernel runs" is tested, not
assumed). The cases where a missing check could crash the interpreter (bad batch index,
NaN/huge boxes, overlapping `out`, huge outputs) also run in a child interpreter, which must
exit normally after catching the exception instead of dying from a signal.
"""

import builtins
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import roialign_cy
from roialign_cy import RoIAlign, RoIPool, roi_align, roi_align_backward, roi_pool
from roialign_cy import roi_pool_backward

N, C, H, W = 2, 3, 6, 7
PH = PW = 2

ENTRY_POINTS = {
    "roi_align": roi_align,
    "roi_align_backward": roi_align_backward,
    "roi_pool": roi_pool,
    "roi_pool_backward": roi_pool_backward,
    "RoIAlign": RoIAlign,
    "RoIPool": RoIPool,
}
ALL4 = ("roi_align", "roi_align_backward", "roi_pool", "roi_pool_backward")
FORWARD = ("roi_align", "roi_pool")
BACKWARD = ("roi_align_backward", "roi_pool_backward")
ALIGN = ("roi_align", "roi_align_backward")
CLASSES = ("RoIAlign", "RoIPool")


def features(dtype=np.float32, shape=(N, C, H, W)):
    """A valid feature map."""
    return (np.arange(np.prod(shape)).reshape(shape) % 11).astype(dtype)


def boxes(dtype=np.float64):
    """Two valid boxes, one per image."""
    return np.array([[0, 0.5, 0.5, 4.0, 5.0], [1, 1.0, 0.0, 6.0, 3.0]], dtype=dtype)


def grad(shape=(N, C, PH, PW), dtype=np.float32):
    """A valid gradient of the pooled output."""
    return np.ones(shape, dtype=dtype)


def base_kwargs(name):
    """Keyword arguments of a valid call of entry point `name`."""
    if name in FORWARD:
        return dict(input=features(), boxes=boxes(), output_size=PH)
    if name == "roi_align_backward":
        return dict(grad_output=grad(), boxes=boxes(), input_shape=(N, C, H, W), output_size=PH)
    if name == "roi_pool_backward":
        return dict(grad_output=grad(), boxes=boxes(), input=features(), output_size=PH)
    return dict(output_size=PH)


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
    if name in FORWARD:  # out (2, 3, 2, 2) inside the features' buffer
        return kwargs["input"][:, :, :PH, :PW]
    buffer = np.zeros(N * C * H * W + 64, dtype=np.float32)
    if name == "roi_align_backward":  # grad_output is a view into out
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


def out_shape(name, nhwc=False):
    """Shape of the result of a valid call of `name`."""
    if name in FORWARD:
        return (N, PH, PW, C) if nhwc else (N, C, PH, PW)
    return (N, C, H, W)


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
for name in FORWARD + ("roi_pool_backward",):
    add(name, "input-2d", {"input": features(shape=(H, W))}, ValueError, r"\binput\b")
    add(name, "input-5d", {"input": features(shape=(1, N, C, H, W))}, ValueError, r"\binput\b")
    add(name, "input-0d", {"input": np.float32(1)}, ValueError, r"\binput\b")
    for dtype in (np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object):
        add(name, f"input-{np.dtype(dtype).name}", {"input": features(dtype)}, TypeError,
            r"\binput\b")
    if np.dtype(np.longdouble).itemsize > 8:
        add(name, "input-longdouble", {"input": features(np.longdouble)}, TypeError, r"\binput\b")
    add(name, "input-str", {"input": "features"}, TypeError, r"\binput\b")
for name in FORWARD:
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
    add("roi_align_backward", f"input_shape-{what}", {"input_shape": value}, exc, r"input_shape")

# ---- grad_output of the backwards ---------------------------------------------------------------
for name in BACKWARD:
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
add("roi_align_backward", "max-without-input", {"mode": "max"}, ValueError, r"\binput\b")
add("roi_align_backward", "max-input-shape", {"mode": "max", "input": features(shape=(N, C, H, 5))},
    ValueError, r"\binput\b.*shape")
add("roi_align_backward", "max-input-int", {"mode": "max", "input": features(np.int64)},
    TypeError, r"\binput\b")

# ---- boxes ----------------------------------------------------------------------------------------
for name in ALL4:
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
for name in ALL4 + CLASSES:
    for what, value, exc in [
        ("zero", 0, ValueError), ("negative", -1, ValueError), ("float", 2.0, TypeError),
        ("np-float", np.float64(2), TypeError), ("str", "2", TypeError), ("none", None, TypeError),
        ("bool", True, TypeError), ("pair-zero", (2, 0), ValueError),
        ("pair-float", (2, 2.5), TypeError), ("one-tuple", (2,), ValueError),
        ("triple", (2, 2, 2), ValueError), ("too-big", 2**40, ValueError),
    ]:
        add(name, f"output_size-{what}", {"output_size": value}, exc, r"output_size")

# ---- sampling_ratio -------------------------------------------------------------------------------
for name in ALIGN + ("RoIAlign",):
    for what, value, exc in [
        ("float", 2.0, TypeError), ("half", 0.5, TypeError), ("str", "2", TypeError),
        ("none", None, TypeError), ("bool", True, TypeError), ("too-big", 2**40, ValueError),
    ]:
        add(name, f"sampling_ratio-{what}", {"sampling_ratio": value}, exc, r"sampling_ratio")

# ---- spatial_scale --------------------------------------------------------------------------------
for name in ALL4 + CLASSES:
    for what, value, exc in [
        ("zero", 0.0, ValueError), ("negative", -0.25, ValueError), ("nan", np.nan, ValueError),
        ("inf", np.inf, ValueError), ("neg-inf", -np.inf, ValueError),
        ("str", "1", TypeError), ("none", None, TypeError), ("complex", 1j, TypeError),
        ("bool", True, TypeError), ("array", np.array([1.0, 2.0]), TypeError),
    ]:
        add(name, f"spatial_scale-{what}", {"spatial_scale": value}, exc, r"spatial_scale")

# ---- layout and mode ------------------------------------------------------------------------------
for name in ALL4 + CLASSES:
    for what, value in [("lower", "nchw"), ("chw", "CHW"), ("none", None), ("int", 0)]:
        add(name, f"layout-{what}", {"layout": value}, ValueError, r"layout")
for name in ALIGN + ("RoIAlign",):
    for what, value in [("mean", "mean"), ("upper", "MAX"), ("none", None), ("onnx", "max_onnx")]:
        add(name, f"mode-{what}", {"mode": value}, ValueError, r"mode")

# ---- out ------------------------------------------------------------------------------------------
for name in ALL4:
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
for name in FORWARD:
    add(name, "out-overlaps-boxes", {"out": out_overlapping_boxes}, ValueError,
        r"\bout\b.*overlaps", crash_prone=True)
    add(name, "out-nchw-shape-for-nhwc",
        {"layout": "NHWC", "input": features(shape=(N, H, W, C)),
         "out": np.zeros((N, C, PH, PW), np.float32)}, ValueError, r"\bout\b.*shape")

# ---- num_threads ----------------------------------------------------------------------------------
for name in ALL4:
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
add("roi_align_backward", "huge-input_shape",
    {"input_shape": (1, 1, 10**7, 10**7), "grad_output": grad((N, 1, PH, PW)),
     "boxes": np.array([[0, 0, 0, 2, 2], [0, 1, 1, 3, 3.0]])}, MemoryError, r"",
    crash_prone=True)
add("roi_pool_backward", "huge-input-broadcast",
    {"input": np.broadcast_to(np.float32(0), (N, 1, 10**7, 10**7)),
     "grad_output": grad((N, 1, PH, PW))}, MemoryError, r"", crash_prone=True)

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
    from roialign_cy import _kernels, _pool_kernels, _simd

    class Tripwire:
        """Stands for a fused kernel: indexing it (a specialization) gives itself back."""

        def __call__(self, *args, **kwargs):
            raise AssertionError("a kernel ran before the bad input was refused")

        def __getitem__(self, signature):
            return self

    tripwire = Tripwire()

    # Every build of the kernels: _simd may have picked the AVX2 one.
    for module in {_kernels, _pool_kernels, _simd.kernels, _simd.pool_kernels}:
        for attr in dir(module):
            if attr.startswith("roi_") and callable(getattr(module, attr)):
                monkeypatch.setattr(module, attr, tripwire)


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
    _simd picked, so a bad input that slipped through validation would be caught above."""
    features = np.ones((1, 1, 4, 4), np.float32)
    boxes = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(AssertionError, match="a kernel ran"):
        roi_align(features, boxes, 2)
    with pytest.raises(AssertionError, match="a kernel ran"):
        roi_pool_backward(np.ones((1, 1, 1, 1), np.float32), boxes, features, 1,
                          argmax=np.zeros((1, 1, 1, 1), np.int32))
