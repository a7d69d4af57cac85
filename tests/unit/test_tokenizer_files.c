/* test_tokenizer_files.c - Check suite for engine/tokenizer.h over files:
 * malformed tokenizer metadata, the generated models of tools/genmodel (both
 * kinds) and, when present, the real Gemma 3 270M vocab (262144 tokens),
 * whose expected ids come from tests/ref/spm_ref.py (a naive reference
 * encoder, itself cross-checked against the sentencepiece library); encode
 * speed is printed, not asserted. The small vocabularies are toktest.c's.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tok_internal.h"
#include "engine/tokenizer.h"
#include "tools/genmodel.h"
#include "testutil.h"
#include "toktest.h"
#include "tu_check.h"

/* ------------------------------------------------------------------ malformed metadata */

enum bad_case {
    BAD_NO_MODEL, BAD_MODEL_KIND, BAD_MODEL_TYPE, BAD_NO_TOKENS, BAD_TOKENS_TYPE, BAD_EMPTY_TOKENS,
    BAD_SCORES_LEN, BAD_SCORES_TYPE, BAD_SCORES_NAN, BAD_TYPES_LEN, BAD_TYPES_TYPE, BAD_TYPES_VALUE,
    BAD_BOS_RANGE, BAD_BOS_TYPE, BAD_ADD_BOS_TYPE, BAD_NO_MERGES, BAD_MERGE_FORM, BAD_MERGES_TYPE,
    BAD_N
};

static struct gguf_writer *bad_writer(int c) {
    struct vb v;
    int bpe = c == BAD_NO_MERGES || c == BAD_MERGE_FORM || c == BAD_MERGES_TYPE;
    if (bpe)
        bpe_vocab(&v);
    else
        spm_vocab(&v);
    struct gguf_writer *w = gguf_writer_new();
    if (c == BAD_MODEL_KIND)
        gguf_w_str(w, "tokenizer.ggml.model", "bert");
    else if (c == BAD_MODEL_TYPE)
        gguf_w_u32(w, "tokenizer.ggml.model", 1);
    else if (c != BAD_NO_MODEL)
        gguf_w_str(w, "tokenizer.ggml.model", bpe ? "gpt2" : "llama");
    if (c == BAD_TOKENS_TYPE)
        gguf_w_arr_i32(w, "tokenizer.ggml.tokens", v.type, (uint64_t)v.n);
    else if (c == BAD_EMPTY_TOKENS)
        gguf_w_arr_str(w, "tokenizer.ggml.tokens", v.tok, 0);
    else if (c != BAD_NO_TOKENS)
        gguf_w_arr_str(w, "tokenizer.ggml.tokens", v.tok, (uint64_t)v.n);
    if (c == BAD_SCORES_NAN)
        v.score[270] = NAN;
    if (c == BAD_SCORES_TYPE)
        gguf_w_arr_str(w, "tokenizer.ggml.scores", v.tok, (uint64_t)v.n);
    else
        gguf_w_arr_f32(w, "tokenizer.ggml.scores", v.score, (uint64_t)(v.n - (c == BAD_SCORES_LEN)));
    if (c == BAD_TYPES_VALUE)
        v.type[5] = 9;
    if (c == BAD_TYPES_TYPE)
        gguf_w_arr_f32(w, "tokenizer.ggml.token_type", v.score, (uint64_t)v.n);
    else
        gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v.type, (uint64_t)(v.n - (c == BAD_TYPES_LEN)));
    if (c == BAD_BOS_RANGE)
        gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v.n);
    else if (c == BAD_BOS_TYPE)
        gguf_w_str(w, "tokenizer.ggml.bos_token_id", "1");
    if (c == BAD_ADD_BOS_TYPE)
        gguf_w_str(w, "tokenizer.ggml.add_bos_token", "yes");
    if (c == BAD_MERGE_FORM) {
        v.merges[3] = "bc";
        gguf_w_arr_str(w, "tokenizer.ggml.merges", v.merges, (uint64_t)v.n_merges);
    } else if (c == BAD_MERGES_TYPE)
        gguf_w_arr_i32(w, "tokenizer.ggml.merges", v.type, 4);
    else if (bpe && c != BAD_NO_MERGES)
        gguf_w_arr_str(w, "tokenizer.ggml.merges", v.merges, (uint64_t)v.n_merges);
    return w;
}

START_TEST(malformed) {
    for (int c = 0; c < BAD_N; c++) {
        struct tok *t = (struct tok *)1;
        char err[256];
        int rc = load_writer(bad_writer(c), &t, err, sizeof err);
        int want = c == BAD_MODEL_KIND ? SS_EUNSUPPORTED : SS_EBADMODEL;
        ck_assert_msg(rc == want, "case %d: rc %d (%s)", c, rc, err);
        ck_assert_msg(t == NULL, "case %d: tokenizer returned on error", c);
        ck_assert_msg(err[0] != 0, "case %d: no message", c);
    }
    /* the well-formed baseline of the same builder loads */
    struct vb v;
    spm_vocab(&v);
    struct tok *t;
    char err[256];
    ck_assert_int_eq(load_writer(spm_writer(&v, 1), &t, err, sizeof err), 0);
    tok_free(t);
    /* tolerated: a u32 -1 means "none"; an unusable padding id is ignored */
    struct gguf_writer *w = spm_writer(&v, 1);
    gguf_w_u32(w, "tokenizer.ggml.eot_token_id", UINT32_MAX);
    gguf_w_u32(w, "tokenizer.ggml.padding_token_id", 100000);
    ck_assert_msg(load_writer(w, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(tok_eos(t), 2);
    tok_free(t);
    tok_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------ generated models */

static const char PARAGRAPH[] =
    "The quick brown fox jumps over the lazy dog. It's 2024, and 12,345 people "
    "said \"hello\" twice!\nNew line,\ttab, and  double  spaces. Unicode: na\xc3\xafve "
    "\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80 done.";

static void genmodel_case(const char *kind) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = kind;
    char path[512], err[256];
    const char *dir = getenv("SLIMSERVE_TEST_TMP");
    snprintf(path, sizeof path, "%s/tok_gen_%s_%d.gguf", dir ? dir : "/tmp", kind, (int)getpid());
    int rc = genmodel_write(&o, path, err, sizeof err);
    ck_assert_msg(rc == 0, "genmodel: %s", err);
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "open: %s", err);
    struct tok *t;
    rc = tok_load(&t, f, err, sizeof err);
    gguf_close(f);
    unlink(path);
    ck_assert_msg(rc == 0, "tok_load: %s", err);
    int spm = strcmp(kind, "spm") == 0;
    ck_assert_int_eq(tok_kind(t), spm ? TOK_SPM : TOK_BPE);
    ck_assert_int_eq(tok_n_vocab(t), o.n_vocab);
    ck_assert_int_eq(tok_bos(t), spm ? 1 : o.n_vocab - 2);
    ck_assert_int_eq(tok_eos(t), spm ? 2 : o.n_vocab - 1);
    ck_assert(tok_add_bos(t));
    ck_assert(tok_is_eog(t, tok_eos(t)));
    expect_roundtrip(t, PARAGRAPH, strlen(PARAGRAPH));
    const char *corpus = genmodel_corpus();
    size_t cl = strlen(corpus) < 4000 ? strlen(corpus) : 4000;
    while (cl > 0 && ((unsigned char)corpus[cl] & 0xC0) == 0x80)
        cl--; /* cut on a character boundary */
    expect_roundtrip(t, corpus, cl);
    /* the trained merges compress their own training text */
    int64_t n = tok_encode(t, corpus, cl, 0, 0, NULL, 0);
    ck_assert_msg(n > 0 && (double)n < 0.6 * (double)cl, "%s: %lld tokens for %zu bytes", kind, (long long)n, cl);
    tok_free(t);
}

START_TEST(genmodel_spm) { genmodel_case("spm"); }
END_TEST
START_TEST(genmodel_bpe) { genmodel_case("bpe"); }
END_TEST

/* ------------------------------------------------------------------ Gemma 3 */

/* Expected ids from: python3 tests/ref/spm_ref.py GEMMA --check-sp --bos TEXT...
 * (and --special for the chat turn), where sentencepiece agreed on all. */
static const struct {
    const char *text;
    int special;
    int32_t ids[32];
    int n;
} GEMMA_CASES[] = {
    { "Hello world", 0, { 2, 9259, 1902 }, 3 },
    { "The quick brown fox jumps over the lazy dog.", 0,
      { 2, 818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761 }, 11 },
    { "  leading spaces and   runs", 0, { 2, 138, 26016, 9952, 532, 139, 85817 }, 7 },
    { "na\xc3\xafve caf\xc3\xa9, \xe6\x9d\xb1\xe4\xba\xac\xe3\x82\xbf\xe3\x83\xaf\xe3\x83\xbc \xf0\x9f\x98\x80\xf0\x9f\x8e\x89",
      0, { 2, 1789, 238527, 560, 33443, 236764, 86459, 237312, 43071, 163543, 242061 }, 11 },
    { "line one\nline two\n\ntab\tsep\t</s> <b>bold</b>", 0,
      { 2, 1257, 886, 107, 1257, 1156, 108, 4823, 255968, 30868, 255968, 212, 236743, 200, 15640, 209 }, 16 },
    { "def f(x):\n    return x**2 + 12345.678", 0,
      { 2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 1018, 236778, 900, 236743, 236770, 236778,
        236800, 236812, 236810, 236761, 236825, 236832, 236828 }, 23 },
    { "rare: \xf0\x93\x80\x80 \xf0\xa0\x80\x80 \xe2\xb8\xbb", 0, /* 𓀀 𠀀 ⸻: byte fallback */
      { 2, 43128, 236787, 236743, 478, 385, 366, 366, 236743, 478, 398, 366, 366, 236743, 464, 422, 425 }, 17 },
    { "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", 1,
      { 105, 2364, 107, 2202, 106, 107, 105, 4368, 107 }, 9 },
};

START_TEST(gemma3_real) {
    char path[PATH_MAX], why[512], err[256];
    ck_assert_msg(tu_gemma_path(path, sizeof path, why, sizeof why), "%s", why);
    struct gguf_file *f;
    double t0 = now_s();
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    double t1 = now_s();
    struct tok *t;
    int rc = tok_load(&t, f, err, sizeof err);
    double t2 = now_s();
    gguf_close(f);
    ck_assert_msg(rc == 0, "%s", err);
    fprintf(stderr, "gemma3: gguf_open %.1f ms, tok_load of %d tokens %.1f ms\n", (t1 - t0) * 1e3,
            tok_n_vocab(t), (t2 - t1) * 1e3);
    ck_assert_int_eq(tok_n_vocab(t), 262144);
    ck_assert_int_eq(tok_kind(t), TOK_SPM);
    ck_assert_int_eq(tok_bos(t), 2);
    ck_assert_int_eq(tok_eos(t), 1);
    ck_assert_int_eq(tok_add_space_prefix(t), 0);
    ck_assert(tok_is_eog(t, 1) && tok_is_eog(t, 106) && !tok_is_eog(t, 105) && !tok_is_eog(t, 212));
    for (int i = 0; i < NELEM(GEMMA_CASES); i++) {
        int sp = GEMMA_CASES[i].special;
        expect_ids(t, GEMMA_CASES[i].text, !sp, sp, GEMMA_CASES[i].ids, GEMMA_CASES[i].n);
        if (!sp)
            expect_roundtrip(t, GEMMA_CASES[i].text, strlen(GEMMA_CASES[i].text));
    }
    tok_free(t);
}
END_TEST

/* ------------------------------------------------------------------ speed (printed, not asserted) */

static char *english_text(size_t n) {
    static const char *const words[] = { "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
                                         "server", "tokens", "inference", "memory", "batch", "of", "and",
                                         "a", "model", "with", "paged", "cache,", "scheduler.", "It's",
                                         "2024", "hello", "world!", "(fast)", "\n" };
    char *s = malloc(n + 32);
    size_t k = 0;
    uint32_t x = 12345;
    while (k < n) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % NELEM(words)];
        k += (size_t)sprintf(s + k, "%s%s", w, w[0] == '\n' ? "" : " ");
    }
    s[n] = 0;
    return s;
}

/* best of 5 runs (the machine is shared) */
static void time_encode(const char *name, const struct tok *t, const char *s, size_t n) {
    int64_t m = tok_encode(t, s, n, 1, 0, NULL, 0);
    ck_assert_int_gt(m, 0);
    int32_t *ids = malloc((size_t)m * sizeof *ids);
    double best_e = 1e9, best_d = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        ck_assert_int_eq(tok_encode(t, s, n, 1, 0, ids, m), m);
        double t1 = now_s();
        char *d = tok_decode(t, ids, m, 1);
        double t2 = now_s();
        ck_assert(d && strlen(d) == n && memcmp(d, s, n) == 0);
        free(d);
        best_e = t1 - t0 < best_e ? t1 - t0 : best_e;
        best_d = t2 - t1 < best_d ? t2 - t1 : best_d;
    }
    fprintf(stderr, "speed %-14s %zu bytes -> %lld tokens: encode %.2f ms (%.1f MB/s), decode %.2f ms\n", name,
            n, (long long)m, best_e * 1e3, (double)n / best_e / 1e6, best_d * 1e3);
    free(ids);
}

START_TEST(speed) {
    size_t n = 100 * 1024;
    char *s = english_text(n);
    struct tok *t = spm_load(-1);
    time_encode("spm-test", t, s, n);
    tok_free(t);
    t = bpe_load("llama3");
    time_encode("bpe-test", t, s, n);
    tok_free(t);
    /* one long run without spaces (worst case for one big merge heap / regex piece) */
    char *run = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        run[i] = "hel"[i % 3];
    run[n] = 0;
    t = spm_load(-1);
    time_encode("spm-no-spaces", t, run, n);
    tok_free(t);
    t = bpe_load("default");
    time_encode("bpe-no-spaces", t, run, n);
    memset(run, ' ', n);
    time_encode("bpe-spaces", t, run, n);
    tok_free(t);
    free(run);
    char path[PATH_MAX], why[512], err[256];
    ck_assert_msg(tu_gemma_path(path, sizeof path, why, sizeof why), "%s", why);
    struct gguf_file *f;
    ck_assert(gguf_open(&f, path, err, sizeof err) == 0);
    ck_assert(tok_load(&t, f, err, sizeof err) == 0);
    gguf_close(f);
    time_encode("gemma3", t, s, n);
    tok_free(t);
    free(s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer_files");
    const struct tu_case tests[] = {
        {"malformed", malformed},
        {"genmodel_spm", genmodel_spm},
        {"genmodel_bpe", genmodel_bpe},
        {"gemma3_real", gemma3_real},
        {"speed", speed},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 120);
    int failed = tu_check_run(s);
    return failed != 0;
}
