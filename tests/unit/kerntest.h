/* kerntest.h - small helpers shared by the kernel unit tests (test_kernels,
 * test_cuda_math): the instruction sets and weight types they loop over, and
 * a deterministic xorshift generator. Header-only (static), single-threaded
 * test code; each runner gets its own generator state.
 */
#ifndef SLIMSERVE_KERNTEST_H
#define SLIMSERVE_KERNTEST_H

#include <stdint.h>

#include "kernels/backend.h"

static const char *const isas[] = {"generic", "avx2", "avx512"};
#define N_ISAS 3

static const int all_types[] = {BE_F32, BE_F16, BE_BF16, BE_Q8_0, BE_Q4_0,
                                BE_Q5_0, BE_Q4_K, BE_Q5_K, BE_Q6_K};
#define N_TYPES 9

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static inline uint32_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 16);
}
static inline float frnd(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; } /* [-1, 1] */

#endif
