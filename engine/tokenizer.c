/* tokenizer.c - the kind-independent half of the tokenizer: loading and
 * validating tokenizer.ggml.* metadata, the text->id map, special-token
 * splitting, end-of-generation flags, decoding and the streaming decoder.
 * The merge algorithms live in tok_spm.c ("llama") and tok_bpe.c ("gpt2").
 *
 * Every check on the file ends in SS_EBADMODEL (or SS_EUNSUPPORTED for a kind we
 * do not implement) with a message naming the key; nothing in a file can crash.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tok_internal.h"

#define ERRF(...) do { if (err && err_len) snprintf(err, err_len, __VA_ARGS__); } while (0)

/* ------------------------------------------------------------------ helpers */

uint64_t tok_hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)(uint8_t)s[i] << (8 * i);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

int32_t tok_map_find(const struct tok *t, const char *s, size_t n) {
    uint64_t h = tok_hash_bytes(s, n);
    uint32_t i = (uint32_t)h & t->map.mask, tag = (uint32_t)(h >> 32);
    for (;;) {
        uint64_t v = t->map.slot[i];
        if (!v)
            return -1;
        int32_t id = (int32_t)(uint32_t)v - 1;
        if ((uint32_t)(v >> 32) == tag && t->text_len[id] == n &&
            memcmp(t->text + t->text_off[id], s, n) == 0)
            return id;
        i = (i + 1) & t->map.mask;
    }
}

int tok_vec_push(struct tok_vec *v, int32_t id) {
    if (v->n == v->cap) {
        int64_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *nv = realloc(v->v, (size_t)nc * sizeof *nv);
        if (!nv)
            return SS_ENOMEM;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = id;
    return v->max > 0 && v->n > v->max ? TOK_VEC_FULL : 0;
}

/* a ranks before b: higher score, then lower left index */
static int pair_before(const struct tok_pair *a, const struct tok_pair *b) {
    if (a->score != b->score)
        return a->score > b->score;
    return a->left < b->left;
}

int tok_heap_push(struct tok_heap *h, struct tok_pair p) {
    if (h->n == h->cap) {
        int64_t nc = h->cap ? h->cap * 2 : 64;
        struct tok_pair *ne = realloc(h->e, (size_t)nc * sizeof *ne);
        if (!ne)
            return SS_ENOMEM;
        h->e = ne;
        h->cap = nc;
    }
    int64_t i = h->n++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!pair_before(&p, &h->e[parent]))
            break;
        h->e[i] = h->e[parent];
        i = parent;
    }
    h->e[i] = p;
    return 0;
}

int tok_heap_pop(struct tok_heap *h, struct tok_pair *out) {
    if (h->n == 0)
        return 0;
    *out = h->e[0];
    struct tok_pair last = h->e[--h->n];
    int64_t i = 0, n = h->n;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_before(&h->e[c + 1], &h->e[c]))
            c++;
        if (!pair_before(&h->e[c], &last))
            break;
        h->e[i] = h->e[c];
        i = c;
    }
    if (n > 0)
        h->e[i] = last;
    return 1;
}

int tok_utf8_seq(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) { need = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) need = 3;
    else if (c == 0xED) { need = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) need = 3;
    else if (c == 0xF0) { need = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else if (c == 0xF4) { need = 4; hi = 0x8F; }
    else return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n)
            return 0;
        uint8_t b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return -i;
    }
    return need;
}

int tok_read_strs(const struct gguf_kv *kv, struct gguf_str *out) {
    uint64_t n = kv->arr_n;
    if (n == 0)
        return 0;
    struct gguf_str first, last;
    if (gguf_arr_str(kv, 0, &first) != 0 || gguf_arr_str(kv, n - 1, &last) != 0)
        return SS_EBADMODEL;
    uint64_t len0;
    memcpy(&len0, kv->data, 8);
    int fast = first.s == (const char *)kv->data + 8 && first.len == len0;
    if (fast) {
        /* gguf_open validated every element, so this walk stays in the mapping;
         * the end is cross-checked against gguf_arr_str below anyway. */
        const uint8_t *p = kv->data;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len;
            memcpy(&len, p, 8);
            if (len > ((uint64_t)1 << 32)) {
                fast = 0;
                break;
            }
            out[i].len = len;
            out[i].s = (const char *)p + 8;
            p += 8 + len;
        }
        if (fast && (out[n - 1].s != last.s || out[n - 1].len != last.len))
            fast = 0;
    }
    if (!fast)
        for (uint64_t i = 0; i < n; i++)
            if (gguf_arr_str(kv, i, &out[i]) != 0)
                return SS_EBADMODEL;
    return 0;
}

/* ------------------------------------------------------------------ loading */

static int is_int_type(int ty) {
    return ty == GGUF_T_UINT8 || ty == GGUF_T_INT8 || ty == GGUF_T_UINT16 || ty == GGUF_T_INT16 ||
           ty == GGUF_T_UINT32 || ty == GGUF_T_INT32 || ty == GGUF_T_UINT64 || ty == GGUF_T_INT64;
}

/* Optional token id key: absent, negative or 0xFFFFFFFF (a u32 -1) -> -1; not an
 * integer or >= n -> error, except for lenient keys (padding: we never use it). */
static int load_id(const struct gguf_file *f, const char *key, int32_t n, int lenient, int32_t *out,
                   char *err, size_t err_len) {
    int64_t v;
    *out = -1;
    int rc = gguf_get_i64(f, key, &v);
    if (rc == SS_ENOTFOUND)
        return 0;
    if (rc != 0) {
        ERRF("%s: not an integer", key);
        return SS_EBADMODEL;
    }
    if (v < 0 || v == UINT32_MAX)
        return 0;
    if (v >= n) {
        if (lenient)
            return 0;
        ERRF("%s = %lld out of range (vocab size %d)", key, (long long)v, n);
        return SS_EBADMODEL;
    }
    *out = (int32_t)v;
    return 0;
}

static int load_bool(const struct gguf_file *f, const char *key, int def, int *out, char *err,
                     size_t err_len) {
    int rc = gguf_get_bool(f, key, out);
    if (rc == SS_ENOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc != 0) {
        ERRF("%s: not a bool", key);
        return SS_EBADMODEL;
    }
    *out = *out != 0;
    return 0;
}

static int load_texts(struct tok *t, const struct gguf_kv *kv, char *err, size_t err_len) {
    int32_t n = t->n_vocab;
    struct gguf_str *s = malloc((size_t)n * sizeof *s);
    t->text_off = malloc((size_t)n * sizeof *t->text_off);
    t->text_len = malloc((size_t)n * sizeof *t->text_len);
    if (!s || !t->text_off || !t->text_len) {
        free(s);
        return SS_ENOMEM;
    }
    if (tok_read_strs(kv, s) != 0) {
        free(s);
        ERRF("tokenizer.ggml.tokens: unreadable string");
        return SS_EBADMODEL;
    }
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (s[i].len > TOK_MAX_TOKEN_LEN) {
            ERRF("tokenizer.ggml.tokens[%d]: length %llu too long", i, (unsigned long long)s[i].len);
            free(s);
            return SS_EBADMODEL;
        }
        total += s[i].len + 1;
    }
    if (total >= UINT32_MAX) {
        free(s);
        ERRF("tokenizer.ggml.tokens: %llu bytes of text is too much", (unsigned long long)total);
        return SS_EBADMODEL;
    }
    t->text = malloc(total ? total : 1);
    t->piece = malloc(total ? total : 1);
    t->piece_off = malloc((size_t)n * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)n * sizeof *t->piece_len);
    if (!t->text || !t->piece || !t->piece_off || !t->piece_len) {
        free(s);
        return SS_ENOMEM;
    }
    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        t->text_off[i] = off;
        t->text_len[i] = (uint32_t)s[i].len;
        if (s[i].len)
            memcpy(t->text + off, s[i].s, s[i].len);
        off += (uint32_t)s[i].len;
        t->text[off++] = 0;
    }
    free(s);
    return 0;
}

/* Numeric per-token array (scores or token_type) into dst as float/uint8. */
static int load_num_array(const struct gguf_file *f, const char *key, int32_t n, float *fdst,
                          uint8_t *tdst, char *err, size_t err_len) {
    const struct gguf_kv *kv = gguf_find(f, key);
    if (!kv)
        return SS_ENOTFOUND;
    int at = kv->arr_type;
    if (kv->type != GGUF_T_ARRAY || !(is_int_type(at) || at == GGUF_T_FLOAT32 || at == GGUF_T_FLOAT64) ||
        (tdst && !is_int_type(at))) {
        ERRF("%s: not a numeric array of the right type", key);
        return SS_EBADMODEL;
    }
    if (kv->arr_n != (uint64_t)n) {
        ERRF("%s: %llu entries but %d tokens", key, (unsigned long long)kv->arr_n, n);
        return SS_EBADMODEL;
    }
    for (int32_t i = 0; i < n; i++) {
        double v;
        if (fdst && at == GGUF_T_FLOAT32) {
            float x;
            memcpy(&x, kv->data + (size_t)i * 4, 4);
            v = x;
        } else if (tdst && at == GGUF_T_INT32) {
            int32_t x;
            memcpy(&x, kv->data + (size_t)i * 4, 4);
            v = x;
        } else if (gguf_arr_num(kv, (uint64_t)i, &v) != 0) {
            ERRF("%s[%d]: unreadable", key, i);
            return SS_EBADMODEL;
        }
        if (fdst) {
            if (!isfinite(v)) {
                ERRF("%s[%d]: not a finite number", key, i);
                return SS_EBADMODEL;
            }
            fdst[i] = (float)v;
        } else {
            if (v < 0 || v > TOK_T_BYTE) {
                ERRF("%s[%d] = %g: unknown token type", key, i, v);
                return SS_EBADMODEL;
            }
            tdst[i] = (uint8_t)v;
        }
    }
    return 0;
}

static int build_map(struct tok *t) {
    uint64_t cap = 16;
    while (cap < (uint64_t)t->n_vocab * 2)
        cap <<= 1;
    t->map.slot = calloc(cap, sizeof *t->map.slot);
    if (!t->map.slot)
        return SS_ENOMEM;
    t->map.mask = (uint32_t)(cap - 1);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        uint32_t n = t->text_len[id];
        uint64_t h = tok_hash_bytes(s, n);
        uint32_t i = (uint32_t)h & t->map.mask;
        int dup = 0;
        /* NOTE: a text that occurs twice keeps its first id */
        while (t->map.slot[i]) {
            int32_t o = (int32_t)(uint32_t)t->map.slot[i] - 1;
            if (t->text_len[o] == n && memcmp(t->text + t->text_off[o], s, n) == 0) {
                dup = 1;
                break;
            }
            i = (i + 1) & t->map.mask;
        }
        if (!dup)
            t->map.slot[i] = ((h >> 32) << 32) | ((uint64_t)id + 1);
    }
    return 0;
}

/* Trie over control/unknown/user-defined token texts (see tok_internal.h). */
static int build_trie(struct tok *t) {
    size_t nodes = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];
        if ((ty == TOK_T_CONTROL || ty == TOK_T_UNKNOWN || ty == TOK_T_USER) && t->text_len[id])
            nodes += t->text_len[id];
    }
    if (nodes > INT32_MAX)
        return SS_EBADMODEL;
    t->trie = malloc(nodes * sizeof *t->trie);
    if (!t->trie)
        return SS_ENOMEM;
    for (int i = 0; i < 256; i++)
        t->root_child[i] = -1;
    t->trie[0] = (struct tok_trie_node){ -1, -1, -1, 0 };
    t->n_trie = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];
        if (!(ty == TOK_T_CONTROL || ty == TOK_T_UNKNOWN || ty == TOK_T_USER) || !t->text_len[id])
            continue;
        const uint8_t *s = (const uint8_t *)t->text + t->text_off[id];
        int32_t node = 0;
        for (uint32_t k = 0; k < t->text_len[id]; k++) {
            int32_t *link = node == 0 ? &t->root_child[s[k]] : &t->trie[node].first;
            int32_t c = *link;
            if (node != 0)
                while (c >= 0 && t->trie[c].byte != s[k])
                    c = t->trie[c].next;
            if (c < 0) {
                c = t->n_trie++;
                t->trie[c] = (struct tok_trie_node){ -1, node == 0 ? -1 : *link, -1, s[k] };
                *link = c;
            }
            node = c;
        }
        if (t->trie[node].id < 0)
            t->trie[node].id = id;
    }
    return 0;
}

static void mark_eog(struct tok *t) {
    static const char *const names[] = { "<end_of_turn>", "<|eot_id|>", "<|im_end|>",
                                         "<|end_of_text|>", "</s>", "<|endoftext|>" };
    int32_t ids[] = { t->eos, t->eot, t->eom };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i] >= 0)
            t->flags[ids[i]] |= TOK_F_EOG;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int32_t id = tok_map_find(t, names[i], strlen(names[i]));
        if (id >= 0 && t->type[id] == TOK_T_CONTROL)
            t->flags[id] |= TOK_F_EOG;
    }
}

static void build_pieces(struct tok *t) {
    uint32_t off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];
        char *dst = t->piece + off;
        size_t n;
        if (ty == TOK_T_CONTROL || ty == TOK_T_UNKNOWN)
            n = 0;
        else if (ty == TOK_T_USER) {
            n = t->text_len[id];
            memcpy(dst, t->text + t->text_off[id], n);
        } else if (t->kind == TOK_SPM)
            n = tok_spm_piece(t, id, dst);
        else
            n = tok_bpe_piece(t, id, dst);
        t->piece_off[id] = off;
        t->piece_len[id] = (uint32_t)n;
        off += (uint32_t)n;
        if (n > t->max_piece)
            t->max_piece = (uint32_t)n;
    }
}

static int load_common(struct tok *t, const struct gguf_file *f, char *err, size_t err_len) {
    const struct gguf_kv *kv = gguf_find(f, "tokenizer.ggml.tokens");
    if (!kv) {
        ERRF("missing tokenizer.ggml.tokens");
        return SS_EBADMODEL;
    }
    if (kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING) {
        ERRF("tokenizer.ggml.tokens: not an array of strings");
        return SS_EBADMODEL;
    }
    if (kv->arr_n == 0 || kv->arr_n > TOK_MAX_VOCAB) {
        ERRF("tokenizer.ggml.tokens: bad vocab size %llu", (unsigned long long)kv->arr_n);
        return SS_EBADMODEL;
    }
    t->n_vocab = (int32_t)kv->arr_n;
    int32_t n = t->n_vocab;
    int rc = load_texts(t, kv, err, err_len);
    if (rc)
        return rc;
    t->score = calloc((size_t)n, sizeof *t->score);
    t->type = malloc((size_t)n);
    t->flags = calloc((size_t)n, 1);
    if (!t->score || !t->type || !t->flags)
        return SS_ENOMEM;
    memset(t->type, TOK_T_NORMAL, (size_t)n);
    rc = load_num_array(f, "tokenizer.ggml.scores", n, t->score, NULL, err, err_len);
    if (rc && rc != SS_ENOTFOUND)
        return rc;
    rc = load_num_array(f, "tokenizer.ggml.token_type", n, NULL, t->type, err, err_len);
    if (rc && rc != SS_ENOTFOUND)
        return rc;
    if ((rc = load_id(f, "tokenizer.ggml.bos_token_id", n, 0, &t->bos, err, err_len)) ||
        (rc = load_id(f, "tokenizer.ggml.eos_token_id", n, 0, &t->eos, err, err_len)) ||
        (rc = load_id(f, "tokenizer.ggml.unknown_token_id", n, 0, &t->unk, err, err_len)) ||
        (rc = load_id(f, "tokenizer.ggml.padding_token_id", n, 1, &t->pad, err, err_len)) ||
        (rc = load_id(f, "tokenizer.ggml.eot_token_id", n, 0, &t->eot, err, err_len)) ||
        (rc = load_id(f, "tokenizer.ggml.eom_token_id", n, 0, &t->eom, err, err_len)))
        return rc;
    if ((rc = load_bool(f, "tokenizer.ggml.add_bos_token", t->kind == TOK_SPM, &t->add_bos, err, err_len)) ||
        (rc = load_bool(f, "tokenizer.ggml.add_space_prefix", t->kind == TOK_SPM, &t->add_space_prefix,
                        err, err_len)))
        return rc;
    if (t->kind != TOK_SPM)
        t->add_space_prefix = 0;
    return build_map(t);
}

int tok_load(struct tok **out, const struct gguf_file *f, char *err, size_t err_len) {
    if (!out || !f)
        return SS_EINVAL;
    *out = NULL;
    struct gguf_str model;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &model);
    if (rc != 0) {
        ERRF(rc == SS_ENOTFOUND ? "missing tokenizer.ggml.model" : "tokenizer.ggml.model: not a string");
        return SS_EBADMODEL;
    }
    int kind;
    if (gguf_str_eq(model, "llama"))
        kind = TOK_SPM;
    else if (gguf_str_eq(model, "gpt2"))
        kind = TOK_BPE;
    else {
        int l = model.len > 64 ? 64 : (int)model.len;
        ERRF("tokenizer.ggml.model '%.*s' is not supported (llama, gpt2)", l, model.s);
        return SS_EUNSUPPORTED;
    }
    struct tok *t = calloc(1, sizeof *t);
    if (!t)
        return SS_ENOMEM;
    t->kind = kind;
    rc = load_common(t, f, err, err_len);
    if (!rc) {
        if (kind == TOK_SPM)
            rc = tok_spm_load(t);
        else
            rc = tok_bpe_load(t, f, err, err_len);
    }
    if (!rc)
        rc = build_trie(t);
    if (!rc) {
        mark_eog(t);
        build_pieces(t);
    }
    if (rc) {
        if (rc == SS_ENOMEM)
            ERRF("out of memory loading the tokenizer");
        else if (rc == SS_EBADMODEL && err && err_len && !err[0])
            ERRF("invalid tokenizer metadata");
        tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_free(struct tok *t) {
    if (!t)
        return;
    tok_bpe_free(t);
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->score);
    free(t->type);
    free(t->flags);
    free(t->map.slot);
    free(t->trie);
    free(t->spm_cross);
    free(t);
}

/* ------------------------------------------------------------------ accessors */

int tok_kind(const struct tok *t) { return t->kind; }
int32_t tok_n_vocab(const struct tok *t) { return t->n_vocab; }
int32_t tok_bos(const struct tok *t) { return t->bos; }
int32_t tok_eos(const struct tok *t) { return t->eos; }
int tok_add_bos(const struct tok *t) { return t->add_bos; }
int tok_add_space_prefix(const struct tok *t) { return t->add_space_prefix; }

int tok_is_eog(const struct tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->flags[id] & TOK_F_EOG);
}

int tok_is_control(const struct tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->type[id] == TOK_T_CONTROL || t->type[id] == TOK_T_UNKNOWN);
}

int32_t tok_find(const struct tok *t, const char *s) {
    return s ? tok_map_find(t, s, strlen(s)) : -1;
}

const char *tok_text(const struct tok *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    if (len)
        *len = t->text_len[id];
    return t->text + t->text_off[id];
}

int tok_max_piece_len(const struct tok *t) { return (int)t->max_piece; }

/* ------------------------------------------------------------------ encoding */

/* Longest special token starting at s[0..n) that is allowed (user-defined always,
 * control/unknown only with parse_special). Returns its length and *id, or 0. */
static size_t special_at(const struct tok *t, const uint8_t *s, size_t n, int parse_special, int32_t *id) {
    int32_t node = t->root_child[s[0]];
    size_t best = 0, k = 0;
    while (node >= 0) {
        k++;
        int32_t tid = t->trie[node].id;
        if (tid >= 0 && (parse_special || t->type[tid] == TOK_T_USER)) {
            best = k;
            *id = tid;
        }
        if (k == n)
            break;
        int32_t c = t->trie[node].first;
        while (c >= 0 && t->trie[c].byte != s[k])
            c = t->trie[c].next;
        node = c;
    }
    return best;
}

/* Encode a raw fragment. *want_prefix: the SPM space marker is still owed (at
 * the start of the text and after each control token); it is put before this
 * fragment and cleared. */
static int encode_raw(const struct tok *t, const char *s, size_t n, int *want_prefix, struct tok_vec *v) {
    int prefix = *want_prefix;
    *want_prefix = 0;
    if (t->kind == TOK_SPM)
        return tok_spm_encode(t, s, n, prefix, v);
    return tok_bpe_encode(t, s, n, v);
}

int64_t tok_encode(const struct tok *t, const char *text, size_t len, int add_bos, int parse_special,
                   int32_t *out, int64_t cap) {
    return tok_encode_max(t, text, len, add_bos, parse_special, out, cap, 0);
}

int64_t tok_encode_max(const struct tok *t, const char *text, size_t len, int add_bos, int parse_special,
                       int32_t *out, int64_t cap, int64_t max_count) {
    if (!t || (!text && len) || cap < 0 || (cap > 0 && !out))
        return SS_EINVAL;
    if (len > TOK_MAX_INPUT)
        return SS_ETOOLONG;
    struct tok_vec v = { 0 };
    v.max = max_count > 0 ? max_count : 0;
    int rc = 0;
    if (add_bos && t->bos >= 0)
        rc = tok_vec_push(&v, t->bos);
    /* NOTE: SPM space marker. SentencePiece puts it once, at the start of the
     * text, and treats user-defined tokens as ordinary pieces (so a text that
     * starts with one gets a lone marker first). Like llama.cpp (and HF's legacy
     * tokenizers) the marker is owed again after each control token, so that
     * "<s>[INST]" style templates tokenize as the models were trained. */
    int want_prefix = t->add_space_prefix;
    const uint8_t *s = (const uint8_t *)text;
    size_t raw = 0, pos = 0;
    while (!rc && pos < len) {
        int32_t id;
        size_t m = t->root_child[s[pos]] >= 0 ? special_at(t, s + pos, len - pos, parse_special, &id) : 0;
        if (!m) {
            pos++;
            continue;
        }
        if (pos > raw || (want_prefix && t->type[id] == TOK_T_USER))
            rc = encode_raw(t, text + raw, pos - raw, &want_prefix, &v);
        if (!rc)
            rc = tok_vec_push(&v, id);
        if (t->type[id] != TOK_T_USER)
            want_prefix = t->add_space_prefix;
        pos += m;
        raw = pos;
    }
    if (!rc && len > raw)
        rc = encode_raw(t, text + raw, len - raw, &want_prefix, &v);
    if (rc == TOK_VEC_FULL) { /* stopped early: more than max_count */
        v.n = v.max + 1;
        rc = 0;
    }
    if (rc) {
        free(v.v);
        return rc;
    }
    int64_t n = v.n;
    if (n > 0 && cap > 0)
        memcpy(out, v.v, (size_t)(n < cap ? n : cap) * sizeof *out);
    free(v.v);
    return n;
}

/* ------------------------------------------------------------------ decoding */

int tok_piece(const struct tok *t, int32_t id, char *out, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab)
        return SS_EINVAL;
    uint32_t n = t->piece_len[id];
    if (n > cap)
        return SS_ETOOLONG;
    if (n)
        memcpy(out, t->piece + t->piece_off[id], n);
    return (int)n;
}

static const char fffd[3] = { (char)0xEF, (char)0xBF, (char)0xBD };

void tok_stream_init(struct tok_stream *s, int strip_leading) {
    memset(s, 0, sizeof *s);
    s->first = 1;
    s->strip_leading = strip_leading;
}

struct sbuf {
    char *p;
    size_t n, cap;
    int over;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->over || n > b->cap - b->n) {
        b->over = 1;
        return;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

/* Append bytes to the stream: emits complete valid sequences, U+FFFD for
 * ill-formed ones, and keeps an incomplete tail in s->pend. */
static void stream_feed(struct tok_stream *s, const uint8_t *p, size_t n, struct sbuf *b) {
    size_t i = 0;
    while (s->n_pend > 0 && i < n) {
        s->pend[s->n_pend++] = (char)p[i++];
        int r = tok_utf8_seq((const uint8_t *)s->pend, (size_t)s->n_pend);
        if (r == 0)
            continue;
        if (r > 0) {
            sb_put(b, s->pend, (size_t)r);
        } else {
            /* the held prefix was cut short by p[i-1]: replace it, re-read p[i-1] */
            sb_put(b, fffd, 3);
            i--;
        }
        s->n_pend = 0;
    }
    while (i < n) {
        int r = tok_utf8_seq(p + i, n - i);
        if (r > 0) {
            sb_put(b, (const char *)p + i, (size_t)r);
            i += (size_t)r;
        } else if (r == 0) {
            memcpy(s->pend, p + i, n - i); /* < 4 bytes */
            s->n_pend = (int)(n - i);
            i = n;
        } else {
            sb_put(b, fffd, 3);
            i += (size_t)-r;
        }
    }
}

int tok_stream_push(const struct tok *t, struct tok_stream *s, int32_t id, char *out, size_t cap) {
    if (!t || !s || id < 0 || id >= t->n_vocab || (!out && cap))
        return SS_EINVAL;
    struct tok_stream saved = *s;
    const uint8_t *p = (const uint8_t *)t->piece + t->piece_off[id];
    size_t n = t->piece_len[id];
    if (n && s->first) {
        if (s->strip_leading && p[0] == ' ') {
            p++;
            n--;
        }
        s->first = 0;
    }
    struct sbuf b = { out, 0, cap, 0 };
    stream_feed(s, p, n, &b);
    if (b.over) {
        *s = saved;
        return SS_ETOOLONG;
    }
    return (int)b.n;
}

int tok_stream_flush(struct tok_stream *s, char *out, size_t cap) {
    if (!s || (!out && cap))
        return SS_EINVAL;
    if (s->n_pend == 0)
        return 0;
    if (cap < 3)
        return SS_ETOOLONG;
    memcpy(out, fffd, 3);
    s->n_pend = 0;
    return 3;
}

char *tok_decode(const struct tok *t, const int32_t *ids, int64_t n, int skip_special) {
    if (!t || (!ids && n > 0))
        return NULL;
    /* worst case: every byte becomes U+FFFD */
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            continue;
        total += tok_is_control(t, id) ? t->text_len[id] : t->piece_len[id];
    }
    struct sbuf b = { malloc(3 * total + 4), 0, 3 * total + 4, 0 };
    if (!b.p)
        return NULL;
    struct tok_stream st;
    tok_stream_init(&st, t->add_space_prefix);
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            continue;
        if (tok_is_control(t, id)) {
            if (!skip_special) {
                stream_feed(&st, (const uint8_t *)t->text + t->text_off[id], t->text_len[id], &b);
                if (t->text_len[id])
                    st.first = 0;
            }
            continue;
        }
        const uint8_t *p = (const uint8_t *)t->piece + t->piece_off[id];
        size_t len = t->piece_len[id];
        if (len && st.first) {
            if (st.strip_leading && p[0] == ' ') {
                p++;
                len--;
            }
            st.first = 0;
        }
        stream_feed(&st, p, len, &b);
    }
    if (st.n_pend)
        sb_put(&b, fffd, 3);
    b.p[b.n] = 0;
    return b.p;
}
