/* test_subllm.c - SUBLLM models (DESIGN.md sections 4, 5) and KV units.
 *
 * - numerics: generated SUBLLM models (nested depth 2 and 3, sibling
 *   brackets, f32/f16/q8_0, spm/bpe) run prompts with all_logits and are
 *   compared with tests/ref/subllm_ref.py, an independent NumPy float64
 *   forward over the same GGUF; kept counts per level must match too;
 * - incremental decode (prefill, then one token at a time, level_n_past
 *   advanced by level_kept) and chunked prefill reproduce the full-prompt
 *   logits bitwise, with identity tables (eng_kv_identity_tables over a page
 *   list) and with scattered per-layer units;
 * - a sequence's logits are bitwise identical alone and inside ragged batches
 *   on scattered per-layer units, and the same on identity tables;
 * - identity tables name unit p*n_layers + l for page p of layer l (tables
 *   built by hand read what they wrote), dense models included;
 * - corner cases: a level that keeps nothing, one that keeps everything,
 *   exactly one kept token, a decode token dropped at level 1;
 * - malformed batches (levels, units, a sequence without tables) are refused without
 *   touching the cache; bad structure strings and missing or mis-shaped
 *   sub tensors fail to load with a message;
 * - perplexity (tools/perplexity.c) on a SUBLLM file: independent of the
 *   chunk size and equal to the NumPy reference.
 *
 * The reference needs python3 with numpy and the PyPI `gguf` package; without
 * them the comparisons are skipped with a notice, unless
 * SLIMSERVE_REQUIRE_REF=1 makes that a failure.
 */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "tools/genmodel.h"
#include "tools/perplexity.h"
#include "testutil.h"

#define MAXT 64          /* tokens per prompt in these tests */
#define NCTX 256
#define PAGES_PER_SEQ (NCTX / 16)

/* ----------------------------------------------------------------- models */

enum { M_NEST2, M_NEST3, M_SIBLING, M_KEEP0, M_KEEP1, M_EXACT, M_DENSE, M_CONV, M_COUNT };

struct test_model {
    const char *label;
    const char *arch, *structure;
    float keep, noise;
    int wtype, tied, dim, n_heads, n_kv_heads, ffn;
    const char *tok;
    uint64_t seed;
    char path[PATH_MAX];
};

static struct test_model models[M_COUNT] = {
    [M_NEST2] = {"nested depth 2 f32 gqa", "subllm", "TT(TT(T)TT)TT", 0.64f, 0.25f, BE_F32, 0, 64, 4, 2, 192, "spm", 11},
    [M_NEST3] = {"nested depth 3 q8_0 bpe", "subllm", "T(T(T(T)T)T)T", 0.7f, 0.25f, BE_Q8_0, 0, 128, 4, 2, 256, "bpe", 12},
    [M_SIBLING] = {"siblings f16 tied mha", "subllm", "T(TT)T(T)T", 0.5f, 0.25f, BE_F16, 1, 64, 4, 4, 128, "spm", 13},
    [M_KEEP0] = {"keep 0", "subllm", "TT(TT)TT", 0.0f, 0.25f, BE_F32, 0, 64, 4, 2, 192, "spm", 14},
    [M_KEEP1] = {"keep 1", "subllm", "TT(TT)TT", 1.0f, 0.25f, BE_F32, 0, 64, 4, 2, 192, "spm", 15},
    [M_EXACT] = {"noise-free keep 0.5", "subllm", "T(TT(T)T)T", 0.5f, 0.0f, BE_F32, 0, 64, 4, 2, 192, "spm", 16},
    [M_DENSE] = {"dense llama", "llama", NULL, 0.5f, 0.25f, BE_F32, 0, 64, 4, 2, 192, "spm", 17},
    /* converter round trip: full K/V heads (the authors' attention), brackets
     * closing in another order than they open (bypass numbering) */
    [M_CONV] = {"converter source", "subllm", "T(T(T)T)T(T)T", 0.6f, 0.25f, BE_F32, 0, 64, 4, 4, 192, "spm", 18},
};

static char ref_dir[PATH_MAX];   /* <src>/tests/ref */
static char ref_script[PATH_MAX]; /* <ref_dir>/subllm_ref.py */
static int have_ref;

static int gen_models(void) {
    char err[256];
    for (int i = 0; i < M_COUNT; i++) {
        struct test_model *t = &models[i];
        struct genmodel_opts o;
        genmodel_opts_default(&o);
        o.arch = t->arch;
        o.structure = t->structure;
        o.keep = t->keep;
        o.keep_noise = t->noise;
        o.wtype = t->wtype;
        o.tied = t->tied;
        o.dim = t->dim;
        o.n_heads = t->n_heads;
        o.n_kv_heads = t->n_kv_heads;
        o.ffn_dim = t->ffn;
        o.tokenizer = t->tok;
        o.seed = t->seed;
        o.n_layers = 0;
        for (const char *p = t->structure ? t->structure : "TT"; *p; p++) o.n_layers += *p == 'T';
        char name[32];
        snprintf(name, sizeof name, "m%d.gguf", i);
        tu_tmp_file(t->path, sizeof t->path, name);
        int rc = genmodel_write(&o, t->path, err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "genmodel %s: %s\n", t->label, err);
            return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

/* One thread: these models are tiny, and on a shared 2-core machine the
 * pool's joins cost more than the work (the batch test uses two threads). */
static int n_threads = 1;

static struct eng_model *load(const char *path, int kv_type, int max_batch) {
    struct eng_options o = {.kv_type = kv_type, .max_batch_tokens = max_batch, .n_ctx = NCTX,
                            .n_threads = n_threads};
    return tu_load(path, &o);
}

/* Per-layer block tables of one sequence: PAGES_PER_SEQ units per layer,
 * taken from a scattered order of the pool's units. */
struct ltab {
    int L;
    int32_t *units[64];
    const int32_t *rows[64];
};

/* Unit order: a stride permutation of [0, n_units), so consecutive logical
 * pages land far apart and layers interleave. next is the caller's cursor. */
static void ltab_make(struct ltab *t, const struct eng_model *m, int32_t *next) {
    const int32_t n_units = eng_model_n_units(m);
    t->L = eng_model_config(m)->n_layers;
    ck_assert(t->L <= 64);
    int32_t stride = 97;
    while (n_units % stride == 0) stride += 2;
    for (int l = 0; l < t->L; l++) {
        t->units[l] = malloc(PAGES_PER_SEQ * sizeof(int32_t));
        ck_assert(t->units[l] != NULL);
        for (int i = 0; i < PAGES_PER_SEQ; i++) {
            ck_assert_msg(*next < n_units, "test ran out of units");
            t->units[l][i] = (int32_t)(((int64_t)(*next)++ * stride) % n_units);
        }
        t->rows[l] = t->units[l];
    }
}

static void ltab_free(struct ltab *t) {
    for (int l = 0; l < t->L; l++) free(t->units[l]);
}

/* A sequence's state across steps. */
struct sq {
    int32_t lnp[ENG_MAX_LEVELS];   /* level_n_past */
    int32_t kept[ENG_MAX_LEVELS];  /* last forward's level_kept */
    int32_t total[ENG_MAX_LEVELS]; /* sum of level_kept so far */
    const int32_t *pages;          /* page list (identity tables), used when lt is NULL */
    struct ltab *lt;               /* per-layer tables, or NULL */
};

static struct eng_seq sq_seq(struct sq *q, int tok0, int n, int n_past, int all) {
    struct eng_seq e = {.tok0 = tok0, .n_tok = n, .n_past = n_past, .want_logits = 1, .all_logits = all,
                        .level_kept = q->kept};
    memcpy(e.level_n_past, q->lnp, sizeof e.level_n_past);
    e.level_n_past[0] = n_past;
    e.layer_pages = q->lt ? q->lt->rows : NULL; /* run1 makes identity tables from q->pages */
    e.layer_n_pages = PAGES_PER_SEQ;
    return e;
}

static void sq_commit(struct sq *q, int levels) {
    for (int k = 0; k < levels; k++) {
        q->lnp[k] += q->kept[k];
        q->total[k] += q->kept[k];
    }
}

/* One sequence, n tokens at n_past. */
static int run1(struct eng_model *m, struct sq *q, const int32_t *toks, int n, int n_past, int all, float *logits) {
    struct eng_seq s = sq_seq(q, 0, n, n_past, all);
    struct eng_kv_tables id = {0};
    if (!q->lt) {
        ck_assert_int_eq(eng_kv_identity_tables(&id, m, q->pages, PAGES_PER_SEQ), 0);
        s.layer_pages = id.rows;
    }
    struct eng_batch b = {.tokens = toks, .n_tokens = n, .seqs = &s, .n_seqs = 1};
    int rc = eng_forward(m, &b, logits);
    if (rc == 0) sq_commit(q, eng_model_n_levels(m));
    eng_kv_tables_free(&id);
    return rc;
}

static int n_subs(int which) {
    int n = 0;
    for (const char *p = models[which].structure ? models[which].structure : ""; *p; p++) n += *p == '(';
    return n;
}

/* Engine (identity tables) vs reference on one prompt; returns the max diff, or
 * -1 when a score sits too close to 0 for fp32 vs fp64 to agree on it. */
static double compare_prompt(int which, struct eng_model *m, const int32_t *toks, int n) {
    const int V = eng_model_config(m)->n_vocab, ns = n_subs(which);
    int32_t pages[PAGES_PER_SEQ];
    for (int i = 0; i < PAGES_PER_SEQ; i++) pages[i] = (i * 7 + 3) % PAGES_PER_SEQ;
    struct sq q = {.pages = pages};
    float *got = malloc((size_t)n * V * sizeof *got);
    ck_assert(got != NULL);
    ck_assert_int_eq(run1(m, &q, toks, n, 0, 1, got), 0);
    int ref_kept[ENG_MAX_LEVELS];
    double margin;
    float *want = tu_subllm_ref(ref_script, models[which].path, toks, n, V, ref_kept, ns, &margin);
    double d = tu_max_abs_diff(got, want, (size_t)n * V);
    printf("ref %-26s n=%2d kept", models[which].label, n);
    for (int k = 0; k <= ns; k++) printf(" %d", q.kept[k]);
    printf(": max |logit - ref| = %.3g (min |score| %.3g)\n", d, margin);
    fflush(stdout);
    free(got);
    free(want);
    if (margin < 1e-5) return -1;
    for (int i = 0; i < ns; i++)
        ck_assert_msg(q.kept[i + 1] == ref_kept[i], "%s: level %d kept %d, reference %d", models[which].label,
                      i + 1, q.kept[i + 1], ref_kept[i]);
    return d;
}

/* ------------------------------------------------------ reference numerics */

START_TEST(test_ref_models) {
    const int which = _i;
    if (!tu_ref_available(have_ref, "reference comparison")) return;
    struct eng_model *m = load(models[which].path, ENG_KV_F32, MAXT);
    const int V = eng_model_config(m)->n_vocab;
    int compared = 0;
    for (int salt = 0; salt < 4 && compared < 2; salt++) {
        int32_t toks[MAXT];
        int n = salt % 2 ? 17 : 40;
        tu_prompt(toks, n, V, salt + which);
        double d = compare_prompt(which, m, toks, n);
        if (d < 0) continue;
        ck_assert_msg(d <= 1e-4, "%s: max abs diff %g", models[which].label, d);
        compared++;
    }
    ck_assert_msg(compared == 2, "%s: scores too close to 0 on every prompt", models[which].label);
    eng_model_free(m);
}
END_TEST

/* F16 K/V: values rounded to 11 bits before attention. */
START_TEST(test_ref_f16_kv) {
    if (!tu_ref_available(have_ref, "reference comparison")) return;
    struct eng_model *m = load(models[M_NEST2].path, ENG_KV_F16, MAXT);
    int32_t toks[MAXT];
    tu_prompt(toks, 40, eng_model_config(m)->n_vocab, 5);
    double d = compare_prompt(M_NEST2, m, toks, 40);
    ck_assert_msg(d >= 0 && d <= 2e-2, "f16 KV: max abs diff %g", d);
    eng_model_free(m);
}
END_TEST

/* -------------------------------------------- incremental and chunked */

/* _i: model index * 2 + tables (0 identity, 1 scattered per layer). Full prompt once;
 * then prefill k tokens and decode the rest one at a time; then a chunked
 * prefill of the whole prompt in uneven chunks. Every row bitwise equal. */
static const int incr_models[] = {M_NEST2, M_NEST3, M_SIBLING, M_EXACT, M_KEEP0, M_KEEP1};

START_TEST(test_incremental_and_chunked) {
    const int which = incr_models[_i / 2], per_layer = _i % 2;
    struct eng_model *m = load(models[which].path, ENG_KV_F32, MAXT);
    const int V = eng_model_config(m)->n_vocab, n = 45, k = 19, levels = eng_model_n_levels(m);
    int32_t toks[MAXT], next = 0;
    tu_prompt(toks, n, V, 3 + which);
    int32_t pa[PAGES_PER_SEQ], pb[PAGES_PER_SEQ], pc[PAGES_PER_SEQ];
    for (int i = 0; i < PAGES_PER_SEQ; i++) pa[i] = i, pb[i] = PAGES_PER_SEQ + i, pc[i] = 2 * PAGES_PER_SEQ + i;
    struct ltab ta, tb, tc;
    ltab_make(&ta, m, &next);
    ltab_make(&tb, m, &next);
    ltab_make(&tc, m, &next);
    float *full = malloc((size_t)n * V * sizeof *full), *step = malloc((size_t)n * V * sizeof *step);
    ck_assert(full && step);

    struct sq qa = {.pages = pa, .lt = per_layer ? &ta : NULL};
    ck_assert_int_eq(run1(m, &qa, toks, n, 0, 1, full), 0);

    struct sq qb = {.pages = pb, .lt = per_layer ? &tb : NULL};
    ck_assert_int_eq(run1(m, &qb, toks, k, 0, 0, step), 0);
    ck_assert_msg(memcmp(step, full + (size_t)(k - 1) * V, (size_t)V * sizeof *step) == 0,
                  "%s: prefill of %d tokens differs from the full prompt's row", models[which].label, k);
    int dropped_decode = 0;
    for (int i = k; i < n; i++) {
        ck_assert_int_eq(run1(m, &qb, toks + i, 1, i, 0, step), 0);
        dropped_decode += levels > 1 && qb.kept[1] == 0;
        double d = tu_max_abs_diff(step, full + (size_t)i * V, V);
        ck_assert_msg(d == 0, "%s: decode step %d differs from the full prompt by %g", models[which].label, i, d);
    }
    for (int l = 0; l < levels; l++)
        ck_assert_msg(qb.total[l] == qa.total[l], "%s level %d: decode kept %d, full prompt %d", models[which].label,
                      l, qb.total[l], qa.total[l]);

    struct sq qc = {.pages = pc, .lt = per_layer ? &tc : NULL};
    static const int chunks[] = {7, 1, 12, 5, 3, 9, 8};
    for (int a = 0, c = 0; a < n; c++) {
        int len = chunks[c % 7] < n - a ? chunks[c % 7] : n - a;
        ck_assert_int_eq(run1(m, &qc, toks + a, len, a, 1, step + (size_t)a * V), 0);
        a += len;
    }
    ck_assert_msg(memcmp(step, full, (size_t)n * V * sizeof *step) == 0, "%s: chunked prefill differs",
                  models[which].label);
    printf("incremental %-26s %s: kept per level", models[which].label, per_layer ? "per-layer" : "identity");
    for (int l = 0; l < levels; l++) printf(" %d", qa.total[l]);
    printf(", %d decode tokens dropped at level 1: bitwise equal\n", dropped_decode);
    fflush(stdout);
    ltab_free(&ta);
    ltab_free(&tb);
    ltab_free(&tc);
    free(full);
    free(step);
    eng_model_free(m);
}
END_TEST

/* ------------------------------------------------------- batch invariance */

START_TEST(test_batch_invariance) {
    const int which = _i == 0 ? M_NEST2 : _i == 1 ? M_NEST3 : M_SIBLING;
    n_threads = 2; /* the threaded kernels too */
    struct eng_model *m = load(models[which].path, ENG_KV_F16, 128);
    n_threads = 1;
    const int V = eng_model_config(m)->n_vocab;
    int32_t a[24], bt[33], c[5], next = 0;
    tu_prompt(a, 24, V, 1);
    tu_prompt(bt, 33, V, 2);
    tu_prompt(c, 5, V, 3);
    float *alone = malloc((size_t)24 * V * sizeof(float)), *ident = malloc((size_t)24 * V * sizeof(float));
    float *batched = malloc((size_t)64 * V * sizeof(float));
    ck_assert(alone && ident && batched);

    /* A alone: 21-token prefill then 3 decode steps, per-layer units. */
    struct ltab t_alone, ta, tb, tc;
    ltab_make(&t_alone, m, &next);
    struct sq q1 = {.lt = &t_alone};
    ck_assert_int_eq(run1(m, &q1, a, 21, 0, 1, alone), 0);
    for (int i = 21; i < 24; i++) ck_assert_int_eq(run1(m, &q1, a + i, 1, i, 0, alone + (size_t)i * V), 0);

    /* The same on identity tables: identical logits. */
    int32_t pp[PAGES_PER_SEQ];
    for (int i = 0; i < PAGES_PER_SEQ; i++) pp[i] = PAGES_PER_SEQ * 3 + (PAGES_PER_SEQ - 1 - i);
    struct sq q0 = {.pages = pp};
    ck_assert_int_eq(run1(m, &q0, a, 21, 0, 1, ident), 0);
    for (int i = 21; i < 24; i++) ck_assert_int_eq(run1(m, &q0, a + i, 1, i, 0, ident + (size_t)i * V), 0);
    ck_assert_msg(memcmp(alone, ident, (size_t)24 * V * sizeof(float)) == 0,
                  "identity and scattered per-layer tables differ");

    /* Batch 1: C (5), A prefill (21, all logits), B (33) on other units. */
    ltab_make(&ta, m, &next);
    ltab_make(&tb, m, &next);
    ltab_make(&tc, m, &next);
    struct sq qa = {.lt = &ta}, qb = {.lt = &tb}, qc = {.lt = &tc};
    int32_t toks[64];
    memcpy(toks, c, 5 * sizeof *toks);
    memcpy(toks + 5, a, 21 * sizeof *toks);
    memcpy(toks + 26, bt, 33 * sizeof *toks);
    struct eng_seq s1[3] = {sq_seq(&qc, 0, 5, 0, 0), sq_seq(&qa, 5, 21, 0, 1), sq_seq(&qb, 26, 33, 0, 0)};
    s1[2].want_logits = 0;
    struct eng_batch b1 = {.tokens = toks, .n_tokens = 59, .seqs = s1, .n_seqs = 3};
    ck_assert_int_eq(eng_forward(m, &b1, batched), 0);
    sq_commit(&qc, eng_model_n_levels(m));
    sq_commit(&qa, eng_model_n_levels(m));
    sq_commit(&qb, eng_model_n_levels(m));
    ck_assert_msg(memcmp(batched + V, alone, (size_t)21 * V * sizeof(float)) == 0,
                  "A's prefill logits differ inside a ragged batch");

    /* Batches 2..4: decode steps of A, B, C together (different n_past and levels). */
    for (int i = 21; i < 24; i++) {
        int32_t t2[3] = {bt[(i - 21) % 33], a[i], c[(i - 21) % 5]};
        struct eng_seq s2[3] = {sq_seq(&qb, 0, 1, 33 + i - 21, 0), sq_seq(&qa, 1, 1, i, 0),
                                sq_seq(&qc, 2, 1, 5 + i - 21, 0)};
        struct eng_batch b2 = {.tokens = t2, .n_tokens = 3, .seqs = s2, .n_seqs = 3};
        ck_assert_int_eq(eng_forward(m, &b2, batched), 0);
        sq_commit(&qa, eng_model_n_levels(m));
        sq_commit(&qb, eng_model_n_levels(m));
        sq_commit(&qc, eng_model_n_levels(m));
        ck_assert_msg(memcmp(batched + V, alone + (size_t)i * V, (size_t)V * sizeof(float)) == 0,
                      "A's decode logits at %d differ inside a ragged batch", i);
    }
    printf("batch invariance %-26s: bitwise (scattered units, identity tables)\n", models[which].label);
    ltab_free(&t_alone);
    ltab_free(&ta);
    ltab_free(&tb);
    ltab_free(&tc);
    free(alone);
    free(ident);
    free(batched);
    eng_model_free(m);
}
END_TEST

/* ---------------------------------------------- identity page -> unit map */

START_TEST(test_identity_unit_mapping) {
    const int which = _i == 0 ? M_NEST2 : M_DENSE;
    struct eng_model *m = load(models[which].path, ENG_KV_F32, MAXT);
    const struct eng_config *c = eng_model_config(m);
    const int V = c->n_vocab, L = c->n_layers;
    ck_assert_int_eq(eng_model_n_units(m), eng_model_n_pages(m) * L);
    int32_t toks[MAXT], pages[PAGES_PER_SEQ];
    tu_prompt(toks, 30, V, 9);
    for (int i = 0; i < PAGES_PER_SEQ; i++) pages[i] = (5 + 3 * i) % eng_model_n_pages(m);
    float *ref = malloc((size_t)V * sizeof *ref), *got = malloc((size_t)V * sizeof *got);
    ck_assert(ref && got);
    /* prefill of 29 tokens on identity tables, then token 29 -> ref */
    struct sq q = {.pages = pages};
    ck_assert_int_eq(run1(m, &q, toks, 29, 0, 0, got), 0);
    struct sq q_after = q;
    ck_assert_int_eq(run1(m, &q, toks + 29, 1, 29, 0, ref), 0);
    /* the same decode step through per-layer tables naming the same units */
    struct ltab t = {.L = L};
    for (int l = 0; l < L; l++) {
        t.units[l] = malloc(PAGES_PER_SEQ * sizeof(int32_t));
        for (int i = 0; i < PAGES_PER_SEQ; i++) t.units[l][i] = pages[i] * L + l;
        t.rows[l] = t.units[l];
    }
    q_after.lt = &t;
    ck_assert_int_eq(run1(m, &q_after, toks + 29, 1, 29, 0, got), 0);
    ck_assert_msg(memcmp(ref, got, (size_t)V * sizeof *got) == 0,
                  "tables with units page*n_layers+layer do not read what identity tables wrote");
    /* dense: hand-built tables of a whole prompt equal identity tables */
    if (which == M_DENSE) {
        struct sq p1 = {.pages = pages}, p2 = {.lt = &t};
        float *a = malloc((size_t)30 * V * sizeof *a), *b = malloc((size_t)30 * V * sizeof *b);
        ck_assert_int_eq(run1(m, &p1, toks, 30, 0, 1, a), 0);
        ck_assert_int_eq(run1(m, &p2, toks, 30, 0, 1, b), 0);
        ck_assert(memcmp(a, b, (size_t)30 * V * sizeof *a) == 0);
        ck_assert_int_eq(p1.kept[0], 30);
        free(a);
        free(b);
    }
    ltab_free(&t);
    free(ref);
    free(got);
    eng_model_free(m);
}
END_TEST

/* --------------------------------------------------------- corner cases */

/* Noise-free model: a token's keep decision at each subsampler depends only
 * on its embedding (genmodel.h), so s_i(token) = sub.i.score . token_embd[token]
 * read from the file. */
static void token_scores(const char *path, int sub, float *out, int V) {
    char err[256];
    struct gguf_file *f;
    ck_assert_int_eq(gguf_open(&f, path, err, sizeof err), 0);
    const struct gguf_tensor_info *te = gguf_find_tensor(f, "token_embd.weight");
    char name[64];
    snprintf(name, sizeof name, "sub.%d.score.weight", sub);
    const struct gguf_tensor_info *ts = gguf_find_tensor(f, name);
    ck_assert(te && ts && te->type == BE_F32 && ts->type == BE_F32);
    const int d = (int)te->ne[0];
    const float *w = (const float *)ts->data;
    for (int t = 0; t < V; t++) {
        const float *e = (const float *)te->data + (size_t)t * d;
        double acc = 0;
        for (int i = 0; i < d; i++) acc += (double)w[i] * e[i];
        out[t] = (float)acc;
    }
    gguf_close(f);
}

/* Picks n tokens (from id 300 up) with the wanted keep pattern at subs 0, 1:
 * want[i] = 0 dropped at sub 0; 1 kept at 0 and dropped at 1; 2 kept at both. */
static void pick_tokens(const float *s0, const float *s1, int V, const int *want, int n, int32_t *out) {
    int cursor[3] = {300, 300, 300};
    for (int i = 0; i < n; i++) {
        int cls = want[i], t = cursor[cls];
        for (; t < V; t++) {
            int c = s0[t] <= -1e-3f ? 0 : s0[t] >= 1e-3f ? (s1[t] <= -1e-3f ? 1 : s1[t] >= 1e-3f ? 2 : -1) : -1;
            if (c == cls) break;
        }
        ck_assert_msg(t < V, "no token of class %d", cls);
        out[i] = t;
        cursor[cls] = t + 1;
    }
}

START_TEST(test_keep_corner_cases) {
    struct eng_model *m = load(models[M_EXACT].path, ENG_KV_F32, MAXT);
    const int V = eng_model_config(m)->n_vocab;
    float *s0 = malloc((size_t)V * sizeof *s0), *s1 = malloc((size_t)V * sizeof *s1);
    ck_assert(s0 && s1);
    token_scores(models[M_EXACT].path, 0, s0, V);
    token_scores(models[M_EXACT].path, 1, s1, V);
    static const int single[12] = {0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};       /* one kept at level 1 */
    static const int single2[12] = {0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0};      /* one kept at level 2 */
    static const int none2[12] = {1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0};        /* level 2 keeps none */
    static const int all1[12] = {1, 2, 1, 1, 2, 2, 1, 2, 1, 2, 1, 1};         /* level 1 keeps all */
    static const int all2[12] = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2};         /* every level keeps all */
    static const int none1[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};        /* level 1 keeps none */
    static const int first_only[12] = {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};   /* only position 0 */
    const int *cases[] = {single, single2, none2, all1, all2, none1, first_only};
    const int expect[][3] = {{12, 1, 0}, {12, 3, 1}, {12, 5, 0}, {12, 12, 5}, {12, 12, 12}, {12, 0, 0}, {12, 1, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int32_t toks[12];
        pick_tokens(s0, s1, V, cases[c], 12, toks);
        int32_t pages[PAGES_PER_SEQ];
        for (int i = 0; i < PAGES_PER_SEQ; i++) pages[i] = i;
        struct sq q = {.pages = pages};
        float *lg = malloc((size_t)12 * V * sizeof *lg), *step = malloc((size_t)V * sizeof *step);
        ck_assert_int_eq(run1(m, &q, toks, 12, 0, 1, lg), 0);
        ck_assert_msg(q.kept[0] == expect[c][0] && q.kept[1] == expect[c][1] && q.kept[2] == expect[c][2],
                      "case %zu: kept %d %d %d, expected %d %d %d", c, q.kept[0], q.kept[1], q.kept[2],
                      expect[c][0], expect[c][1], expect[c][2]);
        /* decode again token by token on fresh pages: bitwise the same rows */
        int32_t pages2[PAGES_PER_SEQ];
        for (int i = 0; i < PAGES_PER_SEQ; i++) pages2[i] = PAGES_PER_SEQ + i;
        struct sq q2 = {.pages = pages2};
        for (int i = 0; i < 12; i++) {
            ck_assert_int_eq(run1(m, &q2, toks + i, 1, i, 0, step), 0);
            ck_assert_msg(memcmp(step, lg + (size_t)i * V, (size_t)V * sizeof *step) == 0,
                          "case %zu: decode of token %d differs", c, i);
        }
        if (have_ref) {
            int ref_kept[2];
            double margin;
            float *want = tu_subllm_ref(ref_script, models[M_EXACT].path, toks, 12, V, ref_kept, 2, &margin);
            double d = tu_max_abs_diff(lg, want, (size_t)12 * V);
            printf("corner case %zu: kept %d/%d/%d, max |logit - ref| = %.3g (min |score| %.3g)\n", c, q.kept[0],
                   q.kept[1], q.kept[2], d, margin);
            fflush(stdout);
            ck_assert(margin > 1e-4);
            ck_assert_int_eq(ref_kept[0], expect[c][1]);
            ck_assert_int_eq(ref_kept[1], expect[c][2]);
            ck_assert_msg(d <= 1e-4, "case %zu: max abs diff %g", c, d);
            free(want);
        } else {
            tu_ref_available(have_ref, "corner-case reference comparison");
        }
        free(lg);
        free(step);
    }
    free(s0);
    free(s1);
    eng_model_free(m);
}
END_TEST

/* --keep 0 and --keep 1 keep nothing / everything on any prompt. */
START_TEST(test_keep_zero_and_all) {
    for (int which = M_KEEP0; which <= M_KEEP1; which++) {
        struct eng_model *m = load(models[which].path, ENG_KV_F32, MAXT);
        const int V = eng_model_config(m)->n_vocab;
        for (int salt = 0; salt < 5; salt++) {
            int32_t toks[MAXT], pages[PAGES_PER_SEQ];
            for (int i = 0; i < PAGES_PER_SEQ; i++) pages[i] = i;
            tu_prompt(toks, 50, V, salt * 7);
            struct sq q = {.pages = pages};
            float *lg = malloc((size_t)V * sizeof *lg);
            ck_assert_int_eq(run1(m, &q, toks, 50, 0, 0, lg), 0);
            ck_assert_int_eq(q.kept[0], 50);
            ck_assert_int_eq(q.kept[1], which == M_KEEP0 ? 0 : 50);
            free(lg);
        }
        eng_model_free(m);
    }
}
END_TEST

/* ----------------------------------------------------- invalid batches */

START_TEST(test_invalid_batches) {
    struct eng_model *m = load(models[M_NEST2].path, ENG_KV_F32, 64);
    const int V = eng_model_config(m)->n_vocab;
    int32_t toks[MAXT], next = 0;
    tu_prompt(toks, 40, V, 4);
    struct ltab t;
    ltab_make(&t, m, &next);
    float *lg = malloc((size_t)40 * V * sizeof *lg), *ref = malloc((size_t)V * sizeof *ref);
    ck_assert(lg && ref);
    struct sq q = {.lt = &t};
    ck_assert_int_eq(run1(m, &q, toks, 20, 0, 0, lg), 0);
    struct sq saved = q;
    ck_assert(q.lnp[1] > 0 && q.lnp[2] > 0 && q.lnp[1] < 20);
    ck_assert_int_eq(run1(m, &q, toks + 20, 1, 20, 0, ref), 0);
    q = saved;

    struct eng_seq s = sq_seq(&q, 0, 1, 20, 0);
    struct eng_batch b = {.tokens = toks + 20, .n_tokens = 1, .seqs = &s, .n_seqs = 1};
    s.level_n_past[1] = 21; /* more than level 0 */
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s.level_n_past[1] = -1;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s.level_n_past[1] = q.lnp[1];
    s.level_n_past[2] = q.lnp[1] + 1; /* more than its parent level */
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s.level_n_past[2] = q.lnp[2];
    s.layer_n_pages = 1; /* 21 entries need 2 pages */
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s.layer_n_pages = PAGES_PER_SEQ;
    const int32_t *saved_row = t.rows[3]; /* a level-1 layer */
    t.rows[3] = NULL;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    t.rows[3] = saved_row;
    int32_t bad[PAGES_PER_SEQ];
    saved_row = t.rows[0]; /* a level-0 layer: entries 0..20, pages 0 and 1 */
    memcpy(bad, saved_row, sizeof bad);
    bad[1] = eng_model_n_units(m);
    t.rows[0] = bad;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    bad[1] = -5;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    bad[1] = saved_row[1];
    bad[2] = -5; /* beyond what the step needs: not read, not checked */
    ck_assert_int_eq(eng_forward(m, &b, lg), 0);
    t.rows[0] = saved_row;
    /* a sequence without tables in a batch */
    struct sq qn = {0};
    int32_t t2[2] = {toks[20], toks[0]};
    struct eng_seq s2[2] = {sq_seq(&q, 0, 1, 20, 0), sq_seq(&qn, 1, 1, 0, 0)};
    struct eng_batch b2 = {.tokens = t2, .n_tokens = 2, .seqs = s2, .n_seqs = 2};
    ck_assert_int_eq(eng_forward(m, &b2, lg), SS_EINVAL);
    /* nothing above touched the cache */
    ck_assert_int_eq(run1(m, &q, toks + 20, 1, 20, 0, lg), 0);
    ck_assert_msg(memcmp(lg, ref, (size_t)V * sizeof *lg) == 0, "a rejected batch modified the KV cache");
    ltab_free(&t);
    free(lg);
    free(ref);
    eng_model_free(m);
}
END_TEST

/* ------------------------------------------------------------ accessors */

START_TEST(test_levels_and_units) {
    static const struct { int which, levels; const char *lv; } want[] = {
        {M_NEST2, 3, "001121100"}, {M_NEST3, 4, "0123210"}, {M_SIBLING, 3, "011020"},
        {M_KEEP0, 2, "001100"}, {M_DENSE, 1, "00"}, {M_CONV, 4, "0121030"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct eng_model *m = load(models[want[i].which].path, ENG_KV_F16, 32);
        const struct eng_config *c = eng_model_config(m);
        ck_assert_int_eq(eng_model_n_levels(m), want[i].levels);
        ck_assert_int_eq((int)strlen(want[i].lv), c->n_layers);
        for (int l = 0; l < c->n_layers; l++)
            ck_assert_msg(eng_model_layer_level(m, l) == want[i].lv[l] - '0', "%s layer %d: level %d",
                          models[want[i].which].label, l, eng_model_layer_level(m, l));
        ck_assert_int_eq(eng_model_layer_level(m, -1), -1);
        ck_assert_int_eq(eng_model_layer_level(m, c->n_layers), -1);
        ck_assert_int_eq(eng_model_n_units(m), eng_model_n_pages(m) * c->n_layers);
        ck_assert_uint_eq(eng_model_unit_bytes(m), (size_t)16 * 2 * c->n_kv_heads * c->head_dim * 2);
        ck_assert_uint_eq(eng_model_unit_bytes(m) * (size_t)c->n_layers, eng_model_kv_bytes_per_token(m) * 16);
        eng_model_free(m);
    }
}
END_TEST

/* genmodel's subllm options: bad ones refused, the default structure. */
START_TEST(test_genmodel_options) {
    char path[PATH_MAX], err[256];
    tu_tmp_file(path, sizeof path, "gen.gguf");
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "subllm";
    o.n_layers = 6;
    static const struct { const char *st; int layers; float keep, noise; const char *arch; } bad[] = {
        {"TT(T", 3, 0.5f, 0.1f, "subllm"},   {"T)T(T", 3, 0.5f, 0.1f, "subllm"},
        {"TT(T)T", 5, 0.5f, 0.1f, "subllm"}, {"TT(T)T", 4, 1.5f, 0.1f, "subllm"},
        {"TT(T)T", 4, 0.5f, -1.0f, "subllm"}, {"TT(T)T", 4, 0.5f, 0.1f, "llama"},
        {"T()TT", 3, 0.5f, 0.1f, "subllm"},  {"TTxT", 3, 0.5f, 0.1f, "subllm"},
        {"T(T(T(T(T(T(T(T(T))))))))", 9, 0.5f, 0.1f, "subllm"},
        {NULL, 2, 0.5f, 0.1f, "subllm"}, /* the default string needs 3 layers */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct genmodel_opts b = o;
        b.structure = bad[i].st;
        b.n_layers = bad[i].layers;
        b.keep = bad[i].keep;
        b.keep_noise = bad[i].noise;
        b.arch = bad[i].arch;
        ck_assert_msg(genmodel_write(&b, path, err, sizeof err) == SS_EINVAL, "case %zu accepted", i);
        ck_assert(err[0] != 0);
    }
    o.structure = NULL; /* 6 layers: "T(TTTT)T" */
    ck_assert_int_eq(genmodel_write(&o, path, err, sizeof err), 0);
    struct eng_model *m = load(path, ENG_KV_F16, 16);
    ck_assert_int_eq(eng_model_n_levels(m), 2);
    for (int l = 0; l < 6; l++) ck_assert_int_eq(eng_model_layer_level(m, l), l >= 1 && l <= 4);
    eng_model_free(m);
    o.n_layers = 12; /* "TTT(TTTTTT)TTT" */
    ck_assert_int_eq(genmodel_write(&o, path, err, sizeof err), 0);
    m = load(path, ENG_KV_F16, 16);
    for (int l = 0; l < 12; l++) ck_assert_int_eq(eng_model_layer_level(m, l), l >= 3 && l <= 8);
    eng_model_free(m);
    ck_assert_int_gt(genmodel_n_params(&o), 0);
    unlink(path);
}
END_TEST

/* ------------------------------------------------------------ bad files */

/* Copies src to dst: the structure key replaced (NULL: dropped; "#u32": an
 * integer instead), tensor `drop` left out, tensor `halve` given half its
 * length. */
static void rewrite(const char *src, const char *dst, const char *structure, const char *drop, const char *halve) {
    char err[256];
    struct gguf_file *f;
    ck_assert_int_eq(gguf_open(&f, src, err, sizeof err), 0);
    struct gguf_writer *w = gguf_writer_new();
    char key[256];
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.s);
        if (!strcmp(key, "subllm.structure")) {
            if (structure && !strcmp(structure, "#u32")) gguf_w_u32(w, key, 5);
            else if (structure) gguf_w_str(w, key, structure);
            continue;
        }
        tu_copy_kv(w, key, kv);
    }
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        if (drop && !strcmp(name, drop)) continue;
        if (halve && !strcmp(name, halve)) {
            int64_t ne[1] = {t->ne[0] / 2};
            gguf_w_tensor(w, name, t->type, 1, ne, t->data, t->nbytes / 2);
            continue;
        }
        gguf_w_tensor(w, name, t->type, (int)t->n_dims, t->ne, t->data, t->nbytes);
    }
    ck_assert_int_eq(gguf_writer_save(w, dst, err, sizeof err), 0);
    gguf_writer_free(w);
    gguf_close(f);
}

START_TEST(test_bad_files) {
    const char *src = models[M_NEST2].path; /* 9 layers, "TT(TT(T)TT)TT" */
    char path[PATH_MAX];
    tu_tmp_file(path, sizeof path, "bad.gguf");
    static const struct { const char *s; int code; const char *needle; } bad[] = {
        {"TT(TT(T)TT)T", SS_EBADMODEL, "block_count"},           /* 8 T for 9 layers */
        {"TT(TT(T)TT)TTT", SS_EBADMODEL, "block_count"},         /* 10 T */
        {"TT(TT(T)TTTTT", SS_EBADMODEL, "never closed"},         /* unbalanced */
        {"TT)TT(T(TTTT", SS_EBADMODEL, "closes nothing"},
        {"TT(TT(T)TT))TT(", SS_EBADMODEL, "closes nothing"},
        {"TT(TT(T)TX)TT", SS_EBADMODEL, "'X'"},
        {"TT(TT(T)T T)T", SS_EBADMODEL, "' '"},
        {"TT(TT()TT)TTT", SS_EBADMODEL, "no block"},             /* empty bracket */
        {"TT((TTTTT))TT", SS_EBADMODEL, "no block"},             /* outer bracket without its own block */
        {"", SS_EBADMODEL, "subllm.structure"},
        {"#u32", SS_EBADMODEL, "not a string"},
        {"T(T(T(T(T(T(T(T(T))))))))", SS_EUNSUPPORTED, "subsamplers"}, /* 8 brackets, 9 T */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rewrite(src, path, bad[i].s, NULL, NULL);
        tu_expect_load_error(path, bad[i].code, bad[i].needle);
    }
    rewrite(src, path, NULL, NULL, NULL);
    tu_expect_load_error(path, SS_EBADMODEL, "missing key subllm.structure");
    /* missing or mis-shaped sub tensors */
    rewrite(src, path, "TT(TT(T)TT)TT", "sub.1.bypass.weight", NULL);
    tu_expect_load_error(path, SS_EBADMODEL, "sub.1.bypass.weight");
    rewrite(src, path, "TT(TT(T)TT)TT", "sub.0.score.weight", NULL);
    tu_expect_load_error(path, SS_EBADMODEL, "sub.0.score.weight");
    rewrite(src, path, "TT(TT(T)TT)TT", NULL, "sub.1.score.weight");
    tu_expect_load_error(path, SS_EBADMODEL, "sub.1.score.weight");
    rewrite(src, path, "TT(TT(T)TT)TT", NULL, "sub.0.bypass.weight");
    tu_expect_load_error(path, SS_EBADMODEL, "sub.0.bypass.weight");
    /* three subsamplers named by the string, the file has two */
    rewrite(src, path, "T(T(TT(T)TT)T)T", NULL, NULL);
    tu_expect_load_error(path, SS_EBADMODEL, "sub.2.score.weight");
    /* the same tensors under another valid structure load fine (sibling levels) */
    rewrite(src, path, "T(TTT)T(TTT)T", NULL, NULL);
    char err[256];
    struct eng_model *m;
    ck_assert_msg(eng_model_load(&m, path, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(eng_model_n_levels(m), 3);
    eng_model_free(m);
    unlink(path);
}
END_TEST

/* ----------------------------------------------------------- perplexity */

static double run_ppl(const char *model, int chunk, int batch) {
    struct ppl_opts o;
    ppl_opts_default(&o);
    o.model_path = model;
    o.text = genmodel_corpus();
    o.text_len = strlen(o.text);
    o.ctx = 64;
    o.batch = batch;
    o.chunk = chunk;
    o.max_windows = 3;
    o.eng.kv_type = ENG_KV_F32;
    o.eng.n_threads = 1;
    struct ppl_result r;
    char err[256];
    int rc = ppl_run(&o, &r, err, sizeof err);
    ck_assert_msg(rc == 0, "ppl_run: %d %s", rc, err);
    ck_assert_int_eq(r.n_windows, 3);
    return r.nll_mean;
}

START_TEST(test_perplexity) {
    const char *model = models[M_NEST2].path;
    double a = run_ppl(model, 64, 3), b = run_ppl(model, 5, 2), c = run_ppl(model, 13, 1);
    printf("perplexity nll_mean: chunk 64 %.12f, chunk 5 %.12f, chunk 13 %.12f\n", a, b, c);
    ck_assert_msg(a == b && a == c, "perplexity depends on the chunking: %.15g %.15g %.15g", a, b, c);
    if (!tu_ref_available(have_ref, "perplexity reference")) return;
    /* the reference on the same token ids (ppl_run tokenizes without BOS and
     * puts BOS in each window's first slot; the reference does the same) */
    struct eng_model *m = load(model, ENG_KV_F32, 16);
    const char *text = genmodel_corpus();
    int64_t cap = (int64_t)strlen(text) + 16;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    ck_assert(ids != NULL);
    int64_t n = tok_encode(eng_model_tok(m), text, strlen(text), 0, 0, ids, cap);
    ck_assert_int_gt(n, 3 * 64);
    char path[PATH_MAX], cmd[4 * PATH_MAX];
    tu_tmp_file(path, sizeof path, "ids.txt");
    FILE *fp = fopen(path, "w");
    for (int64_t i = 0; i < 3 * 64; i++) fprintf(fp, "%d ", ids[i]);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "python3 '%s/subllm_ref.py' '%s' --ppl-tokens-file '%s' --ctx 64 --max-windows 3",
             ref_dir, model, path);
    FILE *pp = popen(cmd, "r");
    ck_assert(pp != NULL);
    char line[1024] = "";
    ck_assert(fgets(line, sizeof line, pp) != NULL);
    pclose(pp);
    unlink(path);
    const char *k = strstr(line, "\"nll_mean\":");
    ck_assert_msg(k != NULL, "reference output: %s", line);
    double want = strtod(k + 11, NULL);
    printf("perplexity nll_mean %.9f, reference %.9f\n", a, want);
    ck_assert_msg(fabs(a - want) < 1e-5, "nll_mean %.9f vs reference %.9f", a, want);
    free(ids);
    eng_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------ main */

static Suite *suite(void) {
    Suite *s = suite_create("subllm");
    struct { const char *name; const TTest *fn; int lo, hi; } tests[] = {
        {"levels", test_levels_and_units, 0, 1},
        {"ref", test_ref_models, M_NEST2, M_DENSE},
        {"ref_f16_kv", test_ref_f16_kv, 0, 1},
        {"incremental", test_incremental_and_chunked, 0, 2 * (int)(sizeof incr_models / sizeof incr_models[0])},
        {"batch", test_batch_invariance, 0, 3},
        {"units", test_identity_unit_mapping, 0, 2},
        {"corners", test_keep_corner_cases, 0, 1},
        {"keep01", test_keep_zero_and_all, 0, 1},
        {"invalid", test_invalid_batches, 0, 1},
        {"badfiles", test_bad_files, 0, 1},
        {"genmodel", test_genmodel_options, 0, 1},
        {"perplexity", test_perplexity, 0, 1},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        TCase *tc = tcase_create(tests[i].name);
        tcase_set_timeout(tc, 300);
        tcase_add_loop_test(tc, tests[i].fn, tests[i].lo, tests[i].hi);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    tu_init("test_subllm");
    have_ref = tu_find_ref("subllm_ref.py", ref_script, sizeof ref_script);
    snprintf(ref_dir, sizeof ref_dir, "%s/tests/ref", tu_src_dir);
    if (gen_models() < 0) return 1;
    SRunner *sr = srunner_create(suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    for (int i = 0; i < M_COUNT; i++) unlink(models[i].path);
    return failed != 0;
}
