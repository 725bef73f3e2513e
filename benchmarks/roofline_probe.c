/* This machine's limits, for benchmarks/roofline.py: read bandwidth and the peak vector
 * multiply+add rate. Compiled at run time into a temporary shared library and called through
 * ctypes; built with the package kernels' flags (-O2 -mavx2 -mno-fma -ffp-contract=off on
 * x86-64), so the multiply+add peak is that of separate vmulps/vaddps, as in the kernels.
 *
 * Every loop returns a value computed from all it did, and the caller keeps it, so the
 * compiler cannot drop the work; the inputs the loops combine with are read through volatile
 * variables, so it cannot fold them either. Each function times its own loops and writes the
 * seconds to *seconds: a parallel loop is timed from a barrier once the whole team runs to a
 * barrier after the last thread is done, so starting the team (milliseconds on a busy machine,
 * where a woken thread waits for a core) is not counted as reading or computing.
 */

#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <time.h>

/* Seconds on a wall clock: OpenMP's where there is OpenMP, else C11's timespec_get. */
static double now(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* Threads an OpenMP team may have here (1 when compiled without OpenMP). */
int probe_openmp(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* 1 when the vector loops below are the AVX ones, 0 for the scalar fallback. */
int probe_avx(void) {
#if defined(__AVX__)
    return 1;
#else
    return 0;
#endif
}

/* One thread's part of a timed loop: share t of nt, returning a value computed from all it
 * did (timed_team sums them). */
typedef double (*share_fn)(const void *context, int t, int nt);

/* share(context, t, nt) on every thread of a team of `threads` (one without OpenMP), timed
 * from a barrier once the whole team runs to a barrier after the last thread is done, into
 * *seconds. Returns the sum of the shares' values. */
static double timed_team(share_fn share, const void *context, int threads, double *seconds) {
    double total = 0.0, start = 0.0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
#pragma omp barrier
#pragma omp master
        start = now();
        total += share(context, omp_get_thread_num(), omp_get_num_threads());
#pragma omp barrier
#pragma omp master
        *seconds = now() - start;
    }
#else
    (void)threads;
    start = now();
    total = share(context, 0, 1);
    *seconds = now() - start;
#endif
    return total;
}

/* Sum a[0:n) once: 8 independent accumulators (of 8 floats under AVX), so the adds' latency
 * does not limit the loads; the loads are the limit. */
static float sum_once(const float *a, size_t n) {
    size_t i = 0;
#if defined(__AVX__)
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0,
           s7 = s0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
        s4 = _mm256_add_ps(s4, _mm256_loadu_ps(a + i + 32));
        s5 = _mm256_add_ps(s5, _mm256_loadu_ps(a + i + 40));
        s6 = _mm256_add_ps(s6, _mm256_loadu_ps(a + i + 48));
        s7 = _mm256_add_ps(s7, _mm256_loadu_ps(a + i + 56));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
                             _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7)));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    float total = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6]
                  + lanes[7];
#else
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (; i + 8 <= n; i += 8) {
        s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3];
        s4 += a[i + 4]; s5 += a[i + 5]; s6 += a[i + 6]; s7 += a[i + 7];
    }
    float total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
#endif
    for (; i < n; i++)
        total += a[i];
    return total;
}

struct read_job { const float *a; size_t n; long reps; };

/* A thread's contiguous share of a[0:n), summed `reps` times. */
static double read_share(const void *context, int t, int nt) {
    const struct read_job *job = context;
    /* Shares rounded to 64 floats (one vector loop step) so none has a scalar tail. */
    size_t blocks = job->n / 64, first = blocks * t / nt * 64, last = blocks * (t + 1) / nt * 64;
    double total = 0.0;
    if (t == nt - 1)
        last = job->n;
    for (long r = 0; r < job->reps; r++)
        total += sum_once(job->a + first, last - first);
    return total;
}

/* Read a[0:n) `reps` times with `threads` threads, each summing its own contiguous share
 * every time (the repeats run inside one parallel region: no barrier between them, which at
 * L1 sizes would cost more than the reads). Returns the sum of all sums. */
double probe_read(const float *a, size_t n, long reps, int threads, double *seconds) {
    struct read_job job = {a, n, reps};
    return timed_team(read_share, &job, threads, seconds);
}

/* The taps of one sample, channels-last: the `channels` floats of each of its 4 pixels,
 * summed (vectors of 8 floats, 4 independent accumulators), nothing weighted or stored. */
static float sum_taps(const float *image, const int32_t *pixel, long channels) {
    long c = 0;
    float total = 0.0f;
#if defined(__AVX__)
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const float *p0 = image + (long)pixel[0] * channels, *p1 = image + (long)pixel[1] * channels,
                *p2 = image + (long)pixel[2] * channels, *p3 = image + (long)pixel[3] * channels;
    for (; c + 8 <= channels; c += 8) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p0 + c));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p1 + c));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p2 + c));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p3 + c));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5])
                                                               + (lanes[6] + lanes[7]));
#endif
    for (; c < channels; c++)
        for (int k = 0; k < 4; k++)
            total += image[(long)pixel[k] * channels + c];
    return total;
}

struct taps_job { const float *image; const int32_t *pixels; long n_samples, channels, reps; };

/* A thread's contiguous range of the samples, their taps summed `reps` times. */
static double taps_share(const void *context, int t, int nt) {
    const struct taps_job *job = context;
    long first = job->n_samples * t / nt, last = job->n_samples * (t + 1) / nt;
    double total = 0.0;
    for (long r = 0; r < job->reps; r++)
        for (long s = first; s < last; s++)
            total += sum_taps(job->image, job->pixels + 4 * s, job->channels);
    return total;
}

/* Read the taps of a workload's samples in its order: sample s reads pixels[4 s .. 4 s + 3]
 * (flat (image, y, x) indices into a channels-last map of `channels` floats a pixel). This is
 * the kernels' access pattern with nothing computed: what the memory system alone needs for
 * it, caches, prefetchers and all. Threads take contiguous ranges of the samples (the kernels
 * split by RoI). Returns the sum of every tap. */
double probe_taps(const float *image, const int32_t *pixels, long n_samples, long channels,
                  long reps, int threads, double *seconds) {
    struct taps_job job = {image, pixels, n_samples, channels, reps};
    return timed_team(taps_share, &job, threads, seconds);
}

/* Peak multiply+add rate: `iters` steps of 12 independent chains x = x * m + c, one vmulps
 * and one vaddps each (no FMA: -mno-fma, and intrinsics are never contracted). 12 chains of
 * a 2-op, ~8-cycle-latency step keep two vector pipes busy. m = 1 and c = 0 arrive through
 * volatiles, so the values stay finite (no denormals) but the compiler cannot know it.
 * Every thread runs `iters` steps; 8 lanes x 2 flops x 12 chains per step and thread. */
/* One thread's chains (see probe_mul_add); `context` points at the step count. */
static double mul_add_share(const void *context, int t, int nt) {
    volatile float vm = 1.0f, vc = 0.0f;
    float m0 = vm, c0 = vc;
    long iters = *(const long *)context;
    double total = 0.0;
    (void)t;
    (void)nt;
#if defined(__AVX__)
    __m256 m = _mm256_set1_ps(m0), c = _mm256_set1_ps(c0);
    __m256 x0 = _mm256_set1_ps(1.0f), x1 = _mm256_set1_ps(2.0f), x2 = _mm256_set1_ps(3.0f),
           x3 = _mm256_set1_ps(4.0f), x4 = _mm256_set1_ps(5.0f), x5 = _mm256_set1_ps(6.0f),
           x6 = _mm256_set1_ps(7.0f), x7 = _mm256_set1_ps(8.0f), x8 = _mm256_set1_ps(9.0f),
           x9 = _mm256_set1_ps(10.0f), x10 = _mm256_set1_ps(11.0f),
           x11 = _mm256_set1_ps(12.0f);
#define STEP(x) x = _mm256_add_ps(_mm256_mul_ps(x, m), c)
    for (long i = 0; i < iters; i++) {
        STEP(x0); STEP(x1); STEP(x2); STEP(x3); STEP(x4); STEP(x5);
        STEP(x6); STEP(x7); STEP(x8); STEP(x9); STEP(x10); STEP(x11);
    }
#undef STEP
    __m256 s = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
        _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)),
                      _mm256_add_ps(_mm256_add_ps(x8, x9), _mm256_add_ps(x10, x11))));
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    for (int k = 0; k < 8; k++)
        total += lanes[k];
#else
    /* Scalar fallback: the same 12 chains, one float each (the compiler may vectorize). */
    float m = m0, c = c0, x[12];
    for (int k = 0; k < 12; k++)
        x[k] = (float)(k + 1);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 12; k++)
            x[k] = x[k] * m + c;
    for (int k = 0; k < 12; k++)
        total += x[k];
#endif
    return total;
}

double probe_mul_add(long iters, int threads, double *seconds) {
    return timed_team(mul_add_share, &iters, threads, seconds);
}

/* Flops per step of probe_mul_add and thread: 2 (mul + add) x 12 chains x vector lanes. */
int probe_mul_add_flops_per_step(void) {
#if defined(__AVX__)
    return 2 * 12 * 8;
#else
    return 2 * 12;
#endif
}

/* A dependent chain of 16 * iters 64-bit integer adds, for the clock: an integer add's
 * latency is one cycle on every x86-64 core, so the time per add is the cycle time. Inline
 * assembly keeps it one add per step (a C loop would be folded into a multiply). Returns
 * -1 where this is not x86-64 (no clock estimate then). */
long long probe_int_add_chain(long iters, double *seconds) {
#if defined(__x86_64__)
    volatile long long first = 1, step = 3;
    long long x = first, y = step;
    double start = now();
    for (long i = 0; i < iters; i++) {
        __asm__ volatile(
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0"
            : "+r"(x)
            : "r"(y));
    }
    *seconds = now() - start;
    return x;
#else
    (void)iters;
    *seconds = 0.0;
    return -1;
#endif
}

/* A dependent chain of 16 * iters float adds (vaddss under AVX): in cycles (with the clock
 * from the integer chain) this is the add latency, 3-4 cycles on recent x86 cores, a check
 * that the clock estimate is sane. */
double probe_float_add_chain(long iters, double *seconds) {
    volatile float vstart = 1.0f, vstep = 0.0f;
    float x = vstart, y = vstep;
    double start = now();
    for (long i = 0; i < iters; i++) {
        /* 16 adds, each depending on the last; -ffp-contract=off and no -ffast-math keep
         * them as written (x + 0.0f is not foldable in IEEE arithmetic: -0.0 + 0.0 = +0.0). */
        x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y;
        x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y; x = x + y;
    }
    *seconds = now() - start;
    return x;
}
