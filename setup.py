"""Build the compiled kernels of roialign_cy.

Metadata lives in pyproject.toml; this file only builds the extension:
- checks first that a C compiler works, and stops with one sentence saying which one is
  needed when it does not;
- probes OpenMP with the compiler that really builds it, honouring ``CC``, ``CFLAGS`` and
  ``LDFLAGS`` (the probe links with them too), and on macOS also with Homebrew's libomp
  (``brew --prefix libomp``); when no OpenMP works it builds serially and says so (and the
  package warns at import on a multi-core machine, see roialign_cy/_config.py);
- holds the Cython directives in one place. The default build carries no debug info;
  ``ROIALIGN_CY_DEBUG=1`` turns bounds checks and symbols on and optimisation off, for
  sanitizer and debugging builds;
- ``ROIALIGN_CY_NO_OPENMP=1`` forces the serial build (used to test the fallback);
- lists the compiled modules in one place: every operator's ``roialign_cy/_<op>_kernels.pyx``
  (found by name, so a new operator needs no edit here) plus the shared ``_boxes``,
  ``_runtime`` and ``_sampling_grid`` (roialign_cy.plot's geometry);
- compiles the Python modules every call runs through (``_args``, ``_plan``, ``_levels`` and
  each operator's wrapper ``roialign_cy/_<op>.py``) with Cython too, from the same source:
  a seed-sized call runs about 18% fewer instructions (benchmarks/call_instructions.py,
  benchmarks/RESULTS.md "The per-call overhead"). They stay plain Python modules in every
  other way (Python's semantics: bounds-checked indexing, no typed annotations), and
  ``ROIALIGN_CY_PURE_PYTHON=1`` leaves them uncompiled, for a debugger that steps through
  them (delete the compiled ones an in-place build left beside them). After editing one,
  rebuild: the compiled module is what Python imports;
- has Cython write its utility code (memoryviews, buffer and error helpers) once, into
  ``roialign_cy._cyutility``, which every compiled module imports, in place of a copy in
  each: the wheel's extensions shrink from 7.3 MB to 4.6 MB (3.1 MB to 1.9 MB zipped);
- on x86-64, also builds each kernel module a second time for AVX2 (``_<op>_kernels_avx2``,
  generated here, never committed; chosen at import on CPUs that have it, see
  roialign_cy/_dispatch.py) when the compiler accepts ``-mavx2``. ``ROIALIGN_CY_NO_AVX2=1``
  skips them.

The helpers are importable (``setup()`` runs only as a script, which is how pip, build and
``python setup.py`` run it), so tests/test_build.py can probe them directly.
"""

import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError

DEBUG = os.environ.get("ROIALIGN_CY_DEBUG", "") not in ("", "0")
NO_OPENMP = os.environ.get("ROIALIGN_CY_NO_OPENMP", "") not in ("", "0")
NO_AVX2 = os.environ.get("ROIALIGN_CY_NO_AVX2", "") not in ("", "0")
PURE_PYTHON = os.environ.get("ROIALIGN_CY_PURE_PYTHON", "") not in ("", "0")
# The second build's flags: 256-bit vectors, but no FMA, and no contraction into one either:
# torchvision rounds every product and every sum, and so must we, bit for bit.
AVX2_FLAGS = ["-mavx2", "-mno-fma", "-ffp-contract=off"]
HERE = os.path.dirname(os.path.abspath(__file__))
# Every operator's kernels, by file name; each gets an AVX2 twin (see avx2_twin).
KERNEL_SOURCES = sorted(glob.glob(os.path.join("roialign_cy", "_*_kernels.pyx")))
SHARED_SOURCES = [os.path.join("roialign_cy", "_boxes.pyx"),
                  os.path.join("roialign_cy", "_runtime.pyx"),
                  os.path.join("roialign_cy", "_sampling_grid.pyx")]
# The Python modules on every call's path, compiled from their .py (see the docstring).
CALL_PATH_SOURCES = [os.path.join("roialign_cy", name) for name in ("_args.py", "_plan.py",
                                                                     "_levels.py")] + [
    source.replace("_kernels.pyx", ".py") for source in KERNEL_SOURCES
    if os.path.exists(source.replace("_kernels.pyx", ".py"))]
AVX2_SUFFIX = "_avx2"
# Cython's utility code, generated once for all the modules (see the docstring).
SHARED_UTILITY = "roialign_cy._cyutility"

C_PROBE = "int main(void) { return 0; }\n"
OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #ifndef _OPENMP
    #error "the OpenMP pragmas are not enabled"
    #endif
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)
NEED_A_COMPILER = (
    "roialign_cy is built from source here, and that needs a working C compiler, but {cc} "
    "could not compile a one-line C program: install gcc or clang (Debian/Ubuntu: "
    "`apt install build-essential`, Fedora/RHEL: `dnf install gcc`), the Xcode Command Line "
    "Tools on macOS (`xcode-select --install`) or the Microsoft C++ Build Tools on Windows, "
    "or set CC to a compiler that works."
)
SERIAL_BANNER = (
    "roialign_cy: building a SERIAL extension: {cc} cannot build an OpenMP program (tried: "
    "{tried}). Results are identical, but every call uses one thread, and importing the "
    "package on a multi-core machine warns. For the threaded build: on macOS `brew install "
    "libomp`; on Linux gcc, or clang with libomp (`apt install libomp-dev`); or point CFLAGS "
    "and LDFLAGS at your OpenMP runtime."
)


def env_flags(name):
    """The flags in environment variable `name` (CFLAGS, LDFLAGS), split as a shell would."""
    return shlex.split(os.environ.get(name, ""))


def builds(compiler, source_text, compile_args, link_args=None):
    """Whether this compiler compiles source_text with compile_args (and, given link_args,
    links it into a program).

    The compile step already sees CC and CFLAGS (setuptools puts them in the compiler's
    command); the link step of a program does not see LDFLAGS (setuptools adds them to
    shared-library links only), so they are passed here, as the real build's link has them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(source_text)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
            if link_args is not None:
                compiler.link_executable(objects, os.path.join(tmp, "probe"),
                                         extra_postargs=link_args + env_flags("LDFLAGS"))
        except Exception:  # any compile or link failure means: not with these flags
            return False
    return True


def compiler_name(compiler):
    """The compiler's command as the user would recognise it (CC, or cl.exe for MSVC)."""
    command = getattr(compiler, "compiler_so", None) or getattr(compiler, "cc", None)
    if isinstance(command, (list, tuple)):
        command = command[0] if command else None
    return f"`{command}`" if command else f"the {compiler.compiler_type} compiler"


def avx2_wanted(compiler):
    """Whether to build the AVX2 kernels: x86-64 host, gcc/clang that accepts the flags."""
    if NO_AVX2 or compiler.compiler_type == "msvc":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return builds(compiler, C_PROBE, AVX2_FLAGS)


def homebrew_libomp(system=sys.platform):
    """Homebrew's libomp prefix on macOS (keg-only: not on any default search path), or None."""
    brew = shutil.which("brew") if system == "darwin" else None
    if brew is None:
        return None
    try:
        found = subprocess.run([brew, "--prefix", "libomp"], capture_output=True, text=True,
                               timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    prefix = found.stdout.strip()
    if found.returncode != 0 or not os.path.isfile(os.path.join(prefix, "include", "omp.h")):
        return None
    return prefix


def openmp_candidates(compiler, system=sys.platform):
    """The (compile_args, link_args) pairs to try, in order, for this compiler on `system`
    (a sys.platform value)."""
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [])]
    if system != "darwin":
        return [(["-fopenmp"], ["-fopenmp"])]
    # Apple clang has OpenMP in its front end but ships neither omp.h nor libomp.
    apple = (["-Xpreprocessor", "-fopenmp"], ["-lomp"])
    candidates = [apple]  # with libomp where CFLAGS/LDFLAGS (or the compiler) say
    prefix = homebrew_libomp(system)
    if prefix is not None:
        include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
        candidates.append((apple[0] + [f"-I{include}"], [f"-L{lib}"] + apple[1]))
    candidates.append((["-fopenmp"], ["-fopenmp"]))  # GCC, or LLVM's own clang
    return candidates


def openmp_flags(compiler, system=sys.platform):
    """Return (compile_args, link_args) enabling OpenMP for this compiler, or None."""
    for compile_args, link_args in openmp_candidates(compiler, system):
        if builds(compiler, OPENMP_PROBE, compile_args, link_args):
            return compile_args, link_args
    return None


DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "autotestdict": False,  # no __test__ dict: the stubs list every public name
}
# The compiled .py modules keep Python's semantics: the defaults (bounds-checked, wrapping
# indices, Python division), annotations read as hints only, functions that inspect sees.
CALL_PATH_DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "autotestdict": False,
}


class BuildWithOpenMP(build_ext):
    """build_ext that checks the compiler, adds OpenMP flags and builds the AVX2 twins where
    the real compiler can, and only then runs Cython (so its messages come after ours)."""

    def run(self):
        super().run()
        # The twins' type stubs: the same functions as their baseline module.
        for ext in self.extensions:
            if ext.name.endswith(AVX2_SUFFIX):
                stub = self.get_ext_fullpath(ext.name)
                stub = os.path.join(os.path.dirname(stub), ext.name.split(".")[-1] + ".pyi")
                baseline = ext.name[: -len(AVX2_SUFFIX)]
                with open(stub, "w") as f:
                    f.write(f"# The AVX2 build of {baseline} (generated by setup.py).\n"
                            f"from {baseline} import *  # noqa: F403\n")

    def build_extensions(self):
        if not builds(self.compiler, C_PROBE, []):
            raise PlatformError(NEED_A_COMPILER.format(cc=compiler_name(self.compiler)))
        if NO_OPENMP:
            flags = None
            print("roialign_cy: building a SERIAL extension, as ROIALIGN_CY_NO_OPENMP asks")
        else:
            flags = openmp_flags(self.compiler)
            if flags is None:
                tried = "; ".join(" ".join(c + l) for c, l in openmp_candidates(self.compiler))
                self.warn(SERIAL_BANNER.format(cc=compiler_name(self.compiler), tried=tried))
            else:
                print(f"roialign_cy: OpenMP with {' '.join(flags[0])} (link: {' '.join(flags[1])})")
        if not avx2_wanted(self.compiler):
            self.extensions = [ext for ext in self.extensions
                               if not ext.name.endswith(AVX2_SUFFIX)]
        for ext in self.extensions:
            if ext.name.endswith(AVX2_SUFFIX):
                ext.extra_compile_args += AVX2_FLAGS
            if self.compiler.compiler_type == "msvc":
                ext.extra_compile_args += ["/O2"]
            elif DEBUG:
                ext.extra_compile_args += ["-O0", "-g"]
            else:
                # -O3 for auto-vectorised channel loops; no -ffast-math (it breaks NaN
                # handling and exactness) and no -march (the wheel must stay portable).
                # -g0 overrides the -g in Python's own CFLAGS: symbols would quadruple
                # the wheel.
                ext.extra_compile_args += ["-O3", "-g0"]
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
        from Cython.Build import cythonize  # a build requirement, needed from here on only

        # cythonize returns new Extension objects; build_ext keeps state on its own.
        call_path = [ext for ext in self.extensions if ext.sources[0].endswith(".py")]
        kernels = [ext for ext in self.extensions if ext not in call_path]
        generated = cythonize(kernels, compiler_directives=DIRECTIVES, include_path=[HERE],
                              shared_utility_qualified_name=SHARED_UTILITY)
        if call_path:
            generated += cythonize(call_path, compiler_directives=CALL_PATH_DIRECTIVES,
                                   shared_utility_qualified_name=SHARED_UTILITY)
        sources = {ext.name: ext.sources for ext in generated}
        for ext in self.extensions:
            ext.sources = sources[ext.name]
        super().build_extensions()


def module_name(source):
    """roialign_cy/_x.pyx -> roialign_cy._x"""
    return os.path.splitext(source)[0].replace(os.sep, ".").replace("/", ".")


def avx2_twin(source):
    """Write build/avx2/<name>_avx2.pyx, which only includes `source`; return its path.

    A generated file, so that a new operator's kernels get their twin without a file of
    their own; Cython names the module after its Extension.
    """
    name = os.path.splitext(os.path.basename(source))[0] + AVX2_SUFFIX
    path = os.path.join("build", "avx2", "roialign_cy", name + ".pyx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    included = os.path.join(HERE, source).replace(os.sep, "/")  # Cython reads \\ as escapes
    text = f"# The AVX2 build of {source} (generated by setup.py).\ninclude \"{included}\"\n"
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


def extension(name, source):
    """An Extension that finds the package's C headers and .pxd files, and is rebuilt when
    a header changes (the generated C only includes them)."""
    headers = sorted(glob.glob(os.path.join("roialign_cy", "*.h")))
    return Extension(name, [source], include_dirs=[os.path.join(HERE, "roialign_cy")],
                     depends=headers)


def extensions():
    """Cython's shared utility module, the baseline modules, the AVX2 twins of the kernel
    modules, then the compiled call path (unless ROIALIGN_CY_PURE_PYTHON)."""
    # cythonize writes the utility module's C file (it has no .pyx) under this name.
    utility = Extension(SHARED_UTILITY, [SHARED_UTILITY.replace(".", "/") + ".c"])
    modules = [extension(module_name(src), src) for src in KERNEL_SOURCES + SHARED_SOURCES]
    twins = [extension(module_name(src) + AVX2_SUFFIX, avx2_twin(src)) for src in KERNEL_SOURCES]
    call_path = [] if PURE_PYTHON else [Extension(module_name(src), [src])
                                        for src in CALL_PATH_SOURCES]
    return [utility] + modules + twins + call_path


if __name__ == "__main__":
    setup(ext_modules=extensions(), cmdclass={"build_ext": BuildWithOpenMP})
