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
import warnings
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


def test_a_serial_build_warns_at_import_where_threads_would_help():
    """pip hides the build's message, so a build that ended up serial says so at import."""
    from roialign_cy import _config

    with pytest.warns(RuntimeWarning, match="without OpenMP.*4 CPUs.*ROIALIGN_CY_ALLOW_SERIAL"):
        _config.warn_if_serial(False, 4, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _config.warn_if_serial(False, 4, {"ROIALIGN_CY_ALLOW_SERIAL": "1"})  # on purpose
        _config.warn_if_serial(False, 1, {})  # one CPU: nothing lost
        _config.warn_if_serial(True, 4, {})


def test_importing_this_build_warns_only_if_it_is_serial():
    from roialign_cy import _plan, _runtime

    env = {k: v for k, v in os.environ.items() if k != "ROIALIGN_CY_ALLOW_SERIAL"}
    imported = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c",
                               "import roialign_cy"], capture_output=True, text=True, env=env,
                              cwd=tempfile.gettempdir(), timeout=120)
    serial = not _runtime.OPENMP_ENABLED and _plan.USABLE_CPUS > 1
    assert (imported.returncode != 0) == serial, imported.stderr
    if serial:
        assert "ROIALIGN_CY_ALLOW_SERIAL" in imported.stderr


def _package_files():
    return {entry.name for entry in resources.files("roialign_cy").iterdir()}


def test_py_typed_marker_is_shipped():
    assert "py.typed" in _package_files(), "PEP 561 marker roialign_cy/py.typed is missing"


def test_compiled_call_path_is_not_older_than_its_source():
    """setup.py compiles _args.py and the other call-path modules, and Python imports the
    compiled module: in a source tree, one edited since the build would be silently ignored."""
    package = os.path.dirname(roialign_cy.__file__)
    if os.path.dirname(package) != ROOT:
        pytest.skip("an installed package: its files' times are the installer's")
    stale = []
    for name in os.listdir(package):
        source = os.path.join(package, name.split(".")[0] + ".py")
        if name.endswith((".so", ".pyd")) and os.path.exists(source) and (
                os.path.getmtime(os.path.join(package, name)) < os.path.getmtime(source)):
            stale.append(name)
    assert not stale, (f"{stale} are older than their .py sources: rebuild "
                       "(python setup.py build_ext --inplace) or the edits are not what runs")


def test_compiled_modules_have_stubs():
    """py.typed promises types; the compiled modules need .pyi stubs to keep that promise
    (the compiled call path's typed .py sources are their own)."""
    files = _package_files()
    compiled = sorted({name.split(".")[0] for name in files
                       if name.endswith((".so", ".pyd")) and not name.startswith("__")})
    stubs = sorted(name[:-4] for name in files if name.endswith(".pyi"))
    missing = [module for module in compiled if module not in stubs
               and module + ".py" not in files]
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


# ---- setup.py's probes (source tree only: they import setup.py's helpers) ----

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_PY = os.path.join(ROOT, "setup.py")
needs_setup_py = pytest.mark.skipif(not os.path.exists(SETUP_PY),
                                    reason="setup.py is not next to the tests")
under_asan = "asan" in os.environ.get("LD_PRELOAD", "")


def load_setup_py():
    """setup.py as a module: it only calls setup() when run as a script."""
    import importlib.util

    pytest.importorskip("setuptools")
    spec = importlib.util.spec_from_file_location("roialign_cy_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setuptools_reads_our_pyproject():
    """setuptools >= 77 reads PEP 639's license string; older ones refuse pyproject.toml."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def unix_compiler(monkeypatch, cc, cflags="", ldflags=""):
    """The compiler object setuptools builds with, for CC/CFLAGS/LDFLAGS as given."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("CFLAGS", cflags)
    monkeypatch.setenv("LDFLAGS", ldflags)
    compiler = new_compiler()
    customize_compiler(compiler)
    return compiler


@pytest.fixture
def libomp_prefix(tmp_path):
    """LLVM's libomp copied into a prefix no compiler searches (as Homebrew's keg-only
    libomp is on macOS), and clang: (prefix, clang), or skip."""
    clang = shutil.which("clang")
    if clang is None or sys.platform == "win32":
        pytest.skip("needs clang and LLVM's libomp (apt install clang libomp-dev)")
    probe = tmp_path / "probe.c"
    probe.write_text(OPENMP_PROBE)
    built = subprocess.run([clang, "-fopenmp", str(probe), "-o", str(tmp_path / "probe")],
                           capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        pytest.skip("clang cannot build OpenMP programs (apt install libomp-dev)")
    linked = subprocess.run(["ldd", str(tmp_path / "probe")], capture_output=True, text=True)
    libomp = [line.split("=>")[1].split()[0] for line in linked.stdout.splitlines()
              if "libomp" in line and "=>" in line]
    resource_dir = subprocess.run([clang, "-print-resource-dir"], capture_output=True,
                                  text=True).stdout.strip()
    header = os.path.join(resource_dir, "include", "omp.h")
    if not libomp or not os.path.exists(header):
        pytest.skip("LLVM's libomp or its omp.h was not found")
    prefix = tmp_path / "opt" / "libomp"
    (prefix / "lib").mkdir(parents=True)
    (prefix / "include").mkdir()
    soname = os.path.basename(libomp[0])  # libomp.so.5: what the loader will look for
    shutil.copy(os.path.realpath(libomp[0]), prefix / "lib" / soname)
    if soname != "libomp.so":
        (prefix / "lib" / "libomp.so").symlink_to(soname)  # what -lomp looks for
    shutil.copy(header, prefix / "include" / "omp.h")
    return prefix, clang


@needs_setup_py
def test_openmp_probe_links_with_ldflags(monkeypatch, libomp_prefix):
    """The probe's link sees LDFLAGS, as the real link does: Apple's way (-Xpreprocessor
    -fopenmp ... -lomp) finds a libomp that only LDFLAGS point to."""
    setup_py = load_setup_py()
    prefix, clang = libomp_prefix
    apple = (["-Xpreprocessor", "-fopenmp"], ["-lomp"])
    compiler = unix_compiler(monkeypatch, clang)
    assert not setup_py.builds(compiler, setup_py.OPENMP_PROBE, *apple)  # -lomp: not found
    compiler = unix_compiler(monkeypatch, clang, cflags=f"-I{prefix}/include",
                             ldflags=f"-L{prefix}/lib")
    assert setup_py.builds(compiler, setup_py.OPENMP_PROBE, *apple)


@needs_setup_py
def test_openmp_probe_finds_homebrew_libomp(monkeypatch, tmp_path, libomp_prefix):
    """On macOS setup.py asks `brew --prefix libomp` (keg-only, on no search path) and
    builds with it; here a stand-in brew answers with the prefix made above."""
    setup_py = load_setup_py()
    prefix, clang = libomp_prefix
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    brew = bin_dir / "brew"
    brew.write_text(f'#!/bin/sh\n[ "$1 $2" = "--prefix libomp" ] && echo "{prefix}"\n')
    brew.chmod(0o755)
    compiler = unix_compiler(monkeypatch, clang)
    # without brew: Apple's flags fail, and only the GCC-style fallback is left
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert setup_py.homebrew_libomp("darwin") is None
    assert setup_py.openmp_flags(compiler, "darwin") == (["-fopenmp"], ["-fopenmp"])
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert setup_py.homebrew_libomp("darwin") == str(prefix)
    assert setup_py.homebrew_libomp("linux") is None  # Linux compilers find their runtime
    compile_args, link_args = setup_py.openmp_flags(compiler, "darwin")
    assert compile_args == ["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"]
    assert link_args == [f"-L{prefix}/lib", "-lomp"]


@needs_setup_py
@pytest.mark.skipif(under_asan, reason="a child build under ASan's LD_PRELOAD")
def test_clang_build_with_libomp_in_a_prefix(tmp_path, libomp_prefix):
    """The real build with CC=clang and CFLAGS/LDFLAGS naming a libomp prefix: OpenMP is
    compiled in and the extension runs on the prefix's libomp."""
    pytest.importorskip("Cython")
    if not setuptools_reads_our_pyproject():
        pytest.skip("setuptools < 77 cannot read pyproject.toml's PEP 639 license")
    prefix, clang = libomp_prefix
    tree = copy_source_tree(tmp_path / "src")
    env = {**os.environ, "CC": clang, "CFLAGS": f"-I{prefix}/include",
           "LDFLAGS": f"-L{prefix}/lib -Wl,-rpath,{prefix}/lib", "ROIALIGN_CY_NO_AVX2": "1"}
    built = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "roialign_cy: OpenMP with -fopenmp" in built.stdout
    runtime = glob_one(tree, "roialign_cy", "_runtime*.so")
    linked = subprocess.run(["ldd", runtime], capture_output=True, text=True).stdout
    assert f"=> {prefix}/lib/libomp.so" in linked, linked
    ran = subprocess.run(
        [sys.executable, "-c", "import roialign_cy, numpy as np; "
         "c = roialign_cy.show_config(print_out=False); "
         "x = roialign_cy.roi_align(np.ones((1, 2, 8, 8), np.float32), "
         "np.array([[0, 0, 0, 4, 4.]]), 2, num_threads=2); "
         "print(c['openmp'], float(x.sum()))"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
        timeout=300)
    assert ran.stdout.split() == ["True", "8.0"], ran.stderr


@needs_setup_py
@pytest.mark.skipif(sys.platform == "win32", reason="CC is how a Unix build picks its compiler")
def test_no_compiler_is_one_clear_sentence(tmp_path):
    if not setuptools_reads_our_pyproject():
        pytest.skip("setuptools < 77 cannot read pyproject.toml's PEP 639 license")
    tree = copy_source_tree(tmp_path / "src")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    built = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                           env=env, capture_output=True, text=True, timeout=300)
    output = built.stdout + built.stderr
    assert built.returncode != 0
    sentence = [line for line in output.splitlines() if "needs a working C compiler" in line]
    assert len(sentence) == 1 and "no-such-cc" in sentence[0], output
    assert "xcode-select --install" in sentence[0] and "gcc or clang" in sentence[0]
    before = output[: output.index(sentence[0])]
    assert "OpenMP" not in before and "SERIAL" not in before and "Cython" not in before
    assert "Traceback" not in output


def copy_source_tree(dest):
    """What the sdist carries to build: setup.py, pyproject.toml, the package sources."""
    def ignore(folder, names):
        return [n for n in names if n.endswith((".so", ".c", ".pyd")) or n == "__pycache__"]

    os.makedirs(dest)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), dest)
    shutil.copytree(os.path.join(ROOT, "roialign_cy"), os.path.join(dest, "roialign_cy"),
                    ignore=ignore)
    return dest


def glob_one(*parts):
    import glob

    found = glob.glob(os.path.join(*map(str, parts)))
    assert len(found) == 1, found
    return found[0]
