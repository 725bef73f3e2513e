# Type stub for the compiled box-row check (private; used by _validate.py).
import numpy as np
import numpy.typing as npt

NOT_FINITE: int
TOO_LARGE: int
INDEX_NOT_INTEGER: int
INDEX_OUT_OF_RANGE: int

def split_rows(rows: npt.NDArray[np.float32 | np.float64], n_images: int,
               batch_index: npt.NDArray[np.intp],
               coords: npt.NDArray[np.float32 | np.float64]) -> tuple[int, int]: ...
def group_by_image(batch_index: npt.NDArray[np.intp], roi_order: npt.NDArray[np.intp],
                   image_first: npt.NDArray[np.intp]) -> None: ...
