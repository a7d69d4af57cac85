/* rowops.h - linear passes over one host-memory row of floats, for the sampler.
 *
 * The sampler (engine/sampler.c) turns a row of logits into a token with a few
 * passes over the whole vocabulary; these are its hot loops. They run on host
 * memory, on whichever thread samples, so they are not backend ops (a backend
 * works on its own memory, one thread at a time): the sampler reaches them
 * through this table, chosen once per process, and never sees an intrinsic or
 * a CPU feature test.
 *
 * Every table computes the same functions; kcpu_rowops_generic holds the scalar
 * references, and each optimised table is tested against them
 * (tests/unit/test_sampler.c). The exp of the AVX2 table fuses multiply-adds,
 * so its values may differ from the reference in the last bit: a seed
 * reproduces its tokens on the same kind of CPU.
 *
 * Thread: everything here may be called from any thread; the tables are
 * constant and the choice is made once, race-free.
 */
#ifndef SS_ROWOPS_H
#define SS_ROWOPS_H

#include <stdint.h>

/* exp arguments at or below this give 0 (and count as not allowed). */
#define KCPU_EXP_LO (-87.0f)

struct kcpu_rowops {
    const char *name; /* "generic" or "avx2" */
    /* dst[i] = exp((src[i] - max) * inv_t) for i < n, given max >= every finite
     * src[i] and 0 <= inv_t < inf; returns the sum of the dst[i], accumulated in
     * double. NaN, -inf and anything <= KCPU_EXP_LO give 0; +inf gives 1.
     * dst may equal src. */
    double (*exp_block)(float *dst, const float *src, int32_t n, float max, float inv_t);
    /* The largest non-NaN value of x[n] (-inf if none); sets *dirty to 1 if an
     * entry is NaN or +inf (leaves it alone otherwise). */
    float (*row_max)(const float *x, int32_t n, int *dirty);
    /* Sum (in double) of the non-negative masses p[i], i < n, that are
     * "allowed": p[i] >= thr and (p[i], base + i) ranks before (pp, pj), ranking
     * by value descending, then index ascending. pp = -1 (below any mass)
     * allows everything >= thr. */
    double (*masked_sum)(const float *p, int32_t n, int32_t base, float thr, float pp, int32_t pj);
    /* Copies the entries of x[n] that are >= thr to dst_v, and base + their
     * index to dst_id, in order; returns how many. dst_v/dst_id have room for n
     * entries and do not overlap x. */
    int32_t (*compact_ge)(const float *x, int32_t n, int32_t base, float thr, float *dst_v,
                          int32_t *dst_id);
};

/* The scalar references (kernels/cpu/rowops.c). */
extern const struct kcpu_rowops kcpu_rowops_generic;

/* The table for this CPU: AVX2 where the CPU has AVX2 and FMA (and the build is
 * for x86-64), else the generic one. Never NULL; the same pointer for the
 * whole process. NOTE: SLIMSERVE_CPU_ISA (the CPU backend's override) does not
 * change it, so a seed samples the same tokens whatever the backend runs. */
const struct kcpu_rowops *kcpu_rowops_best(void);
/* The named table ("generic", "avx2") if compiled in and usable on this CPU,
 * else NULL. For tests and benchmarks. */
const struct kcpu_rowops *kcpu_rowops_find(const char *name);

#endif
