/* sampler.c - logits -> token: greedy, top_k, temperature, top_p, min_p, draw;
 * penalties, logit bias and top-N logprobs. Contracts are in sampler.h.
 *
 * NOTE: nothing here sorts the vocabulary. A 262144-entry row costs a handful
 * of linear passes; the hot ones are kernels/rowops.h's (SIMD where the CPU
 * has it, scalar references beside them):
 * - max/argmax, then exp((l - max) / T) with a double sum (one fused pass);
 * - top_k: a strided sample gives a threshold, one vectorised pass keeps the
 *   ~2k+512 entries above it, and rank_select (a three-level radix selection
 *   on the float bits, exact, ties to the lower id) finishes on those;
 * - top_p on a long candidate list: rejection (see draw_top_p), i.e. draw,
 *   then one masked pass tells whether the token is inside the nucleus; on a
 *   short list (top_k) rank_select finds the nucleus exactly by mass;
 * - min_p: a threshold on the unnormalised masses (the top one is exactly 1);
 * - the draw: chunk sums find the chunk, one chunk is walked.
 * Candidates always stay in increasing id order, which settles ties and
 * keeps draws reproducible.
 */
#include "engine/sampler.h"
#include "engine/sampler_internal.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "kernels/rowops.h"

/* ------------------------------------------------------------------------ */
/* RNG: xoshiro256** seeded through splitmix64.                              */

uint64_t smp_splitmix64_next(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(struct smp_state *st) {
    uint64_t *s = st->s;
    uint64_t out = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

double smp_uniform(struct smp_state *st) {
    return (double)(xoshiro_next(st) >> 11) * 0x1.0p-53;
}

void smp_params_default(struct smp_params *p) {
    if (!p)
        return;
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->seed = 0;
    p->has_seed = 0;
}

/* Entropy for unseeded requests: getrandom(), else clock and addresses. */
static uint64_t system_seed(const void *salt) {
    static uint64_t counter;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) == (ssize_t)sizeof(seed))
        return seed;
    struct timespec a = {0}, b = {0};
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t c = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    uint64_t x = (uint64_t)a.tv_sec * 1000000007ull ^ (uint64_t)a.tv_nsec;
    seed = smp_splitmix64_next(&x);
    x ^= (uint64_t)b.tv_nsec + ((uint64_t)(uintptr_t)salt << 16) + c * 0x9e3779b97f4a7c15ull;
    return seed ^ smp_splitmix64_next(&x);
}

void smp_init(struct smp_state *st, const struct smp_params *p) {
    if (!st)
        return;
    uint64_t x = (p && p->has_seed) ? p->seed : system_seed(st);
    for (int i = 0; i < 4; i++)
        st->s[i] = smp_splitmix64_next(&x);
    if ((st->s[0] | st->s[1] | st->s[2] | st->s[3]) == 0)
        st->s[0] = 1; /* the one state xoshiro cannot leave */
}

/* ------------------------------------------------------------------------ */
/* exp and sums: the row passes of kernels/rowops.h (contracts there), in  */
/* the table chosen once for this CPU.                                       */

static double exp_block(float *dst, const float *src, int32_t n, float max, float inv_t) {
    return kcpu_rowops_best()->exp_block(dst, src, n, max, inv_t);
}

static float row_max(const float *x, int32_t n, int *dirty) {
    return kcpu_rowops_best()->row_max(x, n, dirty);
}

static double masked_sum(const float *p, int32_t n, int32_t base, float thr, float pp, int32_t pj) {
    return kcpu_rowops_best()->masked_sum(p, n, base, thr, pp, pj);
}

static int32_t compact_ge(const float *x, int32_t n, float thr, float *dst_v, int32_t *dst_id) {
    return kcpu_rowops_best()->compact_ge(x, n, 0, thr, dst_v, dst_id);
}

#define EXP_CHUNK 1024

/* sum_i exp((src[i] - max) * inv_t) without keeping the terms. */
static double exp_sum(const float *src, int32_t n, float max, float inv_t) {
    float buf[EXP_CHUNK];
    double s = 0;
    for (int32_t i = 0; i < n; i += EXP_CHUNK) {
        int32_t m = n - i < EXP_CHUNK ? n - i : EXP_CHUNK;
        s += exp_block(buf, src + i, m, max, inv_t);
    }
    return s;
}

/* NaN -> -inf, +inf -> FLT_MAX. */
static inline float clean(float v) {
    if (v != v)
        return -INFINITY;
    return v > FLT_MAX ? FLT_MAX : v;
}

/* Largest cleaned value (-inf if none) and its lowest index. */
static float clean_max(const float *x, int32_t n, int32_t *arg) {
    float m = -INFINITY;
    int32_t am = 0;
    for (int32_t i = 0; i < n; i++) {
        float v = clean(x[i]);
        if (v > m) {
            m = v;
            am = i;
        }
    }
    if (arg)
        *arg = am;
    return m;
}

float smp_logsumexp(const float *logits, int32_t n_vocab) {
    if (!logits || n_vocab <= 0)
        return -INFINITY;
    float max = clean_max(logits, n_vocab, NULL);
    if (max == -INFINITY)
        return -INFINITY;
    return (float)((double)max + log(exp_sum(logits, n_vocab, max, 1.0f)));
}

/* ------------------------------------------------------------------------ */
/* rank_select: best entries by (value desc, id asc) without sorting.        */

/* Order-preserving key: a > b as floats <=> fkey(a) > fkey(b); -0 == +0.
 * Values must not be NaN. */
static inline uint32_t fkey(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u << 1) == 0)
        return 0x80000000u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static const int RS_SHIFT[3] = {21, 10, 0};
static const int RS_BITS[3] = {11, 11, 10};
#define RS_MAXB 2048

/* Contract: smp_rank_select in sampler_internal.h.
 *
 *   level L:   [ certain (prefix > fixed) | group (prefix == fixed) ]
 *   histogram the group on the next field, walk buckets from the top until
 *   the count/mass reaches what is still needed -> bucket b; keep certain
 *   entries and group entries in buckets >= b; the new group is bucket b.
 *   After the last field the group is a run of equal values (ties), of which
 *   the first ones (lowest ids) are kept until the goal is met.
 */
static int32_t rank_select(const float *src_v, const int32_t *src_id, int32_t n, float *dst_v,
                           int32_t *dst_id, int weighted, int32_t k, double target) {
    if (n <= 0)
        return 0;
    if (!weighted && k >= n) {
        for (int32_t i = 0; i < n; i++) {
            dst_v[i] = src_v[i];
            dst_id[i] = src_id ? src_id[i] : i;
        }
        return n;
    }
    if (weighted && !(target > 0)) {
        weighted = 0; /* top_p <= 0: just the best one */
        k = 1;
    }
    if (!weighted && k < 1)
        k = 1;

    uint32_t cnt[RS_MAXB];
    double mass[RS_MAXB];
    uint32_t fixed = 0, mask = 0;
    int64_t need_c = k;
    double need_m = target;
    const float *cv = src_v;
    const int32_t *cid = src_id;
    int32_t cn = n;

    for (int lv = 0; lv < 3; lv++) {
        const int sh = RS_SHIFT[lv];
        const uint32_t nb = 1u << RS_BITS[lv], fm = nb - 1;
        memset(cnt, 0, nb * sizeof(cnt[0]));
        if (weighted) {
            memset(mass, 0, nb * sizeof(mass[0]));
            for (int32_t i = 0; i < cn; i++) {
                uint32_t key = fkey(cv[i]);
                if ((key & mask) == fixed) {
                    uint32_t b = (key >> sh) & fm;
                    cnt[b]++;
                    mass[b] += cv[i];
                }
            }
        } else {
            for (int32_t i = 0; i < cn; i++) {
                uint32_t key = fkey(cv[i]);
                if ((key & mask) == fixed)
                    cnt[(key >> sh) & fm]++;
            }
        }
        /* Walk down to the bucket where the goal is reached. */
        int64_t acc_c = 0;
        double acc_m = 0;
        int32_t b = -1, lowest = -1;
        for (int32_t j = (int32_t)fm; j >= 0; j--) {
            if (!cnt[j])
                continue;
            lowest = j;
            acc_c += cnt[j];
            if (weighted)
                acc_m += mass[j];
            if (weighted ? acc_m >= need_m : acc_c >= need_c) {
                b = j;
                break;
            }
        }
        int all = b < 0; /* goal not reached (rounding): keep the whole group */
        if (all)
            b = lowest < 0 ? 0 : lowest;
        /* Compact: certain entries + group entries in buckets >= b. */
        int32_t w = 0;
        for (int32_t i = 0; i < cn; i++) {
            uint32_t key = fkey(cv[i]);
            uint32_t hi = key & mask;
            if (hi > fixed || (hi == fixed && ((key >> sh) & fm) >= (uint32_t)b)) {
                dst_v[w] = cv[i];
                dst_id[w] = cid ? cid[i] : i;
                w++;
            }
        }
        cv = dst_v;
        cid = dst_id;
        cn = w;
        if (all)
            return cn;
        need_c -= acc_c - cnt[b];
        if (weighted)
            need_m -= acc_m - mass[b];
        if (!weighted && need_c == (int64_t)cnt[b])
            return cn; /* the whole boundary bucket is needed */
        if (cnt[b] == 1)
            return cn; /* a single entry decides: nothing left to split */
        fixed |= (uint32_t)b << sh;
        mask |= fm << sh;
    }
    /* Ties at value fixed: keep the first ones (lowest ids) until the goal. */
    int32_t w = 0;
    int64_t tc = 0;
    double tm = 0;
    for (int32_t i = 0; i < cn; i++) {
        uint32_t key = fkey(dst_v[i]);
        if (key == fixed) {
            if (weighted ? (tc > 0 && tm >= need_m) : tc >= need_c)
                continue;
            tc++;
            tm += dst_v[i];
        }
        dst_v[w] = dst_v[i];
        dst_id[w] = dst_id[i];
        w++;
    }
    return w;
}

#define TOPK_SAMPLE 4096

/* The k best logits (0 < k < n; by value, then lower id) into wv/wid, in id
 * order; returns k. wv/wid have room for n entries.
 * A strided sample of TOPK_SAMPLE logits gives a threshold expected to let
 * about 2k + 512 entries through; one vectorised pass keeps those, and
 * rank_select finishes on them. If fewer than k pass (a sample can be
 * unlucky), the full rank_select runs instead, so the result is always exact. */
static int32_t select_top_k(const float *logits, int32_t n, int32_t k, float *wv, int32_t *wid) {
    int64_t want = 2 * (int64_t)k + 512;
    if (n >= 8 * TOPK_SAMPLE && want * 4 < n) {
        int32_t stride = n / TOPK_SAMPLE;
        for (int32_t i = 0; i < TOPK_SAMPLE; i++)
            wv[i] = logits[(int64_t)i * stride];
        int32_t r = (int32_t)(want * TOPK_SAMPLE / n);
        int32_t m = rank_select(wv, NULL, TOPK_SAMPLE, wv, wid, 0, r < 1 ? 1 : r, 0);
        float thr = INFINITY;
        for (int32_t i = 0; i < m; i++)
            thr = wv[i] < thr ? wv[i] : thr;
        int32_t c = compact_ge(logits, n, thr, wv, wid);
        if (c >= k)
            return rank_select(wv, wid, c, wv, wid, 0, k, 0);
    }
    return rank_select(logits, NULL, n, wv, wid, 0, k, 0);
}

/* The two selections, for their unit test (sampler_internal.h). */
int32_t smp_rank_select(const float *src_v, const int32_t *src_id, int32_t n, float *dst_v,
                        int32_t *dst_id, int weighted, int32_t k, double target) {
    return rank_select(src_v, src_id, n, dst_v, dst_id, weighted, k, target);
}

int32_t smp_select_top_k(const float *logits, int32_t n, int32_t k, float *wv, int32_t *wid) {
    return select_top_k(logits, n, k, wv, wid);
}

/* Stable filter: keeps entries with v >= thr (src_id NULL: id = index). */
static int32_t filter_min(const float *src_v, const int32_t *src_id, int32_t n, float *dst_v,
                          int32_t *dst_id, float thr) {
    int32_t w = 0;
    for (int32_t i = 0; i < n; i++) {
        if (src_v[i] >= thr) {
            dst_v[w] = src_v[i];
            dst_id[w] = src_id ? src_id[i] : i;
            w++;
        }
    }
    return w;
}

#define DRAW_CHUNK 1024

/* One draw among the allowed entries of p[n] (see kcpu_rowops.masked_sum), whose
 * total mass is about `total`. Returns a position in [0, n). Chunk sums
 * locate the chunk, then one chunk is walked entry by entry. */
static int32_t draw_masked(struct smp_state *st, const float *p, int32_t n, float thr, float pp,
                           int32_t pj, double total) {
    double r = smp_uniform(st) * total, acc = 0;
    int32_t last_chunk = -1;
    for (int32_t c = 0; c < n; c += DRAW_CHUNK) {
        int32_t m = n - c < DRAW_CHUNK ? n - c : DRAW_CHUNK;
        double cs = masked_sum(p + c, m, c, thr, pp, pj);
        if (cs > 0)
            last_chunk = c;
        if (!(r < acc + cs)) {
            acc += cs;
            continue;
        }
        int32_t last = -1;
        for (int32_t i = c; i < c + m; i++) {
            float v = p[i];
            if (v > 0 && v >= thr && (v > pp || (v == pp && i < pj))) {
                acc += v;
                last = i;
                if (r < acc)
                    return i;
            }
        }
        if (last >= 0)
            return last; /* rounding between chunk sum and walk */
    }
    /* r beyond the (rounded) total: the last allowed entry. */
    if (last_chunk >= 0) {
        int32_t end = n - last_chunk < DRAW_CHUNK ? n : last_chunk + DRAW_CHUNK;
        for (int32_t i = end - 1; i >= last_chunk; i--) {
            float v = p[i];
            if (v > 0 && v >= thr && (v > pp || (v == pp && i < pj)))
                return i;
        }
    }
    return 0;
}

#define TOPP_EXACT_MAX 4096 /* candidate lists this short use rank_select */
#define TOPP_MAX_REJECT 48

/* top_p (target = top_p * total mass) and min_p (keep p >= min_p, the top
 * mass being 1) over candidates p[n] in id order (ids NULL: id = position),
 * then one draw. Returns the token id. wid: scratch of n int32 (may be ids).
 *
 * Short lists: rank_select finds the nucleus exactly, min_p filters it.
 * Long lists use rejection instead of finding the nucleus: draw from the
 * allowed set A (initially everything >= min_p); token j belongs to the
 * nucleus iff the mass ranked before it is < target. If it does not, no token
 * ranked at or after j does either, so A shrinks to the tokens ranked before
 * j (whose mass is the one just computed) and we draw again. Accepted draws
 * are distributed exactly as draws from the nucleus; a rejection happens with
 * probability about 1 - top_p, and each one halves A's mass on average.
 * The top token (mass ranked before it: 0) is always accepted. */
static int32_t draw_top_p(struct smp_state *st, float *p, const int32_t *ids, int32_t n,
                          double target, float min_p, int32_t *wid) {
    if (n > TOPP_EXACT_MAX) {
        float pp = SMP_NO_PIVOT;
        int32_t pj = 0;
        double allowed = masked_sum(p, n, 0, min_p, SMP_NO_PIVOT, 0);
        for (int it = 0; it < TOPP_MAX_REJECT; it++) {
            int32_t j = draw_masked(st, p, n, min_p, pp, pj, allowed);
            double before = masked_sum(p, n, 0, 0.0f, p[j], j);
            if (before < target || before <= 0)
                return ids ? ids[j] : j;
            pp = p[j];
            pj = j;
            allowed = before;
        }
        /* Practically unreachable; the exact method below is always right. */
    }
    int32_t m = rank_select(p, ids, n, p, wid, 1, 0, target);
    if (min_p > 0)
        m = filter_min(p, wid, m, p, wid, min_p);
    double all = masked_sum(p, m, 0, 0.0f, SMP_NO_PIVOT, 0);
    int32_t j = draw_masked(st, p, m, 0.0f, SMP_NO_PIVOT, 0, all);
    return wid[j];
}

/* ------------------------------------------------------------------------ */
/* smp_sample                                                                */

/* Log-probability of token id under softmax(logits), given the cleaned max.
 * sum1, if >= 0, is the already known sum of exp(logits - max). */
static float logprob_of(const float *logits, int32_t n, int32_t id, float max, double sum1) {
    if (max == -INFINITY)
        return -INFINITY;
    if (!(sum1 >= 0))
        sum1 = exp_sum(logits, n, max, 1.0f);
    return (float)(((double)logits[id] - (double)max) - log(sum1));
}

/* NaN -> -inf and +inf -> FLT_MAX in place; returns the max and its lowest
 * index. */
static float clean_row(float *x, int32_t n, int32_t *arg) {
    int dirty = 0;
    float max = row_max(x, n, &dirty);
    if (dirty) {
        for (int32_t i = 0; i < n; i++)
            x[i] = clean(x[i]);
        max = max > FLT_MAX ? FLT_MAX : max;
    }
    int32_t am = 0;
    while (am < n && !(x[am] == max))
        am++;
    *arg = am < n ? am : 0;
    return max;
}

int32_t smp_sample(struct smp_state *st, const struct smp_params *p, float *logits, int32_t n_vocab,
                   void *work, float *logprob) {
    if (!logits || n_vocab <= 0) {
        if (logprob)
            *logprob = -INFINITY;
        return 0;
    }
    int32_t am;
    float max = clean_row(logits, n_vocab, &am);
    struct smp_params def;
    if (!p) {
        smp_params_default(&def);
        p = &def;
    }
    float temp = p->temperature;
    if (!(temp > 1e-6f) || !st || !work || max == -INFINITY) { /* greedy */
        if (logprob)
            *logprob = logprob_of(logits, n_vocab, am, max, -1);
        return am;
    }

    float inv_t = 1.0f / temp;
    float *wv = (float *)work;                 /* [n_vocab] candidate masses */
    int32_t *wid = (int32_t *)(wv + n_vocab);  /* [n_vocab] candidate ids */
    int use_top_k = p->top_k > 0 && p->top_k < n_vocab;
    int use_top_p = p->top_p < 1.0f;           /* false for NaN */
    float min_p = p->min_p > 1.0f ? 1.0f : p->min_p;
    if (!(min_p > 0.0f))
        min_p = 0.0f;                          /* off, also for NaN */
    double sum1 = -1;                          /* sum of exp(l - max) if known */
    const int32_t *ids = NULL;                 /* NULL: candidate position = id */
    int32_t n, tok;
    double mass;

    /* Candidates and their unnormalised masses exp((l - max) / T); the top
     * token's mass is exactly 1, so min_p * p_max is min_p. */
    if (use_top_k) {
        n = select_top_k(logits, n_vocab, p->top_k, wv, wid);
        ids = wid;
        mass = exp_block(wv, wv, n, max, inv_t);
    } else {
        n = n_vocab;
        mass = 0;
        for (int32_t c = 0; c < n; c += EXP_CHUNK) /* chunked: the sum reads cache */
            mass += exp_block(wv + c, logits + c, n - c < EXP_CHUNK ? n - c : EXP_CHUNK, max,
                              inv_t);
        if (inv_t == 1.0f)
            sum1 = mass;
    }
    if (use_top_p) {
        tok = draw_top_p(st, wv, ids, n, (double)p->top_p * mass, min_p, wid);
    } else {
        double allowed = min_p > 0 ? masked_sum(wv, n, 0, min_p, SMP_NO_PIVOT, 0) : mass;
        int32_t j = draw_masked(st, wv, n, min_p, SMP_NO_PIVOT, 0, allowed);
        tok = ids ? ids[j] : j;
    }
    if (tok < 0 || tok >= n_vocab)
        tok = am; /* cannot happen; never hand out a bad id */
    if (logprob)
        *logprob = logprob_of(logits, n_vocab, tok, max, sum1);
    return tok;
}

/* ------------------------------------------------------------------------ */
/* penalties, bias                                                           */

void smp_apply_penalties(float *logits, int32_t n_vocab, const int32_t *prev, int32_t n_prev,
                         float presence, float frequency, float repetition, void *work) {
    if (!logits || !prev || n_prev <= 0 || n_vocab <= 0 || !work)
        return;
    int use_rep = repetition > 0.0f && repetition != 1.0f && repetition <= FLT_MAX;
    if (!(fabsf(presence) <= FLT_MAX))
        presence = 0.0f;
    if (!(fabsf(frequency) <= FLT_MAX))
        frequency = 0.0f;
    if (!use_rep && presence == 0.0f && frequency == 0.0f)
        return;
    /* Counts live at cnt[id]; only entries named in prev are touched, so the
     * scratch needs no clearing: zero them, count, apply once and re-zero. */
    int32_t *cnt = (int32_t *)work;
    for (int32_t i = 0; i < n_prev; i++)
        if (prev[i] >= 0 && prev[i] < n_vocab)
            cnt[prev[i]] = 0;
    for (int32_t i = 0; i < n_prev; i++)
        if (prev[i] >= 0 && prev[i] < n_vocab)
            cnt[prev[i]]++;
    for (int32_t i = 0; i < n_prev; i++) {
        int32_t t = prev[i];
        if (t < 0 || t >= n_vocab || cnt[t] == 0)
            continue;
        float v = logits[t];
        if (use_rep)
            v = v > 0.0f ? v / repetition : v * repetition;
        v -= frequency * (float)cnt[t] + presence;
        logits[t] = v;
        cnt[t] = 0; /* done: later occurrences are skipped */
    }
}

void smp_apply_logit_bias(float *logits, int32_t n_vocab, const int32_t *ids, const float *bias,
                          int n) {
    if (!logits || !ids || !bias)
        return;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < n_vocab && bias[i] == bias[i])
            logits[ids[i]] += bias[i];
}

/* ------------------------------------------------------------------------ */
/* top-N logprobs                                                            */

/* Is (va, ia) ranked after (vb, ib)? (lower value, then higher id) */
static inline int worse(float va, int32_t ia, float vb, int32_t ib) {
    return va < vb || (va == vb && ia > ib);
}

/* Heap with the worst entry at the root, over (v[], id[]) of size n. */
static void heap_down(float *v, int32_t *id, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(v[l], id[l], v[m], id[m]))
            m = l;
        if (r < n && worse(v[r], id[r], v[m], id[m]))
            m = r;
        if (m == i)
            return;
        float tv = v[i];
        v[i] = v[m];
        v[m] = tv;
        int32_t ti = id[i];
        id[i] = id[m];
        id[m] = ti;
        i = m;
    }
}

int smp_top_logprobs(const float *logits, int32_t n_vocab, int n, int32_t *ids, float *lps) {
    if (!logits || !ids || !lps || n <= 0 || n_vocab <= 0)
        return 0;
    if (n > n_vocab)
        n = n_vocab;
    /* Select into (lps, ids) as a worst-at-root heap of the n best. */
    for (int i = 0; i < n; i++) {
        lps[i] = clean(logits[i]);
        ids[i] = i;
    }
    for (int i = n / 2 - 1; i >= 0; i--)
        heap_down(lps, ids, n, i);
    for (int32_t i = n; i < n_vocab; i++) {
        float v = clean(logits[i]);
        if (worse(lps[0], ids[0], v, i)) {
            lps[0] = v;
            ids[0] = i;
            heap_down(lps, ids, n, 0);
        }
    }
    /* Heap sort: repeatedly move the worst to the end -> best first. */
    for (int end = n - 1; end > 0; end--) {
        float tv = lps[0];
        lps[0] = lps[end];
        lps[end] = tv;
        int32_t ti = ids[0];
        ids[0] = ids[end];
        ids[end] = ti;
        heap_down(lps, ids, end, 0);
    }
    float max = lps[0]; /* the best entry is the row's cleaned max */
    if (max == -INFINITY) {
        for (int i = 0; i < n; i++)
            lps[i] = -INFINITY;
        return n;
    }
    double lse = log(exp_sum(logits, n_vocab, max, 1.0f));
    for (int i = 0; i < n; i++)
        lps[i] = (float)(((double)lps[i] - (double)max) - lse);
    return n;
}
