/* test_lp.c - layer parallelism (engine/forward_lp.c, DESIGN.md section 5).
 *
 * Generated models (llama with grouped K/V heads, qwen2 with biases, gemma3
 * with q/k norms, post-norms, gelu-tanh and a sliding window of 8 with every
 * sixth layer global) run 40-token prompts with paired ranges and are
 * compared at every position with tests/ref/lp_ref.py, an independent NumPy
 * float64 implementation of the paired arithmetic (tolerance 1e-4, F32 K/V).
 * Then, bitwise:
 * - an off range (never set, set then 0:0, or ENG_LP_OFF) gives exactly the
 *   sequential model;
 * - with pairs on, incremental decode reproduces the full-prompt logits, and
 *   the two-core execution equals the one-after-the-other execution;
 * - with pairs on, a sequence's logits are the same alone and inside a ragged
 *   batch on scattered pages;
 * - every layer still writes its own K/V in the usual paged layout: for a
 *   range starting at s, layers 0..s (whose inputs are unchanged) hold
 *   exactly the sequential model's K/V, and no layer touches a slot outside
 *   the sequence's pages.
 * Invalid ranges (odd length, start >= end, out of bounds) and malformed
 * lp.range file keys fail with SS_EINVAL and a message; the file key is the
 * default that eng_options overrides. A SUBLLM model refuses ranges that
 * reach into a bracket and runs level-0 pairs; scattered per-layer block
 * tables give the same logits as identity tables (eng_kv_identity_tables).
 *
 * White box: the K/V check reads the unit pool through engine/model_internal.h.
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
#include "engine/model_internal.h"
#include "kernels/ss_error.h"
#include "tools/genmodel.h"
#include "testutil.h"
#include "tu_check.h"

static char ref_script[PATH_MAX];
static int have_ref;

/* ---------------------------------------------------------------- models */

enum { M_LLAMA, M_GEMMA, M_QWEN2, M_COUNT };
static char paths[M_COUNT][PATH_MAX];

static void gen_opts(int which, struct genmodel_opts *o) {
    genmodel_opts_default(o);
    o->dim = 64, o->n_heads = 4, o->n_kv_heads = 2, o->ffn_dim = 128;
    switch (which) {
    case M_LLAMA:
        o->n_layers = 6, o->seed = 21;
        break;
    case M_GEMMA: /* head_dim 32 != dim/heads; window 8, default pattern: layer 5 global */
        o->arch = "gemma3", o->n_layers = 7, o->head_dim = 32, o->swa_window = 8;
        o->rope_theta = 1e6f, o->norm_eps = 1e-6f, o->seed = 22;
        break;
    default:
        o->arch = "qwen2", o->n_layers = 4, o->tokenizer = "bpe", o->seed = 23;
        break;
    }
}

static int gen_models(void) {
    char err[256];
    for (int i = 0; i < M_COUNT; i++) {
        struct genmodel_opts o;
        gen_opts(i, &o);
        char name[32];
        snprintf(name, sizeof name, "m%d.gguf", i);
        tu_tmp_file(paths[i], sizeof paths[i], name);
        int rc = genmodel_write(&o, paths[i], err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "genmodel %d: %s\n", i, err);
            return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

/* eng_model_load applies the lp options (and the file's lp.range); exec is
 * eng_options.lp_exec (ENG_LP_EXEC_*). */
static struct eng_model *load_x(int which, int start, int end, int exec) {
    struct eng_options o = {.kv_type = ENG_KV_F32, .max_batch_tokens = 64, .n_ctx = 128,
                            .lp_mode = start == end ? ENG_LP_OFF : ENG_LP_RANGE,
                            .lp_start = start, .lp_end = end, .lp_exec = exec};
    return tu_load(paths[which], &o);
}
static struct eng_model *load(int which, int start, int end) { return load_x(which, start, end, ENG_LP_EXEC_AUTO); }

static void unload(struct eng_model *m) { eng_model_free(m); }

/* ------------------------------------------------------ reference numerics */

struct ref_case {
    int model, start, end;
};
static const struct ref_case ref_cases[] = {
    {M_LLAMA, 2, 6}, {M_LLAMA, 0, 6}, {M_GEMMA, 4, 6}, {M_GEMMA, 0, 6}, {M_GEMMA, 1, 7}, {M_QWEN2, 0, 4},
};

#define N_REF_CASES ((int)(sizeof ref_cases / sizeof ref_cases[0]))

/* _i < N_REF_CASES: branch by branch; then the same cases merged (one wider
 * GEMM per pair, norm weights folded: lp_merge.c), which must meet the same
 * tolerance and differ from the branch-by-branch logits (it ran). */
START_TEST(test_ref) {
    const struct ref_case *rc = &ref_cases[_i % N_REF_CASES];
    const int merged = _i >= N_REF_CASES;
    if (!tu_ref_available(have_ref, "lp reference comparison")) return;
    struct eng_model *m = load_x(rc->model, rc->start, rc->end, merged ? ENG_LP_EXEC_MERGED : ENG_LP_EXEC_BRANCHES);
    struct eng_model *plain = load(rc->model, 0, 0);
    const int n = 40, V = eng_model_config(m)->n_vocab;
    int32_t toks[40], pages[3] = {5, 0, 2};
    tu_prompt(toks, n, V, rc->model + 1);
    float *got = malloc((size_t)n * V * sizeof *got), *seq = malloc((size_t)n * V * sizeof *seq);
    ck_assert(got && seq);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 3, 1, got), 0);
    ck_assert_int_eq(tu_run1(plain, toks, n, 0, pages, 3, 1, seq), 0);

    char range[32];
    snprintf(range, sizeof range, "--range %d:%d", rc->start, rc->end);
    float *want = tu_run_ref(ref_script, paths[rc->model], toks, n, range, (size_t)n * V);
    double d = tu_max_abs_diff(got, want, (size_t)n * V), dseq = tu_max_abs_diff(got, seq, (size_t)n * V);
    printf("lp ref model %d range %d:%d%s: max |logit - ref| = %.3g over %d positions; differs from the "
           "sequential model by %.3g\n", rc->model, rc->start, rc->end, merged ? " merged" : "", d, n, dseq);
    ck_assert_msg(d <= 1e-4, "model %d range %d:%d%s: max diff %g", rc->model, rc->start, rc->end,
                  merged ? " merged" : "", d);
    ck_assert_msg(dseq > 1e-2, "pairing changed nothing (%g): did the hook run?", dseq);
    if (merged) { /* the merged path ran: another rounding order than the branches' */
        struct eng_model *br = load_x(rc->model, rc->start, rc->end, ENG_LP_EXEC_BRANCHES);
        ck_assert_int_eq(tu_run1(br, toks, n, 0, pages, 3, 1, seq), 0);
        double dbr = tu_max_abs_diff(got, seq, (size_t)n * V);
        printf("    merged vs branch by branch: max |diff| = %.3g\n", dbr);
        ck_assert_msg(dbr > 0, "merged logits are bitwise the branch-by-branch ones: did the merged path run?");
        unload(br);
    }
    free(got);
    free(seq);
    free(want);
    unload(m);
    unload(plain);
}
END_TEST

/* ----------------------------------------------------------- off = plain */

START_TEST(test_off_is_bitwise_plain) {
    const int which = _i;
    struct eng_options o = {.kv_type = ENG_KV_F32, .max_batch_tokens = 64, .n_ctx = 128};
    char err[256];
    struct eng_model *fresh = NULL;
    ck_assert_int_eq(eng_model_load(&fresh, paths[which], &o, err, sizeof err), 0); /* never touched */
    struct eng_model *reset = load(which, 0, 4);
    ck_assert_int_eq(eng_model_set_layer_parallel(reset, 0, 0, err, sizeof err), 0);
    ck_assert_int_eq(eng_model_layer_parallel(reset, NULL, NULL), 0);
    struct eng_model *off = load(which, 0, 0);
    const int n = 30, V = eng_model_config(fresh)->n_vocab;
    int32_t toks[30], pages[2] = {3, 1};
    tu_prompt(toks, n, V, 9);
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4), *c = malloc((size_t)n * V * 4);
    ck_assert(a && b && c);
    ck_assert_int_eq(tu_run1(fresh, toks, n, 0, pages, 2, 1, a), 0);
    ck_assert_int_eq(tu_run1(reset, toks, n, 0, pages, 2, 1, b), 0);
    ck_assert_int_eq(tu_run1(off, toks, n, 0, pages, 2, 1, c), 0);
    ck_assert_msg(memcmp(a, b, (size_t)n * V * 4) == 0, "range set then turned off differs from the plain model");
    ck_assert_msg(memcmp(a, c, (size_t)n * V * 4) == 0, "ENG_LP_OFF differs from the plain model");
    free(a);
    free(b);
    free(c);
    eng_model_free(fresh);
    unload(reset);
    unload(off);
}
END_TEST

/* ------------------------------------------- incremental decode, two modes */

/* Full prompt, then prefill k + one token at a time on other pages: bitwise. */
static void incremental(struct eng_model *m, float *full) {
    const int n = 37, k = 20, V = eng_model_config(m)->n_vocab;
    int32_t toks[37], pages[3] = {4, 0, 6}, pages2[3] = {2, 7, 5};
    tu_prompt(toks, n, V, 7);
    float *step = malloc((size_t)V * sizeof *step);
    ck_assert(step);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 3, 1, full), 0);
    ck_assert_int_eq(tu_run1(m, toks, k, 0, pages2, 3, 0, step), 0);
    ck_assert_msg(memcmp(step, full + (size_t)(k - 1) * V, (size_t)V * 4) == 0, "prefill of %d differs", k);
    for (int i = k; i < n; i++) {
        ck_assert_int_eq(tu_run1(m, toks + i, 1, i, pages2, 3, 0, step), 0);
        double d = tu_max_abs_diff(step, full + (size_t)i * V, (size_t)V);
        ck_assert_msg(d == 0, "LP decode step %d differs from the full prompt by %g", i, d);
    }
    free(step);
}

START_TEST(test_incremental_and_exec_modes) {
    const int which = _i, V = 512, n = 37;
    const int start = which == M_GEMMA ? 2 : 0, end = which == M_GEMMA ? 6 : 4;
    float *full[3] = {malloc((size_t)n * V * 4), malloc((size_t)n * V * 4), malloc((size_t)n * V * 4)};
    ck_assert(full[0] && full[1] && full[2]);
    const char *modes[2] = {"seq", "split"};
    for (int i = 0; i < 3; i++) { /* i == 2: merged pairs (split fork2 for their attention) */
        setenv("SLIMSERVE_LP_EXEC", modes[i % 2], 1); /* read by the CPU backend at be_open (load) */
        struct eng_model *m = load_x(which, start, end, i == 2 ? ENG_LP_EXEC_MERGED : ENG_LP_EXEC_AUTO);
        ck_assert_int_eq(eng_model_config(m)->n_vocab, V);
        incremental(m, i == 2 ? full[2] : full[i]);
        unload(m);
    }
    unsetenv("SLIMSERVE_LP_EXEC");
    ck_assert_msg(memcmp(full[0], full[1], (size_t)n * V * 4) == 0,
                  "two-core execution differs from sequential execution of the pairs");
    free(full[0]);
    free(full[1]);
    free(full[2]);
}
END_TEST

/* ------------------------------------------------------------ ragged batch */

/* _i: model _i % 2, branch by branch (_i < 2) or merged */
START_TEST(test_batch_invariance) {
    struct eng_model *m = load_x(_i % 2, 0, 4, _i < 2 ? ENG_LP_EXEC_BRANCHES : ENG_LP_EXEC_MERGED);
    const int V = eng_model_config(m)->n_vocab;
    int32_t a[20], b[33], c[3];
    tu_prompt(a, 20, V, 1);
    tu_prompt(b, 33, V, 2);
    tu_prompt(c, 3, V, 3);
    float *alone = malloc((size_t)21 * V * 4), *batched = malloc((size_t)64 * V * 4);
    ck_assert(alone && batched);
    int32_t pa[2] = {1, 6};
    ck_assert_int_eq(tu_run1(m, a, 19, 0, pa, 2, 1, alone), 0);
    ck_assert_int_eq(tu_run1(m, a + 19, 1, 19, pa, 2, 0, alone + (size_t)19 * V), 0);

    int32_t pa2[2] = {7, 3}, pb[3] = {2, 5, 0}, pc[1] = {4};
    const int32_t *lists[3] = {pc, pa2, pb}, n_list[3] = {1, 2, 3};
    struct eng_kv_tables t[3]; /* tc, ta2, tb */
    for (int i = 0; i < 3; i++) ck_assert_int_eq(eng_kv_identity_tables(&t[i], m, lists[i], n_list[i]), 0);
    int32_t toks[64];
    memcpy(toks, c, 3 * sizeof *toks);
    memcpy(toks + 3, a, 19 * sizeof *toks);
    memcpy(toks + 22, b, 33 * sizeof *toks);
    struct eng_seq s1[3] = {
        {.tok0 = 0, .n_tok = 3, .n_past = 0, .layer_pages = t[0].rows, .layer_n_pages = 1, .want_logits = 1},
        {.tok0 = 3, .n_tok = 19, .n_past = 0, .layer_pages = t[1].rows, .layer_n_pages = 2, .all_logits = 1},
        {.tok0 = 22, .n_tok = 33, .n_past = 0, .layer_pages = t[2].rows, .layer_n_pages = 3},
    };
    struct eng_batch b1 = {.tokens = toks, .n_tokens = 55, .seqs = s1, .n_seqs = 3};
    ck_assert_int_eq(eng_forward(m, &b1, batched), 0);
    ck_assert_msg(memcmp(batched + V, alone, (size_t)19 * V * 4) == 0, "LP prefill differs inside a batch");

    int32_t t2[3] = {5, a[19], 9}; /* C, A, B decode one token each */
    struct eng_seq s2[3] = {
        {.tok0 = 0, .n_tok = 1, .n_past = 3, .layer_pages = t[0].rows, .layer_n_pages = 1, .want_logits = 1},
        {.tok0 = 1, .n_tok = 1, .n_past = 19, .layer_pages = t[1].rows, .layer_n_pages = 2, .want_logits = 1},
        {.tok0 = 2, .n_tok = 1, .n_past = 33, .layer_pages = t[2].rows, .layer_n_pages = 3, .want_logits = 1},
    };
    struct eng_batch b2 = {.tokens = t2, .n_tokens = 3, .seqs = s2, .n_seqs = 3};
    ck_assert_int_eq(eng_forward(m, &b2, batched), 0);
    ck_assert_msg(memcmp(batched + V, alone + (size_t)19 * V, (size_t)V * 4) == 0,
                  "LP decode differs inside a batch");
    for (int i = 0; i < 3; i++) eng_kv_tables_free(&t[i]);
    free(alone);
    free(batched);
    unload(m);
}
END_TEST

/* ---------------------------------------------------------- K/V per layer */

START_TEST(test_kv_layout) {
    const int which = _i, start = 2, end = which == M_GEMMA ? 6 : 4;
    struct eng_model *plain = load(which, 0, 0), *lp = load(which, start, end);
    const int V = eng_model_config(lp)->n_vocab, n = 21;
    int32_t toks[21], pages[2] = {6, 1};
    tu_prompt(toks, n, V, 5);
    float *lg = malloc((size_t)V * 4);
    ck_assert(lg);
    ck_assert_int_eq(tu_run1(plain, toks, n, 0, pages, 2, 0, lg), 0);
    ck_assert_int_eq(tu_run1(lp, toks, n, 0, pages, 2, 0, lg), 0);
    /* unit pool (model_internal.h): with identity tables page p of layer l is unit p*L + l */
    const int L = lp->cfg.n_layers;
    const size_t kvdim = (size_t)eng_kvdim(&lp->cfg), unit = (size_t)BE_PAGE_SLOTS * kvdim;
    ck_assert(lp->kv_type == BE_F32 && lp->n_units == plain->n_units && lp->n_units == lp->n_pages * L);
    for (int l = 0; l < L; l++) {
        int same = 1;
        for (int32_t u = l; u < lp->n_units; u += L) {
            const float *kp = (const float *)plain->kv_k + u * unit, *kl = (const float *)lp->kv_k + u * unit;
            const float *vp = (const float *)plain->kv_v + u * unit, *vl = (const float *)lp->kv_v + u * unit;
            same &= memcmp(kp, kl, unit * 4) == 0 && memcmp(vp, vl, unit * 4) == 0;
            /* every slot of the sequence written (in its page's unit of layer l), nothing else */
            int page = u / L;
            for (int off = 0; off < BE_PAGE_SLOTS; off++) {
                int pos = page == pages[0] ? off : page == pages[1] ? BE_PAGE_SLOTS + off : -1;
                int used = pos >= 0 && pos < n, nz = 0;
                for (size_t e = 0; e < kvdim; e++) nz |= kl[off * kvdim + e] != 0.0f || vl[off * kvdim + e] != 0.0f;
                ck_assert_msg(nz == used, "layer %d page %d slot %d: %s", l, page, off,
                              used ? "K/V not written" : "stray write");
            }
        }
        if (l <= start) ck_assert_msg(same, "layer %d: K/V differ from the sequential model's", l);
        if (l == start + 1) ck_assert_msg(!same, "layer %d: K/V unchanged though its input changed", l);
    }
    free(lg);
    unload(plain);
    unload(lp);
}
END_TEST

/* ------------------------------------------------- per-layer addressing */

/* The same sequence on scattered per-layer tables (every layer on its own
 * units, none where identity tables put them), prefilled then decoded: bitwise
 * the logits of identity tables. The decode step reads the cache each layer
 * of a pair wrote, so the pair's second layer must use its own view
 * (eng_layer_view buffer 1). */
START_TEST(test_per_layer_tables) {
    struct eng_model *m = load(M_GEMMA, 0, 6);
    const int V = eng_model_config(m)->n_vocab, L = eng_model_config(m)->n_layers, n = 25;
    int32_t toks[25], pages[2] = {3, 6}, units[7][2];
    const int32_t *tabs[7];
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < 2; i++) units[l][i] = (l * 2 + i) * 7 + 3; /* distinct, not p*L + l */
        tabs[l] = units[l];
    }
    ck_assert_int_ge(eng_model_n_units(m), 7 * 14);
    tu_prompt(toks, n, V, 4);
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4);
    ck_assert(a && b);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 2, 1, a), 0);
    struct eng_seq s = {.tok0 = 0, .n_tok = n - 1, .n_past = 0, .all_logits = 1, .want_logits = 1,
                        .layer_pages = tabs, .layer_n_pages = 2};
    struct eng_batch bt = {.tokens = toks, .n_tokens = n - 1, .seqs = &s, .n_seqs = 1};
    ck_assert_int_eq(eng_forward(m, &bt, b), 0);
    s = (struct eng_seq){.tok0 = 0, .n_tok = 1, .n_past = n - 1, .want_logits = 1, .layer_pages = tabs,
                         .layer_n_pages = 2};
    bt = (struct eng_batch){.tokens = toks + n - 1, .n_tokens = 1, .seqs = &s, .n_seqs = 1};
    ck_assert_int_eq(eng_forward(m, &bt, b + (size_t)(n - 1) * V), 0);
    ck_assert_msg(memcmp(a, b, (size_t)n * V * 4) == 0, "scattered per-layer tables differ from identity tables with LP on");
    free(a);
    free(b);
    unload(m);
}
END_TEST

/* ------------------------------------------------------------ bad ranges */

START_TEST(test_invalid_ranges) {
    struct eng_model *m = load(M_LLAMA, 2, 6);
    char err[256];
    const int bad[][2] = {{0, 3}, {1, 4}, {4, 4}, {5, 3}, {-2, 2}, {2, 8}, {0, 7}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = eng_model_set_layer_parallel(m, bad[i][0], bad[i][1], err, sizeof err);
        ck_assert_msg(rc == SS_EINVAL, "range %d:%d accepted (%d)", bad[i][0], bad[i][1], rc);
        ck_assert_msg(strlen(err) > 10, "range %d:%d: no message", bad[i][0], bad[i][1]);
        int s, e;
        ck_assert(eng_model_layer_parallel(m, &s, &e) == 1 && s == 2 && e == 6); /* unchanged */
    }
    ck_assert_int_eq(eng_model_set_layer_parallel(m, 0, 6, err, sizeof err), 0);
    struct eng_options o = {.lp_mode = ENG_LP_RANGE, .lp_start = 0, .lp_end = 0};
    ck_assert_int_eq(eng_model_apply_layer_parallel(m, &o, err, sizeof err), SS_EINVAL);
    o.lp_mode = 7;
    ck_assert_int_eq(eng_model_apply_layer_parallel(m, &o, err, sizeof err), SS_EINVAL);
    unload(m);
}
END_TEST

/* ------------------------------------------------------------- SUBLLM */

/* "TT(TT)TT": layers 2 and 3 run at level 1. Pairs must stay at level 0. */
START_TEST(test_subllm_brackets) {
    char p[PATH_MAX + 32], err[256];
    tu_tmp_file(p, sizeof p, "sub.gguf");
    struct genmodel_opts g;
    genmodel_opts_default(&g);
    g.arch = "subllm", g.n_layers = 6, g.structure = "TT(TT)TT", g.seed = 24;
    ck_assert_int_eq(genmodel_write(&g, p, err, sizeof err), 0);
    struct eng_options o = {.kv_type = ENG_KV_F32, .max_batch_tokens = 32, .n_ctx = 64};
    struct eng_model *m = tu_load(p, &o);
    ck_assert_int_eq(eng_model_n_levels(m), 2);
    const int bad[][2] = {{2, 4}, {0, 4}, {1, 3}, {0, 6}, {2, 6}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        ck_assert_int_eq(eng_model_set_layer_parallel(m, bad[i][0], bad[i][1], err, sizeof err), SS_EINVAL);
        ck_assert_msg(strstr(err, "SUBLLM") != NULL, "range %d:%d: message '%s'", bad[i][0], bad[i][1], err);
    }
    const int V = eng_model_config(m)->n_vocab, n = 20;
    int32_t toks[20], pages[2] = {0, 1};
    tu_prompt(toks, n, V, 6);
    float *a = malloc((size_t)n * V * 4), *b = malloc((size_t)n * V * 4);
    ck_assert(a && b);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 2, 1, a), 0);
    ck_assert_int_eq(eng_model_set_layer_parallel(m, 0, 2, err, sizeof err), 0);
    ck_assert_int_eq(eng_model_set_layer_parallel(m, 4, 6, err, sizeof err), 0);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 2, 1, b), 0);
    double d = tu_max_abs_diff(a, b, (size_t)n * V);
    ck_assert_msg(d > 1e-3 && isfinite(d), "pairing 4:6 of a SUBLLM model changed nothing (%g)", d);
    free(a);
    free(b);
    unload(m);
    unlink(p);
}
END_TEST

/* ---------------------------------------------------------- lp.range key */

/* Copies the llama model adding the key lp.range (string or [a, b] array). */
static void with_key(const char *dst, const char *str, int a, int b) {
    char err[256];
    struct gguf_file *f;
    ck_assert_int_eq(gguf_open(&f, paths[M_LLAMA], err, sizeof err), 0);
    struct gguf_writer *w = gguf_writer_new();
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.s);
        tu_copy_kv(w, key, kv);
    }
    if (str) {
        gguf_w_str(w, "lp.range", str);
    } else {
        uint32_t v[2] = {(uint32_t)a, (uint32_t)b};
        gguf_w_arr(w, "lp.range", GGUF_T_UINT32, v, 2);
    }
    tu_copy_tensors(w, f);
    ck_assert_int_eq(gguf_writer_save(w, dst, err, sizeof err), 0);
    gguf_writer_free(w);
    gguf_close(f);
}

START_TEST(test_file_key) {
    char p[PATH_MAX + 32], err[256];
    tu_tmp_file(p, sizeof p, "key.gguf");
    struct eng_options o = {.kv_type = ENG_KV_F32, .max_batch_tokens = 16, .n_ctx = 64};
    struct eng_model *m = NULL;
    int s = -1, e = -1;

    with_key(p, "2:6", 0, 0);
    m = tu_load(p, &o); /* ENG_LP_FILE: the key */
    ck_assert(eng_model_layer_parallel(m, &s, &e) == 1 && s == 2 && e == 6);
    unload(m);
    o.lp_mode = ENG_LP_RANGE, o.lp_start = 0, o.lp_end = 2; /* the option overrides the key */
    m = tu_load(p, &o);
    ck_assert(eng_model_layer_parallel(m, &s, &e) == 1 && s == 0 && e == 2);
    unload(m);
    o.lp_mode = ENG_LP_OFF;
    m = tu_load(p, &o);
    ck_assert_int_eq(eng_model_layer_parallel(m, &s, &e), 0);
    unload(m);

    o.lp_mode = ENG_LP_FILE;
    with_key(p, NULL, 0, 4); /* u32 array form */
    m = tu_load(p, &o);
    ck_assert(eng_model_layer_parallel(m, &s, &e) == 1 && s == 0 && e == 4);
    unload(m);

    const char *bad[] = {"1:4", "2:x", "banana", "3:3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        with_key(p, bad[i], 0, 0);
        err[0] = 0;
        ck_assert_int_eq(eng_model_load(&m, p, &o, err, sizeof err), SS_EINVAL);
        ck_assert_msg(strstr(err, "lp.range") != NULL, "key '%s': message '%s'", bad[i], err);
        o.lp_mode = ENG_LP_OFF; /* the option overrides even a bad key */
        m = tu_load(p, &o);
        unload(m);
        o.lp_mode = ENG_LP_FILE;
    }
    unlink(p);
}
END_TEST

/* ---------------------------------------------------------------- runner */

static Suite *lp_suite(void) {
    Suite *s = suite_create("lp");
    TCase *t = tcase_create("lp");
    tcase_set_timeout(t, 120);
    tcase_add_loop_test(t, test_ref, 0, 2 * N_REF_CASES);
    tcase_add_loop_test(t, test_off_is_bitwise_plain, 0, M_COUNT);
    tcase_add_loop_test(t, test_incremental_and_exec_modes, 0, 2);
    tcase_add_loop_test(t, test_batch_invariance, 0, 4);
    tcase_add_loop_test(t, test_kv_layout, 0, 2);
    tcase_add_test(t, test_per_layer_tables);
    tcase_add_test(t, test_invalid_ranges);
    tcase_add_test(t, test_subllm_brackets);
    tcase_add_test(t, test_file_key);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    tu_init("test_lp");
    if (gen_models() < 0) return 1;
    have_ref = tu_find_ref("lp_ref.py", ref_script, sizeof ref_script);
    int failed = tu_check_run(lp_suite());
    for (int i = 0; i < M_COUNT; i++) unlink(paths[i]);
    return failed != 0;
}
