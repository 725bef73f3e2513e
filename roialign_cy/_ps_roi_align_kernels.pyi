# Type stub for the compiled position-sensitive RoIAlign kernels (private; see
# _ps_roi_align.py for the public functions). Each is a fused function: _dispatch
# specializes it for float32 and float64.
from typing import Callable, Dict

import numpy as np
import numpy.typing as npt

_Float = np.float32 | np.float64
_Array = npt.NDArray[_Float]
_Index = npt.NDArray[np.intp]

def forward(features: _Array, channels_last: bool, boxes: _Array, batch_index: _Index,
            roi_order: _Index | None, image_first: _Index | None, spatial_scale: float,
            pooled_height: int, pooled_width: int, sampling_ratio: int, out: _Array,
            packed: bool, block: int, paused: _Index | None, first_item: int,
            n_threads: int) -> int: ...
def backward(grad_output: _Array, channels_last: bool, boxes: _Array, batch_index: _Index,
             roi_order: _Index, image_first: _Index, spatial_scale: float, pooled_height: int,
             pooled_width: int, sampling_ratio: int, grad_input: _Array, packed: bool,
             block: int, paused: _Index | None, first_item: int, n_threads: int) -> int: ...

KERNELS: Dict[str, Callable[..., int]]
