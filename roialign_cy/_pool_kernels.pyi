# Type stub for the compiled RoIPool kernels (private; see _api.py for the public functions).
import numpy as np
import numpy.typing as npt

_Float = np.float32 | np.float64
_Array = npt.NDArray[_Float]
_Index = npt.NDArray[np.intp]
_ArgMax = npt.NDArray[np.int32]

def roi_pool_forward(features: _Array, channels_last: bool, batch_index: _Index,
                     boxes: _Array, spatial_scale: float, pooled_height: int,
                     pooled_width: int, out: _Array, n_threads: int,
                     argmax: _ArgMax | None = None) -> bool: ...
def roi_pool_backward(grad_output: _Array, channels_last: bool, boxes: _Array,
                      roi_order: _Index, image_first: _Index, spatial_scale: float,
                      pooled_height: int, pooled_width: int, features: _Array,
                      grad_input: _Array, channel_blocks: int, n_threads: int) -> bool: ...
def roi_pool_backward_argmax(grad_output: _Array, channels_last: bool, argmax: _ArgMax,
                             roi_order: _Index, image_first: _Index, pooled_height: int,
                             pooled_width: int, grad_input: _Array, channel_blocks: int,
                             n_threads: int) -> bool: ...
