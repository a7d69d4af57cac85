/* rowops.c - the sampler's row passes: scalar references (the generic table)
 * and the choice of table for this CPU. Contracts are in kernels/rowops.h; the
 * AVX2 table is in rowops_avx2.c.
 *
 * exp method: z = k ln2 + r with k the nearest integer to z / ln 2 (adding
 * 1.5 * 2^23 rounds it and leaves k in the low mantissa bits), a two-part
 * ln 2 so that k * LN2_HI is exact, exp(r) by its degree-7 Taylor polynomial
 * on |r| <= ln2/2 (truncation error under 6e-9 relative), and 2^k written
 * into the exponent bits. Compiled with -ffp-contract=off: every mul and add
 * below rounds on its own, on every architecture.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/rowops_internal.h"
#include "kernels/rowops.h"

static double exp_block_ref(float *dst, const float *src, int32_t n, float max, float inv_t) {
    double a0 = 0, a1 = 0;
    for (int32_t i = 0; i < n; i++) {
        float z = (src[i] - max) * inv_t;
        if (!(z > KCPU_EXP_LO)) { /* NaN, -inf, underflow */
            dst[i] = 0.0f;
            continue;
        }
        if (z > 0.0f)
            z = 0.0f;
        float t = z * KCPU_EXP_LOG2E + KCPU_EXP_SHIFTER;
        float kf = t - KCPU_EXP_SHIFTER;
        int32_t tb;
        memcpy(&tb, &t, sizeof(tb));
        float r = (z - kf * KCPU_EXP_LN2_HI) - kf * KCPU_EXP_LN2_LO;
        float poly = 1.0f / 5040.0f;
        poly = poly * r + 1.0f / 720.0f;
        poly = poly * r + 1.0f / 120.0f;
        poly = poly * r + 1.0f / 24.0f;
        poly = poly * r + 1.0f / 6.0f;
        poly = poly * r + 0.5f;
        poly = poly * r + 1.0f;
        poly = poly * r + 1.0f;
        int32_t bits = (tb - KCPU_EXP_SHIFTER_BITS + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof(scale));
        dst[i] = poly * scale;
        if (i & 1)
            a1 += dst[i];
        else
            a0 += dst[i];
    }
    return a0 + a1;
}

static float row_max_ref(const float *x, int32_t n, int *dirty) {
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        float v = x[i];
        if (!(v <= FLT_MAX))
            *dirty = 1;
        if (v > m)
            m = v;
    }
    return m;
}

static double masked_sum_ref(const float *p, int32_t n, int32_t base, float thr, float pp,
                             int32_t pj) {
    double a0 = 0, a1 = 0;
    for (int32_t i = 0; i < n; i++) {
        float v = p[i];
        if (v >= thr && (v > pp || (v == pp && base + i < pj))) {
            if (i & 1)
                a1 += v;
            else
                a0 += v;
        }
    }
    return a0 + a1;
}

static int32_t compact_ge_ref(const float *x, int32_t n, int32_t base, float thr, float *dst_v,
                              int32_t *dst_id) {
    int32_t w = 0;
    for (int32_t i = 0; i < n; i++) {
        if (x[i] >= thr) {
            dst_v[w] = x[i];
            dst_id[w] = base + i;
            w++;
        }
    }
    return w;
}

const struct kcpu_rowops kcpu_rowops_generic = {
    .name = "generic",
    .exp_block = exp_block_ref,
    .row_max = row_max_ref,
    .masked_sum = masked_sum_ref,
    .compact_ge = compact_ge_ref,
};

/* ---------------------------------------------------------------- choice */

const struct kcpu_rowops *kcpu_rowops_find(const char *name) {
    if (!name)
        return NULL;
    if (strcmp(name, kcpu_rowops_generic.name) == 0)
        return &kcpu_rowops_generic;
#if defined(__x86_64__)
    /* the AVX2 matmul ISA is usable exactly when AVX2 and FMA are */
    if (strcmp(name, kcpu_rowops_avx2.name) == 0)
        return kcpu_isa_find("avx2") ? &kcpu_rowops_avx2 : NULL;
#endif
    return NULL;
}

const struct kcpu_rowops *kcpu_rowops_best(void) {
    static const struct kcpu_rowops *chosen; /* NULL until the first call */
    const struct kcpu_rowops *t = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (!t) {
        /* benign race: every thread computes the same answer */
        t = kcpu_rowops_find("avx2");
        if (!t)
            t = &kcpu_rowops_generic;
        __atomic_store_n(&chosen, t, __ATOMIC_RELEASE);
    }
    return t;
}
