"""Build the compiled kernels of roialign_cy.

Metadata lives in pyproject.toml; this file only builds the extension:
- probes OpenMP with the compiler that really builds it, and falls back to a serial build
  with a loud warning when the probe fails;
- holds the Cython directives in one place. ``ROIALIGN_CY_DEBUG=1`` turns bounds checks on
  and optimisation off, for sanitizer and debugging builds;
- ``ROIALIGN_CY_NO_OPENMP=1`` forces the serial build (used to test the fallback);
- on x86-64, also builds the kernels a second time for AVX2 (``_kernels_avx2``,
  ``_pool_kernels_avx2``; chosen at import on CPUs that have it, see roialign_cy/_simd.py)
  when the compiler accepts ``-mavx2``. ``ROIALIGN_CY_NO_AVX2=1`` skips them.
"""

import os
import platform
import sys
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("ROIALIGN_CY_DEBUG", "") not in ("", "0")
NO_OPENMP = os.environ.get("ROIALIGN_CY_NO_OPENMP", "") not in ("", "0")
NO_AVX2 = os.environ.get("ROIALIGN_CY_NO_AVX2", "") not in ("", "0")
# The second build's flags: 256-bit vectors, but no FMA, and no contraction into one either:
# torchvision rounds every product and every sum, and so must we, bit for bit.
AVX2_FLAGS = ["-mavx2", "-mno-fma", "-ffp-contract=off"]
AVX2_MODULES = ("roialign_cy._kernels_avx2", "roialign_cy._pool_kernels_avx2")

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def builds(compiler, source_text, compile_args, link_args=None):
    """Whether this compiler compiles source_text with compile_args (and, given link_args,
    links it into a program)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(source_text)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
            if link_args is not None:
                compiler.link_executable(
                    objects, os.path.join(tmp, "probe"), extra_postargs=link_args
                )
        except Exception:  # any compile or link failure means: not with these flags
            return False
    return True


def avx2_wanted(compiler):
    """Whether to build the AVX2 kernels: x86-64 host, gcc/clang that accepts the flags."""
    if NO_AVX2 or compiler.compiler_type == "msvc":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return builds(compiler, "int main(void) { return 0; }\n", AVX2_FLAGS)


def openmp_flags(compiler):
    """Return (compile_args, link_args) enabling OpenMP for this compiler, or None."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for compile_args, link_args in candidates:
        if builds(compiler, OPENMP_PROBE, compile_args, link_args):
            return compile_args, link_args
    return None


class BuildWithOpenMP(build_ext):
    """build_ext that adds OpenMP flags, and builds the AVX2 twins, where the real compiler can."""

    def build_extensions(self):
        flags = None if NO_OPENMP else openmp_flags(self.compiler)
        if flags is None:
            self.warn(
                "\n" + "*" * 78 + "\n"
                "roialign_cy: OpenMP is NOT available with this compiler; building a SERIAL\n"
                "extension. Results are identical, but every call uses one thread.\n"
                "roialign_cy.show_config() will report openmp: False.\n" + "*" * 78
            )
        if not avx2_wanted(self.compiler):
            self.extensions = [ext for ext in self.extensions if ext.name not in AVX2_MODULES]
        for ext in self.extensions:
            if ext.name in AVX2_MODULES:
                ext.extra_compile_args += AVX2_FLAGS
            if self.compiler.compiler_type == "msvc":
                ext.extra_compile_args += ["/O2"]
            elif DEBUG:
                ext.extra_compile_args += ["-O0", "-g"]
            else:
                # -O3 for auto-vectorised channel loops; no -ffast-math (it breaks NaN
                # handling and exactness) and no -march (the wheel must stay portable).
                ext.extra_compile_args += ["-O3"]
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
        super().build_extensions()


DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension("roialign_cy._kernels", ["roialign_cy/_kernels.pyx"]),
    Extension("roialign_cy._pool_kernels", ["roialign_cy/_pool_kernels.pyx"]),
    Extension("roialign_cy._boxes", ["roialign_cy/_boxes.pyx"]),
    # The same kernels again (each file only includes its baseline twin), built with AVX2.
    Extension("roialign_cy._kernels_avx2", ["roialign_cy/_kernels_avx2.pyx"]),
    Extension("roialign_cy._pool_kernels_avx2", ["roialign_cy/_pool_kernels_avx2.pyx"]),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES),
    cmdclass={"build_ext": BuildWithOpenMP},
)
