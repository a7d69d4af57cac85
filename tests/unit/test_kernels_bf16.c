/* test_kernels_bf16.c - the CPU backend's BF16 matmul path (BE_ACT_BF16,
 * kernels/cpu/matmul_bf16_avx512.c):
 *   - the activation conversion: the AVX-512 converter writes the bytes of
 *     the portable rule kbf_round (round to nearest even, denormals to zero,
 *     NaN quiet) on rows with signed zeros, denormals, huge values,
 *     infinities and NaNs;
 *   - accuracy against an independent reference: weights dequantised by the
 *     scalar reference (kref_dequant_row) and rounded by kbf_round, x rounded
 *     the same way, products summed in double: every type within fp32
 *     summation error, so a wrong pairing of elements, chunk order or scale
 *     shows; and against the fp32 path within the BF16 rounding bound;
 *   - the determinism contract: a token's row is bitwise the same alone
 *     (register path) and in any batch (BF16 tile path), with 1 or 2 threads;
 *   - the precision switch: BF16 taken only where the kernels exist, F32
 *     weights stay on the fp32 path.
 * Skipped, visibly, on CPUs without AVX512-BF16.
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

static const int types[] = {BE_Q4_0, BE_Q5_0, BE_Q8_0, BE_Q4_K, BE_Q5_K, BE_Q6_K, BE_F16, BE_BF16};
#define N_TYPES 8

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { return (uint32_t)((rs = rs * 6364136223846793005ull + 1442695040888963407ull) >> 33); }
static float frnd(void) { return (float)(rnd() % 2000001) * 1e-6f - 1.0f; } /* [-1, 1] */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); } /* x86: little endian */

/* 1 and a BF16 backend (avx512 kernels), or 0 if this CPU has none */
static int open_bf16(struct be *be, int threads) {
    ck_assert_int_eq(be_open(be, "cpu", threads), 0);
    if (!kbf_available() || kcpu_ctx_set_isa(be, "avx512") != 0) {
        be_close(be);
        return 0;
    }
    ck_assert_int_eq(be_set_act_precision(be, BE_ACT_BF16), BE_ACT_BF16);
    return 1;
}

static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* random weights of a type: quant bytes random, scales sane; F16/BF16 values in [-1, 1] */
static void fill(int type, uint8_t *p, int64_t rows, int64_t K) {
    const struct be_type_info *ti = be_type_get(type);
    if (type == BE_F16 || type == BE_BF16) {
        for (int64_t i = 0; i < rows * K; i++) {
            float v = frnd();
            uint16_t h;
            if (type == BE_F16) {
                h = kref_fp32_to_fp16(v);
            } else {
                uint32_t u;
                memcpy(&u, &v, sizeof u);
                h = (uint16_t)(u >> 16);
            }
            put16(p + 2 * i, h);
        }
        return;
    }
    size_t nblk = be_row_bytes(type, K) * (size_t)rows / (size_t)ti->size;
    for (size_t i = 0; i < nblk * (size_t)ti->size; i++)
        p[i] = (uint8_t)rnd();
    for (size_t b = 0; b < nblk; b++) {
        uint8_t *q = p + b * (size_t)ti->size;
        float d = 0.002f + 0.05f * (float)(rnd() % 1000) / 1000.0f;
        float dmin = 0.001f + 0.02f * (float)(rnd() % 1000) / 1000.0f;
        if (type == BE_Q6_K) {
            put16(q + 208, kref_fp32_to_fp16(d));
        } else {
            put16(q, kref_fp32_to_fp16(d));
            if (type == BE_Q4_K || type == BE_Q5_K)
                put16(q + 2, kref_fp32_to_fp16(dmin));
        }
    }
}

START_TEST(test_bf16_convert_equals_ref) {
    if (!kbf_available()) {
        fprintf(stderr, "test_kernels_bf16: no AVX512-BF16 here, converter not exercised\n");
        return;
    }
#if defined(__x86_64__)
    const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-42f, 1.1754944e-38f, 3.4e38f, -3.4e38f,
                              INFINITY, -INFINITY, NAN, -NAN, 1.0f, 1.00390625f, 1.01171875f};
    const int n = 5;
    const int64_t Ks[] = {32, 96, 1280};
    for (int ki = 0; ki < 3; ki++) {
        int64_t K = Ks[ki];
        struct kq8_x a, b;
        size_t bytes = kq8_x_layout(&a, KQ8_BF16, K, n);
        ck_assert(bytes > 0);
        kq8_x_layout(&b, KQ8_BF16, K, n);
        a.buf = calloc(1, bytes);
        b.buf = calloc(1, bytes);
        float *x = malloc(sizeof(float) * n * K);
        for (int64_t i = 0; i < n * K; i++) {
            x[i] = frnd() * 100.0f;
            if (rnd() % 5 == 0)
                x[i] = specials[rnd() % 14];
        }
        kq8_quantize_ref(&a, x, 0, n);
        kq8_quantize(&b, x, 0, 2); /* in two calls, as threads do */
        kq8_quantize(&b, x, 2, n);
        ck_assert_msg(memcmp(a.buf, b.buf, bytes) == 0, "K %ld: AVX-512 converter differs from kbf_round",
                      (long)K);
        free(a.buf);
        free(b.buf);
        free(x);
    }
    /* the rule itself, on values whose rounding is known */
    ck_assert_uint_eq(kbf_round(1.0f), 0x3F80);
    ck_assert_uint_eq(kbf_round(1.00390625f), 0x3F80); /* a tie: to even */
    ck_assert_uint_eq(kbf_round(1.01171875f), 0x3F82); /* a tie: to even, upwards */
    ck_assert_uint_eq(kbf_round(-1e-40f), 0x8000);     /* denormal: signed zero */
    ck_assert_uint_eq(kbf_round(INFINITY), 0x7F80);
    ck_assert_uint_eq(kbf_round(3.4e38f), 0x7F80);     /* rounds past the largest BF16 */
    ck_assert_uint_eq(kbf_round(NAN) & 0x7FC0, 0x7FC0);
#endif
}
END_TEST

/* |y - sum_k bf(w_k) bf(x_k)| <= 1e-5 * sum_k |bf(w_k) bf(x_k)| (fp32 sums),
 * |y - y_f32| <= 2^-7 * sum_k |w_k x_k| + 1e-5 (both roundings) */
static void check_ref(int type, const uint8_t *w, size_t rb, int64_t K, int64_t R, const float *x, int n,
                      const float *y, const float *yf) {
    float *row = malloc(sizeof(float) * K);
    for (int64_t r = 0; r < R; r++) {
        kref_dequant_row(type, w + r * rb, row, K);
        for (int t = 0; t < n; t++) {
            double s = 0, a = 0, a32 = 0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)bf2f(kbf_round(row[k])) * bf2f(kbf_round(x[t * K + k]));
                s += p;
                a += fabs(p);
                a32 += fabs((double)row[k] * x[t * K + k]);
            }
            double got = y[t * R + r];
            ck_assert_msg(fabs(got - s) <= 1e-5 * a + 1e-30, "type %d t %d r %ld: %.9g vs bf16 reference %.9g",
                          type, t, (long)r, got, s);
            ck_assert_msg(fabs(got - yf[t * R + r]) <= a32 / 128.0 + 1e-5, "type %d t %d r %ld: %.9g vs fp32 %.9g",
                          type, t, (long)r, got, yf[t * R + r]);
        }
    }
    free(row);
}

START_TEST(test_bf16_vs_ref) {
    struct be be, f;
    if (!open_bf16(&be, 2)) {
        fprintf(stderr, "test_kernels_bf16: no AVX512-BF16 here, kernels not exercised\n");
        return;
    }
    ck_assert_int_eq(be_open(&f, "cpu", 2), 0);
    const int64_t K = 768, R = 23;
    const int ns[] = {1, 3, 11};
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = types[ti];
        int64_t Kt = type == BE_Q4_K || type == BE_Q5_K || type == BE_Q6_K ? 1024 : K;
        size_t rb = be_row_bytes(type, Kt);
        uint8_t *w = malloc(rb * R);
        float *x = malloc(sizeof(float) * 11 * Kt), *y = malloc(sizeof(float) * 11 * R);
        float *yf = malloc(sizeof(float) * 11 * R);
        fill(type, w, R, Kt);
        for (int64_t i = 0; i < 11 * Kt; i++)
            x[i] = frnd() * (1.0f + (float)(i % 7));
        struct be_tensor t = {.type = type, .ne = {Kt, R, 1, 1}, .nb1 = rb, .data = w};
        for (int i = 0; i < 3; i++) { /* register path (n <= 4) and the tile */
            be_matmul(&be, y, x, &t, ns[i]);
            be_matmul(&f, yf, x, &t, ns[i]);
            check_ref(type, w, rb, Kt, R, x, ns[i], y, yf);
        }
        free(w);
        free(x);
        free(y);
        free(yf);
    }
    be_close(&f);
    be_close(&be);
}
END_TEST

/* a token's row: the same bits alone and in batches of every size, 1 or 2 threads */
START_TEST(test_bf16_batch_invariance) {
    struct be b1, b2;
    if (!open_bf16(&b1, 1))
        return;
    ck_assert(open_bf16(&b2, 2));
    const int64_t K = 512, R = 37;
    const int N = 17;
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = types[ti];
        size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * R);
        float *x = malloc(sizeof(float) * N * K), *y1 = malloc(sizeof(float) * N * R);
        float *yn = malloc(sizeof(float) * N * R);
        fill(type, w, R, K);
        for (int64_t i = 0; i < N * K; i++)
            x[i] = frnd();
        struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
        for (int i = 0; i < N; i++) /* each token alone */
            be_matmul(&b1, y1 + i * R, x + i * K, &t, 1);
        for (int n = 2; n <= N; n += (n < 8 ? 1 : 9)) {
            for (int th = 0; th < 2; th++) {
                memset(yn, 0, sizeof(float) * N * R);
                be_matmul(th ? &b2 : &b1, yn, x, &t, n);
                ck_assert_msg(memcmp(y1, yn, sizeof(float) * (size_t)n * R) == 0,
                              "type %d n %d threads %d: a row differs from the token alone", type, n, th + 1);
            }
        }
        free(w);
        free(x);
        free(y1);
        free(yn);
    }
    be_close(&b2);
    be_close(&b1);
}
END_TEST

START_TEST(test_bf16_precision_switch) {
    struct be be;
    ck_assert_int_eq(be_open(&be, "cpu", 1), 0);
    if (!kbf_available()) {
        ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_BF16), SS_EUNSUPPORTED);
        be_close(&be);
        return;
    }
    /* the kernels need the avx512 context: an avx2 one refuses BF16 */
    ck_assert_int_eq(kcpu_ctx_set_isa(&be, "avx2"), 0);
    ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_BF16), SS_EUNSUPPORTED);
    ck_assert_int_eq(kcpu_ctx_set_isa(&be, "avx512"), 0);
    ck_assert_int_eq(be_set_act_precision(&be, BE_ACT_BF16), BE_ACT_BF16);
    ck_assert_int_eq(kq8_precision(be.ctx), BE_ACT_BF16);
    /* F32 weights stay on the fp32 path: bitwise the f32 backend's result */
    struct be f;
    ck_assert_int_eq(be_open(&f, "cpu", 1), 0);
    ck_assert_int_eq(kcpu_ctx_set_isa(&f, "avx512"), 0);
    const int64_t K = 96, R = 9;
    const int n = 6;
    float *w = malloc(sizeof(float) * K * R), *x = malloc(sizeof(float) * n * K);
    float *y = malloc(sizeof(float) * n * R), *yf = malloc(sizeof(float) * n * R);
    for (int64_t i = 0; i < K * R; i++)
        w[i] = frnd();
    for (int64_t i = 0; i < n * K; i++)
        x[i] = frnd();
    struct be_tensor t = {.type = BE_F32, .ne = {K, R, 1, 1}, .nb1 = sizeof(float) * K, .data = w};
    be_matmul(&be, y, x, &t, n);
    be_matmul(&f, yf, x, &t, n);
    ck_assert(memcmp(y, yf, sizeof(float) * n * R) == 0);
    free(w);
    free(x);
    free(y);
    free(yf);
    be_close(&f);
    be_close(&be);
}
END_TEST

static Suite *bf16_suite(void) {
    Suite *s = suite_create("kernels_bf16");
    TCase *tc = tcase_create("bf16");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_bf16_convert_equals_ref);
    tcase_add_test(tc, test_bf16_vs_ref);
    tcase_add_test(tc, test_bf16_batch_invariance);
    tcase_add_test(tc, test_bf16_precision_switch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    if (!kbf_available())
        fprintf(stderr, "test_kernels_bf16: SKIP: no AVX512-BF16 on this CPU, BF16 kernels not exercised\n");
    int failed = tu_check_run(bf16_suite());
    return failed != 0;
}
