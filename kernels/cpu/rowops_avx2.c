/* rowops_avx2.c - the sampler's row passes, eight lanes at a time (compiled with
 * -mavx2 -mfma -ffp-contract=off; only reached through kcpu_rowops_find, which
 * checks the CPU). Each function computes what its scalar reference in
 * rowops.c computes and hands the tail (n % 8 entries) to that reference.
 * Contracts are in kernels/rowops.h.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>

#include "kernels/cpu/rowops_internal.h"
#include "kernels/rowops.h"

/* Sum of the four double lanes, in a fixed order. */
static double hsum_pd(__m256d a0, __m256d a1) {
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a1));
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

/* Adds the eight floats of e, widened to double, to acc0 (low four) and acc1. */
static inline void acc_ps(__m256d *acc0, __m256d *acc1, __m256 e) {
    *acc0 = _mm256_add_pd(*acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    *acc1 = _mm256_add_pd(*acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

static double exp_block_avx2(float *dst, const float *src, int32_t n, float max, float inv_t) {
    const __m256 vmax = _mm256_set1_ps(max), vit = _mm256_set1_ps(inv_t);
    const __m256 lo = _mm256_set1_ps(KCPU_EXP_LO), zero = _mm256_setzero_ps();
    const __m256 log2e = _mm256_set1_ps(KCPU_EXP_LOG2E);
    const __m256 shifter = _mm256_set1_ps(KCPU_EXP_SHIFTER);
    const __m256 ln2hi = _mm256_set1_ps(KCPU_EXP_LN2_HI), ln2lo = _mm256_set1_ps(KCPU_EXP_LN2_LO);
    const __m256i bias = _mm256_set1_epi32(127 - KCPU_EXP_SHIFTER_BITS);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src + i), vmax), vit);
        __m256 ok = _mm256_cmp_ps(z, lo, _CMP_GT_OQ); /* false for NaN */
        __m256 zc = _mm256_blendv_ps(lo, _mm256_min_ps(z, zero), ok);
        __m256 t = _mm256_fmadd_ps(zc, log2e, shifter);
        __m256 kf = _mm256_sub_ps(t, shifter);
        __m256 r = _mm256_fnmadd_ps(kf, ln2hi, zc);
        r = _mm256_fnmadd_ps(kf, ln2lo, r);
        __m256 poly = _mm256_set1_ps(1.0f / 5040.0f);
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 720.0f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 120.0f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 24.0f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 6.0f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(0.5f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
        __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), bias), 23);
        __m256 e = _mm256_and_ps(_mm256_mul_ps(poly, _mm256_castsi256_ps(bits)), ok);
        _mm256_storeu_ps(dst + i, e);
        acc_ps(&acc0, &acc1, e);
    }
    double s = hsum_pd(acc0, acc1);
    return s + kcpu_rowops_generic.exp_block(dst + i, src + i, n - i, max, inv_t);
}

static float row_max_avx2(const float *x, int32_t n, int *dirty) {
    __m256 vmax = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        vmax = _mm256_max_ps(v, vmax); /* NaN in v: keeps vmax */
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, big, _CMP_NLE_UQ)); /* NaN or > FLT_MAX */
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float m = -INFINITY;
    for (int l = 0; l < 8; l++)
        m = lanes[l] > m ? lanes[l] : m;
    if (_mm256_movemask_ps(bad))
        *dirty = 1;
    float mt = kcpu_rowops_generic.row_max(x + i, n - i, dirty);
    return mt > m ? mt : m;
}

static double masked_sum_avx2(const float *p, int32_t n, int32_t base, float thr, float pp,
                              int32_t pj) {
    const __m256 vthr = _mm256_set1_ps(thr), vpp = _mm256_set1_ps(pp);
    const __m256i vpj = _mm256_set1_epi32(pj), step = _mm256_set1_epi32(8);
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(p + i);
        __m256 before = _mm256_or_ps(
            _mm256_cmp_ps(v, vpp, _CMP_GT_OQ),
            _mm256_and_ps(_mm256_cmp_ps(v, vpp, _CMP_EQ_OQ),
                          _mm256_castsi256_ps(_mm256_cmpgt_epi32(vpj, idx))));
        __m256 m = _mm256_and_ps(before, _mm256_cmp_ps(v, vthr, _CMP_GE_OQ));
        acc_ps(&acc0, &acc1, _mm256_and_ps(v, m));
        idx = _mm256_add_epi32(idx, step);
    }
    double s = hsum_pd(acc0, acc1);
    return s + kcpu_rowops_generic.masked_sum(p + i, n - i, base + i, thr, pp, pj);
}

/* Fast when few entries pass: one compare per eight, a scalar copy per hit. */
static int32_t compact_ge_avx2(const float *x, int32_t n, int32_t base, float thr, float *dst_v,
                               int32_t *dst_id) {
    const __m256 vthr = _mm256_set1_ps(thr);
    int32_t w = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vthr, _CMP_GE_OQ));
        while (mask) {
            int l = __builtin_ctz((unsigned)mask);
            dst_v[w] = x[i + l];
            dst_id[w] = base + i + l;
            w++;
            mask &= mask - 1;
        }
    }
    return w + kcpu_rowops_generic.compact_ge(x + i, n - i, base + i, thr, dst_v + w, dst_id + w);
}

const struct kcpu_rowops kcpu_rowops_avx2 = {
    .name = "avx2",
    .exp_block = exp_block_avx2,
    .row_max = row_max_avx2,
    .masked_sum = masked_sum_avx2,
    .compact_ge = compact_ge_avx2,
};
