/* toktest.c - the tokenizer suites' shared helpers (toktest.h). */
#include "toktest.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/gguf.h"
#include "engine/tok_internal.h"

/* ------------------------------------------------------------------ helpers */

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Serialise w, open it from memory and load the tokenizer. Returns the
 * tok_load code; *out is the tokenizer (the file is closed again). */
int load_writer(struct gguf_writer *w, struct tok **out, char *err, size_t err_len) {
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    err[0] = 0;
    int rc = gguf_writer_to_mem(w, &buf, &len, err, err_len);
    gguf_writer_free(w);
    ck_assert_msg(rc == 0, "writer: %s", err);
    struct gguf_file *f = NULL;
    rc = gguf_open_mem(&f, buf, len, err, err_len);
    ck_assert_msg(rc == 0, "open: %s", err);
    rc = tok_load(out, f, err, err_len);
    gguf_close(f);
    free(buf); /* the tokenizer must own copies of everything */
    return rc;
}

/* Independent UTF-8 validator (does not use the code under test). */
int valid_utf8(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        unsigned cp, k;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
        else return 0;
        for (unsigned j = 1; j <= k; j++) {
            if (i + j >= n || (p[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

int64_t enc(const struct tok *t, const char *s, int add_bos, int special, int32_t *out, int64_t cap) {
    int64_t n = tok_encode(t, s, strlen(s), add_bos, special, out, cap);
    ck_assert_msg(n >= 0 && n <= cap, "encode '%s' -> %lld", s, (long long)n);
    return n;
}

void expect_ids(const struct tok *t, const char *s, int add_bos, int special, const int32_t *want,
                       int nwant) {
    int32_t got[256];
    int64_t n = enc(t, s, add_bos, special, got, 256);
    char gs[2048] = "", ws[2048] = "";
    for (int64_t i = 0; i < n; i++)
        snprintf(gs + strlen(gs), sizeof gs - strlen(gs), "%d ", got[i]);
    for (int i = 0; i < nwant; i++)
        snprintf(ws + strlen(ws), sizeof ws - strlen(ws), "%d ", want[i]);
    ck_assert_msg(n == nwant && memcmp(got, want, (size_t)nwant * sizeof *want) == 0,
                  "encode(\"%s\"): got [%s] want [%s]", s, gs, ws);
}

void expect_roundtrip(const struct tok *t, const char *s, size_t len) {
    int64_t n = tok_encode(t, s, len, 1, 0, NULL, 0);
    ck_assert_int_ge(n, 0);
    int32_t *ids = malloc((size_t)(n + 1) * sizeof *ids);
    ck_assert_int_eq(tok_encode(t, s, len, 1, 0, ids, n), n);
    char *d = tok_decode(t, ids, n, 1);
    ck_assert_ptr_nonnull(d);
    ck_assert_msg(strlen(d) == len && memcmp(d, s, len) == 0, "round trip: '%s' -> '%s'", s, d);
    /* the streaming decoder gives the same text, in valid pieces */
    struct tok_stream st;
    tok_stream_init(&st, tok_add_space_prefix(t));
    char *acc = malloc(4 * len + 64), chunk[4096];
    size_t an = 0;
    for (int64_t i = 0; i < n; i++) {
        int k = tok_stream_push(t, &st, ids[i], chunk, sizeof chunk);
        ck_assert_int_ge(k, 0);
        ck_assert_msg(valid_utf8(chunk, (size_t)k), "stream chunk is not valid UTF-8");
        memcpy(acc + an, chunk, (size_t)k);
        an += (size_t)k;
    }
    int k = tok_stream_flush(&st, chunk, sizeof chunk);
    ck_assert_int_eq(k, 0);
    ck_assert_msg(an == len && memcmp(acc, s, len) == 0, "stream round trip of '%s'", s);
    free(acc);
    free(d);
    free(ids);
}

/* ------------------------------------------------------------------ vocab builders */


int vb_add(struct vb *v, const char *text, float score, int type) {
    v->tok[v->n] = text;
    v->score[v->n] = score;
    v->type[v->n] = type;
    return v->n++;
}

static char byte_names[256][8];

/* The SPM test vocab (ids in the comments of the tests below):
 *   0 <unk> (unknown)  1 <s> (control)  2 </s> (control)  3+b "<0xBB>" (byte)
 *   259 ▁ -5   260 h -6   261 e -7   262 l -8   263 o -9   264 ll -1   265 ▁h -2
 *   266 ▁he -3 267 he -4  268 llo -4.5 269 ▁hello -0.5 270 w -9.1 271 r -9.2
 *   272 d -9.3 273 ▁w -2.5 274 or -3.2 275 ▁wor -3.3 276 ld -3.4 277 ▁world -0.6
 *   278 <start_of_turn> (control)  279 <end_of_turn> (control)  280 "\n" (user)
 *   281 "\n\n" (user)  282 <|im_end|> (user)  283 . -9.4  284 a -9.5  285 世 -9.6
 *   286 界 -9.7  287 世界 -1.5  288 ▁世 -1.4  289 <eom> (control)
 */
void spm_vocab(struct vb *v) {
    memset(v, 0, sizeof *v);
    vb_add(v, "<unk>", 0, TOK_T_UNKNOWN);
    vb_add(v, "<s>", 0, TOK_T_CONTROL);
    vb_add(v, "</s>", 0, TOK_T_CONTROL);
    for (int b = 0; b < 256; b++) {
        snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
        vb_add(v, byte_names[b], 0, TOK_T_BYTE);
    }
    static const struct { const char *t; float s; int ty; } rest[] = {
        { "\xe2\x96\x81", -5, 1 }, { "h", -6, 1 }, { "e", -7, 1 }, { "l", -8, 1 }, { "o", -9, 1 },
        { "ll", -1, 1 }, { "\xe2\x96\x81h", -2, 1 }, { "\xe2\x96\x81he", -3, 1 }, { "he", -4, 1 },
        { "llo", -4.5f, 1 }, { "\xe2\x96\x81hello", -0.5f, 1 }, { "w", -9.1f, 1 }, { "r", -9.2f, 1 },
        { "d", -9.3f, 1 }, { "\xe2\x96\x81w", -2.5f, 1 }, { "or", -3.2f, 1 }, { "\xe2\x96\x81wor", -3.3f, 1 },
        { "ld", -3.4f, 1 }, { "\xe2\x96\x81world", -0.6f, 1 }, { "<start_of_turn>", 0, 3 },
        { "<end_of_turn>", 0, 3 }, { "\n", 0, 4 }, { "\n\n", 0, 4 }, { "<|im_end|>", 0, 4 },
        { ".", -9.4f, 1 }, { "a", -9.5f, 1 }, { "\xe4\xb8\x96", -9.6f, 1 }, { "\xe7\x95\x8c", -9.7f, 1 },
        { "\xe4\xb8\x96\xe7\x95\x8c", -1.5f, 1 }, { "\xe2\x96\x81\xe4\xb8\x96", -1.4f, 1 }, { "<eom>", 0, 3 },
    };
    for (int i = 0; i < NELEM(rest); i++)
        vb_add(v, rest[i].t, rest[i].s, rest[i].ty);
}

/* Writer with the usual SPM keys; add_space_prefix < 0 = key absent. */
struct gguf_writer *spm_writer(const struct vb *v, int add_space_prefix) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_w_str(w, "general.architecture", "llama");
    gguf_w_str(w, "tokenizer.ggml.model", "llama");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", v->tok, (uint64_t)v->n);
    gguf_w_arr_f32(w, "tokenizer.ggml.scores", v->score, (uint64_t)v->n);
    gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v->type, (uint64_t)v->n);
    gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_w_u32(w, "tokenizer.ggml.eom_token_id", 289);
    if (add_space_prefix >= 0)
        gguf_w_bool(w, "tokenizer.ggml.add_space_prefix", add_space_prefix);
    return w;
}

struct tok *spm_load(int add_space_prefix) {
    struct vb v;
    spm_vocab(&v);
    struct tok *t;
    char err[256];
    int rc = load_writer(spm_writer(&v, add_space_prefix), &t, err, sizeof err);
    ck_assert_msg(rc == 0, "tok_load: %s", err);
    return t;
}

/* GPT-2 byte -> code point map, written out independently of tok_bpe.c. */
static void bpe_byte_text(int b, char out[3]) {
    static int cp[256];
    int k = 256;
    for (int i = 0; i < 256; i++)
        cp[i] = ((i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE)) ? i : k++;
    int c = cp[b];
    if (c < 0x80) {
        out[0] = (char)c;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        out[2] = 0;
    }
}

/* The BPE test vocab: ids 0..255 the mapped bytes (so id == byte: ' ' is 32,
 * shown as "Ġ"), then one token per merge in rank order:
 *   r0 "Ġ t"->256 Ġt   r1 "h e"->257 he   r2 "Ġt he"->258 Ġthe   r3 "b c"->259 bc
 *   r4 "a b"->260 ab   r5 "l l"->261 ll   r6 "e ll"->262 ell     r7 "h ell"->263 hell
 *   r8 "hell o"->264 hello  r9 "Ġ hello"->265 Ġhello  r10 "1 2"->266 12  r11 "' s"->267 's
 * then 268 <|endoftext|> (control, bos/eos) 269 <|im_start|> (control)
 * 270 <|im_end|> (control) 271 <tool> (user-defined). */
static char bpe_bytes[256][3];
void bpe_vocab(struct vb *v) {
    memset(v, 0, sizeof *v);
    for (int b = 0; b < 256; b++) {
        bpe_byte_text(b, bpe_bytes[b]);
        vb_add(v, bpe_bytes[b], 0, TOK_T_NORMAL);
    }
    static const char *const m[][2] = {
        { "\xc4\xa0 t", "\xc4\xa0t" }, { "h e", "he" }, { "\xc4\xa0t he", "\xc4\xa0the" }, { "b c", "bc" },
        { "a b", "ab" }, { "l l", "ll" }, { "e ll", "ell" }, { "h ell", "hell" }, { "hell o", "hello" },
        { "\xc4\xa0 hello", "\xc4\xa0hello" }, { "1 2", "12" }, { "' s", "'s" },
    };
    for (int i = 0; i < NELEM(m); i++) {
        v->merges[v->n_merges++] = m[i][0];
        vb_add(v, m[i][1], 0, TOK_T_NORMAL);
    }
    vb_add(v, "<|endoftext|>", 0, TOK_T_CONTROL);
    vb_add(v, "<|im_start|>", 0, TOK_T_CONTROL);
    vb_add(v, "<|im_end|>", 0, TOK_T_CONTROL);
    vb_add(v, "<tool>", 0, TOK_T_USER);
}

struct gguf_writer *bpe_writer(const struct vb *v, const char *pre) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
    if (pre)
        gguf_w_str(w, "tokenizer.ggml.pre", pre);
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", v->tok, (uint64_t)v->n);
    gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v->type, (uint64_t)v->n);
    gguf_w_arr_str(w, "tokenizer.ggml.merges", v->merges, (uint64_t)v->n_merges);
    gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 268);
    gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 268);
    return w;
}

struct tok *bpe_load(const char *pre) {
    struct vb v;
    bpe_vocab(&v);
    struct tok *t;
    char err[256];
    int rc = load_writer(bpe_writer(&v, pre), &t, err, sizeof err);
    ck_assert_msg(rc == 0, "tok_load: %s", err);
    return t;
}
