/* bench_sampler.c - speed of smp_sample on one row of logits, and a digest of
 * what it returned.
 *
 *   bench_sampler [-V N_VOCAB] [-r REPEATS] [-s SEED]
 *
 * A row of N_VOCAB (default 262144, Gemma 3's vocabulary) Gaussian logits
 * (sd 2.5, from SEED) is sampled REPEATS times (default 30) under each of a
 * few parameter sets (greedy, top_p, top_k + top_p, min_p, with and without
 * the logprob). Each call gets a fresh copy of the row; the sampler's state
 * carries on from call to call, as in a request. Prints, per set, the median
 * and the best time per call, and at the end one 64-bit digest of every token
 * id and every logprob's bits (plus smp_logsumexp and smp_top_logprobs on the
 * row, and a pass over odd row lengths). Two builds that print the same
 * digest returned bitwise the same results. Uses only sampler.h, so the same
 * source builds against any revision of the sampler.
 * Not a test: no pass/fail.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/sampler.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* FNV-1a over the bytes of v. */
static void mix(uint64_t *h, const void *v, size_t n) {
    const unsigned char *p = v;
    for (size_t i = 0; i < n; i++) {
        *h ^= p[i];
        *h *= 0x100000001b3ull;
    }
}

/* The bench's own inputs: xorshift64*, then Box-Muller. */
static uint64_t rng_state;
static double urand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}
static float gauss(void) {
    double u = urand(), v = urand();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

struct cfg {
    const char *name;
    struct smp_params p;
    int logprob;
};

/* Samples a fresh copy of base[n] once with c; mixes the token and the
 * logprob into *h. Returns the seconds smp_sample took. */
static double sample_once(const struct cfg *c, struct smp_state *st, const float *base, float *row,
                          int32_t n, void *work, uint64_t *h) {
    memcpy(row, base, sizeof(float) * (size_t)n);
    float lp = 0.0f;
    double t0 = now_s();
    int32_t tok = smp_sample(st, &c->p, row, n, work, c->logprob ? &lp : NULL);
    double dt = now_s() - t0;
    mix(h, &tok, sizeof tok);
    mix(h, &lp, sizeof lp);
    return dt;
}

int main(int argc, char **argv) {
    int32_t V = 262144;
    int R = 30;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "-V") == 0) V = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "-r") == 0) R = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "-s") == 0) seed = strtoull(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: %s [-V N_VOCAB] [-r REPEATS] [-s SEED]\n", argv[0]);
            return 2;
        }
    }
    if (V < 64 || V > (1 << 24) || R < 1 || R > 100000) {
        fprintf(stderr, "bench_sampler: need 64 <= N_VOCAB <= 16777216 and 1 <= REPEATS <= 100000\n");
        return 2;
    }
    rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
    float *base = malloc(sizeof(float) * (size_t)V), *row = malloc(sizeof(float) * (size_t)V);
    void *work = malloc((size_t)V * (sizeof(float) + sizeof(int32_t)));
    double *t = malloc(sizeof(double) * (size_t)R);
    if (!base || !row || !work || !t) {
        fprintf(stderr, "bench_sampler: out of memory\n");
        return 1;
    }
    for (int32_t i = 0; i < V; i++)
        base[i] = 2.5f * gauss();
#define P(T, K, TOP_P, MIN_P) \
    {.temperature = T, .top_k = K, .top_p = TOP_P, .min_p = MIN_P, .seed = seed, .has_seed = 1}
    const struct cfg cfg[] = {
        {"greedy + logprob", P(0.0f, 0, 1.0f, 0.0f), 1},
        {"T=1 (full softmax)", P(1.0f, 0, 1.0f, 0.0f), 0},
        {"T=1 top_p=0.95", P(1.0f, 0, 0.95f, 0.0f), 0},
        {"T=0.7 top_p=0.95 + logprob", P(0.7f, 0, 0.95f, 0.0f), 1},
        {"top_k=40 top_p=0.9 + logprob", P(0.8f, 40, 0.9f, 0.0f), 1},
        {"T=1 min_p=0.05", P(1.0f, 0, 1.0f, 0.05f), 0},
    };
#undef P
    const int n_cfg = (int)(sizeof cfg / sizeof cfg[0]);
    uint64_t h = 0xcbf29ce484222325ull;
    printf("sampler, %d logits, %d calls per set\n", V, R);
    for (int c = 0; c < n_cfg; c++) {
        struct smp_state st;
        smp_init(&st, &cfg[c].p);
        for (int r = 0; r < R; r++)
            t[r] = sample_once(&cfg[c], &st, base, row, V, work, &h);
        qsort(t, (size_t)R, sizeof *t, cmp_double);
        double med = R % 2 ? t[R / 2] : 0.5 * (t[R / 2 - 1] + t[R / 2]);
        printf("  %-30s median %.3f ms  best %.3f ms\n", cfg[c].name, 1e3 * med, 1e3 * t[0]);
    }
    /* The rest of the digest: row-level answers, then odd lengths (tails of
     * every vector pass), a few calls each. */
    float lse = smp_logsumexp(base, V);
    mix(&h, &lse, sizeof lse);
    int32_t ids[20];
    float lps[20];
    int nt = smp_top_logprobs(base, V, 20, ids, lps);
    mix(&h, ids, sizeof(int32_t) * (size_t)nt);
    mix(&h, lps, sizeof(float) * (size_t)nt);
    for (int32_t n = V - 1; n > V - 16; n -= 3) {
        for (int c = 0; c < n_cfg; c++) {
            struct smp_state st;
            smp_init(&st, &cfg[c].p);
            for (int r = 0; r < 3; r++)
                sample_once(&cfg[c], &st, base, row, n, work, &h);
        }
    }
    printf("digest %016llx\n", (unsigned long long)h);
    free(base);
    free(row);
    free(work);
    free(t);
    return 0;
}
