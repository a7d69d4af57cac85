/* kerntest.h - small helpers shared by the kernel unit tests (test_kernels,
 * test_kernels_lte, test_cuda_math): the instruction sets and weight types they
 * loop over, a deterministic xorshift generator and random well-formed weights.
 * Header-only (static), single-threaded test code; each runner gets its own
 * generator state.
 */
#ifndef SLIMSERVE_KERNTEST_H
#define SLIMSERVE_KERNTEST_H

#include <stdint.h>
#include <string.h>

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

static inline void kt_put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Random but well-formed weights: quant bytes random, scales sane. */
static inline void fill_weights(int type, uint8_t *p, int64_t rows, int64_t K) {
    size_t rb = be_row_bytes(type, K);
    const struct be_type_info *ti = be_type_get(type);
    for (size_t i = 0; i < rb * (size_t)rows; i++)
        p[i] = (uint8_t)rnd();
    size_t nblk = rb * (size_t)rows / (size_t)ti->size;
    for (size_t b = 0; b < nblk; b++) {
        uint8_t *q = p + b * (size_t)ti->size;
        uint16_t d = kref_fp32_to_fp16(0.002f + 0.05f * (float)(rnd() % 1000) / 1000.0f);
        switch (type) {
        case BE_F32: { float f = frnd(); memcpy(q, &f, 4); break; }
        case BE_F16: kt_put16(q, kref_fp32_to_fp16(frnd())); break;
        case BE_BF16: { float f = frnd(); uint32_t u; memcpy(&u, &f, 4); kt_put16(q, (uint16_t)(u >> 16)); break; }
        case BE_Q4_K:
        case BE_Q5_K: kt_put16(q, d); kt_put16(q + 2, kref_fp32_to_fp16(0.01f)); break;
        case BE_Q6_K: kt_put16(q + 208, d); break;
        default: kt_put16(q, d); break;
        }
    }
}

#endif
