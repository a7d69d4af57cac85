/* test_kernels.c - the compute backend (kernels/): type geometry, half
 * conversions, dequantisation of hand-built blocks against numbers written from
 * the format definitions, every kernel against a plain scalar reference, the
 * bitwise batch/thread invariance of matmul, fork2 (the split of a layer
 * pair), and the CUDA registry.
 *
 * Every CPU kernel test runs once per instruction set this CPU supports
 * (generic, avx2, avx512), switched with kcpu_ctx_set_isa().
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"
#include "kerntest.h"
#include "tu_check.h"

/* ---------------------------------------------------------------- helpers */

static struct be open_cpu(int threads) {
    struct be be;
    ck_assert_int_eq(be_open(&be, "cpu", threads), 0);
    return be;
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---------------------------------------------------------------- geometry */

START_TEST(test_type_geometry) {
    struct { int t, blck, size; } want[] = {
        {BE_F32, 1, 4}, {BE_F16, 1, 2}, {BE_BF16, 1, 2}, {BE_Q4_0, 32, 18}, {BE_Q4_1, 32, 20},
        {BE_Q5_0, 32, 22}, {BE_Q5_1, 32, 24}, {BE_Q8_0, 32, 34}, {BE_Q2_K, 256, 84},
        {BE_Q3_K, 256, 110}, {BE_Q4_K, 256, 144}, {BE_Q5_K, 256, 176}, {BE_Q6_K, 256, 210},
        {BE_Q8_K, 256, 292},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct be_type_info *ti = be_type_get(want[i].t);
        ck_assert_ptr_nonnull(ti);
        ck_assert_int_eq(ti->blck, want[i].blck);
        ck_assert_int_eq(ti->size, want[i].size);
    }
    ck_assert_ptr_null(be_type_get(-1));
    ck_assert_ptr_null(be_type_get(4)); /* removed Q4_2 */
    ck_assert_ptr_null(be_type_get(BE_TYPE_COUNT));
    ck_assert_uint_eq(be_row_bytes(BE_Q4_K, 512), 288);
    ck_assert_uint_eq(be_row_bytes(BE_Q4_K, 100), 0);
    ck_assert_uint_eq(be_row_bytes(BE_F32, 7), 28);
    ck_assert_uint_eq(be_row_bytes(BE_Q8_0, 64), 68);
    ck_assert_uint_eq(be_row_bytes(99, 64), 0);
    struct be be = open_cpu(1);
    for (int i = 0; i < N_TYPES; i++)
        ck_assert(be_type_supported(&be, all_types[i]));
    ck_assert(!be_type_supported(&be, BE_Q4_1));
    ck_assert(!be_type_supported(&be, BE_Q2_K));
    ck_assert(!be_type_supported(&be, -3));
    be_close(&be);
}
END_TEST

/* ---------------------------------------------------------------- halves */

START_TEST(test_fp16) {
    /* known encodings */
    ck_assert_float_eq(kref_fp16_to_fp32(0x3c00), 1.0f);
    ck_assert_float_eq(kref_fp16_to_fp32(0xc000), -2.0f);
    ck_assert_float_eq(kref_fp16_to_fp32(0x7bff), 65504.0f);
    ck_assert_float_eq(kref_fp16_to_fp32(0x0001), ldexpf(1.0f, -24));
    ck_assert_float_eq(kref_fp16_to_fp32(0x0400), ldexpf(1.0f, -14));
    ck_assert_uint_eq(kref_fp32_to_fp16(1.0f), 0x3c00);
    ck_assert_uint_eq(kref_fp32_to_fp16(65520.0f), 0x7c00); /* rounds to inf */
    ck_assert_uint_eq(kref_fp32_to_fp16(65519.0f), 0x7bff);
    ck_assert_uint_eq(kref_fp32_to_fp16(1.0f + ldexpf(1.0f, -11)), 0x3c00);  /* tie to even */
    ck_assert_uint_eq(kref_fp32_to_fp16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    ck_assert_uint_eq(kref_fp32_to_fp16(ldexpf(1.0f, -25)), 0x0000); /* tie to even: 0 */
    ck_assert_uint_eq(kref_fp32_to_fp16(ldexpf(1.5f, -25)), 0x0001);
    ck_assert_float_eq(kref_bf16_to_fp32(0x3f80), 1.0f);
    ck_assert_float_eq(kref_bf16_to_fp32(0xc040), -3.0f);
    /* every half: the kernels' converter equals the reference, and round-trips */
    for (uint32_t h = 0; h < 65536; h++) {
        float a = kref_fp16_to_fp32((uint16_t)h), b = kcpu_fp16_to_fp32((uint16_t)h);
        if (isnan(a)) {
            ck_assert(isnan(b));
            continue;
        }
        ck_assert_msg(memcmp(&a, &b, 4) == 0, "h=%04x", h);
        ck_assert_uint_eq(kref_fp32_to_fp16(a), h);
        ck_assert_uint_eq(kcpu_fp32_to_fp16(a), h);
    }
    /* random floats over the whole half range, incl. subnormals and overflow */
    for (int i = 0; i < 200000; i++) {
        uint32_t u = 0x30000000u + rnd() % 0x18000000u;
        if (rnd() & 1)
            u |= 0x80000000u;
        float f;
        memcpy(&f, &u, 4);
        ck_assert_msg(kcpu_fp32_to_fp16(f) == kref_fp32_to_fp16(f), "f=%a", (double)f);
    }
}
END_TEST

/* ---------------------------------------------------------------- known blocks */

/* Dequantise one row with the reference, the scalar kernel dequantiser and
 * every ISA's get_rows; all must equal want[] exactly. */
static void check_dequant(int type, const uint8_t *blk, const float *want, int n) {
    float got[256];
    kref_dequant_row(type, blk, got, n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "ref type %d [%d]: %g want %g", type, i, got[i], want[i]);
    kcpu_dequant_row_scalar(type, blk, got, n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "scalar type %d [%d]: %g want %g", type, i, got[i], want[i]);
    struct be be = open_cpu(1);
    struct be_tensor w = {.type = type, .ne = {n, 1, 1, 1}, .nb1 = be_row_bytes(type, n), .data = blk};
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
            continue;
        int32_t id = 0;
        memset(got, 0xff, sizeof got);
        be_get_rows(&be, got, &w, &id, 1);
        for (int i = 0; i < n; i++)
            ck_assert_msg(got[i] == want[i], "%s type %d [%d]: %g want %g", isas[s], type, i,
                          got[i], want[i]);
    }
    be_close(&be);
}

START_TEST(test_dequant_q4_0) {
    uint8_t b[18];
    put16(b, 0x3800); /* d = 0.5 */
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float want[32];
    for (int j = 0; j < 16; j++) {
        want[j] = 0.5f * (float)(j - 8);       /* low nibble j */
        want[j + 16] = 0.5f * (float)(7 - j);  /* high nibble 15-j */
    }
    ck_assert_float_eq(want[0], -4.0f);
    ck_assert_float_eq(want[15], 3.5f);
    ck_assert_float_eq(want[16], 3.5f);
    check_dequant(BE_Q4_0, b, want, 32);
}
END_TEST

START_TEST(test_dequant_q5_0) {
    uint8_t b[22];
    put16(b, 0x4000); /* d = 2 */
    uint32_t qh = 0xA5A5F00Fu;
    for (int i = 0; i < 4; i++)
        b[2 + i] = (uint8_t)(qh >> (8 * i));
    for (int j = 0; j < 16; j++)
        b[6 + j] = (uint8_t)(j * 7 + 3);
    float want[32];
    for (int j = 0; j < 16; j++) {
        int lo = ((j * 7 + 3) & 255) & 15, hi = ((j * 7 + 3) & 255) >> 4;
        want[j] = 2.0f * (float)(lo + 16 * (int)((qh >> j) & 1) - 16);
        want[j + 16] = 2.0f * (float)(hi + 16 * (int)((qh >> (j + 16)) & 1) - 16);
    }
    /* element 0: byte 3 -> low 3, qh bit0 = 1 -> 19 - 16 = 3 -> 6 */
    ck_assert_float_eq(want[0], 6.0f);
    /* element 16: high nibble 0, qh bit16 = 1 -> 0 */
    ck_assert_float_eq(want[16], 0.0f);
    /* element 4: byte 31 -> low 15, bit4 = 0 -> -1 -> -2 */
    ck_assert_float_eq(want[4], -2.0f);
    check_dequant(BE_Q5_0, b, want, 32);
}
END_TEST

START_TEST(test_dequant_q8_0) {
    uint8_t b[34];
    put16(b, 0x3000); /* d = 0.125 */
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float want[32];
    for (int j = 0; j < 32; j++)
        want[j] = 0.125f * (float)(j * 8 - 128);
    ck_assert_float_eq(want[0], -16.0f);
    ck_assert_float_eq(want[31], 15.0f);
    check_dequant(BE_Q8_0, b, want, 32);
}
END_TEST

/* Pack 8 six-bit (scale, min) pairs into the K-quant 12-byte layout, written
 * from the format: bytes 0-3 sc0-3 | top bits of sc4-7 in bits 6-7;
 * bytes 4-7 m0-3 | top bits of m4-7; bytes 8-11 low 4 bits of sc4-7 (low
 * nibble) and of m4-7 (high nibble). */
static void pack_k_scales(uint8_t *s, const int *sc, const int *m) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

static const int ksc[8] = {1, 2, 3, 4, 17, 33, 50, 63};
static const int kmn[8] = {0, 5, 10, 15, 16, 20, 40, 63};

START_TEST(test_dequant_q4_k) {
    uint8_t b[144];
    put16(b, 0x3c00);     /* d = 1 */
    put16(b + 2, 0x3800); /* dmin = 0.5 */
    pack_k_scales(b + 4, ksc, kmn);
    for (int i = 0; i < 128; i++)
        b[16 + i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
    float want[256];
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) {
            /* sub-block s: bytes 32*(s/2).., low nibbles if s even */
            int byte = 32 * (s / 2) + l;
            int q = s % 2 == 0 ? byte % 16 : 15 - byte % 16;
            want[32 * s + l] = 1.0f * (float)ksc[s] * (float)q - 0.5f * (float)kmn[s];
        }
    ck_assert_float_eq(want[0], 0.0f);
    ck_assert_float_eq(want[32 * 4 + 3], 43.0f);  /* 17*3 - 8 */
    ck_assert_float_eq(want[32 * 7 + 0], 913.5f); /* 63*15 - 31.5 */
    ck_assert_float_eq(want[32 * 1 + 1], 25.5f);  /* 2*14 - 2.5 */
    check_dequant(BE_Q4_K, b, want, 256);
}
END_TEST

START_TEST(test_dequant_q5_k) {
    uint8_t b[176];
    put16(b, 0x3400);     /* d = 0.25 */
    put16(b + 2, 0x3c00); /* dmin = 1 */
    pack_k_scales(b + 4, ksc, kmn);
    for (int l = 0; l < 32; l++)
        b[16 + l] = (uint8_t)(l * 37 + 11);
    for (int i = 0; i < 128; i++)
        b[48 + i] = (uint8_t)(i * 5);
    float want[256];
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) {
            int byte = (32 * (s / 2) + l) * 5 & 255;
            int q = s % 2 == 0 ? byte % 16 : byte / 16;
            q += 16 * ((((l * 37 + 11) & 255) >> s) & 1); /* bit s of qh[l] */
            want[32 * s + l] = 0.25f * (float)ksc[s] * (float)q - 1.0f * (float)kmn[s];
        }
    /* element 0: byte 0 -> 0; qh[0] = 11 (bit0 set) -> q 16 -> 0.25*1*16 - 0 = 4 */
    ck_assert_float_eq(want[0], 4.0f);
    /* element 33 (s=1, l=1): byte 5 -> high 0; qh[1]=48 bit1 0 -> -5 */
    ck_assert_float_eq(want[33], -5.0f);
    check_dequant(BE_Q5_K, b, want, 256);
}
END_TEST

START_TEST(test_dequant_q6_k) {
    uint8_t b[210];
    for (int i = 0; i < 128; i++)
        b[i] = (uint8_t)(i * 3 + 1);           /* ql */
    for (int i = 0; i < 64; i++)
        b[128 + i] = (uint8_t)(i * 29 + 7);    /* qh */
    for (int i = 0; i < 16; i++)
        b[192 + i] = (uint8_t)(int8_t)(i - 8); /* scales, signed */
    put16(b + 208, 0x3400);                    /* d = 0.25 */
    float want[256];
    for (int i = 0; i < 256; i++) {
        int h = i / 128, k = (i % 128) / 32, l = i % 32;
        int lq = ((64 * h + 32 * (k % 2) + l) * 3 + 1) & 255;
        int low = k < 2 ? lq & 15 : lq >> 4;
        int high = ((((32 * h + l) * 29 + 7) & 255) >> (2 * k)) & 3;
        int sc = 8 * h + l / 16 + 2 * k - 8;
        want[i] = 0.25f * (float)sc * (float)(low + 16 * high - 32);
    }
    /* element 0: ql[0]=1 -> 1, qh[0]=7 -> 3 -> q 49-32 = 17, sc -8 -> -34 */
    ck_assert_float_eq(want[0], -34.0f);
    /* element 64 (k=2): ql[0]>>4 = 0, (7>>4)&3 = 0 -> -32, scales[4] = -4 -> 32 */
    ck_assert_float_eq(want[64], 32.0f);
    check_dequant(BE_Q6_K, b, want, 256);
}
END_TEST

START_TEST(test_dequant_linear) {
    uint8_t b[4 * 21];
    float want[21];
    for (int i = 0; i < 21; i++) {
        want[i] = (float)(i - 10) * 0.75f;
        memcpy(b + 4 * i, &want[i], 4);
    }
    check_dequant(BE_F32, b, want, 21);
    for (int i = 0; i < 21; i++)
        put16(b + 2 * i, kref_fp32_to_fp16(want[i]));
    check_dequant(BE_F16, b, want, 21);
    for (int i = 0; i < 21; i++) {
        uint32_t u;
        memcpy(&u, &want[i], 4);
        put16(b + 2 * i, (uint16_t)(u >> 16)); /* exact: few mantissa bits */
    }
    check_dequant(BE_BF16, b, want, 21);
}
END_TEST

/* Random blocks: every ISA's get_rows equals the reference up to the one
 * rounding an fma may save (Q4_K/Q5_K compute d*q - m fused). */
START_TEST(test_dequant_random) {
    struct be be = open_cpu(2);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        int64_t K = 512, R = 5;
        size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * R);
        float *ref = malloc(sizeof(float) * K * R), *got = malloc(sizeof(float) * K * R);
        fill_weights(type, w, R, K);
        struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
        int32_t ids[5] = {4, 0, 2, 2, 1};
        for (int i = 0; i < 5; i++)
            kref_dequant_row(type, w + rb * ids[i], ref + K * i, K);
        for (int s = 0; s < N_ISAS; s++) {
            if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
                continue;
            be_get_rows(&be, got, &t, ids, 5);
            for (int64_t i = 0; i < K * 5; i++)
                ck_assert_msg(fabsf(got[i] - ref[i]) <= 1e-6f * (1.0f + fabsf(ref[i])),
                              "%s type %d [%ld]: %g vs %g", isas[s], type, (long)i, got[i], ref[i]);
        }
        /* out-of-range ids give zeros, not a crash */
        int32_t bad[2] = {-1, 5};
        be_get_rows(&be, got, &t, bad, 2);
        for (int64_t i = 0; i < 2 * K; i++)
            ck_assert_float_eq(got[i], 0.0f);
        free(w);
        free(ref);
        free(got);
    }
    be_close(&be);
}
END_TEST

/* ---------------------------------------------------------------- matmul */

/* |y - ref| <= tol * sum_k |w_k x_k| (+ tiny), per element */
static void check_mm_close(const float *y, const float *x, const uint8_t *w, int type, int64_t K,
                           int64_t R, int n, const char *what) {
    float *ref = malloc(sizeof(float) * (size_t)n * R), *row = malloc(sizeof(float) * K);
    struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = be_row_bytes(type, K), .data = w};
    kref_matmul(ref, x, &t, n);
    for (int64_t r = 0; r < R; r++) {
        kref_dequant_row(type, w + (size_t)r * t.nb1, row, K);
        for (int i = 0; i < n; i++) {
            double mag = 0;
            for (int64_t k = 0; k < K; k++)
                mag += fabs((double)row[k] * x[(size_t)i * K + k]);
            double err = fabs((double)y[(size_t)i * R + r] - ref[(size_t)i * R + r]);
            ck_assert_msg(err <= 1e-5 * mag + 1e-30, "%s type %d K %ld r %ld t %d: %g vs %g (mag %g)",
                          what, type, (long)K, (long)r, i, y[(size_t)i * R + r],
                          ref[(size_t)i * R + r], mag);
        }
    }
    free(ref);
    free(row);
}

START_TEST(test_matmul_vs_ref) {
    static const int ns[] = {1, 2, 3, 7, 33, 130};
    struct be be = open_cpu(1);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        int linear = be_type_get(type)->blck == 1;
        const int64_t Ks[] = {256, 512, linear ? 37 : 768, linear ? 1041 : 1280};
        for (int ki = 0; ki < 4; ki++) {
            int64_t K = Ks[ki], R = ki == 1 ? 37 : 19;
            size_t rb = be_row_bytes(type, K);
            uint8_t *w = malloc(rb * R);
            float *x = malloc(sizeof(float) * 130 * K), *y = malloc(sizeof(float) * 130 * R);
            fill_weights(type, w, R, K);
            for (int64_t i = 0; i < 130 * K; i++)
                x[i] = frnd();
            struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
            for (int s = 0; s < N_ISAS; s++) {
                if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
                    continue;
                for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                    be_matmul(&be, y, x, &t, ns[ni]);
                    check_mm_close(y, x, w, type, K, R, ns[ni], isas[s]);
                }
            }
            free(w);
            free(x);
            free(y);
        }
    }
    be_close(&be);
}
END_TEST

/* y[t] of a batch (prefill tiles; the second config also K-blocks and spans two
 * token blocks) == the same token alone (decode), in groups of 2..4 (decode
 * with neighbours), with 1 and 2 threads, and inside another batch: bitwise. */
static void batch_invariance(struct be *b1, struct be *b2, int type, int64_t K, int n) {
    const int64_t R = 203; /* spans several tiles */
    size_t rb = be_row_bytes(type, K);
    uint8_t *w = malloc(rb * R);
    float *x = malloc(sizeof(float) * n * K), *yb = malloc(sizeof(float) * n * R);
    float *yo = malloc(sizeof(float) * n * R), *ys = malloc(sizeof(float) * 4 * R);
    float *x2 = malloc(sizeof(float) * 9 * K);
    fill_weights(type, w, R, K);
    for (int64_t i = 0; i < n * K; i++)
        x[i] = frnd();
    struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(b1, isas[s]) != 0)
            continue;
        ck_assert_int_eq(kcpu_ctx_set_isa(b2, isas[s]), 0);
        be_matmul(b2, yb, x, &t, n);
        be_matmul(b1, yo, x, &t, n);
        ck_assert_msg(memcmp(yb, yo, sizeof(float) * n * R) == 0, "%s type %d K %ld: threads differ",
                      isas[s], type, (long)K);
        for (int i = 0; i < n; i++) {
            int g = 1 + i % 4; /* tokens i..i+g-1 as a decode batch */
            if (i + g > n)
                g = n - i;
            struct be *bb = i % 2 ? b1 : b2;
            be_matmul(bb, ys, x + (size_t)i * K, &t, g);
            for (int j = 0; j < g; j++)
                ck_assert_msg(memcmp(ys + (size_t)j * R, yb + (size_t)(i + j) * R, sizeof(float) * R) == 0,
                              "%s type %d K %ld: token %d alone (group %d) != in batch of %d", isas[s],
                              type, (long)K, i + j, g, n);
        }
        /* a different batch of 9 around token 5 (other rows of x changed) */
        for (int64_t i = 0; i < 9 * K; i++)
            x2[i] = frnd();
        memcpy(x2 + 4 * K, x + 5 * K, sizeof(float) * K);
        be_matmul(b2, yo, x2, &t, 9);
        ck_assert(memcmp(yo + 4 * R, yb + 5 * R, sizeof(float) * R) == 0);
    }
    free(w);
    free(x);
    free(x2);
    free(yb);
    free(yo);
    free(ys);
}

START_TEST(test_matmul_batch_invariance) {
    struct be b1 = open_cpu(1), b2 = open_cpu(2);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        int linear = be_type_get(type)->blck == 1;
        batch_invariance(&b1, &b2, type, linear ? 300 : 512, 37);
        batch_invariance(&b1, &b2, type, linear ? 1100 : 1280, 101);
    }
    be_close(&b1);
    be_close(&b2);
}
END_TEST

/* LTE sparse FFN (backend.h lte_ffn) against kref_lte_ffn, and its
 * determinism: grouped == dense fallback, a row alone == in a batch, 1 == 2
 * threads, bitwise. S = 32, 6 experts; dim 1280 exercises K-blocking; 70
 * rows span two chunks. Down is Q8_0 where the gate type's blocks exceed S. */
static void lte_case(struct be *b1, struct be *b2, int type, int64_t dim, int n, int act) {
    const int E = 6, S = 32, dtype = be_type_get(type)->blck > S ? BE_Q8_0 : type;
    size_t rb = be_row_bytes(type, dim), rbd = be_row_bytes(dtype, S);
    uint8_t *g = malloc(rb * E * S), *u = malloc(rb * E * S), *d = malloc(rbd * E * dim), *mask = malloc(n * E);
    float *x = malloc(sizeof(float) * n * dim), *y = malloc(sizeof(float) * n * dim);
    float *y2 = malloc(sizeof(float) * n * dim), *ref = malloc(sizeof(float) * n * dim);
    float *sa = malloc(sizeof(float) * n * E * S), *sb = malloc(sizeof(float) * n * E * S);
    fill_weights(type, g, E * S, dim);
    fill_weights(type, u, E * S, dim);
    fill_weights(dtype, d, E * dim, S);
    for (int64_t i = 0; i < n * dim; i++) x[i] = frnd() * 0.2f;
    for (int i = 0; i < n * E; i++) mask[i] = i < E ? 0 : i < 2 * E ? 1 : rnd() % 2; /* row 0 none, row 1 all */
    struct be_tensor tg = {.type = type, .ne = {dim, E * S, 1, 1}, .nb1 = rb, .data = g}, tu = tg;
    tu.data = u;
    struct be_tensor td = {.type = dtype, .ne = {S, E * dim, 1, 1}, .nb1 = rbd, .data = d};
    struct be_lte_ffn p = {.gate = &tg, .up = &tu, .down = &td, .n_experts = E, .expert_size = S, .act = act};
    kref_lte_ffn(ref, x, mask, n, &p);
    double mx = 0;
    for (int64_t i = 0; i < n * dim; i++) mx = fmax(mx, fabs(ref[i]));
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(b1, isas[s]) != 0) continue;
        ck_assert_int_eq(kcpu_ctx_set_isa(b2, isas[s]), 0);
        p.dense = 0;
        be_lte_ffn(b2, y, x, mask, n, &p, sa, sb);
        for (int64_t i = 0; i < n * dim; i++)
            ck_assert_msg(fabs(y[i] - ref[i]) <= 2e-5 * (mx + 1e-3), "%s type %d dim %ld n %d [%ld]: %g vs %g",
                          isas[s], type, (long)dim, n, (long)i, y[i], ref[i]);
        for (int i = 0; i < dim; i++) ck_assert(y[i] == 0.0f && !signbit(y[i])); /* no expert: +0 */
        p.dense = 1;
        be_lte_ffn(b1, y2, x, mask, n, &p, sa, sb);
        ck_assert_msg(memcmp(y, y2, sizeof(float) * n * dim) == 0, "%s type %d: dense != grouped", isas[s], type);
        for (int t = 0; t < n; t += 1 + t / 3) {
            p.dense = t % 2;
            be_lte_ffn(t % 3 ? b1 : b2, y2, x + (size_t)t * dim, mask + (size_t)t * E, 1, &p, sa, sb);
            ck_assert_msg(memcmp(y + (size_t)t * dim, y2, sizeof(float) * dim) == 0,
                          "%s type %d: row %d alone != in a batch of %d", isas[s], type, t, n);
        }
    }
    free(g), free(u), free(d), free(mask), free(x), free(y), free(y2), free(ref), free(sa), free(sb);
}

START_TEST(test_lte_ffn) {
    static const int types[] = {BE_F32, BE_F16, BE_Q8_0, BE_Q4_0, BE_Q4_K};
    struct be b1 = open_cpu(1), b2 = open_cpu(2);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        lte_case(&b1, &b2, types[ti], 256, 5, 0);
        lte_case(&b1, &b2, types[ti], 1280, 70, 1);
    }
    be_close(&b1);
    be_close(&b2);
}
END_TEST

START_TEST(test_matmul_bad_type) {
    struct be be = open_cpu(1);
    uint8_t w[64] = {0};
    float x[32] = {1}, y[2] = {5, 5};
    struct be_tensor t = {.type = BE_Q2_K, .ne = {32, 2, 1, 1}, .nb1 = 32, .data = w};
    be_matmul(&be, y, x, &t, 1); /* unsupported: zeros, no crash */
    ck_assert_float_eq(y[0], 0.0f);
    ck_assert_int_eq(be_weight_prepare(&be, &t), SS_EUNSUPPORTED);
    t.type = BE_Q8_0;
    t.nb1 = 34;
    ck_assert_int_eq(be_weight_prepare(&be, &t), 0);
    t.ne[0] = 33; /* not a multiple of the block */
    ck_assert_int_eq(be_weight_prepare(&be, &t), SS_EINVAL);
    be_close(&be);
}
END_TEST

/* ---------------------------------------------------------------- small ops */

START_TEST(test_rmsnorm) {
    struct be be = open_cpu(2);
    const int n = 5, dim = 70;
    float x[5 * 70], w[70], out[5 * 70], out2[5 * 70];
    for (int i = 0; i < n * dim; i++)
        x[i] = frnd() * 3;
    for (int i = 0; i < dim; i++)
        w[i] = frnd();
    be_rmsnorm(&be, out, x, w, n, dim, 1e-6f);
    be_rmsnorm(&be, out2, x, NULL, n, dim, 1e-6f);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int k = 0; k < dim; k++)
            ss += (double)x[i * dim + k] * x[i * dim + k];
        double sc = 1.0 / sqrt(ss / dim + 1e-6);
        for (int k = 0; k < dim; k++) {
            double e = x[i * dim + k] * sc;
            ck_assert(fabs(out2[i * dim + k] - e) <= 1e-5 * (1 + fabs(e)));
            ck_assert(fabs(out[i * dim + k] - e * w[k]) <= 1e-5 * (1 + fabs(e)));
        }
    }
    be_close(&be);
}
END_TEST

static void rope_ref(float *x, int32_t pos, const struct be_rope_params *p) {
    int half = p->n_rot / 2;
    for (int h = 0; h < p->n_heads; h++) {
        float *v = x + h * p->head_dim;
        for (int i = 0; i < half; i++) {
            double th = pos * (double)p->freq_scale * pow(p->theta_base, -2.0 * i / p->n_rot);
            if (p->freq_factors)
                th /= p->freq_factors[i];
            int a = p->neox ? i : 2 * i, b = p->neox ? i + half : 2 * i + 1;
            double xa = v[a], xb = v[b];
            v[a] = (float)(xa * cos(th) - xb * sin(th));
            v[b] = (float)(xa * sin(th) + xb * cos(th));
        }
    }
}

START_TEST(test_rope) {
    struct be be = open_cpu(2);
    float ff[16];
    for (int i = 0; i < 16; i++)
        ff[i] = 1.0f + i * 0.5f;
    for (int variant = 0; variant < 4; variant++) {
        struct be_rope_params p = {.n_heads = 3, .head_dim = 40, .n_rot = variant == 3 ? 32 : 40,
                                   .theta_base = variant == 2 ? 1000000.0f : 10000.0f,
                                   .freq_scale = variant == 1 ? 0.25f : 1.0f,
                                   .neox = variant % 2, .freq_factors = variant == 3 ? ff : NULL};
        const int n = 6;
        int32_t pos[6] = {0, 1, 7, 100, 4095, 32768};
        float x[6 * 120], want[6 * 120];
        for (int i = 0; i < n * 120; i++)
            want[i] = x[i] = frnd();
        be_rope(&be, x, pos, n, &p);
        for (int t = 0; t < n; t++)
            rope_ref(want + t * 120, pos[t], &p);
        for (int i = 0; i < n * 120; i++)
            ck_assert_msg(fabsf(x[i] - want[i]) < 2e-6f, "variant %d [%d]: %g vs %g", variant, i,
                          x[i], want[i]);
        /* dims past n_rot untouched */
        if (variant == 3)
            for (int t = 0; t < n; t++)
                for (int h = 0; h < 3; h++)
                    for (int k = 32; k < 40; k++)
                        ck_assert_float_eq(x[t * 120 + h * 40 + k], want[t * 120 + h * 40 + k]);
    }
    be_close(&be);
}
END_TEST

static double act_ref(double g, int act) {
    if (act == 0)
        return g / (1 + exp(-g));
    return 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
}

START_TEST(test_glu_add_scale) {
    struct be be = open_cpu(2);
    const int64_t n = 100003; /* big enough to use both threads, odd tail */
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n), *o = malloc(sizeof(float) * n);
    float one;
    for (int64_t i = 0; i < n; i++) {
        g[i] = frnd() * (i % 7 == 0 ? 60 : 6);
        u[i] = frnd();
    }
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
            continue;
        for (int act = 0; act < 2; act++) {
            be_glu(&be, o, g, u, n, act);
            for (int64_t i = 0; i < n; i++) {
                double e = act_ref(g[i], act) * u[i];
                ck_assert_msg(fabs(o[i] - e) <= 2e-6 * (fabs(g[i]) + 1) * fabs(u[i]) + 1e-7,
                              "%s act %d g %g: %g vs %g", isas[s], act, g[i], o[i], e);
            }
            /* lane-wise: an element alone gives the same bits */
            for (int64_t i = n - 20; i < n; i++) {
                be_glu(&be, &one, g + i, u + i, 1, act);
                ck_assert(memcmp(&one, o + i, 4) == 0);
            }
        }
    }
    float *y = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++)
        y[i] = g[i];
    be_add(&be, y, u, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_float_eq(y[i], g[i] + u[i]);
    be_scale(&be, y, 0.5f, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_float_eq(y[i], (g[i] + u[i]) * 0.5f);
    free(g);
    free(u);
    free(o);
    free(y);
    be_close(&be);
}
END_TEST

START_TEST(test_memory) {
    struct be be = open_cpu(2);
    for (size_t sz = 0; sz < 5000; sz += 777) {
        unsigned char *p = be_alloc(&be, sz);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % 64, 0);
        for (size_t i = 0; i < sz; i++)
            ck_assert_uint_eq(p[i], 0);
        unsigned char src[100], dst[100];
        for (int i = 0; i < 100; i++)
            src[i] = (unsigned char)i;
        if (sz >= 100) {
            be_upload(&be, p, src, 100);
            be_download(&be, dst, p, 100);
            ck_assert(memcmp(src, dst, 100) == 0);
        }
        be_dealloc(&be, p);
    }
    be_dealloc(&be, NULL);
    ck_assert_ptr_null(be_alloc(&be, SIZE_MAX - 10));
    be_close(&be);
    be_close(&be); /* twice: harmless */
}
END_TEST

/* ---------------------------------------------------------------- attention */

struct att_case {
    int n_heads, n_kv_heads, head_dim, window, kv_type;
    float softcap;
};

/* naive: softmax over allowed positions in double, reading the cache through
 * the block table */
static void att_naive(float *out, const float *q, const struct be_kv_layer *kv,
                      const struct be_attn_seq *s, int n_seqs, const struct be_attn_params *p) {
    int D = p->head_dim, kvd = p->n_kv_heads * D, qd = p->n_heads * D;
    for (int si = 0; si < n_seqs; si++)
        for (int j = 0; j < s[si].n_tok; j++)
            for (int h = 0; h < p->n_heads; h++) {
                int g = h / (p->n_heads / p->n_kv_heads);
                const float *qv = q + (size_t)(s[si].tok0 + j) * qd + h * D;
                int qpos = s[si].n_past + j, lo = p->window ? qpos - p->window + 1 : 0;
                if (lo < 0)
                    lo = 0;
                double sc[600], mx = -1e300, sum = 0, acc[256] = {0};
                for (int P = lo; P <= qpos; P++) {
                    size_t base = ((size_t)s[si].pages[P / 16] * 16 + P % 16) * kvd + g * D;
                    double d = 0;
                    for (int k = 0; k < D; k++) {
                        double kk = kv->kv_type == BE_F16 ? kref_fp16_to_fp32(((uint16_t *)kv->k)[base + k])
                                                          : ((float *)kv->k)[base + k];
                        d += qv[k] * kk;
                    }
                    d *= p->scale;
                    if (p->softcap > 0)
                        d = p->softcap * tanh(d / p->softcap);
                    sc[P - lo] = d;
                    mx = d > mx ? d : mx;
                }
                for (int P = lo; P <= qpos; P++) {
                    size_t base = ((size_t)s[si].pages[P / 16] * 16 + P % 16) * kvd + g * D;
                    double e = exp(sc[P - lo] - mx);
                    sum += e;
                    for (int k = 0; k < D; k++) {
                        double vv = kv->kv_type == BE_F16 ? kref_fp16_to_fp32(((uint16_t *)kv->v)[base + k])
                                                          : ((float *)kv->v)[base + k];
                        acc[k] += e * vv;
                    }
                }
                float *o = out + (size_t)(s[si].tok0 + j) * qd + h * D;
                for (int k = 0; k < D; k++)
                    o[k] = (float)(acc[k] / sum);
            }
}

static void run_attention_case(struct be *be, const struct att_case *c) {
    enum { NS = 3, PAGES = 64 };
    const int n_past[NS] = {0, 37, 300}, n_tok[NS] = {20, 1, 9};
    int D = c->head_dim, kvd = c->n_kv_heads * D, qd = c->n_heads * D;
    size_t esz = c->kv_type == BE_F16 ? 2 : 4;
    struct be_kv_layer kv = {.k = be_alloc(be, PAGES * 16 * kvd * esz),
                             .v = be_alloc(be, PAGES * 16 * kvd * esz), .kv_type = c->kv_type};
    /* random, non-contiguous page assignment */
    int32_t perm[PAGES], tables[NS][24];
    for (int i = 0; i < PAGES; i++)
        perm[i] = i;
    for (int i = PAGES - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int used = 0;
    struct be_attn_seq seqs[NS];
    int T = 0;
    for (int s = 0; s < NS; s++) {
        int need = (n_past[s] + n_tok[s] + 15) / 16;
        for (int i = 0; i < need; i++)
            tables[s][i] = perm[used++];
        seqs[s] = (struct be_attn_seq){.tok0 = T, .n_tok = n_tok[s], .n_past = n_past[s], .pages = tables[s]};
        T += n_tok[s];
    }
    /* past entries and this step's entries, written through kv_store */
    for (int s = 0; s < NS; s++) {
        int tot = n_past[s] + n_tok[s];
        float *k = malloc(sizeof(float) * tot * kvd), *v = malloc(sizeof(float) * tot * kvd);
        int32_t *slots = malloc(sizeof(int32_t) * tot);
        for (int i = 0; i < tot * kvd; i++) {
            k[i] = frnd();
            v[i] = frnd();
        }
        for (int P = 0; P < tot; P++)
            slots[P] = tables[s][P / 16] * 16 + P % 16;
        be_kv_store(be, &kv, k, v, slots, tot, kvd);
        free(k);
        free(v);
        free(slots);
    }
    float *q = malloc(sizeof(float) * T * qd), *out = malloc(sizeof(float) * T * qd);
    float *want = malloc(sizeof(float) * T * qd), *one = malloc(sizeof(float) * T * qd);
    for (int i = 0; i < T * qd; i++)
        q[i] = frnd() * 2;
    struct be_attn_params p = {.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = D,
                               .scale = 1.0f / sqrtf((float)D), .window = c->window, .softcap = c->softcap};
    be_attention(be, out, q, &kv, seqs, NS, &p);
    att_naive(want, q, &kv, seqs, NS, &p);
    for (int i = 0; i < T * qd; i++)
        ck_assert_msg(fabsf(out[i] - want[i]) < 2e-5f, "H%d/%d D%d win %d type %d cap %g [%d]: %g vs %g",
                      c->n_heads, c->n_kv_heads, D, c->window, c->kv_type, c->softcap, i, out[i], want[i]);
    /* a sequence alone gives the same bits as in the batch */
    struct be_attn_seq alone = seqs[2];
    alone.tok0 = 0;
    be_attention(be, one, q + (size_t)seqs[2].tok0 * qd, &kv, &alone, 1, &p);
    ck_assert(memcmp(one, out + (size_t)seqs[2].tok0 * qd, sizeof(float) * n_tok[2] * qd) == 0);
    free(q);
    free(out);
    free(want);
    free(one);
    be_dealloc(be, kv.k);
    be_dealloc(be, kv.v);
}

START_TEST(test_attention) {
    static const struct att_case cases[] = {
        {4, 2, 64, 0, BE_F32, 0},   {4, 2, 64, 0, BE_F16, 0},  {4, 1, 40, 50, BE_F32, 0},
        {4, 1, 40, 50, BE_F16, 0},  {2, 2, 16, 7, BE_F32, 0},  {6, 3, 256, 0, BE_F16, 0},
        {4, 4, 72, 0, BE_F32, 30.0f}, {4, 2, 64, 1, BE_F16, 5.0f}, {8, 1, 32, 0, BE_F32, 0},
        {5, 1, 48, 20, BE_F16, 0},
    };
    struct be be = open_cpu(2);
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
            continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_attention_case(&be, &cases[i]);
    }
    be_close(&be);
}
END_TEST

START_TEST(test_kv_store_f16) {
    struct be be = open_cpu(1);
    float k[3 * 21], v[3 * 21];
    for (int i = 0; i < 63; i++) {
        k[i] = frnd() * 100;
        v[i] = -frnd() * (i % 5 == 0 ? 70000.0f : 1e-5f); /* overflow and subnormal halves */
    }
    int32_t slots[3] = {17, -1, 63};
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
            continue;
        struct be_kv_layer kv = {.k = be_alloc(&be, 4 * 16 * 21 * 2), .v = be_alloc(&be, 4 * 16 * 21 * 2),
                                 .kv_type = BE_F16};
        be_kv_store(&be, &kv, k, v, slots, 3, 21);
        const uint16_t *kh = kv.k, *vh = kv.v;
        for (int i = 0; i < 21; i++) {
            ck_assert_uint_eq(kh[17 * 21 + i], kref_fp32_to_fp16(k[i]));
            ck_assert_uint_eq(vh[17 * 21 + i], kref_fp32_to_fp16(v[i]));
            ck_assert_uint_eq(vh[63 * 21 + i], kref_fp32_to_fp16(v[42 + i]));
        }
        for (int i = 0; i < 4 * 16 * 21; i++) /* slot -1 skipped: nothing else written */
            if (i / 21 != 17 && i / 21 != 63)
                ck_assert_uint_eq(kh[i], 0);
        be_dealloc(&be, kv.k);
        be_dealloc(&be, kv.v);
    }
    be_close(&be);
}
END_TEST

/* ---------------------------------------------------------------- fork2 */

/* A fork2 task: y = x . W^T through the handle it is given; records the handle. */
struct fork_task {
    const struct be_tensor *w;
    const float *x;
    float y[48];
    int n;
    void *ctx; /* the context the task ran on */
    int order; /* when it ran (sequential wrapper), from fork_clock */
};
static int fork_clock;

static void fork_task_run(struct be *be, void *arg) {
    struct fork_task *t = arg;
    t->ctx = be->ctx;
    t->order = fork_clock++;
    be_matmul(be, t->y, t->x, t->w, t->n);
}

/* Both tasks compute what the parent computes, bitwise, in every mode; the
 * split runs them on two distinct one-thread shares (not the parent); the
 * default wrapper (no fork2 entry) runs them in order on the backend itself. */
START_TEST(test_fork2) {
    enum { K = 256, R = 24, N = 2 };
    static uint8_t wq[R * 272];
    fill_weights(BE_Q8_0, wq, R, K);
    struct be_tensor w = {.type = BE_Q8_0, .ne = {K, R, 1, 1}, .nb1 = be_row_bytes(BE_Q8_0, K), .data = wq};
    float x[2][N * K], want[2][N * R];
    for (int i = 0; i < 2 * N * K; i++) x[i / (N * K)][i % (N * K)] = frnd();
    const int modes[] = {KCPU_FORK_AUTO, KCPU_FORK_SEQ, KCPU_FORK_SPLIT};
    for (int threads = 1; threads <= 3; threads++) {
        struct be be = open_cpu(threads);
        for (int j = 0; j < 2; j++) be_matmul(&be, want[j], x[j], &w, N);
        for (int mi = 0; mi < 3; mi++) {
            struct kcpu_ctx *c = be.ctx;
            c->fork_mode = modes[mi];
            struct fork_task t[2] = {{.w = &w, .x = x[0], .n = N}, {.w = &w, .x = x[1], .n = N}};
            be_fork2(&be, fork_task_run, &t[0], &t[1]);
            int split = modes[mi] == KCPU_FORK_SPLIT || (modes[mi] == KCPU_FORK_AUTO && threads == 2);
            for (int j = 0; j < 2; j++) {
                ck_assert_msg(memcmp(t[j].y, want[j], sizeof want[j]) == 0, "threads %d mode %d task %d differs",
                              threads, modes[mi], j);
                if (split)
                    ck_assert(t[j].ctx != be.ctx && ((struct kcpu_ctx *)t[j].ctx)->n_threads == 1);
                else
                    ck_assert_ptr_eq(t[j].ctx, be.ctx);
            }
            if (split) ck_assert_ptr_ne(t[0].ctx, t[1].ctx);
        }
        /* the wrapper's default: no fork2 entry */
        struct be_ops plain_ops = *be.ops;
        plain_ops.fork2 = NULL;
        struct be plain = {&plain_ops, be.ctx};
        struct fork_task t[2] = {{.w = &w, .x = x[0], .n = N}, {.w = &w, .x = x[1], .n = N}};
        fork_clock = 0;
        be_fork2(&plain, fork_task_run, &t[0], &t[1]);
        ck_assert(t[0].order == 0 && t[1].order == 1 && t[0].ctx == be.ctx && t[1].ctx == be.ctx);
        ck_assert(memcmp(t[0].y, want[0], sizeof want[0]) == 0 && memcmp(t[1].y, want[1], sizeof want[1]) == 0);
        be_close(&be);
    }
}
END_TEST

/* ---------------------------------------------------------------- registry, cuda */

START_TEST(test_registry) {
    struct be be;
    ck_assert_int_lt(be_open(&be, "tpu", 1), 0);
    /* CUDA names: "cuda", "cuda:N"; anything else is not found */
    ck_assert_int_eq(be_open(&be, "cuda:", 1), SS_ENOTFOUND);
    ck_assert_int_eq(be_open(&be, "cuda:x", 1), SS_ENOTFOUND);
    ck_assert_int_eq(be_open(&be, "cuda:-1", 1), SS_ENOTFOUND);
    ck_assert_int_eq(be_open(&be, "cudax", 1), SS_ENOTFOUND);
    char why[256] = "";
    if (!be_cuda_device_available(7, why, sizeof why)) { /* no device 7 here: the reason, not "not found" */
        ck_assert_int_ne(be_open(&be, "cuda:7", 1), SS_ENOTFOUND);
        ck_assert_msg(strstr(why, "CUDA") != NULL, "why: %s", why);
    }
    /* the gate of the unverified CUDA backend: only SLIMSERVE_CUDA_UNVERIFIED=1 opens it */
    const char *old = getenv("SLIMSERVE_CUDA_UNVERIFIED");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("SLIMSERVE_CUDA_UNVERIFIED");
    ck_assert_int_eq(be_cuda_gate_open(why, sizeof why), 0);
    ck_assert_msg(strstr(why, "tools/gpu_check.sh") && strstr(why, "SLIMSERVE_CUDA_UNVERIFIED=1"), "%s", why);
    setenv("SLIMSERVE_CUDA_UNVERIFIED", "yes", 1);
    ck_assert_int_eq(be_cuda_gate_open(NULL, 0), 0);
    setenv("SLIMSERVE_CUDA_UNVERIFIED", "1", 1);
    ck_assert_int_eq(be_cuda_gate_open(why, sizeof why), 1);
    if (saved)
        setenv("SLIMSERVE_CUDA_UNVERIFIED", saved, 1);
    else
        unsetenv("SLIMSERVE_CUDA_UNVERIFIED");
    free(saved);
    ck_assert_int_eq(be_open(&be, "cpu", 0), 0); /* 0 threads = all cores */
    ck_assert_str_eq(be.ops->name, "cpu");
    ck_assert_ptr_nonnull(kcpu_ctx_isa_name(&be));
    be_close(&be);
}
END_TEST

START_TEST(test_cuda) {
    char why[256] = "";
    int avail = be_cuda_available(why, sizeof why);
    ck_assert_msg(why[0] != '\0', "be_cuda_available gave no reason");
    struct be be;
    int rc = be_open(&be, "cuda", 1);
    if (!avail) {
        printf("cuda: skipped (%s)\n", why);
        ck_assert_msg(rc == SS_ENODEVICE || rc == SS_EUNSUPPORTED, "be_open(cuda) = %d", rc);
        return;
    }
    ck_assert_int_eq(rc, 0);
    be_close(&be);
}
END_TEST

static Suite *kernels_suite(void) {
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_type_geometry);
    tcase_add_test(tc, test_fp16);
    tcase_add_test(tc, test_dequant_q4_0);
    tcase_add_test(tc, test_dequant_q5_0);
    tcase_add_test(tc, test_dequant_q8_0);
    tcase_add_test(tc, test_dequant_q4_k);
    tcase_add_test(tc, test_dequant_q5_k);
    tcase_add_test(tc, test_dequant_q6_k);
    tcase_add_test(tc, test_dequant_linear);
    tcase_add_test(tc, test_dequant_random);
    tcase_add_test(tc, test_matmul_vs_ref);
    tcase_add_test(tc, test_matmul_batch_invariance);
    tcase_add_test(tc, test_matmul_bad_type);
    tcase_add_test(tc, test_lte_ffn);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_glu_add_scale);
    tcase_add_test(tc, test_memory);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_kv_store_f16);
    tcase_add_test(tc, test_registry);
    tcase_add_test(tc, test_fork2);
    suite_add_tcase(s, tc);
    TCase *tcu = tcase_create("cuda");
    tcase_set_tags(tcu, "cuda");
    tcase_add_test(tcu, test_cuda);
    suite_add_tcase(s, tcu);
    return s;
}

int main(void) {
    int failed = tu_check_run(kernels_suite());
    return failed != 0;
}
