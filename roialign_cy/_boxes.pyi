# Type stub for the compiled box-row check (private; used by _args.py and _plan.py).
import numpy as np
import numpy.typing as npt

NOT_FINITE: int
TOO_LARGE: int
INDEX_NOT_INTEGER: int
INDEX_OUT_OF_RANGE: int

def split_rows(rows: npt.NDArray[np.float32 | np.float64], n_images: int,
               dtype: np.dtype, n_coords: int = ...) -> tuple[npt.NDArray[np.intp],
                                         npt.NDArray[np.float32 | np.float64], int, int]: ...
def group_by_image(batch_index: npt.NDArray[np.intp],
                   n_images: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]: ...
def all_within(indices: npt.NDArray[np.int32], low: int, high: int) -> bool: ...
