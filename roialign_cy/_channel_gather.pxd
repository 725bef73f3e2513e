# The register-blocked loops of _channel_gather.h, for both float types: the channels-last
# RoIAlign sum over a bin's samples (torchvision's rounding), PrRoIPool's bin integral and
# RoIPool's bin maximum.

from libc.stdint cimport int32_t

from roialign_cy._sample_table cimport floating

cdef extern from "_channel_gather.h":
    void gather_f32 "roialign_gather_f32"(const float* image, const Py_ssize_t* offsets,
                                          const float* weights, Py_ssize_t n_samples,
                                          Py_ssize_t channels, float* row) noexcept nogil
    void gather_f64 "roialign_gather_f64"(const double* image, const Py_ssize_t* offsets,
                                          const double* weights, Py_ssize_t n_samples,
                                          Py_ssize_t channels, double* row) noexcept nogil
    void tent_f32 "roialign_tent_f32"(const float* image, Py_ssize_t row_stride,
                                      Py_ssize_t col_stride, const float* wy, Py_ssize_t ny,
                                      const float* wx, Py_ssize_t nx, Py_ssize_t channels,
                                      float* acc) noexcept nogil
    void tent_f64 "roialign_tent_f64"(const double* image, Py_ssize_t row_stride,
                                      Py_ssize_t col_stride, const double* wy, Py_ssize_t ny,
                                      const double* wx, Py_ssize_t nx, Py_ssize_t channels,
                                      double* acc) noexcept nogil
    void max_f32 "roialign_max_f32"(const float* image, Py_ssize_t row_stride,
                                    Py_ssize_t col_stride, Py_ssize_t ny, Py_ssize_t nx,
                                    Py_ssize_t channels, float* row) noexcept nogil
    void max_f64 "roialign_max_f64"(const double* image, Py_ssize_t row_stride,
                                    Py_ssize_t col_stride, Py_ssize_t ny, Py_ssize_t nx,
                                    Py_ssize_t channels, double* row) noexcept nogil
    void argmax_f32 "roialign_argmax_f32"(const float* image, Py_ssize_t row_stride,
                                          Py_ssize_t col_stride, Py_ssize_t ny, Py_ssize_t nx,
                                          Py_ssize_t first_at, Py_ssize_t width,
                                          Py_ssize_t channels, float* row,
                                          int32_t* arg_row) noexcept nogil
    void argmax_f64 "roialign_argmax_f64"(const double* image, Py_ssize_t row_stride,
                                          Py_ssize_t col_stride, Py_ssize_t ny, Py_ssize_t nx,
                                          Py_ssize_t first_at, Py_ssize_t width,
                                          Py_ssize_t channels, double* row,
                                          int32_t* arg_row) noexcept nogil


cdef enum:
    # Samples whose taps are formed before one pass over the channels: a bin of up to this
    # many samples (a 2x2 grid is 4) takes one pass, with its accumulators in registers.
    GATHER_SAMPLES = 16


cdef inline void gather(const floating* image, const Py_ssize_t* offsets,
                        const floating* weights, Py_ssize_t n_samples, Py_ssize_t channels,
                        floating* row) noexcept nogil:
    """row[c] += each sample's 4 weighted taps, in turn (see _channel_gather.h)."""
    if floating is float:
        gather_f32(image, offsets, weights, n_samples, channels, row)
    else:
        gather_f64(image, offsets, weights, n_samples, channels, row)


cdef inline void tent_integrals(const floating* image, Py_ssize_t row_stride,
                                Py_ssize_t col_stride, const floating* wy, Py_ssize_t ny,
                                const floating* wx, Py_ssize_t nx, Py_ssize_t channels,
                                floating* acc) noexcept nogil:
    """acc[c] = sum_j wx[j] * (sum_i wy[i] * pixel (i, j)[c]), image at the bin's first pixel
    (see _channel_gather.h)."""
    if floating is float:
        tent_f32(image, row_stride, col_stride, wy, ny, wx, nx, channels, acc)
    else:
        tent_f64(image, row_stride, col_stride, wy, ny, wx, nx, channels, acc)


cdef inline void bin_max(const floating* image, Py_ssize_t row_stride, Py_ssize_t col_stride,
                         Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t first_at, Py_ssize_t width,
                         Py_ssize_t channels, floating* row, int32_t* arg_row) noexcept nogil:
    """row[c] = the max of a bin's ny x nx pixels (image at its first pixel, first_at = its
    index y * width + x), from -FLT_MAX; unless arg_row is NULL, arg_row[c] = the first
    pixel index holding it, -1 if none exceeds -FLT_MAX (see _channel_gather.h)."""
    if arg_row == NULL:
        if floating is float:
            max_f32(image, row_stride, col_stride, ny, nx, channels, row)
        else:
            max_f64(image, row_stride, col_stride, ny, nx, channels, row)
    elif floating is float:
        argmax_f32(image, row_stride, col_stride, ny, nx, first_at, width, channels, row, arg_row)
    else:
        argmax_f64(image, row_stride, col_stride, ny, nx, first_at, width, channels, row, arg_row)
