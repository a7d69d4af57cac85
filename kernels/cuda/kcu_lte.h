/* kcu_lte.h - the arithmetic and index building of the CUDA LTE sparse FFN
 * (backend.h lte_ffn; kernels kcu_lte.cu, entry kcu_lte_ffn in be_cuda.c),
 * shared by host and device like kcu_math.h, whose conventions it follows
 * (KCU_FN, kcu_mul/kcu_add rounding as the CPU's non-contracted steps).
 * tests/unit/test_cuda_lte.c runs these functions on the CPU, walking the
 * kernels' loops, against the CPU backend's lte_ffn.
 *
 * The host builds the grouping from the engine's host mask[n][E] (the mask
 * already lives there: the engine computes it from the downloaded router
 * logits) and uploads it in one copy:
 *
 *   off[e]        exclusive prefix sum of the per-expert row counts
 *                 (off[E] = P, the number of active (row, expert) pairs);
 *                 host only
 *   tok[P]        pair i = off[e] + k is the k-th row (increasing) that
 *                 chose expert e: the CSR of the mask by expert
 *   items[]       phase A work: {e, i0, cnt}, pairs [i0, i0+cnt) of expert
 *                 e, cnt <= KCU_LTE_ROWS: one thread block each
 *   rowoff[n+1]   row t's entries are ents[rowoff[t] .. rowoff[t+1])
 *   ents[P]       {e, h} in increasing e: h indexes the S-vector of h values
 *                 of the pair: grouped h = i (its CSR pair, in scr_b),
 *                 dense h = t*E + e (the row's full FFN vector, in scr_a)
 *
 *   mask  t0: 1 0 1      off  = 0 2 3 5 (P = 5)
 *         t1: 1 1 1      tok  = t0 t1 | t1 | t0 t1
 *                        ents = t0: {0,0} {2,3}   t1: {0,1} {1,2} {2,4}
 *
 * Phase A (grouped, kcu_lte_gate_up_kernel): per item, warp w of the block
 * takes neurons j = w, w + warps, ... of expert e; lane l sums the products
 * of elements k = l, l+32, l+64, ... of gate row e*S+j (and of up row
 * e*S+j) with x[tok[i]] for each of the item's rows, in increasing k
 * (kcu_lte_lane_dots); the 32 lane sums meet in a fixed xor butterfly
 * (kcu_lte_butterfly: v += v[lane ^ m], m = 16, 8, 4, 2, 1); lane 0 writes
 * h[i][j] = act(g) * u (kcu_glu). Nothing there depends on which item or
 * which place in it a row has: g and u of a row are a function of x[t] and
 * the weight rows alone.
 * Phase B (kcu_lte_down_kernel): one thread per (tile of KCU_LTE_DROWS rows,
 * output d), kcu_lte_down_tile: for each row t of the tile, y = +0; for
 * each entry of t in increasing e: y += dot(down_x row e*dim+d, h of the
 * entry) (K = S, increasing j); the tile's rows share the reads of a down_x
 * row, never an addition.
 *
 * Weights are the device copies of weight_prepare: rows of K elements of
 * kcu_gemm_type(type) (F32, F16 or BF16), read one element at a time
 * (kcu_lte_w) and multiplied in fp32 with the fp32 activations.
 *
 * Thread: pure functions, any host or device thread.
 */
#ifndef SS_KCU_LTE_H
#define SS_KCU_LTE_H

#include <stdint.h>
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#include "kernels/cuda/kcu_math.h"

#if defined(__CUDA_ARCH__) /* the device pass only: the host compiler knows no such pragma */
#define KCU_UNROLL _Pragma("unroll")
#else
#define KCU_UNROLL
#endif

#define KCU_LTE_ROWS 8      /* rows of an expert per phase A block */
#define KCU_LTE_LANES 32    /* lanes per dot product (one warp) */
#define KCU_LTE_DROWS 4     /* rows per phase B tile (8 spilled registers on sm_80/90) */
#define KCU_LTE_THREADS 256 /* threads per block of both LTE kernels */

/* Phase A work item: pairs [i0, i0 + cnt) of expert e's CSR. */
struct kcu_lte_item {
    int32_t e, i0, cnt;
};
/* Phase B entry of a row: expert e, its h vector at h * S. */
struct kcu_lte_ent {
    int32_t e, h;
};

/* off[0..E]: exclusive prefix sum of the experts' row counts over mask[n][E]
 * (off[E] = pairs P). Returns the number of phase A items
 * (sum over e of ceil(count_e / KCU_LTE_ROWS)). */
KCU_FN int64_t kcu_lte_offsets(const uint8_t *mask, int n, int E, int32_t *off) {
    int64_t items = 0;
    off[0] = 0;
    for (int e = 0; e < E; e++) {
        int32_t c = 0;
        for (int t = 0; t < n; t++)
            c += mask[(size_t)t * (size_t)E + (size_t)e] != 0;
        off[e + 1] = off[e] + c;
        items += (c + KCU_LTE_ROWS - 1) / KCU_LTE_ROWS;
    }
    return items;
}

/* The rest of the grouping, from off (kcu_lte_offsets): tok[P], items[],
 * rowoff[n+1], ents[P]; dense selects the h numbering (see the top). cur: E
 * ints of scratch. */
KCU_FN void kcu_lte_fill(const uint8_t *mask, int n, int E, int dense, const int32_t *off, int32_t *cur,
                         int32_t *tok, struct kcu_lte_item *items, int32_t *rowoff,
                         struct kcu_lte_ent *ents) {
    for (int e = 0; e < E; e++)
        cur[e] = off[e];
    int32_t k = 0;
    for (int t = 0; t < n; t++) {
        rowoff[t] = k;
        for (int e = 0; e < E; e++) {
            if (!mask[(size_t)t * (size_t)E + (size_t)e])
                continue;
            const int32_t i = cur[e]++;
            tok[i] = t;
            ents[k].e = e;
            ents[k].h = dense ? t * E + e : i;
            k++;
        }
    }
    rowoff[n] = k;
    int64_t j = 0;
    for (int e = 0; e < E; e++)
        for (int32_t i0 = off[e]; i0 < off[e + 1]; i0 += KCU_LTE_ROWS, j++) {
            items[j].e = e;
            items[j].i0 = i0;
            items[j].cnt = off[e + 1] - i0 < KCU_LTE_ROWS ? off[e + 1] - i0 : KCU_LTE_ROWS;
        }
}

/* Element i of a device weight copy stored as gt (F32, F16 or BF16). The
 * device converts a half with the hardware instruction: exact, as
 * kcu_f16_to_f32 (finite values and infinities bitwise the same). */
KCU_FN float kcu_lte_w(const void *w, int gt, size_t i) {
    if (gt == BE_F32)
        return ((const float *)w)[i];
    const uint16_t h = ((const uint16_t *)w)[i];
    if (gt == BE_BF16)
        return kcu_bf16_to_f32(h);
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    return kcu_f16_to_f32(h);
#endif
}

/* Lane `lane`'s partial sums of gate row wg (type gtg) and up row wu (gtu),
 * K elements each, times the cnt (<= KCU_LTE_ROWS) rows x[rows[r]] (rows of
 * K floats): g[r], u[r] = sum over k = lane, lane + 32, ... in increasing k
 * of w[k] * x[k], from +0. Entries r >= cnt are left as they are. */
KCU_FN void kcu_lte_lane_dots(const void *wg, int gtg, const void *wu, int gtu, int64_t K, const float *x,
                              const int32_t *rows, int cnt, int lane, float *g, float *u) {
    KCU_UNROLL
    for (int r = 0; r < KCU_LTE_ROWS; r++)
        if (r < cnt)
            g[r] = u[r] = 0.0f;
    for (int64_t k = lane; k < K; k += KCU_LTE_LANES) {
        const float a = kcu_lte_w(wg, gtg, (size_t)k), b = kcu_lte_w(wu, gtu, (size_t)k);
        KCU_UNROLL
        for (int r = 0; r < KCU_LTE_ROWS; r++)
            if (r < cnt) {
                const float xv = x[(size_t)rows[r] * (size_t)K + (size_t)k];
                g[r] = kcu_add(g[r], kcu_mul(a, xv));
                u[r] = kcu_add(u[r], kcu_mul(b, xv));
            }
    }
}

/* The device's warp reduction of 32 lane values, written out for the host:
 * at each step m = 16, 8, 4, 2, 1 every lane l takes v[l] + v[l ^ m] (the
 * device: v = kcu_add(v, __shfl_xor_sync(~0u, v, m))). Every lane ends with
 * the same value, returned. v is overwritten. */
KCU_FN float kcu_lte_butterfly(float *v) {
    float t[KCU_LTE_LANES];
    for (int m = KCU_LTE_LANES / 2; m > 0; m >>= 1) {
        for (int l = 0; l < KCU_LTE_LANES; l++)
            t[l] = kcu_add(v[l], v[l ^ m]);
        for (int l = 0; l < KCU_LTE_LANES; l++)
            v[l] = t[l];
    }
    return v[0];
}

/* Phase B for one output d of the rows [t0, t0 + nr) (nr <= KCU_LTE_DROWS),
 * as one device thread runs it (kcu_lte_down_kernel; the host emulation
 * calls it for every (row tile, d)): the rows' entry lists are merged in
 * increasing expert order, so expert e's down_x row e*dim+d (type gt, S
 * elements) is read once for all the tile's rows that chose e. For each row:
 *   y = +0; per entry in increasing e: y += p, p = sum over j in increasing
 *   j of w[j] * h[j] from +0
 * the same arithmetic a row gets alone (a tile only shares the reads). */
KCU_FN void kcu_lte_down_tile(float *y, const float *h, const void *down, int gt, int64_t dim, int S,
                              const int32_t *rowoff, const struct kcu_lte_ent *ents, int t0, int nr,
                              int64_t d) {
    const size_t es = gt == BE_F32 ? 4 : 2;
    uint32_t k[KCU_LTE_DROWS], end[KCU_LTE_DROWS]; /* cursors into ents (offsets are >= 0) */
    float acc[KCU_LTE_DROWS];
    KCU_UNROLL
    for (int r = 0; r < KCU_LTE_DROWS; r++) { /* rows past nr: empty lists */
        k[r] = r < nr ? (uint32_t)rowoff[t0 + r] : 0;
        end[r] = r < nr ? (uint32_t)rowoff[t0 + r + 1] : 0;
        acc[r] = 0.0f;
    }
    for (;;) {
        int32_t e = -1; /* the smallest next expert of the tile's rows */
        KCU_UNROLL
        for (int r = 0; r < KCU_LTE_DROWS; r++)
            if (k[r] < end[r] && (e < 0 || ents[k[r]].e < e))
                e = ents[k[r]].e;
        if (e < 0)
            break;
        const uint8_t *w = (const uint8_t *)down + ((size_t)e * (size_t)dim + (size_t)d) * (size_t)S * es;
        int32_t hi[KCU_LTE_DROWS]; /* the row's h vector, -1: e is not one of its experts */
        float part[KCU_LTE_DROWS];
        KCU_UNROLL
        for (int r = 0; r < KCU_LTE_DROWS; r++) {
            hi[r] = k[r] < end[r] && ents[k[r]].e == e ? ents[k[r]].h : -1;
            part[r] = 0.0f;
        }
        for (int j = 0; j < S; j++) {
            const float wj = kcu_lte_w(w, gt, (size_t)j);
            KCU_UNROLL
            for (int r = 0; r < KCU_LTE_DROWS; r++)
                if (hi[r] >= 0)
                    part[r] = kcu_add(part[r], kcu_mul(wj, h[(size_t)hi[r] * (size_t)S + (size_t)j]));
        }
        KCU_UNROLL
        for (int r = 0; r < KCU_LTE_DROWS; r++)
            if (hi[r] >= 0) {
                acc[r] = kcu_add(acc[r], part[r]);
                k[r]++;
            }
    }
    KCU_UNROLL
    for (int r = 0; r < KCU_LTE_DROWS; r++)
        if (r < nr)
            y[(size_t)(t0 + r) * (size_t)dim + (size_t)d] = acc[r];
}

#endif
