/* The weighted gather of RoIAlign over contiguous channels (channels-last maps, and the
 * packed channel blocks of channels-first ones), declared for Cython in _channel_gather.pxd.
 *
 *   row[c] = row[c] + (((w[0] * p0[c] + w[1] * p1[c]) + w[2] * p2[c]) + w[3] * p3[c])
 *
 * for each sample in turn, pk = image + offsets[4 * s + k], w = weights + 4 * s: exactly
 * torchvision's rounding per element (no FMA: the AVX2 twins build with -mno-fma
 * -ffp-contract=off; no reassociation). The channels are register-blocked: a block of
 * ROIALIGN_GATHER_VECTORS vectors is loaded once, takes every sample of the call, and is
 * stored once, so the accumulators never go through memory between samples, and the
 * vectors of a block are independent chains that hide the add latency. Then single
 * vectors, then a scalar tail.
 *
 * The same blocking serves Precise RoI Pooling's bin integral over contiguous channels
 * (roialign_tent_*): for each column j of the bin's pixels in turn,
 *
 *   column[c] = sum_i wy[i] * image[(y0 + i) * row_stride + (x0 + j) * col_stride + c]
 *   acc[c] = acc[c] + wx[j] * column[c]
 *
 * both sums in order, from 0, with the columns and the accumulators in registers.
 *
 * And RoIPool's max over a bin's pixels (roialign_max_*, roialign_argmax_f32):
 *
 *   row[c] = pixel[c] > row[c] ? pixel[c] : row[c]   (from -FLT_MAX, torchvision's start)
 *
 * for the bin's pixels in row-major order (y, then x): a NaN never wins and the first of
 * equal maxima stays, so the value, and the arg-max pixel y * width + x, are torchvision's.
 *
 * GCC and clang: generic vectors (vector_size), lowered to SSE2 in the baseline build and
 * AVX registers in the AVX2 twin. Other compilers (MSVC): the same order in scalar code.
 * Included after Python.h (by the Cython-generated C), so Py_ssize_t is defined.
 */
#ifndef ROIALIGN_CY_CHANNEL_GATHER_H
#define ROIALIGN_CY_CHANNEL_GATHER_H

#include <float.h>
#include <stdint.h>
#include <string.h>

#define ROIALIGN_GATHER_VECTORS 4

#define ROIALIGN_GATHER_SCALAR(T, image, offsets, weights, n_samples, c, row)            \
    do {                                                                                 \
        T acc_ = (row)[c];                                                               \
        Py_ssize_t s_;                                                                   \
        for (s_ = 0; s_ < (n_samples); s_++) {                                           \
            const Py_ssize_t* o_ = (offsets) + 4 * s_;                                   \
            const T* w_ = (weights) + 4 * s_;                                            \
            acc_ = acc_ + (((w_[0] * (image)[o_[0] + (c)] + w_[1] * (image)[o_[1] + (c)]) \
                            + w_[2] * (image)[o_[2] + (c)]) + w_[3] * (image)[o_[3] + (c)]); \
        }                                                                                \
        (row)[c] = acc_;                                                                 \
    } while (0)

#define ROIALIGN_TENT_SCALAR(T, image, row_stride, col_stride, wy, ny, wx, nx, c, acc)  \
    do {                                                                                 \
        T total_ = 0;                                                                    \
        Py_ssize_t i_, j_;                                                               \
        for (j_ = 0; j_ < (nx); j_++) {                                                  \
            const T* pixel_ = (image) + j_ * (col_stride) + (c);                         \
            T column_ = 0;                                                               \
            for (i_ = 0; i_ < (ny); i_++)                                                \
                column_ = column_ + (wy)[i_] * pixel_[i_ * (row_stride)];                \
            total_ = total_ + (wx)[j_] * column_;                                        \
        }                                                                                \
        (acc)[c] = total_;                                                               \
    } while (0)

/* RoIPool's max, one channel c over one row of a bin's pixels (line: its first pixel),
   going on from row[c] (arg_row[c]) unless it is the bin's first row. */
#define ROIALIGN_MAX_SCALAR(T, line, col_stride, nx, first, c, row)                     \
    do {                                                                                 \
        T best_ = (first) ? (T)-FLT_MAX : (row)[c];                                      \
        Py_ssize_t j_;                                                                   \
        for (j_ = 0; j_ < (nx); j_++) {                                                  \
            T value_ = (line)[j_ * (col_stride) + (c)];                                  \
            best_ = value_ > best_ ? value_ : best_;                                     \
        }                                                                                \
        (row)[c] = best_;                                                                \
    } while (0)

#define ROIALIGN_ARGMAX_SCALAR(T, line, col_stride, nx, first, first_at, c, row, arg_row) \
    do {                                                                                 \
        T best_ = (first) ? (T)-FLT_MAX : (row)[c];                                      \
        int32_t at_ = (first) ? -1 : (arg_row)[c];                                       \
        Py_ssize_t j_;                                                                   \
        for (j_ = 0; j_ < (nx); j_++) {                                                  \
            T value_ = (line)[j_ * (col_stride) + (c)];                                  \
            if (value_ > best_) {                                                        \
                best_ = value_;                                                          \
                at_ = (int32_t)((first_at) + j_);                                        \
            }                                                                            \
        }                                                                                \
        (row)[c] = best_;                                                                \
        (arg_row)[c] = at_;                                                              \
    } while (0)

/* The arg-max in scalar code: float64 (its lanes are twice the indices' width) and,
   without GCC's vectors, float32. */
#define ROIALIGN_DEFINE_ARGMAX(NAME, T)                                                   \
    static inline void NAME(const T* image, Py_ssize_t row_stride, Py_ssize_t col_stride, \
                            Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t first_at,            \
                            Py_ssize_t width, Py_ssize_t channels, T* row,                \
                            int32_t* arg_row) {                                           \
        Py_ssize_t i, c;                                                                  \
        for (i = 0; i < ny; i++)                                                          \
            for (c = 0; c < channels; c++)                                                \
                ROIALIGN_ARGMAX_SCALAR(T, image + i * row_stride, col_stride, nx, i == 0, \
                                       first_at + i * width, c, row, arg_row);            \
    }

ROIALIGN_DEFINE_ARGMAX(roialign_argmax_f64, double)

#if defined(__GNUC__) || defined(__clang__)

/* The helpers pass 32-byte vectors by value; all are static and inlined, so the baseline
   build's ABI note about AVX-sized arguments concerns no call that crosses a module (gcc
   emits it at the end of the file, so it stays off for the rest of the file). */
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* One vector type per element type: 8 floats or 4 doubles (32 bytes). Loads and stores go
   through memcpy: the rows and taps are only element-aligned. */
typedef float roialign_f32v __attribute__((vector_size(32)));
typedef double roialign_f64v __attribute__((vector_size(32)));

#define ROIALIGN_DEFINE_GATHER(NAME, T, V)                                                \
    static inline V NAME##_load(const T* p) { V v; memcpy(&v, p, sizeof(V)); return v; } \
    static inline void NAME##_store(T* p, V v) { memcpy(p, &v, sizeof(V)); }              \
    static inline V NAME##_sample(const T* image, const Py_ssize_t* o, const T* w,        \
                                  Py_ssize_t c) {                                         \
        return ((w[0] * NAME##_load(image + o[0] + c) + w[1] * NAME##_load(image + o[1] + c)) \
                + w[2] * NAME##_load(image + o[2] + c)) + w[3] * NAME##_load(image + o[3] + c); \
    }                                                                                     \
    static inline void NAME(const T* image, const Py_ssize_t* offsets, const T* weights,  \
                            Py_ssize_t n_samples, Py_ssize_t channels, T* row) {          \
        const Py_ssize_t lanes = (Py_ssize_t)(sizeof(V) / sizeof(T));                     \
        const Py_ssize_t block = ROIALIGN_GATHER_VECTORS * lanes;                          \
        Py_ssize_t c = 0, s;                                                              \
        for (; c + block <= channels; c += block) {                                       \
            V a0 = NAME##_load(row + c), a1 = NAME##_load(row + c + lanes);                \
            V a2 = NAME##_load(row + c + 2 * lanes), a3 = NAME##_load(row + c + 3 * lanes); \
            for (s = 0; s < n_samples; s++) {                                             \
                const Py_ssize_t* o = offsets + 4 * s;                                    \
                const T* w = weights + 4 * s;                                             \
                a0 = a0 + NAME##_sample(image, o, w, c);                                  \
                a1 = a1 + NAME##_sample(image, o, w, c + lanes);                          \
                a2 = a2 + NAME##_sample(image, o, w, c + 2 * lanes);                      \
                a3 = a3 + NAME##_sample(image, o, w, c + 3 * lanes);                      \
            }                                                                             \
            NAME##_store(row + c, a0);                                                    \
            NAME##_store(row + c + lanes, a1);                                            \
            NAME##_store(row + c + 2 * lanes, a2);                                        \
            NAME##_store(row + c + 3 * lanes, a3);                                        \
        }                                                                                 \
        for (; c + lanes <= channels; c += lanes) {                                       \
            V a = NAME##_load(row + c);                                                   \
            for (s = 0; s < n_samples; s++)                                               \
                a = a + NAME##_sample(image, offsets + 4 * s, weights + 4 * s, c);        \
            NAME##_store(row + c, a);                                                     \
        }                                                                                 \
        for (; c < channels; c++)                                                         \
            ROIALIGN_GATHER_SCALAR(T, image, offsets, weights, n_samples, c, row);        \
    }

/* image points at the bin's first pixel (y0, x0); acc[c] is overwritten. */
#define ROIALIGN_DEFINE_TENT(NAME, GATHER, T, V)                                          \
    static inline void NAME(const T* image, Py_ssize_t row_stride, Py_ssize_t col_stride, \
                            const T* wy, Py_ssize_t ny, const T* wx, Py_ssize_t nx,       \
                            Py_ssize_t channels, T* acc) {                                \
        const Py_ssize_t lanes = (Py_ssize_t)(sizeof(V) / sizeof(T));                     \
        const Py_ssize_t block = ROIALIGN_GATHER_VECTORS * lanes;                          \
        const V zero = {0};                                                               \
        Py_ssize_t c = 0, i, j;                                                           \
        for (; c + block <= channels; c += block) {                                       \
            V a0 = zero, a1 = zero, a2 = zero, a3 = zero;                                 \
            for (j = 0; j < nx; j++) {                                                    \
                const T* pixel = image + j * col_stride + c;                              \
                V c0 = zero, c1 = zero, c2 = zero, c3 = zero;                             \
                for (i = 0; i < ny; i++, pixel += row_stride) {                           \
                    c0 = c0 + wy[i] * GATHER##_load(pixel);                               \
                    c1 = c1 + wy[i] * GATHER##_load(pixel + lanes);                       \
                    c2 = c2 + wy[i] * GATHER##_load(pixel + 2 * lanes);                   \
                    c3 = c3 + wy[i] * GATHER##_load(pixel + 3 * lanes);                   \
                }                                                                         \
                a0 = a0 + wx[j] * c0;                                                     \
                a1 = a1 + wx[j] * c1;                                                     \
                a2 = a2 + wx[j] * c2;                                                     \
                a3 = a3 + wx[j] * c3;                                                     \
            }                                                                             \
            GATHER##_store(acc + c, a0);                                                  \
            GATHER##_store(acc + c + lanes, a1);                                          \
            GATHER##_store(acc + c + 2 * lanes, a2);                                      \
            GATHER##_store(acc + c + 3 * lanes, a3);                                      \
        }                                                                                 \
        for (; c + lanes <= channels; c += lanes) {                                       \
            V a = zero;                                                                   \
            for (j = 0; j < nx; j++) {                                                    \
                const T* pixel = image + j * col_stride + c;                              \
                V column = zero;                                                          \
                for (i = 0; i < ny; i++, pixel += row_stride)                             \
                    column = column + wy[i] * GATHER##_load(pixel);                       \
                a = a + wx[j] * column;                                                   \
            }                                                                             \
            GATHER##_store(acc + c, a);                                                   \
        }                                                                                 \
        for (; c < channels; c++)                                                         \
            ROIALIGN_TENT_SCALAR(T, image, row_stride, col_stride, wy, ny, wx, nx, c, acc); \
    }

/* A comparison of two vectors gives a mask vector M of same-sized integers (all ones where
   true): the select is exact (and a blend in AVX2). */
typedef int32_t roialign_i32v __attribute__((vector_size(32)));
typedef int64_t roialign_i64v __attribute__((vector_size(32)));

/* RoIPool's max. The bin is walked a row of pixels at a time: per row, each block of
   channels is loaded once from `row`, takes the row's pixels in registers and is stored
   once. (A block per whole bin would re-read a large bin from L2 once per block: 1.4x
   slower on box_head_fpn's 256 channels-last channels.) image points at the bin's first
   pixel; row[c] is overwritten. */
#define ROIALIGN_DEFINE_MAX(NAME, GATHER, T, V, M)                                        \
    static inline V NAME##_select(V value, V best) {                                      \
        M m = value > best;                                                               \
        return (V)(((M)value & m) | ((M)best & ~m));                                      \
    }                                                                                     \
    static inline __attribute__((always_inline)) void NAME##_line(                        \
            const T* line, Py_ssize_t col_stride, Py_ssize_t nx, int first, int n_vectors, \
            T* row) {                                                                     \
        const Py_ssize_t lanes = (Py_ssize_t)(sizeof(V) / sizeof(T));                     \
        V a[ROIALIGN_GATHER_VECTORS];                                                     \
        Py_ssize_t j;                                                                     \
        int v;                                                                            \
        for (v = 0; v < n_vectors; v++)                                                   \
            a[v] = first ? (V){0} + (T)-FLT_MAX : GATHER##_load(row + v * lanes);         \
        for (j = 0; j < nx; j++, line += col_stride)                                      \
            for (v = 0; v < n_vectors; v++)                                               \
                a[v] = NAME##_select(GATHER##_load(line + v * lanes), a[v]);              \
        for (v = 0; v < n_vectors; v++)                                                   \
            GATHER##_store(row + v * lanes, a[v]);                                        \
    }                                                                                     \
    static inline void NAME(const T* image, Py_ssize_t row_stride, Py_ssize_t col_stride, \
                            Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t channels, T* row) {  \
        const Py_ssize_t lanes = (Py_ssize_t)(sizeof(V) / sizeof(T));                     \
        const Py_ssize_t block = ROIALIGN_GATHER_VECTORS * lanes;                          \
        Py_ssize_t i, c;                                                                  \
        for (i = 0; i < ny; i++) {                                                        \
            const T* line = image + i * row_stride;                                       \
            for (c = 0; c + block <= channels; c += block)                                \
                NAME##_line(line + c, col_stride, nx, i == 0, ROIALIGN_GATHER_VECTORS, row + c); \
            for (; c + lanes <= channels; c += lanes)                                     \
                NAME##_line(line + c, col_stride, nx, i == 0, 1, row + c);                \
            for (; c < channels; c++)                                                     \
                ROIALIGN_MAX_SCALAR(T, line, col_stride, nx, i == 0, c, row);             \
        }                                                                                 \
    }

ROIALIGN_DEFINE_GATHER(roialign_gather_f32, float, roialign_f32v)
ROIALIGN_DEFINE_GATHER(roialign_gather_f64, double, roialign_f64v)
ROIALIGN_DEFINE_TENT(roialign_tent_f32, roialign_gather_f32, float, roialign_f32v)
ROIALIGN_DEFINE_TENT(roialign_tent_f64, roialign_gather_f64, double, roialign_f64v)
ROIALIGN_DEFINE_MAX(roialign_max_f32, roialign_gather_f32, float, roialign_f32v, roialign_i32v)
ROIALIGN_DEFINE_MAX(roialign_max_f64, roialign_gather_f64, double, roialign_f64v, roialign_i64v)

/* The max and where it is, float32 (the same walk): the indices are int32 lanes beside
   the float lanes. arg_row[c] = the first pixel holding row[c] (first_at + i * width + j),
   -1 if none exceeds -FLT_MAX. */
static inline __attribute__((always_inline)) void roialign_argmax_f32_line(
        const float* line, Py_ssize_t col_stride, Py_ssize_t nx, int first, Py_ssize_t first_at,
        int n_vectors, float* row, int32_t* arg_row) {
    const Py_ssize_t lanes = 8;
    roialign_f32v a[ROIALIGN_GATHER_VECTORS];
    roialign_i32v where[ROIALIGN_GATHER_VECTORS];
    Py_ssize_t j;
    int v;
    for (v = 0; v < n_vectors; v++) {
        a[v] = first ? (roialign_f32v){0} - FLT_MAX : roialign_gather_f32_load(row + v * lanes);
        if (first)
            where[v] = (roialign_i32v){0} - 1;
        else
            memcpy(&where[v], arg_row + v * lanes, sizeof(roialign_i32v));
    }
    for (j = 0; j < nx; j++, line += col_stride) {
        const roialign_i32v at = (roialign_i32v){0} + (int32_t)(first_at + j);
        for (v = 0; v < n_vectors; v++) {
            roialign_f32v value = roialign_gather_f32_load(line + v * lanes);
            roialign_i32v m = value > a[v];
            where[v] = (at & m) | (where[v] & ~m);
            a[v] = (roialign_f32v)(((roialign_i32v)value & m) | ((roialign_i32v)a[v] & ~m));
        }
    }
    for (v = 0; v < n_vectors; v++) {
        roialign_gather_f32_store(row + v * lanes, a[v]);
        memcpy(arg_row + v * lanes, &where[v], sizeof(roialign_i32v));
    }
}

static inline void roialign_argmax_f32(const float* image, Py_ssize_t row_stride,
                                       Py_ssize_t col_stride, Py_ssize_t ny, Py_ssize_t nx,
                                       Py_ssize_t first_at, Py_ssize_t width,
                                       Py_ssize_t channels, float* row, int32_t* arg_row) {
    const Py_ssize_t lanes = 8;
    const Py_ssize_t block = ROIALIGN_GATHER_VECTORS * lanes;
    Py_ssize_t i, c;
    for (i = 0; i < ny; i++) {
        const float* line = image + i * row_stride;
        const Py_ssize_t line_at = first_at + i * width;
        for (c = 0; c + block <= channels; c += block)
            roialign_argmax_f32_line(line + c, col_stride, nx, i == 0, line_at,
                                     ROIALIGN_GATHER_VECTORS, row + c, arg_row + c);
        for (; c + lanes <= channels; c += lanes)
            roialign_argmax_f32_line(line + c, col_stride, nx, i == 0, line_at, 1, row + c,
                                     arg_row + c);
        for (; c < channels; c++)
            ROIALIGN_ARGMAX_SCALAR(float, line, col_stride, nx, i == 0, line_at, c, row,
                                   arg_row);
    }
}

#else

#define ROIALIGN_DEFINE_GATHER(NAME, T)                                                   \
    static void NAME(const T* image, const Py_ssize_t* offsets, const T* weights,         \
                     Py_ssize_t n_samples, Py_ssize_t channels, T* row) {                 \
        Py_ssize_t c;                                                                     \
        for (c = 0; c < channels; c++)                                                    \
            ROIALIGN_GATHER_SCALAR(T, image, offsets, weights, n_samples, c, row);        \
    }

#define ROIALIGN_DEFINE_TENT(NAME, T)                                                     \
    static void NAME(const T* image, Py_ssize_t row_stride, Py_ssize_t col_stride,        \
                     const T* wy, Py_ssize_t ny, const T* wx, Py_ssize_t nx,              \
                     Py_ssize_t channels, T* acc) {                                       \
        Py_ssize_t c;                                                                     \
        for (c = 0; c < channels; c++)                                                    \
            ROIALIGN_TENT_SCALAR(T, image, row_stride, col_stride, wy, ny, wx, nx, c, acc); \
    }

#define ROIALIGN_DEFINE_MAX(NAME, T)                                                      \
    static void NAME(const T* image, Py_ssize_t row_stride, Py_ssize_t col_stride,        \
                     Py_ssize_t ny, Py_ssize_t nx, Py_ssize_t channels, T* row) {         \
        Py_ssize_t i, c;                                                                  \
        for (i = 0; i < ny; i++)                                                          \
            for (c = 0; c < channels; c++)                                                \
                ROIALIGN_MAX_SCALAR(T, image + i * row_stride, col_stride, nx, i == 0, c, row); \
    }

ROIALIGN_DEFINE_GATHER(roialign_gather_f32, float)
ROIALIGN_DEFINE_GATHER(roialign_gather_f64, double)
ROIALIGN_DEFINE_TENT(roialign_tent_f32, float)
ROIALIGN_DEFINE_TENT(roialign_tent_f64, double)
ROIALIGN_DEFINE_MAX(roialign_max_f32, float)
ROIALIGN_DEFINE_MAX(roialign_max_f64, double)
ROIALIGN_DEFINE_ARGMAX(roialign_argmax_f32, float)

#endif

#endif /* ROIALIGN_CY_CHANNEL_GATHER_H */
