/* lte.c - the CPU LTE sparse FFN (backend.h: lte_ffn).
 *
 *   lists    host CSR of the mask: for each expert e, the rows that chose it
 *            (increasing row order); hc row off[e] + i holds h of the i-th of
 *            them, S floats.
 *   phase A  h of every (row, active expert) pair into hc:
 *              grouped: per active expert (dynamic over threads), its rows
 *                gathered in chunks of LTE_CH, S gate rows and S up rows times
 *                the chunk (gemv for <= KCPU_DECODE_MAX rows, else one
 *                dequantised tile reused over the chunk), act(g) * u;
 *              dense: gate and up as two plain matmuls over all rows, then
 *                act(g) * u of the active pairs packed into hc.
 *   phase B  each thread owns a range of output dims d; for each active expert
 *            in increasing order and each chunk of its rows, the partial
 *            down_e[d0..d1) . hc rows, added into y.
 * Only the bytes of active experts are read in the grouped path (gate/up
 * rows of the expert, its expert-major down block).
 *
 * Determinism (backend.h): every g, u and partial is computed by the ISA's
 * gemv or gemm_tile, which give the same value for a (weight row, input row)
 * pair (kcpu.h contract); y[t][d] is +0 plus the partials of t's experts in
 * increasing e, added by the one thread owning d.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"

#define LTE_CH 64      /* rows per chunk (gathered inputs, partial outputs) */
#define LTE_DBLK 128   /* output dims per down tile */

struct lte_lists {
    int32_t *off;  /* [E + 1] */
    int32_t *tok;  /* [sum of counts] rows, grouped by expert */
};

/* CSR of the mask into ctx->lte_idx (grown on demand). Returns 0 or -1. */
static int build_lists(struct kcpu_ctx *c, const uint8_t *mask, int n, int E, struct lte_lists *L) {
    size_t need = (size_t)E + 1 + (size_t)n * (size_t)E;
    if (c->lte_idx_len < need) {
        int32_t *p = realloc(c->lte_idx, need * sizeof *p);
        if (!p)
            return -1;
        c->lte_idx = p;
        c->lte_idx_len = need;
    }
    L->off = c->lte_idx;
    L->tok = c->lte_idx + E + 1;
    memset(L->off, 0, ((size_t)E + 1) * sizeof *L->off);
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++)
            L->off[e + 1] += mask[(size_t)t * E + e] != 0;
    for (int e = 0; e < E; e++)
        L->off[e + 1] += L->off[e];
    int32_t *fill = L->off; /* reuse: count per expert while filling, then restore */
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++)
            if (mask[(size_t)t * E + e])
                L->tok[fill[e]++] = t;
    for (int e = E; e > 0; e--) /* fill[e-1] now equals the old off[e] */
        L->off[e] = L->off[e - 1];
    L->off[0] = 0;
    return 0;
}

/* y = W[r0..r0+nr) . x for nr weight rows starting at w (rows of K elements,
 * nb1 bytes) and c input rows x[c][ldx], into y[c][ldy]. tile: nr*ldd floats
 * (ldd >= K, multiple of 16), scr: NULL or KCPU_SCR_FLOATS(nr) floats. */
static void rows_times(const struct kcpu_isa *isa, const uint8_t *w, size_t nb1, int type, int64_t K,
                       int64_t nr, const float *x, int64_t ldx, int c, float *y, int64_t ldy,
                       float *tile, int64_t ldd, float *scr) {
    struct kcpu_mm mm = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .w = w, .nb1 = nb1,
                         .type = type, .K = K, .n = c};
    if (c <= KCPU_DECODE_MAX) {
        isa->gemv(&mm, 0, nr);
        return;
    }
    isa->dequant_rows(&mm, 0, nr, tile, ldd);
    isa->gemm_tile(&mm, tile, ldd, 0, nr, 0, c, scr);
}

static int64_t pad16(int64_t k) { return (k + 15) / 16 * 16; }

/* Phase A, grouped: hc rows of expert e for its rows. */
static void phase_a_grouped(struct kcpu_ctx *c, const float *x, const struct be_lte_ffn *p,
                            const struct lte_lists *L, float *hc, int *failed) {
    const int E = p->n_experts, S = p->expert_size;
    const int64_t dim = p->gate->ne[0], ldd = pad16(dim);
    const uint8_t *gw = p->gate->be_data ? p->gate->be_data : p->gate->data;
    const uint8_t *uw = p->up->be_data ? p->up->be_data : p->up->data;
    const size_t scr_n = dim > KCPU_KBLOCK_MIN ? KCPU_SCR_FLOATS(S) : 0;
    const size_t need = (size_t)LTE_CH * (size_t)dim + 2 * (size_t)LTE_CH * S + (size_t)S * ldd + scr_n;
#pragma omp parallel num_threads(c->n_threads)
    {
        int tid = omp_get_thread_num();
        float *buf = kcpu_thread_buf(c, tid, need + 16);
        if (!buf) {
#pragma omp atomic write
            *failed = 1;
        }
        float *xg = buf, *g = buf ? xg + (size_t)LTE_CH * dim : NULL, *u = g ? g + (size_t)LTE_CH * S : NULL;
        float *tile = u ? u + (size_t)LTE_CH * S : NULL;
        float *scr = scr_n && tile ? tile + (size_t)S * ldd : NULL;
        /* tile and scr stay 64-byte aligned: every offset is a multiple of 16 floats */
#pragma omp for schedule(dynamic, 1)
        for (int e = 0; e < E; e++) {
            if (!buf)
                continue;
            for (int32_t i0 = L->off[e]; i0 < L->off[e + 1]; i0 += LTE_CH) {
                int cnt = L->off[e + 1] - i0 < LTE_CH ? L->off[e + 1] - i0 : LTE_CH;
                for (int j = 0; j < cnt; j++)
                    memcpy(xg + (size_t)j * dim, x + (size_t)L->tok[i0 + j] * dim, sizeof(float) * (size_t)dim);
                size_t roff = (size_t)e * S;
                for (int part = 0; part < 2; part++) {
                    const struct be_tensor *w = part ? p->up : p->gate;
                    const uint8_t *base = (part ? uw : gw) + roff * w->nb1;
                    float *o = part ? u : g;
                    rows_times(c->isa, base, w->nb1, w->type, dim, S, xg, dim, cnt, o, S, tile, ldd, scr);
                }
                c->isa->glu(hc + (size_t)i0 * S, g, u, (int64_t)cnt * S, p->act);
            }
        }
    }
}

/* Phase A, dense fallback: plain matmuls into scr_a (gate) and scr_b (up),
 * then act(g) * u of the active pairs, in place in scr_a, packed into hc
 * (= scr_b, read only after every pair was computed). */
static void phase_a_dense(struct kcpu_ctx *c, const float *x, int n, const struct be_lte_ffn *p,
                          const struct lte_lists *L, float *scr_a, float *scr_b) {
    const int E = p->n_experts, S = p->expert_size;
    const size_t ffn = (size_t)E * S;
    kcpu_matmul(c, scr_a, x, p->gate, n);
    kcpu_matmul(c, scr_b, x, p->up, n);
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
    for (int e = 0; e < E; e++)
        for (int32_t i = L->off[e]; i < L->off[e + 1]; i++) {
            size_t at = (size_t)L->tok[i] * ffn + (size_t)e * S;
            c->isa->glu(scr_a + at, scr_a + at, scr_b + at, S, p->act);
        }
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
    for (int e = 0; e < E; e++)
        for (int32_t i = L->off[e]; i < L->off[e + 1]; i++)
            memcpy(scr_b + (size_t)i * S, scr_a + (size_t)L->tok[i] * ffn + (size_t)e * S, sizeof(float) * (size_t)S);
}

/* Phase B: y rows [d0, d1) of every row, for one thread. */
static void phase_b_rows(struct kcpu_ctx *c, int tid, float *y, int n, const struct be_lte_ffn *p,
                         const struct lte_lists *L, const float *hc, int64_t d0, int64_t d1, int *failed) {
    const int E = p->n_experts, S = p->expert_size;
    const int64_t dim = p->gate->ne[0], ldd = pad16(S);
    const struct be_tensor *dw = p->down;
    const uint8_t *base = dw->be_data ? dw->be_data : dw->data;
    for (int t = 0; t < n; t++)
        memset(y + (size_t)t * dim + d0, 0, sizeof(float) * (size_t)(d1 - d0));
    float *buf = kcpu_thread_buf(c, tid, (size_t)LTE_DBLK * ldd + (size_t)LTE_CH * LTE_DBLK);
    if (!buf) {
#pragma omp atomic write
        *failed = 1;
        return;
    }
    float *tile = buf, *part = buf + (size_t)LTE_DBLK * ldd;
    for (int e = 0; e < E; e++)
        for (int64_t b0 = d0; b0 < d1; b0 += LTE_DBLK) {
            int64_t nr = d1 - b0 < LTE_DBLK ? d1 - b0 : LTE_DBLK;
            const uint8_t *w = base + ((size_t)e * dim + (size_t)b0) * dw->nb1;
            for (int32_t i0 = L->off[e]; i0 < L->off[e + 1]; i0 += LTE_CH) {
                int cnt = L->off[e + 1] - i0 < LTE_CH ? L->off[e + 1] - i0 : LTE_CH;
                rows_times(c->isa, w, dw->nb1, dw->type, S, nr, hc + (size_t)i0 * S, S, cnt, part, nr, tile, ldd,
                           NULL);
                for (int j = 0; j < cnt; j++) {
                    float *yr = y + (size_t)L->tok[i0 + j] * dim + b0;
                    const float *pr = part + (size_t)j * nr;
                    for (int64_t r = 0; r < nr; r++)
                        yr[r] += pr[r];
                }
            }
        }
}

void kcpu_lte_ffn(void *vctx, float *y, const float *x, const uint8_t *mask, int n,
                  const struct be_lte_ffn *p, float *scr_a, float *scr_b) {
    struct kcpu_ctx *c = vctx;
    const int64_t dim = p->gate->ne[0];
    struct lte_lists L;
    int failed = 0;
    if (n <= 0)
        return;
    if (build_lists(c, mask, n, p->n_experts, &L) < 0) {
        memset(y, 0, sizeof(float) * (size_t)n * (size_t)dim); /* no memory: zeros, never a stray read */
        return;
    }
    float *hc = scr_b;
    if (p->dense)
        phase_a_dense(c, x, n, p, &L, scr_a, scr_b);
    else
        phase_a_grouped(c, x, p, &L, hc, &failed);
#pragma omp parallel num_threads(c->n_threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t units = (dim + 15) / 16; /* split dims in multiples of 16 */
        int64_t d0 = units * tid / nt * 16, d1 = units * (tid + 1) / nt * 16;
        if (d1 > dim)
            d1 = dim;
        if (d0 < d1)
            phase_b_rows(c, tid, y, n, p, &L, hc, d0, d1, &failed);
    }
    if (failed)
        memset(y, 0, sizeof(float) * (size_t)n * (size_t)dim);
}
