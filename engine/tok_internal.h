/* tok_internal.h - private to engine/tokenizer.c, tok_spm.c and tok_bpe.c.
 *
 * struct tok owns copies of everything it needs (token texts, decoded pieces,
 * scores, merges), so the gguf_file may be closed after tok_load. It is immutable
 * after load; every encode/decode call allocates its own scratch, so any number
 * of threads may use one tokenizer at once.
 */
#ifndef SS_TOK_INTERNAL_H
#define SS_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/tokenizer.h"

/* token_type values as written by llama.cpp's converters */
enum tok_type {
    TOK_T_UNDEF = 0, TOK_T_NORMAL = 1, TOK_T_UNKNOWN = 2, TOK_T_CONTROL = 3,
    TOK_T_USER = 4, TOK_T_UNUSED = 5, TOK_T_BYTE = 6
};

/* flags[id] bits */
#define TOK_F_EOG 1u

/* Limits enforced at load (bad values are SS_EBADMODEL) and at encode. */
#define TOK_MAX_VOCAB (1 << 24)
#define TOK_MAX_TOKEN_LEN 65535u
#define TOK_MAX_MERGES (1 << 24)
#define TOK_MAX_INPUT ((size_t)1 << 28) /* bytes per tok_encode call */
#define TOK_SPM_MAX_CROSS 64

/* Open-addressing map from token text to id (linear probing, load <= 1/2).
 * A slot holds id+1 in its low 32 bits (0 = empty) and the high 32 bits of the
 * text's hash above them, so a probe that misses rarely touches the texts. */
struct tok_map {
    uint64_t *slot;
    uint32_t mask;
};

/* BPE merge table: (left id, right id) -> (rank, merged id). key UINT64_MAX = empty. */
struct tok_merge {
    uint64_t key;
    int32_t rank;
    int32_t res;
};

/* Byte trie over the texts of control/unknown/user-defined tokens, used to cut
 * special tokens out of the input. Node 0 is the root; the root's children are
 * found through root_child[byte], deeper ones through first/next sibling lists. */
struct tok_trie_node {
    int32_t first, next; /* child / sibling node index, -1 none */
    int32_t id;          /* token ending here, -1 none */
    uint8_t byte;
};

struct tok {
    int kind; /* enum tok_kind */
    int32_t n_vocab;

    char *text;          /* arena of token texts (raw from the file, NUL after each) */
    uint32_t *text_off;  /* [n_vocab] */
    uint32_t *text_len;  /* [n_vocab] */
    char *piece;         /* arena of decoded pieces: bytes each token contributes */
    uint32_t *piece_off; /* [n_vocab] */
    uint32_t *piece_len; /* [n_vocab]; 0 for control/unknown tokens */
    uint32_t max_piece;  /* max of piece_len */
    float *score;        /* [n_vocab] (SPM merge priority; 0 if absent) */
    uint8_t *type;       /* [n_vocab] enum tok_type */
    uint8_t *flags;      /* [n_vocab] TOK_F_* */

    struct tok_map map;

    int32_t bos, eos, unk, pad, eot, eom; /* -1 if none */
    int add_bos;
    int add_space_prefix; /* SPM only */

    /* SPM: id of <0xNN>; BPE: id of the single mapped character for byte b. -1 none */
    int32_t byte_tok[256];

    struct tok_trie_node *trie;
    int32_t n_trie;
    int32_t root_child[256];

    /* SPM only: usable tokens with U+2581 after their first byte. Text is
     * merged word by word (cut before each marker) except where one of these
     * occurs; with more than TOK_SPM_MAX_CROSS of them, in one piece. */
    int32_t *spm_cross;
    int32_t n_cross;

    /* BPE only */
    struct tok_merge *merges;
    uint64_t merge_mask;
    void *re;          /* pcre2_code_8 * */
    int ignore_merges; /* llama3: a pre-token that is itself a token is emitted whole */
    char bpe_map[256][2];    /* UTF-8 of each byte's mapped character */
    uint8_t bpe_map_len[256];
    int16_t bpe_inv[324];    /* mapped code point -> byte, -1 if not a mapped byte */
};

/* ---- tokenizer.c: shared helpers ---- */
uint64_t tok_hash_bytes(const char *s, size_t n);
/* id of the token with text s[0..n), or -1 */
int32_t tok_map_find(const struct tok *t, const char *s, size_t n);

/* Growable output vector used by the encoders. */
struct tok_vec {
    int32_t *v;
    int64_t n, cap;
    int64_t max; /* > 0: a push that makes n exceed it answers TOK_VEC_FULL */
};
#define TOK_VEC_FULL 1 /* not an error: the encoders stop, tok_encode_max reports max + 1 */
int tok_vec_push(struct tok_vec *v, int32_t id); /* 0, TOK_VEC_FULL or SS_ENOMEM */

/* Merge candidate between symbols left and right. For SPM score is the merged
 * token's score; for BPE it is -rank. Higher score wins, then the lower left. */
struct tok_pair {
    float score;
    int32_t left, right;
    int32_t a, b; /* SPM: byte length of left/right at push; BPE: their ids */
};
struct tok_heap {
    struct tok_pair *e;
    int64_t n, cap;
};
int tok_heap_push(struct tok_heap *h, struct tok_pair p); /* 0 or SS_ENOMEM */
int tok_heap_pop(struct tok_heap *h, struct tok_pair *out); /* 1 popped, 0 empty */

/* Classify the UTF-8 sequence at p (n >= 1 bytes available): >0 a valid
 * sequence of that length; 0 all n bytes are a valid but incomplete prefix;
 * -k invalid: the first k bytes (the maximal ill-formed subpart, k >= 1) are to
 * be replaced by one U+FFFD. */
int tok_utf8_seq(const uint8_t *p, size_t n);

/* Read every element of a string-array kv (validated by gguf_open) into out[0..arr_n).
 * Walks the array once (O(total bytes)) after checking that the layout matches
 * gguf_arr_str; falls back to gguf_arr_str per element otherwise. 0 or SS_EBADMODEL. */
struct gguf_kv;
struct gguf_str;
int tok_read_strs(const struct gguf_kv *kv, struct gguf_str *out);

/* ---- tok_spm.c ---- */
/* Encode one raw-text fragment (no special tokens inside). prefix: put the space
 * marker first. Appends ids to out. Returns 0 or negative code. */
int tok_spm_encode(const struct tok *t, const char *s, size_t n, int prefix, struct tok_vec *out);
/* Decoded bytes of a normal/byte/user token into dst (capacity >= its text
 * length, pieces never grow); returns the length. */
size_t tok_spm_piece(const struct tok *t, int32_t id, char *dst);
int tok_spm_load(struct tok *t); /* byte_tok, spm_cross; 0 or SS_ENOMEM */

/* ---- tok_bpe.c ---- */
struct gguf_file;
int tok_bpe_load(struct tok *t, const struct gguf_file *f, char *err, size_t err_len);
void tok_bpe_free(struct tok *t);
int tok_bpe_encode(const struct tok *t, const char *s, size_t n, struct tok_vec *out);
size_t tok_bpe_piece(const struct tok *t, int32_t id, char *dst);
/* Pre-tokenizer split of s[0..n) (for tests): writes the end offset of each
 * pre-token to ends[0..cap) and returns their count, or a negative code. */
int64_t tok_bpe_split(const struct tok *t, const char *s, size_t n, size_t *ends, int64_t cap);

#endif
