/* C shims for roialign_cy, declared once for Cython in _shims.pxd.
 *
 * - OpenMP: the real runtime when the extension is built with OpenMP, serial stand-ins
 *   otherwise (so no module needs omp.h for the serial fallback build);
 * - the CPU's AVX2 support, asked at run time (libgcc/compiler-rt also check that the OS
 *   saves the 256-bit registers, XGETBV);
 * - a 4 x 4 float32 transpose through SSE registers, with a scalar stand-in off x86;
 * - an atomic fetch-and-add and a clock, with which the kernels' threads take work items
 *   and stop after a time slice (so that a long call can be interrupted between slices).
 * Included after Python.h (by the Cython-generated C), so Py_ssize_t is defined.
 */
#ifndef ROIALIGN_CY_SHIMS_H
#define ROIALIGN_CY_SHIMS_H

#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#define ROIALIGN_HAVE_OPENMP 1
#else
#define ROIALIGN_HAVE_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

/* GNU libgomp (gcc's runtime): its thread pool does not survive fork(). clang links LLVM's
   libomp, MSVC its own vcomp. */
#if defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER)
#define ROIALIGN_GNU_OPENMP 1
#else
#define ROIALIGN_GNU_OPENMP 0
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
static int roialign_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
static int roialign_cpu_has_avx2(void) { return 0; }
#endif

/* dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 4. */
#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
static inline void roialign_transpose4(const float* src, ptrdiff_t src_stride,
                                       float* dst, ptrdiff_t dst_stride) {
    __m128 r0 = _mm_loadu_ps(src);
    __m128 r1 = _mm_loadu_ps(src + src_stride);
    __m128 r2 = _mm_loadu_ps(src + 2 * src_stride);
    __m128 r3 = _mm_loadu_ps(src + 3 * src_stride);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(dst, r0);
    _mm_storeu_ps(dst + dst_stride, r1);
    _mm_storeu_ps(dst + 2 * dst_stride, r2);
    _mm_storeu_ps(dst + 3 * dst_stride, r3);
}
#else
static inline void roialign_transpose4(const float* src, ptrdiff_t src_stride,
                                       float* dst, ptrdiff_t dst_stride) {
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            dst[j * dst_stride + i] = src[i * src_stride + j];
}
#endif

/* *counter += n, atomically; returns the value before. (MSVC's OpenMP 2.0 has no atomic
   capture, hence the intrinsics.) */
#if defined(_MSC_VER)
#include <intrin.h>
static inline Py_ssize_t roialign_fetch_add(Py_ssize_t* counter, Py_ssize_t n) {
#if defined(_WIN64)
    return (Py_ssize_t)_InterlockedExchangeAdd64((volatile __int64*)counter, (__int64)n);
#else
    return (Py_ssize_t)_InterlockedExchangeAdd((volatile long*)counter, (long)n);
#endif
}
#else
static inline Py_ssize_t roialign_fetch_add(Py_ssize_t* counter, Py_ssize_t n) {
    return __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}
#endif


/* Seconds on a monotonic wall clock (OpenMP's); a serial build uses the process's clock. */
#ifdef _OPENMP
static inline double roialign_seconds(void) { return omp_get_wtime(); }
#else
#include <time.h>
static inline double roialign_seconds(void) { return (double)clock() / CLOCKS_PER_SEC; }
#endif

/* A kernel call returns to Python after about this long (between work items, or between
   two steps of a long one), so that Ctrl-C is seen; the wrapper calls it again for the rest.
   ROIALIGN_CY_SLICE_SECONDS (read once per module) changes it: the tests set 0, so that
   every work item that can pause does, at every step. */
#include <stdlib.h>
static double roialign_slice_seconds_value = -1.0;
static inline double roialign_slice_seconds(void) {
    if (roialign_slice_seconds_value < 0) {
        const char* text = getenv("ROIALIGN_CY_SLICE_SECONDS");
        double value = text != NULL ? atof(text) : 0.2;
        roialign_slice_seconds_value = value >= 0 && value <= 60 ? value : 0.2;
    }
    return roialign_slice_seconds_value;
}

#endif /* ROIALIGN_CY_SHIMS_H */
