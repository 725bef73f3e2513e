"""roialign_cy: exact, multithreaded RoIAlign for NumPy arrays (torchvision semantics)."""

from roialign_cy._api import roi_align, roi_align_backward, roi_pool, roi_pool_backward
from roialign_cy._config import show_config
from roialign_cy._layers import RoIAlign, RoIPool

__version__ = "0.1.0"

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
