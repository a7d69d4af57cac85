/* test_tokenizer.c - Check suite for engine/tokenizer.h.
 *
 * Small vocabularies are built here with the GGUF writer and loaded from memory;
 * every expected encoding is derived by hand in the comments next to it.
 * Also: the generated models of tools/genmodel (both kinds) and, when present,
 * the real Gemma 3 270M vocab (262144 tokens), whose expected ids come from
 * tests/ref/spm_ref.py (a naive reference encoder, itself cross-checked against
 * the sentencepiece library).
 */
#include <check.h>
#include <math.h>
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
#include "tu_check.h"

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ------------------------------------------------------------------ helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Serialise w, open it from memory and load the tokenizer. Returns the
 * tok_load code; *out is the tokenizer (the file is closed again). */
static int load_writer(struct gguf_writer *w, struct tok **out, char *err, size_t err_len) {
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
static int valid_utf8(const char *s, size_t n) {
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

static int64_t enc(const struct tok *t, const char *s, int add_bos, int special, int32_t *out, int64_t cap) {
    int64_t n = tok_encode(t, s, strlen(s), add_bos, special, out, cap);
    ck_assert_msg(n >= 0 && n <= cap, "encode '%s' -> %lld", s, (long long)n);
    return n;
}

static void expect_ids(const struct tok *t, const char *s, int add_bos, int special, const int32_t *want,
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
#define EXPECT(t, s, bos, sp, ...)                                                          \
    do {                                                                                    \
        static const int32_t w_[] = { __VA_ARGS__ };                                        \
        expect_ids(t, s, bos, sp, w_, NELEM(w_));                                           \
    } while (0)

static void expect_roundtrip(const struct tok *t, const char *s, size_t len) {
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

static const char *const ROUNDTRIP[] = {
    "hello world",
    "Hello, World! It's 12345 o'clock.",
    "  leading and trailing  ",
    "multiple   spaces\tand\ttabs\n\nand\r\nnewlines\n",
    "na\xc3\xafve caf\xc3\xa9 \xc3\xbc\xc3\xb1\xc3\xae\xc3\xa7\xc3\xb8\xc3\xb0\xc3\xa9",      /* naïve café üñîçøðé */
    "\xe4\xb8\x96\xe7\x95\x8c \xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf", /* 世界 こんにちは */
    "emoji \xf0\x9f\x98\x80\xf0\x9f\x8e\x89 test \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", /* 😀🎉 👨‍👩 */
    " ",
    "x",
};
/* NOTE: SentencePiece vocabs cannot round-trip a literal U+2581 (it is their
 * space marker, decoded as ' '); byte-level BPE can. */
static const char LITERAL_MARK[] = "\xe2\x96\x81 a literal U+2581";

/* ------------------------------------------------------------------ vocab builders */

struct vb {
    const char *tok[512];
    float score[512];
    int32_t type[512];
    int n;
    const char *merges[64];
    int n_merges;
};

static int vb_add(struct vb *v, const char *text, float score, int type) {
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
static void spm_vocab(struct vb *v) {
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
static struct gguf_writer *spm_writer(const struct vb *v, int add_space_prefix) {
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

static struct tok *spm_load(int add_space_prefix) {
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
static void bpe_vocab(struct vb *v) {
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

static struct gguf_writer *bpe_writer(const struct vb *v, const char *pre) {
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

static struct tok *bpe_load(const char *pre) {
    struct vb v;
    bpe_vocab(&v);
    struct tok *t;
    char err[256];
    int rc = load_writer(bpe_writer(&v, pre), &t, err, sizeof err);
    ck_assert_msg(rc == 0, "tok_load: %s", err);
    return t;
}

/* ------------------------------------------------------------------ SPM */

START_TEST(spm_basics) {
    struct tok *t = spm_load(-1);
    ck_assert_int_eq(tok_kind(t), TOK_SPM);
    ck_assert_int_eq(tok_n_vocab(t), 290);
    ck_assert_int_eq(tok_bos(t), 1);
    ck_assert_int_eq(tok_eos(t), 2);
    ck_assert_int_eq(tok_add_bos(t), 1);          /* default for llama */
    ck_assert_int_eq(tok_add_space_prefix(t), 1); /* default for llama */
    ck_assert_int_eq(tok_find(t, "\xe2\x96\x81hello"), 269);
    ck_assert_int_eq(tok_find(t, "nope"), -1);
    /* eog: eos, eom_token_id, control "<end_of_turn>"; not the user-defined <|im_end|> */
    ck_assert(tok_is_eog(t, 2) && tok_is_eog(t, 289) && tok_is_eog(t, 279));
    ck_assert(!tok_is_eog(t, 282) && !tok_is_eog(t, 278) && !tok_is_eog(t, 1) && !tok_is_eog(t, -1) &&
              !tok_is_eog(t, 290));
    ck_assert(tok_is_control(t, 0) && tok_is_control(t, 1) && tok_is_control(t, 278));
    ck_assert(!tok_is_control(t, 280) && !tok_is_control(t, 269) && !tok_is_control(t, 3));
    char p[16];
    ck_assert_int_eq(tok_piece(t, 269, p, sizeof p), 6);
    ck_assert(memcmp(p, " hello", 6) == 0);      /* ▁ -> ' ' */
    ck_assert_int_eq(tok_piece(t, 3 + 0x41, p, sizeof p), 1);
    ck_assert_int_eq(p[0], 'A');                  /* <0x41> -> 'A' */
    ck_assert_int_eq(tok_piece(t, 1, p, sizeof p), 0); /* control renders nothing */
    ck_assert_int_eq(tok_piece(t, 280, p, sizeof p), 1);
    ck_assert_int_eq(p[0], '\n');
    ck_assert_int_eq(tok_piece(t, 269, p, 3), SS_ETOOLONG);
    ck_assert_int_eq(tok_piece(t, 290, p, sizeof p), SS_EINVAL);
    ck_assert_int_eq(tok_max_piece_len(t), 10); /* user-defined "<|im_end|>"; controls give 0 */
    tok_free(t);
}
END_TEST

START_TEST(spm_merges) {
    struct tok *t = spm_load(-1);
    /* "▁hello▁world" in score order: ll(-1) ▁h(-2) ▁w(-2.5) ▁he(-3) or(-3.2)
     * ▁wor(-3.3) ld(-3.4) ▁world(-0.6, now formable) he(stale) llo(-4.5)
     * ▁hello(-0.5) -> [▁hello ▁world] */
    EXPECT(t, "hello world", 0, 0, 269, 277);
    /* "▁hell": ll, ▁h, ▁he; ▁he+ll is no token -> [▁he ll]. If "he"(-4) had won
     * over "▁h"(-2) it would be [▁ he ll] */
    EXPECT(t, "hell", 0, 0, 266, 264);
    /* tie: "▁lll" has ll at (1,2) and (2,3), both -1: leftmost -> [▁ ll l] */
    EXPECT(t, "lll", 0, 0, 259, 264, 262);
    /* CJK: "▁世界": ▁世(-1.4) beats 世界(-1.5) -> [▁世 界] */
    EXPECT(t, "\xe4\xb8\x96\xe7\x95\x8c", 0, 0, 288, 286);
    /* byte fallback: 😀 (F0 9F 98 80) is no token -> <0xF0><0x9F><0x98><0x80> = 3+byte */
    EXPECT(t, "h\xf0\x9f\x98\x80", 0, 0, 265, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80);
    /* 'H' is not in the vocab: "▁H" -> ▁, <0x48> */
    EXPECT(t, "H", 0, 0, 259, 3 + 'H');
    /* leading space: "▁▁hello" -> [▁ ▁hello] */
    EXPECT(t, " hello", 0, 0, 259, 269);
    /* add_bos */
    EXPECT(t, "hello", 1, 0, 1, 269);
    EXPECT(t, "", 1, 0, 1);
    int32_t x[4];
    ck_assert_int_eq(tok_encode(t, "", 0, 0, 0, x, 4), 0);
    /* invalid UTF-8: each bad byte is a symbol of its own -> bytes */
    EXPECT(t, "a\xff", 0, 0, 259, 284, 3 + 0xFF);
    /* cap smaller than the result: returns the full count, writes cap ids */
    int32_t two[2] = { -7, -7 };
    ck_assert_int_eq(tok_encode(t, "hello world!", 12, 1, 0, two, 1), 4);
    ck_assert_int_eq(two[0], 1);
    ck_assert_int_eq(two[1], -7);
    ck_assert_int_eq(tok_encode(t, "hello", 5, 0, 0, NULL, 0), 1);
    ck_assert_int_eq(tok_encode(t, "hello", 5, 0, 0, NULL, 4), SS_EINVAL);
    /* tok_encode_max: at or under the limit the count is exact, over it
     * max + 1 with the same first ids, and the work stops early */
    ck_assert_int_eq(tok_encode_max(t, "hello world!", 12, 1, 0, NULL, 0, 4), 4);
    ck_assert_int_eq(tok_encode_max(t, "hello world!", 12, 1, 0, NULL, 0, 0), 4);
    int32_t full[8], capped[8];
    ck_assert_int_eq(tok_encode(t, "hello world!", 12, 1, 0, full, 8), 4);
    ck_assert_int_eq(tok_encode_max(t, "hello world!", 12, 1, 0, capped, 8, 2), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(capped[i], full[i]);
    size_t big_len = (size_t)64 << 20; /* 64 MiB of words: stops after 11 ids */
    char *big = malloc(big_len);
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i < big_len; i++)
        big[i] = "hello world "[i % 12];
    ck_assert_int_eq(tok_encode_max(t, big, big_len, 0, 0, NULL, 0, 10), 11);
    free(big);
    tok_free(t);
}
END_TEST

START_TEST(spm_no_prefix) {
    struct tok *t = spm_load(0);
    ck_assert_int_eq(tok_add_space_prefix(t), 0);
    /* "hello": ll(-1), he(-4), llo(-4.5); "hello" itself is no token -> [he llo] */
    EXPECT(t, "hello", 0, 0, 267, 268);
    /* explicit space is still the marker: "▁hello" */
    EXPECT(t, " hello", 0, 0, 269);
    char *d = tok_decode(t, (const int32_t[]){ 269 }, 1, 1);
    ck_assert_str_eq(d, " hello"); /* no stripping without add_space_prefix */
    free(d);
    tok_free(t);
}
END_TEST

START_TEST(spm_special) {
    struct tok *t = spm_load(-1);
    /* parse_special: control tokens become ids; the marker is owed again after
     * each control token: "<start_of_turn>" "▁hello" "<end_of_turn>" */
    EXPECT(t, "<start_of_turn>hello<end_of_turn>", 0, 1, 278, 269, 279);
    EXPECT(t, "a<end_of_turn>", 0, 1, 259, 284, 279);
    /* without parse_special the control text is plain text (bytes here) */
    int32_t ids[64];
    int64_t n = enc(t, "<end_of_turn>", 0, 0, ids, 64);
    ck_assert_int_eq(ids[0], 259);
    ck_assert_int_eq(ids[1], 3 + '<');
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], 279);
    char *d = tok_decode(t, ids, n, 1);
    ck_assert_str_eq(d, "<end_of_turn>");
    free(d);
    /* user-defined tokens are always cut out, longest first, and do not owe a
     * new marker: "▁hello" "\n\n" "\n" "world"(w o r l d: or, ld -> w or ld) */
    EXPECT(t, "hello\n\n\nworld", 0, 0, 269, 281, 280, 270, 274, 276);
    /* a text starting with a user-defined token gets a lone marker first */
    EXPECT(t, "\nhello", 0, 0, 259, 280, 267, 268);
    /* <|im_end|> is user-defined here: matched with and without parse_special */
    EXPECT(t, "<|im_end|>", 0, 0, 259, 282);
    /* decode with and without special texts */
    int32_t seq[] = { 1, 278, 269, 279 };
    d = tok_decode(t, seq, 4, 0);
    ck_assert_str_eq(d, "<s><start_of_turn> hello<end_of_turn>");
    free(d);
    d = tok_decode(t, seq, 4, 1);
    ck_assert_str_eq(d, "hello"); /* first text piece loses its marker space */
    free(d);
    tok_free(t);
}
END_TEST

/* A token with the marker inside ("o▁w") can merge across a word boundary:
 * "▁hello▁world": ll(-1) ▁h(-2) ▁w(-2.5), then o+▁w = "o▁w"(-0.2) beats all,
 * ▁he(-3), or(-3.2), ld(-3.4); ▁wor can no longer form ->
 * [▁he ll o▁w or ld]. Checked both with the word-by-word fast path (one such
 * token) and with whole-text merging (more than TOK_SPM_MAX_CROSS of them). */
START_TEST(spm_cross_marker) {
    static char extra[80][16];
    for (int many = 0; many < 2; many++) {
        struct vb v;
        spm_vocab(&v);
        int ow = vb_add(&v, "o\xe2\x96\x81w", -0.2f, TOK_T_NORMAL);
        for (int i = 0; many && i < 80; i++) {
            snprintf(extra[i], sizeof extra[i], "q\xe2\x96\x81%d", i);
            vb_add(&v, extra[i], -50, TOK_T_NORMAL);
        }
        struct tok *t;
        char err[256];
        ck_assert_msg(load_writer(spm_writer(&v, 1), &t, err, sizeof err) == 0, "%s", err);
        int32_t want[] = { 266, 264, ow, 274, 276 };
        expect_ids(t, "hello world", 0, 0, want, 5);
        EXPECT(t, "hell", 0, 0, 266, 264);
        expect_roundtrip(t, "hello world hello  world", 24);
        tok_free(t);
    }
}
END_TEST

START_TEST(spm_roundtrip) {
    struct tok *t = spm_load(-1);
    for (int i = 0; i < NELEM(ROUNDTRIP); i++)
        expect_roundtrip(t, ROUNDTRIP[i], strlen(ROUNDTRIP[i]));
    expect_roundtrip(t, "", 0);
    tok_free(t);
    t = spm_load(0);
    for (int i = 0; i < NELEM(ROUNDTRIP); i++)
        expect_roundtrip(t, ROUNDTRIP[i], strlen(ROUNDTRIP[i]));
    tok_free(t);
}
END_TEST

/* ------------------------------------------------------------------ streaming */

START_TEST(stream_utf8) {
    struct tok *t = spm_load(-1);
    struct tok_stream st;
    char out[64];
    /* "h😀" = [▁h, <0xF0>, <0x9F>, <0x98>, <0x80>] */
    tok_stream_init(&st, 1);
    ck_assert_int_eq(tok_stream_push(t, &st, 265, out, sizeof out), 1); /* " h" stripped */
    ck_assert_int_eq(out[0], 'h');
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xF0, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x9F, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x98, out, sizeof out), 0);
    /* a too small buffer does not lose the held bytes */
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x80, out, 2), SS_ETOOLONG);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x80, out, sizeof out), 4);
    ck_assert(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
    ck_assert_int_eq(tok_stream_flush(&st, out, sizeof out), 0);
    /* control tokens add nothing and do not count as the first piece */
    tok_stream_init(&st, 1);
    ck_assert_int_eq(tok_stream_push(t, &st, 1, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 269, out, sizeof out), 5);
    ck_assert_int_eq(tok_stream_push(t, &st, 277, out, sizeof out), 6);
    ck_assert(memcmp(out, " world", 6) == 0);
    /* without strip_leading the space stays */
    tok_stream_init(&st, 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 269, out, sizeof out), 6);
    /* cut short: flush gives U+FFFD */
    tok_stream_init(&st, 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xF0, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x9F, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_flush(&st, out, sizeof out), 3);
    ck_assert(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    ck_assert_int_eq(tok_stream_flush(&st, out, sizeof out), 0);
    /* interrupted: <0xF0> then "h" -> U+FFFD "h"; a stray continuation byte -> U+FFFD */
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xF0, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 260, out, sizeof out), 4);
    ck_assert(memcmp(out, "\xef\xbf\xbdh", 4) == 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0x80, out, sizeof out), 3);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xC0, out, sizeof out), 3); /* never valid */
    /* overlong / surrogate starts are refused at the second byte */
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xED, out, sizeof out), 0);
    ck_assert_int_eq(tok_stream_push(t, &st, 3 + 0xA0, out, sizeof out), 6);
    ck_assert_int_eq(tok_stream_push(t, &st, 290, out, sizeof out), SS_EINVAL);
    /* whole-sequence decode sanitises the same way */
    char *d = tok_decode(t, (const int32_t[]){ 3 + 0xF0, 3 + 0x9F, 260 }, 3, 1);
    ck_assert_str_eq(d, "\xef\xbf\xbdh");
    free(d);
    tok_free(t);
}
END_TEST

/* every byte split of an emoji over byte tokens, pushed one at a time */
START_TEST(stream_never_breaks_utf8) {
    struct tok *t = spm_load(0);
    const char *text = "a\xf0\x9f\x8e\x89\xe4\xb8\x96\xf0\x9f\x98\x80 \xc3\xa9!";
    int32_t ids[64];
    int64_t n = enc(t, text, 0, 0, ids, 64);
    struct tok_stream st;
    tok_stream_init(&st, 0);
    char acc[128], out[64];
    size_t an = 0;
    for (int64_t i = 0; i < n; i++) {
        int k = tok_stream_push(t, &st, ids[i], out, sizeof out);
        ck_assert_int_ge(k, 0);
        ck_assert(valid_utf8(out, (size_t)k));
        memcpy(acc + an, out, (size_t)k);
        an += (size_t)k;
    }
    ck_assert_int_eq(tok_stream_flush(&st, out, sizeof out), 0);
    ck_assert(an == strlen(text) && memcmp(acc, text, an) == 0);
    tok_free(t);
}
END_TEST

/* ------------------------------------------------------------------ BPE */

START_TEST(bpe_basics) {
    struct tok *t = bpe_load(NULL);
    ck_assert_int_eq(tok_kind(t), TOK_BPE);
    ck_assert_int_eq(tok_n_vocab(t), 272);
    ck_assert_int_eq(tok_add_bos(t), 0);          /* default for gpt2 */
    ck_assert_int_eq(tok_add_space_prefix(t), 0);
    ck_assert(tok_is_eog(t, 268) && tok_is_eog(t, 270) && !tok_is_eog(t, 269) && !tok_is_eog(t, 271));
    char p[8];
    ck_assert_int_eq(tok_piece(t, 32, p, sizeof p), 1); /* "Ġ" -> ' ' */
    ck_assert_int_eq(p[0], ' ');
    ck_assert_int_eq(tok_piece(t, 258, p, sizeof p), 4);
    ck_assert(memcmp(p, " the", 4) == 0);
    ck_assert_int_eq(tok_piece(t, 0xFF, p, sizeof p), 1); /* "ÿ" -> byte 0xFF */
    ck_assert_int_eq((unsigned char)p[0], 0xFF);
    ck_assert_int_eq(tok_piece(t, 10, p, sizeof p), 1); /* "Ċ" -> '\n' */
    ck_assert_int_eq(p[0], '\n');
    tok_free(t);
}
END_TEST

START_TEST(bpe_merges) {
    struct tok *t = bpe_load("gpt2");
    /* "the": t h e -> he(r1) -> [t he]; "t he" is no merge */
    EXPECT(t, "the", 0, 0, 't', 257);
    /* " the": Ġt(r0) first, then he(r1), then Ġt+he(r2) -> [Ġthe] */
    EXPECT(t, " the", 0, 0, 258);
    /* "abc": bc(r3) beats ab(r4) although ab is further left -> [a bc] */
    EXPECT(t, "abc", 0, 0, 'a', 259);
    /* "hello": he(r1) before ll(r5); "he ll" is no merge -> [he ll o] */
    EXPECT(t, "hello", 0, 0, 257, 261, 'o');
    /* "ell": ll(r5) then e+ll(r6) -> [ell] */
    EXPECT(t, "ell", 0, 0, 262);
    /* "it's": GPT-2 splits "it" "'s" -> [i t 's] */
    EXPECT(t, "it's", 0, 0, 'i', 't', 267);
    /* add_bos when asked */
    EXPECT(t, "the", 1, 0, 268, 't', 257);
    /* invalid UTF-8 is kept byte for byte: ÿ þ then "abc" */
    EXPECT(t, "\xff\xfe" "abc", 0, 0, 0xFF, 0xFE, 'a', 259);
    tok_free(t);
}
END_TEST

START_TEST(bpe_special) {
    struct tok *t = bpe_load(NULL);
    /* "<|im_start|>" "user" "\n" "hi" "<|im_end|>"; no merges apply to user/hi */
    EXPECT(t, "<|im_start|>user\nhi<|im_end|>", 0, 1, 269, 'u', 's', 'e', 'r', '\n', 'h', 'i', 270);
    int32_t ids[64];
    int64_t n = enc(t, "<|im_end|>", 0, 0, ids, 64);
    ck_assert_int_gt(n, 1);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], 270);
    /* user-defined: always */
    EXPECT(t, "a<tool>b", 0, 0, 'a', 271, 'b');
    int32_t seq[] = { 269, 'h', 'i', 271, 270 };
    char *d = tok_decode(t, seq, 5, 0);
    ck_assert_str_eq(d, "<|im_start|>hi<tool><|im_end|>");
    free(d);
    d = tok_decode(t, seq, 5, 1);
    ck_assert_str_eq(d, "hi<tool>");
    free(d);
    tok_free(t);
}
END_TEST

static void expect_split(const struct tok *t, const char *s, const char *const *want, int nwant) {
    size_t ends[64];
    int64_t n = tok_bpe_split(t, s, strlen(s), ends, 64);
    char got[1024] = "";
    size_t start = 0;
    for (int64_t i = 0; i < n && i < 64; i++) {
        snprintf(got + strlen(got), sizeof got - strlen(got), "[%.*s]", (int)(ends[i] - start), s + start);
        start = ends[i];
    }
    int ok = n == nwant;
    start = 0;
    for (int i = 0; ok && i < nwant; i++) {
        ok = ends[i] - start == strlen(want[i]) && memcmp(s + start, want[i], strlen(want[i])) == 0;
        start = ends[i];
    }
    ck_assert_msg(ok, "split of '%s': got %s", s, got);
}
#define SPLIT(t, s, ...)                                                                    \
    do {                                                                                    \
        static const char *const w_[] = { __VA_ARGS__ };                                    \
        expect_split(t, s, w_, NELEM(w_));                                                  \
    } while (0)

START_TEST(bpe_pretokenizers) {
    static const char *S = "Hello world's 12345 abc!!  x\n\ny";
    /* GPT-2: " ?\p{N}+" keeps the digits together with their space; "\s+(?!\S)"
     * leaves the last space to the next word; newlines one by one before a letter */
    struct tok *t = bpe_load("default");
    SPLIT(t, S, "Hello", " world", "'s", " 12345", " abc", "!!", " ", " x", "\n", "\n", "y");
    SPLIT(t, "WE'RE $5", "WE", "'", "RE", " $", "5"); /* case-sensitive contractions */
    tok_free(t);
    /* Llama 3: digits in runs of at most 3 without the space, newline runs
     * together, case-insensitive contractions, one non-letter glued to a word */
    t = bpe_load("llama3");
    SPLIT(t, S, "Hello", " world", "'s", " ", "123", "45", " abc", "!!", " ", " x", "\n\n", "y");
    SPLIT(t, "WE'RE $hello", "WE", "'RE", " $", "hello");
    SPLIT(t, "$hello", "$hello");
    /* ignore_merges: a pre-token that is a token is taken whole ("hello" = 264,
     * which merging alone cannot reach: [he ll o] with gpt2) */
    EXPECT(t, "hello", 0, 0, 264);
    EXPECT(t, "hellos", 0, 0, 257, 261, 'o', 's');
    tok_free(t);
    t = bpe_load("llama-bpe");
    EXPECT(t, "hello", 0, 0, 264);
    tok_free(t);
    /* Qwen2: single digits */
    t = bpe_load("qwen2");
    SPLIT(t, S, "Hello", " world", "'s", " ", "1", "2", "3", "4", "5", " abc", "!!", " ", " x", "\n\n", "y");
    EXPECT(t, "hello", 0, 0, 257, 261, 'o');
    tok_free(t);
    /* unknown pre: GPT-2 pattern (with a warning on stderr) */
    t = bpe_load("some-future-pre");
    SPLIT(t, S, "Hello", " world", "'s", " 12345", " abc", "!!", " ", " x", "\n", "\n", "y");
    /* Unicode classes: letters of any script, invalid bytes as their own piece */
    SPLIT(t, "caf\xc3\xa9 \xe4\xb8\x96\xe7\x95\x8c\xff!", "caf\xc3\xa9", " \xe4\xb8\x96\xe7\x95\x8c", "\xff", "!");
    tok_free(t);
}
END_TEST

START_TEST(bpe_roundtrip) {
    static const char *const pres[] = { "default", "llama3", "qwen2" };
    for (int k = 0; k < NELEM(pres); k++) {
        struct tok *t = bpe_load(pres[k]);
        for (int i = 0; i < NELEM(ROUNDTRIP); i++)
            expect_roundtrip(t, ROUNDTRIP[i], strlen(ROUNDTRIP[i]));
        expect_roundtrip(t, LITERAL_MARK, strlen(LITERAL_MARK));
        tok_free(t);
    }
}
END_TEST

/* pseudo-random byte strings: never a crash, always valid UTF-8 out; valid
 * UTF-8 in -> identical text out */
START_TEST(fuzz_roundtrip) {
    struct tok *ts[2] = { spm_load(-1), bpe_load("llama3") };
    uint64_t x = 88172645463325252ull;
    static const char *const atoms[] = { "a", "h", "e", "l", " ", "  ", "\n", "\t", "\xc3\xa9",
                                         "\xe4\xb8\x96", "\xf0\x9f\x98\x80", "<s>", "<|im_end|>",
                                         "\xe2\x96\x81", "1", "'s", "\xff", "\x80", "\xf0\x9f" };
    char buf[512];
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 0;
        int len = 1 + iter % 40, valid = 1, has_mark = 0;
        for (int j = 0; j < len; j++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            int a = (int)(x % NELEM(atoms));
            if (a >= NELEM(atoms) - 3)
                valid = 0;
            if (a == 13)
                has_mark = 1; /* U+2581: SPM decodes it as ' ' */
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s", atoms[a]);
        }
        for (int k = 0; k < 2; k++) {
            int32_t ids[1024];
            int64_t m = tok_encode(ts[k], buf, n, 1, iter & 1, ids, 1024);
            ck_assert(m >= 0 && m <= 1024);
            for (int64_t i = 0; i < m; i++)
                ck_assert(ids[i] >= 0 && ids[i] < tok_n_vocab(ts[k]));
            char *d = tok_decode(ts[k], ids, m, 0);
            ck_assert_ptr_nonnull(d);
            ck_assert(valid_utf8(d, strlen(d)));
            free(d);
            if (valid && !(k == 0 && has_mark))
                expect_roundtrip(ts[k], buf, n);
        }
    }
    tok_free(ts[0]);
    tok_free(ts[1]);
}
END_TEST

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
    Suite *s = suite_create("tokenizer");
    const struct tu_case tests[] = {
        { "spm_basics", spm_basics },   { "spm_merges", spm_merges },
        { "spm_no_prefix", spm_no_prefix }, { "spm_special", spm_special },
        { "spm_cross_marker", spm_cross_marker }, { "spm_roundtrip", spm_roundtrip }, { "stream_utf8", stream_utf8 },
        { "stream_never_breaks_utf8", stream_never_breaks_utf8 },
        { "bpe_basics", bpe_basics },   { "bpe_merges", bpe_merges },
        { "bpe_special", bpe_special }, { "bpe_pretokenizers", bpe_pretokenizers },
        { "bpe_roundtrip", bpe_roundtrip }, { "fuzz_roundtrip", fuzz_roundtrip },
        { "malformed", malformed },     { "genmodel_spm", genmodel_spm },
        { "genmodel_bpe", genmodel_bpe }, { "gemma3_real", gemma3_real },
        { "speed", speed },
    };
    tu_check_add(s, tests, TU_NCASES(tests), 120);
    int failed = tu_check_run(s);
    return failed != 0;
}
