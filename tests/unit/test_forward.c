/* test_forward.c - model loading and the forward pass.
 *
 * - numerics: small generated llama models (f32, f16, bf16, q8_0; spm and bpe;
 *   grouped and full K/V heads; tied and untied output; qwen2 with q/k/v
 *   biases, both rewritten from llama and written by genmodel) run a prompt with
 *   all_logits and are compared with tests/ref/llama_ref.py, an independent
 *   NumPy float64 implementation reading the same GGUF file;
 * - incremental decode (prefill k tokens, then one at a time) reproduces the
 *   full-prompt logits bitwise (F32 and F16 KV);
 * - a sequence's logits are bitwise identical alone and inside a ragged batch
 *   with other sequences of different lengths on non-contiguous pages;
 * - malformed batches return SS_EINVAL and leave the KV cache untouched;
 * - files with a missing or mis-shaped tensor or an unknown architecture fail
 *   to load with a message naming the problem.
 *
 * The NumPy reference needs python3 with numpy and the PyPI `gguf` package.
 * Without them the comparison is skipped with a notice, unless
 * SLIMSERVE_REQUIRE_REF=1 makes that a failure. The script is found through
 * SLIMSERVE_SRC_DIR, else from __FILE__ (relative paths are resolved against
 * the build root, two levels above this executable).
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
#include "tools/genmodel.h"
#include "testutil.h"
#include "tu_check.h"

/* ----------------------------------------------------------------- models */

enum { M_F32, M_F32_TIED_MHA, M_Q8, M_F16_TIED, M_BF16_BPE, M_QWEN2, M_ROPE_FREQS, M_QWEN2_GEN, M_COUNT };

struct test_model {
    const char *label;
    int wtype, tied, n_kv_heads, dim, n_heads, ffn, n_layers;
    const char *tok;
    uint64_t seed;
    double tol; /* max abs logit difference allowed against the reference */
    char path[PATH_MAX];
};

/* Logits have std ~2 (max ~10); fp32 arithmetic against float64 gives ~3e-6.
 * The brief asked for ~1e-3; 1e-4 keeps 30x headroom and catches more. */
static struct test_model models[M_COUNT] = {
    [M_F32] = {"f32 spm gqa(4/2) untied", BE_F32, 0, 2, 64, 4, 192, 2, "spm", 1, 1e-4},
    [M_F32_TIED_MHA] = {"f32 spm mha(4/4) tied 3 layers", BE_F32, 1, 4, 64, 4, 192, 3, "spm", 2, 1e-4},
    [M_Q8] = {"q8_0 spm mqa(4/1) untied hd32", BE_Q8_0, 0, 1, 128, 4, 256, 2, "spm", 3, 1e-4},
    [M_F16_TIED] = {"f16 spm gqa(8/2) tied", BE_F16, 1, 2, 64, 8, 128, 2, "spm", 4, 1e-4},
    [M_BF16_BPE] = {"bf16 bpe gqa(4/2) untied", BE_BF16, 0, 2, 64, 4, 192, 2, "bpe", 5, 1e-4},
    /* generated as llama, then rewritten as qwen2 with q/k/v biases (make_variant) */
    [M_QWEN2] = {"qwen2 (neox, qkv bias) f32 gqa(4/2)", BE_F32, 0, 2, 64, 4, 192, 2, "bpe", 6, 1e-4},
    /* generated as llama, then given a rope_freqs.weight (llama3-style) */
    [M_ROPE_FREQS] = {"llama + rope_freqs f32 gqa(4/2)", BE_F32, 0, 2, 64, 4, 192, 2, "spm", 7, 1e-4},
    /* written by genmodel as arch qwen2 (its own q/k/v biases), q8_0, tied */
    [M_QWEN2_GEN] = {"qwen2 genmodel q8_0 tied mqa(4/1)", BE_Q8_0, 1, 1, 128, 4, 256, 2, "bpe", 8, 1e-4},
};

static char ref_script[PATH_MAX];
static int have_ref; /* python3 + numpy + gguf importable and the script found */

static float lcg_uniform(uint64_t *st) { /* [0, 1) */
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*st >> 40) / (double)(1ull << 24));
}

/* Copies a generated llama file, either as architecture qwen2 ("llama.*" keys
 * become "qwen2.*") with random q/k/v biases of magnitude ~0.5, so the qwen2
 * row of the architecture table (rotate-half RoPE, biases) is exercised; or as
 * llama with a rope_freqs.weight of divisors in [1, 8). */
static int make_variant(const char *src, const char *dst, int qwen2, char *err, size_t err_len) {
    struct gguf_file *f;
    int rc = gguf_open(&f, src, err, err_len);
    if (rc < 0) return rc;
    struct gguf_writer *w = gguf_writer_new();
    char key[256];
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        int n = kv->key.len < 200 ? (int)kv->key.len : 200;
        if (qwen2 && n > 6 && memcmp(kv->key.s, "llama.", 6) == 0)
            snprintf(key, sizeof key, "qwen2.%.*s", n - 6, kv->key.s + 6);
        else
            snprintf(key, sizeof key, "%.*s", n, kv->key.s);
        if (qwen2 && !strcmp(key, "general.architecture")) {
            gguf_w_str(w, key, "qwen2");
            continue;
        }
        tu_copy_kv(w, key, kv);
    }
    int n_layers = 0, qdim = 0, kvdim = 0;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        gguf_w_tensor(w, name, t->type, (int)t->n_dims, t->ne, t->data, t->nbytes);
        int il;
        if (sscanf(name, "blk.%d.", &il) == 1 && il + 1 > n_layers) n_layers = il + 1;
        if (strstr(name, "attn_q.weight")) qdim = (int)t->ne[1];
        if (strstr(name, "attn_k.weight")) kvdim = (int)t->ne[1];
    }
    uint64_t st = 12345;
    float *bias = malloc(sizeof(float) * (size_t)(qdim > kvdim ? qdim : kvdim));
    for (int il = 0; il < n_layers && bias && qwen2; il++) {
        static const char *const which[3] = {"q", "k", "v"};
        for (int k = 0; k < 3; k++) {
            int64_t ne[1] = {k == 0 ? qdim : kvdim};
            for (int64_t j = 0; j < ne[0]; j++) bias[j] = lcg_uniform(&st) - 0.5f;
            char name[64];
            snprintf(name, sizeof name, "blk.%d.attn_%s.bias", il, which[k]);
            gguf_w_tensor(w, name, BE_F32, 1, ne, bias, (size_t)ne[0] * sizeof(float));
        }
    }
    if (!qwen2 && bias) {
        int64_t ne[1] = {qdim / 4 / 2}; /* n_heads = 4, n_rot = head_dim */
        for (int64_t j = 0; j < ne[0]; j++) bias[j] = 1.0f + 7.0f * lcg_uniform(&st);
        gguf_w_tensor(w, "rope_freqs.weight", BE_F32, 1, ne, bias, (size_t)ne[0] * sizeof(float));
    }
    free(bias);
    if (rc == 0) rc = gguf_writer_save(w, dst, err, err_len);
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}

static int gen_models(void) {
    char err[256];
    for (int i = 0; i < M_COUNT; i++) {
        struct test_model *t = &models[i];
        struct genmodel_opts o;
        genmodel_opts_default(&o);
        o.wtype = t->wtype;
        o.tied = t->tied;
        o.n_kv_heads = t->n_kv_heads;
        o.n_heads = t->n_heads;
        o.dim = t->dim;
        o.ffn_dim = t->ffn;
        o.n_layers = t->n_layers;
        o.tokenizer = t->tok;
        o.seed = t->seed;
        if (i == M_QWEN2_GEN) o.arch = "qwen2";
        char name[32];
        snprintf(name, sizeof name, "m%d.gguf", i);
        tu_tmp_file(t->path, sizeof t->path, name);
        int rc = genmodel_write(&o, t->path, err, sizeof err);
        if (rc == 0 && (i == M_QWEN2 || i == M_ROPE_FREQS)) {
            char tmp[PATH_MAX + 16];
            snprintf(tmp, sizeof tmp, "%s.llama", t->path);
            rc = rename(t->path, tmp) == 0 ? make_variant(tmp, t->path, i == M_QWEN2, err, sizeof err) : SS_EIO;
            unlink(tmp);
        }
        if (rc < 0) {
            fprintf(stderr, "genmodel %s: %s\n", t->label, err);
            return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static struct eng_model *load(const char *path, int kv_type, int max_batch) {
    struct eng_options o = {.kv_type = kv_type, .max_batch_tokens = max_batch, .n_ctx = 256};
    return tu_load(path, &o);
}

/* ------------------------------------------------------ reference numerics */

static void compare_with_ref(int which, int kv_type, double tol) {
    struct test_model *t = &models[which];
    char what[128];
    snprintf(what, sizeof what, "reference comparison for %s", t->label);
    if (!tu_ref_available(have_ref, what)) return;
    struct eng_model *m = load(t->path, kv_type, 64);
    const int n = 40, V = eng_model_config(m)->n_vocab;
    int32_t toks[40], pages[3] = {9, 3, 17};
    tu_prompt(toks, n, V, which);
    float *got = malloc((size_t)n * V * sizeof *got);
    ck_assert(got != NULL);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 3, 1, got), 0);

    float *want = tu_run_ref(ref_script, t->path, toks, n, "", (size_t)n * V);
    double maxref;
    int argmax_same;
    double maxd = tu_compare_logits(got, want, n, V, &maxref, &argmax_same);
    printf("ref %-34s kv %s: max |logit - ref| = %.3g (max |ref| %.2f, argmax agrees %d/%d)\n", t->label,
           kv_type == ENG_KV_F32 ? "f32" : "f16", maxd, maxref, argmax_same, n);
    fflush(stdout);
    ck_assert_msg(maxd <= tol, "%s: max abs diff %g > %g", t->label, maxd, tol);
    free(want);
    free(got);
    eng_model_free(m);
}

START_TEST(test_ref_models) {
    compare_with_ref(_i, ENG_KV_F32, models[_i].tol);
}
END_TEST

/* F16 K/V: values rounded to 11 bits of mantissa before attention. */
START_TEST(test_ref_f16_kv) {
    compare_with_ref(M_F32, ENG_KV_F16, 2e-2);
}
END_TEST

/* ------------------------------------------------------ incremental decode */

static void check_incremental(int kv_type) {
    struct eng_model *m = load(models[M_F32].path, kv_type, 64);
    const int n = 37, k = 20, V = eng_model_config(m)->n_vocab;
    int32_t toks[37], pages[3] = {4, 0, 11};
    tu_prompt(toks, n, V, 7);
    float *full = malloc((size_t)n * V * sizeof *full), *step = malloc((size_t)V * sizeof *step);
    ck_assert(full && step);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages, 3, 1, full), 0);

    /* fresh pages for the incremental run */
    int32_t pages2[3] = {2, 7, 5};
    ck_assert_int_eq(tu_run1(m, toks, k, 0, pages2, 3, 0, step), 0);
    ck_assert_msg(memcmp(step, full + (size_t)(k - 1) * V, (size_t)V * sizeof *step) == 0,
                  "prefill of %d tokens differs from the full prompt's row %d", k, k - 1);
    for (int i = k; i < n; i++) {
        ck_assert_int_eq(tu_run1(m, toks + i, 1, i, pages2, 3, 0, step), 0);
        double maxd = 0;
        for (int j = 0; j < V; j++) {
            double d = fabs((double)step[j] - full[(size_t)i * V + j]);
            if (d > maxd) maxd = d;
        }
        ck_assert_msg(maxd == 0, "decode step %d differs from the full prompt by %g", i, maxd);
    }
    free(full);
    free(step);
    eng_model_free(m);
}

START_TEST(test_incremental_f32_kv) { check_incremental(ENG_KV_F32); }
END_TEST
START_TEST(test_incremental_f16_kv) { check_incremental(ENG_KV_F16); }
END_TEST

/* ------------------------------------------------------------ ragged batch */

START_TEST(test_ragged_batch_bitwise) {
    struct eng_model *m = load(models[_i == 0 ? M_F32 : M_Q8].path, ENG_KV_F16, 128);
    const int V = eng_model_config(m)->n_vocab;
    /* A: 19-token prompt then one decode token; alone on pages {1,6}. */
    int32_t a[20], b[33], c[3], d[1];
    tu_prompt(a, 20, V, 1);
    tu_prompt(b, 33, V, 2);
    tu_prompt(c, 3, V, 3);
    tu_prompt(d, 1, V, 4);
    float *alone = malloc((size_t)21 * V * sizeof(float)), *batched = malloc((size_t)64 * V * sizeof(float));
    ck_assert(alone && batched);
    int32_t pa[2] = {1, 6};
    ck_assert_int_eq(tu_run1(m, a, 19, 0, pa, 2, 1, alone), 0);
    ck_assert_int_eq(tu_run1(m, a + 19, 1, 19, pa, 2, 0, alone + (size_t)19 * V), 0);

    /* Batch 1: C (3, fresh), A prefill (19), B (33, fresh) on scattered pages. */
    int32_t pa2[2] = {30, 12}, pb[3] = {20, 2, 25}, pc[1] = {8}, pd[2] = {40, 41};
    const int32_t *lists[4] = {pc, pa2, pb, pd}, n_list[4] = {1, 2, 3, 2};
    struct eng_kv_tables t[4]; /* tc, ta2, tb, td */
    for (int i = 0; i < 4; i++) ck_assert_int_eq(eng_kv_identity_tables(&t[i], m, lists[i], n_list[i]), 0);
    int32_t toks[64];
    memcpy(toks, c, 3 * sizeof *toks);
    memcpy(toks + 3, a, 19 * sizeof *toks);
    memcpy(toks + 22, b, 33 * sizeof *toks);
    struct eng_seq s1[3] = {
        {.tok0 = 0, .n_tok = 3, .n_past = 0, .layer_pages = t[0].rows, .layer_n_pages = 1, .want_logits = 1},
        {.tok0 = 3, .n_tok = 19, .n_past = 0, .layer_pages = t[1].rows, .layer_n_pages = 2, .all_logits = 1},
        {.tok0 = 22, .n_tok = 33, .n_past = 0, .layer_pages = t[2].rows, .layer_n_pages = 3, .want_logits = 0},
    };
    struct eng_batch b1 = {.tokens = toks, .n_tokens = 55, .seqs = s1, .n_seqs = 3};
    ck_assert_int_eq(eng_batch_n_logits(&b1), 20);
    ck_assert_int_eq(eng_forward(m, &b1, batched), 0);
    ck_assert_msg(memcmp(batched + V, alone, (size_t)19 * V * sizeof(float)) == 0,
                  "A's prefill logits differ inside a ragged batch");

    /* Batch 2: D (1 token, prompt), A decode (1), C decode (1, n_past 3). */
    int32_t t2[3] = {d[0], a[19], 5};
    struct eng_seq s2[3] = {
        {.tok0 = 0, .n_tok = 1, .n_past = 0, .layer_pages = t[3].rows, .layer_n_pages = 2, .want_logits = 1},
        {.tok0 = 1, .n_tok = 1, .n_past = 19, .layer_pages = t[1].rows, .layer_n_pages = 2, .want_logits = 1},
        {.tok0 = 2, .n_tok = 1, .n_past = 3, .layer_pages = t[0].rows, .layer_n_pages = 1, .want_logits = 1},
    };
    struct eng_batch b2 = {.tokens = t2, .n_tokens = 3, .seqs = s2, .n_seqs = 3};
    ck_assert_int_eq(eng_forward(m, &b2, batched), 0);
    ck_assert_msg(memcmp(batched + V, alone + (size_t)19 * V, (size_t)V * sizeof(float)) == 0,
                  "A's decode logits differ inside a ragged batch");
    for (int i = 0; i < 4; i++) eng_kv_tables_free(&t[i]);
    free(alone);
    free(batched);
    eng_model_free(m);
}
END_TEST

/* ---------------------------------------------------- hidden states (embeddings) */

/* want_hidden: one row per token of the sequence, bitwise the same alone and
 * inside a ragged batch (other sequences wanting logits or hidden rows too, in
 * another chunking); hidden rows requested without a buffer are refused. */
START_TEST(test_hidden_rows_bitwise) {
    struct eng_model *m = load(models[M_F32].path, ENG_KV_F16, 128);
    const int V = eng_model_config(m)->n_vocab, D = eng_model_config(m)->dim;
    int32_t a[21], c[5];
    tu_prompt(a, 21, V, 7);
    tu_prompt(c, 5, V, 8);
    int32_t pa[2] = {3, 9}, pb[2] = {20, 21}, pc[1] = {30};
    struct eng_kv_tables ta, tb, tc;
    ck_assert_int_eq(eng_kv_identity_tables(&ta, m, pa, 2), 0);
    ck_assert_int_eq(eng_kv_identity_tables(&tb, m, pb, 2), 0);
    ck_assert_int_eq(eng_kv_identity_tables(&tc, m, pc, 1), 0);
    float *alone = malloc(sizeof(float) * 21 * (size_t)D), *h = malloc(sizeof(float) * 64 * (size_t)D);
    float *lg = malloc(sizeof(float) * 4 * (size_t)V);
    ck_assert(alone && h && lg);

    /* A alone, one chunk, hidden rows only (no logits buffer needed) */
    struct eng_seq s0 = {.tok0 = 0, .n_tok = 21, .layer_pages = ta.rows, .layer_n_pages = 2, .want_hidden = 1};
    struct eng_batch b0 = {.tokens = a, .n_tokens = 21, .seqs = &s0, .n_seqs = 1, .hidden = alone};
    ck_assert_int_eq(eng_batch_n_hidden(&b0), 21);
    ck_assert_int_eq(eng_forward(m, &b0, NULL), 0);
    b0.hidden = NULL;
    ck_assert_int_eq(eng_forward(m, &b0, NULL), SS_EINVAL);

    /* A again in two chunks (13 + 8) on other pages, beside C (logits) and
     * a second want_hidden sequence (C's tokens) */
    int32_t toks[64];
    memcpy(toks, c, sizeof(c));
    memcpy(toks + 5, a, 13 * sizeof(int32_t));
    memcpy(toks + 18, c, sizeof(c));
    struct eng_seq s1[3] = {
        {.tok0 = 0, .n_tok = 5, .layer_pages = tc.rows, .layer_n_pages = 1, .want_logits = 1},
        {.tok0 = 5, .n_tok = 13, .layer_pages = tb.rows, .layer_n_pages = 2, .want_hidden = 1},
        {.tok0 = 18, .n_tok = 5, .layer_pages = ta.rows, .layer_n_pages = 2, .want_hidden = 1},
    };
    struct eng_batch b1 = {.tokens = toks, .n_tokens = 23, .seqs = s1, .n_seqs = 3, .hidden = h};
    ck_assert_int_eq(eng_batch_n_hidden(&b1), 18);
    ck_assert_int_eq(eng_forward(m, &b1, lg), 0);
    ck_assert_msg(memcmp(h, alone, sizeof(float) * 13 * (size_t)D) == 0, "A's first chunk differs");
    struct eng_seq s2 = {.tok0 = 0, .n_tok = 8, .n_past = 13, .layer_pages = tb.rows, .layer_n_pages = 2,
                         .want_hidden = 1};
    struct eng_batch b2 = {.tokens = a + 13, .n_tokens = 8, .seqs = &s2, .n_seqs = 1, .hidden = h};
    ck_assert_int_eq(eng_forward(m, &b2, NULL), 0);
    ck_assert_msg(memcmp(h, alone + (size_t)13 * D, sizeof(float) * 8 * (size_t)D) == 0,
                  "A's second chunk differs");
    for (int i = 0; i < 21 * D; i++) ck_assert(isfinite(alone[i]));
    eng_kv_tables_free(&ta);
    eng_kv_tables_free(&tb);
    eng_kv_tables_free(&tc);
    free(alone);
    free(h);
    free(lg);
    eng_model_free(m);
}
END_TEST

/* -------------------------------------------------------- invalid batches */

START_TEST(test_invalid_batches) {
    struct eng_model *m = load(models[M_F32].path, ENG_KV_F32, 32);
    const int V = eng_model_config(m)->n_vocab, n_ctx = eng_model_n_ctx(m);
    const int32_t np = eng_model_n_pages(m);
    ck_assert_int_eq(n_ctx, 256);
    int32_t toks[40], pages[16];
    tu_prompt(toks, 40, V, 9);
    for (int i = 0; i < 16; i++) pages[i] = i;
    float *lg = malloc((size_t)40 * V * sizeof *lg), *ref = malloc((size_t)V * sizeof *ref);
    ck_assert(lg && ref);

    /* A reference: 10 tokens then decode token 10, on pages {0}. */
    ck_assert_int_eq(tu_run1(m, toks, 10, 0, pages, 1, 0, lg), 0);
    ck_assert_int_eq(tu_run1(m, toks + 10, 1, 10, pages, 1, 0, ref), 0);
    /* Re-prefill the same pages (same content) for the tamper check below. */
    ck_assert_int_eq(tu_run1(m, toks, 10, 0, pages, 1, 0, lg), 0);

    int32_t bad_tok[2] = {toks[0], V};
    int32_t neg_tok[1] = {-1};
    int32_t big_page[1] = {np}, neg_page[1] = {-1};
    ck_assert_int_eq(tu_run1(m, bad_tok, 2, 0, pages, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, neg_tok, 1, 0, pages, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, toks, 1, n_ctx, pages, 16, 0, lg), SS_EINVAL);     /* beyond n_ctx */
    ck_assert_int_eq(tu_run1(m, toks, 2, n_ctx - 1, pages, 16, 0, lg), SS_EINVAL); /* crosses n_ctx */
    ck_assert_int_eq(tu_run1(m, toks, 1, -1, pages, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, toks, 17, 0, pages, 1, 0, lg), SS_EINVAL);         /* needs 2 pages */
    ck_assert_int_eq(tu_run1(m, toks, 1, 0, big_page, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, toks, 1, 0, neg_page, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, toks, 1, 0, NULL, 1, 0, lg), SS_EINVAL);
    ck_assert_int_eq(tu_run1(m, toks, 33, 0, pages, 16, 0, lg), SS_EINVAL);        /* > max_batch_tokens */
    ck_assert_int_eq(tu_run1(m, toks, 1, 0, pages, 1, 0, NULL), SS_EINVAL);        /* logits wanted */
    ck_assert_int_eq(eng_forward(m, NULL, lg), SS_EINVAL);

    /* Ragged inconsistencies. The first sequence would overwrite slots 0..3
     * of page 0 with other tokens if anything ran before validation. */
    int32_t t2[8];
    tu_prompt(t2, 8, V, 3);
    struct eng_kv_tables t0, t1, tbig; /* pages {0}, {1}, {np} */
    ck_assert_int_eq(eng_kv_identity_tables(&t0, m, pages, 1), 0);
    ck_assert_int_eq(eng_kv_identity_tables(&t1, m, pages + 1, 1), 0);
    ck_assert_int_eq(eng_kv_identity_tables(&tbig, m, big_page, 1), 0);
    struct eng_seq s[2] = {
        {.tok0 = 0, .n_tok = 4, .n_past = 0, .layer_pages = t0.rows, .layer_n_pages = 1, .want_logits = 1},
        {.tok0 = 4, .n_tok = 4, .n_past = 0, .layer_pages = t1.rows, .layer_n_pages = 1, .want_logits = 1},
    };
    struct eng_batch b = {.tokens = t2, .n_tokens = 8, .seqs = s, .n_seqs = 2};
    ck_assert_int_eq(eng_forward(m, &b, lg), 0); /* valid as is (pages 0 and 1 are scratch here) */
    ck_assert_int_eq(tu_run1(m, toks, 10, 0, pages, 1, 0, lg), 0); /* restore page 0 */

    s[1].tok0 = 5;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL); /* gap */
    s[1].tok0 = 3;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL); /* overlap */
    s[1].tok0 = 4;
    s[1].n_tok = 3;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL); /* does not cover n_tokens */
    s[1].n_tok = 5;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL); /* past n_tokens */
    s[1].n_tok = 0;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s[1].n_tok = 4;
    s[1].layer_pages = tbig.rows;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    s[1].layer_pages = t1.rows;
    b.n_seqs = 0;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);
    b.n_seqs = 2;
    b.n_tokens = 0;
    ck_assert_int_eq(eng_forward(m, &b, lg), SS_EINVAL);

    /* Nothing above touched page 0: decoding token 10 gives the reference. */
    ck_assert_int_eq(tu_run1(m, toks + 10, 1, 10, pages, 1, 0, lg), 0);
    ck_assert_msg(memcmp(lg, ref, (size_t)V * sizeof *lg) == 0, "a rejected batch modified the KV cache");
    eng_kv_tables_free(&t0);
    eng_kv_tables_free(&t1);
    eng_kv_tables_free(&tbig);
    free(lg);
    free(ref);
    eng_model_free(m);
}
END_TEST

/* ------------------------------------------------------------- load errors */

static void spit(const char *path, const uint8_t *b, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert(fp && fwrite(b, 1, n, fp) == n);
    fclose(fp);
}

/* Offset just past the length-prefixed string s in the file (the GGUF string
 * is u64 length + bytes, so this finds names and string values). */
static size_t find_gstr(const uint8_t *b, size_t n, const char *s) {
    size_t l = strlen(s);
    for (size_t i = 8; i + l <= n; i++)
        if (memcmp(b + i, s, l) == 0) {
            uint64_t len;
            memcpy(&len, b + i - 8, 8);
            if (len == l) return i + l;
        }
    ck_abort_msg("string %s not found", s);
    return 0;
}

START_TEST(test_bad_model_files) {
    size_t n;
    uint8_t *orig = tu_slurp(models[M_F32].path, &n), *b = malloc(n);
    ck_assert(b != NULL);
    char path[PATH_MAX];
    tu_tmp_file(path, sizeof path, "bad.gguf");

    /* missing tensor: rename blk.1.ffn_up.weight */
    memcpy(b, orig, n);
    b[find_gstr(b, n, "blk.1.ffn_up.weight") - 1] = 'x';
    spit(path, b, n);
    tu_expect_load_error(path, SS_EBADMODEL, "blk.1.ffn_up.weight");

    /* wrong shape: swap ne[0] and ne[1] of blk.0.attn_k.weight ([64,32] -> [32,64],
     * same byte count, so only the shape check can catch it) */
    memcpy(b, orig, n);
    size_t off = find_gstr(b, n, "blk.0.attn_k.weight"); /* then u32 n_dims, u64 ne[] */
    uint64_t ne0, ne1;
    memcpy(&ne0, b + off + 4, 8);
    memcpy(&ne1, b + off + 12, 8);
    ck_assert(ne0 == 64 && ne1 == 32);
    memcpy(b + off + 4, &ne1, 8);
    memcpy(b + off + 12, &ne0, 8);
    spit(path, b, n);
    tu_expect_load_error(path, SS_EBADMODEL, "blk.0.attn_k.weight");

    /* wrong length of a norm vector: output_norm.weight [64] -> [32] */
    memcpy(b, orig, n);
    off = find_gstr(b, n, "output_norm.weight");
    uint32_t nd;
    memcpy(&nd, b + off, 4);
    memcpy(&ne0, b + off + 4, 8);
    ck_assert(nd == 1 && ne0 == 64);
    ne0 = 32;
    memcpy(b + off + 4, &ne0, 8);
    spit(path, b, n);
    tu_expect_load_error(path, SS_EBADMODEL, "output_norm.weight");

    /* unknown architecture */
    memcpy(b, orig, n);
    off = find_gstr(b, n, "general.architecture");
    size_t val = find_gstr(b + off, n - off, "llama") + off;
    b[val - 1] = 'x';
    spit(path, b, n);
    tu_expect_load_error(path, SS_EUNSUPPORTED, "llamx");

    /* missing hyper-parameter: rename llama.block_count */
    memcpy(b, orig, n);
    b[find_gstr(b, n, "llama.block_count") - 1] = 'x';
    spit(path, b, n);
    tu_expect_load_error(path, SS_EBADMODEL, "llama.block_count");

    /* not a file */
    tu_tmp_file(path, sizeof path, "does-not-exist.gguf");
    char err[256] = "";
    struct eng_model *m;
    ck_assert_int_lt(eng_model_load(&m, path, NULL, err, sizeof err), 0);
    ck_assert(err[0] != 0);

    tu_tmp_file(path, sizeof path, "bad.gguf");
    unlink(path);
    free(b);
    free(orig);
}
END_TEST

/* Random corruptions of the metadata and tensor-info regions: loading must
 * succeed or fail cleanly (never crash), and a model that loads must run. */
START_TEST(test_load_fuzz) {
    size_t n;
    uint8_t *orig = tu_slurp(models[M_F32].path, &n), *b = malloc(n);
    ck_assert(b != NULL);
    char path[PATH_MAX];
    tu_tmp_file(path, sizeof path, "fuzz.gguf");
    size_t tinfo = find_gstr(orig, n, "token_embd.weight") - 17 - 8; /* first tensor info */
    uint64_t st = 99;
    int loaded = 0, failed = 0;
    for (int it = 0; it < 200; it++) {
        memcpy(b, orig, n);
        int nmut = 1 + (int)(lcg_uniform(&st) * 4);
        for (int k = 0; k < nmut; k++) {
            size_t base = lcg_uniform(&st) < 0.5f ? 0 : tinfo, span = base ? 1400 : 1200;
            size_t off = base + (size_t)(lcg_uniform(&st) * (float)span);
            static const uint8_t special[] = {0, 1, 2, 0x7f, 0x80, 0xff, 0x20, 0x40};
            if (off < n)
                b[off] = lcg_uniform(&st) < 0.5f ? special[(int)(lcg_uniform(&st) * 8)]
                                                 : (uint8_t)(lcg_uniform(&st) * 256);
        }
        spit(path, b, n);
        char err[256] = "";
        struct eng_model *m = NULL;
        struct eng_options o = {.n_ctx = 64, .max_batch_tokens = 8};
        if (eng_model_load(&m, path, &o, err, sizeof err) == 0) {
            loaded++;
            const int V = eng_model_config(m)->n_vocab;
            int32_t toks[3] = {1, 2 % V, 3 % V}, pages[1] = {0};
            float *lg = malloc((size_t)V * sizeof *lg);
            ck_assert(lg != NULL);
            ck_assert_int_eq(tu_run1(m, toks, 3, 0, pages, 1, 0, lg), 0);
            free(lg);
            eng_model_free(m);
        } else {
            ck_assert_msg(err[0] != 0, "failure without a message");
            failed++;
        }
    }
    printf("fuzz: %d mutated files loaded, %d rejected\n", loaded, failed);
    fflush(stdout);
    unlink(path);
    free(b);
    free(orig);
}
END_TEST

/* ------------------------------------------------------------ model facts */

START_TEST(test_model_info) {
    struct eng_options o = {0};
    char err[256];
    struct eng_model *m;
    ck_assert_int_eq(eng_model_load(&m, models[M_F32].path, &o, err, sizeof err), 0);
    const struct eng_config *c = eng_model_config(m);
    ck_assert_str_eq(c->arch_name, "llama");
    ck_assert_int_eq(c->n_layers, 2);
    ck_assert_int_eq(c->dim, 64);
    ck_assert_int_eq(c->n_heads, 4);
    ck_assert_int_eq(c->n_kv_heads, 2);
    ck_assert_int_eq(c->head_dim, 16);
    ck_assert_int_eq(c->n_rot, 16);
    ck_assert_int_eq(c->n_vocab, 512);
    ck_assert_int_eq(c->rope_neox, 0);
    ck_assert_int_eq(c->tied_output, 0);
    ck_assert_int_eq(eng_model_n_ctx(m), 512);
    ck_assert_int_eq(eng_model_n_pages(m), 4 * 512 / 16);
    /* F16 KV: layers * (K+V) * kv_dim * 2 bytes */
    ck_assert_uint_eq(eng_model_kv_bytes_per_token(m), 2 * 2 * 32 * 2);
    size_t per_layer = (size_t)64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 192;
    ck_assert_uint_eq(eng_model_weight_bytes(m), 4 * (2 * per_layer + 64 * 512));
    ck_assert_ptr_nonnull(eng_model_tok(m));
    eng_model_free(m);
    eng_model_free(NULL);
}
END_TEST

START_TEST(test_kv_sizing) {
    struct eng_options o = {.kv_type = ENG_KV_F32, .kv_bytes = 10 * 16 * (2 * 2 * 32 * 4) + 100};
    char err[256];
    struct eng_model *m;
    ck_assert_int_eq(eng_model_load(&m, models[M_F32].path, &o, err, sizeof err), 0);
    ck_assert_int_eq(eng_model_n_pages(m), 10);
    ck_assert_uint_eq(eng_model_kv_bytes_per_token(m), 2 * 2 * 32 * 4);
    eng_model_free(m);
    o.kv_bytes = 100;
    ck_assert_int_eq(eng_model_load(&m, models[M_F32].path, &o, err, sizeof err), SS_EINVAL);
    o.kv_bytes = 0;
    o.kv_type = BE_Q8_0;
    ck_assert_int_eq(eng_model_load(&m, models[M_F32].path, &o, err, sizeof err), SS_EINVAL);
    o.kv_type = 0;
    o.backend = "no-such-backend";
    ck_assert_int_lt(eng_model_load(&m, models[M_F32].path, &o, err, sizeof err), 0);
}
END_TEST

/* ------------------------------------------------------------------ main */

static Suite *forward_suite(void) {
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ref_models, 0, M_COUNT);
    tcase_add_test(tc, test_ref_f16_kv);
    tcase_add_test(tc, test_incremental_f32_kv);
    tcase_add_test(tc, test_incremental_f16_kv);
    tcase_add_loop_test(tc, test_ragged_batch_bitwise, 0, 2);
    tcase_add_test(tc, test_hidden_rows_bitwise);
    tcase_add_test(tc, test_invalid_batches);
    tcase_add_test(tc, test_bad_model_files);
    tcase_add_test(tc, test_load_fuzz);
    tcase_add_test(tc, test_model_info);
    tcase_add_test(tc, test_kv_sizing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    tu_init("test_forward");
    if (gen_models() < 0) return 1;
    have_ref = tu_find_ref("llama_ref.py", ref_script, sizeof ref_script);
    int failed = tu_check_run(forward_suite());
    for (int i = 0; i < M_COUNT; i++) unlink(models[i].path);
    return failed != 0;
}
