/* The time-stamp counter, shared by engine._native and engine._book.
 * Off x86-64 it falls back to CLOCK_MONOTONIC_RAW nanoseconds (WIRELAB_HAS_RDTSCP 0). */
#ifndef WIRELAB_TSC_H
#define WIRELAB_TSC_H
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#define WIRELAB_HAS_RDTSCP 1
static inline uint64_t tsc_now(void) {
    unsigned int aux;
    return __rdtscp(&aux);
}
static inline void cpu_relax(void) { _mm_pause(); }
#else
#define WIRELAB_HAS_RDTSCP 0
static inline uint64_t tsc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline void cpu_relax(void) {}
#endif

#endif
