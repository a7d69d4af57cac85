/* dq_avx512.h - AVX-512 pieces shared by the fp32 kernels (matmul_avx512.c)
 * and the BF16 kernels (matmul_bf16_avx512.c): the fixed reduction tree and
 * the inline dequantisers. Include only from files compiled with -mavx512f
 * -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c. */
#ifndef SS_KCPU_DQ_AVX512_H
#define SS_KCPU_DQ_AVX512_H

#include <immintrin.h>

#include "kernels/cpu/kcpu.h"

#define V 16
#define AI static inline __attribute__((always_inline))

typedef __m512 vf;

/* Fixed reduction tree: (l, l+8) -> (l, l+4) -> (l, l+2) -> (0, 1). */
AI float hsum16(vf v) {
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* hsum16 of four vectors at once, same pairings (so the same bits), as the four
 * lanes of the result. */
AI __m128 hsum16x4(vf a, vf b, vf c, vf d) {
    vf ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2))); /* (l, l+8) */
    vf cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    vf z = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1))); /* (l, l+4) */
    z = _mm512_add_ps(z, _mm512_permute_ps(z, _MM_SHUFFLE(1, 0, 3, 2)));         /* (l, l+2) */
    z = _mm512_add_ps(z, _mm512_permute_ps(z, _MM_SHUFFLE(2, 3, 0, 1)));         /* (0, 1) */
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), z));
}

AI float h2f(const uint8_t *p) { return _cvtsh_ss(kcpu_rd16(p)); }
AI __m512i ld_u8x16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }

/* ---------------------------------------------------------------- dequantisers
 * st_T: per (row, block) state prepared once. grp_T(st, g, w): group g of the
 * block as GC_T consecutive chunks of 16 floats, w[0..GC_T), in element order
 * (group g covers elements [16*GC_T*g, 16*GC_T*(g+1)) of the block).
 *
 * 4- and 5-bit types use a 16-entry float table per scale and vpermps (which
 * reads only bits 3..0 of each index lane): table[i] is computed with exactly
 * the operation the plain formula would apply to i, so the values are those of
 * the format definition, bit for bit, with fewer instructions per element. */

#define IOTA(o) _mm512_setr_ps(o + 0, o + 1, o + 2, o + 3, o + 4, o + 5, o + 6, o + 7, o + 8, \
                               o + 9, o + 10, o + 11, o + 12, o + 13, o + 14, o + 15)
#define PERM(idx, t) _mm512_permutexvar_ps(idx, t)

#define GC_q8_0 2
typedef struct { const uint8_t *q; vf d; } st_q8_0;
AI void prep_q8_0(st_q8_0 *s, const uint8_t *b) { s->d = _mm512_set1_ps(h2f(b)); s->q = b + 2; }
AI void grp_q8_0(const st_q8_0 *s, int g, vf *w) {
    (void)g;
    for (int c = 0; c < 2; c++) {
        __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s->q + 16 * c)));
        w[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(q), s->d);
    }
}

/* Q4_0: t[i] = d*(i-8) */
#define GC_q4_0 2
typedef struct { const uint8_t *q; vf t; } st_q4_0;
AI void prep_q4_0(st_q4_0 *s, const uint8_t *b) {
    s->t = _mm512_mul_ps(_mm512_set1_ps(h2f(b)), IOTA(-8));
    s->q = b + 2;
}
AI void grp_q4_0(const st_q4_0 *s, int g, vf *w) {
    (void)g;
    __m512i v = ld_u8x16(s->q);
    w[0] = PERM(v, s->t);
    w[1] = PERM(_mm512_srli_epi32(v, 4), s->t);
}

/* Q5_0: tl[i] = d*(i-16) (fifth bit clear), th[i] = d*i (set) */
#define GC_q5_0 2
typedef struct { const uint8_t *q; uint32_t qh; vf tl, th; } st_q5_0;
AI void prep_q5_0(st_q5_0 *s, const uint8_t *b) {
    vf d = _mm512_set1_ps(h2f(b));
    s->tl = _mm512_mul_ps(d, IOTA(-16));
    s->th = _mm512_mul_ps(d, IOTA(0));
    s->qh = kcpu_rd32(b + 2);
    s->q = b + 6;
}
AI void grp_q5_0(const st_q5_0 *s, int g, vf *w) {
    (void)g;
    __m512i v = ld_u8x16(s->q), v1 = _mm512_srli_epi32(v, 4);
    w[0] = _mm512_mask_permutexvar_ps(PERM(v, s->tl), (__mmask16)s->qh, v, s->th);
    w[1] = _mm512_mask_permutexvar_ps(PERM(v1, s->tl), (__mmask16)(s->qh >> 16), v1, s->th);
}

/* Q4_K / Q5_K: ds[s] = d*sc_s, ms[s] = dmin*m_s for the 8 sub-blocks; a group
 * is a sub-block pair (2g low nibbles, 2g+1 high nibbles of the same 32 bytes).
 * Table of sub-block s: t[i] = fmsub(ds, i, ms) (Q5_K: i and i+16). */
#define GC_q4_k 4
#define GC_q5_k 4
typedef struct { const uint8_t *q, *qh; float dm[16]; /* d*sc[0..7], dmin*m[0..7] */ } st_qk;
typedef st_qk st_q4_k;
typedef st_qk st_q5_k;
/* The 8 (scale, min) pairs of kcpu_k_scale_min, unpacked four at a time from
 * 32-bit words, widened and multiplied by d / dmin in one vector. */
AI void prep_qk(st_qk *s, const uint8_t *b, int five) {
    uint32_t sm[4];
    kcpu_k_scale_min_words(b + 4, sm);
    __m128i bytes = _mm_setr_epi32((int)sm[0], (int)sm[1], (int)sm[2], (int)sm[3]);
    __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)kcpu_rd32(b))); /* d, dmin */
    vf mul = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                   _mm512_castps128_ps512(dd));
    vf v = _mm512_mul_ps(mul, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)));
    _mm512_storeu_ps(s->dm, v);
    s->qh = five ? b + 16 : NULL;
    s->q = five ? b + 48 : b + 16;
}
AI void prep_q4_k(st_qk *s, const uint8_t *b) { prep_qk(s, b, 0); }
AI void prep_q5_k(st_qk *s, const uint8_t *b) { prep_qk(s, b, 1); }
AI vf tbl_qk(const st_qk *s, int sb, vf io) {
    return _mm512_fmsub_ps(_mm512_set1_ps(s->dm[sb]), io, _mm512_set1_ps(s->dm[8 + sb]));
}
AI void grp_q4_k(const st_qk *s, int g, vf *w) {
    __m512i lo = ld_u8x16(s->q + 32 * g), hi = ld_u8x16(s->q + 32 * g + 16);
    vf t0 = tbl_qk(s, 2 * g, IOTA(0)), t1 = tbl_qk(s, 2 * g + 1, IOTA(0));
    w[0] = PERM(lo, t0);
    w[1] = PERM(hi, t0);
    w[2] = PERM(_mm512_srli_epi32(lo, 4), t1);
    w[3] = PERM(_mm512_srli_epi32(hi, 4), t1);
}
AI void grp_q5_k(const st_qk *s, int g, vf *w) {
    __m512i lo = ld_u8x16(s->q + 32 * g), hi = ld_u8x16(s->q + 32 * g + 16);
    __m512i h0 = ld_u8x16(s->qh), h1 = ld_u8x16(s->qh + 16);
    __m512i b0 = _mm512_set1_epi32(1 << (2 * g)), b1 = _mm512_set1_epi32(2 << (2 * g));
    vf t0l = tbl_qk(s, 2 * g, IOTA(0)), t0h = tbl_qk(s, 2 * g, IOTA(16));
    vf t1l = tbl_qk(s, 2 * g + 1, IOTA(0)), t1h = tbl_qk(s, 2 * g + 1, IOTA(16));
    __m512i lo4 = _mm512_srli_epi32(lo, 4), hi4 = _mm512_srli_epi32(hi, 4);
    w[0] = _mm512_mask_permutexvar_ps(PERM(lo, t0l), _mm512_test_epi32_mask(h0, b0), lo, t0h);
    w[1] = _mm512_mask_permutexvar_ps(PERM(hi, t0l), _mm512_test_epi32_mask(h1, b0), hi, t0h);
    w[2] = _mm512_mask_permutexvar_ps(PERM(lo4, t1l), _mm512_test_epi32_mask(h0, b1), lo4, t1h);
    w[3] = _mm512_mask_permutexvar_ps(PERM(hi4, t1l), _mm512_test_epi32_mask(h1, b1), hi4, t1h);
}

/* Q6_K: a group is one half (128 elements, 8 chunks); chunk (k, j) with
 * k = 0..3, j = 0..1 covers elements 32k + 16j .. of the half.
 * w = fmsub(dsc, q, 32*dsc) == dsc*(q-32) rounded once (32*dsc is exact). */
#define GC_q6_k 8
typedef struct { const uint8_t *ql, *qh; float dsc[16], dsc32[16]; } st_q6_k;
AI void prep_q6_k(st_q6_k *s, const uint8_t *b) {
    vf d = _mm512_set1_ps(h2f(b + 208));
    __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192)));
    vf dsc = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
    _mm512_storeu_ps(s->dsc, dsc);
    _mm512_storeu_ps(s->dsc32, _mm512_mul_ps(dsc, _mm512_set1_ps(32.0f)));
    s->ql = b;
    s->qh = b + 128;
}
AI void grp_q6_k(const st_q6_k *s, int g, vf *w) {
    const uint8_t *ql = s->ql + 64 * g, *qh = s->qh + 32 * g;
    const __m512i m15 = _mm512_set1_epi32(15), m48 = _mm512_set1_epi32(0x30);
    for (int j = 0; j < 2; j++) {
        __m512i a = ld_u8x16(ql + 16 * j), bq = ld_u8x16(ql + 32 + 16 * j), h = ld_u8x16(qh + 16 * j);
        for (int k = 0; k < 4; k++) {
            __m512i src = k & 1 ? bq : a;
            __m512i low = k < 2 ? _mm512_and_si512(src, m15) : _mm512_srli_epi32(src, 4);
            __m512i hs = k == 0 ? _mm512_slli_epi32(h, 4)
                         : k == 1 ? _mm512_slli_epi32(h, 2)
                         : k == 2 ? h
                                  : _mm512_srli_epi32(h, 2);
            __m512i q = _mm512_ternarylogic_epi32(low, hs, m48, 0xF8); /* low | (hs & 0x30) */
            int si = 8 * g + 2 * k + j;
            w[2 * k + j] = _mm512_fmsub_ps(_mm512_set1_ps(s->dsc[si]), _mm512_cvtepi32_ps(q),
                                           _mm512_set1_ps(s->dsc32[si]));
        }
    }
}

/* Every group of one row (wr, K elements) of a blocked type, in order:
 * EMIT(k, w) with w[GC_T] the group's chunks and k the element of its first
 * (the fp32 tile dequantiser and the BF16 one share it). */
#define DQ_ROW_GROUPS(T, BS, SZ, wr, K, EMIT)                                               \
    for (int64_t ib_ = 0; ib_ < (K) / (BS); ib_++) {                                        \
        st_##T st_;                                                                         \
        prep_##T(&st_, (wr) + (size_t)ib_ * (SZ));                                          \
        for (int g_ = 0; g_ < (BS) / (V * GC_##T); g_++) {                                  \
            vf w_[GC_##T];                                                                  \
            grp_##T(&st_, g_, w_);                                                          \
            EMIT(ib_ * (BS) + g_ * (V * GC_##T), w_);                                       \
        }                                                                                   \
    }

/* linear types: chunk at element k of a row, full or masked (tail lanes = 0) */
AI vf ld_f32(const uint8_t *r, int64_t k) { return _mm512_loadu_ps((const float *)r + k); }
AI vf ldm_f32(const uint8_t *r, int64_t k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, (const float *)r + k); }
AI vf ld_f16(const uint8_t *r, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)r + k)));
}
AI vf ldm_f16(const uint8_t *r, int64_t k, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)r + k));
}
AI vf bf_widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
AI vf ld_bf16(const uint8_t *r, int64_t k) {
    return bf_widen(_mm256_loadu_si256((const __m256i *)((const uint16_t *)r + k)));
}
AI vf ldm_bf16(const uint8_t *r, int64_t k, __mmask16 m) {
    return bf_widen(_mm256_maskz_loadu_epi16(m, (const uint16_t *)r + k));
}

#endif
