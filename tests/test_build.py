"""The build is what it claims: OpenMP compiled in wherever the compiler offers it, typing files.

Like scikit-learn's test_openmp_parallelism_enabled: a wheel or source build that silently
fell back to the serial kernels passes every numerical test, so this test fails it instead,
unless the serial build was asked for (ROIALIGN_CY_NO_OPENMP=1) or the platform's compiler
really has no OpenMP (then it skips, saying why).
"""

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import resources

import pytest

import roialign_cy

OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def compiler_openmp_support():
    """(supported, reason): can this platform's C compiler build and run an OpenMP program?"""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(compiler[0]) is None:
        return None, f"no C compiler ({compiler[0]}) to probe OpenMP support with"
    if sys.platform == "darwin":
        flag_sets = [["-Xpreprocessor", "-fopenmp", "-lomp"], ["-fopenmp"]]
    else:
        flag_sets = [["-fopenmp"]]
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        for flags in flag_sets:
            program = os.path.join(tmp, "probe")
            built = subprocess.run(compiler + [source, "-o", program] + flags,
                                   capture_output=True, timeout=120)
            if built.returncode == 0 and subprocess.run([program], timeout=60).returncode == 0:
                return True, f"{' '.join(compiler)} {' '.join(flags)} builds OpenMP programs"
    return False, f"{' '.join(compiler)} cannot build an OpenMP program (e.g. macOS without libomp)"


def test_openmp_parallelism_enabled():
    if os.environ.get("ROIALIGN_CY_NO_OPENMP", "") not in ("", "0"):
        pytest.skip("ROIALIGN_CY_NO_OPENMP is set: the serial build was asked for")
    config = roialign_cy.show_config(print_out=False)
    if config["openmp"]:
        assert config["max_threads"] >= 1
        return
    supported, reason = compiler_openmp_support()
    if not supported:
        pytest.skip(f"serial build, and this platform has no OpenMP: {reason}")
    pytest.fail(
        f"roialign_cy was built WITHOUT OpenMP although {reason}. If that is intended, set "
        "ROIALIGN_CY_NO_OPENMP=1; otherwise the build's OpenMP probe failed (see the build log "
        "for the 'building a SERIAL extension' warning)."
    )


def test_show_config_agrees_with_the_extension():
    from roialign_cy import _runtime

    config = roialign_cy.show_config(print_out=False)
    assert config["openmp"] is bool(_runtime.OPENMP_ENABLED)
    assert config["version"] == roialign_cy.__version__
    if not config["openmp"]:
        assert config["max_threads"] == 1


def _package_files():
    return {entry.name for entry in resources.files("roialign_cy").iterdir()}


def test_py_typed_marker_is_shipped():
    assert "py.typed" in _package_files(), "PEP 561 marker roialign_cy/py.typed is missing"


def test_compiled_modules_have_stubs():
    """py.typed promises types; the compiled modules need .pyi stubs to keep that promise."""
    files = _package_files()
    compiled = sorted({name.split(".")[0] for name in files
                       if name.endswith((".so", ".pyd")) and not name.startswith("__")})
    stubs = sorted(name[:-4] for name in files if name.endswith(".pyi"))
    missing = [module for module in compiled if module not in stubs]
    if not stubs:
        pytest.skip(f"the package ships no .pyi stub (compiled modules without one: "
                    f"{', '.join(compiled)}); reported, not failed")
    assert not missing, f"compiled modules without a .pyi stub: {missing}"
    # every stub parses and only names what the module really has
    for stub in stubs:
        tree = ast.parse(resources.files("roialign_cy").joinpath(stub + ".pyi").read_text())
        module = __import__(f"roialign_cy.{stub}", fromlist=["_"])
        names = {node.name for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert names <= set(dir(module)), f"{stub}.pyi names missing from the module: " \
                                          f"{sorted(names - set(dir(module)))}"
