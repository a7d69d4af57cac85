/* test_genmodel.c - the synthetic model generator (tools/genmodel.c): keys,
 * shapes, weight statistics, quantisation error against the f32 file of the
 * same seed, the tokenizer contract of genmodel.h, determinism and the
 * gen-model command line. The GGUF reader itself is tested in test_gguf.c.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "tests/unit/testutil.h"
#include "tools/genmodel.h"

/* NOTE: the generator's sources are compiled in here so the tests can reach
 * its internal helpers (opts_check, f32_to_f16, ...); the tools library's
 * copies are then simply not pulled in by the linker. */
#include "tools/genmodel.c"
#include "tools/genmodel_vocab.c"
#include "tu_check.h"

/* --------------------------------------------------------- generated models */

static struct gguf_file *gen_open(struct genmodel_opts *o, const char *name, char *path, size_t cap) {
    char err[256];
    tu_tmp_file(path, cap, name);
    ck_assert_msg(genmodel_write(o, path, err, sizeof err) == 0, "%s", err);
    struct gguf_file *f;
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    return f;
}

static uint32_t u32key(const struct gguf_file *f, const char *k) {
    uint32_t v = 0;
    ck_assert_msg(gguf_get_u32(f, k, &v) == 0, "key %s", k);
    return v;
}

static void check_shape(const struct gguf_file *f, const char *name, int type, int64_t ne0, int64_t ne1) {
    const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
    ck_assert_msg(t != NULL, "missing tensor %s", name);
    ck_assert_msg(t->type == type, "%s: type %d", name, t->type);
    ck_assert_msg(t->ne[0] == ne0 && t->ne[1] == ne1, "%s: %lld x %lld", name, (long long)t->ne[0],
                  (long long)t->ne[1]);
    ck_assert_uint_eq(t->n_dims, ne1 > 1 ? 2 : 1);
}

static void check_llama(const struct gguf_file *f, const struct genmodel_opts *o) {
    struct gguf_str s;
    ck_assert_int_eq(gguf_get_str(f, "general.architecture", &s), 0);
    ck_assert(gguf_str_eq(s, "llama"));
    ck_assert_int_eq(gguf_get_str(f, "general.name", &s), 0);
    ck_assert_uint_eq(u32key(f, "llama.block_count"), (uint32_t)o->n_layers);
    ck_assert_uint_eq(u32key(f, "llama.context_length"), (uint32_t)o->n_ctx);
    ck_assert_uint_eq(u32key(f, "llama.embedding_length"), (uint32_t)o->dim);
    ck_assert_uint_eq(u32key(f, "llama.feed_forward_length"), (uint32_t)o->ffn_dim);
    ck_assert_uint_eq(u32key(f, "llama.attention.head_count"), (uint32_t)o->n_heads);
    ck_assert_uint_eq(u32key(f, "llama.attention.head_count_kv"), (uint32_t)o->n_kv_heads);
    ck_assert_uint_eq(u32key(f, "llama.rope.dimension_count"), (uint32_t)(o->dim / o->n_heads));
    ck_assert_uint_eq(u32key(f, "llama.vocab_size"), (uint32_t)o->n_vocab);
    float x;
    ck_assert_int_eq(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &x), 0);
    ck_assert(x == o->norm_eps);
    ck_assert_int_eq(gguf_get_f32(f, "llama.rope.freq_base", &x), 0);
    ck_assert(x == o->rope_theta);
    int64_t d = o->dim, hd = d / o->n_heads, kv = hd * o->n_kv_heads, ff = o->ffn_dim;
    int wt = o->wtype;
    check_shape(f, "token_embd.weight", wt, d, o->n_vocab);
    check_shape(f, "output_norm.weight", BE_F32, d, 1);
    if (o->tied)
        ck_assert(gguf_find_tensor(f, "output.weight") == NULL);
    else
        check_shape(f, "output.weight", wt, d, o->n_vocab);
    char n[64];
    for (int l = 0; l < o->n_layers; l++) {
#define T_NAME(x) (snprintf(n, sizeof n, "blk.%d.%s.weight", l, x), n)
        check_shape(f, T_NAME("attn_norm"), BE_F32, d, 1);
        check_shape(f, T_NAME("ffn_norm"), BE_F32, d, 1);
        check_shape(f, T_NAME("attn_q"), wt, d, hd * o->n_heads);
        check_shape(f, T_NAME("attn_k"), wt, d, kv);
        check_shape(f, T_NAME("attn_v"), wt, d, kv);
        check_shape(f, T_NAME("attn_output"), wt, hd * o->n_heads, d);
        check_shape(f, T_NAME("ffn_gate"), wt, d, ff);
        check_shape(f, T_NAME("ffn_up"), wt, d, ff);
        check_shape(f, T_NAME("ffn_down"), wt, ff, d);
#undef T_NAME
    }
    ck_assert_int_eq(gguf_n_tensors(f), 2 + (o->tied ? 0 : 1) + 9 * o->n_layers);
    int64_t np = 0;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        np += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    ck_assert_int_eq(np, genmodel_n_params(o));
}

static const struct gguf_kv *arr_kv(const struct gguf_file *f, const char *k, int type, uint64_t n) {
    const struct gguf_kv *kv = gguf_find(f, k);
    ck_assert_msg(kv != NULL, "missing %s", k);
    ck_assert_int_eq(kv->type, GGUF_T_ARRAY);
    ck_assert_int_eq(kv->arr_type, type);
    if (n)
        ck_assert_uint_eq(kv->arr_n, n);
    return kv;
}

static char *gm_tok_text(const struct gguf_kv *toks, uint64_t i) {
    struct gguf_str s;
    ck_assert_int_eq(gguf_arr_str(toks, i, &s), 0);
    char *c = malloc(s.len + 1);
    memcpy(c, s.s, s.len);
    c[s.len] = 0;
    return c;
}

/* id of the token equal to s[0..n) among ids < below, or -1 (linear). */
static int64_t find_tok(char **tok, int64_t below, const char *s, size_t n) {
    for (int64_t i = 0; i < below; i++)
        if (strlen(tok[i]) == n && memcmp(tok[i], s, n) == 0)
            return i;
    return -1;
}

static void check_unique(char **tok, int64_t n) {
    char **c = malloc((size_t)n * sizeof *c);
    memcpy(c, tok, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_str);
    for (int64_t i = 1; i < n; i++)
        ck_assert_msg(strcmp(c[i - 1], c[i]) != 0, "duplicate token '%s'", c[i]);
    free(c);
}

START_TEST(test_generated_spm) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    char path[512];
    struct gguf_file *f = gen_open(&o, "spm.gguf", path, sizeof path);
    check_llama(f, &o);
    struct gguf_str s;
    ck_assert_int_eq(gguf_get_str(f, "tokenizer.ggml.model", &s), 0);
    ck_assert(gguf_str_eq(s, "llama"));
    int64_t n = o.n_vocab;
    const struct gguf_kv *toks = arr_kv(f, "tokenizer.ggml.tokens", GGUF_T_STRING, (uint64_t)n);
    const struct gguf_kv *sc = arr_kv(f, "tokenizer.ggml.scores", GGUF_T_FLOAT32, (uint64_t)n);
    const struct gguf_kv *ty = arr_kv(f, "tokenizer.ggml.token_type", GGUF_T_INT32, (uint64_t)n);
    ck_assert_uint_eq(u32key(f, "tokenizer.ggml.bos_token_id"), 1);
    ck_assert_uint_eq(u32key(f, "tokenizer.ggml.eos_token_id"), 2);
    ck_assert_uint_eq(u32key(f, "tokenizer.ggml.unknown_token_id"), 0);
    int b;
    ck_assert(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b) == 0 && b == 1);
    ck_assert(gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &b) == 0 && b == 1);
    char **tok = malloc((size_t)n * sizeof *tok);
    double t_, prev = 1;
    for (int64_t i = 0; i < n; i++)
        tok[i] = gm_tok_text(toks, (uint64_t)i);
    ck_assert_str_eq(tok[0], "<unk>");
    ck_assert_str_eq(tok[1], "<s>");
    ck_assert_str_eq(tok[2], "</s>");
    ck_assert_str_eq(tok[3], "<0x00>");
    ck_assert_str_eq(tok[3 + 0x0A], "<0x0A>");
    ck_assert_str_eq(tok[258], "<0xFF>");
    static const int want_type[4] = {2, 3, 3, 6};
    for (int64_t i = 0; i < n; i++) {
        gguf_arr_num(ty, (uint64_t)i, &t_);
        ck_assert_int_eq((int)t_, i < 3 ? want_type[i] : i < 259 ? 6 : 1);
        double sv;
        gguf_arr_num(sc, (uint64_t)i, &sv);
        if (i < 259) {
            ck_assert(sv == 0.0);
        } else {
            ck_assert(sv == -(double)i && sv < prev);
            prev = sv;
        }
    }
    /* the library builds the same vocabulary */
    struct genmodel_vocab v;
    char err[256];
    ck_assert_int_eq(genmodel_vocab_build(&v, GENMODEL_TOK_SPM, (int32_t)n, err, sizeof err), 0);
    for (int64_t k = 0; k < n; k++)
        ck_assert_str_eq(v.tokens[k], tok[k]);
    ck_assert(v.merges == NULL && v.bos == 1 && v.eos == 2 && v.unk == 0);
    /* characters (single code points) come first, bytewise sorted; each learned
     * piece is the concatenation of two earlier pieces; "▁" only leads */
    int64_t i = 259;
    while (i < n && strlen(tok[i]) == utf8_len((unsigned char)tok[i][0])) {
        if (i > 259)
            ck_assert(strcmp(tok[i - 1], tok[i]) < 0);
        i++;
    }
    int64_t n_chars = i - 259, pad_from = i + v.n_learned;
    ck_assert_msg(n_chars > 40 && n_chars < 100, "%lld chars", (long long)n_chars);
    ck_assert_msg(v.n_learned > 100 && pad_from <= n, "%lld merges", (long long)v.n_learned);
    ck_assert(find_tok(tok, n, "\xe2\x96\x81", 3) >= 259);
    for (; i < pad_from; i++) {
        const char *p = tok[i];
        size_t L = strlen(p);
        ck_assert_msg(strstr(p + 1, "\xe2\x96\x81") == NULL, "piece '%s' spans words", p);
        int ok = 0;
        for (size_t k = 1; k < L && !ok; k++)
            ok = find_tok(tok, i, p, k) >= 259 && find_tok(tok, i, p + k, L - k) >= 259;
        ck_assert_msg(ok, "piece %lld '%s' is not a merge of earlier pieces", (long long)i, p);
    }
    for (; i < n; i++)
        ck_assert_msg(strncmp(tok[i], "\xe2\x96\x81w", 4) == 0, "padding %lld '%s'", (long long)i, tok[i]);
    genmodel_vocab_free(&v);
    ck_assert(find_tok(tok, n, "\xe2\x96\x81the", 6) > 0);
    check_unique(tok, n);
    for (int64_t k = 0; k < n; k++)
        free(tok[k]);
    free(tok);
    gguf_close(f);
    unlink(path);

    /* small vocab: only the most frequent characters fit, still exactly n */
    ck_assert_int_eq(genmodel_vocab_build(&v, GENMODEL_TOK_SPM, 300, err, sizeof err), 0);
    ck_assert_int_eq(v.n, 300);
    ck_assert_int_eq(v.n_learned, 0);
    ck_assert(find_tok(v.tokens, 300, "\xe2\x96\x81", 3) >= 259 && find_tok(v.tokens, 300, "e", 1) >= 259);
    ck_assert(find_tok(v.tokens, 300, "\xe2\x80\x94", 3) < 0); /* rare em dash: byte fallback */
    genmodel_vocab_free(&v);
    ck_assert_int_eq(genmodel_vocab_build(&v, GENMODEL_TOK_SPM, 258, err, sizeof err), SS_EINVAL);
    ck_assert_msg(strstr(err, "at least 259") != NULL, "%s", err);
    /* large vocab: merges run out, padding fills up */
    ck_assert_int_eq(genmodel_vocab_build(&v, GENMODEL_TOK_SPM, 16384, err, sizeof err), 0);
    ck_assert_int_eq(v.n, 16384);
    ck_assert_str_eq(v.tokens[16383], "\xe2\x96\x81w16383");
    fprintf(stderr, "test_gguf: spm corpus: %lld chars, %lld merges before pairs ran out\n",
            (long long)n_chars, (long long)v.n_learned);
    genmodel_vocab_free(&v);
}
END_TEST

/* GPT-2 byte -> code point, computed the other way round from genmodel. */
static int t_byte_cp(int b) {
    static int cp[256], init;
    if (!init) {
        int n = 0;
        for (int x = 0; x < 256; x++)
            cp[x] = -1;
        for (int x = '!'; x <= '~'; x++)
            cp[x] = x;
        for (int x = 0xA1; x <= 0xAC; x++)
            cp[x] = x;
        for (int x = 0xAE; x <= 0xFF; x++)
            cp[x] = x;
        for (int x = 0; x < 256; x++)
            if (cp[x] < 0)
                cp[x] = 256 + n++;
        init = 1;
    }
    return cp[b];
}

START_TEST(test_generated_bpe) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = "bpe";
    o.wtype = BE_Q8_0;
    o.tied = 1;
    o.n_vocab = 700;
    char path[512];
    struct gguf_file *f = gen_open(&o, "bpe.gguf", path, sizeof path);
    check_llama(f, &o);
    struct gguf_str s;
    ck_assert_int_eq(gguf_get_str(f, "tokenizer.ggml.model", &s), 0);
    ck_assert(gguf_str_eq(s, "gpt2"));
    ck_assert_int_eq(gguf_get_str(f, "tokenizer.ggml.pre", &s), 0);
    ck_assert(gguf_str_eq(s, "default"));
    ck_assert(gguf_find(f, "tokenizer.ggml.scores") == NULL);
    int64_t n = o.n_vocab;
    const struct gguf_kv *toks = arr_kv(f, "tokenizer.ggml.tokens", GGUF_T_STRING, (uint64_t)n);
    const struct gguf_kv *ty = arr_kv(f, "tokenizer.ggml.token_type", GGUF_T_INT32, (uint64_t)n);
    const struct gguf_kv *mg = arr_kv(f, "tokenizer.ggml.merges", GGUF_T_STRING, 0);
    ck_assert_uint_eq(u32key(f, "tokenizer.ggml.bos_token_id"), (uint32_t)(n - 2));
    ck_assert_uint_eq(u32key(f, "tokenizer.ggml.eos_token_id"), (uint32_t)(n - 1));
    char **tok = malloc((size_t)n * sizeof *tok);
    for (int64_t i = 0; i < n; i++) {
        tok[i] = gm_tok_text(toks, (uint64_t)i);
        double t_;
        gguf_arr_num(ty, (uint64_t)i, &t_);
        ck_assert_int_eq((int)t_, i >= n - 2 ? 3 : 1);
    }
    for (int b = 0; b < 256; b++) {
        int cp = t_byte_cp(b);
        char u[3] = {0};
        if (cp < 0x80)
            u[0] = (char)cp;
        else
            u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F));
        ck_assert_msg(strcmp(tok[b], u) == 0, "byte %d", b);
    }
    ck_assert_str_eq(tok[' '], "\xc4\xa0");  /* U+0120 'Ġ' */
    ck_assert_str_eq(tok[0xAD], "\xc5\x83"); /* U+0143 */
    ck_assert_str_eq(tok['A'], "A");
    ck_assert_str_eq(tok[n - 2], "<|begin_of_text|>");
    ck_assert_str_eq(tok[n - 1], "<|end_of_text|>");
    /* merge r creates token 256+r (no duplicate results in this corpus) */
    int64_t nm = (int64_t)mg->arr_n;
    ck_assert_msg(nm > 300 && nm <= n - 258, "%lld merges", (long long)nm);
    for (int64_t r = 0; r < nm; r++) {
        char *m = gm_tok_text(mg, (uint64_t)r), *sp = strchr(m, ' ');
        ck_assert_msg(sp && !strchr(sp + 1, ' '), "merge '%s'", m);
        *sp = 0;
        int64_t l = find_tok(tok, 256 + r, m, strlen(m)), rr = find_tok(tok, 256 + r, sp + 1, strlen(sp + 1));
        ck_assert_msg(l >= 0 && rr >= 0, "merge %lld uses unknown tokens", (long long)r);
        ck_assert_uint_eq(strlen(tok[256 + r]), strlen(m) + strlen(sp + 1));
        ck_assert(strncmp(tok[256 + r], m, strlen(m)) == 0 && strcmp(tok[256 + r] + strlen(m), sp + 1) == 0);
        free(m);
    }
    ck_assert(find_tok(tok, n, "\xc4\xa0the", 5) >= 256); /* " the" */
    check_unique(tok, n);
    for (int64_t k = 0; k < n; k++)
        free(tok[k]);
    free(tok);
    gguf_close(f);
    unlink(path);
}
END_TEST

/* Weight statistics and quantisation error vs. the f32 file of the same seed. */
static void stats(const struct gguf_file *f, const char *name, double *mean, double *sd) {
    const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
    ck_assert(t && t->type == BE_F32);
    const float *x = t->data;
    int64_t n = t->ne[0] * t->ne[1];
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++)
        s += x[i], s2 += (double)x[i] * x[i];
    *mean = s / (double)n;
    *sd = sqrt(s2 / (double)n - *mean * *mean);
}

START_TEST(test_generated_weights) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    char p32[512], p16[512], pbf[512], pq8[512], pq4[512];
    struct gguf_file *f32 = gen_open(&o, "w32.gguf", p32, sizeof p32);
    o.wtype = BE_F16;
    struct gguf_file *f16 = gen_open(&o, "w16.gguf", p16, sizeof p16);
    o.wtype = BE_BF16;
    struct gguf_file *fbf = gen_open(&o, "wbf.gguf", pbf, sizeof pbf);
    o.wtype = BE_Q8_0;
    struct gguf_file *fq8 = gen_open(&o, "wq8.gguf", pq8, sizeof pq8);
    o.wtype = BE_Q4_0;
    struct gguf_file *fq4 = gen_open(&o, "wq4.gguf", pq4, sizeof pq4);
    double m, sd;
    stats(f32, "blk.0.attn_q.weight", &m, &sd);
    ck_assert_msg(fabs(sd - 1.0 / 8) < 0.125 * 0.05 && fabs(m) < 0.01, "attn_q sd %g", sd);
    stats(f32, "token_embd.weight", &m, &sd);
    ck_assert_msg(fabs(sd - 0.25) < 0.25 * 0.03, "token_embd sd %g", sd);
    stats(f32, "blk.1.ffn_down.weight", &m, &sd);
    ck_assert_msg(fabs(sd - 0.5 / sqrt(192)) < 0.05 * 0.5 / sqrt(192), "ffn_down sd %g", sd);
    stats(f32, "blk.1.ffn_norm.weight", &m, &sd);
    ck_assert_msg(fabs(m - 1) < 0.02 && sd > 0.01 && sd < 0.04, "norm mean %g sd %g", m, sd);
    /* different tensors are different streams */
    ck_assert(memcmp(gguf_find_tensor(f32, "blk.0.attn_k.weight")->data,
                     gguf_find_tensor(f32, "blk.0.attn_v.weight")->data, 64) != 0);
    /* logits of a zero-layer model: spread ~2, not flat */
    const float *emb = gguf_find_tensor(f32, "token_embd.weight")->data;
    const float *out = gguf_find_tensor(f32, "output.weight")->data;
    double x[64], r = 0, lg[512], ls = 0, ls2 = 0;
    for (int i = 0; i < 64; i++)
        x[i] = emb[300 * 64 + i], r += x[i] * x[i];
    r = sqrt(r / 64);
    for (int v = 0; v < 512; v++) {
        lg[v] = 0;
        for (int i = 0; i < 64; i++)
            lg[v] += out[v * 64 + i] * x[i] / r;
        ls += lg[v], ls2 += lg[v] * lg[v];
    }
    double lsd = sqrt(ls2 / 512 - (ls / 512) * (ls / 512));
    ck_assert_msg(lsd > 1.4 && lsd < 2.8, "logit sd %g", lsd);

    const struct gguf_tensor_info *a = gguf_find_tensor(f32, "blk.0.ffn_up.weight");
    const struct gguf_tensor_info *h = gguf_find_tensor(f16, "blk.0.ffn_up.weight");
    const struct gguf_tensor_info *bf = gguf_find_tensor(fbf, "blk.0.ffn_up.weight");
    const struct gguf_tensor_info *q = gguf_find_tensor(fq8, "blk.0.ffn_up.weight");
    const float *xa = a->data;
    int64_t n = a->ne[0] * a->ne[1];
    double max_q_err_rel = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t hv, bv;
        memcpy(&hv, (const uint8_t *)h->data + 2 * i, 2);
        memcpy(&bv, (const uint8_t *)bf->data + 2 * i, 2);
        ck_assert_msg(fabsf(tu_half(hv) - xa[i]) <= fabsf(xa[i]) * (1.0f / 2048) + 1e-7f, "f16 %lld",
                      (long long)i);
        ck_assert_msg(fabsf(tu_bf16(bv) - xa[i]) <= fabsf(xa[i]) * (1.0f / 256), "bf16 %lld", (long long)i);
    }
    for (int64_t blk = 0; blk < n / 32; blk++) {
        const uint8_t *bp = (const uint8_t *)q->data + 34 * blk;
        uint16_t dh;
        memcpy(&dh, bp, 2);
        float d = tu_half(dh), amax = 0;
        int qmax = 0;
        for (int i = 0; i < 32; i++) {
            float v = xa[blk * 32 + i];
            amax = fmaxf(amax, fabsf(v));
            int qi = (int8_t)bp[2 + i];
            qmax = abs(qi) > qmax ? abs(qi) : qmax;
            float err = fabsf((float)qi * d - v);
            ck_assert_msg(err <= d * 0.5f + amax * 1e-3f + 1e-7f, "q8_0 block %lld elem %d err %g d %g",
                          (long long)blk, i, err, d);
            if (err / d > max_q_err_rel)
                max_q_err_rel = err / d;
        }
        ck_assert_int_eq(qmax, 127);
        ck_assert(fabsf(d - amax / 127) <= amax / 127 / 1024);
    }
    /* Q4_0: the value of largest magnitude is -8 d (code 0), the others
     * within |d|/2 (+ the fp16 rounding of d), or |d| where clamped to code
     * 15 (values of the other sign above 7.5 |d|) */
    const struct gguf_tensor_info *q4 = gguf_find_tensor(fq4, "blk.0.ffn_up.weight");
    ck_assert(q4 && q4->type == BE_Q4_0);
    for (int64_t blk = 0; blk < n / 32; blk++) {
        const uint8_t *bp = (const uint8_t *)q4->data + 18 * blk;
        uint16_t dh;
        memcpy(&dh, bp, 2);
        float d = tu_half(dh), amax = 0;
        int at = 0;
        for (int i = 0; i < 32; i++)
            if (fabsf(xa[blk * 32 + i]) > amax) amax = fabsf(xa[blk * 32 + i]), at = i;
        ck_assert(fabsf(fabsf(d) - amax / 8) <= amax / 8 / 1024);
        for (int i = 0; i < 32; i++) {
            int qi = i < 16 ? bp[2 + i] & 15 : bp[2 + i - 16] >> 4;
            float err = fabsf((float)(qi - 8) * d - xa[blk * 32 + i]);
            ck_assert_msg(err <= fabsf(d) * (qi == 15 ? 1.0f : 0.5f) + amax * 1e-3f + 1e-7f,
                          "q4_0 block %lld elem %d err %g d %g",
                          (long long)blk, i, err, d);
            if (i == at) ck_assert_int_eq(qi, 0);
        }
    }
    uint32_t ft = 99;
    ck_assert(gguf_get_u32(fq4, "general.file_type", &ft) == 0 && ft == 2);
    /* the raw fp16 codes match an independent round-to-nearest-even check */
    ck_assert(tu_half(f32_to_f16(1.0f)) == 1.0f && f32_to_f16(65520.0f) == 0x7c00 &&
              f32_to_f16(65519.0f) == 0x7bff && f32_to_f16(5.9604645e-8f) == 1 &&
              f32_to_f16(2.9802322e-8f) == 0 && f32_to_f16(-0.0f) == 0x8000 &&
              f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00 && f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);
    gguf_close(f32);
    gguf_close(f16);
    gguf_close(fbf);
    gguf_close(fq8);
    gguf_close(fq4);
    unlink(p32);
    unlink(p16);
    unlink(pbf);
    unlink(pq8);
    unlink(pq4);
}
END_TEST

static int files_equal(const char *a, const char *b) {
    size_t la, lb;
    uint8_t *x = tu_slurp(a, &la), *y = tu_slurp(b, &lb);
    int eq = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

START_TEST(test_determinism_and_cli) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = "bpe";
    o.wtype = BE_Q8_0;
    char a[512], b[512], c[512], err[256];
    tu_tmp_file(a, sizeof a, "det_a.gguf");
    tu_tmp_file(b, sizeof b, "det_b.gguf");
    tu_tmp_file(c, sizeof c, "det_c.gguf");
    ck_assert(genmodel_write(&o, a, err, sizeof err) == 0);
    ck_assert(genmodel_write(&o, b, err, sizeof err) == 0);
    ck_assert_msg(files_equal(a, b), "two writes differ");
    o.seed = 2;
    ck_assert(genmodel_write(&o, b, err, sizeof err) == 0);
    ck_assert(!files_equal(a, b));

    /* the CLI with the same options writes the same bytes */
    char *argv1[] = {"gen-model", "--out", c, "--tokenizer", "bpe", "--type=q8_0", "--seed", "1", NULL};
    ck_assert_int_eq(tool_genmodel_main(8, argv1), 0);
    ck_assert(files_equal(a, c));
    genmodel_opts_default(&o);
    ck_assert(genmodel_write(&o, a, err, sizeof err) == 0);
    char *argv2[] = {"gen-model", "--out", c, NULL};
    ck_assert_int_eq(tool_genmodel_main(3, argv2), 0);
    ck_assert(files_equal(a, c));

    /* presets and overrides */
    char *argv3[] = {"gen-model", "--size", "1M", "--type", "q8_0", "--out", c, "--tied", "--vocab", "900", NULL};
    ck_assert_int_eq(tool_genmodel_main(10, argv3), 0);
    struct gguf_file *f;
    ck_assert(gguf_open(&f, c, err, sizeof err) == 0);
    ck_assert_uint_eq(u32key(f, "llama.embedding_length"), 128);
    ck_assert_uint_eq(u32key(f, "llama.vocab_size"), 900);
    ck_assert(gguf_find_tensor(f, "output.weight") == NULL);
    gguf_close(f);
    static const char *sizes[4] = {"1M", "10M", "100M", "300M"};
    static const double nominal[4] = {1e6, 10e6, 100e6, 300e6};
    for (int i = 0; i < 4; i++) {
        genmodel_opts_default(&o);
        ck_assert_int_eq(genmodel_opts_preset(&o, sizes[i]), 0);
        int64_t np = genmodel_n_params(&o);
        fprintf(stderr, "test_gguf: preset %s: %lld parameters\n", sizes[i], (long long)np);
        ck_assert_msg(np > nominal[i] * 0.85 && np < nominal[i] * 1.15, "%s: %lld", sizes[i], (long long)np);
        o.wtype = BE_Q8_0;
        ck_assert_int_eq(opts_check(&o, err, sizeof err), 0);
    }
    ck_assert_int_eq(genmodel_opts_preset(&o, "2M"), SS_EINVAL);

    /* usage errors */
    char *bad1[] = {"gen-model", "--out", c, "--type", "q4", NULL};
    ck_assert_int_eq(tool_genmodel_main(5, bad1), 2);
    char *bad2[] = {"gen-model", "--size", "2M", "--out", c, NULL};
    ck_assert_int_eq(tool_genmodel_main(5, bad2), 2);
    char *bad3[] = {"gen-model", "--dim", "64", NULL};
    ck_assert_int_eq(tool_genmodel_main(3, bad3), 2);
    char *bad4[] = {"gen-model", "--out", c, "--vocab", "100", NULL};
    ck_assert_int_eq(tool_genmodel_main(5, bad4), 1);
    char *bad5[] = {"gen-model", "--out", c, "--heads", "3", NULL};
    ck_assert_int_eq(tool_genmodel_main(5, bad5), 1);
    char *bad6[] = {"gen-model", "--out", c, "--arch", "gpt-j", NULL};
    ck_assert_int_eq(tool_genmodel_main(5, bad6), 1);
    char *help[] = {"gen-model", "--help", NULL};
    ck_assert_int_eq(tool_genmodel_main(2, help), 0);
    genmodel_opts_default(&o);
    o.tokenizer = "wordpiece";
    ck_assert_int_eq(genmodel_write(&o, c, err, sizeof err), SS_EINVAL);
    ck_assert_msg(strstr(err, "tokenizer") != NULL, "%s", err);
    unlink(a);
    unlink(b);
    unlink(c);
}
END_TEST

static Suite *genmodel_suite(void) {
    Suite *s = suite_create("genmodel");
    const struct tu_case tests[] = {
        {"gen_spm", test_generated_spm},
        {"gen_bpe", test_generated_bpe},
        {"gen_weights", test_generated_weights},
        {"determinism_cli", test_determinism_and_cli},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 120);
    return s;
}

int main(void) {
    tu_init("test_genmodel");
    int failed = tu_check_run(genmodel_suite());
    return failed != 0;
}
