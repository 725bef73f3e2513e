# What the CPU running this process supports, asked at run time (not at compile time).

cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    /* libgcc/compiler-rt also check that the OS saves the 256-bit registers (XGETBV). */
    static int roialign_cpu_has_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
    #else
    static int roialign_cpu_has_avx2(void) { return 0; }
    #endif
    """
    bint roialign_cpu_has_avx2() noexcept nogil
