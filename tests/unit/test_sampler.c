/* test_sampler.c - the sampler: greedy, seeding, the drawn distribution against
 * softmax (chi-square), temperature, top_k, top_p, min_p, NaN/inf rows,
 * logprobs, penalties, logit bias, top-N logprobs; and the internals: the row
 * passes of kernels/rowops.h (each SIMD table against the scalar references:
 * exp, masked sums, max, compaction) and rank_select (against a brute-force
 * sort), reached through engine/sampler_internal.h. The sampler's speed is
 * measured by tools/bench_sampler, not here.
 * Every random input comes from fixed seeds: results are deterministic.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "engine/sampler_internal.h"
#include "kernels/rowops.h"
#include "tu_check.h"

/* ---- helpers ---------------------------------------------------------- */

static void *work_for(int32_t n) {
    void *w = malloc((size_t)n * (sizeof(float) + sizeof(int32_t)));
    ck_assert_ptr_nonnull(w);
    memset(w, 0xA5, (size_t)n * (sizeof(float) + sizeof(int32_t))); /* garbage */
    return w;
}

static struct smp_params params(float t, int32_t k, float tp, float mp, uint64_t seed) {
    struct smp_params p;
    smp_params_default(&p);
    p.temperature = t;
    p.top_k = k;
    p.top_p = tp;
    p.min_p = mp;
    p.seed = seed;
    p.has_seed = 1;
    return p;
}

/* Deterministic test randomness, separate from the sampler's. */
static uint64_t trng_state = 12345;
static double trand(void) {
    return (double)(smp_splitmix64_next(&trng_state) >> 11) * 0x1.0p-53;
}
static float tgauss(void) {
    double u = trand(), v = trand();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

/* softmax(logits / t) in double. */
static void softmax_ref(const float *l, int n, double t, double *out) {
    double m = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        m = l[i] > m ? l[i] : m;
    for (int i = 0; i < n; i++)
        s += out[i] = exp(((double)l[i] - m) / t);
    for (int i = 0; i < n; i++)
        out[i] /= s;
}

/* Draws `draws` tokens with p from a fresh state; counts[n] must be zeroed. */
static void draw_counts(const float *logits, int n, const struct smp_params *p, int draws,
                        int *counts) {
    struct smp_state st;
    smp_init(&st, p);
    float *row = malloc(sizeof(float) * (size_t)n);
    void *w = work_for(n);
    for (int d = 0; d < draws; d++) {
        memcpy(row, logits, sizeof(float) * (size_t)n);
        int32_t t = smp_sample(&st, p, row, n, w, NULL);
        ck_assert_int_ge(t, 0);
        ck_assert_int_lt(t, n);
        counts[t]++;
    }
    free(row);
    free(w);
}

/* Pearson chi-square of counts against probabilities; cells with expected
 * count < 5 are pooled. Also fails if a zero-probability cell was hit.
 * *dof receives the degrees of freedom. */
static double chi_square(const int *counts, const double *prob, int n, int draws, int *dof) {
    double chi = 0, pool_o = 0, pool_e = 0;
    int cells = 0;
    for (int i = 0; i < n; i++) {
        double e = prob[i] * draws;
        if (prob[i] == 0) {
            ck_assert_msg(counts[i] == 0, "token %d has probability 0 but was drawn %d times", i,
                          counts[i]);
            continue;
        }
        if (e < 5) {
            pool_o += counts[i];
            pool_e += e;
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
        cells++;
    }
    if (pool_e > 0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    }
    *dof = cells - 1;
    return chi;
}

/* Chi-square bound well above the 99.9% quantile: dof + 5.5 sqrt(2 dof) + 8. */
static double chi_bound(int dof) { return dof + 5.5 * sqrt(2.0 * dof) + 8; }

static void expect_distribution(const float *logits, int n, const struct smp_params *p,
                                const double *prob, int draws, const char *what) {
    int *counts = calloc((size_t)n, sizeof(int));
    draw_counts(logits, n, p, draws, counts);
    int dof;
    double chi = chi_square(counts, prob, n, draws, &dof);
    ck_assert_msg(chi < chi_bound(dof), "%s: chi-square %.2f with %d dof (bound %.1f)", what, chi,
                  dof, chi_bound(dof));
    free(counts);
}

/* Is (va, ia) ranked before (vb, ib)? For the brute-force references. */
static int ranks_before(float va, int32_t ia, float vb, int32_t ib) {
    return va > vb || (va == vb && ia < ib);
}

/* Rank of every entry (0 = best) by brute force, O(n^2); n small. */
static void brute_ranks(const float *v, int n, int *rank) {
    for (int i = 0; i < n; i++) {
        rank[i] = 0;
        for (int j = 0; j < n; j++)
            if (ranks_before(v[j], j, v[i], i))
                rank[i]++;
    }
}

static const float *qs_v; /* for cmp_rank */
static int cmp_rank(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    return ranks_before(qs_v[i], i, qs_v[j], j) ? -1 : ranks_before(qs_v[j], j, qs_v[i], i);
}

/* ---- basics ----------------------------------------------------------- */

START_TEST(test_defaults) {
    struct smp_params p;
    memset(&p, 0x5A, sizeof p);
    smp_params_default(&p);
    ck_assert(p.temperature == 1.0f);
    ck_assert_int_le(p.top_k, 0);
    ck_assert(p.top_p == 1.0f);
    ck_assert(p.min_p == 0.0f);
    ck_assert_int_eq(p.has_seed, 0);
    smp_params_default(NULL); /* no crash */
    /* Unseeded states differ from one another. */
    struct smp_state a, b;
    smp_init(&a, &p);
    smp_init(&b, &p);
    ck_assert(memcmp(&a, &b, sizeof a) != 0);
    /* Uniform draws lie in [0, 1) and average 1/2. */
    double s = 0;
    for (int i = 0; i < 100000; i++) {
        double u = smp_uniform(&a);
        ck_assert(u >= 0.0 && u < 1.0);
        s += u;
    }
    ck_assert_msg(fabs(s / 100000 - 0.5) < 0.005, "mean %f", s / 100000);
}
END_TEST

START_TEST(test_greedy) {
    struct smp_params p = params(0.0f, 0, 1.0f, 0.0f, 7);
    struct smp_state st, st0;
    smp_init(&st, &p);
    st0 = st;
    void *w = work_for(1000);
    float l[1000];
    for (int trial = 0; trial < 50; trial++) {
        int best = 0;
        for (int i = 0; i < 1000; i++) {
            l[i] = tgauss();
            if (l[i] > l[best])
                best = i;
        }
        ck_assert_int_eq(smp_sample(&st, &p, l, 1000, w, NULL), best);
    }
    /* Ties: the lowest id wins. */
    float t[6] = {1, 3, 2, 3, 3, -1};
    ck_assert_int_eq(smp_sample(&st, &p, t, 6, w, NULL), 1);
    /* Negative temperature and tiny temperature are greedy too. */
    p.temperature = -1.0f;
    ck_assert_int_eq(smp_sample(&st, &p, t, 6, w, NULL), 1);
    p.temperature = NAN;
    ck_assert_int_eq(smp_sample(&st, &p, t, 6, w, NULL), 1);
    /* Greedy takes no draws. */
    ck_assert(memcmp(&st, &st0, sizeof st) == 0);
    /* NULL work or state: greedy instead of a crash. */
    p.temperature = 1.0f;
    ck_assert_int_eq(smp_sample(&st, &p, t, 6, NULL, NULL), 1);
    ck_assert_int_eq(smp_sample(NULL, &p, t, 6, w, NULL), 1);
    /* Degenerate sizes. */
    ck_assert_int_eq(smp_sample(&st, &p, t, 0, w, NULL), 0);
    ck_assert_int_eq(smp_sample(&st, &p, NULL, 6, w, NULL), 0);
    free(w);
}
END_TEST

START_TEST(test_seed_reproducible) {
    enum { V = 5000, N = 300 };
    float base[V], row[V];
    for (int i = 0; i < V; i++)
        base[i] = 2.0f * tgauss();
    void *w = work_for(V);
    const struct smp_params cfg[] = {
        params(1.0f, 0, 1.0f, 0.0f, 42), params(0.8f, 0, 0.9f, 0.0f, 42),
        params(1.2f, 50, 0.95f, 0.02f, 42), params(1.0f, 0, 1.0f, 0.05f, 42)};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int32_t seq[3][N];
        uint64_t seeds[3] = {42, 42, 43};
        for (int s = 0; s < 3; s++) {
            struct smp_params p = cfg[c];
            p.seed = seeds[s];
            struct smp_state st;
            smp_init(&st, &p);
            for (int i = 0; i < N; i++) {
                memcpy(row, base, sizeof row);
                seq[s][i] = smp_sample(&st, &p, row, V, w, NULL);
            }
        }
        ck_assert_msg(memcmp(seq[0], seq[1], sizeof seq[0]) == 0, "config %zu: same seed differs",
                      c);
        int diff = 0;
        for (int i = 0; i < N; i++)
            diff += seq[0][i] != seq[2][i];
        ck_assert_msg(diff > N / 4, "config %zu: seeds 42 and 43 agree on %d of %d", c, N - diff,
                      N);
    }
    /* The raw generator: same seed, same stream; seed 0 is fine too. */
    struct smp_params p = params(1, 0, 1, 0, 0);
    struct smp_state a, b;
    smp_init(&a, &p);
    smp_init(&b, &p);
    for (int i = 0; i < 1000; i++)
        ck_assert(smp_uniform(&a) == smp_uniform(&b));
    free(w);
}
END_TEST

/* ---- distributions ---------------------------------------------------- */

START_TEST(test_softmax_frequencies) {
    float l[10] = {0.0f, 1.0f, -1.0f, 2.0f, 0.5f, -3.0f, 1.5f, 0.25f, -0.5f, 1.0f};
    double prob[10];
    softmax_ref(l, 10, 1.0, prob);
    struct smp_params p = params(1.0f, 0, 1.0f, 0.0f, 2024);
    expect_distribution(l, 10, &p, prob, 20000, "T=1");
    /* Same through the long-list paths: 6000 tokens, most of the mass on a
     * few, the rest spread thin. */
    enum { V = 6000 };
    float *big = malloc(sizeof(float) * V);
    double *bp = malloc(sizeof(double) * V);
    for (int i = 0; i < V; i++)
        big[i] = i < 10 ? l[i] + 6.0f : -2.0f + 0.5f * tgauss();
    softmax_ref(big, V, 1.0, bp);
    expect_distribution(big, V, &p, bp, 20000, "T=1, 6000 tokens");
    free(big);
    free(bp);
}
END_TEST

START_TEST(test_temperature) {
    float l[8] = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f, -2.0f, 0.0f};
    double prob[8];
    int c1[8] = {0}, c2[8] = {0}, c3[8] = {0};
    struct smp_params p = params(0.5f, 0, 1.0f, 0.0f, 99);
    softmax_ref(l, 8, 0.5, prob);
    expect_distribution(l, 8, &p, prob, 20000, "T=0.5");
    p.temperature = 2.0f;
    softmax_ref(l, 8, 2.0, prob);
    expect_distribution(l, 8, &p, prob, 20000, "T=2");
    /* Lower temperature: the top token more often, the worst less often. */
    p.temperature = 0.5f;
    draw_counts(l, 8, &p, 5000, c1);
    p.temperature = 1.0f;
    draw_counts(l, 8, &p, 5000, c2);
    p.temperature = 2.0f;
    draw_counts(l, 8, &p, 5000, c3);
    ck_assert_int_gt(c1[2], c2[2]);
    ck_assert_int_gt(c2[2], c3[2]);
    ck_assert_int_lt(c1[6], c3[6]);
}
END_TEST

START_TEST(test_top_k) {
    void *w = work_for(100000);
    /* top_k = 1 is greedy, ties included. */
    float l[64], row[64];
    struct smp_params p = params(1.5f, 1, 1.0f, 0.0f, 5);
    struct smp_state st;
    smp_init(&st, &p);
    for (int trial = 0; trial < 200; trial++) {
        int best = 0;
        for (int i = 0; i < 64; i++) {
            l[i] = (float)(int)(4 * tgauss()); /* many ties */
            if (l[i] > l[best])
                best = i;
        }
        memcpy(row, l, sizeof l);
        ck_assert_int_eq(smp_sample(&st, &p, row, 64, w, NULL), best);
    }
    /* top_k = 5 never leaves the 5 best; all 5 appear; frequencies follow
     * the softmax renormalised over them. */
    float m[50];
    for (int i = 0; i < 50; i++)
        m[i] = 0.3f * tgauss();
    int rank[50];
    brute_ranks(m, 50, rank);
    double prob[50], s = 0;
    softmax_ref(m, 50, 1.0, prob);
    for (int i = 0; i < 50; i++)
        s += prob[i] = rank[i] < 5 ? prob[i] : 0;
    for (int i = 0; i < 50; i++)
        prob[i] /= s;
    p = params(1.0f, 5, 1.0f, 0.0f, 6);
    expect_distribution(m, 50, &p, prob, 20000, "top_k=5");
    /* Ties at the boundary go to the lower ids. */
    float t[8] = {5, 5, 5, 5, 5, 5, 5, 5};
    int counts[8] = {0};
    p = params(1.0f, 3, 1.0f, 0.0f, 7);
    draw_counts(t, 8, &p, 3000, counts);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(i < 3 ? counts[i] > 800 : counts[i] == 0, "tie id %d drawn %d", i,
                      counts[i]);
    /* A vocabulary large enough for the sampled-threshold path, with heavy
     * ties: 100000 logits from 40 distinct values. */
    enum { V = 100000 };
    float *big = malloc(sizeof(float) * V), *brow = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        big[i] = (float)(int)(8 * tgauss()) * 0.25f;
    const int ks[] = {1, 7, 50, 3000};
    for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
        int k = ks[q];
        /* The k-th best value and how many of it are in (lowest ids). */
        float kth = -INFINITY;
        {
            int lo_cnt = 0;
            float cand = INFINITY;
            while (lo_cnt < k) { /* walk distinct values from the top */
                float nx = -INFINITY;
                int c = 0;
                for (int i = 0; i < V; i++)
                    if (big[i] < cand && big[i] > nx)
                        nx = big[i];
                for (int i = 0; i < V; i++)
                    c += big[i] == nx;
                cand = nx;
                lo_cnt += c;
            }
            kth = cand;
        }
        int above = 0;
        for (int i = 0; i < V; i++)
            above += big[i] > kth;
        int tie_take = k - above; /* the lowest-id ties at kth are in */
        /* Direct check of the selection (sampled-threshold path). */
        float *wv = (float *)w;
        int32_t *wid = (int32_t *)(wv + V);
        int32_t got = smp_select_top_k(big, V, k, wv, wid);
        ck_assert_int_eq(got, k);
        unsigned char *in = calloc(V, 1);
        int seen_ties = 0;
        for (int32_t i = 0; i < got; i++) {
            ck_assert(wv[i] == big[wid[i]]);
            ck_assert(i == 0 || wid[i] > wid[i - 1]); /* id order */
            ck_assert(big[wid[i]] >= kth);
            seen_ties += big[wid[i]] == kth;
            in[wid[i]] = 1;
        }
        ck_assert_int_eq(seen_ties, tie_take);
        /* The plain radix path picks the same set. */
        ck_assert_int_eq(smp_rank_select(big, NULL, V, wv, wid, 0, k, 0), k);
        for (int32_t i = 0; i < k; i++)
            ck_assert(in[wid[i]]);
        /* Draws stay inside. */
        p = params(2.0f, k, 1.0f, 0.0f, 8);
        smp_init(&st, &p);
        for (int d = 0; d < 30; d++) {
            memcpy(brow, big, sizeof(float) * V);
            ck_assert(in[smp_sample(&st, &p, brow, V, w, NULL)]);
        }
        free(in);
    }
    free(big);
    free(brow);
    free(w);
}
END_TEST

/* Logits whose softmax is exactly prob (up to rounding), ids permuted. */
static void logits_from_probs(const double *prob, int n, float *l) {
    for (int i = 0; i < n; i++)
        l[i] = prob[i] > 0 ? (float)log(prob[i]) : -INFINITY;
}

START_TEST(test_top_p) {
    /* Probabilities 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1. */
    const double pr[4] = {0.3, 0.05, 0.5, 0.15};
    float l[4];
    logits_from_probs(pr, 4, l);
    const struct { float top_p; int allowed[4]; } cases[] = {
        {0.40f, {0, 0, 1, 0}}, /* 0.5 >= 0.4 */
        {0.75f, {1, 0, 1, 0}}, /* 0.5 + 0.3 >= 0.75 */
        {0.85f, {1, 0, 1, 1}}, /* + 0.15 */
        {0.97f, {1, 1, 1, 1}},
        {0.0f, {0, 0, 1, 0}},  /* keeps at least one */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double prob[4], s = 0;
        for (int i = 0; i < 4; i++)
            s += prob[i] = cases[c].allowed[i] ? pr[i] : 0;
        for (int i = 0; i < 4; i++)
            prob[i] /= s;
        struct smp_params p = params(1.0f, 0, cases[c].top_p, 0.0f, 11 + c);
        char what[64];
        snprintf(what, sizeof what, "top_p=%.2f", cases[c].top_p);
        expect_distribution(l, 4, &p, prob, 8000, what);
    }
    /* The same nucleus inside a long list (the rejection path): those four
     * carry 98% of the mass, 8000 others share the remaining 2%. */
    enum { V = 8004 };
    double *bp = malloc(sizeof(double) * V), *prob = malloc(sizeof(double) * V);
    float *bl = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        bp[i] = i < 4 ? pr[i] * 0.98 : 0.02 / 8000 * (0.5 + trand());
    logits_from_probs(bp, V, bl);
    const double tps[] = {0.40, 0.75, 0.85, 0.99}; /* 0.99: ~4000 tokens */
    for (size_t c = 0; c < 4; c++) {
        /* Expected nucleus by brute force on the exact softmax. */
        double *sm = malloc(sizeof(double) * V);
        softmax_ref(bl, V, 1.0, sm);
        /* the best ones until the mass reaches top_p */
        double cum = 0;
        for (int i = 0; i < V; i++)
            prob[i] = 0;
        for (int taken = 0; taken < V && (taken == 0 || cum < tps[c]); taken++) {
            int b = -1;
            for (int i = 0; i < V; i++)
                if (prob[i] == 0 && (b < 0 || ranks_before(bl[i], i, bl[b], b)))
                    b = i;
            prob[b] = sm[b];
            cum += sm[b];
        }
        for (int i = 0; i < V; i++)
            prob[i] /= cum;
        struct smp_params p = params(1.0f, 0, (float)tps[c], 0.0f, 21 + c);
        expect_distribution(bl, V, &p, prob, 6000, "top_p, long list");
        free(sm);
    }
    free(bp);
    free(prob);
    free(bl);
}
END_TEST

START_TEST(test_min_p) {
    /* p = 0.4, 0.3, 0.2, 0.1 at ids 3, 1, 0, 2. */
    const double pr[4] = {0.2, 0.3, 0.1, 0.4};
    float l[4];
    logits_from_probs(pr, 4, l);
    const struct { float min_p; int allowed[4]; } cases[] = {
        {0.6f, {0, 1, 0, 1}},  /* keep p >= 0.24 */
        {0.45f, {1, 1, 0, 1}}, /* keep p >= 0.18 */
        {1.0f, {0, 0, 0, 1}},
        {5.0f, {0, 0, 0, 1}},  /* clamped to 1 */
        {0.1f, {1, 1, 1, 1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double prob[4], s = 0;
        for (int i = 0; i < 4; i++)
            s += prob[i] = cases[c].allowed[i] ? pr[i] : 0;
        for (int i = 0; i < 4; i++)
            prob[i] /= s;
        struct smp_params p = params(1.0f, 0, 1.0f, cases[c].min_p, 31 + c);
        expect_distribution(l, 4, &p, prob, 6000, "min_p");
    }
    /* min_p after temperature: at T = 0.5 the ratios square (0.16 : 0.09 :
     * 0.04 : 0.01); min_p 0.3 keeps p' >= 0.3 p'_max, i.e. ids 3 and 1. */
    double prob[4] = {0, 0.09 / 0.25, 0, 0.16 / 0.25};
    struct smp_params p = params(0.5f, 0, 1.0f, 0.3f, 41);
    expect_distribution(l, 4, &p, prob, 6000, "min_p at T=0.5");
    /* With top_p as well (intersection): top_p 0.65 keeps {0.4, 0.3}; min_p
     * 0.8 keeps only 0.4. */
    double prob2[4] = {0, 0, 0, 1};
    p = params(1.0f, 0, 0.65f, 0.8f, 42);
    expect_distribution(l, 4, &p, prob2, 1000, "top_p + min_p");
    /* A long list with min_p (masked draw) and min_p + top_p (rejection). */
    enum { V = 5000 };
    float *bl = malloc(sizeof(float) * V);
    double *bprob = malloc(sizeof(double) * V);
    for (int i = 0; i < V; i++)
        bl[i] = i < 4 ? l[i] : -9.0f + 0.1f * tgauss();
    for (int i = 0; i < V; i++)
        bprob[i] = i < 4 && (i == 1 || i == 3) ? pr[i] / 0.7 : 0;
    p = params(1.0f, 0, 1.0f, 0.6f, 43);
    expect_distribution(bl, V, &p, bprob, 6000, "min_p, long list");
    p = params(1.0f, 0, 0.5f, 0.6f, 44);
    for (int i = 0; i < V; i++)
        bprob[i] = i == 3 || i == 1 ? pr[i] / 0.7 : 0; /* nucleus {0.4, 0.3, 0.2} */
    expect_distribution(bl, V, &p, bprob, 6000, "min_p + top_p, long list");
    free(bl);
    free(bprob);
}
END_TEST

/* ---- robustness ------------------------------------------------------- */

START_TEST(test_nan_inf) {
    void *w = work_for(5000);
    struct smp_params cfg[] = {params(0.0f, 0, 1.0f, 0.0f, 1), params(1.0f, 0, 1.0f, 0.0f, 1),
                               params(1.0f, 3, 0.9f, 0.0f, 1), params(0.7f, 0, 0.5f, 0.1f, 1),
                               params(2.0f, 0, 1.0f, 0.0f, 1)};
    struct smp_state st;
    float lp;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        smp_init(&st, &cfg[c]);
        /* All NaN / all -inf: token 0, logprob -inf. */
        float a[5] = {NAN, NAN, NAN, NAN, NAN};
        ck_assert_int_eq(smp_sample(&st, &cfg[c], a, 5, w, &lp), 0);
        ck_assert(isinf(lp) && lp < 0);
        float b[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        ck_assert_int_eq(smp_sample(&st, &cfg[c], b, 5, w, &lp), 0);
        /* NaN never drawn, -inf never drawn. */
        for (int d = 0; d < 200; d++) {
            float m[6] = {NAN, 0.5f, -INFINITY, 0.2f, NAN, 0.4f};
            int32_t t = smp_sample(&st, &cfg[c], m, 6, w, &lp);
            ck_assert_msg(t == 1 || t == 3 || t == 5, "drew %d", t);
            ck_assert(isfinite(lp) && lp <= 0);
            ck_assert(isinf(m[0]) && m[0] < 0); /* NaN cleaned to -inf */
        }
        /* +inf dominates: always that token, logprob 0 (two of them: log 1/2). */
        for (int d = 0; d < 50; d++) {
            float m[5] = {1.0f, INFINITY, NAN, 3.0f, -INFINITY};
            ck_assert_int_eq(smp_sample(&st, &cfg[c], m, 5, w, &lp), 1);
            ck_assert(fabsf(lp) < 1e-6f);
            float m2[5] = {1.0f, INFINITY, 2.0f, INFINITY, 0.0f};
            int32_t t = smp_sample(&st, &cfg[c], m2, 5, w, &lp);
            ck_assert(t == 1 || t == 3);
            ck_assert(fabsf(lp + logf(2.0f)) < 1e-5f);
        }
        /* A long row salted with NaN and +-inf. */
        float *big = malloc(sizeof(float) * 5000);
        for (int d = 0; d < 20; d++) {
            for (int i = 0; i < 5000; i++) {
                double u = trand();
                big[i] = u < 0.1 ? NAN : u < 0.15 ? -INFINITY : tgauss();
            }
            int32_t t = smp_sample(&st, &cfg[c], big, 5000, w, &lp);
            ck_assert(t >= 0 && t < 5000 && isfinite(big[t]));
        }
        free(big);
    }
    /* Strange parameters are clamped, never crash. */
    float m[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    struct smp_params odd[] = {params(INFINITY, 0, 1.0f, 0.0f, 1), params(1.0f, -5, NAN, NAN, 1),
                               params(1.0f, 1000, -1.0f, -1.0f, 1),
                               params(1e-7f, 2, 2.0f, 0.0f, 1)};
    for (size_t c = 0; c < sizeof odd / sizeof odd[0]; c++) {
        smp_init(&st, &odd[c]);
        for (int d = 0; d < 20; d++) {
            int32_t t = smp_sample(&st, &odd[c], m, 4, w, &lp);
            ck_assert(t >= 0 && t < 4);
        }
    }
    free(w);
}
END_TEST

START_TEST(test_logprob) {
    enum { V = 3000 };
    float *l = malloc(sizeof(float) * V), *row = malloc(sizeof(float) * V);
    double *sm = malloc(sizeof(double) * V);
    void *w = work_for(V);
    for (int i = 0; i < V; i++)
        l[i] = 3.0f * tgauss();
    softmax_ref(l, V, 1.0, sm);
    struct smp_params cfg[] = {params(0.0f, 0, 1.0f, 0.0f, 3), params(1.0f, 0, 1.0f, 0.0f, 3),
                               params(0.6f, 0, 0.9f, 0.0f, 3), params(1.3f, 20, 1.0f, 0.0f, 3),
                               params(1.0f, 0, 1.0f, 0.1f, 3)};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        struct smp_state st;
        smp_init(&st, &cfg[c]);
        for (int d = 0; d < 50; d++) {
            memcpy(row, l, sizeof(float) * V);
            float lp = 1.0f;
            int32_t t = smp_sample(&st, &cfg[c], row, V, w, &lp);
            double want = log(sm[t]);
            ck_assert_msg(fabs(lp - want) < 2e-5 * (1 + fabs(want)), "cfg %zu: %f vs %f", c, lp,
                          want);
        }
    }
    /* smp_logsumexp against libm in double. */
    double m = -INFINITY, s = 0;
    for (int i = 0; i < V; i++)
        m = l[i] > m ? l[i] : m;
    for (int i = 0; i < V; i++)
        s += exp(l[i] - m);
    ck_assert(fabs(smp_logsumexp(l, V) - (m + log(s))) < 1e-5);
    ck_assert(isinf(smp_logsumexp(l, 0)));
    float nn[3] = {NAN, -INFINITY, NAN};
    ck_assert(isinf(smp_logsumexp(nn, 3)) && smp_logsumexp(nn, 3) < 0);
    free(l);
    free(row);
    free(sm);
    free(w);
}
END_TEST

/* ---- penalties, bias, top logprobs ------------------------------------ */

START_TEST(test_penalties) {
    int32_t *w = work_for(8);
    for (int i = 0; i < 8; i++)
        w[i] = 12345; /* stale counts must not matter */
    float l[8] = {2.0f, -2.0f, 1.0f, 0.0f, 3.0f, 0.0f, -1.0f, 5.0f};
    const int32_t prev[] = {0, 1, 1, 4, 4, 4, 99, -1, 5, 6};
    smp_apply_penalties(l, 8, prev, 10, 0.5f, 0.25f, 2.0f, w);
    /* token 0: 2/2 - (0.25*1 + 0.5); token 1: -2*2 - (0.5 + 0.5);
     * token 4: 3/2 - (0.75 + 0.5); token 5: 0*2 - 0.75; token 6: -1*2 - 0.75 */
    const float want[8] = {0.25f, -5.0f, 1.0f, 0.0f, 0.25f, -0.75f, -2.75f, 5.0f};
    for (int i = 0; i < 8; i++)
        ck_assert_msg(fabsf(l[i] - want[i]) < 1e-6f, "token %d: %f want %f", i, l[i], want[i]);
    /* Repetition only, penalty < 1 (encourages): divide positive by 0.5. */
    float r[3] = {2.0f, -2.0f, 1.0f};
    const int32_t pr[] = {0, 1};
    smp_apply_penalties(r, 3, pr, 2, 0.0f, 0.0f, 0.5f, w);
    ck_assert(r[0] == 4.0f && r[1] == -1.0f && r[2] == 1.0f);
    /* Off values, NaN, NULL work: nothing happens. */
    float z[3] = {1.0f, 2.0f, 3.0f};
    smp_apply_penalties(z, 3, pr, 2, 0.0f, 0.0f, 1.0f, w);
    smp_apply_penalties(z, 3, pr, 2, NAN, NAN, NAN, w);
    smp_apply_penalties(z, 3, pr, 2, 1.0f, 1.0f, 2.0f, NULL);
    smp_apply_penalties(z, 3, pr, 2, 1.0f, 1.0f, -2.0f, w); /* bad repetition: skipped */
    ck_assert(z[0] == 1.0f - 2.0f && z[1] == 2.0f - 2.0f && z[2] == 3.0f);
    /* Two calls give vLLM's split: repetition over prompt+output, presence
     * and frequency over the output only. */
    float v[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    const int32_t prompt_and_out[] = {0, 1, 2, 2};
    const int32_t out[] = {2, 2};
    smp_apply_penalties(v, 4, prompt_and_out, 4, 0.0f, 0.0f, 2.0f, w);
    smp_apply_penalties(v, 4, out, 2, 0.1f, 0.2f, 1.0f, w);
    ck_assert(v[0] == 0.5f && v[1] == 0.5f && fabsf(v[2] - (0.5f - 0.4f - 0.1f)) < 1e-6f &&
              v[3] == 1.0f);
    /* A large vocabulary with a long history stays cheap and exact. */
    enum { V = 262144, N = 100000 };
    float *big = calloc(V, sizeof(float));
    int32_t *hist = malloc(sizeof(int32_t) * N), *bw = work_for(V);
    for (int i = 0; i < N; i++)
        hist[i] = (i * 7919) % 1000;
    smp_apply_penalties(big, V, hist, N, 1.0f, 0.001f, 1.0f, bw);
    ck_assert(fabsf(big[0] - (-1.0f - 0.1f)) < 1e-5f && big[1000] == 0.0f);
    free(big);
    free(hist);
    free(bw);
    free(w);
}
END_TEST

START_TEST(test_logit_bias) {
    float l[5] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f};
    const int32_t ids[] = {0, 4, 7, -3, 2, 1};
    const float bias[] = {10.0f, -INFINITY, 5.0f, 5.0f, NAN, -0.5f};
    smp_apply_logit_bias(l, 5, ids, bias, 6);
    ck_assert(l[0] == 10.0f && l[1] == 0.5f && l[2] == 2.0f && l[3] == 3.0f);
    ck_assert(isinf(l[4]) && l[4] < 0);
    smp_apply_logit_bias(l, 5, NULL, bias, 6); /* no-op */
    /* A banned token is never drawn, even at high temperature. */
    void *w = work_for(5);
    struct smp_params p = params(5.0f, 0, 1.0f, 0.0f, 77);
    struct smp_state st;
    smp_init(&st, &p);
    for (int d = 0; d < 2000; d++) {
        float row[5] = {0.0f, 0.0f, 0.0f, 0.0f, 50.0f};
        const int32_t ban[] = {4};
        const float minus_inf[] = {-INFINITY};
        smp_apply_logit_bias(row, 5, ban, minus_inf, 1);
        ck_assert_int_ne(smp_sample(&st, &p, row, 5, w, NULL), 4);
    }
    free(w);
}
END_TEST

START_TEST(test_top_logprobs) {
    float l[7] = {1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.0f, INFINITY};
    int32_t ids[10];
    float lps[10];
    /* +inf takes all the mass. */
    ck_assert_int_eq(smp_top_logprobs(l, 7, 3, ids, lps), 3);
    ck_assert_int_eq(ids[0], 6);
    ck_assert(lps[0] == 0.0f);
    ck_assert_int_eq(ids[1], 1);
    ck_assert_int_eq(ids[2], 3);
    ck_assert(lps[1] < -1e38f); /* 3 - FLT_MAX */
    /* Finite row: values, order, ties to the lower id, n > n_vocab. */
    float f[6] = {0.5f, 2.0f, -1.0f, 2.0f, 0.0f, 1.0f};
    double sm[6];
    softmax_ref(f, 6, 1.0, sm);
    ck_assert_int_eq(smp_top_logprobs(f, 6, 10, ids, lps), 6);
    const int32_t order[6] = {1, 3, 5, 0, 4, 2};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(ids[i], order[i]);
        ck_assert(fabs(lps[i] - log(sm[order[i]])) < 1e-6);
    }
    ck_assert_int_eq(smp_top_logprobs(f, 6, 0, ids, lps), 0);
    ck_assert_int_eq(smp_top_logprobs(f, 6, 1, ids, lps), 1);
    ck_assert_int_eq(ids[0], 1);
    float nn[3] = {NAN, NAN, -INFINITY};
    ck_assert_int_eq(smp_top_logprobs(nn, 3, 2, ids, lps), 2);
    ck_assert(ids[0] == 0 && ids[1] == 1 && isinf(lps[0]) && lps[0] < 0);
    /* Against a brute-force ranking on a large row with ties. */
    enum { V = 20000 };
    float *big = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        big[i] = (float)(int)(10 * tgauss()) * 0.1f;
    int32_t bi[20];
    float bl[20];
    ck_assert_int_eq(smp_top_logprobs(big, V, 20, bi, bl), 20);
    double lse = smp_logsumexp(big, V);
    for (int r = 0; r < 20; r++) {
        int better = 0;
        for (int i = 0; i < V; i++)
            better += ranks_before(big[i], i, big[bi[r]], bi[r]);
        ck_assert_int_eq(better, r);
        ck_assert(fabs(bl[r] - (big[bi[r]] - lse)) < 1e-5);
    }
    free(big);
}
END_TEST

/* ---- internals against references ------------------------------------- */

START_TEST(test_exp_kernels) {
    enum { N = 20000 };
    const struct kcpu_rowops *ref = &kcpu_rowops_generic;
    float *src = malloc(sizeof(float) * N), *a = malloc(sizeof(float) * N),
          *b = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++)
        src[i] = -90.0f + 90.0f * (float)i / (N - 1); /* [-90, 0] */
    src[0] = NAN;
    src[1] = -INFINITY;
    src[2] = INFINITY;
    double sa = ref->exp_block(a, src, N, 0.0f, 1.0f);
    double want_sum = 0;
    for (int i = 3; i < N; i++) {
        double e = exp((double)src[i]);
        if (src[i] > KCPU_EXP_LO) {
            ck_assert_msg(fabs(a[i] - e) <= 3e-7 * e, "exp(%g) = %g vs %g", src[i], a[i], e);
            want_sum += e;
        } else {
            ck_assert(a[i] == 0.0f);
        }
    }
    ck_assert(a[0] == 0.0f && a[1] == 0.0f && a[2] == 1.0f);
    ck_assert(fabs(sa - (want_sum + 1.0)) < 1e-6 * sa);
    /* Temperature scaling and a nonzero max. */
    ref->exp_block(a, src, N, 1.0f, 0.5f);
    for (int i = 3; i < N; i += 97) {
        double e = exp(((double)src[i] - 1.0) * 0.5);
        ck_assert(fabs(a[i] - e) <= 3e-7 * e || (e < 1e-37 && a[i] == 0.0f));
    }
    const struct kcpu_rowops *simd = kcpu_rowops_find("avx2"); /* NULL: not on this CPU */
    if (simd) {
        double sb = simd->exp_block(b, src, N, 0.0f, 1.0f);
        sa = ref->exp_block(a, src, N, 0.0f, 1.0f);
        for (int i = 0; i < N; i++)
            ck_assert_msg(fabsf(a[i] - b[i]) <= 2e-7f * a[i], "avx2 exp(%g): %g vs %g", src[i],
                          b[i], a[i]);
        ck_assert(fabs(sa - sb) < 1e-6 * sa);
        /* The other kernels against their references, odd lengths included. */
        float *t = malloc(sizeof(float) * N), *v0 = malloc(sizeof(float) * N),
              *v1 = malloc(sizeof(float) * N);
        int32_t *i0 = malloc(sizeof(int32_t) * N), *i1 = malloc(sizeof(int32_t) * N);
        for (int i = 0; i < N; i++)
            t[i] = (float)(int)(20 * trand()) * 0.05f; /* ties */
        for (int n = 0; n < 40; n++) {
            int len = n < 20 ? n : N - n;
            float pp = n % 3 ? t[n] : SMP_NO_PIVOT, thr = n % 4 ? 0.3f : 0.0f;
            double r0 = ref->masked_sum(t, len, 5, thr, pp, n * 7);
            double r1 = simd->masked_sum(t, len, 5, thr, pp, n * 7);
            ck_assert(fabs(r0 - r1) < 1e-9 * (1 + r0));
            int d0 = 0, d1 = 0;
            float m0 = ref->row_max(src + n, len - n > 0 ? len - n : 0, &d0);
            float m1 = simd->row_max(src + n, len - n > 0 ? len - n : 0, &d1);
            ck_assert(m0 == m1 && d0 == d1);
            int32_t c0 = ref->compact_ge(t, len, 0, 0.7f, v0, i0);
            int32_t c1 = simd->compact_ge(t, len, 0, 0.7f, v1, i1);
            ck_assert_int_eq(c0, c1);
            for (int32_t i = 0; i < c0; i++)
                ck_assert(v0[i] == v1[i] && i0[i] == i1[i]);
        }
        free(t);
        free(v0);
        free(v1);
        free(i0);
        free(i1);
    }
    free(src);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_rank_select) {
    enum { N = 700 };
    float v[N], dv[N];
    int32_t did[N];
    int rank[N];
    for (int trial = 0; trial < 60; trial++) {
        int n = 1 + trial * 11;
        for (int i = 0; i < n; i++)
            v[i] = trial % 2 ? (float)(int)(6 * trand()) * 0.125f : (float)trand();
        if (trial % 5 == 0)
            v[n / 2] = 0.0f;
        brute_ranks(v, n, rank);
        /* By count. */
        for (int k = 1; k <= n; k += 1 + n / 7) {
            int32_t m = smp_rank_select(v, NULL, n, dv, did, 0, k, 0);
            ck_assert_int_eq(m, k);
            for (int32_t i = 0; i < m; i++) {
                ck_assert_int_lt(rank[did[i]], k);
                ck_assert(dv[i] == v[did[i]]);
                ck_assert(i == 0 || did[i] > did[i - 1]);
            }
        }
        /* By mass: the shortest best-first prefix reaching the target. */
        double total = 0;
        for (int i = 0; i < n; i++)
            total += v[i];
        const double fr[] = {0.0, 0.1, 0.5, 0.9, 0.999};
        for (size_t f = 0; f < sizeof fr / sizeof fr[0]; f++) {
            double target = fr[f] * total;
            int want = 0;
            double cum = 0;
            while (want < n && (want == 0 || cum < target)) {
                for (int i = 0; i < n; i++)
                    if (rank[i] == want)
                        cum += v[i];
                want++;
            }
            memcpy(dv, v, sizeof(float) * (size_t)n); /* in place this time */
            int32_t m = smp_rank_select(dv, NULL, n, dv, did, 1, 0, target);
            ck_assert_msg(m == want, "n %d target %.4f: kept %d, want %d", n, fr[f], m, want);
            for (int32_t i = 0; i < m; i++)
                ck_assert_int_lt(rank[did[i]], want);
        }
    }
    /* Long lists (all three radix levels, big tie groups) against qsort. */
    enum { L = 60000 };
    float *lv = malloc(sizeof(float) * L), *ov = malloc(sizeof(float) * L);
    int32_t *order = malloc(sizeof(int32_t) * L), *oid = malloc(sizeof(int32_t) * L);
    int *lrank = malloc(sizeof(int) * L);
    for (int trial = 0; trial < 4; trial++) {
        for (int i = 0; i < L; i++) {
            double u = trand();
            lv[i] = trial == 0 ? (float)u : trial == 1 ? (float)(int)(u * 50) / 64.0f
                  : trial == 2 ? (float)exp(-30 * u) : 0.25f; /* 3: all equal */
            order[i] = i;
        }
        qs_v = lv;
        qsort(order, L, sizeof(int32_t), cmp_rank);
        for (int i = 0; i < L; i++)
            lrank[order[i]] = i;
        const int32_t ks[] = {1, 2, 100, 4097, L - 1};
        for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
            ck_assert_int_eq(smp_rank_select(lv, NULL, L, ov, oid, 0, ks[q], 0), ks[q]);
            for (int32_t i = 0; i < ks[q]; i++)
                ck_assert(lrank[oid[i]] < ks[q] && (i == 0 || oid[i] > oid[i - 1]));
        }
        double total = 0;
        for (int i = 0; i < L; i++)
            total += lv[i];
        const double fr[] = {0.3, 0.9, 0.99};
        for (size_t f = 0; f < 3; f++) {
            double cum = 0;
            int want = 0;
            while (want < L && cum < fr[f] * total)
                cum += lv[order[want++]];
            int32_t m = smp_rank_select(lv, NULL, L, ov, oid, 1, 0, fr[f] * total);
            ck_assert_msg(m == want, "trial %d frac %.2f: kept %d, want %d", trial, fr[f], m,
                          want);
            for (int32_t i = 0; i < m; i++)
                ck_assert(lrank[oid[i]] < want);
        }
    }
    free(lv);
    free(ov);
    free(order);
    free(oid);
    free(lrank);
}
END_TEST

static Suite *sampler_suite(void) {
    Suite *s = suite_create("sampler");
    const struct tu_case tests[] = {
        {"defaults", test_defaults},
        {"greedy", test_greedy},
        {"seed", test_seed_reproducible},
        {"softmax_frequencies", test_softmax_frequencies},
        {"temperature", test_temperature},
        {"top_k", test_top_k},
        {"top_p", test_top_p},
        {"min_p", test_min_p},
        {"nan_inf", test_nan_inf},
        {"logprob", test_logprob},
        {"penalties", test_penalties},
        {"logit_bias", test_logit_bias},
        {"top_logprobs", test_top_logprobs},
        {"exp_kernels", test_exp_kernels},
        {"rank_select", test_rank_select},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 60);
    return s;
}

int main(void) {
    int failed = tu_check_run(sampler_suite());
    return failed != 0;
}
