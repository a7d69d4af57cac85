/* test_perplexity.c - tools/perplexity.c (ppl_run and the CLI).
 *
 * - numerics: on small generated llama models (spm and bpe vocabularies) the
 *   perplexity of a text of a few hundred tokens matches tests/ref/ppl_ref.py,
 *   an independent NumPy float64 computation over the same GGUF and the same
 *   token ids (dumped here), within 1e-5 relative (fp32 K/V), and within 1e-3
 *   with the default fp16 K/V;
 * - the value does not depend on how windows are batched (B = 1, 3, 4, 16),
 *   on the chunk size (1, 5, 13, 64, whole window) or on the logits budget
 *   (bitwise, checked to 1e-12 relative);
 * - --max-windows, in-memory text, counts (scored tokens = W * (N - 1 - N/2));
 * - errors: missing model or text, text shorter than one window, empty text,
 *   bad options, and the CLI's exit codes (2 usage, 1 error, 0 with exactly
 *   one JSON object on stdout).
 *
 * The NumPy reference needs python3 with numpy and the PyPI `gguf` package;
 * without them the comparison is skipped with a printed note (unless
 * SLIMSERVE_REQUIRE_REF=1). The scripts are found through SLIMSERVE_SRC_DIR,
 * else from __FILE__ (relative paths resolved against the build root).
 */
#include <check.h>
#include <fcntl.h>
#include <libgen.h>
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
#include "tu_check.h"

#define CTX 64

enum { M_SPM, M_BPE, M_COUNT };
static const char *const model_tok[M_COUNT] = {"spm", "bpe"};
static char model_path[M_COUNT][PATH_MAX];
static char text_path[PATH_MAX], short_path[PATH_MAX], empty_path[PATH_MAX];
static char tmp_dir[PATH_MAX - 64];
static char ref_script[PATH_MAX];
static int have_ref;

static void tmp_file(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/test_ppl_%ld_%s", tmp_dir, (long)getpid(), name);
}

static void write_file(const char *path, const char *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, len, fp) != len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(fp);
}

/* The text: the start of the generator's training corpus (~1900 bytes, a few
 * hundred tokens with a 512-token vocabulary), cut at a space, plus a line
 * break and a non-ASCII word so byte fallback is exercised. */
static void write_texts(void) {
    const char *c = genmodel_corpus();
    size_t n = strlen(c) < 1900 ? strlen(c) : 1900;
    while (n > 0 && c[n] != ' ') n--;
    char *t = malloc(n + 64);
    memcpy(t, c, n);
    size_t k = n + (size_t)sprintf(t + n, "\nCaf\xc3\xa9 na\xc3\xafve.\n");
    tmp_file(text_path, sizeof text_path, "text.txt");
    write_file(text_path, t, k);
    tmp_file(short_path, sizeof short_path, "short.txt");
    write_file(short_path, c, 40);
    tmp_file(empty_path, sizeof empty_path, "empty.txt");
    write_file(empty_path, "", 0);
    free(t);
}

static void make_models(void) {
    for (int i = 0; i < M_COUNT; i++) {
        struct genmodel_opts o;
        genmodel_opts_default(&o);
        o.tokenizer = model_tok[i];
        o.seed = 11 + (uint64_t)i;
        char name[32], err[256];
        snprintf(name, sizeof name, "%s.gguf", model_tok[i]);
        tmp_file(model_path[i], sizeof model_path[i], name);
        if (genmodel_write(&o, model_path[i], err, sizeof err) != 0) {
            fprintf(stderr, "genmodel_write: %s\n", err);
            exit(1);
        }
    }
}

static void find_ref(void) {
    const char *src = getenv("SLIMSERVE_SRC_DIR");
    char dir[PATH_MAX - 16];
    if (src && src[0]) {
        snprintf(dir, sizeof dir, "%s/tests/ref", src);
    } else {
        char here[PATH_MAX];
        snprintf(here, sizeof here, "%s", __FILE__);
        char *d = dirname(here); /* .../tests/unit */
        if (d[0] == '/') {
            snprintf(dir, sizeof dir, "%s/../ref", d);
        } else { /* relative to the build root, two levels above this executable */
            char exe[PATH_MAX];
            ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
            exe[n > 0 ? n : 0] = 0;
            char *root = dirname(dirname(exe));
            snprintf(dir, sizeof dir, "%s/%s/../ref", root, d);
        }
    }
    snprintf(ref_script, sizeof ref_script, "%s/ppl_ref.py", dir);
    if (access(ref_script, R_OK) != 0) {
        printf("NOTE: reference script not found at %s\n", ref_script);
        return;
    }
    have_ref = system("python3 -c 'import numpy, gguf' >/dev/null 2>&1") == 0;
    if (!have_ref) printf("NOTE: python3 with numpy and gguf is not available\n");
}

/* ---------------------------------------------------------------- helpers */

static void opts_for(struct ppl_opts *o, int which) {
    ppl_opts_default(o);
    o->model_path = model_path[which];
    o->text_path = text_path;
    o->ctx = CTX;
    o->eng.n_threads = 2;
}

static struct ppl_result run_ok(const struct ppl_opts *o) {
    struct ppl_result r;
    char err[512] = "";
    int rc = ppl_run(o, &r, err, sizeof err);
    ck_assert_msg(rc == 0, "ppl_run: %d %s", rc, err);
    ck_assert(isfinite(r.perplexity) && r.perplexity > 1.0);
    return r;
}

static double rel(double a, double b) { return fabs(a - b) / fabs(b); }

/* Tokenizes the text on its own (no BOS) and writes the ids, one per line. */
static int64_t dump_tokens(int which, const char *out) {
    struct gguf_file *f;
    struct tok *t;
    char err[256];
    ck_assert_int_eq(gguf_open(&f, model_path[which], err, sizeof err), 0);
    ck_assert_int_eq(tok_load(&t, f, err, sizeof err), 0);
    FILE *fp = fopen(text_path, "rb");
    ck_assert(fp != NULL);
    static char text[8192];
    size_t len = fread(text, 1, sizeof text, fp);
    fclose(fp);
    static int32_t ids[8192];
    int64_t n = tok_encode(t, text, len, 0, 0, ids, 8192);
    ck_assert(n > 0 && n <= 8192);
    fp = fopen(out, "w");
    ck_assert(fp != NULL);
    for (int64_t i = 0; i < n; i++) fprintf(fp, "%d\n", ids[i]);
    fclose(fp);
    tok_free(t);
    gguf_close(f);
    return n;
}

/* -------------------------------------------------------------- reference */

static void compare_with_ref(int which, int kv_type, double tol) {
    struct ppl_opts o;
    opts_for(&o, which);
    o.eng.kv_type = kv_type;
    struct ppl_result r = run_ok(&o);

    char ids[PATH_MAX];
    tmp_file(ids, sizeof ids, "ids.txt");
    int64_t n = dump_tokens(which, ids);
    ck_assert_int_eq(r.n_text_tokens, n);
    ck_assert_int_eq(r.n_windows, n / CTX);
    ck_assert_msg(r.n_windows >= 5, "text too short for the test: %lld tokens", (long long)n);
    ck_assert_int_eq(r.n_scored, (int64_t)r.n_windows * (CTX - 1 - CTX / 2));

    if (!have_ref) {
        const char *req = getenv("SLIMSERVE_REQUIRE_REF");
        ck_assert_msg(!req || strcmp(req, "1"), "reference not available");
        printf("SKIP NumPy comparison for %s (python3/numpy/gguf missing): ppl %.6f\n", model_tok[which],
               r.perplexity);
        unlink(ids);
        return;
    }
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s' --tokens-file '%s' --ctx %d", ref_script,
             model_path[which], ids, CTX);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char line[1024] = "";
    size_t got = fread(line, 1, sizeof line - 1, p);
    line[got] = 0;
    ck_assert_msg(pclose(p) == 0, "reference failed: %s", cmd);
    unlink(ids);
    double want = 0;
    long long tokens = 0;
    const char *a = strstr(line, "\"perplexity\": "), *b = strstr(line, "\"tokens\": ");
    ck_assert_msg(a && b, "unexpected reference output: %s", line);
    ck_assert(sscanf(a + 14, "%lf", &want) == 1 && sscanf(b + 10, "%lld", &tokens) == 1);
    ck_assert_int_eq(tokens, r.n_scored);
    printf("ppl %s kv %s: %.9f, NumPy float64 %.9f, relative difference %.3g\n", model_tok[which],
           kv_type == ENG_KV_F32 ? "f32" : "f16", r.perplexity, want, rel(r.perplexity, want));
    fflush(stdout);
    ck_assert_msg(rel(r.perplexity, want) <= tol, "perplexity %.9f vs reference %.9f", r.perplexity, want);
}

/* The brief asked for 1e-3. fp32 K/V agrees to ~5e-8, and replacing each
 * window's first token with BOS or not moves these random models' perplexity
 * by only ~3e-4, so 1e-5 is what makes the comparison catch a BOS mistake. */
START_TEST(test_ref_f32_kv) { compare_with_ref(_i, ENG_KV_F32, 1e-5); }
END_TEST

/* fp16 K/V rounds keys and values to 11 bits: ~2e-5 observed. */
START_TEST(test_ref_f16_kv) { compare_with_ref(M_SPM, ENG_KV_F16, 1e-3); }
END_TEST

/* ------------------------------------------------------------- invariance */

START_TEST(test_batch_invariance) {
    struct ppl_opts o;
    opts_for(&o, M_SPM);
    o.batch = 1;
    struct ppl_result r1 = run_ok(&o);
    ck_assert_int_eq(r1.batch, 1);
    static const int batches[] = {3, 4, 16};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        o.batch = batches[i];
        struct ppl_result r = run_ok(&o);
        ck_assert_int_eq(r.batch, batches[i] < r1.n_windows ? batches[i] : r1.n_windows);
        ck_assert_int_eq(r.n_scored, r1.n_scored);
        ck_assert_msg(rel(r.nll_mean, r1.nll_mean) <= 1e-12, "batch %d: nll %.17g vs %.17g", batches[i],
                      r.nll_mean, r1.nll_mean);
        ck_assert_msg(r.perplexity == r1.perplexity, "batch %d not bitwise: %.17g vs %.17g", batches[i],
                      r.perplexity, r1.perplexity);
    }
}
END_TEST

START_TEST(test_chunk_invariance) {
    struct ppl_opts o;
    opts_for(&o, M_BPE);
    o.batch = 2;
    o.chunk = 64;
    struct ppl_result base = run_ok(&o);
    static const int chunks[] = {1, 5, 13, 31, 1000};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        o.chunk = chunks[i];
        struct ppl_result r = run_ok(&o);
        ck_assert_int_eq(r.chunk, chunks[i] < CTX ? chunks[i] : CTX);
        ck_assert_int_eq(r.logit_chunk, r.chunk);
        ck_assert_msg(rel(r.nll_mean, base.nll_mean) <= 1e-12 && r.perplexity == base.perplexity,
                      "chunk %d: %.17g vs %.17g", chunks[i], r.perplexity, base.perplexity);
    }
    /* A logits budget of one row makes scored chunks 1 token per window
     * (context chunks stay 64): the value must not move either. */
    o.chunk = 64;
    o.logits_budget = 1;
    struct ppl_result r = run_ok(&o);
    ck_assert_int_eq(r.chunk, 64);
    ck_assert_int_eq(r.logit_chunk, 1);
    ck_assert(r.perplexity == base.perplexity);
}
END_TEST

START_TEST(test_max_windows_and_memory_text) {
    struct ppl_opts o;
    opts_for(&o, M_SPM);
    o.max_windows = 2;
    o.batch = 8;
    struct ppl_result r = run_ok(&o);
    ck_assert_int_eq(r.n_windows, 2);
    ck_assert_int_eq(r.batch, 2);
    ck_assert_int_eq(r.n_scored, 2 * (CTX - 1 - CTX / 2));
    ck_assert(r.seconds >= 0 && r.tokens_per_second >= 0);

    /* The first two windows alone, batched with nothing else, again. */
    o.batch = 1;
    struct ppl_result r1 = run_ok(&o);
    ck_assert(r1.perplexity == r.perplexity);

    /* In-memory text gives what the file gives. */
    FILE *fp = fopen(text_path, "rb");
    static char buf[8192];
    size_t len = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    o.text = buf;
    o.text_len = len;
    o.text_path = "/nonexistent/ignored";
    struct ppl_result rm = run_ok(&o);
    ck_assert(rm.perplexity == r.perplexity);

    /* Odd window length: h = 16, 16 scored tokens per window. */
    opts_for(&o, M_SPM);
    o.ctx = 33;
    o.chunk = 7;
    r = run_ok(&o);
    ck_assert_int_eq(r.n_scored, (int64_t)r.n_windows * 16);
}
END_TEST

/* ----------------------------------------------------------------- errors */

static void expect_fail(const struct ppl_opts *o, int want_rc, const char *want_msg) {
    struct ppl_result r;
    char err[512] = "";
    int rc = ppl_run(o, &r, err, sizeof err);
    ck_assert_msg(rc < 0, "expected failure (%s)", want_msg);
    if (want_rc) ck_assert_msg(rc == want_rc, "rc %d, want %d: %s", rc, want_rc, err);
    ck_assert_msg(strstr(err, want_msg) != NULL, "message '%s' lacks '%s'", err, want_msg);
}

START_TEST(test_errors) {
    struct ppl_opts o;
    opts_for(&o, M_SPM);
    o.model_path = "/nonexistent/model.gguf";
    expect_fail(&o, 0, "/nonexistent/model.gguf");
    o.model_path = NULL;
    expect_fail(&o, SS_EINVAL, "no model");
    o.model_path = text_path; /* not a GGUF file */
    expect_fail(&o, 0, "");

    opts_for(&o, M_SPM);
    o.text_path = "/nonexistent/text.txt";
    expect_fail(&o, SS_ENOTFOUND, "/nonexistent/text.txt");
    o.text_path = tmp_dir; /* a directory opens but cannot be read */
    expect_fail(&o, SS_EIO, tmp_dir);
    o.text_path = short_path;
    expect_fail(&o, SS_EINVAL, "fewer than one window of ctx 64");
    o.text_path = empty_path;
    expect_fail(&o, SS_EINVAL, "has 0 tokens");
    o.text_path = text_path;
    o.ctx = 4096; /* more than the text holds */
    expect_fail(&o, SS_EINVAL, "fewer than one window of ctx 4096");

    static const struct { int field, value; const char *msg; } bad[] = {
        {0, 3, "ctx 3"}, {0, (1 << 20) + 1, "ctx"}, {1, 0, "batch 0"}, {2, 0, "chunk 0"},
        {3, -1, "max_windows -1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        opts_for(&o, M_SPM);
        int *f[] = {&o.ctx, &o.batch, &o.chunk, &o.max_windows};
        *f[bad[i].field] = bad[i].value;
        expect_fail(&o, SS_EINVAL, bad[i].msg);
    }
    struct ppl_result r;
    ck_assert_int_eq(ppl_run(NULL, &r, NULL, 0), SS_EINVAL);
}
END_TEST

/* Runs the CLI with stdout and stderr sent to files; returns its status and
 * the stdout text in out. */
static int run_cli(char *out, size_t cap, int argc, char **argv) {
    char so[PATH_MAX], se[PATH_MAX];
    tmp_file(so, sizeof so, "stdout.txt");
    tmp_file(se, sizeof se, "stderr.txt");
    fflush(stdout);
    fflush(stderr);
    int keep1 = dup(1), keep2 = dup(2);
    int f1 = open(so, O_WRONLY | O_CREAT | O_TRUNC, 0600), f2 = open(se, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert(keep1 >= 0 && keep2 >= 0 && f1 >= 0 && f2 >= 0);
    dup2(f1, 1);
    dup2(f2, 2);
    int rc = tool_perplexity_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(keep1, 1);
    dup2(keep2, 2);
    close(keep1);
    close(keep2);
    close(f1);
    close(f2);
    FILE *fp = fopen(so, "r");
    size_t n = fread(out, 1, cap - 1, fp);
    out[n] = 0;
    fclose(fp);
    unlink(so);
    unlink(se);
    return rc;
}

START_TEST(test_cli) {
    char out[4096], ctx[16];
    snprintf(ctx, sizeof ctx, "%d", CTX);
    char *ok[] = {"perplexity", "--model", model_path[M_SPM], "--file", text_path, "--ctx", ctx,
                  "--batch=3", "--threads", "2", "--json", "--kv-type", "f32"};
    ck_assert_int_eq(run_cli(out, sizeof out, 13, ok), 0);
    /* exactly one JSON object, one line, with every key */
    ck_assert_msg(out[0] == '{' && strchr(out, '\n') == out + strlen(out) - 1 && out[strlen(out) - 2] == '}',
                  "not one JSON line: %s", out);
    static const char *const keys[] = {"\"perplexity\":", "\"nll_mean\":", "\"tokens\":", "\"ctx\":64",
                                       "\"windows\":", "\"batch\":3", "\"seconds\":", "\"tokens_per_second\":"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        ck_assert_msg(strstr(out, keys[i]) != NULL, "missing %s in %s", keys[i], out);
    double ppl = 0;
    ck_assert(sscanf(strstr(out, "\"perplexity\":") + 13, "%lf", &ppl) == 1);
    struct ppl_opts o;
    opts_for(&o, M_SPM);
    o.eng.kv_type = ENG_KV_F32;
    ck_assert(rel(ppl, run_ok(&o).perplexity) < 1e-15);

    char *text[] = {"perplexity", "--model", model_path[M_SPM], "--file", text_path, "--ctx", ctx, "--quiet"};
    ck_assert_int_eq(run_cli(out, sizeof out, 8, text), 0);
    ck_assert_msg(strncmp(out, "perplexity: ", 12) == 0 && strstr(out, " tokens (ctx 64, ") &&
                      strstr(out, " windows), ") && strstr(out, " tokens/s\n"),
                  "unexpected text output: %s", out);

    char *help[] = {"perplexity", "--help"};
    ck_assert_int_eq(run_cli(out, sizeof out, 2, help), 0);
    ck_assert(strstr(out, "--max-windows") != NULL);

    char *usage_errs[][4] = {
        {"perplexity", "--file", text_path, NULL},              /* no --model */
        {"perplexity", "--model", model_path[M_SPM], NULL},     /* no --file */
        {"perplexity", "--ctx", "abc", NULL},
        {"perplexity", "--ctx", "2", NULL},
        {"perplexity", "--batch", "0", NULL},
        {"perplexity", "--bogus", "1", NULL},
        {"perplexity", "--kv-type", "q4", NULL},
        {"perplexity", "stray", NULL, NULL},
        {"perplexity", "--ctx", NULL, NULL},                    /* missing value */
    };
    for (size_t i = 0; i < sizeof usage_errs / sizeof usage_errs[0]; i++) {
        int argc = 0;
        while (argc < 4 && usage_errs[i][argc]) argc++;
        ck_assert_msg(run_cli(out, sizeof out, argc, usage_errs[i]) == 2, "case %zu should be a usage error", i);
    }
    char *missing[] = {"perplexity", "--model", model_path[M_SPM], "--file", "/nonexistent/t.txt", "--quiet"};
    ck_assert_int_eq(run_cli(out, sizeof out, 6, missing), 1);
    char *too_short[] = {"perplexity", "--model", model_path[M_SPM], "--file", short_path, "--quiet"};
    ck_assert_int_eq(run_cli(out, sizeof out, 6, too_short), 1);
}
END_TEST

static Suite *ppl_suite(void) {
    Suite *s = suite_create("perplexity");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ref_f32_kv, 0, M_COUNT);
    tcase_add_test(tc, test_ref_f16_kv);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_chunk_invariance);
    tcase_add_test(tc, test_max_windows_and_memory_text);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    const char *t = getenv("SLIMSERVE_TEST_TMP");
    snprintf(tmp_dir, sizeof tmp_dir, "%s", t && t[0] ? t : "/tmp");
    make_models();
    write_texts();
    find_ref();
    int failed = tu_check_run(ppl_suite());
    for (int i = 0; i < M_COUNT; i++) unlink(model_path[i]);
    unlink(text_path);
    unlink(short_path);
    unlink(empty_path);
    return failed != 0;
}
