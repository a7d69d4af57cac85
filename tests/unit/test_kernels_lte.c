/* test_kernels_lte.c - the CPU kernel pieces of LTE's decode path
 * (kernels/cpu/lte.c phase B): gemv_lte: gemv's store mode (gemv's bits) and add mode (kcpu_mm.yadd: an expert's
 * down product added straight into the output rows; on AVX-512, one-block
 * rows go 16 at a time) and its prefetch bounds (pf_lim / pf_next / pf_warm),
 * for every instruction set this CPU runs. The whole LTE FFN is checked in
 * test_kernels (test_lte_ffn) and test_lte.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"
#include "kerntest.h"
#include "tu_check.h"

/* One type and row length: rows [R0, R1) of R, n = 1..4 tokens. The stored
 * products are close to the scalar reference; added, each is the prior value
 * plus the stored product (one fp32 add: bitwise), rows outside untouched. */
enum { R = 61, R0 = 5, R1 = 58 }; /* 3 groups of 16, 1 of 4, 1 single row */

static void gemv_add_case(int type, int64_t K) {
    size_t rb = be_row_bytes(type, K);
    uint8_t *w = malloc(rb * R);
    float *x = malloc(sizeof(float) * 4 * (size_t)K), *row = malloc(sizeof(float) * (size_t)K);
    float y[4 * R], ya[4 * R], prior[4 * R], ref[4 * R];
    fill_weights(type, w, R, K);
    for (int64_t i = 0; i < 4 * K; i++)
        x[i] = frnd();
    for (int i = 0; i < 4 * R; i++)
        prior[i] = frnd() * 4.0f;
    struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
    kref_matmul(ref, x, &t, 4);
    for (int s = 0; s < N_ISAS; s++) {
        const struct kcpu_isa *isa = kcpu_isa_find(isas[s]);
        if (!isa)
            continue;
        for (int n = 1; n <= 4; n++) {
            struct kcpu_mm mm = {.y = y, .ldy = R, .x = x, .ldx = K, .w = w, .nb1 = rb, .type = type, .K = K, .n = n};
            memset(y, 0, sizeof y);
            isa->gemv(&mm, R0, R1);
            for (int j = 0; j < n; j++)
                for (int r = R0; r < R1; r++) {
                    kref_dequant_row(type, w + (size_t)r * rb, row, K);
                    double mag = 0;
                    for (int64_t k = 0; k < K; k++)
                        mag += fabs((double)row[k] * x[(size_t)j * K + k]);
                    ck_assert_msg(fabs((double)y[j * R + r] - ref[j * R + r]) <= 1e-5 * mag + 1e-30,
                                  "%s type %d K %ld n %d: row %d token %d %g vs %g", isas[s], type, (long)K, n, r, j,
                                  y[j * R + r], ref[j * R + r]);
                }
            float yl[4 * R]; /* gemv_lte in store mode: gemv's bits */
            memset(yl, 0, sizeof yl);
            mm.y = yl;
            isa->gemv_lte(&mm, R0, R1);
            mm.y = y;
            ck_assert_msg(memcmp(yl, y, sizeof y) == 0, "%s type %d K %ld n %d: gemv_lte store != gemv", isas[s],
                          type, (long)K, n);
            float *rows[4] = {ya, ya + R, ya + 2 * R, ya + 3 * R};
            struct kcpu_mm ma = mm;
            ma.yadd = rows;
            ma.pf_lim = w + (size_t)R1 * rb; /* the prefetch runs on into rows [0, ...) */
            ma.pf_next = w;
            ma.pf_warm = n & 1;
            memcpy(ya, prior, sizeof ya);
            isa->gemv_lte(&ma, R0, R1);
            for (int j = 0; j < 4; j++)
                for (int r = 0; r < R; r++) {
                    float want = j < n && r >= R0 && r < R1 ? prior[j * R + r] + y[j * R + r] : prior[j * R + r];
                    ck_assert_msg(memcmp(&want, &ya[j * R + r], sizeof want) == 0,
                                  "%s type %d K %ld n %d: added row %d token %d %g, want %g", isas[s], type, (long)K,
                                  n, r, j, ya[j * R + r], want);
                }
        }
    }
    free(w);
    free(x);
    free(row);
}

/* Rows of one block (LTE's expert-major down: S = 32 elements, or 256 for
 * K-quants), of several blocks, and linear rows with a tail chunk. */
START_TEST(test_gemv_add) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti], blck = (int)be_type_get(type)->blck;
        int linear = blck == 1;
        gemv_add_case(type, linear ? 32 : blck);
        gemv_add_case(type, linear ? 45 : 3 * blck);
    }
}
END_TEST

int main(void) {
    const struct tu_case cases[] = {{"gemv_add", test_gemv_add}};
    Suite *s = suite_create("kernels_lte");
    tu_check_add(s, cases, TU_NCASES(cases), 120);
    return tu_check_run(s) ? EXIT_FAILURE : EXIT_SUCCESS;
}
