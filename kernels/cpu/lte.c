/* lte.c - the CPU LTE sparse FFN (backend.h: lte_ffn).
 *
 *   lists    host CSR of the mask: for each expert e, the rows that chose it
 *            (increasing row order); hc row off[e] + i holds h of the i-th of
 *            them, S floats; plus the list of active experts (with rows).
 *   phase A  h of every (row, active expert) pair into hc:
 *              grouped: per active expert, its rows gathered in chunks of
 *                LTE_CH (a single row is read in place), S gate rows and S up
 *                rows times the chunk (gemv for <= KCPU_DECODE_MAX rows, else
 *                one dequantised tile reused over the chunk), act(g) * u.
 *                Decode-sized steps give each thread one contiguous run of
 *                active experts, larger ones balance them dynamically;
 *              dense: gate and up as two plain matmuls over all rows, then
 *                act(g) * u of the active pairs packed into hc.
 *   phase B  each thread owns a range of output dims d; for each active expert
 *            in increasing order and each chunk of its rows, the partial
 *            down_e[d0..d1) . hc rows, added into y: chunks of <= KCPU_DECODE_MAX
 *            rows by gemv's add mode (kcpu_mm.yadd) over the whole range,
 *            larger ones by tiles of LTE_DBLK dims and a partials buffer.
 * Only the bytes of active experts are read in the grouped path (gate/up
 * rows of the expert, its expert-major down block), and the decode path's
 * prefetch (kcpu_mm.pf_lim / pf_next) follows them: it runs from the rows
 * being read into the next ones this thread reads (gate of e -> up of e ->
 * gate of the next expert; down of e -> down of the next expert) instead of
 * into the bytes of inactive experts that follow in memory.
 *
 * Determinism (backend.h): every g, u and partial is computed by the ISA's
 * gemv (store or add mode) or gemm_tile, which give the same value for a
 * (weight row, input row) pair (kcpu.h contract); y[t][d] is +0 plus the
 * partials of t's experts in increasing e, added by the one thread owning d.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"

#define LTE_CH 64      /* rows per chunk (gathered inputs, partial outputs) */
#define LTE_DBLK 128   /* output dims per down tile */

struct lte_lists {
    int32_t *off;  /* [E + 1] */
    int32_t *act;  /* [n_act] experts with rows, increasing */
    int32_t *tok;  /* [sum of counts] rows, grouped by expert */
    int n_act;
};

/* CSR of the mask into ctx->lte_idx (grown on demand). Returns 0 or -1. */
static int build_lists(struct kcpu_ctx *c, const uint8_t *mask, int n, int E, struct lte_lists *L) {
    size_t need = 2 * (size_t)E + 1 + (size_t)n * (size_t)E;
    if (c->lte_idx_len < need) {
        int32_t *p = realloc(c->lte_idx, need * sizeof *p);
        if (!p)
            return -1;
        c->lte_idx = p;
        c->lte_idx_len = need;
    }
    L->off = c->lte_idx;
    L->act = c->lte_idx + E + 1;
    L->tok = L->act + E;
    memset(L->off, 0, ((size_t)E + 1) * sizeof *L->off);
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++)
            L->off[e + 1] += mask[(size_t)t * E + e] != 0;
    L->n_act = 0;
    for (int e = 0; e < E; e++) {
        if (L->off[e + 1])
            L->act[L->n_act++] = e;
        L->off[e + 1] += L->off[e];
    }
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
 * (ldd >= K, multiple of 16), scr: NULL or KCPU_SCR_FLOATS(nr) floats.
 * Decode path prefetch (kcpu_mm): pf_next NULL or the rows (same nb1) read
 * next, warm 1 if a previous call's pf_next were these rows. */
static void rows_times(const struct kcpu_isa *isa, const uint8_t *w, size_t nb1, int type, int64_t K,
                       int64_t nr, const float *x, int64_t ldx, int c, float *y, int64_t ldy,
                       float *tile, int64_t ldd, float *scr, const uint8_t *pf_next, int warm) {
    struct kcpu_mm mm = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .w = w, .nb1 = nb1, .type = type, .K = K,
                         .n = c, .pf_lim = w + (size_t)nr * nb1, .pf_next = pf_next, .pf_warm = warm};
    if (c <= KCPU_DECODE_MAX) {
        isa->gemv_lte(&mm, 0, nr);
        return;
    }
    isa->dequant_rows(&mm, 0, nr, tile, ldd);
    isa->gemm_tile(&mm, tile, ldd, 0, nr, 0, c, scr);
}

static int64_t pad16(int64_t k) { return (k + 15) / 16 * 16; }

/* Per-thread buffers of phase A: gathered inputs, g, u, tile, scratch. */
struct a_bufs {
    float *xg, *g, *u, *tile, *scr;
};

/* Phase A of expert e: hc rows of its rows. en: the expert this thread runs
 * next (-1: unknown or none), where the prefetch continues; warm: this
 * thread ran the expert before e just before (its prefetch reached e). */
static void a_expert(struct kcpu_ctx *c, const float *x, const struct be_lte_ffn *p, const struct lte_lists *L,
                     float *hc, const struct a_bufs *b, int e, int en, int warm) {
    const int S = p->expert_size;
    const int64_t dim = p->gate->ne[0], ldd = pad16(dim);
    const struct be_tensor *gt = p->gate, *ut = p->up;
    const uint8_t *gw = gt->be_data ? gt->be_data : gt->data, *uw = ut->be_data ? ut->be_data : ut->data;
    const uint8_t *g0 = gw + (size_t)e * S * gt->nb1, *u0 = uw + (size_t)e * S * ut->nb1;
    const uint8_t *gn = en >= 0 ? gw + (size_t)en * S * gt->nb1 : NULL;
    const int same = gt->nb1 == ut->nb1; /* the prefetch runs on: gate of e, up of e, gate of en */
    for (int32_t i0 = L->off[e]; i0 < L->off[e + 1]; i0 += LTE_CH) {
        int cnt = L->off[e + 1] - i0 < LTE_CH ? L->off[e + 1] - i0 : LTE_CH;
        const float *xs = x + (size_t)L->tok[i0] * dim; /* one row: read in place */
        if (cnt > 1) {
            for (int j = 0; j < cnt; j++)
                memcpy(b->xg + (size_t)j * dim, x + (size_t)L->tok[i0 + j] * dim, sizeof(float) * (size_t)dim);
            xs = b->xg;
        }
        int last = i0 + LTE_CH >= L->off[e + 1];
        rows_times(c->isa, g0, gt->nb1, gt->type, dim, S, xs, dim, cnt, b->g, S, b->tile, ldd, b->scr,
                   same ? u0 : NULL, warm && i0 == L->off[e]);
        rows_times(c->isa, u0, ut->nb1, ut->type, dim, S, xs, dim, cnt, b->u, S, b->tile, ldd, b->scr,
                   same && last ? gn : NULL, same);
        c->isa->glu(hc + (size_t)i0 * S, b->g, b->u, (int64_t)cnt * S, p->act);
    }
}

/* One call's state, shared by the threads of each phase. */
struct lte_job {
    struct kcpu_ctx *c;
    const float *x;
    float *y;
    int n;
    const struct be_lte_ffn *p;
    const struct lte_lists *L;
    float *hc, *scr_a, *scr_b;
    atomic_int failed; /* a thread had no scratch: the output is zeros */
    atomic_int next;   /* dynamically balanced loops: the next index nobody took */
};

/* Phase A, grouped: hc rows of every active expert. Decode-sized steps
 * (n <= KCPU_DECODE_MAX: about the same work per expert) split the active
 * experts into one contiguous run per thread, so each thread's prefetch runs
 * on from one expert into its next; larger steps balance them dynamically
 * (an expert's values do not depend on the thread that computes them). */
static void phase_a_grouped(void *arg, int tid, int nt) {
    struct lte_job *J = arg;
    struct kcpu_ctx *c = J->c;
    const struct be_lte_ffn *p = J->p;
    const struct lte_lists *L = J->L;
    const int S = p->expert_size, na = L->n_act, same = p->gate->nb1 == p->up->nb1;
    const int64_t dim = p->gate->ne[0], ldd = pad16(dim);
    const size_t scr_n = dim > KCPU_KBLOCK_MIN ? KCPU_SCR_FLOATS(S) : 0;
    const size_t need = (size_t)LTE_CH * (size_t)dim + 2 * (size_t)LTE_CH * S + (size_t)S * ldd + scr_n;
    float *buf = kcpu_thread_buf(c, tid, need + 16);
    if (!buf) {
        atomic_store_explicit(&J->failed, 1, memory_order_relaxed);
        return;
    }
    /* tile and scr stay 64-byte aligned: every offset is a multiple of 16 floats */
    struct a_bufs b;
    b.xg = buf, b.g = b.xg + (size_t)LTE_CH * dim, b.u = b.g + (size_t)LTE_CH * S;
    b.tile = b.u + (size_t)LTE_CH * S, b.scr = scr_n ? b.tile + (size_t)S * ldd : NULL;
    if (J->n <= KCPU_DECODE_MAX) {
        int k0 = (int)((int64_t)na * tid / nt), k1 = (int)((int64_t)na * (tid + 1) / nt);
        for (int k = k0; k < k1; k++)
            a_expert(c, J->x, p, L, J->hc, &b, L->act[k], k + 1 < k1 ? L->act[k + 1] : -1, k > k0 && same);
    } else {
        for (int k; (k = atomic_fetch_add_explicit(&J->next, 1, memory_order_relaxed)) < na;)
            a_expert(c, J->x, p, L, J->hc, &b, L->act[k], -1, 0);
    }
}

/* Phase A, dense fallback: plain matmuls into scr_a (gate) and scr_b (up),
 * then act(g) * u of the active pairs, in place in scr_a (dense_glu), packed
 * into hc (= scr_b, read only after every pair was computed: dense_pack). */
static void dense_glu(void *arg, int tid, int nt) {
    (void)tid, (void)nt;
    struct lte_job *J = arg;
    const struct lte_lists *L = J->L;
    const int E = J->p->n_experts, S = J->p->expert_size;
    const size_t ffn = (size_t)E * S;
    for (int e; (e = atomic_fetch_add_explicit(&J->next, 1, memory_order_relaxed)) < E;)
        for (int32_t i = L->off[e]; i < L->off[e + 1]; i++) {
            size_t at = (size_t)L->tok[i] * ffn + (size_t)e * S;
            J->c->isa->glu(J->scr_a + at, J->scr_a + at, J->scr_b + at, S, J->p->act);
        }
}

static void dense_pack(void *arg, int64_t e0, int64_t e1) {
    struct lte_job *J = arg;
    const struct lte_lists *L = J->L;
    const int E = J->p->n_experts, S = J->p->expert_size;
    const size_t ffn = (size_t)E * S;
    for (int64_t e = e0; e < e1; e++)
        for (int32_t i = L->off[e]; i < L->off[e + 1]; i++)
            memcpy(J->scr_b + (size_t)i * S, J->scr_a + (size_t)L->tok[i] * ffn + (size_t)e * S,
                   sizeof(float) * (size_t)S);
}

static void phase_a_dense(struct lte_job *J) {
    struct kcpu_ctx *c = J->c;
    kcpu_matmul(c, J->scr_a, J->x, J->p->gate, J->n);
    kcpu_matmul(c, J->scr_b, J->x, J->p->up, J->n);
    atomic_store_explicit(&J->next, 0, memory_order_relaxed);
    kcpu_pool_run(c->pool, c->n_threads, dense_glu, J);
    kcpu_pool_for(c->pool, c->n_threads, J->p->n_experts, 1, dense_pack, J);
}

/* Phase B: y rows [d0, d1) of every row, for one thread. */
static void phase_b_rows(struct kcpu_ctx *c, int tid, float *y, int n, const struct be_lte_ffn *p,
                         const struct lte_lists *L, const float *hc, int64_t d0, int64_t d1, atomic_int *failed) {
    const int S = p->expert_size;
    const int64_t dim = p->gate->ne[0], ldd = pad16(S);
    const struct be_tensor *dw = p->down;
    const uint8_t *base = dw->be_data ? dw->be_data : dw->data;
    for (int t = 0; t < n; t++)
        memset(y + (size_t)t * dim + d0, 0, sizeof(float) * (size_t)(d1 - d0));
    float *buf = kcpu_thread_buf(c, tid, (size_t)LTE_DBLK * ldd + (size_t)LTE_CH * LTE_DBLK);
    if (!buf) {
        atomic_store_explicit(failed, 1, memory_order_relaxed);
        return;
    }
    float *tile = buf, *part = buf + (size_t)LTE_DBLK * ldd;
    int warm = 0; /* the previous gemv's prefetch ran on into these rows */
    for (int k = 0; k < L->n_act; k++) {
        const int e = L->act[k], en = k + 1 < L->n_act ? L->act[k + 1] : -1;
        const uint8_t *we = base + (size_t)e * (size_t)dim * dw->nb1; /* expert e, row 0 */
        for (int32_t i0 = L->off[e]; i0 < L->off[e + 1]; i0 += LTE_CH) {
            int cnt = L->off[e + 1] - i0 < LTE_CH ? L->off[e + 1] - i0 : LTE_CH, last = i0 + LTE_CH >= L->off[e + 1];
            if (cnt <= KCPU_DECODE_MAX) { /* gemv adding straight into y: no partials buffer */
                float *yr[KCPU_DECODE_MAX];
                for (int j = 0; j < cnt; j++)
                    yr[j] = y + (size_t)L->tok[i0 + j] * dim;
                const uint8_t *wn = last && en >= 0 ? base + ((size_t)en * (size_t)dim + (size_t)d0) * dw->nb1 : NULL;
                struct kcpu_mm mm = {.x = hc + (size_t)i0 * S, .ldx = S, .w = we, .nb1 = dw->nb1, .type = dw->type,
                                     .K = S, .n = cnt, .yadd = yr, .pf_lim = we + (size_t)d1 * dw->nb1,
                                     .pf_next = wn, .pf_warm = warm};
                c->isa->gemv_lte(&mm, d0, d1);
                warm = wn != NULL;
                continue;
            }
            for (int64_t b0 = d0; b0 < d1; b0 += LTE_DBLK) {
                int64_t nr = d1 - b0 < LTE_DBLK ? d1 - b0 : LTE_DBLK;
                rows_times(c->isa, we + (size_t)b0 * dw->nb1, dw->nb1, dw->type, S, nr, hc + (size_t)i0 * S, S, cnt,
                           part, nr, tile, ldd, NULL, NULL, 0);
                for (int j = 0; j < cnt; j++) {
                    float *yr = y + (size_t)L->tok[i0 + j] * dim + b0;
                    const float *pr = part + (size_t)j * nr;
                    for (int64_t r = 0; r < nr; r++)
                        yr[r] += pr[r];
                }
            }
            warm = 0;
        }
    }
}

/* Phase B on thread tid: its dims, split in multiples of 16. */
static void phase_b(void *arg, int tid, int nt) {
    struct lte_job *J = arg;
    int64_t d0, d1;
    kcpu_pool_piece(J->p->gate->ne[0], 16, tid, nt, &d0, &d1);
    if (d0 < d1)
        phase_b_rows(J->c, tid, J->y, J->n, J->p, J->L, J->hc, d0, d1, &J->failed);
}

void kcpu_lte_ffn(void *vctx, float *y, const float *x, const uint8_t *mask, int n,
                  const struct be_lte_ffn *p, float *scr_a, float *scr_b) {
    struct kcpu_ctx *c = vctx;
    const int64_t dim = p->gate->ne[0];
    struct lte_lists L;
    if (n <= 0)
        return;
    if (build_lists(c, mask, n, p->n_experts, &L) < 0) {
        memset(y, 0, sizeof(float) * (size_t)n * (size_t)dim); /* no memory: zeros, never a stray read */
        return;
    }
    struct lte_job J = {.c = c, .x = x, .y = y, .n = n, .p = p, .L = &L, .hc = scr_b, .scr_a = scr_a, .scr_b = scr_b};
    atomic_init(&J.failed, 0);
    atomic_init(&J.next, 0);
    if (p->dense)
        phase_a_dense(&J);
    else
        kcpu_pool_run(c->pool, c->n_threads, phase_a_grouped, &J);
    kcpu_pool_run(c->pool, c->n_threads, phase_b, &J);
    if (atomic_load_explicit(&J.failed, memory_order_relaxed))
        memset(y, 0, sizeof(float) * (size_t)n * (size_t)dim);
}
