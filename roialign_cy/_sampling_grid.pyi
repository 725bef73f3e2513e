# Type stub for the compiled sampling geometry of one box (private; see plot.py). Each is a
# fused function over the box's dtype, float32 or float64.
from typing import Any, Dict, Tuple

import numpy as np
import numpy.typing as npt

_Box = npt.NDArray[np.float32 | np.float64]
_Index = npt.NDArray[np.intp]

def roi_geometry(box: _Box, spatial_scale: float, aligned: bool, pooled_h: int, pooled_w: int,
                 sampling_ratio: int) -> Dict[str, float]: ...
def roi_align_samples(box: _Box, spatial_scale: float, aligned: bool, pooled_h: int,
                      pooled_w: int, sampling_ratio: int, height: int,
                      width: int) -> Dict[str, npt.NDArray[Any]]: ...
def roi_pool_bins(box: _Box, spatial_scale: float, pooled_h: int, pooled_w: int, height: int,
                  width: int) -> Tuple[_Index, _Index, _Index, _Index]: ...
