"""The package's layout holds: one module pair per operator over a core that never imports
an operator, complete type stubs for every compiled module, a kernel table of function
objects, and a seed call that stays within 10 Python-level function calls."""

import ast
import importlib
import inspect
import os
import sys

import numpy as np
import pytest

import roialign_cy
from roialign_cy import _dispatch

PACKAGE_DIR = os.path.dirname(roialign_cy.__file__)
EXTENSION_SUFFIXES = (".so", ".pyd")


def compiled_modules():
    """Names of the compiled modules this installation ships, e.g. "_roi_align_kernels"
    (not the compiled call path, _args and the like: their .py sources are their stubs)."""
    names = set()
    for entry in os.listdir(PACKAGE_DIR):
        name = entry.split(".")[0]
        if entry.endswith(EXTENSION_SUFFIXES) and not os.path.exists(
                os.path.join(PACKAGE_DIR, name + ".py")):
            names.add(name)
    return sorted(names)


def operators():
    """The operators, found by name: each has a compiled `_<op>_kernels` module."""
    return sorted(name[1:-len("_kernels")] for name in compiled_modules()
                  if name.endswith("_kernels"))


def test_every_operator_is_a_module_pair():
    assert operators() == ["multiscale_roi_align", "prroi_pool", "ps_roi_align", "ps_roi_pool",
                           "roi_align", "roi_align_rotated", "roi_pool"]
    for op in operators():
        module = importlib.import_module(f"roialign_cy._{op}")
        kernels = importlib.import_module(f"roialign_cy._{op}_kernels")
        # prroi_pool's box gradient is a third direction
        extra = ["box_backward"] if op == "prroi_pool" else []
        assert sorted(kernels.KERNELS) == ["backward"] + extra + ["forward"]
        # The public functions and their class live in the operator's own module.
        public = [name for name in roialign_cy.__all__
                  if getattr(getattr(roialign_cy, name), "__module__", None) == module.__name__]
        assert len(public) == 3, public


def _imports(path):
    """Every module name a Python source file imports (absolute, as written)."""
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_never_imports_an_operator():
    op_modules = set()
    for op in operators():
        op_modules |= {f"roialign_cy._{op}", f"roialign_cy._{op}_kernels",
                       f"roialign_cy._{op}_kernels_avx2"}
    core = [name for name in os.listdir(PACKAGE_DIR) if name.endswith(".py")
            and name not in ("__init__.py", "__main__.py")
            and name[1:-3] not in operators()]
    assert "_args.py" in core and "_plan.py" in core and "_dispatch.py" in core
    for name in core:
        up = _imports(os.path.join(PACKAGE_DIR, name)) & op_modules
        assert not up, f"{name} imports operator modules {sorted(up)}"


def _stub_functions(path):
    """{name: [parameter names]} of the functions in a .pyi, and the other public names."""
    tree = ast.parse(open(path).read())
    functions, others = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = [a.arg for a in node.args.posonlyargs + node.args.args
                                    + node.args.kwonlyargs]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            others.add(node.target.id)
    return functions, {name for name in others if not name.startswith("_")}


@pytest.mark.parametrize("name", compiled_modules())
def test_stub_is_complete(name):
    """Every public name of a compiled module is in its stub, with the same parameters.

    (mypy's stubtest, run over the whole package in test_typing.py, does not look inside
    Cython's fused functions; this does.)"""
    stub = os.path.join(PACKAGE_DIR, name + ".pyi")
    assert os.path.exists(stub), f"{name} ships without a type stub"
    module = importlib.import_module(f"roialign_cy.{name}")
    if name.endswith("_avx2"):  # re-exports its baseline twin's stub
        baseline = importlib.import_module(f"roialign_cy.{name[:-len('_avx2')]}")
        assert open(stub).read().count(f"from {baseline.__name__} import *") == 1
        stub = os.path.join(PACKAGE_DIR, name[:-len("_avx2")] + ".pyi")
    functions, others = _stub_functions(stub)
    # Names the module only imports (modules, or objects whose __module__ is another, such as
    # the classes Cython's shared utility module keeps under "_cyutility") need no stub entry:
    # mypy's stubtest does not ask for them either.
    runtime = {attr for attr, value in vars(module).items() if not attr.startswith("_")
               and not inspect.ismodule(value)
               and getattr(value, "__module__", module.__name__) == module.__name__}
    assert runtime == set(functions) | others, (runtime, set(functions) | others)
    for function, parameters in functions.items():
        signature = inspect.signature(getattr(module, function))
        assert list(signature.parameters) == parameters, function


def test_kernel_tables_hold_function_objects():
    """(direction, build, dtype) -> the compiled specialization, for every usable build."""
    assert len(_dispatch.TABLES) == len(operators())
    assert _dispatch.SIMD in _dispatch.BUILDS
    for table in _dispatch.TABLES:
        # prroi_pool's box gradient is a third direction
        directions = {direction for direction, _, _ in table}
        assert directions in ({"forward", "backward"}, {"forward", "backward", "box_backward"})
        expected = {(direction, build, np.dtype(dtype)) for direction in directions
                    for build in _dispatch.BUILDS for dtype in (np.float32, np.float64)}
        assert set(table) == expected
        assert all(callable(kernel) and not isinstance(kernel, str) for kernel in table.values())


def test_seed_call_makes_at_most_10_python_calls():
    """The seed notebook's call, counted with sys.setprofile: Python-level calls only (C
    functions, compiled kernels included, show as c_call events and are not counted). With
    the call path compiled (setup.py) there are none at all."""
    image = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1:]
    boxes = np.array([[0, 1, 4, 4, 4]], dtype=np.float32)
    args = (image, boxes, (4, 4), 1.0, 2, False)
    expected = roialign_cy.roi_align(*args, layout="NHWC")
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        pooled = roialign_cy.roi_align(*args, layout="NHWC")
    finally:
        sys.setprofile(None)
    np.testing.assert_array_equal(pooled, expected)
    assert pooled[0, 0, 0].tolist() == [92.75, 93.75]
    compiled = roialign_cy._args.__file__.endswith(EXTENSION_SUFFIXES)
    assert len(calls) <= (0 if compiled else 10), calls
