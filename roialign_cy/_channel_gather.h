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
 * GCC and clang: generic vectors (vector_size), lowered to SSE2 in the baseline build and
 * AVX registers in the AVX2 twin. Other compilers (MSVC): the same order in scalar code.
 * Included after Python.h (by the Cython-generated C), so Py_ssize_t is defined.
 */
#ifndef ROIALIGN_CY_CHANNEL_GATHER_H
#define ROIALIGN_CY_CHANNEL_GATHER_H

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

#if defined(__GNUC__) || defined(__clang__)

/* The helpers pass 32-byte vectors by value; all are static and inlined, so the baseline
   build's ABI note about AVX-sized arguments concerns no call that crosses a module. */
#if !defined(__clang__)
#pragma GCC diagnostic push
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

ROIALIGN_DEFINE_GATHER(roialign_gather_f32, float, roialign_f32v)
ROIALIGN_DEFINE_GATHER(roialign_gather_f64, double, roialign_f64v)

#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#else

#define ROIALIGN_DEFINE_GATHER(NAME, T)                                                   \
    static void NAME(const T* image, const Py_ssize_t* offsets, const T* weights,         \
                     Py_ssize_t n_samples, Py_ssize_t channels, T* row) {                 \
        Py_ssize_t c;                                                                     \
        for (c = 0; c < channels; c++)                                                    \
            ROIALIGN_GATHER_SCALAR(T, image, offsets, weights, n_samples, c, row);        \
    }

ROIALIGN_DEFINE_GATHER(roialign_gather_f32, float)
ROIALIGN_DEFINE_GATHER(roialign_gather_f64, double)

#endif

#endif /* ROIALIGN_CY_CHANNEL_GATHER_H */
