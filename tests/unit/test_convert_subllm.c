/* test_convert_subllm.c - tools/convert_subllm.py (DESIGN.md section 4): a
 * generated SUBLLM model (full K/V heads, brackets closing in another order
 * than they open) is exported in the authors' checkpoint conventions by
 * tests/ref/subllm_ref.py, converted back, and checked against the original
 * file (bitwise), the NumPy reference and the authors'-convention forward;
 * broken checkpoints are refused. Split out of test_subllm.c.
 *
 * The reference needs python3 with numpy and the PyPI `gguf` package; without
 * them the test is skipped with a notice, unless SLIMSERVE_REQUIRE_REF=1 makes
 * that a failure.
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
#include "kernels/ss_error.h"
#include "tools/genmodel.h"
#include "testutil.h"

#define MAXT 64 /* tokens per prompt */
#define NCTX 256
#define PAGES_PER_SEQ (NCTX / 16)

static char model_path[PATH_MAX];
static char ref_dir[PATH_MAX];    /* <src>/tests/ref */
static char ref_script[PATH_MAX]; /* <ref_dir>/subllm_ref.py */
static int have_ref;

/* The converter source: as test_subllm.c's M_CONV model. */
static int gen_model(void) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "subllm";
    o.structure = "T(T(T)T)T(T)T";
    o.keep = 0.6f;
    o.keep_noise = 0.25f;
    o.wtype = BE_F32;
    o.tied = 0;
    o.dim = 64;
    o.n_heads = 4;
    o.n_kv_heads = 4;
    o.ffn_dim = 192;
    o.tokenizer = "spm";
    o.seed = 18;
    o.n_layers = 0;
    for (const char *p = o.structure; *p; p++) o.n_layers += *p == 'T';
    char err[256];
    tu_tmp_file(model_path, sizeof model_path, "conv-src.gguf");
    int rc = genmodel_write(&o, model_path, err, sizeof err);
    if (rc < 0) fprintf(stderr, "genmodel converter source: %s\n", err);
    return rc;
}

/* One thread, as test_subllm.c: tiny models on a shared machine. */
static struct eng_model *load(const char *path, int kv_type, int max_batch) {
    struct eng_options o = {.kv_type = kv_type, .max_batch_tokens = max_batch, .n_ctx = NCTX, .n_threads = 1};
    return tu_load(path, &o);
}

/* A fresh sequence of n tokens on the page list pages (PAGES_PER_SEQ
 * entries, identity tables), all logits; kept receives the kept count per
 * level. */
static int run_all(struct eng_model *m, const int32_t *pages, const int32_t *toks, int n, float *logits,
                   int32_t *kept) {
    struct eng_kv_tables t;
    ck_assert_int_eq(eng_kv_identity_tables(&t, m, pages, PAGES_PER_SEQ), 0);
    struct eng_seq s = {.tok0 = 0, .n_tok = n, .n_past = 0, .want_logits = 1, .all_logits = 1,
                        .level_kept = kept, .layer_pages = t.rows, .layer_n_pages = PAGES_PER_SEQ};
    struct eng_batch b = {.tokens = toks, .n_tokens = n, .seqs = &s, .n_seqs = 1};
    int rc = eng_forward(m, &b, logits);
    eng_kv_tables_free(&t);
    return rc;
}

/* The model exported as the authors' state dict (.npz and .safetensors, their
 * names, rotate-half q/k rows, packed w12, bypasses in closing order),
 * converted back by tools/convert_subllm.py, then: the engine on the
 * converted file gives bitwise the logits of the original file, and agrees
 * with subllm_ref.py on the converted file and with the separate float64
 * forward written in the authors' conventions on the exported arrays. */
START_TEST(test_convert) {
    if (!tu_ref_available(have_ref, "converter test")) return;
    const char *src = model_path;
    char ckpt[PATH_MAX], cfg[PATH_MAX], out[PATH_MAX], cmd[8 * PATH_MAX], bad[PATH_MAX];
    tu_tmp_file(cfg, sizeof cfg, "conv.json");
    tu_tmp_file(out, sizeof out, "conv.gguf");
    tu_tmp_file(bad, sizeof bad, "conv-bad.npz");
    struct eng_model *m0 = load(src, ENG_KV_F32, MAXT);
    const int V = eng_model_config(m0)->n_vocab, n = 33;
    int32_t toks[MAXT], pages[PAGES_PER_SEQ];
    for (int i = 0; i < PAGES_PER_SEQ; i++) pages[i] = i;
    tu_prompt(toks, n, V, 21);
    float *orig = malloc((size_t)n * V * sizeof(float)), *got = malloc((size_t)n * V * sizeof(float));
    ck_assert(orig && got);
    int32_t kept0[ENG_MAX_LEVELS];
    ck_assert_int_eq(run_all(m0, pages, toks, n, orig, kept0), 0);
    eng_model_free(m0);
    static const char *const exts[] = {"npz", "safetensors"};
    for (int e = 0; e < 2; e++) {
        char name[32];
        snprintf(name, sizeof name, "conv.%s", exts[e]);
        tu_tmp_file(ckpt, sizeof ckpt, name);
        snprintf(cmd, sizeof cmd, "python3 '%s/subllm_ref.py' '%s' --export-theirs '%s' --export-config '%s'", ref_dir,
                 src, ckpt, cfg);
        ck_assert_msg(system(cmd) == 0, "%s", cmd);
        snprintf(cmd, sizeof cmd,
                 "python3 '%s/../../tools/convert_subllm.py' '%s' --config '%s' --tokenizer-gguf '%s' --out '%s' >/dev/null",
                 ref_dir, ckpt, cfg, src, out);
        ck_assert_msg(system(cmd) == 0, "%s", cmd);
        struct eng_model *m = load(out, ENG_KV_F32, MAXT);
        ck_assert_int_eq(eng_model_n_levels(m), 4);
        int32_t kept[ENG_MAX_LEVELS];
        ck_assert_int_eq(run_all(m, pages, toks, n, got, kept), 0);
        eng_model_free(m);
        ck_assert_msg(memcmp(got, orig, (size_t)n * V * sizeof(float)) == 0,
                      "converted %s: logits differ from the original file's", exts[e]);
        int ref_kept[3];
        double margin;
        float *want = tu_subllm_ref(ref_script, out, toks, n, V, ref_kept, 3, &margin);
        double d1 = tu_max_abs_diff(got, want, (size_t)n * V);
        free(want);
        char lo[PATH_MAX], list[1024];
        tu_tmp_file(lo, sizeof lo, "theirs.f32");
        size_t o = 0;
        for (int i = 0; i < n; i++) o += snprintf(list + o, sizeof list - o, "%s%d", i ? "," : "", toks[i]);
        snprintf(cmd, sizeof cmd, "python3 '%s/subllm_ref.py' --theirs '%s' --config '%s' --tokens %s --out '%s'",
                 ref_dir, ckpt, cfg, list, lo);
        ck_assert_msg(system(cmd) == 0, "%s", cmd);
        want = tu_read_f32(lo, (size_t)n * V);
        double d2 = tu_max_abs_diff(got, want, (size_t)n * V);
        free(want);
        unlink(lo);
        printf("converter (%s): kept %d/%d/%d/%d, max |logit - ref| %.3g, vs their-convention forward %.3g "
               "(min |score| %.3g)\n", exts[e], kept[0], kept[1], kept[2], kept[3], d1, d2, margin);
        fflush(stdout);
        ck_assert(margin > 1e-5);
        ck_assert_msg(d1 <= 1e-4 && d2 <= 1e-4, "converter: %g / %g", d1, d2);
    }
    /* a checkpoint missing a bypass, and one with a nonzero projection bias, are refused */
    static const char *const breaks[] = {"del z['decoder.bypasses.1.bypass_scale']",
                                         "z['decoder.layers.2.self_attn.q_proj.bias'] = np.ones(64, np.float32)"};
    tu_tmp_file(ckpt, sizeof ckpt, "conv.npz");
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "python3 -c \"import numpy as np; z = dict(np.load('%s')); %s; np.savez('%s', **z)\"",
                 ckpt, breaks[i], bad);
        ck_assert_msg(system(cmd) == 0, "%s", cmd);
        snprintf(cmd, sizeof cmd,
                 "python3 '%s/../../tools/convert_subllm.py' '%s' --config '%s' --tokenizer-gguf '%s' --out '%s' 2>/dev/null",
                 ref_dir, bad, cfg, src, out);
        ck_assert_msg(system(cmd) != 0, "converter accepted a broken checkpoint (%s)", breaks[i]);
    }
    for (int e = 0; e < 2; e++) {
        char name[32];
        snprintf(name, sizeof name, "conv.%s", exts[e]);
        tu_tmp_file(ckpt, sizeof ckpt, name);
        unlink(ckpt);
    }
    unlink(cfg);
    unlink(out);
    unlink(bad);
    free(orig);
    free(got);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("convert_subllm");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_convert);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    tu_init("test_convert_subllm");
    have_ref = tu_find_ref("subllm_ref.py", ref_script, sizeof ref_script);
    snprintf(ref_dir, sizeof ref_dir, "%s/tests/ref", tu_src_dir);
    if (gen_model() < 0) return 1;
    SRunner *sr = srunner_create(suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    unlink(model_path);
    return failed != 0;
}
