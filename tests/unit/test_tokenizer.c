/* test_tokenizer.c - Check suite for engine/tokenizer.h.
 *
 * Small vocabularies (toktest.c) are built with the GGUF writer and loaded
 * from memory; every expected encoding is derived by hand in the comments next
 * to it. Files (malformed metadata, generated models, Gemma 3's vocabulary) are
 * test_tokenizer_files.c's.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tok_internal.h"
#include "engine/tokenizer.h"
#include "toktest.h"
#include "tu_check.h"

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

int main(void) {
    Suite *s = suite_create("tokenizer");
    const struct tu_case tests[] = {
        {"spm_basics", spm_basics},
        {"spm_merges", spm_merges},
        {"spm_no_prefix", spm_no_prefix},
        {"spm_special", spm_special},
        {"spm_cross_marker", spm_cross_marker},
        {"spm_roundtrip", spm_roundtrip},
        {"stream_utf8", stream_utf8},
        {"stream_never_breaks_utf8", stream_never_breaks_utf8},
        {"bpe_basics", bpe_basics},
        {"bpe_merges", bpe_merges},
        {"bpe_special", bpe_special},
        {"bpe_pretokenizers", bpe_pretokenizers},
        {"bpe_roundtrip", bpe_roundtrip},
        {"fuzz_roundtrip", fuzz_roundtrip},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 120);
    int failed = tu_check_run(s);
    return failed != 0;
}
