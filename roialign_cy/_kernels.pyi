# Type stub for the compiled RoIAlign kernels (private; see _api.py for the public functions).
import numpy as np
import numpy.typing as npt

_Float = np.float32 | np.float64
_Array = npt.NDArray[_Float]
_Index = npt.NDArray[np.intp]

OPENMP_ENABLED: bool

def openmp_max_threads() -> int: ...
def cpu_has_avx2() -> bool: ...
def roi_align_forward(features: _Array, channels_last: bool, batch_index: _Index,
                      boxes: _Array, spatial_scale: float, pooled_height: int,
                      pooled_width: int, sampling_ratio: int, aligned: bool, max_mode: bool,
                      out: _Array, n_threads: int) -> bool: ...
def roi_align_forward_blocked(features: _Array, channels_last: bool, boxes: _Array,
                              roi_order: _Index, image_first: _Index, spatial_scale: float,
                              pooled_height: int, pooled_width: int, sampling_ratio: int,
                              aligned: bool, max_mode: bool, out: _Array, block: int,
                              n_threads: int) -> bool: ...
def roi_align_backward(grad_output: _Array, channels_last: bool, boxes: _Array,
                       roi_order: _Index, image_first: _Index, spatial_scale: float,
                       pooled_height: int, pooled_width: int, sampling_ratio: int,
                       aligned: bool, max_mode: bool, features: _Array | None,
                       grad_input: _Array, channel_blocks: int, n_threads: int) -> bool: ...
def roi_align_backward_blocked(grad_output: _Array, channels_last: bool, boxes: _Array,
                               roi_order: _Index, image_first: _Index, spatial_scale: float,
                               pooled_height: int, pooled_width: int, sampling_ratio: int,
                               aligned: bool, grad_input: _Array, block: int,
                               n_threads: int) -> bool: ...
