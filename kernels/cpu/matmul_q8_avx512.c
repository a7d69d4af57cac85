/* matmul_q8_avx512.c - int8 dot products of quantised weights with quantised
 * activations (q8.h), AVX512-VNNI (compiled with -mavx512f -mavx512bw
 * -mavx512vl -mavx512vnni -mf16c -ffp-contract=off; only called after
 * kq8_available() checked the CPU).
 *
 * vpdpbusd multiplies unsigned by signed bytes, each int32 lane summing 4
 * products exactly:
 *   32-blocks: activations stored as x+128 (unsigned) times the signed weight
 *     q; the lane starts at -128 * (sum of its 4 weights), so it ends at the
 *     exact sum of q*x. Two blocks per vector, lanes alternating (q8.h).
 *   K-quants: the stored 4/5/6-bit weight (unsigned) times the signed x; the
 *     Q6_K offset 32 and the Q4_K/Q5_K mins are removed exactly in integers
 *     through the per-16 activation sums.
 *
 * fp32 combination, fixed for every (row, token) pair whatever n is:
 *   acc (16 lanes) = +0; for each 64-element chunk c of the row, in order:
 *       acc[l] = fma((float)isum[c][l], scale[c][l], acc[l])
 *     32-blocks: chunk = blocks (2c, 2c+1), even / odd lanes, scale = dw*dx
 *       (an odd last block: its pair has weights 0 and scale 0)
 *     K-quants: chunk = 64 elements of a super-block, scale = (d*dx)*sc of the
 *       lane's sub-block (Q4_K/Q5_K: 32 elements, Q6_K: 16)
 *   mac = +0; per super-block, in order: mac = mac + (c*dx) * (float)B, with
 *     B the exact integer sum of min (Q4_K/Q5_K: c = dmin) or offset
 *     (Q6_K: c = d, B = 32 * sum sc*bsum) terms
 *   y = reduce(acc) - mac   (reduce: _mm512_reduce_add_ps, one fixed tree)
 * Tokens are processed four at a time sharing the unpacked weights; a token's
 * arithmetic never involves another token.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

#define AI static inline __attribute__((always_inline))
#define TG 4        /* tokens sharing one weight unpack */
#define PF 2048     /* weight prefetch distance in bytes (the decode stream) */

AI float h2f(const uint8_t *p) { return _cvtsh_ss(kcpu_rd16(p)); }

AI __m512i join(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* low and high nibbles of 16 bytes as 32 bytes in element order */
AI __m256i nib16(const uint8_t *p) {
    __m128i q = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, m)),
                                   _mm_and_si128(_mm_srli_epi16(q, 4), m), 1);
}

/* ---------------------------------------------------------------- 32-blocks */

AI size_t bsz32(int type) { return type == BE_Q4_0 ? 18 : (type == BE_Q5_0 ? 22 : 34); }

/* signed weights q of one block, element order */
AI __m256i unpack32(int type, const uint8_t *p) {
    if (type == BE_Q4_0)
        return _mm256_sub_epi8(nib16(p + 2), _mm256_set1_epi8(8));
    if (type == BE_Q5_0)
        return _mm256_sub_epi8(_mm256_mask_add_epi8(nib16(p + 6), (__mmask32)kcpu_rd32(p + 2), nib16(p + 6),
                                                    _mm256_set1_epi8(16)),
                               _mm256_set1_epi8(16));
    return _mm256_loadu_si256((const __m256i *)(p + 2));
}

/* broadcast of the pair (a, b) to lanes (a, b, a, b, ...) */
AI __m512 pair_ps(const float *p) {
    double v;
    memcpy(&v, p, sizeof v);
    return _mm512_castpd_ps(_mm512_set1_pd(v));
}

AI void dot32(int type, int nt, const uint8_t *w, const struct kq8_x *x, int t, float *y, int64_t ldy) {
    const size_t bs = bsz32(type);
    const int64_t nb = x->nb;
    const __m512i ilv = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i k128 = _mm512_set1_epi8((char)0x80);
    __m512 acc[TG];
    const uint8_t *xq[TG];
    const float *dx[TG];
    for (int j = 0; j < nt; j++) {
        acc[j] = _mm512_setzero_ps();
        xq[j] = kq8_qu(x, t + j);
        dx[j] = kq8_d(x, t + j);
    }
    for (int64_t b = 0; b < nb; b += 2) {
        const uint8_t *p = w + (size_t)b * bs;
        _mm_prefetch((const char *)p + PF, _MM_HINT_T0);
        int two = b + 1 < nb;
        __m512i wq = _mm512_permutexvar_epi32(
            ilv, join(unpack32(type, p), two ? unpack32(type, p + bs) : _mm256_setzero_si256()));
        float dw[2] = {h2f(p), two ? h2f(p + bs) : 0.0f};
        __m512 dwv = pair_ps(dw);
        /* -128 * (sum of the lane's weights): removes the +128 of x exactly */
        __m512i neg = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, wq));
        for (int j = 0; j < nt; j++) {
            __m512i xv = _mm512_loadu_si512((const void *)(xq[j] + 32 * b));
            __m512 sc = _mm512_mul_ps(dwv, pair_ps(dx[j] + b));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg, xv, wq)), sc, acc[j]);
        }
    }
    for (int j = 0; j < nt; j++)
        y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]);
}

/* ---------------------------------------------------------------- K-quants */

AI size_t bsz256(int type) { return type == BE_Q4_K ? 144 : (type == BE_Q5_K ? 176 : 210); }

AI int hsum_i32x8(__m256i v) {
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, _MM_SHUFFLE(1, 0, 3, 2)));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(a);
}

/* One super-block, unpacked: u[4] (64 elements each), per-lane-group scales
 * scf (16 floats, chunk i uses lanes idx(i) of it), the int16 weights mv of the
 * 16 activation sums in B, and the coefficients d (of acc) and c (of B). */
struct sb {
    __m512i u[4];
    __m512 scf;
    __m256i mv;
    float d, c;
};

AI void unpack_k45(int type, const uint8_t *p, struct sb *s) {
    int sc[8], m[8];
    for (int j = 0; j < 8; j++)
        kcpu_k_scale_min(j, p + 4, &sc[j], &m[j]);
    s->d = h2f(p);
    s->c = h2f(p + 2);
    s->scf = _mm512_cvtepi32_ps(_mm512_setr_epi32(sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6],
                                                  sc[7], 0, 0, 0, 0, 0, 0, 0, 0));
    s->mv = _mm256_setr_epi16((short)m[0], (short)m[0], (short)m[1], (short)m[1], (short)m[2],
                              (short)m[2], (short)m[3], (short)m[3], (short)m[4], (short)m[4],
                              (short)m[5], (short)m[5], (short)m[6], (short)m[6], (short)m[7],
                              (short)m[7]);
    const uint8_t *qs = p + (type == BE_Q5_K ? 48 : 16);
    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16)), mask = _mm256_set1_epi8(15);
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * i));
        __m512i u = join(_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask));
        if (type == BE_Q5_K) {
            __mmask64 hb = (__mmask64)_mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * i)))) |
                           (__mmask64)_mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * i + 1))))
                               << 32;
            u = _mm512_mask_add_epi8(u, hb, u, _mm512_set1_epi8(16));
        }
        s->u[i] = u;
    }
}

AI void unpack_q6k(const uint8_t *p, struct sb *s) {
    const uint8_t *ql = p, *qh = p + 128;
    __m128i sc8 = _mm_loadu_si128((const __m128i *)(p + 192));
    s->d = h2f(p + 208);
    s->c = s->d;
    s->scf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8));
    s->mv = _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5); /* 32 * sc */
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        __m512i z = _mm512_loadu_si512((const void *)(ql + 64 * h));
        __m256i H = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
        __m512i h01 = _mm512_and_si512(join(H, _mm256_srli_epi16(H, 2)), m2);
        __m512i h23 = _mm512_and_si512(join(_mm256_srli_epi16(H, 4), _mm256_srli_epi16(H, 6)), m2);
        s->u[2 * h] = _mm512_or_si512(_mm512_and_si512(z, m4), _mm512_slli_epi16(h01, 4));
        s->u[2 * h + 1] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(z, 4), m4), _mm512_slli_epi16(h23, 4));
    }
}

/* lane -> scale index of chunk i: Q4_K/Q5_K 8 lanes per 32-element sub-block,
 * Q6_K 4 lanes per 16-element group */
AI __m512i sc_idx(int type, int i) {
    __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (type == BE_Q6_K)
        return _mm512_add_epi32(_mm512_set1_epi32(4 * i), _mm512_srli_epi32(lane, 2));
    return _mm512_add_epi32(_mm512_set1_epi32(2 * i), _mm512_srli_epi32(lane, 3));
}

AI void dot256(int type, int nt, const uint8_t *w, const struct kq8_x *x, int t, float *y, int64_t ldy) {
    const size_t bs = bsz256(type);
    __m512 acc[TG];
    float mac[TG];
    const int8_t *xq[TG];
    const float *dx[TG];
    const int16_t *xs[TG];
    for (int j = 0; j < nt; j++) {
        acc[j] = _mm512_setzero_ps();
        mac[j] = 0.0f;
        xq[j] = kq8_qs(x, t + j);
        dx[j] = kq8_d(x, t + j);
        xs[j] = kq8_bs(x, t + j);
    }
    for (int64_t b = 0; b < x->nb; b++) {
        const uint8_t *p = w + (size_t)b * bs;
        for (int o = 0; o < (int)bs; o += 64)
            _mm_prefetch((const char *)p + PF + o, _MM_HINT_T0);
        struct sb s;
        if (type == BE_Q6_K)
            unpack_q6k(p, &s);
        else
            unpack_k45(type, p, &s);
        for (int j = 0; j < nt; j++) {
            __m512 sv = _mm512_mul_ps(_mm512_set1_ps(s.d * dx[j][b]), s.scf);
            const int8_t *q = xq[j] + 256 * b;
            for (int i = 0; i < 4; i++) {
                __m512i xv = _mm512_loadu_si512((const void *)(q + 64 * i));
                __m512i pi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), s.u[i], xv);
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pi), _mm512_permutexvar_ps(sc_idx(type, i), sv),
                                         acc[j]);
            }
            __m256i bsv = _mm256_loadu_si256((const __m256i *)(xs[j] + 16 * b));
            int B = hsum_i32x8(_mm256_madd_epi16(s.mv, bsv));
            mac[j] = mac[j] + (s.c * dx[j][b]) * (float)B;
        }
    }
    for (int j = 0; j < nt; j++)
        y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]) - mac[j];
}

/* ---------------------------------------------------------------- dispatch */

/* one row, tokens t..t+nt-1 (nt <= TG), specialised per type and nt */
#define ROW_FN(name, dot, TYPE)                                                              \
    static void name(const struct kq8_mm *mm, int64_t r, int t, int nt) {                   \
        const uint8_t *w = mm->w + (size_t)r * mm->nb1;                                      \
        float *y = mm->y + (size_t)t * mm->ldy + r;                                          \
        switch (nt) {                                                                        \
        case 1: dot(TYPE, 1, w, mm->x, t, y, mm->ldy); break;                                \
        case 2: dot(TYPE, 2, w, mm->x, t, y, mm->ldy); break;                                \
        case 3: dot(TYPE, 3, w, mm->x, t, y, mm->ldy); break;                                \
        default: dot(TYPE, 4, w, mm->x, t, y, mm->ldy); break;                               \
        }                                                                                    \
    }
ROW_FN(row_q4_0, dot32, BE_Q4_0)
ROW_FN(row_q5_0, dot32, BE_Q5_0)
ROW_FN(row_q8_0, dot32, BE_Q8_0)
ROW_FN(row_q4_k, dot256, BE_Q4_K)
ROW_FN(row_q5_k, dot256, BE_Q5_K)
ROW_FN(row_q6_k, dot256, BE_Q6_K)

void kq8_rows_vnni(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len) {
    (void)scr, (void)scr_len;
    void (*row)(const struct kq8_mm *, int64_t, int, int);
    switch (mm->type) {
    case BE_Q4_0: row = row_q4_0; break;
    case BE_Q5_0: row = row_q5_0; break;
    case BE_Q8_0: row = row_q8_0; break;
    case BE_Q4_K: row = row_q4_k; break;
    case BE_Q5_K: row = row_q5_k; break;
    case BE_Q6_K: row = row_q6_k; break;
    default: return;
    }
    for (int t = t0; t < t1; t += TG) {
        int nt = t1 - t < TG ? t1 - t : TG;
        for (int64_t r = r0; r < r1; r++)
            row(mm, r, t, nt);
    }
}
