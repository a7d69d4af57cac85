/* matmul_q8_avx2.c - int8 dot products of quantised weights with quantised
 * activations (q8.h) on plain AVX2 (compiled with -mavx2 -mfma -mf16c
 * -ffp-contract=off; only called after kq8_available() checked the CPU).
 *
 * AVX2 has no vpdpbusd: vpmaddubsw multiplies unsigned by signed bytes and
 * adds adjacent pairs into int16 with saturation, vpmaddwd adds int16 pairs
 * into int32. Every sum below stays inside int16 before vpmaddwd, so the
 * integer part is exact:
 *   Q4_0 / Q5_0: x stored +128 (0..255) times the signed weight (|w| <= 16):
 *     |pair| <= 2*255*16; the lane starts at -128 * (sum of its weights).
 *   Q8_0: |w| <= 128 would overflow that, so |w| times x with w's sign moved
 *     onto x (x - 128, |x| <= 127): |pair| <= 2*128*127 = 32512.
 *   K-quants: the stored 4/5/6-bit weight (unsigned, <= 63) times the signed x:
 *     |pair| <= 2*63*127; vpmaddwd by the sub-block scale adds the sub-block's
 *     pairs into int32 lanes; mins / the Q6_K offset are removed exactly in
 *     integers through the per-16 activation sums (q8.h), as on AVX-512.
 *
 * fp32 combination, fixed for every (row, token) pair whatever n is:
 *   acc (8 lanes) = +0
 *   32-blocks: per block pair (2p, 2p+1), in order:
 *       acc[l] = fma((float)isum[l], scale[l], acc[l]), lanes alternating
 *       between the pair's blocks (x's interleave), scale = dw*dx
 *   K-quants: per super-block, in order: acc[l] = fma((float)isum[l], d*dx,
 *       acc[l]) with isum the exact scale-weighted sum, and mac[l] =
 *       fma((float)B[l], c*dx, mac[l]) with B[l] the exact integer sum of the
 *       lane's min (Q4_K/Q5_K: c = dmin) or offset (Q6_K: c = d, 32*sc*bsum) terms
 *   y = hsum8(acc) [- hsum8(mac)]  (hsum8: (l, l+4), (l, l+2), (0, 1))
 * Tokens are processed four at a time sharing the unpacked weights; a token's
 * arithmetic never involves another token. The lane order differs from the
 * AVX-512 kernel's, so the two ISAs may differ in the last bits (each is
 * deterministic on its own: kcpu.h).
 */
#if defined(__GNUC__) && !defined(__clang__)
/* GCC turned dot32's zeroing of acc[] into `rep stos` on the stack, run once
 * per (row, token group): 8.5% of the int8 Q5_0 kernel at 512 tokens and K =
 * 640 (perf annotate); without it 1.2x at n = 512, the same bits. */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

#define AI static inline __attribute__((always_inline))
#define TG 4    /* tokens sharing one weight unpack */
#define PF 1024 /* weight prefetch distance in bytes (the decode stream) */

AI float h2f(const uint8_t *p) { return _cvtsh_ss(kcpu_rd16(p)); }

AI float hsum8(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* low and high nibbles of 16 bytes as 32 bytes in element order */
AI __m256i nib16(const uint8_t *p) {
    __m128i q = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, m)),
                                   _mm_and_si128(_mm_srli_epi16(q, 4), m), 1);
}

/* byte i = 0xFF if bit i of the 32-bit word at p is set, else 0 */
AI __m256i bits32(const uint8_t *p) {
    __m256i v = _mm256_set1_epi32((int)kcpu_rd32(p));
    v = _mm256_shuffle_epi8(v, _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL,
                                                  0x0202020202020202LL, 0x0303030303030303LL));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* ---------------------------------------------------------------- 32-blocks */

AI size_t bsz32(int type) { return type == BE_Q4_0 ? 18 : (type == BE_Q5_0 ? 22 : 34); }

/* signed weights of one block, element order */
AI __m256i unpack32(int type, const uint8_t *p) {
    if (type == BE_Q4_0)
        return _mm256_sub_epi8(nib16(p + 2), _mm256_set1_epi8(8));
    if (type == BE_Q5_0) {
        __m256i hi = _mm256_and_si256(bits32(p + 2), _mm256_set1_epi8(16));
        return _mm256_sub_epi8(_mm256_or_si256(nib16(p + 6), hi), _mm256_set1_epi8(16));
    }
    return _mm256_loadu_si256((const __m256i *)(p + 2));
}

/* broadcast of the pair (a, b) to lanes (a, b, a, b, ...) */
AI __m256 pair_ps(const float *p) {
    double v;
    memcpy(&v, p, sizeof v);
    return _mm256_castpd_ps(_mm256_set1_pd(v));
}

/* One block pair of a row, unpacked for the per-token step: Q4_0 / Q5_0:
 * a, b = the pair's signed weights in x's order, c = -128 * (sum of each
 * lane's weights); Q8_0: a, b = |w|, c, d = w (its signs). dw = the two
 * scales, alternating over the lanes (x's order). */
struct pair32 {
    __m256i a, b, c, d;
    __m256 dw;
};

_Static_assert(sizeof(struct pair32) == 160, "KQ8_SCR_BYTES (q8.h) assumes 160 bytes per pair");

/* Q4_0 pair with both blocks present, straight into x's order: the packed
 * nibble bytes of the two blocks interleaved by 4-byte groups (byte k holds
 * elements k and k + 16), so the low nibbles are wa and the high ones wb: the
 * same bytes as unpack32 + interleave with fewer operations (1.2x at n = 1 in
 * `bench_kernels micro 2 1 200000 avx2+int8`). Q5_0's fifth bits taken the
 * same way (one shuffle of both qh words) measured +4% at n = 1 and -3% at
 * n = 16, so Q5_0 keeps the general path. */
AI void pair_q4_0(const uint8_t *p, __m256i *wa, __m256i *wb) {
    __m128i q0 = _mm_loadu_si128((const __m128i *)(p + 2)), q1 = _mm_loadu_si128((const __m128i *)(p + 18 + 2));
    __m256i c = _mm256_setr_m128i(_mm_unpacklo_epi32(q0, q1), _mm_unpackhi_epi32(q0, q1));
    const __m256i m4 = _mm256_set1_epi8(15), k8 = _mm256_set1_epi8(8);
    *wa = _mm256_sub_epi8(_mm256_and_si256(c, m4), k8);
    *wb = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(c, 4), m4), k8);
}

AI void unpack_pair(int type, const uint8_t *p, int two, struct pair32 *u) {
    const size_t bs = bsz32(type);
    __m256i wa, wb;
    if (two && type == BE_Q4_0) {
        pair_q4_0(p, &wa, &wb);
    } else {
        __m256i w0 = unpack32(type, p), w1 = two ? unpack32(type, p + bs) : _mm256_setzero_si256();
        /* the pair in x's order: 4-byte groups alternating between the blocks */
        __m256i lo = _mm256_unpacklo_epi32(w0, w1), hi = _mm256_unpackhi_epi32(w0, w1);
        wa = _mm256_permute2x128_si256(lo, hi, 0x20), wb = _mm256_permute2x128_si256(lo, hi, 0x31);
    }
    float dw[2] = {h2f(p), two ? h2f(p + bs) : 0.0f};
    u->dw = pair_ps(dw);
    if (type == BE_Q8_0) {
        u->a = _mm256_abs_epi8(wa), u->b = _mm256_abs_epi8(wb), u->c = wa, u->d = wb;
        return;
    }
    const __m256i one8 = _mm256_set1_epi8(1);
    __m256i ws = _mm256_add_epi16(_mm256_maddubs_epi16(one8, wa), _mm256_maddubs_epi16(one8, wb));
    u->a = wa, u->b = wb, u->c = _mm256_madd_epi16(ws, _mm256_set1_epi16(-128));
}

/* acc += the pair's products with x (64 quantised bytes at q, scales dx) */
AI __m256 step_pair(int type, const struct pair32 *u, const uint8_t *q, const float *dx, __m256 acc) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i xa = _mm256_loadu_si256((const __m256i *)q), xb = _mm256_loadu_si256((const __m256i *)(q + 32)), is;
    if (type == BE_Q8_0) {
        const __m256i k128 = _mm256_set1_epi8((char)0x80);
        xa = _mm256_xor_si256(xa, k128), xb = _mm256_xor_si256(xb, k128);
        __m256i pa = _mm256_madd_epi16(_mm256_maddubs_epi16(u->a, _mm256_sign_epi8(xa, u->c)), ones16);
        __m256i pb = _mm256_madd_epi16(_mm256_maddubs_epi16(u->b, _mm256_sign_epi8(xb, u->d)), ones16);
        is = _mm256_add_epi32(pa, pb);
    } else {
        __m256i pp = _mm256_add_epi16(_mm256_maddubs_epi16(xa, u->a), _mm256_maddubs_epi16(xb, u->b));
        is = _mm256_add_epi32(_mm256_madd_epi16(pp, ones16), u->c);
    }
    __m256 sc = _mm256_mul_ps(u->dw, pair_ps(dx));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), sc, acc);
}

/* y[j*ldy] = row . token t+j (j < nt), the row read from w (pre NULL) or
 * from its unpacked pairs pre[nb/2 rounded up] (the same operations) */
AI void dot32(int type, int nt, const uint8_t *w, const void *prev, const struct kq8_x *x, int t,
              float *y, int64_t ldy) {
    const struct pair32 *pre = prev;
    const size_t bs = bsz32(type);
    const int64_t nb = x->nb;
    __m256 acc[TG];
    const uint8_t *xq[TG];
    const float *dx[TG];
    for (int j = 0; j < nt; j++) {
        acc[j] = _mm256_setzero_ps();
        xq[j] = kq8_qu(x, t + j);
        dx[j] = kq8_d(x, t + j);
    }
    for (int64_t b = 0; b < nb; b += 2) {
        if (pre) {
            for (int j = 0; j < nt; j++)
                acc[j] = step_pair(type, pre + b / 2, xq[j] + 32 * b, dx[j] + b, acc[j]);
            continue;
        }
        struct pair32 u;
        const uint8_t *p = w + (size_t)b * bs;
        _mm_prefetch((const char *)p + PF, _MM_HINT_T0);
        unpack_pair(type, p, b + 1 < nb, &u);
        for (int j = 0; j < nt; j++)
            acc[j] = step_pair(type, &u, xq[j] + 32 * b, dx[j] + b, acc[j]);
    }
    for (int j = 0; j < nt; j++)
        y[(size_t)j * ldy] = hsum8(acc[j]);
}

/* Four rows read from the weights (w, each next one nb1 bytes on) times one
 * token t, into y[0..3]: per row the operations of dot32 with nt = 1, the
 * token's quants and scales loaded once for the four rows (decode). */
AI void dot32r4(int type, const uint8_t *w, size_t nb1, const struct kq8_x *x, int t, float *y) {
    const size_t bs = bsz32(type);
    const int64_t nb = x->nb;
    const uint8_t *xq = kq8_qu(x, t);
    const float *dx = kq8_d(x, t);
    const size_t pf = 2 * kcpu_pf_dist(4 * nb1); /* two groups' distance ahead */
    const uint8_t *pp = w + pf, *pend = w + pf + 4 * nb1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t b = 0; b < nb; b += 2) {
        const uint8_t *p = w + (size_t)b * bs;
        const int two = b + 1 < nb;
        struct pair32 u0, u1, u2, u3;
        for (int k = 0; k < 5 && pp < pend; k++, pp += 64) /* the group pf ahead, in order */
            _mm_prefetch((const char *)pp, _MM_HINT_T1);
        unpack_pair(type, p, two, &u0);
        unpack_pair(type, p + nb1, two, &u1);
        unpack_pair(type, p + 2 * nb1, two, &u2);
        unpack_pair(type, p + 3 * nb1, two, &u3);
        acc0 = step_pair(type, &u0, xq + 32 * b, dx + b, acc0);
        acc1 = step_pair(type, &u1, xq + 32 * b, dx + b, acc1);
        acc2 = step_pair(type, &u2, xq + 32 * b, dx + b, acc2);
        acc3 = step_pair(type, &u3, xq + 32 * b, dx + b, acc3);
    }
    for (; pp < pend; pp += 64)
        _mm_prefetch((const char *)pp, _MM_HINT_T1);
    y[0] = hsum8(acc0);
    y[1] = hsum8(acc1);
    y[2] = hsum8(acc2);
    y[3] = hsum8(acc3);
}

/* Two unpacked rows (pairs at pre and pre + np) times tokens t..t+nt-1:
 * per (row, token) the operations of dot32, each token's quants and scales
 * loaded once for both rows. */
AI void dot32x2(int type, int nt, const struct pair32 *pre, int64_t np, const struct kq8_x *x, int t,
                float *y, int64_t ldy) {
    __m256 acc0[TG], acc1[TG];
    const uint8_t *xq[TG];
    const float *dx[TG];
    for (int j = 0; j < nt; j++) {
        acc0[j] = _mm256_setzero_ps();
        acc1[j] = _mm256_setzero_ps();
        xq[j] = kq8_qu(x, t + j);
        dx[j] = kq8_d(x, t + j);
    }
    for (int64_t b = 0; b < x->nb; b += 2) {
        const struct pair32 *u0 = pre + b / 2, *u1 = pre + np + b / 2;
        for (int j = 0; j < nt; j++) {
            acc0[j] = step_pair(type, u0, xq[j] + 32 * b, dx[j] + b, acc0[j]);
            acc1[j] = step_pair(type, u1, xq[j] + 32 * b, dx[j] + b, acc1[j]);
        }
    }
    for (int j = 0; j < nt; j++) {
        y[(size_t)j * ldy] = hsum8(acc0[j]);
        y[(size_t)j * ldy + 1] = hsum8(acc1[j]);
    }
}

/* ---------------------------------------------------------------- K-quants */

AI size_t bsz256(int type) { return type == BE_Q4_K ? 144 : (type == BE_Q5_K ? 176 : 210); }

/* One super-block, unpacked: u[8] (32 elements each, element order), the
 * int16 scale vector of each chunk (sub-block scales over its pair sums), the
 * int16 weights mv of the 16 activation sums in B, and the coefficients d (of
 * the scaled sum) and c (of B). */
struct sb {
    __m256i u[8], sv[8];
    __m256i mv;
    float d, c;
};

/* shuffle control: every int16 lane of a 128-bit half takes word i of it */
AI __m256i word_ctl(int lo, int hi) {
    return _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 + 0x0202 * lo)), _mm_set1_epi16((short)(0x0100 + 0x0202 * hi)));
}

AI void unpack_k45(int type, const uint8_t *p, struct sb *s) {
    uint32_t sm[4];
    kcpu_k_scale_min_words(p + 4, sm);
    __m128i sc8 = _mm_cvtepu8_epi16(_mm_setr_epi32((int)sm[0], (int)sm[1], 0, 0));
    __m128i m8 = _mm_cvtepu8_epi16(_mm_setr_epi32((int)sm[2], (int)sm[3], 0, 0));
    __m256i scb = _mm256_broadcastsi128_si256(sc8);
    s->d = h2f(p);
    s->c = h2f(p + 2);
    s->mv = _mm256_setr_m128i(_mm_unpacklo_epi16(m8, m8), _mm_unpackhi_epi16(m8, m8)); /* m0 m0 m1 m1 .. */
    const uint8_t *qs = p + (type == BE_Q5_K ? 48 : 16);
    const __m256i mask = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16));
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * i));
        __m256i lo = _mm256_and_si256(q, mask), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
        if (type == BE_Q5_K) { /* bit s of each byte: srli_epi16 keeps it inside its byte for s < 8 */
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * i), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * i + 1), one), 4));
        }
        s->u[2 * i] = lo;
        s->u[2 * i + 1] = hi;
        s->sv[2 * i] = _mm256_shuffle_epi8(scb, word_ctl(2 * i, 2 * i));
        s->sv[2 * i + 1] = _mm256_shuffle_epi8(scb, word_ctl(2 * i + 1, 2 * i + 1));
    }
}

AI void unpack_q6k(const uint8_t *p, struct sb *s) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)(p + 192));
    __m128i lo8 = _mm_cvtepi8_epi16(sc8), hi8 = _mm_cvtepi8_epi16(_mm_srli_si128(sc8, 8));
    s->d = h2f(p + 208);
    s->c = s->d;
    s->mv = _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5); /* 32 * sc */
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = p + 64 * h, *qhp = p + 128 + 32 * h;
        __m256i a = _mm256_loadu_si256((const __m256i *)ql), b = _mm256_loadu_si256((const __m256i *)(ql + 32));
        __m256i H = _mm256_loadu_si256((const __m256i *)qhp);
        __m256i scb = _mm256_broadcastsi128_si256(h ? hi8 : lo8); /* scales 8h .. 8h+7 */
        for (int k = 0; k < 4; k++) { /* elements 128h + 32k + l, l < 32 */
            __m256i src = k & 1 ? b : a;
            __m256i low = k < 2 ? _mm256_and_si256(src, m4) : _mm256_and_si256(_mm256_srli_epi16(src, 4), m4);
            __m256i top = _mm256_and_si256(_mm256_srli_epi16(H, 2 * k), m2);
            s->u[4 * h + k] = _mm256_or_si256(low, _mm256_slli_epi16(top, 4));
            /* the chunk's two runs of 16 use scales 8h + 2k and 8h + 2k + 1 */
            s->sv[4 * h + k] = _mm256_shuffle_epi8(scb, word_ctl(2 * k, 2 * k + 1));
        }
    }
}

_Static_assert(sizeof(struct sb) <= 4 * sizeof(struct pair32),
               "KQ8_SCR_BYTES (q8.h) assumes a super-block unpacks into at most 4 pairs' bytes");

AI void unpack_sb(int type, const uint8_t *p, struct sb *s) {
    if (type == BE_Q6_K)
        unpack_q6k(p, s);
    else
        unpack_k45(type, p, s);
}

/* acc, mac of one (row, token) += super-block u times the token's block at q
 * (its 16 sums at bs, its scale dxb) */
AI void step_sb(const struct sb *u, const int8_t *q, const int16_t *bs, float dxb, __m256 *acc, __m256 *mac) {
    __m256i is = _mm256_setzero_si256();
    for (int i = 0; i < 8; i++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(q + 32 * i));
        is = _mm256_add_epi32(is, _mm256_madd_epi16(_mm256_maddubs_epi16(u->u[i], xv), u->sv[i]));
    }
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(u->d * dxb), *acc);
    __m256i bsv = _mm256_loadu_si256((const __m256i *)bs);
    *mac = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(u->mv, bsv)), _mm256_set1_ps(u->c * dxb), *mac);
}

/* y[j*ldy] = row . token t+j (j < nt), the row read from w (pre NULL) or from
 * its unpacked super-blocks pre[nb] (the same operations) */
AI void dot256(int type, int nt, const uint8_t *w, const void *pre, const struct kq8_x *x, int t,
               float *y, int64_t ldy) {
    const size_t bs = bsz256(type);
    const struct sb *ps = pre;
    __m256 acc[TG], mac[TG];
    const int8_t *xq[TG];
    const float *dx[TG];
    const int16_t *xs[TG];
    for (int j = 0; j < nt; j++) {
        acc[j] = _mm256_setzero_ps();
        mac[j] = _mm256_setzero_ps();
        xq[j] = kq8_qs(x, t + j);
        dx[j] = kq8_d(x, t + j);
        xs[j] = kq8_bs(x, t + j);
    }
    for (int64_t b = 0; b < x->nb; b++) {
        struct sb s;
        const struct sb *u = ps ? ps + b : &s;
        if (!ps) {
            const uint8_t *p = w + (size_t)b * bs;
            for (int o = 0; o < (int)bs; o += 64)
                _mm_prefetch((const char *)p + PF + o, _MM_HINT_T0);
            unpack_sb(type, p, &s);
        }
        for (int j = 0; j < nt; j++)
            step_sb(u, xq[j] + 256 * b, xs[j] + 16 * b, dx[j][b], &acc[j], &mac[j]);
    }
    for (int j = 0; j < nt; j++)
        y[(size_t)j * ldy] = hsum8(acc[j]) - hsum8(mac[j]);
}

/* Two unpacked rows (super-blocks at pre and pre + nsb) times tokens t, t+1
 * (nt <= 2: four accumulator pairs): per (row, token) the operations of
 * dot256, each token's quants loaded once for both rows. */
AI void dot256x2(int nt, const struct sb *pre, int64_t nsb, const struct kq8_x *x, int t, float *y,
                 int64_t ldy) {
    __m256 acc0[2], mac0[2], acc1[2], mac1[2];
    for (int j = 0; j < nt; j++)
        acc0[j] = mac0[j] = acc1[j] = mac1[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < x->nb; b++)
        for (int j = 0; j < nt; j++) {
            const int8_t *q = kq8_qs(x, t + j) + 256 * b;
            const int16_t *bs = kq8_bs(x, t + j) + 16 * b;
            float dxb = kq8_d(x, t + j)[b];
            step_sb(pre + b, q, bs, dxb, &acc0[j], &mac0[j]);
            step_sb(pre + nsb + b, q, bs, dxb, &acc1[j], &mac1[j]);
        }
    for (int j = 0; j < nt; j++) {
        y[(size_t)j * ldy] = hsum8(acc0[j]) - hsum8(mac0[j]);
        y[(size_t)j * ldy + 1] = hsum8(acc1[j]) - hsum8(mac1[j]);
    }
}

/* ---------------------------------------------------------------- dispatch */

/* one row, tokens t..t+nt-1 (nt <= TG), specialised per type and nt; pre:
 * the row unpacked (NULL: read from the weights) */
#define ROW_FN(name, dot, TYPE)                                                              \
    static void name(const struct kq8_mm *mm, int64_t r, const void *pre, int t, int nt) {   \
        const uint8_t *w = mm->w + (size_t)r * mm->nb1;                                      \
        float *y = mm->y + (size_t)t * mm->ldy + r;                                          \
        switch (nt) {                                                                        \
        case 1: dot(TYPE, 1, w, pre, mm->x, t, y, mm->ldy); break;                           \
        case 2: dot(TYPE, 2, w, pre, mm->x, t, y, mm->ldy); break;                           \
        case 3: dot(TYPE, 3, w, pre, mm->x, t, y, mm->ldy); break;                           \
        default: dot(TYPE, 4, w, pre, mm->x, t, y, mm->ldy); break;                          \
        }                                                                                    \
    }
ROW_FN(row_q4_0, dot32, BE_Q4_0)
ROW_FN(row_q5_0, dot32, BE_Q5_0)
ROW_FN(row_q8_0, dot32, BE_Q8_0)
ROW_FN(row_q4_k, dot256, BE_Q4_K)
ROW_FN(row_q5_k, dot256, BE_Q5_K)
ROW_FN(row_q6_k, dot256, BE_Q6_K)

/* Rows r, r+1 unpacked (pre, the second row `stride` units further), tokens
 * t..t+nt-1 (nt <= TG for 32-blocks, <= 2 for super-blocks). */
typedef void (*row2_fn)(const struct kq8_mm *mm, int64_t r, const void *pre, int64_t stride, int t, int nt);
#define ROW2_FN(name, TYPE)                                                                  \
    static void name(const struct kq8_mm *mm, int64_t r, const void *pre, int64_t np, int t, int nt) { \
        float *y = mm->y + (size_t)t * mm->ldy + r;                                          \
        switch (nt) {                                                                        \
        case 1: dot32x2(TYPE, 1, pre, np, mm->x, t, y, mm->ldy); break;                      \
        case 2: dot32x2(TYPE, 2, pre, np, mm->x, t, y, mm->ldy); break;                      \
        case 3: dot32x2(TYPE, 3, pre, np, mm->x, t, y, mm->ldy); break;                      \
        default: dot32x2(TYPE, 4, pre, np, mm->x, t, y, mm->ldy); break;                     \
        }                                                                                    \
    }
ROW2_FN(row2_q4_0, BE_Q4_0)
ROW2_FN(row2_q5_0, BE_Q5_0)
ROW2_FN(row2_q8_0, BE_Q8_0)
static void row2_sb(const struct kq8_mm *mm, int64_t r, const void *pre, int64_t nsb, int t, int nt) {
    float *y = mm->y + (size_t)t * mm->ldy + r;
    if (nt == 1)
        dot256x2(1, pre, nsb, mm->x, t, y, mm->ldy);
    else
        dot256x2(2, pre, nsb, mm->x, t, y, mm->ldy);
}

/* Rows [r0, r1) x tokens [t0, t1). With more tokens than one group and room
 * in scr (scr_len bytes, 32-byte aligned), the rows are unpacked once into
 * scr (32-block pairs or K-quant super-blocks) and every token group reads
 * them there, two rows at a time: per (row, token) the same operations as the
 * direct path, so the same bits whatever n is. */
void kq8_rows_avx2(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len) {
    void (*row)(const struct kq8_mm *, int64_t, const void *, int, int);
    row2_fn row2;
    switch (mm->type) {
    case BE_Q4_0: row = row_q4_0, row2 = row2_q4_0; break;
    case BE_Q5_0: row = row_q5_0, row2 = row2_q5_0; break;
    case BE_Q8_0: row = row_q8_0, row2 = row2_q8_0; break;
    case BE_Q4_K: row = row_q4_k, row2 = row2_sb; break;
    case BE_Q5_K: row = row_q5_k, row2 = row2_sb; break;
    case BE_Q6_K: row = row_q6_k, row2 = row2_sb; break;
    default: return;
    }
    const int blk32 = kq8_kind(mm->type) == KQ8_32;
    if (blk32 && t1 - t0 == 1) { /* one token: four rows at a time */
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const uint8_t *w = mm->w + (size_t)r * mm->nb1;
            float *y = mm->y + (size_t)t0 * mm->ldy + r;
            if (mm->type == BE_Q4_0)
                dot32r4(BE_Q4_0, w, mm->nb1, mm->x, t0, y);
            else if (mm->type == BE_Q5_0)
                dot32r4(BE_Q5_0, w, mm->nb1, mm->x, t0, y);
            else
                dot32r4(BE_Q8_0, w, mm->nb1, mm->x, t0, y);
        }
        for (; r < r1; r++)
            row(mm, r, NULL, t0, 1);
        return;
    }
    const int64_t nb = mm->x->nb;
    /* units per row in scr: pairs of 32-blocks, or super-blocks */
    const int64_t nu = blk32 ? (nb + 1) / 2 : nb;
    const size_t usz = blk32 ? sizeof(struct pair32) : sizeof(struct sb);
    uint8_t *pre = NULL;
    if (t1 - t0 > TG && scr && ((uintptr_t)scr & 31) == 0 && (size_t)(r1 - r0) * (size_t)nu * usz <= scr_len) {
        pre = scr;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = mm->w + (size_t)r * mm->nb1;
            if (blk32) {
                struct pair32 *u = (struct pair32 *)pre + (r - r0) * nu;
                for (int64_t b = 0; b < nb; b += 2)
                    unpack_pair(mm->type, w + (size_t)b * bsz32(mm->type), b + 1 < nb, u + b / 2);
            } else {
                struct sb *u = (struct sb *)pre + (r - r0) * nu;
                for (int64_t b = 0; b < nb; b++)
                    unpack_sb(mm->type, w + (size_t)b * bsz256(mm->type), u + b);
            }
        }
    }
    const size_t rstride = (size_t)nu * usz; /* bytes per unpacked row */
    const int tg2 = blk32 ? TG : 2;          /* tokens per two-row call */
    for (int t = t0; t < t1; t += TG) {
        int nt = t1 - t < TG ? t1 - t : TG;
        int64_t r = r0;
        if (pre) /* two rows at a time, x read once for both */
            for (; r + 2 <= r1; r += 2)
                for (int j = 0; j < nt; j += tg2)
                    row2(mm, r, pre + (size_t)(r - r0) * rstride, nu, t + j, nt - j < tg2 ? nt - j : tg2);
        for (; r < r1; r++)
            row(mm, r, pre ? pre + (size_t)(r - r0) * rstride : NULL, t, nt);
    }
}

/* ---------------------------------------------------------------- quantiser */

/* The rule of q8.h for one block of nv*8 floats at s: its scale into *d, its
 * quants (element order, int8) into q. Every step is the scalar quantiser's
 * (quant_act.c) in the same IEEE operations, so the same bytes: max that
 * skips NaN (maxps keeps its second operand when the first is NaN), one
 * division, one multiply, NaN -> 0, the clamp, the same round-half-even. */
AI void quant_blk(const float *s, int nv, float *d, int8_t *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < nv; i++)
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(s + 8 * i)), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float amax = _mm_cvtss_f32(h);
    float dd = amax / 127.0f;
    float id = dd > 0.0f ? 1.0f / dd : 0.0f;
    *d = dd;
    const __m256 vid = _mm256_set1_ps(id), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int i = 0; i < nv; i += 4) {
        __m256i v[4];
        for (int k = 0; k < 4; k++) {
            __m256 t = _mm256_mul_ps(_mm256_loadu_ps(s + 8 * (i + k)), vid);
            t = _mm256_and_ps(t, _mm256_cmp_ps(t, t, _CMP_ORD_Q)); /* NaN -> 0 */
            t = _mm256_max_ps(_mm256_min_ps(t, hi), lo);
            t = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
            v[k] = _mm256_cvtps_epi32(t); /* integral: exact */
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(q + 8 * i), _mm256_permutevar8x32_epi32(p, order));
    }
}

void kq8_quantize_avx2(struct kq8_x *x, const float *src, int t0, int t1) {
    const __m256i k128 = _mm256_set1_epi8((char)0x80);
    for (int t = t0; t < t1; t++) {
        uint8_t *row = x->buf + (size_t)t * x->stride;
        float *d = (float *)row;
        const float *s = src + (size_t)t * (size_t)x->K;
        if (x->kind == KQ8_32) {
            uint8_t *qu = row + x->qs_off;
            for (int64_t b = 0; b < x->nb; b += 2) {
                int8_t qa[32], qb[32] = {0};
                quant_blk(s + b * 32, 4, d + b, qa);
                d[b + 1] = 0.0f;
                if (b + 1 < x->nb)
                    quant_blk(s + (b + 1) * 32, 4, d + b + 1, qb);
                __m256i A = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)qa), k128);
                __m256i B = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)qb), k128);
                __m256i l = _mm256_unpacklo_epi32(A, B), h = _mm256_unpackhi_epi32(A, B);
                _mm256_storeu_si256((__m256i *)(qu + 32 * b), _mm256_permute2x128_si256(l, h, 0x20));
                _mm256_storeu_si256((__m256i *)(qu + 32 * b + 32), _mm256_permute2x128_si256(l, h, 0x31));
            }
            continue;
        }
        int16_t *bs = (int16_t *)(row + x->bs_off);
        int8_t *qs = (int8_t *)(row + x->qs_off);
        for (int64_t b = 0; b < x->nb; b++) {
            quant_blk(s + b * 256, 32, d + b, qs + b * 256);
            for (int c = 0; c < 8; c++) { /* sums of 16: sad of q + 128 over 8 bytes, less 1024 each */
                __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(qs + b * 256 + 32 * c)), k128);
                __m256i sd = _mm256_sad_epu8(u, _mm256_setzero_si256());
                bs[16 * b + 2 * c] = (int16_t)(_mm256_extract_epi64(sd, 0) + _mm256_extract_epi64(sd, 1) - 2048);
                bs[16 * b + 2 * c + 1] = (int16_t)(_mm256_extract_epi64(sd, 2) + _mm256_extract_epi64(sd, 3) - 2048);
            }
        }
    }
}
