/* matmul_avx512.c - AVX-512 kernels (compiled with -mavx512f -mavx512bw
 * -mavx512vl -mavx512dq -mfma -mf16c -ffp-contract=off; only called after
 * kcpu_isa_best() checked the CPU). V = 16 lanes.
 *
 * Determinism: see kcpu.h. Every path below accumulates one (row, token) pair
 * in one __m512 with fmadd over chunks of 16 elements in increasing k, and
 * reduces it with hsum16() (or hsum16x4(), the same tree four at a time).
 * Weights are produced by the grp_* inline dequantisers, shared by the fused
 * decode (gemv) and the tile dequantiser (dequant_rows).
 *
 *   decode:  gv_T      4 (or 2) rows x up to 4 tokens, weights dequantised in
 *                      registers, next row group prefetched into L2
 *   prefill: dq_T      rows -> fp32 tile;  mk / mkb  4 rows x 6 tokens
 *                      register tile over the whole K (or K-blocks of KCPU_KC
 *                      with accumulators parked in scratch)
 *   attention: sc_tile / acc_tile   up to 4 heads x 4 keys score tiles and
 *                      4 heads x 64 dims accumulation tiles
 */
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/dq_avx512.h"

#define MR 4 /* tile micro-kernel: rows */
#define NR 6 /* tile micro-kernel: tokens */
/* Decode prefetch: while a group of rows is streamed, the same bytes of the
 * next group (one group ahead, into L2) are prefetched. Quantised rows cost
 * many instructions per byte, so out-of-order execution alone keeps too few
 * cache misses in flight to reach memory bandwidth. */
#define ESZ_f32 4
#define ESZ_f16 2
#define ESZ_bf16 2

/* End of a gv_T call: the RG x NT dot products of rows r.. and tokens t0..,
 * stored into y, or added into yadd rows (kcpu_mm) with hsum16x4 (same bits
 * as hsum16, fewer instructions: LTE's down product has one block per row). */
AI void gv_out(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, vf acc[4][KCPU_DECODE_MAX],
               int LTE) {
    if (!LTE || !mm->yadd) {
        for (int i = 0; i < RG; i++)
            for (int j = 0; j < NT; j++)
                mm->y[(size_t)(t0 + j) * mm->ldy + r + i] = hsum16(acc[i][j]);
    } else if (RG == 4) {
        for (int j = 0; j < NT; j++) {
            float *p = mm->yadd[t0 + j] + r;
            _mm_storeu_ps(p, _mm_add_ps(_mm_loadu_ps(p), hsum16x4(acc[0][j], acc[1][j], acc[2][j], acc[3][j])));
        }
    } else {
        for (int i = 0; i < RG; i++)
            for (int j = 0; j < NT; j++)
                mm->yadd[t0 + j][r + i] += hsum16(acc[i][j]);
    }
}

/* Where a gv_T call on rows r.. prefetches: the row group pf bytes ahead, or
 * its continuation past mm->pf_lim at mm->pf_next, or else the rows being
 * read (already in L1: the loops keep one unconditional prefetch). */
AI const uint8_t *gv_pf(const struct kcpu_mm *mm, int64_t r, int RG, size_t pf, int LTE) {
    const uint8_t *w = mm->w + (size_t)r * mm->nb1, *p = w + pf;
    if (!LTE || !mm->pf_lim || p + (size_t)RG * mm->nb1 <= mm->pf_lim)
        return p;
    return p >= mm->pf_lim && mm->pf_next ? mm->pf_next + (p - mm->pf_lim) : w;
}

/* ---------------------------------------------------------------- decode (fused) */

/* DQ_ROW_GROUPS' EMIT for the fp32 tile: the chunks stored at d + k */
#define DQ_STORE_F32(k, w)                                                                  \
    for (int c = 0; c < (int)(sizeof w / sizeof w[0]); c++)                                 \
        _mm512_storeu_ps(d + (k) + c * V, w[c]);

#define DEF_BLOCKED(T, BS, SZ)                                                              \
    AI void gv_##T(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, int LTE) { \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm512_setzero_ps();                                            \
        const int64_t nb = mm->K / (BS);                                                    \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const float *xr = mm->x + (size_t)t0 * mm->ldx;                                     \
        const size_t pf = kcpu_pf_dist((size_t)RG * mm->nb1);                              \
        const uint8_t *pfp = gv_pf(mm, r, RG, pf, LTE);                                    \
        for (int64_t ib = 0; ib < nb; ib++) {                                               \
            st_##T st[4];                                                                   \
            for (int i = 0; i < RG; i++) {                                                  \
                const size_t bo = (size_t)i * mm->nb1 + (size_t)ib * (SZ);                  \
                const uint8_t *bp = wr + bo;                                                \
                for (int o = 0; o < (SZ); o += 64) /* same block, next row group */         \
                    _mm_prefetch((LTE ? (const char *)pfp + bo : (const char *)bp + pf) + o, _MM_HINT_T1); \
                prep_##T(&st[i], bp);                                                       \
            }                                                                               \
            for (int g = 0; g < (BS) / (V * GC_##T); g++) {                                 \
                const float *xg = xr + ib * (BS) + g * (V * GC_##T);                        \
                for (int i = 0; i < RG; i++) {                                              \
                    vf w[GC_##T];                                                           \
                    grp_##T(&st[i], g, w);                                                  \
                    for (int c = 0; c < GC_##T; c++)                                        \
                        for (int j = 0; j < NT; j++)                                        \
                            acc[i][j] = _mm512_fmadd_ps(                                    \
                                w[c], _mm512_loadu_ps(xg + j * mm->ldx + c * V), acc[i][j]); \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        gv_out(mm, r, t0, RG, NT, acc, LTE);                                                \
    }                                                                                       \
    /* 16 rows of one block each (K == BS), tokens t0..t0+NT, added into yadd: the        \
     * same per-row operations as gv_T (so the same bits), 16 rows per y access. */       \
    AI void gv16_##T(const struct kcpu_mm *mm, int64_t r, int t0, int NT, const uint8_t *pfp) { \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const float *xr = mm->x + (size_t)t0 * mm->ldx;                                     \
        for (size_t o = 0; o < 16 * mm->nb1; o += 64)                                       \
            _mm_prefetch((const char *)pfp + o, _MM_HINT_T1);                               \
        __m128 res[KCPU_DECODE_MAX][4];                                                     \
        for (int q = 0; q < 4; q++) {                                                       \
            vf acc[4][KCPU_DECODE_MAX];                                                     \
            st_##T st[4];                                                                   \
            for (int i = 0; i < 4; i++) {                                                   \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm512_setzero_ps();                                        \
                prep_##T(&st[i], wr + (size_t)(4 * q + i) * mm->nb1);                       \
            }                                                                               \
            for (int g = 0; g < (BS) / (V * GC_##T); g++)                                   \
                for (int i = 0; i < 4; i++) {                                               \
                    vf w[GC_##T];                                                           \
                    grp_##T(&st[i], g, w);                                                  \
                    for (int c = 0; c < GC_##T; c++)                                        \
                        for (int j = 0; j < NT; j++)                                        \
                            acc[i][j] = _mm512_fmadd_ps(                                    \
                                w[c], _mm512_loadu_ps(xr + j * mm->ldx + (g * GC_##T + c) * V), acc[i][j]); \
                }                                                                           \
            for (int j = 0; j < NT; j++)                                                    \
                res[j][q] = hsum16x4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);           \
        }                                                                                   \
        for (int j = 0; j < NT; j++) {                                                      \
            vf s = _mm512_castps128_ps512(res[j][0]);                                       \
            s = _mm512_insertf32x4(s, res[j][1], 1);                                        \
            s = _mm512_insertf32x4(s, res[j][2], 2);                                        \
            s = _mm512_insertf32x4(s, res[j][3], 3);                                        \
            float *p = mm->yadd[t0 + j] + r;                                                \
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), s));                      \
        }                                                                                   \
    }                                                                                       \
    static void dq_##T(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst,        \
                       int64_t ldd) {                                                       \
        for (int64_t i = 0; i < nr; i++) {                                                  \
            const uint8_t *wr = mm->w + (size_t)(r0 + i) * mm->nb1;                          \
            float *d = dst + i * ldd;                                                       \
            DQ_ROW_GROUPS(T, BS, SZ, wr, mm->K, DQ_STORE_F32)                               \
            for (int64_t k = mm->K; k < ldd; k++)                                           \
                d[k] = 0.0f;                                                                \
        }                                                                                   \
    }

#define DEF_LINEAR(T)                                                                       \
    AI void gv16_##T(const struct kcpu_mm *mm, int64_t r, int t0, int NT, const uint8_t *pfp) { \
        (void)mm, (void)r, (void)t0, (void)NT, (void)pfp; /* never called (BS 0) */         \
    }                                                                                       \
    AI void gv_##T(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, int LTE) { \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm512_setzero_ps();                                            \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const float *xr = mm->x + (size_t)t0 * mm->ldx;                                     \
        const int64_t K = mm->K;                                                            \
        int64_t k = 0;                                                                      \
        const size_t pf = kcpu_pf_dist((size_t)RG * mm->nb1), esz = ESZ_##T;               \
        const uint8_t *pfp = gv_pf(mm, r, RG, pf, LTE);                                    \
        for (; k + V <= K; k += V) {                                                        \
            vf xv[KCPU_DECODE_MAX];                                                         \
            for (int j = 0; j < NT; j++)                                                    \
                xv[j] = _mm512_loadu_ps(xr + j * mm->ldx + k);                              \
            for (int i = 0; i < RG; i++) {                                                  \
                _mm_prefetch((LTE ? (const char *)pfp + (size_t)i * mm->nb1                      \
                              : (const char *)wr + (size_t)i * mm->nb1 + pf) + (size_t)k * esz, \
                             _MM_HINT_T1);                                                  \
                vf wv = ld_##T(wr + (size_t)i * mm->nb1, k);                                \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);                      \
            }                                                                               \
        }                                                                                   \
        if (k < K) {                                                                        \
            __mmask16 m = (__mmask16)((1u << (K - k)) - 1);                                 \
            vf xv[KCPU_DECODE_MAX];                                                         \
            for (int j = 0; j < NT; j++)                                                    \
                xv[j] = _mm512_maskz_loadu_ps(m, xr + j * mm->ldx + k);                     \
            for (int i = 0; i < RG; i++) {                                                  \
                vf wv = ldm_##T(wr + (size_t)i * mm->nb1, k, m);                            \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);                      \
            }                                                                               \
        }                                                                                   \
        gv_out(mm, r, t0, RG, NT, acc, LTE);                                                \
    }                                                                                       \
    static void dq_##T(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst,        \
                       int64_t ldd) {                                                       \
        const int64_t K = mm->K;                                                            \
        for (int64_t i = 0; i < nr; i++) {                                                  \
            const uint8_t *wr = mm->w + (size_t)(r0 + i) * mm->nb1;                          \
            float *d = dst + i * ldd;                                                       \
            int64_t k = 0;                                                                  \
            for (; k + V <= K; k += V)                                                      \
                _mm512_storeu_ps(d + k, ld_##T(wr, k));                                     \
            if (k < K) {                                                                    \
                __mmask16 m = (__mmask16)((1u << (K - k)) - 1);                             \
                _mm512_mask_storeu_ps(d + k, m, ldm_##T(wr, k, m));                         \
            }                                                                               \
            for (k = K; k < ldd; k++)                                                       \
                d[k] = 0.0f;                                                                \
        }                                                                                   \
    }

DEF_BLOCKED(q8_0, 32, 34)
DEF_BLOCKED(q4_0, 32, 18)
DEF_BLOCKED(q5_0, 32, 22)
DEF_BLOCKED(q4_k, 256, 144)
DEF_BLOCKED(q5_k, 256, 176)
DEF_BLOCKED(q6_k, 256, 210)
DEF_LINEAR(f32)
DEF_LINEAR(f16)
DEF_LINEAR(bf16)

/* Row groups of 4, except 2 for 3-4 tokens where RG34 says so (Q6_K: its
 * 8-chunk groups would spill registers), leftover rows one by one. */
#define GEMV_BODY(FN, T, RG34, BS, LTE)                                                     \
    static void FN(const struct kcpu_mm *mm, int64_t r0, int64_t r1) {                      \
        if (!LTE || !mm->pf_warm)                                                           \
            kcpu_prefetch_head(mm->w + (size_t)r0 * mm->nb1, (size_t)(r1 - r0) * mm->nb1); \
        for (int t0 = 0; t0 < mm->n; t0 += KCPU_DECODE_MAX) {                               \
            int nt = mm->n - t0 < KCPU_DECODE_MAX ? mm->n - t0 : KCPU_DECODE_MAX;           \
            int64_t r = r0;                                                                 \
            if (LTE && (BS) && mm->K == (BS) && mm->yadd && nt <= 2) { /* LTE down: 1 block/row */ \
                const size_t pf16 = kcpu_pf_dist(16 * mm->nb1);                             \
                for (; r + 16 <= r1; r += 16) {                                             \
                    if (nt == 1) gv16_##T(mm, r, t0, 1, gv_pf(mm, r, 16, pf16, 1));            \
                    else gv16_##T(mm, r, t0, 2, gv_pf(mm, r, 16, pf16, 1));                    \
                }                                                                           \
            }                                                                               \
            if (nt <= 2 || RG34 == 4) {                                                     \
                for (; r + 4 <= r1; r += 4) {                                               \
                    switch (nt) {                                                           \
                    case 1: gv_##T(mm, r, t0, 4, 1, LTE); break;                                 \
                    case 2: gv_##T(mm, r, t0, 4, 2, LTE); break;                                 \
                    case 3: gv_##T(mm, r, t0, 4, 3, LTE); break;                                 \
                    default: gv_##T(mm, r, t0, 4, 4, LTE); break;                                \
                    }                                                                       \
                }                                                                           \
            } else {                                                                        \
                for (; r + 2 <= r1; r += 2) {                                               \
                    if (nt == 3) gv_##T(mm, r, t0, 2, 3, LTE);                                   \
                    else gv_##T(mm, r, t0, 2, 4, LTE);                                           \
                }                                                                           \
            }                                                                               \
            for (; r < r1; r++) {                                                           \
                switch (nt) {                                                               \
                case 1: gv_##T(mm, r, t0, 1, 1, LTE); break;                                     \
                case 2: gv_##T(mm, r, t0, 1, 2, LTE); break;                                     \
                case 3: gv_##T(mm, r, t0, 1, 3, LTE); break;                                     \
                default: gv_##T(mm, r, t0, 1, 4, LTE); break;                                    \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

/* Two copies: gemv stores and prefetches as dense layers need, gemv_lte adds
 * the kcpu_mm yadd/pf_* modes (LTE). Kept apart so the dense decode loops stay
 * free of LTE's extra state (they measured 8% slower with it). */
#define GEMV_DRIVER(T, RG34, BS) GEMV_BODY(gemv_##T, T, RG34, BS, 0) GEMV_BODY(gemv_lte_##T, T, RG34, BS, 1)

GEMV_DRIVER(q8_0, 4, 32)
GEMV_DRIVER(q4_0, 4, 32)
GEMV_DRIVER(q5_0, 4, 32)
GEMV_DRIVER(q4_k, 4, 256)
GEMV_DRIVER(q5_k, 4, 256)
GEMV_DRIVER(q6_k, 2, 256)
GEMV_DRIVER(f32, 4, 0)
GEMV_DRIVER(f16, 4, 0)
GEMV_DRIVER(bf16, 4, 0)

#define GEMV_SWITCH(FN, P)                                                               \
    static void FN(const struct kcpu_mm *mm, int64_t r0, int64_t r1) {                  \
        switch (mm->type) {                                                             \
        case BE_F32: P##_f32(mm, r0, r1); break;                                        \
        case BE_F16: P##_f16(mm, r0, r1); break;                                        \
        case BE_BF16: P##_bf16(mm, r0, r1); break;                                      \
        case BE_Q8_0: P##_q8_0(mm, r0, r1); break;                                      \
        case BE_Q4_0: P##_q4_0(mm, r0, r1); break;                                      \
        case BE_Q5_0: P##_q5_0(mm, r0, r1); break;                                      \
        case BE_Q4_K: P##_q4_k(mm, r0, r1); break;                                      \
        case BE_Q5_K: P##_q5_k(mm, r0, r1); break;                                      \
        case BE_Q6_K: P##_q6_k(mm, r0, r1); break;                                      \
        default: break;                                                                 \
        }                                                                               \
    }
GEMV_SWITCH(gemv, gemv)
GEMV_SWITCH(gemv_lte, gemv_lte)

static void dequant_rows(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst, int64_t ldd) {
    switch (mm->type) {
    case BE_F32: dq_f32(mm, r0, nr, dst, ldd); break;
    case BE_F16: dq_f16(mm, r0, nr, dst, ldd); break;
    case BE_BF16: dq_bf16(mm, r0, nr, dst, ldd); break;
    case BE_Q8_0: dq_q8_0(mm, r0, nr, dst, ldd); break;
    case BE_Q4_0: dq_q4_0(mm, r0, nr, dst, ldd); break;
    case BE_Q5_0: dq_q5_0(mm, r0, nr, dst, ldd); break;
    case BE_Q4_K: dq_q4_k(mm, r0, nr, dst, ldd); break;
    case BE_Q5_K: dq_q5_k(mm, r0, nr, dst, ldd); break;
    case BE_Q6_K: dq_q6_k(mm, r0, nr, dst, ldd); break;
    default: break;
    }
}

/* ---------------------------------------------------------------- prefill tiles */

/* y[j][i] for mr rows of wt and nt tokens of x, whole K in registers. */
AI void mk(const float *wt, int64_t ldw, const float *x, int64_t ldx, float *y, int64_t ldy,
           int64_t K, int mr, int nt) {
    vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + V <= K; k += V) {
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm512_loadu_ps(wt + i * ldw + k);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm512_loadu_ps(x + j * ldx + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm512_maskz_loadu_ps(m, wt + i * ldw + k);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm512_maskz_loadu_ps(m, x + j * ldx + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int j = 0; j < nt; j++) {
        vf z = _mm512_setzero_ps();
        __m128 r = hsum16x4(acc[0][j], mr > 1 ? acc[1][j] : z, mr > 2 ? acc[2][j] : z,
                            mr > 3 ? acc[3][j] : z);
        _mm_mask_storeu_ps(y + j * ldy, (__mmask8)((1u << mr) - 1), r);
    }
}

/* One K-block [k0, k1) of a micro-tile; accumulators come from scr (zero for
 * the first block) and go back to scr, or are reduced into y after the last
 * block. scr holds nt*MR vectors: [j][i]. */
AI void mkb(const float *wt, int64_t ldw, const float *x, int64_t ldx, float *y, int64_t ldy,
            int64_t k0, int64_t k1, int64_t K, int mr, int nt, float *scr) {
    vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nt; j++)
            acc[i][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(scr + (j * MR + i) * V);
    int64_t k = k0;
    for (; k + V <= k1; k += V) {
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm512_loadu_ps(wt + i * ldw + k);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm512_loadu_ps(x + j * ldx + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (k < k1) { /* only in the last block */
        __mmask16 m = (__mmask16)((1u << (k1 - k)) - 1);
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm512_maskz_loadu_ps(m, wt + i * ldw + k);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm512_maskz_loadu_ps(m, x + j * ldx + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (k1 < K) {
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nt; j++)
                _mm512_store_ps(scr + (j * MR + i) * V, acc[i][j]);
        return;
    }
    for (int j = 0; j < nt; j++) {
        vf z = _mm512_setzero_ps();
        __m128 r = hsum16x4(acc[0][j], mr > 1 ? acc[1][j] : z, mr > 2 ? acc[2][j] : z,
                            mr > 3 ? acc[3][j] : z);
        _mm_mask_storeu_ps(y + j * ldy, (__mmask8)((1u << mr) - 1), r);
    }
}

#define MK_CASE(a, b) \
    case (a) * 8 + (b): mk(w, ldw, xx, mm->ldx, yy, mm->ldy, mm->K, a, b); break;
#define MK_ROW(a) MK_CASE(a, 1) MK_CASE(a, 2) MK_CASE(a, 3) MK_CASE(a, 4) MK_CASE(a, 5) MK_CASE(a, 6)
#define MKB_CASE(a, b) \
    case (a) * 8 + (b): mkb(w, ldw, xx, mm->ldx, yy, mm->ldy, k0, k1, K, a, b, sc); break;
#define MKB_ROW(a) MKB_CASE(a, 1) MKB_CASE(a, 2) MKB_CASE(a, 3) MKB_CASE(a, 4) MKB_CASE(a, 5) MKB_CASE(a, 6)

/* Long rows: token blocks of KCPU_TB, K-blocks of KCPU_KC, so that a micro-
 * tile's slices of W and x stay in L1 while the accumulators wait in scr. */
static void gemm_tile_kblocked(const struct kcpu_mm *mm, const float *wt, int64_t ldw, int64_t r0,
                               int64_t nr, int t0, int t1, float *scr) {
    const int64_t K = mm->K;
    const int64_t ngr = (nr + MR - 1) / MR;
    for (int tb = t0; tb < t1; tb += KCPU_TB) {
        int te = t1 - tb < KCPU_TB ? t1 : tb + KCPU_TB;
        for (int64_t k0 = 0; k0 < K; k0 += KCPU_KC) {
            int64_t k1 = K - k0 < KCPU_KC ? K : k0 + KCPU_KC;
            for (int t = tb; t < te; t += NR) {
                int nt = te - t < NR ? te - t : NR;
                const float *xx = mm->x + (size_t)t * mm->ldx;
                for (int64_t i = 0; i < nr; i += MR) {
                    int mr = nr - i < MR ? (int)(nr - i) : MR;
                    const float *w = wt + i * ldw;
                    float *yy = mm->y + (size_t)t * mm->ldy + r0 + i;
                    /* scratch slot of micro-tile (token group, row group) */
                    float *sc = scr + (((size_t)(t - tb) / NR) * ngr + (size_t)(i / MR)) * (MR * NR * V);
                    switch (mr * 8 + nt) {
                        MKB_ROW(1) MKB_ROW(2) MKB_ROW(3) MKB_ROW(4)
                    default: break;
                    }
                }
            }
        }
    }
}

static void gemm_tile(const struct kcpu_mm *mm, const float *wt, int64_t ldw, int64_t r0,
                      int64_t nr, int t0, int t1, float *scr) {
    if (scr && mm->K > KCPU_KBLOCK_MIN) {
        gemm_tile_kblocked(mm, wt, ldw, r0, nr, t0, t1, scr);
        return;
    }
    for (int t = t0; t < t1; t += NR) {
        int nt = t1 - t < NR ? t1 - t : NR;
        const float *xx = mm->x + (size_t)t * mm->ldx;
        for (int64_t i = 0; i < nr; i += MR) {
            int mr = nr - i < MR ? (int)(nr - i) : MR;
            const float *w = wt + i * ldw;
            float *yy = mm->y + (size_t)t * mm->ldy + r0 + i;
            switch (mr * 8 + nt) {
                MK_ROW(1) MK_ROW(2) MK_ROW(3) MK_ROW(4)
            default: break;
            }
        }
    }
}

/* ---------------------------------------------------------------- attention helpers */

/* 16 elements of a cached row from element d (tail: m lanes, rest 0) */
AI vf kv_ld(const void *base, size_t off, int d, int f16) {
    return f16 ? ld_f16((const uint8_t *)((const uint16_t *)base + off), d)
               : _mm512_loadu_ps((const float *)base + off + d);
}
AI vf kv_ldm(const void *base, size_t off, int d, int f16, __mmask16 m) {
    return f16 ? ldm_f16((const uint8_t *)((const uint16_t *)base + off), d, m)
               : _mm512_maskz_loadu_ps(m, (const float *)base + off + d);
}

/* Scores of nq (<= 4) query rows against nk (<= 4) cached rows: one fma
 * chain per (row, key) over chunks of 16 (tail masked), reduced by hsum16x4
 * (== hsum16 per pair), so a score does not depend on nq, nk or neighbours. */
AI void sc_tile(const float *q, int ldq, const void *base, const size_t *o, int D, int f16, float *out,
                int ldo, int nq, int nk) {
    vf a[4][4];
    for (int r = 0; r < nq; r++)
        for (int k = 0; k < 4; k++)
            a[r][k] = _mm512_setzero_ps();
    int d = 0;
    for (; d + V <= D; d += V) {
        vf kv[4];
        for (int k = 0; k < nk; k++)
            kv[k] = kv_ld(base, o[k], d, f16);
        for (int r = 0; r < nq; r++) {
            vf qv = _mm512_loadu_ps(q + r * ldq + d);
            for (int k = 0; k < nk; k++)
                a[r][k] = _mm512_fmadd_ps(qv, kv[k], a[r][k]);
        }
    }
    if (d < D) {
        __mmask16 m = (__mmask16)((1u << (D - d)) - 1);
        vf kv[4];
        for (int k = 0; k < nk; k++)
            kv[k] = kv_ldm(base, o[k], d, f16, m);
        for (int r = 0; r < nq; r++) {
            vf qv = _mm512_maskz_loadu_ps(m, q + r * ldq + d);
            for (int k = 0; k < nk; k++)
                a[r][k] = _mm512_fmadd_ps(qv, kv[k], a[r][k]);
        }
    }
    for (int r = 0; r < nq; r++)
        _mm_mask_storeu_ps(out + r * ldo, (__mmask8)((1u << nk) - 1),
                           hsum16x4(a[r][0], a[r][1], a[r][2], a[r][3]));
}

#define SC_CASE(a, b) \
    case (a) * 8 + (b): sc_tile(q, ldq, base, offs + i, D, F16, out + i, ldo, a, b); break;
#define SC_ROW(a) SC_CASE(a, 1) SC_CASE(a, 2) SC_CASE(a, 3) SC_CASE(a, 4)
#define SC_LOOP                                                   \
    for (int i = 0; i < cnt; i += 4) {                            \
        int nk = cnt - i < 4 ? cnt - i : 4;                       \
        switch (nq * 8 + nk) {                                    \
            SC_ROW(1) SC_ROW(2) SC_ROW(3) SC_ROW(4)               \
        default: break;                                           \
        }                                                         \
    }

static void attn_scores(const float *q, int nq, int ldq, const void *base, const size_t *offs, int cnt,
                        int D, int f16, float *out, int ldo) {
    if (f16) {
#define F16 1
        SC_LOOP
#undef F16
    } else {
#define F16 0
        SC_LOOP
#undef F16
    }
}

/* o_r = o_r*corr_r + sum_i p_r[i] row_i for nq (<= 4) rows, four 16-float
 * slices at a time (each V load feeds nq fmas); one chain per (r, element). */
AI void acc_tile(float *o, int ldo, const float *corr, const float *p, int ldp, const void *base,
                 const size_t *offs, int cnt, int D, int f16, int nq) {
    int d = 0;
    for (; d + 4 * V <= D; d += 4 * V) {
        vf a[4][4];
        for (int r = 0; r < nq; r++)
            for (int c = 0; c < 4; c++)
                a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o + r * ldo + d + c * V), _mm512_set1_ps(corr[r]));
        for (int i = 0; i < cnt; i++) {
            vf v[4];
            for (int c = 0; c < 4; c++)
                v[c] = kv_ld(base, offs[i], d + c * V, f16);
            for (int r = 0; r < nq; r++) {
                vf pv = _mm512_set1_ps(p[r * ldp + i]);
                for (int c = 0; c < 4; c++)
                    a[r][c] = _mm512_fmadd_ps(pv, v[c], a[r][c]);
            }
        }
        for (int r = 0; r < nq; r++)
            for (int c = 0; c < 4; c++)
                _mm512_storeu_ps(o + r * ldo + d + c * V, a[r][c]);
    }
    for (; d < D; d += V) {
        __mmask16 m = D - d >= V ? 0xffff : (__mmask16)((1u << (D - d)) - 1);
        vf a[4];
        for (int r = 0; r < nq; r++)
            a[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + r * ldo + d), _mm512_set1_ps(corr[r]));
        for (int i = 0; i < cnt; i++) {
            vf v = kv_ldm(base, offs[i], d, f16, m);
            for (int r = 0; r < nq; r++)
                a[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r * ldp + i]), v, a[r]);
        }
        for (int r = 0; r < nq; r++)
            _mm512_mask_storeu_ps(o + r * ldo + d, m, a[r]);
    }
}

#define ACC_CASE(a) \
    case a: acc_tile(o, ldo, corr, p, ldp, base, offs, cnt, D, F16, a); break;
#define ACC_SWITCH                                              \
    switch (nq) {                                               \
        ACC_CASE(1) ACC_CASE(2) ACC_CASE(3) ACC_CASE(4)         \
    default: break;                                             \
    }

static void attn_accum(float *o, int nq, int ldo, const float *corr, const float *p, int ldp,
                       const void *base, const size_t *offs, int cnt, int D, int f16) {
    if (f16) {
#define F16 1
        ACC_SWITCH
#undef F16
    } else {
#define F16 0
        ACC_SWITCH
#undef F16
    }
}

/* ---------------------------------------------------------------- activations */

/* e^x, |rel err| < 2e-7 on [-87, 88]; inputs clamped to that range. */
AI vf v_exp(vf x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    vf p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

AI vf v_act(vf g, int act) {
    const vf one = _mm512_set1_ps(1.0f);
    if (act == 0) /* silu: g / (1 + e^-g) */
        return _mm512_div_ps(g, _mm512_add_ps(one, v_exp(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    /* gelu(tanh): 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3),
     * tanh(u) = 1 - 2 / (e^2u + 1) */
    vf g3 = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
    vf u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                         _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), g3, g));
    vf e = v_exp(_mm512_add_ps(u, u));
    vf th = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), g), _mm512_add_ps(one, th));
}

static void glu(float *out, const float *g, const float *u, int64_t n, int act) {
    int64_t i = 0;
    for (; i + V <= n; i += V)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(v_act(_mm512_loadu_ps(g + i), act), _mm512_loadu_ps(u + i)));
    if (i < n) { /* same vector code on the tail, so a value never depends on i */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        vf r = _mm512_mul_ps(v_act(_mm512_maskz_loadu_ps(m, g + i), act), _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(out + i, m, r);
    }
}

static void vexp(float *x, int n) {
    int i = 0;
    for (; i + V <= n; i += V)
        _mm512_storeu_ps(x + i, v_exp(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, v_exp(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

static void f32_to_f16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + V <= n; i += V)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

const struct kcpu_isa kcpu_isa_avx512 = {
    .name = "avx512",
    .vlen = V,
    .gemv = gemv,
    .gemv_lte = gemv_lte,
    .dequant_rows = dequant_rows,
    .gemm_tile = gemm_tile,
    .attn_scores = attn_scores,
    .attn_accum = attn_accum,
    .vexp = vexp,
    .glu = glu,
    .f32_to_f16 = f32_to_f16,
};
