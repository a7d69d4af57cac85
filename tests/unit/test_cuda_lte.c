/* test_cuda_lte.c - the CUDA LTE sparse FFN's arithmetic and grouping
 * (kernels/cuda/kcu_lte.h) on the CPU: the kernels' walk (kcu_lte.cu) written
 * out here with the same functions, against the CPU backend's lte_ffn on the
 * same generated weights.
 *
 *   test_lte_grouping  kcu_lte_offsets/kcu_lte_fill against the definition:
 *                      every active (row, expert) pair once, rows increasing
 *                      within an expert, items of <= KCU_LTE_ROWS covering
 *                      each expert's pairs, each row's entries in increasing
 *                      expert order pointing at its own h (both numberings).
 *   test_lte_emulated  every weight type the backend takes (stored as the
 *                      device stores it: kcu_gemm_type, quantised types
 *                      dequantised to F16), n = 1, 3, 17, 64, masks with 0%,
 *                      partial and 100% of experts on, SiLU and GELU: the
 *                      emulated grouped path against the CPU backend on the
 *                      device-form weights (summation order only) and on the
 *                      original weights (plus the F16 rounding of quantised
 *                      weights); rows without experts are +0; a row alone is
 *                      bitwise the same row in the batch; the dense path
 *                      (CPU matmul standing in for cuBLAS, then the same glu
 *                      and down walk) agrees within tolerance.
 * Built and run without CUDA (-ffp-contract=off, as the CPU kernels).
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cuda/kcu_lte.h"
#include "kerntest.h"
#include "tu_check.h"

/* ------------------------------------------------------------ grouping */

/* mode 0: no expert on, 1: random (row 0 none, row 1 all), 2: every expert on */
static void make_mask(uint8_t *mask, int n, int E, int mode) {
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++)
            mask[(size_t)t * E + e] = mode == 0 ? 0 : mode == 2 ? 1 : t == 0 ? 0 : t == 1 ? 1 : rnd() % 3 == 0;
}

/* The grouping of mask, as be_cuda.c builds it (host arrays, malloc'd). */
struct groups {
    int32_t *off, *cur, *tok, *rowoff;
    struct kcu_lte_item *items;
    struct kcu_lte_ent *ents;
    int64_t n_items;
};

static void groups_build(struct groups *g, const uint8_t *mask, int n, int E, int dense) {
    g->off = malloc(sizeof(int32_t) * (E + 1));
    g->cur = malloc(sizeof(int32_t) * E);
    g->n_items = kcu_lte_offsets(mask, n, E, g->off);
    const size_t P = (size_t)g->off[E]; /* >= 0 */
    g->tok = malloc(sizeof(int32_t) * (P + 1));
    g->rowoff = malloc(sizeof(int32_t) * (n + 1));
    g->items = malloc(sizeof *g->items * (g->n_items + 1));
    g->ents = malloc(sizeof *g->ents * (P + 1));
    kcu_lte_fill(mask, n, E, dense, g->off, g->cur, g->tok, g->items, g->rowoff, g->ents);
}

static void groups_free(struct groups *g) {
    free(g->off), free(g->cur), free(g->tok), free(g->rowoff), free(g->items), free(g->ents);
}

static void check_groups(const uint8_t *mask, int n, int E, int dense) {
    struct groups g;
    groups_build(&g, mask, n, E, dense);
    int32_t P = 0;
    for (int i = 0; i < n * E; i++)
        P += mask[i] != 0;
    ck_assert_int_eq(g.off[0], 0);
    ck_assert_int_eq(g.off[E], P);
    /* the CSR: expert e's pairs are exactly the rows that chose it, increasing */
    for (int e = 0; e < E; e++) {
        int32_t i = g.off[e];
        for (int t = 0; t < n; t++)
            if (mask[(size_t)t * E + e]) {
                ck_assert_int_lt(i, g.off[e + 1]);
                ck_assert_int_eq(g.tok[i++], t);
            }
        ck_assert_int_eq(i, g.off[e + 1]);
    }
    /* items: consecutive chunks of each expert's pairs, at most KCU_LTE_ROWS */
    int32_t next = 0;
    for (int64_t j = 0; j < g.n_items; j++) {
        const struct kcu_lte_item it = g.items[j];
        ck_assert(it.cnt >= 1 && it.cnt <= KCU_LTE_ROWS);
        ck_assert_int_eq(it.i0, next);
        ck_assert(it.i0 >= g.off[it.e] && it.i0 + it.cnt <= g.off[it.e + 1]);
        ck_assert(it.cnt == KCU_LTE_ROWS || it.i0 + it.cnt == g.off[it.e + 1]);
        next += it.cnt;
    }
    ck_assert_int_eq(next, P);
    /* per row: its active experts in increasing order, each h its own */
    ck_assert_int_eq(g.rowoff[0], 0);
    ck_assert_int_eq(g.rowoff[n], P);
    for (int t = 0; t < n; t++) {
        int32_t k = g.rowoff[t];
        for (int e = 0; e < E; e++) {
            if (!mask[(size_t)t * E + e])
                continue;
            ck_assert_int_lt(k, g.rowoff[t + 1]);
            ck_assert_int_eq(g.ents[k].e, e);
            if (dense) {
                ck_assert_int_eq(g.ents[k].h, t * E + e);
            } else {
                ck_assert(g.ents[k].h >= g.off[e] && g.ents[k].h < g.off[e + 1]);
                ck_assert_int_eq(g.tok[g.ents[k].h], t);
            }
            k++;
        }
        ck_assert_int_eq(k, g.rowoff[t + 1]);
    }
    groups_free(&g);
}

START_TEST(test_lte_grouping) {
    static const int ns[] = {1, 3, 17, 64}, Es[] = {1, 6, 13};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int mode = 0; mode < 3; mode++) {
                uint8_t *mask = malloc((size_t)ns[a] * Es[b]);
                make_mask(mask, ns[a], Es[b], mode);
                check_groups(mask, ns[a], Es[b], 0);
                check_groups(mask, ns[a], Es[b], 1);
                free(mask);
            }
}
END_TEST

/* ------------------------------------------------------------ emulated kernels */

/* A weight as the CUDA backend's weight_prepare stores it on the device:
 * rows of K elements of kcu_gemm_type(type); F32/F16/BF16 bytes as they are,
 * quantised rows dequantised (the CPU's reference dequantiser) then rounded
 * to F16 (saturating). t describes it for the CPU backend. */
struct devw {
    void *mem;
    int gt;
    struct be_tensor t;
};

static void devw_make(struct devw *d, const struct be_tensor *w) {
    const int64_t K = w->ne[0], R = w->ne[1];
    d->gt = kcu_gemm_type(w->type);
    const size_t es = d->gt == BE_F32 ? 4 : 2;
    d->mem = malloc(es * (size_t)K * (size_t)R);
    float *row = malloc(sizeof(float) * (size_t)K);
    for (int64_t r = 0; r < R; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)r * w->nb1;
        uint8_t *o = (uint8_t *)d->mem + (size_t)r * (size_t)K * es;
        if (w->type == d->gt) {
            memcpy(o, src, (size_t)K * es);
            continue;
        }
        kref_dequant_row(w->type, src, row, K);
        for (int64_t k = 0; k < K; k++)
            ((uint16_t *)o)[k] = kcu_f32_to_f16_sat(row[k]);
    }
    free(row);
    d->t = (struct be_tensor){.type = d->gt, .ne = {K, R, 1, 1}, .nb1 = (size_t)K * es, .data = d->mem};
}

/* Phase A of kcu_lte_gate_up_kernel, walked on the host: per item and neuron,
 * the 32 lanes' partial sums, the butterfly, glu. h: P*S floats. */
static void emu_gate_up(float *h, const float *x, const struct devw *g, const struct devw *u, int64_t dim, int S,
                        const struct groups *gr, int act) {
    float lg[KCU_LTE_LANES][KCU_LTE_ROWS], lu[KCU_LTE_LANES][KCU_LTE_ROWS], vg[KCU_LTE_LANES], vu[KCU_LTE_LANES];
    const size_t eg = g->gt == BE_F32 ? 4 : 2, eu = u->gt == BE_F32 ? 4 : 2;
    for (int64_t b = 0; b < gr->n_items; b++) {
        const struct kcu_lte_item it = gr->items[b];
        for (int j = 0; j < S; j++) {
            const size_t row = (size_t)it.e * S + j;
            for (int lane = 0; lane < KCU_LTE_LANES; lane++)
                kcu_lte_lane_dots((const uint8_t *)g->mem + row * dim * eg, g->gt,
                                  (const uint8_t *)u->mem + row * dim * eu, u->gt, dim, x, gr->tok + it.i0, it.cnt,
                                  lane, lg[lane], lu[lane]);
            for (int r = 0; r < it.cnt; r++) {
                for (int lane = 0; lane < KCU_LTE_LANES; lane++)
                    vg[lane] = lg[lane][r], vu[lane] = lu[lane][r];
                const float gs = kcu_lte_butterfly(vg), us = kcu_lte_butterfly(vu);
                h[(size_t)(it.i0 + r) * S + j] = kcu_glu(gs, us, act);
            }
        }
    }
}

/* Phase B of kcu_lte_down_kernel: kcu_lte_down_tile for every (tile of
 * KCU_LTE_DROWS rows, output); then each row checked bitwise against the
 * definition computed here row by row (+0, then each entry's dot over S in
 * increasing j, added in increasing e): a tile shares reads, not sums. */
static void emu_down(float *y, const float *h, const struct devw *dw, int64_t dim, int S, int n,
                     const struct groups *gr) {
    const size_t es = dw->gt == BE_F32 ? 4 : 2;
    for (int t0 = 0; t0 < n; t0 += KCU_LTE_DROWS)
        for (int64_t d = 0; d < dim; d++)
            kcu_lte_down_tile(y, h, dw->mem, dw->gt, dim, S, gr->rowoff, gr->ents, t0,
                              n - t0 < KCU_LTE_DROWS ? n - t0 : KCU_LTE_DROWS, d);
    for (int t = 0; t < n; t++)
        for (int64_t d = 0; d < dim; d++) {
            float acc = 0.0f;
            for (int32_t k = gr->rowoff[t]; k < gr->rowoff[t + 1]; k++) {
                const struct kcu_lte_ent en = gr->ents[k];
                const uint8_t *w = (const uint8_t *)dw->mem + ((size_t)en.e * dim + d) * S * es;
                float p = 0.0f;
                for (int j = 0; j < S; j++)
                    p += kcu_lte_w(w, dw->gt, (size_t)j) * h[(size_t)en.h * S + j];
                acc += p;
            }
            const float got = y[(size_t)t * dim + d];
            ck_assert_msg(memcmp(&acc, &got, sizeof acc) == 0, "down tile != row definition: row %d d %ld: %g vs %g",
                          t, (long)d, got, acc);
        }
}

struct lte_w {
    struct devw g, u, d;
    int64_t dim;
    int E, S, act;
};

/* The whole CUDA lte_ffn of be_cuda.c, emulated: grouped, or dense with the
 * CPU backend's matmul on the device-form weights standing in for cuBLAS. */
static void emu_lte(struct be *cpu, float *y, const float *x, const uint8_t *mask, int n, const struct lte_w *w,
                    int dense) {
    const int E = w->E, S = w->S;
    struct groups gr;
    groups_build(&gr, mask, n, E, dense);
    const size_t ffn = (size_t)E * S;
    float *h = malloc(sizeof(float) * ((size_t)n * ffn + 1));
    if (dense) {
        float *gu = malloc(sizeof(float) * (size_t)n * ffn);
        be_matmul(cpu, h, x, &w->g.t, n);
        be_matmul(cpu, gu, x, &w->u.t, n);
        for (size_t i = 0; i < (size_t)n * ffn; i++)
            h[i] = kcu_glu(h[i], gu[i], w->act);
        free(gu);
    } else {
        emu_gate_up(h, x, &w->g, &w->u, w->dim, S, &gr, w->act);
    }
    emu_down(y, h, &w->d, w->dim, S, n, &gr);
    free(h);
    groups_free(&gr);
}

static double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

static void near(const float *a, const float *b, size_t n, double tol, const char *what, int type, int nrows) {
    const double sc = max_abs(b, n) + 1e-3;
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)a[i] - b[i]) <= tol * sc, "%s: type %d n %d [%zu]: %g vs %g (scale %g)", what,
                      type, nrows, i, a[i], b[i], sc);
}

/* Weight tolerance of the device copy against the file's weights: quantised
 * types lose what F16 rounding of their dequantised values loses. */
static double type_tol(int type) { return kcu_gemm_type(type) == type ? 1e-4 : 3e-3; }

static void lte_type_case(struct be *cpu, int type, int act) {
    const int E = 6, S = 32, dtype = be_type_get(type)->blck > S ? BE_Q8_0 : type;
    const int64_t dim = 256;
    const size_t rb = be_row_bytes(type, dim), rbd = be_row_bytes(dtype, S);
    uint8_t *g = malloc(rb * E * S), *u = malloc(rb * E * S), *d = malloc(rbd * E * dim);
    fill_weights(type, g, E * S, dim);
    fill_weights(type, u, E * S, dim);
    fill_weights(dtype, d, E * dim, S);
    struct be_tensor tg = {.type = type, .ne = {dim, E * S, 1, 1}, .nb1 = rb, .data = g}, tu = tg;
    tu.data = u;
    struct be_tensor td = {.type = dtype, .ne = {S, E * dim, 1, 1}, .nb1 = rbd, .data = d};
    struct lte_w w = {.dim = dim, .E = E, .S = S, .act = act};
    devw_make(&w.g, &tg);
    devw_make(&w.u, &tu);
    devw_make(&w.d, &td);
    static const int ns[] = {1, 3, 17, 64};
    for (int a = 0; a < 4; a++)
        for (int mode = 0; mode < 3; mode++) {
            const int n = ns[a];
            const size_t N = (size_t)n * dim;
            uint8_t *mask = malloc((size_t)n * E);
            make_mask(mask, n, E, mode);
            float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N), *yd = malloc(sizeof(float) * N);
            float *ref = malloc(sizeof(float) * N), *refd = malloc(sizeof(float) * N), *y1 = malloc(sizeof(float) * dim);
            float *sa = malloc(sizeof(float) * n * E * S), *sb = malloc(sizeof(float) * n * E * S);
            for (size_t i = 0; i < N; i++)
                x[i] = frnd() * 0.2f;
            /* the CPU backend: on the file's weights and on the device-form ones */
            struct be_lte_ffn p = {.gate = &tg, .up = &tu, .down = &td, .n_experts = E, .expert_size = S, .act = act};
            be_lte_ffn(cpu, ref, x, mask, n, &p, sa, sb);
            struct be_lte_ffn pd = {.gate = &w.g.t, .up = &w.u.t, .down = &w.d.t, .n_experts = E, .expert_size = S,
                                    .act = act};
            be_lte_ffn(cpu, refd, x, mask, n, &pd, sa, sb);
            emu_lte(cpu, y, x, mask, n, &w, 0);
            near(y, refd, N, 1e-4, "grouped vs cpu (device-form weights)", type, n);
            near(y, ref, N, type_tol(type), "grouped vs cpu (file weights)", type, n);
            for (int t = 0; t < n; t++) {
                int any = 0;
                for (int e = 0; e < E; e++)
                    any |= mask[(size_t)t * E + e];
                for (int64_t k = 0; k < dim && !any; k++) /* no expert: +0 */
                    ck_assert(y[(size_t)t * dim + k] == 0.0f && !signbit(y[(size_t)t * dim + k]));
            }
            for (int t = 0; t < n; t += 1 + t / 2) { /* a row alone == the same row in the batch, bitwise */
                emu_lte(cpu, y1, x + (size_t)t * dim, mask + (size_t)t * E, 1, &w, 0);
                ck_assert_msg(memcmp(y1, y + (size_t)t * dim, sizeof(float) * dim) == 0,
                              "type %d: row %d alone != in a batch of %d", type, t, n);
            }
            emu_lte(cpu, yd, x, mask, n, &w, 1);
            near(yd, y, N, 1e-4, "dense vs grouped", type, n);
            near(yd, ref, N, type_tol(type), "dense vs cpu (file weights)", type, n);
            free(mask), free(x), free(y), free(yd), free(ref), free(refd), free(y1), free(sa), free(sb);
        }
    free(w.g.mem), free(w.u.mem), free(w.d.mem), free(g), free(u), free(d);
}

START_TEST(test_lte_emulated) {
    struct be cpu;
    ck_assert_int_eq(be_open(&cpu, "cpu", 1), 0);
    for (int t = 0; t < N_TYPES; t++)
        lte_type_case(&cpu, all_types[t], t % 2);
    be_close(&cpu);
}
END_TEST

/* The butterfly gives the sum of the 32 lanes in its fixed pairing (checked
 * here against that pairing written as a tree of pairs of pairs). */
START_TEST(test_lte_butterfly) {
    float v[KCU_LTE_LANES], w[KCU_LTE_LANES];
    for (int rep = 0; rep < 1000; rep++) {
        for (int l = 0; l < KCU_LTE_LANES; l++)
            v[l] = w[l] = frnd() * (float)(1 + rnd() % 1000);
        /* after steps 16..1, lane 0 holds ((.. (w0 + w16) + (w8 + w24)) ..): the
         * tree over the lane index bits from the highest */
        for (int m = KCU_LTE_LANES / 2; m > 0; m >>= 1)
            for (int l = 0; l < m; l++)
                w[l] = w[l] + w[l + m];
        float s = kcu_lte_butterfly(v);
        ck_assert(memcmp(&s, &w[0], sizeof s) == 0);
        for (int l = 1; l < KCU_LTE_LANES; l++)
            ck_assert(memcmp(&v[l], &s, sizeof s) == 0); /* every lane ends equal */
    }
}
END_TEST

static Suite *cuda_lte_suite(void) {
    Suite *s = suite_create("cuda_lte");
    const struct tu_case cases[] = {
        {"lte_grouping", test_lte_grouping},
        {"lte_butterfly", test_lte_butterfly},
        {"lte_emulated", test_lte_emulated},
    };
    tu_check_add(s, cases, TU_NCASES(cases), 0);
    return s;
}

int main(void) {
    int failed = tu_check_run(cuda_lte_suite());
    return failed != 0;
}
