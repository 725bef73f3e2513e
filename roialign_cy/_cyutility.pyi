# Cython's utility code (typed memoryviews, cython.view.array, the enum helper), compiled once
# and shared by every compiled module of the package (setup.py, SHARED_UTILITY). Internal to
# Cython: nothing here is roialign_cy's API. Its classes are Cython's own (their __module__ is
# "_cyutility"), which mypy's stubtest, like test_layout, does not ask a stub for.
from typing import Any

__pyx_capi__: dict[str, Any]
