"""Which compiled build of the kernels runs, and the table of kernels as function objects.

setup.py compiles every operator's kernels twice on x86-64: a baseline build (SSE2, runs
anywhere) and an AVX2 build of the very same code, whose channel loops use 256-bit vectors.
Both give the same numbers bit for bit (no FMA: every product and sum is rounded as
torchvision rounds it). The AVX2 build runs when the CPU has it; ``ROIALIGN_CY_SIMD=baseline``
forces the baseline.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import numpy as np

from roialign_cy import _runtime

# The specialization of a fused kernel for each dtype the kernels compute in.
_SPECIALIZATIONS: Dict[np.dtype[Any], str] = {np.dtype(np.float32): "float",
                                             np.dtype(np.float64): "double"}
Build = Union[Literal["baseline"], Literal["avx2"]]  # not Literal["baseline", "avx2"]: see _args
# (direction, build, dtype) -> a specialized kernel, which returns the next work item.
KernelTable = Dict[Tuple[str, Build, "np.dtype[Any]"], Callable[..., int]]


def _usable_builds() -> Tuple[Build, ...]:
    """The builds this CPU can run: ("baseline",) or ("baseline", "avx2")."""
    if _runtime.cpu_has_avx2():
        return ("baseline", "avx2")
    return ("baseline",)


def _chosen(builds: Tuple[Build, ...]) -> Build:
    """The build calls run by default: AVX2 where built and usable, unless the environment
    asks for the baseline."""
    if os.environ.get("ROIALIGN_CY_SIMD", "").strip().lower() == "baseline":
        return "baseline"
    return builds[-1]


# Every kernel table made by kernel_table, so that a test can replace every compiled entry
# point at once (to prove that bad input never reaches one).
TABLES: List[KernelTable] = []
_CPU_BUILDS = _usable_builds()
BUILDS = _CPU_BUILDS  # narrowed below to what was really compiled
SIMD = _chosen(BUILDS)


def kernel_table(baseline: ModuleType, avx2: Optional[ModuleType]) -> KernelTable:
    """{(direction, build, dtype): kernel} for one operator's compiled modules.

    baseline, avx2: the operator's kernel module and its AVX2 twin (None where it was not
    built); each has KERNELS, {direction: fused kernel}. Every fused kernel is specialized
    here, once: Cython's fused dispatch inspects every array argument on each call (about
    0.5 us of a 10 us call).
    """
    global BUILDS, SIMD
    modules: Dict[str, Any] = {"baseline": baseline, "avx2": avx2}
    built = tuple(name for name in _CPU_BUILDS if modules[name] is not None)
    if len(built) < len(BUILDS):
        BUILDS = built
        SIMD = _chosen(BUILDS)
    table: KernelTable = {}
    for build in built:
        for direction, kernel in modules[build].KERNELS.items():
            for dtype, specialization in _SPECIALIZATIONS.items():
                table[direction, build, dtype] = kernel[specialization]
    TABLES.append(table)
    return table


def check_build(build: object) -> Build:
    """The build a call runs: the default for None, else one of BUILDS."""
    if build is None:
        return SIMD
    if build not in BUILDS:
        raise ValueError(f"build must be one of {BUILDS} on this machine, got {build!r}")
    # mypy 2 narrows by `in` to the Literal; mypy 1 (Python 3.9's) does not
    return build  # type: ignore[return-value, unused-ignore]
