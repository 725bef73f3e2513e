"""roialign_cy: exact, multithreaded RoIAlign for NumPy arrays (torchvision semantics)."""

try:
    from roialign_cy import _runtime  # noqa: F401  (compiled: fails in an unbuilt source tree)
except ImportError as error:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "roialign_cy's compiled extensions cannot be imported. If you are in the source folder, "
        "either install with `python -m pip install -e .` (builds them in place) or run from "
        f"another directory so that the installed package is imported. ({error})"
    ) from error

from roialign_cy._config import show_config
from roialign_cy._roi_align import RoIAlign, roi_align, roi_align_backward
from roialign_cy._roi_pool import RoIPool, roi_pool, roi_pool_backward
from roialign_cy._version import __version__

__all__ = [
    "RoIAlign",
    "RoIPool",
    "roi_align",
    "roi_align_backward",
    "roi_pool",
    "roi_pool_backward",
    "show_config",
    "__version__",
]
