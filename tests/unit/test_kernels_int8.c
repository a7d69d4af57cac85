/* test_kernels_int8.c - the CPU backend's int8 activation path (kernels/cpu/q8.h):
 *   - exactness: with power-of-two scales every product and sum is exact in
 *     fp32, so the VNNI kernel must equal the scalar reference kref_dot_q8
 *     (exact integer block sums) bit for bit: any integer slip shows;
 *   - accuracy: on random weights, against kref_dot_q8 within fp32 rounding,
 *     and against the fp32 reference kref_matmul within the bound the
 *     quantisation rule guarantees: |x - dx*q| <= dx/2 per element, so
 *     |y_int8 - y_fp32| <= sum_k |w_k| dx(k)/2 (+ fp32 rounding);
 *   - the determinism contract: a token's row is bitwise the same alone, in
 *     any batch, with 1 or 2 threads; the activation cache never serves a
 *     stale quantisation when the engine rewrites a buffer in place;
 *   - the precision switch (be_set_act_precision).
 * Each case runs the kernel of every ISA this CPU has (AVX2's vpmaddubsw and
 * AVX512-VNNI's vpdpbusd); on a CPU with neither, only that int8 is refused.
 * (A separate runner from test_kernels.c, which is near the size limit.)
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
#include "kernels/cpu/q8.h"
#include "tu_check.h"

static const int q_types[] = {BE_Q4_0, BE_Q5_0, BE_Q8_0, BE_Q4_K, BE_Q5_K, BE_Q6_K};
#define N_QTYPES 6

/* PCG-style LCG (top bits): any fixed sequence will do */
static uint64_t rs = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(void) { return (uint32_t)((rs = rs * 6364136223846793005ull + 1442695040888963407ull) >> 33); }
static float frnd(void) { return (float)(rnd() % 2000001) * 1e-6f - 1.0f; } /* [-1, 1] */

/* The fp32 ISAs whose contexts have an int8 kernel (quant_act.c kq8_kernel:
 * avx2 -> the AVX2 kernel, avx512 -> VNNI, or AVX2 without VNNI): every case
 * runs on each of them that this CPU has. */
static const char *const isas[] = {"avx2", "avx512"};
#define N_ISAS 2

/* 1 and an int8 backend on isa, or 0 if this CPU lacks it */
static int open_int8(struct be *be, int threads, const char *isa) {
    ck_assert_int_eq(be_open(be, "cpu", threads), 0);
    if (kcpu_ctx_set_isa(be, isa) != 0) {
        be_close(be);
        return 0;
    }
    ck_assert_int_eq(be_set_act_precision(be, BE_ACT_INT8), BE_ACT_INT8);
    return 1;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); } /* x86: little endian */

/* random quant bytes; scale fields d (and dmin) from the callbacks' values */
static void fill(int type, uint8_t *p, int64_t rows, int64_t K, int pow2) {
    const struct be_type_info *ti = be_type_get(type);
    size_t nblk = be_row_bytes(type, K) * (size_t)rows / (size_t)ti->size;
    for (size_t i = 0; i < nblk * (size_t)ti->size; i++)
        p[i] = (uint8_t)rnd();
    for (size_t b = 0; b < nblk; b++) {
        uint8_t *q = p + b * (size_t)ti->size;
        float d = pow2 ? 0.125f : 0.002f + 0.05f * (float)(rnd() % 1000) / 1000.0f;
        float dmin = pow2 ? 0.125f : 0.001f + 0.02f * (float)(rnd() % 1000) / 1000.0f;
        if (type == BE_Q6_K) {
            put16(q + 208, kref_fp32_to_fp16(d));
        } else {
            put16(q, kref_fp32_to_fp16(d));
            if (type == BE_Q4_K || type == BE_Q5_K)
                put16(q + 2, kref_fp32_to_fp16(dmin));
        }
    }
}

/* x with every 32-block's amax = 127/4: the activation scale is exactly 1/4
 * and every quantised value is the integer drawn (|q| <= 2 elsewhere) */
static void fill_x_exact(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((int)(rnd() % 5) - 2) * 0.25f;
    for (int64_t b = 0; b < n / 32; b++)
        x[b * 32 + rnd() % 32] = (rnd() & 1 ? 127.0f : -127.0f) * 0.25f;
}

START_TEST(test_int8_exact_vs_scalar) {
    struct be be;
    if (!open_int8(&be, 1, isas[_i]))
        return;
    const int64_t K = 512, R = 13;
    const int n = 6;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        int type = q_types[ti];
        size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * R);
        float *x = malloc(sizeof(float) * n * K), *y = malloc(sizeof(float) * n * R);
        fill(type, w, R, K, 1);
        fill_x_exact(x, n * K);
        struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
        be_matmul(&be, y, x, &t, n);
        for (int i = 0; i < n; i++)
            for (int64_t r = 0; r < R; r++) {
                double want = kref_dot_q8(type, w + r * rb, x + i * K, K);
                ck_assert_msg(y[i * R + r] == (float)want, "%s type %d t %d r %ld: %.9g vs exact %.9g",
                              isas[_i], type, i, (long)r, y[i * R + r], want);
            }
        free(w);
        free(x);
        free(y);
    }
    be_close(&be);
}
END_TEST

/* |y - fp32 ref| <= sum_k |w_k| dx(k)/2 * (1 + 1e-3) + 1e-5 * sum_k |w_k x_k| */
static void check_bound(int type, const uint8_t *w, size_t rb, int64_t K, int64_t R, const float *x,
                        int n, const float *y) {
    struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
    float *ref = malloc(sizeof(float) * n * R), *row = malloc(sizeof(float) * K);
    int B = kq8_kind(type) == KQ8_256 ? 256 : 32;
    kref_matmul(ref, x, &t, n);
    for (int64_t r = 0; r < R; r++) {
        kref_dequant_row(type, w + r * rb, row, K);
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * K;
            double qbound = 0, mag = 0, tmag = 0;
            for (int64_t b = 0; b < K / B; b++) {
                float amax = 0;
                for (int k = 0; k < B; k++)
                    amax = fmaxf(amax, fabsf(xi[b * B + k]));
                for (int k = 0; k < B; k++) {
                    qbound += fabs(row[b * B + k]) * (amax / 127.0f) / 2;
                    mag += fabs((double)row[b * B + k] * xi[b * B + k]);
                    tmag += fabs(row[b * B + k]) * amax;
                }
            }
            double got = y[i * R + r];
            double sref = kref_dot_q8(type, w + r * rb, xi, K);
            ck_assert_msg(fabs(got - sref) <= 2e-6 * tmag + 1e-30, "type %d: %g vs scalar int8 %g", type,
                          got, sref);
            ck_assert_msg(fabs(got - ref[i * R + r]) <= qbound * 1.001 + 1e-5 * mag,
                          "type %d K %ld: %g vs fp32 %g (bound %g)", type, (long)K, got, ref[i * R + r],
                          qbound);
        }
    }
    free(ref);
    free(row);
}

START_TEST(test_int8_vs_fp32_ref) {
    struct be be;
    if (!open_int8(&be, 2, isas[_i]))
        return;
    static const int ns[] = {1, 3, 4, 5, 40};
    for (int ti = 0; ti < N_QTYPES; ti++) {
        int type = q_types[ti];
        const int64_t Ks[] = {256, 768, 2048}, R = 37;
        for (int ki = 0; ki < 3; ki++) {
            int64_t K = Ks[ki] + (kq8_kind(type) == KQ8_32 && ki == 1 ? 32 : 0); /* odd block count */
            size_t rb = be_row_bytes(type, K);
            uint8_t *w = malloc(rb * R);
            float *x = malloc(sizeof(float) * 40 * K), *y = malloc(sizeof(float) * 40 * R);
            fill(type, w, R, K, 0);
            for (int64_t i = 0; i < 40 * K; i++)
                x[i] = frnd() * (i % 97 == 0 ? 8.0f : 1.0f); /* a few outliers */
            struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                be_matmul(&be, y, x, &t, ns[ni]);
                check_bound(type, w, rb, K, R, x, ns[ni], y);
            }
            free(w);
            free(x);
            free(y);
        }
    }
    be_close(&be);
}
END_TEST

/* a token alone == in a batch (and in another batch) with 1 or 2 threads;
 * a buffer rewritten in place between two matmuls is requantised */
START_TEST(test_int8_batch_invariance_and_cache) {
    struct be b1, b2;
    if (!open_int8(&b1, 1, isas[_i]))
        return;
    ck_assert(open_int8(&b2, 2, isas[_i]));
    const int64_t R = 203;
    const int n = 37;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        int type = q_types[ti];
        int64_t K = kq8_kind(type) == KQ8_256 ? 1280 : 1056;
        size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * R);
        float *x = malloc(sizeof(float) * n * K), *yb = malloc(sizeof(float) * n * R);
        float *ys = malloc(sizeof(float) * 4 * R), *yo = malloc(sizeof(float) * n * R);
        fill(type, w, R, K, 0);
        for (int64_t i = 0; i < n * K; i++)
            x[i] = frnd();
        struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
        be_matmul(&b2, yb, x, &t, n);
        be_matmul(&b1, yo, x, &t, n);
        ck_assert_msg(memcmp(yb, yo, sizeof(float) * n * R) == 0, "type %d: threads differ", type);
        for (int i = 0; i < n; i++) {
            int g = 1 + i % 4;
            if (i + g > n)
                g = n - i;
            be_matmul(i % 2 ? &b1 : &b2, ys, x + (size_t)i * K, &t, g);
            ck_assert_msg(memcmp(ys, yb + (size_t)i * R, sizeof(float) * g * R) == 0,
                          "type %d: tokens %d..%d alone != in the batch", type, i, i + g - 1);
        }
        /* same pointer, new values: the cached quantisation must not be reused */
        for (int64_t i = 0; i < 4 * K; i++)
            x[i] = frnd();
        be_matmul(&b2, ys, x, &t, 4);
        be_matmul(&b1, yo, x, &t, 4);
        ck_assert(memcmp(ys, yo, sizeof(float) * 4 * R) == 0);
        check_bound(type, w, rb, K, R, x, 4, ys);
        free(w);
        free(x);
        free(yb);
        free(ys);
        free(yo);
    }
    be_close(&b1);
    be_close(&b2);
}
END_TEST

START_TEST(test_int8_precision_switch) {
    struct be be;
    ck_assert_int_eq(be_open(&be, "cpu", 1), 0);
    ck_assert_int_eq(be_set_act_precision(&be, 7), SS_EINVAL);
    /* auto: mixed where the fp32 kernels are AVX2, bf16 where they are
     * AVX-512 and the CPU has AVX512-BF16, else f32 (quant_act.c) */
    struct be ba;
    ck_assert_int_eq(be_open(&ba, "cpu", 1), 0);
    int avx2_best = kcpu_ctx_set_isa(&ba, "avx2") == 0 && kcpu_ctx_set_isa(&ba, "avx512") != 0;
    ck_assert_int_eq(kcpu_ctx_set_isa(&ba, avx2_best ? "avx2" : "generic"), 0);
    ck_assert_int_eq(be_set_act_precision(&ba, BE_ACT_AUTO), avx2_best ? BE_ACT_MIXED : BE_ACT_F32);
    if (kcpu_ctx_set_isa(&ba, "avx512") == 0)
        ck_assert_int_eq(be_set_act_precision(&ba, BE_ACT_AUTO), kbf_available() ? BE_ACT_BF16 : BE_ACT_F32);
    be_close(&ba);
    ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_MIXED), kq8_available() ? BE_ACT_MIXED : SS_EUNSUPPORTED);
    ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_INT8), kq8_available() ? BE_ACT_INT8 : SS_EUNSUPPORTED);
    /* back to f32: bitwise the fp32 path of a fresh backend; F16 weights stay fp32 under int8 */
    const int64_t K = 256, R = 9;
    uint8_t w[256 / 32 * 18 * 9];
    uint16_t wh[256 * 9];
    float x[2 * 256], y1[2 * 9], y2[2 * 9];
    fill(BE_Q4_0, w, R, K, 0);
    for (int i = 0; i < 256 * 9; i++)
        wh[i] = kref_fp32_to_fp16(frnd());
    for (int i = 0; i < 2 * 256; i++)
        x[i] = frnd();
    struct be_tensor t = {.type = BE_Q4_0, .ne = {K, R, 1, 1}, .nb1 = 18 * 8, .data = w};
    struct be_tensor th = {.type = BE_F16, .ne = {K, R, 1, 1}, .nb1 = 512, .data = wh};
    struct be ref;
    ck_assert_int_eq(be_open(&ref, "cpu", 1), 0);
    be_matmul(&ref, y1, x, &th, 2);
    be_matmul(&be, y2, x, &th, 2);
    ck_assert(memcmp(y1, y2, sizeof y1) == 0);
    ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_F32), BE_ACT_F32);
    be_matmul(&ref, y1, x, &t, 2);
    be_matmul(&be, y2, x, &t, 2);
    ck_assert(memcmp(y1, y2, sizeof y1) == 0);
    be_close(&ref);
    be_close(&be);
}
END_TEST

/* kq8_quantize (AVX2 where the CPU has it) writes the bytes of the portable
 * kq8_quantize_ref: scales, quants (+128 and pair-interleaved for 32-blocks,
 * an odd last block padded), the K-quant sums of 16, on rows with zero
 * blocks, signed zeros, subnormals, huge values, infinities and NaNs. */
START_TEST(test_int8_quantize_avx2_equals_ref) {
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "SKIP quantiser equality: no AVX2 here\n");
        return;
    }
    const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-42f, 3e38f, -3e38f, INFINITY, -INFINITY, NAN, 1.0f};
    const int n = 5;
    for (int kind = KQ8_32; kind <= KQ8_256; kind++) {
        const int64_t Ks[] = {32, 96, 256, 1280};
        for (int ki = 0; ki < 4; ki++) {
            int64_t K = Ks[ki];
            struct kq8_x a, b;
            size_t bytes = kq8_x_layout(&a, kind, K, n);
            if (!bytes)
                continue; /* not a whole number of blocks */
            kq8_x_layout(&b, kind, K, n);
            a.buf = calloc(1, bytes);
            b.buf = calloc(1, bytes);
            float *x = malloc(sizeof(float) * n * K);
            for (int64_t i = 0; i < n * K; i++) {
                int blk = (int)(i / 32);
                x[i] = frnd() * (float)(1 + blk % 3) * 10.0f;
                if (blk % 7 == 3)
                    x[i] = 0.0f; /* a whole zero block */
                else if (rnd() % 13 == 0)
                    x[i] = specials[rnd() % 10];
            }
            kq8_quantize_ref(&a, x, 0, n);
            kq8_quantize(&b, x, 0, 2); /* in two calls, as threads do */
            kq8_quantize(&b, x, 2, n);
            ck_assert_msg(memcmp(a.buf, b.buf, bytes) == 0, "kind %d K %ld: AVX2 quantiser differs", kind,
                          (long)K);
            free(a.buf);
            free(b.buf);
            free(x);
        }
    }
#endif
}
END_TEST

/* mixed: 32-block types bitwise as under int8, K-quants bitwise as under f32,
 * in any batch */
START_TEST(test_int8_mixed_per_type) {
    struct be mx, i8, f;
    if (!open_int8(&i8, 2, isas[_i]))
        return;
    ck_assert(open_int8(&mx, 2, isas[_i]));
    ck_assert_int_eq(be_set_act_precision(&mx, BE_ACT_MIXED), BE_ACT_MIXED);
    ck_assert_int_eq(be_open(&f, "cpu", 2), 0);
    ck_assert_int_eq(kcpu_ctx_set_isa(&f, isas[_i]), 0);
    const int64_t K = 512, R = 21;
    const int n = 9;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        int type = q_types[ti];
        size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * R);
        float *x = malloc(sizeof(float) * n * K), *ym = malloc(sizeof(float) * n * R);
        float *yw = malloc(sizeof(float) * n * R);
        fill(type, w, R, K, 0);
        for (int64_t i = 0; i < n * K; i++)
            x[i] = frnd();
        struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
        int blk32 = kq8_kind(type) == KQ8_32;
        for (int m = 1; m <= n; m += n - 1) { /* one token, then the batch */
            be_matmul(&mx, ym, x, &t, m);
            be_matmul(blk32 ? &i8 : &f, yw, x, &t, m);
            ck_assert_msg(memcmp(ym, yw, sizeof(float) * (size_t)m * R) == 0, "%s type %d n %d: mixed is not %s",
                          isas[_i], type, m, blk32 ? "int8" : "f32");
        }
        free(w);
        free(x);
        free(ym);
        free(yw);
    }
    be_close(&f);
    be_close(&mx);
    be_close(&i8);
}
END_TEST

static Suite *int8_suite(void) {
    Suite *s = suite_create("kernels_int8");
    TCase *tc = tcase_create("int8");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_int8_exact_vs_scalar, 0, N_ISAS);
    tcase_add_loop_test(tc, test_int8_vs_fp32_ref, 0, N_ISAS);
    tcase_add_loop_test(tc, test_int8_batch_invariance_and_cache, 0, N_ISAS);
    tcase_add_test(tc, test_int8_precision_switch);
    tcase_add_test(tc, test_int8_quantize_avx2_equals_ref);
    tcase_add_loop_test(tc, test_int8_mixed_per_type, 0, N_ISAS);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    if (!kq8_available())
        fprintf(stderr, "test_kernels_int8: no AVX2 here, int8 kernels not exercised\n");
    int failed = tu_check_run(int8_suite());
    return failed != 0;
}
