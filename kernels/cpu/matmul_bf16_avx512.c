/* matmul_bf16_avx512.c - BF16 dot products (vdpbf16ps) of dequantised
 * weights with BF16 activations (q8.h, KQ8_BF16), AVX512-BF16 (compiled with
 * -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c
 * -ffp-contract=off; only called after kq8_available() checked the CPU).
 *
 * A weight is dequantised to fp32 exactly as the fp32 path does it (the
 * grp_* dequantisers of dq_avx512.h), then rounded to BF16 with vcvtne2ps2bf16
 * (round to nearest even, denormals to zero); the activations were rounded the
 * same way once per matmul input. vdpbf16ps then does 32 multiply-adds per
 * instruction where fp32 FMA does 16, and the products of two BF16 values are
 * exact in fp32.
 *
 * fp32 combination, fixed for every (row, token) pair whatever n is:
 *   acc (16 lanes) = +0; for each 32-element chunk of the row, in order:
 *       acc = vdpbf16ps(acc, w[chunk], x[chunk])  (lane l: elements 2l, 2l+1)
 *   y = hsum16(acc)  (hsum16x4: the same tree)
 * Decode (n <= KCPU_DECODE_MAX, or no scratch): up to 4 rows x 4 tokens with
 * the weights dequantised in registers. Otherwise: rows dequantised once into
 * the scratch as a BF16 tile, then a 4-row x 6-token register tile over all
 * tokens. Both run the per-pair sequence above, so the same bits.
 */
#include <immintrin.h>

#include "kernels/cpu/dq_avx512.h"
#include "kernels/cpu/q8.h"

#define MR 4 /* tile: rows */
#define NR 6 /* tile: tokens */

/* 32 weights (two fp32 chunks, element order) as BF16 pairs in element order */
AI __m512bh bf_pack(vf lo, vf hi) { return _mm512_cvtne2ps_pbh(hi, lo); }
AI __m512bh bf_load(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512((const void *)p); }

/* ---------------------------------------------------------------- per type
 * gvb_T: RG rows x NT tokens, weights dequantised in registers (decode).
 * dqb_T: nr rows into a BF16 tile dst[nr][K]. */

/* DQ_ROW_GROUPS' EMIT for the BF16 tile: chunk pairs packed and stored at d + k */
#define DQ_STORE_BF16(k, w)                                                                 \
    for (int c = 0; c < (int)(sizeof w / sizeof w[0]); c += 2)                              \
        _mm512_storeu_si512((void *)(d + (k) + c * V), (__m512i)bf_pack(w[c], w[c + 1]));

#define DEF_BF_BLOCKED(T, BS, SZ)                                                           \
    AI void gvb_##T(const struct kq8_mm *mm, int64_t r, int t0, int RG, int NT) {           \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm512_setzero_ps();                                            \
        const int64_t nb = mm->x->K / (BS);                                                 \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const uint16_t *xr[KCPU_DECODE_MAX];                                                \
        for (int j = 0; j < NT; j++)                                                        \
            xr[j] = kbf_x(mm->x, t0 + j);                                                   \
        const size_t pf = kcpu_pf_dist((size_t)RG * mm->nb1);                              \
        for (int64_t ib = 0; ib < nb; ib++) {                                               \
            st_##T st[4];                                                                   \
            for (int i = 0; i < RG; i++) {                                                  \
                const uint8_t *bp = wr + (size_t)i * mm->nb1 + (size_t)ib * (SZ);           \
                for (int o = 0; o < (SZ); o += 64) /* same block, next row group */         \
                    _mm_prefetch((const char *)bp + pf + o, _MM_HINT_T1);                   \
                prep_##T(&st[i], bp);                                                       \
            }                                                                               \
            for (int g = 0; g < (BS) / (V * GC_##T); g++) {                                 \
                const int64_t k = ib * (BS) + g * (V * GC_##T);                             \
                for (int i = 0; i < RG; i++) {                                              \
                    vf w[GC_##T];                                                           \
                    grp_##T(&st[i], g, w);                                                  \
                    for (int c = 0; c < GC_##T; c += 2) {                                   \
                        __m512bh wb = bf_pack(w[c], w[c + 1]);                              \
                        for (int j = 0; j < NT; j++)                                        \
                            acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wb, bf_load(xr[j] + k + c * V)); \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                mm->y[(size_t)(t0 + j) * mm->ldy + r + i] = hsum16(acc[i][j]);              \
    }                                                                                       \
    static void dqb_##T(const struct kq8_mm *mm, int64_t r0, int64_t nr, uint16_t *dst) {  \
        const int64_t K = mm->x->K;                                                         \
        for (int64_t i = 0; i < nr; i++) {                                                  \
            const uint8_t *wr = mm->w + (size_t)(r0 + i) * mm->nb1;                          \
            uint16_t *d = dst + i * K;                                                      \
            DQ_ROW_GROUPS(T, BS, SZ, wr, K, DQ_STORE_BF16)                                  \
        }                                                                                   \
    }

/* F16 / BF16 weights: chunks of 32 read straight from the row (K % 32 == 0) */
#define DEF_BF_LINEAR(T)                                                                    \
    AI void gvb_##T(const struct kq8_mm *mm, int64_t r, int t0, int RG, int NT) {           \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm512_setzero_ps();                                            \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const uint16_t *xr[KCPU_DECODE_MAX];                                                \
        for (int j = 0; j < NT; j++)                                                        \
            xr[j] = kbf_x(mm->x, t0 + j);                                                   \
        const size_t pf = kcpu_pf_dist((size_t)RG * mm->nb1);                              \
        for (int64_t k = 0; k < mm->x->K; k += 2 * V) {                                     \
            for (int i = 0; i < RG; i++) {                                                  \
                const uint8_t *rp = wr + (size_t)i * mm->nb1;                               \
                _mm_prefetch((const char *)rp + pf + 2 * k, _MM_HINT_T1);                   \
                __m512bh wb = bf_pack(ld_##T(rp, k), ld_##T(rp, k + V));                    \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wb, bf_load(xr[j] + k));        \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                mm->y[(size_t)(t0 + j) * mm->ldy + r + i] = hsum16(acc[i][j]);              \
    }                                                                                       \
    static void dqb_##T(const struct kq8_mm *mm, int64_t r0, int64_t nr, uint16_t *dst) {  \
        const int64_t K = mm->x->K;                                                         \
        for (int64_t i = 0; i < nr; i++) {                                                  \
            const uint8_t *wr = mm->w + (size_t)(r0 + i) * mm->nb1;                          \
            for (int64_t k = 0; k < K; k += 2 * V)                                          \
                _mm512_storeu_si512((void *)(dst + i * K + k),                              \
                                    (__m512i)bf_pack(ld_##T(wr, k), ld_##T(wr, k + V)));    \
        }                                                                                   \
    }

DEF_BF_BLOCKED(q8_0, 32, 34)
DEF_BF_BLOCKED(q4_0, 32, 18)
DEF_BF_BLOCKED(q5_0, 32, 22)
DEF_BF_BLOCKED(q4_k, 256, 144)
DEF_BF_BLOCKED(q5_k, 256, 176)
DEF_BF_BLOCKED(q6_k, 256, 210)
DEF_BF_LINEAR(f16)
DEF_BF_LINEAR(bf16)

/* Rows [r0, r1) x tokens [t0, t1) in register groups: 4 rows (Q6_K: 2 rows
 * for 3-4 tokens, its 8-chunk groups would spill), leftover rows one by one. */
#define GVB_DRIVER(T, RG34)                                                                 \
    static void gemvb_##T(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1) { \
        kcpu_prefetch_head(mm->w + (size_t)r0 * mm->nb1, (size_t)(r1 - r0) * mm->nb1);     \
        for (int t = t0; t < t1; t += KCPU_DECODE_MAX) {                                    \
            const int nt = t1 - t < KCPU_DECODE_MAX ? t1 - t : KCPU_DECODE_MAX;             \
            const int rg = nt <= 2 ? 4 : RG34;                                              \
            int64_t r = r0;                                                                 \
            for (; r + rg <= r1; r += rg) {                                                 \
                switch (nt * 8 + rg) {                                                      \
                case 1 * 8 + 4: gvb_##T(mm, r, t, 4, 1); break;                             \
                case 2 * 8 + 4: gvb_##T(mm, r, t, 4, 2); break;                             \
                case 3 * 8 + 4: gvb_##T(mm, r, t, 4, 3); break;                             \
                case 4 * 8 + 4: gvb_##T(mm, r, t, 4, 4); break;                             \
                case 3 * 8 + 2: gvb_##T(mm, r, t, 2, 3); break;                             \
                default: gvb_##T(mm, r, t, 2, 4); break;                                    \
                }                                                                           \
            }                                                                               \
            for (; r < r1; r++) {                                                           \
                switch (nt) {                                                               \
                case 1: gvb_##T(mm, r, t, 1, 1); break;                                     \
                case 2: gvb_##T(mm, r, t, 1, 2); break;                                     \
                case 3: gvb_##T(mm, r, t, 1, 3); break;                                     \
                default: gvb_##T(mm, r, t, 1, 4); break;                                    \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }
GVB_DRIVER(q8_0, 4)
GVB_DRIVER(q4_0, 4)
GVB_DRIVER(q5_0, 4)
GVB_DRIVER(q4_k, 4)
GVB_DRIVER(q5_k, 4)
GVB_DRIVER(q6_k, 2)
GVB_DRIVER(f16, 4)
GVB_DRIVER(bf16, 4)

/* ---------------------------------------------------------------- tile */

/* y[j][i] for mr rows of the BF16 tile wt[.][K] and nt tokens, whole K in
 * registers */
AI void mkb16(const uint16_t *wt, int64_t K, const struct kq8_x *x, int t, float *y, int64_t ldy, int mr,
              int nt) {
    vf acc[MR][NR];
    const uint16_t *xr[NR];
    for (int j = 0; j < nt; j++) {
        xr[j] = kbf_x(x, t + j);
        for (int i = 0; i < mr; i++)
            acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += 2 * V) {
        __m512bh wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = bf_load(wt + i * K + k);
        for (int j = 0; j < nt; j++) {
            __m512bh xv = bf_load(xr[j] + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv);
        }
    }
    for (int j = 0; j < nt; j++) {
        vf z = _mm512_setzero_ps();
        __m128 r = hsum16x4(acc[0][j], mr > 1 ? acc[1][j] : z, mr > 2 ? acc[2][j] : z, mr > 3 ? acc[3][j] : z);
        _mm_mask_storeu_ps(y + j * ldy, (__mmask8)((1u << mr) - 1), r);
    }
}

#define MKB_CASE(a, b) \
    case (a) * 8 + (b): mkb16(w, K, mm->x, t, yy, mm->ldy, a, b); break;
#define MKB_ROW(a) MKB_CASE(a, 1) MKB_CASE(a, 2) MKB_CASE(a, 3) MKB_CASE(a, 4) MKB_CASE(a, 5) MKB_CASE(a, 6)

static void tile(const struct kq8_mm *mm, const uint16_t *wt, int64_t r0, int64_t nr, int t0, int t1) {
    const int64_t K = mm->x->K;
    for (int t = t0; t < t1; t += NR) {
        const int nt = t1 - t < NR ? t1 - t : NR;
        for (int64_t i = 0; i < nr; i += MR) {
            const int mr = nr - i < MR ? (int)(nr - i) : MR;
            const uint16_t *w = wt + i * K;
            float *yy = mm->y + (size_t)t * mm->ldy + r0 + i;
            switch (mr * 8 + nt) {
                MKB_ROW(1) MKB_ROW(2) MKB_ROW(3) MKB_ROW(4)
            default: break;
            }
        }
    }
}

/* ---------------------------------------------------------------- dispatch */

#define TYPE_SWITCH(CALL)                         \
    switch (mm->type) {                           \
    case BE_Q8_0: CALL(q8_0); break;              \
    case BE_Q4_0: CALL(q4_0); break;              \
    case BE_Q5_0: CALL(q5_0); break;              \
    case BE_Q4_K: CALL(q4_k); break;              \
    case BE_Q5_K: CALL(q5_k); break;              \
    case BE_Q6_K: CALL(q6_k); break;              \
    case BE_F16: CALL(f16); break;                \
    case BE_BF16: CALL(bf16); break;              \
    default: return;                              \
    }

void kbf_rows_avx512(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len) {
    const int64_t K = mm->x->K;
    if (t1 - t0 <= KCPU_DECODE_MAX || !scr || ((uintptr_t)scr & 63) ||
        (size_t)(r1 - r0) * (size_t)K * sizeof(uint16_t) > scr_len) {
#define GEMVB(T) gemvb_##T(mm, r0, r1, t0, t1)
        TYPE_SWITCH(GEMVB)
#undef GEMVB
        return;
    }
#define DQB(T) dqb_##T(mm, r0, r1 - r0, (uint16_t *)scr)
    TYPE_SWITCH(DQB)
#undef DQB
    tile(mm, scr, r0, r1 - r0, t0, t1);
}

/* ---------------------------------------------------------------- conversion */

void kbf_convert_avx512(struct kq8_x *x, const float *src, int t0, int t1) {
    for (int t = t0; t < t1; t++) {
        uint16_t *d = (uint16_t *)(x->buf + (size_t)t * x->stride);
        const float *s = src + (size_t)t * (size_t)x->K;
        for (int64_t k = 0; k < x->K; k += 2 * V)
            _mm512_storeu_si512((void *)(d + k),
                                (__m512i)bf_pack(_mm512_loadu_ps(s + k), _mm512_loadu_ps(s + k + V)));
    }
}
