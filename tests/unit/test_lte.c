/* test_lte.c - LTE sparse FFNs through the engine (engine/lte.c): logits
 * against the independent NumPy reference (tests/ref/lte_ref.py) on llama,
 * qwen2 and gemma3 files with routers (some layers without), tau from the file
 * and overridden, every expert on == the dense model, bitwise batch
 * invariance across forced grouped / dense-fallback / automatic paths, layer
 * parallelism stacked on LTE, and every bad file of the format.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "testutil.h"
#include "tools/genmodel.h"
#include "tools/lte_calibrate.h"
#include "tools/perplexity.h"
#include "tu_check.h"

/* M_SUBLLM stacks LTE on SUBLLM levels ("T(T)T"): checked against its own
 * dense run (--lte off), not the NumPy reference (which has no SUBLLM hook). */
enum { M_LLAMA, M_QWEN2, M_GEMMA, M_LLAMA_Q8, M_N_REF, M_SUBLLM = M_N_REF, M_COUNT };
static struct {
    const char *label, *arch;
    int wtype, ffn, S, dense_layer; /* dense_layer: layer left without a router, -1 none */
    float tau;                      /* lte.threshold key, 0 = absent */
    char path[PATH_MAX];
} models[M_COUNT] = {
    [M_LLAMA] = {"llama f32, layer 1 dense", "llama", BE_F32, 192, 32, 1, 0.0f},
    [M_QWEN2] = {"qwen2 f16, tau 0.4", "qwen2", BE_F16, 256, 32, -1, 0.4f},
    [M_GEMMA] = {"gemma3 f32, S 16, layer 0 dense", "gemma3", BE_F32, 256, 16, 0, 0.0f},
    [M_LLAMA_Q8] = {"llama q8_0, no bias", "llama", BE_Q8_0, 256, 32, -1, 0.6f},
    [M_SUBLLM] = {"subllm T(T)T f32 + LTE", "subllm", BE_F32, 256, 32, -1, 0.0f},
};
static int have_ref;
static char ref_script[PATH_MAX];

static int gen_models(void) {
    for (int i = 0; i < M_COUNT; i++) {
        struct genmodel_opts o;
        genmodel_opts_default(&o);
        o.arch = models[i].arch;
        o.tokenizer = i == M_QWEN2 ? "bpe" : "spm";
        o.dim = 64;
        o.n_layers = 3;
        o.ffn_dim = models[i].ffn;
        o.wtype = models[i].wtype;
        o.seed = 40 + (uint64_t)i;
        o.lte_expert_size = models[i].S;
        o.lte_threshold = models[i].tau;
        o.lte_no_bias = i == M_LLAMA_Q8;
        if (i == M_SUBLLM) o.keep = 0.6f;
        if (models[i].dense_layer >= 0) o.lte_dense_layers = 1ull << models[i].dense_layer;
        char name[64], err[256];
        snprintf(name, sizeof name, "m%d.gguf", i);
        tu_tmp_file(models[i].path, sizeof models[i].path, name);
        if (genmodel_write(&o, models[i].path, err, sizeof err) != 0) {
            fprintf(stderr, "gen %s: %s\n", models[i].label, err);
            return -1;
        }
    }
    return 0;
}

static struct eng_model *load(int which, float tau, int off, int path) {
    struct eng_options o = {.n_threads = 2, .n_ctx = 128, .kv_type = ENG_KV_F32, .max_batch_tokens = 128,
                            .lte_threshold = tau, .lte_off = off, .lte_path = path};
    return tu_load(models[which].path, &o);
}

static const int32_t *pages8(void) {
    static int32_t p[8];
    for (int i = 0; i < 8; i++) p[i] = i;
    return p;
}

/* All-position logits of n prompt tokens (salt) on model m. */
static float *run_all(struct eng_model *m, int n, int salt, int32_t *toks) {
    const int V = eng_model_config(m)->n_vocab;
    tu_prompt(toks, n, V, salt);
    float *got = malloc((size_t)n * V * sizeof *got);
    ck_assert(got != NULL);
    ck_assert_int_eq(tu_run1(m, toks, n, 0, pages8(), 8, 1, got), 0);
    return got;
}

static void check_vs_ref(int which, float tau, const char *extra) {
    if (!tu_ref_available(have_ref, "LTE NumPy reference")) return;
    struct eng_model *m = load(which, tau, 0, ENG_LTE_AUTO);
    const int V = eng_model_config(m)->n_vocab, n = 14;
    int32_t toks[14];
    float *got = run_all(m, n, which, toks);
    float *want = tu_run_ref(ref_script, models[which].path, toks, n, extra, (size_t)n * V);
    double maxref;
    int same;
    double d = tu_compare_logits(got, want, n, V, &maxref, &same);
    printf("lte vs NumPy %-32s %s: max abs diff %.2e (max |logit| %.2f), argmax %d/%d\n", models[which].label,
           extra, d, maxref, same, n);
    ck_assert_msg(d <= 1e-4, "%s: max abs diff %g", models[which].label, d);
    free(got);
    free(want);
    eng_model_free(m);
}

START_TEST(test_ref_models) { check_vs_ref(_i, 0.0f, ""); }
END_TEST

START_TEST(test_ref_threshold_override) {
    check_vs_ref(M_LLAMA, 0.3f, "--threshold 0.3");
    check_vs_ref(M_GEMMA, 0.65f, "--threshold 0.65");
}
END_TEST

/* tau -> 0: every expert on, equal to the dense model (--lte off) within
 * float rounding (the per-expert sums reorder the down product), and to the
 * NumPy dense forward; and the sparse model really differs from dense. */
START_TEST(test_all_on_equals_dense) {
    for (int w = 0; w < M_COUNT; w++) {
        struct eng_model *on = load(w, 1e-7f, 0, ENG_LTE_AUTO), *off = load(w, 0.0f, 1, ENG_LTE_AUTO);
        struct eng_model *sp = load(w, 0.0f, 0, ENG_LTE_AUTO);
        const int V = eng_model_config(on)->n_vocab, n = 10;
        int32_t toks[10];
        float *a = run_all(on, n, 7, toks), *b = run_all(off, n, 7, toks), *c = run_all(sp, n, 7, toks);
        double d = tu_max_abs_diff(a, b, (size_t)n * V), ds = tu_max_abs_diff(c, b, (size_t)n * V);
        printf("all experts on vs dense %-32s: %.2e (sparse vs dense %.2e)\n", models[w].label, d, ds);
        ck_assert_msg(d <= 1e-4, "%s: all-on differs from dense by %g", models[w].label, d);
        ck_assert_msg(ds > 1e-2, "%s: the sparse model equals the dense one (%g)", models[w].label, ds);
        if (w == M_LLAMA && tu_ref_available(have_ref, "LTE NumPy reference")) {
            float *want = tu_run_ref(ref_script, models[w].path, toks, n, "--dense", (size_t)n * V);
            ck_assert(tu_max_abs_diff(b, want, (size_t)n * V) <= 1e-4);
            free(want);
        }
        free(a), free(b), free(c);
        eng_model_free(on), eng_model_free(off), eng_model_free(sp);
    }
}
END_TEST

/* Sequence A (prefill 20, 3 decode steps) alone, then inside ragged batches
 * with B and C, under each path: every A logit bitwise the same. */
START_TEST(test_batch_invariance) {
    const int V0 = 512;
    float *ref = NULL;
    for (int path = ENG_LTE_AUTO; path <= ENG_LTE_DENSE; path++) {
        struct eng_model *m = load(_i, 0.0f, 0, path);
        const int V = eng_model_config(m)->n_vocab;
        ck_assert_int_eq(V, V0);
        int32_t a[23], bt[40], c[6];
        tu_prompt(a, 23, V, 1), tu_prompt(bt, 40, V, 2), tu_prompt(c, 6, V, 3);
        float *alone = malloc((size_t)23 * V * sizeof(float)), *out = malloc((size_t)64 * V * sizeof(float));
        int32_t pa[8], pb[8], pc[8];
        for (int i = 0; i < 8; i++) pa[i] = i, pb[i] = 8 + i, pc[i] = 16 + i;
        ck_assert_int_eq(tu_run1(m, a, 20, 0, pa, 8, 1, alone), 0);
        for (int i = 20; i < 23; i++) ck_assert_int_eq(tu_run1(m, a + i, 1, i, pa, 8, 0, alone + (size_t)i * V), 0);
        if (!ref) {
            ref = alone;
        } else {
            ck_assert_msg(memcmp(ref, alone, (size_t)23 * V * sizeof(float)) == 0, "path %d changes A alone", path);
        }
        /* batch 1: C (6), A prefill (20, all logits), B (40, prefill) */
        struct eng_kv_tables ta, tb, tc;
        ck_assert_int_eq(eng_kv_identity_tables(&ta, m, pa + 0, 8), 0);
        ck_assert_int_eq(eng_kv_identity_tables(&tb, m, pb, 8), 0);
        ck_assert_int_eq(eng_kv_identity_tables(&tc, m, pc, 8), 0);
        int32_t toks[66];
        memcpy(toks, c, 6 * sizeof *toks), memcpy(toks + 6, a, 20 * sizeof *toks), memcpy(toks + 26, bt, 40 * sizeof *toks);
        struct eng_seq s[3] = {{.tok0 = 0, .n_tok = 6, .layer_pages = tc.rows, .layer_n_pages = 8, .want_logits = 1},
                               {.tok0 = 6, .n_tok = 20, .layer_pages = ta.rows, .layer_n_pages = 8, .all_logits = 1},
                               {.tok0 = 26, .n_tok = 40, .layer_pages = tb.rows, .layer_n_pages = 8}};
        struct eng_batch b = {.tokens = toks, .n_tokens = 66, .seqs = s, .n_seqs = 3};
        ck_assert_int_eq(eng_forward(m, &b, out), 0);
        ck_assert_msg(memcmp(out + V, ref, (size_t)20 * V * sizeof(float)) == 0, "path %d: A's prefill differs in a batch", path);
        for (int i = 20; i < 23; i++) { /* decode steps of B, A, C together */
            int32_t t3[3] = {bt[i % 40], a[i], c[i % 6]};
            struct eng_seq d[3] = {{.tok0 = 0, .n_tok = 1, .n_past = 40 + i - 20, .layer_pages = tb.rows, .layer_n_pages = 8, .want_logits = 1},
                                   {.tok0 = 1, .n_tok = 1, .n_past = i, .layer_pages = ta.rows, .layer_n_pages = 8, .want_logits = 1},
                                   {.tok0 = 2, .n_tok = 1, .n_past = 6 + i - 20, .layer_pages = tc.rows, .layer_n_pages = 8, .want_logits = 1}};
            struct eng_batch bd = {.tokens = t3, .n_tokens = 3, .seqs = d, .n_seqs = 3};
            ck_assert_int_eq(eng_forward(m, &bd, out), 0);
            ck_assert_msg(memcmp(out + V, ref + (size_t)i * V, (size_t)V * sizeof(float)) == 0,
                          "path %d: A's decode %d differs in a batch", path, i);
        }
        eng_kv_tables_free(&ta), eng_kv_tables_free(&tb), eng_kv_tables_free(&tc);
        if (alone != ref) free(alone);
        free(out);
        eng_model_free(m);
    }
    printf("batch invariance %-32s: bitwise over auto / grouped / dense paths\n", models[_i].label);
    free(ref);
}
END_TEST

/* Layer parallelism over LTE layers: the pair runs the LTE FFN of each layer
 * (the result differs from the sequential model, by design, and from the
 * dense pair). */
START_TEST(test_layer_parallel_stack) {
    struct eng_options o = {.n_threads = 2, .n_ctx = 128, .kv_type = ENG_KV_F32, .max_batch_tokens = 128,
                            .lp_mode = ENG_LP_RANGE, .lp_start = 0, .lp_end = 2};
    struct eng_model *lp = tu_load(models[M_QWEN2].path, &o);
    o.lte_off = 1;
    struct eng_model *lpd = tu_load(models[M_QWEN2].path, &o);
    struct eng_model *seq = load(M_QWEN2, 0.0f, 0, ENG_LTE_AUTO);
    const int V = eng_model_config(lp)->n_vocab, n = 9;
    int32_t toks[9];
    float *a = run_all(lp, n, 5, toks), *b = run_all(lpd, n, 5, toks), *c = run_all(seq, n, 5, toks);
    ck_assert(tu_max_abs_diff(a, b, (size_t)n * V) > 1e-2);
    ck_assert(tu_max_abs_diff(a, c, (size_t)n * V) > 1e-2);
    for (size_t i = 0; i < (size_t)n * V; i++) ck_assert(isfinite(a[i]));
    free(a), free(b), free(c);
    eng_model_free(lp), eng_model_free(lpd), eng_model_free(seq);
}
END_TEST

/* ------------------------------------------------------------ bad files */

/* Copies src to dst with LTE keys/tensors changed: key `key` set to u32 ival
 * or f32 fval (NULL: untouched), tensor `drop` left out, tensor `reshape`
 * written with ne1 + 1 rows (zeros), tensor `retype` written as Q4_K bytes. */
struct edit {
    const char *key;
    int is_f32;
    uint32_t ival;
    float fval;
    const char *drop, *reshape, *retype;
};
static void rewrite(const char *src, const char *dst, const struct edit *e) {
    char err[256], name[128];
    struct gguf_file *f;
    ck_assert_int_eq(gguf_open(&f, src, err, sizeof err), 0);
    struct gguf_writer *w = gguf_writer_new();
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        snprintf(name, sizeof name, "%.*s", (int)kv->key.len, kv->key.s);
        if (e->key && !strcmp(name, e->key)) continue;
        tu_copy_kv(w, name, kv);
    }
    if (e->key && e->is_f32) gguf_w_f32(w, e->key, e->fval);
    else if (e->key) gguf_w_u32(w, e->key, e->ival);
    static uint8_t zeros[1 << 20];
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        if (e->drop && !strcmp(name, e->drop)) continue;
        if (e->reshape && !strcmp(name, e->reshape)) {
            int64_t ne[2] = {t->ne[0], t->ne[1] + 1};
            gguf_w_tensor(w, name, t->type, 2, ne, zeros, be_row_bytes(t->type, ne[0]) * (size_t)ne[1]);
        } else if (e->retype && !strcmp(name, e->retype)) {
            gguf_w_tensor(w, name, BE_Q4_K, 2, t->ne, zeros, be_row_bytes(BE_Q4_K, t->ne[0]) * (size_t)t->ne[1]);
        } else {
            gguf_w_tensor(w, name, t->type, (int)t->n_dims, t->ne, t->data, t->nbytes);
        }
    }
    ck_assert_int_eq(gguf_writer_save(w, dst, err, sizeof err), 0);
    gguf_writer_free(w);
    gguf_close(f);
}

START_TEST(test_bad_files) {
    const char *src = models[M_QWEN2].path; /* ffn 256, S 32: 8 experts, every layer routed */
    char path[PATH_MAX];
    tu_tmp_file(path, sizeof path, "bad.gguf");
    static const struct { struct edit e; int code; const char *needle; } bad[] = {
        {{.key = "lte.expert_size", .ival = 48}, SS_EBADMODEL, "not a multiple of lte.expert_size 48"},
        {{.key = "lte.expert_size", .ival = 0}, SS_EBADMODEL, "lte.expert_size = 0"},
        {{.key = "lte.expert_size", .ival = 512}, SS_EBADMODEL, "outside [1, 256]"},
        {{.key = "lte.threshold", .is_f32 = 1, .fval = 1.5f}, SS_EBADMODEL, "lte.threshold = 1.5 is outside (0, 1)"},
        {{.key = "lte.threshold", .is_f32 = 1, .fval = 0.0f}, SS_EBADMODEL, "outside (0, 1)"},
        {{.key = "lte.threshold", .is_f32 = 1, .fval = 1.0f}, SS_EBADMODEL, "outside (0, 1)"},
        {{.key = "lte.threshold", .ival = 1}, SS_EBADMODEL, "lte.threshold has a non-float type"},
        {{.drop = "blk.1.ffn_router.weight"}, SS_EBADMODEL, "blk.1.ffn_router.bias without blk.1.ffn_router.weight"},
        {{.reshape = "blk.2.ffn_router.weight"}, SS_EBADMODEL, "blk.2.ffn_router.weight has shape"},
        {{.reshape = "blk.0.ffn_router.bias"}, SS_EBADMODEL, "blk.0.ffn_router.bias"},
        {{.key = "lte.expert_size", .ival = 16}, SS_EBADMODEL, "blk.0.ffn_router.weight has shape"},
        {{.retype = "blk.0.ffn_down.weight"}, SS_EBADMODEL, "blk.0.ffn_down.weight has type q4_K with 256-element blocks"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rewrite(src, path, &bad[i].e);
        tu_expect_load_error(path, bad[i].code, bad[i].needle);
    }
    /* routers dropped from some layers only: loads, those layers dense */
    struct edit ok = {.drop = "blk.1.ffn_router.weight"};
    rewrite(models[M_LLAMA_Q8].path, path, &ok); /* no biases in this one */
    struct eng_model *m = tu_load(path, NULL);
    eng_model_free(m);
    /* a bad override of tau */
    char err[256];
    struct eng_options o = {.lte_threshold = 2.0f};
    ck_assert_int_eq(eng_model_load(&m, src, &o, err, sizeof err), SS_EINVAL);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, "outside (0, 1)") != NULL, "%s", err);
    unlink(path);
}
END_TEST

/* gen-model refuses LTE options without an expert size (they used to be
 * ignored silently, writing a dense model). */
START_TEST(test_genmodel_lte_options_need_size) {
    char path[PATH_MAX], err[256];
    tu_tmp_file(path, sizeof path, "nosize.gguf");
    for (int k = 0; k < 4; k++) {
        struct genmodel_opts o;
        genmodel_opts_default(&o);
        if (k == 0) o.lte_sparsity = 0.3f;
        if (k == 1) o.lte_threshold = 0.4f;
        if (k == 2) o.lte_dense_layers = 1;
        if (k == 3) o.lte_no_bias = 1;
        ck_assert_int_eq(genmodel_write(&o, path, err, sizeof err), SS_EINVAL);
        ck_assert_msg(strstr(err, "need --lte-expert-size") != NULL, "%s", err);
    }
    unlink(path);
}
END_TEST

/* ------------------------------------------------------------ calibration */

static void write_text(const char *path) {
    FILE *fp = fopen(path, "w");
    ck_assert(fp != NULL);
    for (int i = 0; i < 3; i++) fputs(genmodel_corpus(), fp);
    fclose(fp);
}

static double ppl(const char *model, float tau) {
    struct ppl_opts po;
    ppl_opts_default(&po);
    po.model_path = model;
    po.text = genmodel_corpus();
    po.text_len = strlen(po.text);
    po.ctx = 64;
    po.max_windows = 8;
    po.eng.lte_threshold = tau;
    po.eng.n_threads = 2;
    struct ppl_result r;
    char err[256];
    ck_assert_msg(ppl_run(&po, &r, err, sizeof err) == 0, "%s", err);
    return r.perplexity;
}

static int calibrate(const char *in, const char *text, const char *out, const char *sparsity) {
    char *argv[] = {"lte-calibrate", "--model", (char *)in, "--text", (char *)text, "--sparsity", (char *)sparsity,
                    "--out", (char *)out, "--ctx", "64", "--max-tokens", "1024", "--seed", "3", NULL};
    return tool_lte_calibrate_main(14, argv);
}

/* A dense f32 model calibrated at 50%: loads as LTE; with every expert on it
 * gives the original logits (gate/up rows and down columns permuted exactly);
 * the routers switch about half the experts off on the calibration text; the
 * same inputs give a byte-identical file. q8_0: down is re-quantised, every
 * expert on stays within 0.1% of the original perplexity-relevant logits. */
START_TEST(test_calibrate) {
    char dense[PATH_MAX], text[PATH_MAX], out[PATH_MAX], out2[PATH_MAX], err[256];
    tu_tmp_file(dense, sizeof dense, "cal_dense.gguf");
    tu_tmp_file(text, sizeof text, "cal.txt");
    tu_tmp_file(out, sizeof out, "cal_out.gguf");
    tu_tmp_file(out2, sizeof out2, "cal_out2.gguf");
    write_text(text);
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.ffn_dim = 256, o.n_layers = 3, o.seed = 5, o.wtype = _i ? BE_Q8_0 : BE_F32;
    ck_assert_int_eq(genmodel_write(&o, dense, err, sizeof err), 0);
    ck_assert_int_eq(calibrate(dense, text, out, "0.5"), 0);
    ck_assert_int_eq(calibrate(dense, text, out2, "0.5"), 0);
    size_t n1, n2;
    uint8_t *a = tu_slurp(out, &n1), *b = tu_slurp(out2, &n2);
    ck_assert_msg(n1 == n2 && memcmp(a, b, n1) == 0, "two calibrations differ");
    free(a), free(b);

    struct eng_options eo = {.n_threads = 2, .n_ctx = 128, .kv_type = ENG_KV_F32, .max_batch_tokens = 128};
    struct eng_model *orig = tu_load(dense, &eo);
    eo.lte_threshold = 1e-7f;
    struct eng_model *on = tu_load(out, &eo);
    eo.lte_threshold = 0.0f;
    struct eng_model *sp = tu_load(out, &eo);
    struct eng_lte_info info;
    ck_assert_int_eq(eng_model_lte_info(sp, &info), 1);
    ck_assert_int_eq(info.n_routed, 3);
    ck_assert_int_eq(info.n_experts, 8);
    const int V = eng_model_config(orig)->n_vocab, n = 40;
    int32_t toks[40];
    float *lo = run_all(orig, n, 9, toks), *la = run_all(on, n, 9, toks), *ls = run_all(sp, n, 9, toks);
    double d = tu_max_abs_diff(lo, la, (size_t)n * V), ds = tu_max_abs_diff(lo, ls, (size_t)n * V);
    printf("calibrated %s: every expert on vs original %.2e, 50%% sparse vs original %.2e\n", _i ? "q8_0" : "f32", d, ds);
    if (!_i) ck_assert_msg(d <= 1e-4, "all-on differs from the original by %g", d);
    double p0 = ppl(dense, 0.0f), p1 = ppl(out, 1e-7f);
    printf("  perplexity on the calibration text: original %.4f, every expert on %.4f (ratio %.6f)\n", p0, p1, p1 / p0);
    ck_assert_msg(fabs(p1 / p0 - 1.0) < 1e-3, "all-on perplexity %g vs %g", p1, p0);
    ck_assert(ds > d);
    struct eng_lte_stats st;
    eng_model_lte_stats(sp, &st);
    for (int il = 0; il < 3; il++) {
        ck_assert(st.routed[il]);
        ck_assert_msg(st.active_frac[il] > 0.2 && st.active_frac[il] < 0.8, "layer %d active %g", il, st.active_frac[il]);
    }
    free(lo), free(la), free(ls);
    eng_model_free(orig), eng_model_free(on), eng_model_free(sp);
    /* bad arguments: usage errors */
    char *bad[] = {"lte-calibrate", "--model", dense, "--text", text, "--sparsity", "1.5", "--out", out, NULL};
    ck_assert_int_eq(tool_lte_calibrate_main(9, bad), 2);
    unlink(dense), unlink(text), unlink(out), unlink(out2);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("lte");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_ref_models, 0, M_N_REF);
    tcase_add_test(tc, test_ref_threshold_override);
    tcase_add_test(tc, test_all_on_equals_dense);
    tcase_add_loop_test(tc, test_batch_invariance, 0, M_N_REF);
    tcase_add_test(tc, test_layer_parallel_stack);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_genmodel_lte_options_need_size);
    tcase_add_loop_test(tc, test_calibrate, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    tu_init("test_lte");
    if (gen_models() < 0) return 1;
    have_ref = tu_find_ref("lte_ref.py", ref_script, sizeof ref_script);
    int failed = tu_check_run(suite());
    for (int i = 0; i < M_COUNT; i++) unlink(models[i].path);
    return failed != 0;
}
