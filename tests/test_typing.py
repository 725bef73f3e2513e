"""The public API is typed: what README.md shows a user doing passes `mypy --strict`, misuse
fails it, roi_pool's arg-max overloads resolve, and mypy.stubtest finds every annotation and
stub of the whole package true to the run-time objects.

mypy runs in a subprocess from a temporary folder (never the repository root, whose
roialign_cy mypy would read from the current directory), with the folder above the package
the tests import on PYTHONPATH: mypy then reads it as an installed package (PEP 561,
py.typed), as a user's mypy would, also in an editable install, whose import hook mypy
cannot follow. MYPYPATH would instead check the package as the user's own code, and mypy
refuses a site-packages folder there.
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

import roialign_cy

pytest.importorskip("mypy", reason="mypy is not installed (the test extra)")

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(roialign_cy.__file__)))
# assert_type is checked by mypy only; the script also runs, which needs the module.
HAS_TYPING_EXTENSIONS = importlib.util.find_spec("typing_extensions") is not None

USER_SCRIPT = '''
"""README.md's examples (smaller arrays), with the types a user would write down."""
from typing import Any, List, Tuple, Union

import numpy as np
import numpy.typing as npt

import roialign_cy
from roialign_cy import (PrRoIPool, PSRoIAlign, PSRoIPool, RoIAlign, RoIAlignRotated, RoIPool,
                         prroi_pool, prroi_pool_backward, ps_roi_align, ps_roi_align_backward,
                         ps_roi_pool, ps_roi_pool_backward, roi_align, roi_align_backward,
                         roi_align_rotated, roi_align_rotated_backward, roi_pool,
                         roi_pool_backward)

Pooled = npt.NDArray[Any]
ArgMax = npt.NDArray[np.int32]

features = np.random.rand(2, 8, 20, 30).astype(np.float32)      # (N, C, H, W)
boxes = np.array([[0, 10.0, 20.0, 100.0, 70.0],                  # [batch_index, x1, y1, x2, y2]
                  [1, 50.0, 60.0, 120.0, 90.0]])
pooled: Pooled = roi_align(features, boxes, output_size=7, spatial_scale=1 / 4,
                           sampling_ratio=2, aligned=True)

buffer = np.empty((2, 8, 7, 7), np.float32)
written: Pooled = roi_align(features, boxes, 7, 1 / 4, 2, True, out=buffer)
nhwc: Pooled = roi_align(features.transpose(0, 2, 3, 1), boxes, 7, 1 / 4, 2, True,
                         layout="NHWC")
maxed_align: Pooled = roi_align(features, boxes, (7, 7), mode="max", num_threads=2)
# NumPy scalars where the API takes numbers, and torchvision's list of (K_i, 4) boxes.
per_image: List[npt.NDArray[np.float64]] = [boxes[:1, 1:], boxes[1:, 1:]]
scalars: Pooled = roi_align(features, per_image, np.int64(7), np.float32(0.25), np.int64(2),
                            np.bool_(True))

grad: Pooled = roi_align_backward(np.ones_like(pooled), boxes, features.shape, 7, 1 / 4, 2, True)
grad = roi_align_backward(np.ones_like(maxed_align), boxes, features.shape, (7, 7),
                          mode="max", input=features)

maxed: Pooled = roi_pool(features, boxes, 7, 1 / 4)
grad = roi_pool_backward(np.ones_like(maxed), boxes, features, 7, 1 / 4)
maxed, argmax = roi_pool(features, boxes, 7, 1 / 4, return_argmax=True)
indices: ArgMax = argmax
grad = roi_pool_backward(np.ones_like(maxed), boxes, features, 7, 1 / 4, argmax=argmax)
maxed = roi_pool(features, per_image, 7, 1 / 4, return_argmax=False)


def pool_maybe_argmax(flag: bool) -> Union[Pooled, Tuple[Pooled, ArgMax]]:
    """return_argmax only known at run time: either result."""
    return roi_pool(features, boxes, 7, return_argmax=flag)


pyramid = [np.random.rand(2, 8, 40 // s, 60 // s).astype(np.float32) for s in (1, 2)]
sizes: List[Tuple[int, int]] = [(160, 240), (160, 240)]
fpn: Pooled = roialign_cy.multiscale_roi_align(pyramid, boxes, 7, 2, image_sizes=sizes)
fpn = roialign_cy.multiscale_roi_align({"p2": pyramid[0], "p3": pyramid[1]}, per_image, (7, 7),
                                       featmap_names=["p2", "p3"], scales=[0.25, 0.125],
                                       level_rule="mmdet", num_threads=2)
level_grads: List[Pooled] = roialign_cy.multiscale_roi_align_backward(
    np.ones_like(fpn), boxes, [p.shape for p in pyramid], 7, 2, image_sizes=sizes)
fpn_head = roialign_cy.MultiScaleRoIAlign(["p2", "p3"], 7, 2, level_rule="detectron2")
fpn = fpn_head({"p2": pyramid[0], "p3": pyramid[1]}, boxes, sizes)
level_grads = fpn_head.backward(np.ones_like(fpn), boxes, [p.shape for p in pyramid], sizes)
levels: npt.NDArray[np.int64] = roialign_cy.assign_levels(boxes[:, 1:], 2, 3, rule="torchvision")

head = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True, layout="NCHW")
pooled = head(features, boxes)
grad = head.backward(np.ones_like(pooled), boxes, features.shape)
size: Tuple[int, int] = head.output_size
scale: float = head.spatial_scale
same: bool = head == RoIAlign(7, 1 / 16, 2, True)
pool = RoIPool((7, 7), spatial_scale=1 / 16)
maxed = pool(features, boxes)
pair: Tuple[Pooled, ArgMax] = pool(features, boxes, return_argmax=True)
grad = pool.backward(np.ones_like(pair[0]), boxes, features, argmax=pair[1])
text: str = repr(pool)

config = roialign_cy.show_config(print_out=False)
threads: int = config["max_threads"]
openmp: bool = config["openmp"]
version: str = roialign_cy.__version__
simd: str = config["simd"]

score_maps = np.random.rand(2, 2 * 7 * 7, 20, 30).astype(np.float32)  # position-sensitive
ps_pooled: Pooled = ps_roi_align(score_maps, boxes, 7, 1 / 4, 2, layout="NCHW")
ps_grad: Pooled = ps_roi_align_backward(ps_pooled, boxes, score_maps.shape, 7, 1 / 4, 2)
ps_maxed: Pooled = ps_roi_pool(score_maps, per_image, np.int64(7), np.float32(0.25))
ps_grad = ps_roi_pool_backward(ps_maxed, boxes, score_maps.shape, (7, 7), 1 / 4,
                               num_threads=2)
rfcn = PSRoIAlign(7, spatial_scale=1 / 4, sampling_ratio=2)
ps_pooled = rfcn(score_maps, boxes)
ps_grad = rfcn.backward(ps_pooled, boxes, score_maps.shape)
ps_pool = PSRoIPool((7, 7), 1 / 4, layout="NCHW")
ps_grad = ps_pool.backward(ps_pool(score_maps, boxes), boxes, score_maps.shape)
ps_size: Tuple[int, int] = rfcn.output_size

oriented = np.array([[0, 50.0, 40.0, 30.0, 20.0, 30.0], [1, 60.0, 30.0, 20.0, 20.0, -45.0]])
rotated: Pooled = roi_align_rotated(features, oriented, 7, 1 / 4, 2, True, clockwise=False,
                                    angle_unit="degrees", layout="NCHW", num_threads=2)
rotated_grad: Pooled = roi_align_rotated_backward(rotated, oriented, features.shape, (7, 7),
                                                  1 / 4, angle_unit="radians")
rotated_head = RoIAlignRotated(7, 1 / 4, 2, aligned=False, clockwise=True, angle_unit="radians")
rotated = rotated_head(features, oriented, out=rotated)
rotated_grad = rotated_head.backward(rotated, oriented, features.shape)
unit: str = rotated_head.angle_unit
precise: Pooled = prroi_pool(features, boxes, 7, 1 / 4, layout="NCHW", num_threads=2)
precise_grad: Pooled = prroi_pool_backward(precise, boxes, features.shape, 7, 1 / 4)
both: Tuple[Pooled, Pooled] = prroi_pool_backward(precise, boxes, features.shape, (7, 7), 0.25,
                                                  input=features, box_grad=True)
prroi = PrRoIPool(7, 1 / 4)
precise = prroi(features, boxes)
both = prroi.backward(precise, boxes, features.shape, input=features, box_grad=True)
precise_grad = prroi.backward(precise, boxes, features.shape)

assert same and isinstance(pair, tuple) and pair[1].dtype == np.dtype(np.int32)
assert config["version"] == version and simd in ("avx2", "baseline")
assert isinstance(pool_maybe_argmax(True), tuple) and scalars.shape == (2, 8, 7, 7)
assert ps_pooled.shape == (2, 2, 7, 7) and ps_grad.shape == score_maps.shape
assert rotated.shape == pooled.shape and rotated_grad.shape == features.shape
assert both[1].shape == (len(boxes), 5) and precise_grad.shape == features.shape
'''

ASSERT_TYPES = '''
from typing_extensions import assert_type

assert_type(roi_align(features, boxes, 7), Pooled)
assert_type(roi_align_backward(pooled, boxes, features.shape, 7), Pooled)
assert_type(roi_pool(features, boxes, 7), Pooled)
assert_type(roi_pool(features, boxes, 7, return_argmax=True), Tuple[Pooled, ArgMax])
assert_type(roi_pool_backward(maxed, boxes, features, 7, argmax=argmax), Pooled)
assert_type(pool(features, boxes, return_argmax=True), Tuple[Pooled, ArgMax])
assert_type(pool(features, boxes), Pooled)
assert_type(head.backward(pooled, boxes, features.shape), Pooled)
assert_type(prroi_pool_backward(precise, boxes, features.shape, 7), Pooled)
assert_type(prroi_pool_backward(precise, boxes, features.shape, 7, input=features,
                                box_grad=True), Tuple[Pooled, Pooled])
assert_type(prroi.backward(precise, boxes, features.shape, input=features, box_grad=True),
            Tuple[Pooled, Pooled])
'''

# Each line marked "# E: <code>" must fail with that mypy error code (one of "a|b": codes
# differ between mypy versions); no other line may.
MISUSE_SCRIPT = '''
from typing import Any

import numpy as np
import numpy.typing as npt

from roialign_cy import RoIAlign, RoIPool, roi_align, roi_pool, show_config

features = np.zeros((1, 8, 20, 30), np.float32)
boxes = np.array([[0, 1.0, 2.0, 10.0, 12.0]])
pooled: npt.NDArray[Any] = roi_pool(features, boxes, 7, return_argmax=True)  # E: assignment
shape = RoIPool(7)(features, boxes, return_argmax=True).shape  # E: attr-defined
pair = roi_pool(features, boxes, 7, return_argmax=True)
where: npt.NDArray[np.float32] = pair[1]  # E: assignment
roi_align(features, boxes, 7, layout="NWHC")  # E: arg-type
roi_pool(features, boxes, 7, layout="NWHC")  # E: call-overload
roi_align(features, boxes, "7")  # E: arg-type
roi_align(features, boxes, 7, 1.0, 2, False, "NHWC")  # E: call-arg|misc
RoIAlign(7, mode="mean")  # E: arg-type
threads: str = show_config()["max_threads"]  # E: assignment
'''

REVEAL_SCRIPT = '''
import numpy as np

from roialign_cy import RoIPool, roi_align, roi_pool

features = np.zeros((1, 8, 20, 30), np.float32)
boxes = np.array([[0, 1.0, 2.0, 10.0, 12.0]])


def flag() -> bool:
    return True


reveal_type(roi_align(features, boxes, 7))  # R: array
reveal_type(roi_pool(features, boxes, 7))  # R: array
reveal_type(roi_pool(features, boxes, 7, return_argmax=True))  # R: pair
reveal_type(RoIPool(7)(features, boxes, return_argmax=True))  # R: pair
reveal_type(roi_pool(features, boxes, 7, return_argmax=flag()))  # R: either
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One temporary folder for every run: mypy's cache is shared, the repository is not cwd."""
    return tmp_path_factory.mktemp("typing")


def run_python(workdir, *args):
    """`python *args` in workdir, importing (and type-checking) the package the tests import."""
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True,
                          text=True)


def mypy(workdir, name, text):
    """Write `text` to workdir/name and run `mypy --strict` on it: (result, output)."""
    (workdir / name).write_text(textwrap.dedent(text))
    result = run_python(workdir, "-m", "mypy", "--strict", "--no-error-summary", name)
    return result, result.stdout + result.stderr


def marked_lines(text, marker):
    """{line number: what follows `# <marker>: `} in the script written from `text`."""
    lines = textwrap.dedent(text).splitlines()
    return {number: line.split(f"# {marker}: ")[1].strip()
            for number, line in enumerate(lines, 1) if f"# {marker}: " in line}


def test_user_script_passes_mypy_strict_and_runs(workdir):
    script = USER_SCRIPT + (ASSERT_TYPES if HAS_TYPING_EXTENSIONS else "")
    result, output = mypy(workdir, "user_script.py", script)
    assert result.returncode == 0, output
    assert "roialign_cy" not in output, output  # nothing reported inside the package
    ran = run_python(workdir, "user_script.py")  # and the types describe what really happens
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_misuse_fails_mypy_strict(workdir):
    result, output = mypy(workdir, "misuse.py", MISUSE_SCRIPT)
    assert result.returncode == 1, output
    errors = {}
    for number, code in re.findall(r"^misuse\.py:(\d+): error: .*\[([a-z-]+)\]$", output, re.M):
        errors.setdefault(int(number), set()).add(code)
    expected = marked_lines(MISUSE_SCRIPT, "E")
    assert set(errors) == set(expected), output
    for number, codes in expected.items():
        assert errors[number] & set(codes.split("|")), (number, codes, output)


def test_revealed_types(workdir):
    """roi_pool's overloads: an array, a (pooled, int32 arg-max) tuple, or either."""
    result, output = mypy(workdir, "reveal.py", REVEAL_SCRIPT)
    assert result.returncode == 0, output
    revealed = {int(number): found for number, found in
                re.findall(r'^reveal\.py:(\d+): note: Revealed type is "(.*)"$', output, re.M)}
    expected = marked_lines(REVEAL_SCRIPT, "R")
    assert set(revealed) == set(expected), output
    array = re.compile(r"numpy\.ndarray\[.*\]$")
    pair = re.compile(r"[Tt]uple\[numpy\.ndarray\[.*\], numpy\.ndarray\[.*32Bit.*\]\]$")
    for number, kind in expected.items():
        found = revealed[number]
        if kind == "array":
            assert array.match(found) and "32Bit" not in found, found
        elif kind == "pair":
            assert pair.match(found), found
        else:
            assert "numpy.ndarray" in found and re.search(r"[Tt]uple\[numpy\.ndarray", found) and (
                " | " in found or found.startswith("Union[")), found


DASK_SCRIPT = '''
"""README.md's Dask section, with the types a user would write down."""
import dask.array as da
import numpy as np

from roialign_cy import dask as roi_dask

features = da.zeros((2, 8, 20, 30), dtype=np.float32, chunks=(1, 8, 20, 30))
boxes = np.array([[1, 1.0, 2.0, 10.0, 12.0], [0, 3.0, 4.0, 50.0, 60.0]])
pooled: da.Array = roi_dask.roi_align(features, boxes, 7, 1 / 4, 2, True, layout="NCHW",
                                      mode="max", num_threads=None)
maxed: da.Array = roi_dask.roi_pool(features, [boxes[1:, 1:], boxes[:1, 1:]], (7, 7), 0.25)
fpn: da.Array = roi_dask.multiscale_roi_align([features, features[:, :, ::2, ::2]], boxes, 7,
                                              image_sizes=[(80, 120)] * 2, level_rule="mmdet")
assert pooled.shape == maxed.shape == fpn.shape == (2, 8, 7, 7)
'''


def test_dask_calls_pass_mypy_strict_and_run(workdir):
    pytest.importorskip("dask.array", reason="dask is not installed (the dask extra)")
    result, output = mypy(workdir, "dask_script.py", DASK_SCRIPT)
    assert result.returncode == 0, output
    ran = run_python(workdir, "dask_script.py")
    assert ran.returncode == 0, ran.stdout + ran.stderr


# The package's optional modules and the dependency each imports (its extra's).
OPTIONAL_MODULES = {"roialign_cy.plot": "matplotlib", "roialign_cy.dask": "dask"}


@pytest.mark.skipif(sys.version_info < (3, 11), reason=(
    "before Python 3.11 typing.Any, NamedTuple and TypedDict are not classes at run time, and "
    "the mypy that runs there (1.x) reports every module importing them as a stub mismatch"))
def test_stubtest_passes_on_the_whole_package(workdir):
    """Every module, compiled (.pyi stubs, the AVX2 twins' generated ones included) and
    Python (inline annotations), without an allowlist.

    Except where an optional module's dependency is not installed (matplotlib for
    roialign_cy.plot, dask for roialign_cy.dask): that module then cannot be imported (by
    design: it says which extra to install) and mypy cannot see its dependency's types, so
    those two are let pass, and nothing else.
    """
    missing = {module: dependency for module, dependency in OPTIONAL_MODULES.items()
               if importlib.util.find_spec(dependency) is None}
    options = []
    if missing:
        sections = "".join(f"[mypy-{name},{name}.*]\nignore_missing_imports = True\n"
                           for name in missing.values())
        (workdir / "missing_extras.ini").write_text("[mypy]\n" + sections)
        (workdir / "missing_extras.txt").write_text("".join(f"{m}\n" for m in missing))
        options = ["--mypy-config-file", "missing_extras.ini",
                   "--allowlist", "missing_extras.txt"]
    result = run_python(workdir, "-m", "mypy.stubtest", "roialign_cy", *options)
    assert result.returncode == 0, result.stdout + result.stderr
