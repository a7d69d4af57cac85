/* matmul_avx2.c - AVX2/FMA/F16C kernels (compiled with -mavx2 -mfma -mf16c
 * -ffp-contract=off; only called after kcpu_isa_best() checked the CPU).
 * V = 8 lanes. Same structure and determinism contract as matmul_avx512.c
 * (see kcpu.h): one __m256 accumulator per (row, token), fmadd over chunks of 8
 * in increasing k, tail lanes zero, reduced by hsum8().
 */
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/kcpu.h"

#define V 8
#define AI static inline __attribute__((always_inline))
#define MR 3 /* tile micro-kernel: rows (12 accumulators + 3 weights + 1 x = 16 ymm) */
#define NR 4 /* tile micro-kernel: tokens */
/* decode prefetch one row group ahead: see matmul_avx512.c */
#define ESZ_f32 4
#define ESZ_f16 2
#define ESZ_bf16 2

typedef __m256 vf;

/* Fixed reduction tree: (l, l+4) -> (l, l+2) -> (0, 1). */
AI float hsum8(vf v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* hsum8 of four vectors at once, same pairings and operand order (so the
 * same bits), as the four lanes of the result. */
AI __m128 hsum8x4(vf a, vf b, vf c, vf d) {
    vf ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31)); /* (l, l+4) */
    vf cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    vf w = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2))); /* (l, l+2) */
    vf z = _mm256_hadd_ps(w, w);                                                /* (0, 1): a c a c | b d b d */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

/* hsum8 of eight vectors at once, same pairings (float adds commute bitwise),
 * lane i of the result = hsum8(a[i]). */
AI vf hsum8x8(const vf a[8]) {
    vf p[4];
    for (int k = 0; k < 4; k++) /* (l, l+4) of a[k] | of a[k+4] */
        p[k] = _mm256_add_ps(_mm256_permute2f128_ps(a[k], a[k + 4], 0x20), _mm256_permute2f128_ps(a[k], a[k + 4], 0x31));
    vf q0 = _mm256_add_ps(_mm256_shuffle_ps(p[0], p[1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm256_shuffle_ps(p[0], p[1], _MM_SHUFFLE(3, 2, 3, 2))); /* (l, l+2) */
    vf q1 = _mm256_add_ps(_mm256_shuffle_ps(p[2], p[3], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm256_shuffle_ps(p[2], p[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_hadd_ps(q0, q1); /* (0, 1): a0 a1 a2 a3 | a4 a5 a6 a7 */
}

/* End of a gv_T call: the RG x NT dot products of rows r.. and tokens t0..,
 * stored into y, or added into yadd rows (kcpu_mm) with hsum8x4 for 4 rows. */
AI void gv_out(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, vf acc[4][KCPU_DECODE_MAX],
               int LTE) {
    if (!LTE || !mm->yadd) {
        for (int i = 0; i < RG; i++)
            for (int j = 0; j < NT; j++)
                mm->y[(size_t)(t0 + j) * mm->ldy + r + i] = hsum8(acc[i][j]);
    } else if (RG == 4) {
        for (int j = 0; j < NT; j++) {
            float *p = mm->yadd[t0 + j] + r;
            _mm_storeu_ps(p, _mm_add_ps(_mm_loadu_ps(p), hsum8x4(acc[0][j], acc[1][j], acc[2][j], acc[3][j])));
        }
    } else {
        for (int i = 0; i < RG; i++)
            for (int j = 0; j < NT; j++)
                mm->yadd[t0 + j][r + i] += hsum8(acc[i][j]);
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

AI float h2f(const uint8_t *p) { return _cvtsh_ss(kcpu_rd16(p)); }
AI __m256i ld_u8x8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
AI __m256i c32(int v) { return _mm256_set1_epi32(v); }
/* bits16_tbl[b][l] = 16 if bit l of b is set, else 0 (the fifth bit of Q5_0) */
#define B16(b, l) ((((b) >> (l)) & 1) ? 16 : 0)
#define BROW(b) {B16(b, 0), B16(b, 1), B16(b, 2), B16(b, 3), B16(b, 4), B16(b, 5), B16(b, 6), B16(b, 7)}
#define BR4(b) BROW(b), BROW((b) + 1), BROW((b) + 2), BROW((b) + 3)
#define BR16(b) BR4(b), BR4((b) + 4), BR4((b) + 8), BR4((b) + 12)
#define BR64(b) BR16(b), BR16((b) + 16), BR16((b) + 32), BR16((b) + 48)
static const int32_t bits16_tbl[256][8] __attribute__((aligned(32))) = {
    BR64(0), BR64(64), BR64(128), BR64(192)};
AI __m256i bits16(uint32_t b) { return _mm256_load_si256((const __m256i *)bits16_tbl[b & 255]); }
AI __m256i tail_mask(int64_t r) { /* first r lanes all-ones, r in 1..7 */
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---------------------------------------------------------------- dequantisers */

typedef struct { const uint8_t *q; vf d; } st_q8_0;
AI void prep_q8_0(st_q8_0 *s, const uint8_t *b) { s->d = _mm256_set1_ps(h2f(b)); s->q = b + 2; }
AI vf chk_q8_0(const st_q8_0 *s, int c) {
    __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(s->q + 8 * c)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(q), s->d);
}

/* Q4_0 / Q5_0: w = fmsub(d, q, 8d) (resp. 16d) == d*(q-8) rounded once,
 * since 8d and 16d are exact. */
typedef struct { const uint8_t *q; vf d, d8; } st_q4_0;
AI void prep_q4_0(st_q4_0 *s, const uint8_t *b) {
    s->d = _mm256_set1_ps(h2f(b));
    s->d8 = _mm256_mul_ps(s->d, _mm256_set1_ps(8.0f));
    s->q = b + 2;
}
AI vf chk_q4_0(const st_q4_0 *s, int c) {
    __m256i q = ld_u8x8(s->q + 8 * (c & 1));
    q = c >= 2 ? _mm256_srli_epi32(q, 4) : _mm256_and_si256(q, c32(15));
    return _mm256_fmsub_ps(s->d, _mm256_cvtepi32_ps(q), s->d8);
}

typedef struct { const uint8_t *q; uint32_t qh; vf d, d16; } st_q5_0;
AI void prep_q5_0(st_q5_0 *s, const uint8_t *b) {
    s->d = _mm256_set1_ps(h2f(b));
    s->d16 = _mm256_mul_ps(s->d, _mm256_set1_ps(16.0f));
    s->qh = kcpu_rd32(b + 2);
    s->q = b + 6;
}
AI vf chk_q5_0(const st_q5_0 *s, int c) {
    __m256i q = ld_u8x8(s->q + 8 * (c & 1));
    q = c >= 2 ? _mm256_srli_epi32(q, 4) : _mm256_and_si256(q, c32(15));
    q = _mm256_or_si256(q, bits16(s->qh >> (8 * c)));
    return _mm256_fmsub_ps(s->d, _mm256_cvtepi32_ps(q), s->d16);
}

typedef struct { const uint8_t *q, *qh; float ds[8], ms[8]; } st_qk;
typedef st_qk st_q4_k;
typedef st_qk st_q5_k;
/* kcpu_k_scale_min for all 8 pairs at once, from 32-bit words */
AI void prep_qk(st_qk *s, const uint8_t *b, int five) {
    uint32_t sm[4];
    kcpu_k_scale_min_words(b + 4, sm);
    __m128i bytes = _mm_setr_epi32((int)sm[0], (int)sm[1], (int)sm[2], (int)sm[3]);
    vf sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
    vf m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)));
    _mm256_storeu_ps(s->ds, _mm256_mul_ps(_mm256_set1_ps(h2f(b)), sc));
    _mm256_storeu_ps(s->ms, _mm256_mul_ps(_mm256_set1_ps(h2f(b + 2)), m));
    s->qh = five ? b + 16 : NULL;
    s->q = five ? b + 48 : b + 16;
}
AI void prep_q4_k(st_qk *s, const uint8_t *b) { prep_qk(s, b, 0); }
AI void prep_q5_k(st_qk *s, const uint8_t *b) { prep_qk(s, b, 1); }
AI __m256i nib_qk(const st_qk *s, int c) {
    int sb = c >> 2;
    __m256i q = ld_u8x8(s->q + 32 * (sb >> 1) + 8 * (c & 3));
    return (sb & 1) ? _mm256_srli_epi32(q, 4) : _mm256_and_si256(q, c32(15));
}
AI vf fin_qk(const st_qk *s, int c, __m256i q) {
    int sb = c >> 2;
    return _mm256_fmsub_ps(_mm256_set1_ps(s->ds[sb]), _mm256_cvtepi32_ps(q), _mm256_set1_ps(s->ms[sb]));
}
AI vf chk_q4_k(const st_qk *s, int c) { return fin_qk(s, c, nib_qk(s, c)); }
AI vf chk_q5_k(const st_qk *s, int c) {
    __m256i q = nib_qk(s, c);
    __m256i h = ld_u8x8(s->qh + 8 * (c & 3));
    __m256i bit = c32(1 << (c >> 2));
    __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(h, bit), bit);
    q = _mm256_or_si256(q, _mm256_and_si256(set, c32(16)));
    return fin_qk(s, c, q);
}

/* Q6_K: w = fmsub(dsc, q, 32*dsc) == dsc*(q-32) rounded once */
typedef struct { const uint8_t *ql, *qh; float dsc[16], dsc32[16]; } st_q6_k;
AI void prep_q6_k(st_q6_k *s, const uint8_t *b) {
    vf d = _mm256_set1_ps(h2f(b + 208)), k32 = _mm256_set1_ps(32.0f);
    __m128i sc = _mm_loadu_si128((const __m128i *)(b + 192));
    vf lo = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
    vf hi = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))));
    _mm256_storeu_ps(s->dsc, lo);
    _mm256_storeu_ps(s->dsc + 8, hi);
    _mm256_storeu_ps(s->dsc32, _mm256_mul_ps(lo, k32));
    _mm256_storeu_ps(s->dsc32 + 8, _mm256_mul_ps(hi, k32));
    s->ql = b;
    s->qh = b + 128;
}
AI vf chk_q6_k(const st_q6_k *s, int c) {
    int h = c >> 4, cc = c & 15, k = cc >> 2, l0 = 8 * (cc & 3);
    __m256i lb = ld_u8x8(s->ql + 64 * h + 32 * (k & 1) + l0);
    __m256i lo = k < 2 ? _mm256_and_si256(lb, c32(15)) : _mm256_srli_epi32(lb, 4);
    __m256i hb = ld_u8x8(s->qh + 32 * h + l0);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi32(hb, 2 * k), c32(3));
    __m256i q = _mm256_or_si256(lo, _mm256_slli_epi32(hi, 4));
    int si = 8 * h + (l0 >> 4) + 2 * k;
    return _mm256_fmsub_ps(_mm256_set1_ps(s->dsc[si]), _mm256_cvtepi32_ps(q), _mm256_set1_ps(s->dsc32[si]));
}

/* linear types: full chunk, or tail of r (1..7) elements with zero lanes after */
AI vf ld_f32(const uint8_t *p, int64_t k) { return _mm256_loadu_ps((const float *)p + k); }
AI vf ldm_f32(const uint8_t *p, int64_t k, int64_t r) {
    return _mm256_maskload_ps((const float *)p + k, tail_mask(r));
}
AI vf ld_f16(const uint8_t *p, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
}
AI vf ldm_f16(const uint8_t *p, int64_t k, int64_t r) {
    uint16_t t[8] = {0};
    memcpy(t, (const uint16_t *)p + k, 2 * (size_t)r);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}
AI vf bf_widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
AI vf ld_bf16(const uint8_t *p, int64_t k) {
    return bf_widen(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
}
AI vf ldm_bf16(const uint8_t *p, int64_t k, int64_t r) {
    uint16_t t[8] = {0};
    memcpy(t, (const uint16_t *)p + k, 2 * (size_t)r);
    return bf_widen(_mm_loadu_si128((const __m128i *)t));
}

/* ---------------------------------------------------------------- decode (fused) */

#define DEF_BLOCKED(T, BS, SZ)                                                              \
    AI void gv_##T(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, int LTE) { \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm256_setzero_ps();                                            \
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
            for (int c = 0; c < (BS) / V; c++) {                                            \
                vf xv[KCPU_DECODE_MAX];                                                     \
                for (int j = 0; j < NT; j++)                                                \
                    xv[j] = _mm256_loadu_ps(xr + j * mm->ldx + ib * (BS) + c * V);          \
                for (int i = 0; i < RG; i++) {                                              \
                    vf wv = chk_##T(&st[i], c);                                             \
                    for (int j = 0; j < NT; j++)                                            \
                        acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);                  \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        gv_out(mm, r, t0, RG, NT, acc, LTE);                                                \
    }                                                                                       \
    /* 8 rows of one 32-element block each (K == BS == 32: LTE's down), NT tokens     \
     * (1..4), added into yadd: per row the operations of gv_T (so the same bits),     \
     * one prefetch per cache line, 8 rows per y access (hsum8x8). */                  \
    AI void gv8_##T(const struct kcpu_mm *mm, int64_t r, int t0, int NT, const uint8_t *pfp) { \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const float *xr = mm->x + (size_t)t0 * mm->ldx;                                     \
        for (size_t o = 0; o < 8 * mm->nb1; o += 64)                                        \
            _mm_prefetch((const char *)pfp + o, _MM_HINT_T1);                               \
        vf acc[KCPU_DECODE_MAX][8];                                                         \
        for (int i = 0; i < 8; i++) {                                                       \
            st_##T st;                                                                      \
            prep_##T(&st, wr + (size_t)i * mm->nb1);                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[j][i] = _mm256_setzero_ps();                                            \
            for (int c = 0; c < 4; c++) {                                                   \
                vf w = chk_##T(&st, c);                                                     \
                for (int j = 0; j < NT; j++)                                                \
                    acc[j][i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + j * mm->ldx + c * V), acc[j][i]); \
            }                                                                               \
        }                                                                                   \
        for (int j = 0; j < NT; j++) {                                                      \
            float *p = mm->yadd[t0 + j] + r;                                                \
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), hsum8x8(acc[j])));        \
        }                                                                                   \
    }                                                                                       \
    static void dq_##T(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst,        \
                       int64_t ldd) {                                                       \
        const int64_t nb = mm->K / (BS);                                                    \
        for (int64_t i = 0; i < nr; i++) {                                                  \
            const uint8_t *wr = mm->w + (size_t)(r0 + i) * mm->nb1;                          \
            float *d = dst + i * ldd;                                                       \
            for (int64_t ib = 0; ib < nb; ib++) {                                           \
                st_##T st;                                                                  \
                prep_##T(&st, wr + (size_t)ib * (SZ));                                      \
                for (int c = 0; c < (BS) / V; c++)                                          \
                    _mm256_storeu_ps(d + ib * (BS) + c * V, chk_##T(&st, c));               \
            }                                                                               \
            for (int64_t k = mm->K; k < ldd; k++)                                           \
                d[k] = 0.0f;                                                                \
        }                                                                                   \
    }

#define DEF_LINEAR(T)                                                                       \
    AI void gv8_##T(const struct kcpu_mm *mm, int64_t r, int t0, int NT, const uint8_t *pfp) { \
        (void)mm, (void)r, (void)t0, (void)NT, (void)pfp; /* never called (BS 0) */        \
    }                                                                                       \
    AI void gv_##T(const struct kcpu_mm *mm, int64_t r, int t0, int RG, int NT, int LTE) { \
        vf acc[4][KCPU_DECODE_MAX];                                                         \
        for (int i = 0; i < RG; i++)                                                        \
            for (int j = 0; j < NT; j++)                                                    \
                acc[i][j] = _mm256_setzero_ps();                                            \
        const uint8_t *wr = mm->w + (size_t)r * mm->nb1;                                    \
        const float *xr = mm->x + (size_t)t0 * mm->ldx;                                     \
        const int64_t K = mm->K;                                                            \
        int64_t k = 0;                                                                      \
        const size_t pf = kcpu_pf_dist((size_t)RG * mm->nb1), esz = ESZ_##T;               \
        const uint8_t *pfp = gv_pf(mm, r, RG, pf, LTE);                                    \
        for (; k + V <= K; k += V) {                                                        \
            vf xv[KCPU_DECODE_MAX];                                                         \
            for (int j = 0; j < NT; j++)                                                    \
                xv[j] = _mm256_loadu_ps(xr + j * mm->ldx + k);                              \
            for (int i = 0; i < RG; i++) {                                                  \
                _mm_prefetch((LTE ? (const char *)pfp + (size_t)i * mm->nb1                      \
                              : (const char *)wr + (size_t)i * mm->nb1 + pf) + (size_t)k * esz, \
                             _MM_HINT_T1);                                                  \
                vf wv = ld_##T(wr + (size_t)i * mm->nb1, k);                                \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);                      \
            }                                                                               \
        }                                                                                   \
        if (k < K) {                                                                        \
            vf xv[KCPU_DECODE_MAX];                                                         \
            for (int j = 0; j < NT; j++)                                                    \
                xv[j] = ldm_f32((const uint8_t *)(xr + j * mm->ldx), k, K - k);             \
            for (int i = 0; i < RG; i++) {                                                  \
                vf wv = ldm_##T(wr + (size_t)i * mm->nb1, k, K - k);                        \
                for (int j = 0; j < NT; j++)                                                \
                    acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);                      \
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
                _mm256_storeu_ps(d + k, ld_##T(wr, k));                                     \
            if (k < K)                                                                      \
                _mm256_maskstore_ps(d + k, tail_mask(K - k), ldm_##T(wr, k, K - k));        \
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

/* Row groups of 4 for 1-2 tokens, 2 for 3-4 tokens (<= 8 accumulators), then
 * leftover rows one by one. */
#define GEMV_BODY(FN, T, BS, LTE)                                                               \
    static void FN(const struct kcpu_mm *mm, int64_t r0, int64_t r1) {                      \
        if (!LTE || !mm->pf_warm)                                                           \
            kcpu_prefetch_head(mm->w + (size_t)r0 * mm->nb1, (size_t)(r1 - r0) * mm->nb1); \
        for (int t0 = 0; t0 < mm->n; t0 += KCPU_DECODE_MAX) {                               \
            int nt = mm->n - t0 < KCPU_DECODE_MAX ? mm->n - t0 : KCPU_DECODE_MAX;           \
            int64_t r = r0;                                                                 \
            if (LTE && (BS) == 32 && mm->K == 32 && mm->yadd) { /* LTE down */              \
                const size_t pf8 = kcpu_pf_dist(8 * mm->nb1);                               \
                for (; r + 8 <= r1; r += 8) {                                               \
                    const uint8_t *pfp = gv_pf(mm, r, 8, pf8, 1);                           \
                    switch (nt) {                                                           \
                    case 1: gv8_##T(mm, r, t0, 1, pfp); break;                              \
                    case 2: gv8_##T(mm, r, t0, 2, pfp); break;                              \
                    case 3: gv8_##T(mm, r, t0, 3, pfp); break;                              \
                    default: gv8_##T(mm, r, t0, 4, pfp); break;                             \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
            if (nt <= 2) {                                                                  \
                for (; r + 4 <= r1; r += 4) {                                               \
                    if (nt == 1) gv_##T(mm, r, t0, 4, 1, LTE);                                   \
                    else gv_##T(mm, r, t0, 4, 2, LTE);                                           \
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
#define GEMV_DRIVER(T, BS) GEMV_BODY(gemv_##T, T, BS, 0) GEMV_BODY(gemv_lte_##T, T, BS, 1)

GEMV_DRIVER(q8_0, 32)
GEMV_DRIVER(q4_0, 32)
GEMV_DRIVER(q5_0, 32)
GEMV_DRIVER(q4_k, 256)
GEMV_DRIVER(q5_k, 256)
GEMV_DRIVER(q6_k, 256)
GEMV_DRIVER(f32, 0)
GEMV_DRIVER(f16, 0)
GEMV_DRIVER(bf16, 0)

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

AI void mk(const float *wt, int64_t ldw, const float *x, int64_t ldx, float *y, int64_t ldy,
           int64_t K, int mr, int nt) {
    vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + V <= K; k += V) {
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm256_loadu_ps(wt + i * ldw + k);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm256_loadu_ps(x + j * ldx + k);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (k < K) {
        __m256i m = tail_mask(K - k);
        vf wv[MR];
        for (int i = 0; i < mr; i++)
            wv[i] = _mm256_maskload_ps(wt + i * ldw + k, m);
        for (int j = 0; j < nt; j++) {
            vf xv = _mm256_maskload_ps(x + j * ldx + k, m);
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nt; j++)
            y[j * ldy + i] = hsum8(acc[i][j]);
}

#define MK_CASE(a, b) \
    case (a) * 8 + (b): mk(w, ldw, xx, mm->ldx, yy, mm->ldy, mm->K, a, b); break;
#define MK_ROW(a) MK_CASE(a, 1) MK_CASE(a, 2) MK_CASE(a, 3) MK_CASE(a, 4)

static void gemm_tile(const struct kcpu_mm *mm, const float *wt, int64_t ldw, int64_t r0,
                      int64_t nr, int t0, int t1, float *scr) {
    (void)scr; /* no K-blocking in the AVX2 kernels */
    for (int t = t0; t < t1; t += NR) {
        int nt = t1 - t < NR ? t1 - t : NR;
        const float *xx = mm->x + (size_t)t * mm->ldx;
        for (int64_t i = 0; i < nr; i += MR) {
            int mr = nr - i < MR ? (int)(nr - i) : MR;
            const float *w = wt + i * ldw;
            float *yy = mm->y + (size_t)t * mm->ldy + r0 + i;
            switch (mr * 8 + nt) {
                MK_ROW(1) MK_ROW(2) MK_ROW(3)
            default: break;
            }
        }
    }
}

/* ---------------------------------------------------------------- attention helpers */

AI vf kv_ld(const void *base, size_t off, int d, int f16) {
    return f16 ? ld_f16((const uint8_t *)((const uint16_t *)base + off), d)
               : _mm256_loadu_ps((const float *)base + off + d);
}
AI vf kv_ldm(const void *base, size_t off, int d, int f16, int r) { /* r lanes, rest 0 */
    return f16 ? ldm_f16((const uint8_t *)((const uint16_t *)base + off), d, r)
               : ldm_f32((const uint8_t *)((const float *)base + off), d, r);
}

/* q . row: even / odd chunk accumulators, summed, then hsum8 */
AI float score1(const float *q, const void *base, size_t off, int D, int f16) {
    vf a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(); /* even / odd chunks */
    int d = 0;
    for (; d + 2 * V <= D; d += 2 * V) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), kv_ld(base, off, d, f16), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + V), kv_ld(base, off, d + V, f16), a1);
    }
    int odd = 0;
    if (d + V <= D) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), kv_ld(base, off, d, f16), a0);
        d += V;
        odd = 1;
    }
    if (d < D) {
        vf t = _mm256_fmadd_ps(ldm_f32((const uint8_t *)q, d, D - d), kv_ldm(base, off, d, f16, D - d),
                               odd ? a1 : a0);
        if (odd)
            a1 = t;
        else
            a0 = t;
    }
    return hsum8(_mm256_add_ps(a0, a1));
}

static void attn_scores(const float *q, int nq, int ldq, const void *base, const size_t *offs, int cnt,
                        int D, int f16, float *out, int ldo) {
    for (int r = 0; r < nq; r++)
        for (int i = 0; i < cnt; i++)
            out[r * ldo + i] = f16 ? score1(q + r * ldq, base, offs[i], D, 1)
                                   : score1(q + r * ldq, base, offs[i], D, 0);
}

AI void accum_impl(float *o, float corr, const float *p, const void *base, const size_t *offs, int cnt,
                   int D, int f16) {
    const vf cv = _mm256_set1_ps(corr);
    int d = 0;
    for (; d + 4 * V <= D; d += 4 * V) {
        vf a0 = _mm256_mul_ps(_mm256_loadu_ps(o + d), cv);
        vf a1 = _mm256_mul_ps(_mm256_loadu_ps(o + d + V), cv);
        vf a2 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 2 * V), cv);
        vf a3 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 3 * V), cv);
        for (int i = 0; i < cnt; i++) {
            vf pv = _mm256_set1_ps(p[i]);
            a0 = _mm256_fmadd_ps(pv, kv_ld(base, offs[i], d, f16), a0);
            a1 = _mm256_fmadd_ps(pv, kv_ld(base, offs[i], d + V, f16), a1);
            a2 = _mm256_fmadd_ps(pv, kv_ld(base, offs[i], d + 2 * V, f16), a2);
            a3 = _mm256_fmadd_ps(pv, kv_ld(base, offs[i], d + 3 * V, f16), a3);
        }
        _mm256_storeu_ps(o + d, a0);
        _mm256_storeu_ps(o + d + V, a1);
        _mm256_storeu_ps(o + d + 2 * V, a2);
        _mm256_storeu_ps(o + d + 3 * V, a3);
    }
    for (; d < D; d += V) {
        int r = D - d >= V ? V : D - d;
        vf a = _mm256_mul_ps(ldm_f32((const uint8_t *)o, d, r), cv);
        for (int i = 0; i < cnt; i++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(p[i]), kv_ldm(base, offs[i], d, f16, r), a);
        _mm256_maskstore_ps(o + d, tail_mask(r), a);
    }
}

static void attn_accum(float *o, int nq, int ldo, const float *corr, const float *p, int ldp,
                       const void *base, const size_t *offs, int cnt, int D, int f16) {
    for (int r = 0; r < nq; r++) {
        if (f16)
            accum_impl(o + r * ldo, corr[r], p + r * ldp, base, offs, cnt, D, 1);
        else
            accum_impl(o + r * ldo, corr[r], p + r * ldp, base, offs, cnt, D, 0);
    }
}

/* ---------------------------------------------------------------- activations */

AI vf v_exp(vf x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    vf p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), c32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AI vf v_act(vf g, int act) {
    const vf one = _mm256_set1_ps(1.0f);
    if (act == 0)
        return _mm256_div_ps(g, _mm256_add_ps(one, v_exp(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    vf g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    vf u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                         _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), g3, g));
    vf e = v_exp(_mm256_add_ps(u, u));
    vf th = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), g), _mm256_add_ps(one, th));
}

static void glu(float *out, const float *g, const float *u, int64_t n, int act) {
    int64_t i = 0;
    for (; i + V <= n; i += V)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v_act(_mm256_loadu_ps(g + i), act), _mm256_loadu_ps(u + i)));
    if (i < n) { /* same vector code on the tail, so a value never depends on i */
        __m256i m = tail_mask(n - i);
        vf r = _mm256_mul_ps(v_act(_mm256_maskload_ps(g + i, m), act), _mm256_maskload_ps(u + i, m));
        _mm256_maskstore_ps(out + i, m, r);
    }
}

static void vexp(float *x, int n) {
    int i = 0;
    for (; i + V <= n; i += V)
        _mm256_storeu_ps(x + i, v_exp(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(x + i, m, v_exp(_mm256_maskload_ps(x + i, m)));
    }
}

static void f32_to_f16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + V <= n; i += V)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

const struct kcpu_isa kcpu_isa_avx2 = {
    .name = "avx2",
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
