# Type stub for the compiled box-row check (private; used by _validate.py).
import enum

import numpy as np
import numpy.typing as npt

class BoxProblem(enum.IntEnum):
    BOX_OK = 0
    BOX_NOT_FINITE = 1
    BOX_TOO_LARGE = 2
    BOX_INDEX_NOT_INTEGER = 3
    BOX_INDEX_OUT_OF_RANGE = 4

def split_rows(rows: npt.NDArray[np.float64], n_images: int,
               batch_index: npt.NDArray[np.intp],
               coords: npt.NDArray[np.float32 | np.float64]) -> tuple[int, BoxProblem]: ...
