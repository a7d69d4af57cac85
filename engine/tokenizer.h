/* tokenizer.h - tokenizers built from GGUF metadata (tokenizer.ggml.*).
 *
 * Kinds: "llama" (SentencePiece-style: scores, <0xNN> byte fallback, U+2581 as the
 * space marker) and "gpt2" (byte-level BPE: merges, a PCRE2 pre-tokenizer chosen
 * by tokenizer.ggml.pre). A tokenizer is immutable after tok_load and may be used
 * from any thread concurrently.
 */
#ifndef SS_TOKENIZER_H
#define SS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tok;

enum tok_kind { TOK_SPM = 1, TOK_BPE = 2 };

/* Returns 0 or a negative SS_E* code with a message in err. */
int tok_load(struct tok **out, const struct gguf_file *f, char *err, size_t err_len);
void tok_free(struct tok *t);

int tok_kind(const struct tok *t);
int32_t tok_n_vocab(const struct tok *t);
int32_t tok_bos(const struct tok *t);   /* -1 if none */
int32_t tok_eos(const struct tok *t);   /* -1 if none */
int tok_add_bos(const struct tok *t);   /* tokenizer.ggml.add_bos_token (default per kind) */
/* 1 if id is an end-of-generation token (eos, eot, <end_of_turn>, <|eot_id|>, ...) */
int tok_is_eog(const struct tok *t, int32_t id);
/* 1 if id is a control/special token (never rendered as text by tok_decode). */
int tok_is_control(const struct tok *t, int32_t id);
/* id of a token whose text is exactly s, or -1 */
int32_t tok_find(const struct tok *t, const char *s);

/* Encode UTF-8 text (len bytes, need not be NUL-terminated). add_bos prepends BOS
 * when the vocab has one. parse_special: 1 to recognise special-token texts such
 * as "<start_of_turn>" in the input (chat templates), 0 to treat them as text.
 * User-defined tokens (token_type 4, e.g. Gemma's "\n" runs) are always cut out
 * of the text, as SentencePiece and llama.cpp do; special texts are matched
 * leftmost-longest. SPM with add_space_prefix: the U+2581 marker goes at the
 * start of the text and again after each control token (llama.cpp's rule).
 * Invalid UTF-8 is encoded byte by byte (never an error).
 * Input longer than 256 MiB gives SS_ETOOLONG.
 * Writes up to cap ids to out and returns the total count needed (may exceed
 * cap: call again with a bigger buffer), or a negative code. */
int64_t tok_encode(const struct tok *t, const char *text, size_t len, int add_bos, int parse_special,
                   int32_t *out, int64_t cap);
/* Same, but stops as soon as the text is known to need more than max_count
 * ids (max_count > 0; 0: no limit, as tok_encode): then returns max_count + 1
 * with the first max_count + 1 ids written (up to cap). A caller that rejects
 * prompts longer than a context need not tokenise all of a huge one: the work
 * is bounded by the ids produced, plus linear scans of the text. */
int64_t tok_encode_max(const struct tok *t, const char *text, size_t len, int add_bos, int parse_special,
                       int32_t *out, int64_t cap, int64_t max_count);

/* Raw bytes of one token as it contributes to text (byte tokens give one byte,
 * the space marker becomes ' ', byte-level BPE unicode is mapped back to bytes).
 * Control tokens give "". Returns bytes written (<= cap) or negative code. */
int tok_piece(const struct tok *t, int32_t id, char *out, size_t cap);

/* Streaming detokenizer: holds back an incomplete UTF-8 sequence so that every
 * chunk emitted is valid UTF-8 on its own. Also strips the single leading space
 * that SentencePiece puts before the first word when strip_leading is set. */
struct tok_stream {
    char pend[8];
    int n_pend;
    int first;
    int strip_leading;
};
void tok_stream_init(struct tok_stream *s, int strip_leading);
/* Appends the text of id to out (cap bytes); returns bytes written or negative
 * (SS_EINVAL bad id, SS_ETOOLONG cap too small: state unchanged). Control tokens
 * add nothing. Ill-formed UTF-8 becomes U+FFFD; an incomplete tail is held. */
int tok_stream_push(const struct tok *t, struct tok_stream *s, int32_t id, char *out, size_t cap);
/* Flush held-back bytes at the end (invalid leftovers become U+FFFD). */
int tok_stream_flush(struct tok_stream *s, char *out, size_t cap);

/* Whole-sequence decode into a malloc'd NUL-terminated string (NULL on OOM).
 * skip_special: 1 drops control/unknown tokens, 0 renders their text (e.g.
 * "<start_of_turn>"). Ids out of range are skipped. Like SentencePiece, an SPM
 * tokenizer with add_space_prefix drops the single leading space of the first
 * text piece, so tok_decode(tok_encode(x)) == x. The result is always valid
 * UTF-8: ill-formed sequences become U+FFFD. */
char *tok_decode(const struct tok *t, const int32_t *ids, int64_t n, int skip_special);

/* ---- extensions (tok owner) ---- */
/* tokenizer.ggml.add_space_prefix as loaded (default 1 for SPM, always 0 for BPE).
 * Pass it as strip_leading to tok_stream_init when decoding from the first token. */
int tok_add_space_prefix(const struct tok *t);
/* Raw text of a token as stored in the vocab, NUL-terminated (it may contain NUL
 * bytes itself: use *len); NULL if id is out of range. */
const char *tok_text(const struct tok *t, int32_t id, size_t *len);
/* Longest tok_piece over the vocab. tok_stream_push never
 * writes more than 3 * (tok_max_piece_len + 4) bytes; smaller caps may give
 * SS_ETOOLONG, in which case the stream state is unchanged. */
int tok_max_piece_len(const struct tok *t);

#endif
