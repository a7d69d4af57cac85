/* sampler_internal.h - sampler internals shared with their unit test only
 * (engine/sampler.c, tests/unit/test_sampler.c). Not part of the engine's
 * interface: nothing else may include it.
 */
#ifndef SS_SAMPLER_INTERNAL_H
#define SS_SAMPLER_INTERNAL_H

#include <stdint.h>

/* A pivot mass below every mass: kcpu_rowops.masked_sum with pp = SMP_NO_PIVOT
 * excludes nothing by rank. */
#define SMP_NO_PIVOT (-1.0f)

/* The best entries by (value descending, id ascending), without sorting: a
 * three-level radix selection on the float bits. Candidates src_v[n] with ids
 * src_id[n] (src_id NULL: id = index) come in increasing id order. Keeps, in
 * dst (which may alias src: writes never overtake reads), still in id order:
 *   weighted == 0: the min(k, n) best entries (at least one);
 *   weighted != 0: the shortest best-first prefix whose values sum to at
 *                  least target (values are non-negative masses), at least
 *                  one entry, all of them if rounding leaves the sum short;
 *                  target <= 0 keeps only the best entry.
 * Returns the number kept (0 for n <= 0). Values must not be NaN.
 * dst_v/dst_id have room for n entries. Pure; any thread. */
int32_t smp_rank_select(const float *src_v, const int32_t *src_id, int32_t n, float *dst_v,
                        int32_t *dst_id, int weighted, int32_t k, double target);

/* The k best logits (0 < k < n; by value, then lower id) into wv/wid, in id
 * order; returns k. Takes the sampled-threshold path (a strided sample, one
 * compaction pass, then smp_rank_select) where n is large, and falls back to
 * the full selection if the sample was unlucky: always exact. wv/wid have room
 * for n entries. Pure; any thread. */
int32_t smp_select_top_k(const float *logits, int32_t n, int32_t k, float *wv, int32_t *wid);

/* splitmix64: advances *x and returns the next output (the sampler's seeding
 * step; the unit test draws its own inputs from it too). */
uint64_t smp_splitmix64_next(uint64_t *x);

#endif
