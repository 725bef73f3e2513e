"""roialign_cy: exact, multithreaded RoIAlign for NumPy arrays (torchvision semantics)."""

from roialign_cy import _distributor_init  # noqa: F401  (first: the Windows wheels' DLL loader)

try:
    from roialign_cy import _runtime  # noqa: F401  (compiled: fails in an unbuilt source tree)
except ImportError as _error:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "roialign_cy's compiled extensions cannot be imported. If you are in the source folder, "
        "either install with `python -m pip install -e .` (builds them in place) or run from "
        f"another directory so that the installed package is imported. ({_error})"
    ) from _error

from roialign_cy import _config, _plan
from roialign_cy._config import show_config
from roialign_cy._levels import assign_levels
from roialign_cy._multiscale_roi_align import (MultiScaleRoIAlign, multiscale_roi_align,
                                               multiscale_roi_align_backward)
from roialign_cy._prroi_pool import PrRoIPool, prroi_pool, prroi_pool_backward
from roialign_cy._ps_roi_align import PSRoIAlign, ps_roi_align, ps_roi_align_backward
from roialign_cy._ps_roi_pool import PSRoIPool, ps_roi_pool, ps_roi_pool_backward
from roialign_cy._roi_align import RoIAlign, roi_align, roi_align_backward
from roialign_cy._roi_align_rotated import (RoIAlignRotated, roi_align_rotated,
                                            roi_align_rotated_backward)
from roialign_cy._roi_pool import RoIPool, roi_pool, roi_pool_backward
from roialign_cy._version import __version__

_config.warn_if_serial(bool(_runtime.OPENMP_ENABLED), _plan.USABLE_CPUS)

__all__ = [
    "MultiScaleRoIAlign",
    "PSRoIAlign",
    "PSRoIPool",
    "PrRoIPool",
    "RoIAlign",
    "RoIAlignRotated",
    "RoIPool",
    "assign_levels",
    "multiscale_roi_align",
    "multiscale_roi_align_backward",
    "prroi_pool",
    "prroi_pool_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "ps_roi_pool",
    "ps_roi_pool_backward",
    "roi_align",
    "roi_align_backward",
    "roi_align_rotated",
    "roi_align_rotated_backward",
    "roi_pool",
    "roi_pool_backward",
    "show_config",
    "__version__",
]
