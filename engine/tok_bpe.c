/* tok_bpe.c - byte-level BPE ("gpt2"): GPT-2 byte<->unicode mapping, a PCRE2
 * pre-tokenizer chosen by tokenizer.ggml.pre, and rank-ordered merges.
 *
 * Encoding one fragment: the regex cuts it into pre-tokens ("Hello", " world",
 * "!"); each pre-token starts as one symbol per byte (the token of that byte's
 * mapped character) and the adjacent pair with the lowest merge rank is merged
 * (leftmost on ties) until no pair has a merge. Merges are keyed by the ids of
 * both sides, so a pre-token is never turned back into text while merging.
 * Bytes the regex skips (it never matches invalid UTF-8) are encoded as a
 * pre-token of their own, so every input byte is represented.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tok_internal.h"

#define ERRF(...) do { if (err && err_len) snprintf(err, err_len, __VA_ARGS__); } while (0)

/* Pre-tokenizer patterns (as published with each model's tokenizer). */
static const char PAT_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char PAT_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PAT_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte -> code point map: printable Latin-1 bytes map to themselves,
 * the other 68 bytes to 256.. in byte order. */
static uint32_t byte_cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
        return (uint32_t)b;
    int k = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)))
            k++;
    return 256u + (uint32_t)k;
}

static int utf8_put(uint32_t cp, char *dst) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2; /* all mapped code points are < 0x800 */
}

static uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static const struct tok_merge *merge_find(const struct tok *t, int32_t a, int32_t b) {
    if (a < 0 || b < 0)
        return NULL;
    uint64_t key = merge_key(a, b);
    for (uint64_t i = mix64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct tok_merge *m = &t->merges[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
    }
}

static int load_merges(struct tok *t, const struct gguf_file *f, char *err, size_t err_len) {
    const struct gguf_kv *kv = gguf_find(f, "tokenizer.ggml.merges");
    if (!kv) {
        ERRF("missing tokenizer.ggml.merges (required by gpt2 tokenizers)");
        return SS_EBADMODEL;
    }
    if (kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING || kv->arr_n > TOK_MAX_MERGES) {
        ERRF("tokenizer.ggml.merges: not an array of at most %d strings", TOK_MAX_MERGES);
        return SS_EBADMODEL;
    }
    uint64_t n = kv->arr_n, cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    struct gguf_str *s = malloc((n ? n : 1) * sizeof *s);
    char *cat = malloc(2 * (size_t)TOK_MAX_TOKEN_LEN + 1);
    t->merges = malloc(cap * sizeof *t->merges);
    if (!s || !cat || !t->merges) {
        free(s);
        free(cat);
        return SS_ENOMEM;
    }
    t->merge_mask = cap - 1;
    for (uint64_t i = 0; i < cap; i++)
        t->merges[i].key = UINT64_MAX;
    int rc = tok_read_strs(kv, s);
    if (rc)
        ERRF("tokenizer.ggml.merges: unreadable string");
    uint64_t skipped = 0;
    for (uint64_t i = 0; i < n && !rc; i++) {
        /* "left right": split at the first space after the first byte */
        const char *sp = s[i].len > 1 ? memchr(s[i].s + 1, ' ', s[i].len - 1) : NULL;
        if (!sp || sp + 1 == s[i].s + s[i].len || s[i].len > 2 * (uint64_t)TOK_MAX_TOKEN_LEN + 1) {
            ERRF("tokenizer.ggml.merges[%llu]: not of the form 'left right'", (unsigned long long)i);
            rc = SS_EBADMODEL;
            break;
        }
        size_t ll = (size_t)(sp - s[i].s), rl = s[i].len - ll - 1;
        int32_t a = tok_map_find(t, s[i].s, ll), b = tok_map_find(t, sp + 1, rl);
        memcpy(cat, s[i].s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t c = tok_map_find(t, cat, ll + rl);
        if (a < 0 || b < 0 || c < 0) {
            skipped++; /* a merge whose parts or result are not tokens can never apply */
            continue;
        }
        uint64_t key = merge_key(a, b), j = mix64(key) & t->merge_mask;
        while (t->merges[j].key != UINT64_MAX && t->merges[j].key != key)
            j = (j + 1) & t->merge_mask;
        if (t->merges[j].key == UINT64_MAX) /* duplicates keep the lowest rank */
            t->merges[j] = (struct tok_merge){ key, (int32_t)i, c };
    }
    if (!rc && skipped)
        fprintf(stderr, "tokenizer: %llu of %llu merges name texts missing from the vocab; ignored\n",
                (unsigned long long)skipped, (unsigned long long)n);
    free(s);
    free(cat);
    return rc;
}

static int compile_pre(struct tok *t, const struct gguf_file *f, char *err, size_t err_len) {
    const char *pat = PAT_GPT2;
    struct gguf_str pre;
    int rc = gguf_get_str(f, "tokenizer.ggml.pre", &pre);
    if (rc == 0) {
        if (gguf_str_eq(pre, "llama3") || gguf_str_eq(pre, "llama-bpe") || gguf_str_eq(pre, "llama-v3")) {
            pat = PAT_LLAMA3;
            t->ignore_merges = 1;
        } else if (gguf_str_eq(pre, "qwen2"))
            pat = PAT_QWEN2;
        else if (!gguf_str_eq(pre, "default") && !gguf_str_eq(pre, "gpt2")) {
            int l = pre.len > 64 ? 64 : (int)pre.len;
            fprintf(stderr, "tokenizer: unknown tokenizer.ggml.pre '%.*s', using the GPT-2 pre-tokenizer\n",
                    l, pre.s);
        }
    } else if (rc != SS_ENOTFOUND) {
        ERRF("tokenizer.ggml.pre: not a string");
        return SS_EBADMODEL;
    }
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
    if (!re) {
        ERRF("pre-tokenizer regex failed to compile (PCRE2 error %d at %zu)", ec, (size_t)eo);
        return SS_EINTERNAL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreter if JIT is unavailable */
    t->re = re;
    return 0;
}

int tok_bpe_load(struct tok *t, const struct gguf_file *f, char *err, size_t err_len) {
    int rc = load_merges(t, f, err, err_len);
    if (!rc)
        rc = compile_pre(t, f, err, err_len);
    if (rc)
        return rc;
    for (int i = 0; i < 324; i++)
        t->bpe_inv[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_cp(b);
        t->bpe_inv[cp] = (int16_t)b;
        t->bpe_map_len[b] = (uint8_t)utf8_put(cp, t->bpe_map[b]);
        t->byte_tok[b] = tok_map_find(t, t->bpe_map[b], t->bpe_map_len[b]);
    }
    return 0;
}

void tok_bpe_free(struct tok *t) {
    free(t->merges);
    t->merges = NULL;
    if (t->re)
        pcre2_code_free((pcre2_code *)t->re);
    t->re = NULL;
}

/* per-call scratch */
struct bpe_ctx {
    const struct tok *t;
    struct tok_heap h;
    int32_t *id, *prev, *next; /* per symbol; id -2 = merged away */
    char *mapped;              /* pre-token in mapped text (ignore_merges lookup) */
    struct tok_vec *out;
};

static int try_pair(struct bpe_ctx *c, int32_t l) {
    if (l < 0 || c->next[l] < 0)
        return 0;
    int32_t r = c->next[l];
    const struct tok_merge *m = merge_find(c->t, c->id[l], c->id[r]);
    if (!m)
        return 0;
    struct tok_pair p = { -(float)m->rank, l, r, c->id[l], c->id[r] };
    return tok_heap_push(&c->h, p);
}

static int emit(struct bpe_ctx *c, int32_t id) {
    if (id >= 0)
        return tok_vec_push(c->out, id);
    /* a byte whose mapped character is not in the vocab */
    return c->t->unk >= 0 ? tok_vec_push(c->out, c->t->unk) : 0;
}

static int encode_word(struct bpe_ctx *c, const uint8_t *s, int32_t n) {
    const struct tok *t = c->t;
    if (t->ignore_merges && n > 1) {
        size_t k = 0;
        for (int32_t i = 0; i < n; i++) {
            memcpy(c->mapped + k, t->bpe_map[s[i]], 2);
            k += t->bpe_map_len[s[i]];
        }
        int32_t id = tok_map_find(t, c->mapped, k);
        if (id >= 0)
            return tok_vec_push(c->out, id);
    }
    for (int32_t i = 0; i < n; i++) {
        c->id[i] = t->byte_tok[s[i]];
        c->prev[i] = i - 1;
        c->next[i] = i + 1 < n ? i + 1 : -1;
    }
    c->h.n = 0;
    int rc = 0;
    for (int32_t i = 0; i + 1 < n && !rc; i++)
        rc = try_pair(c, i);
    struct tok_pair p;
    while (!rc && tok_heap_pop(&c->h, &p)) {
        int32_t l = p.left, r = p.right;
        if (c->id[l] != p.a || c->id[r] != p.b || c->next[l] != r)
            continue; /* stale */
        c->id[l] = merge_find(t, p.a, p.b)->res;
        c->id[r] = -2;
        c->next[l] = c->next[r];
        if (c->next[l] >= 0)
            c->prev[c->next[l]] = l;
        rc = try_pair(c, c->prev[l]);
        if (!rc)
            rc = try_pair(c, l);
    }
    for (int32_t i = 0; i >= 0 && !rc; i = c->next[i])
        rc = emit(c, c->id[i]);
    return rc;
}

/* Pre-token iterator over s[0..n): matches of the pattern, plus the runs of
 * bytes between matches (only invalid UTF-8 is ever skipped by the patterns). */
struct pre_iter {
    const pcre2_code *re;
    pcre2_match_data *md;
    const char *s;
    size_t n, off;
    size_t ms, me; /* a match waiting behind a gap */
    int have;
    uint32_t opts;
};

static int pre_next(struct pre_iter *it, size_t *ps, size_t *pe) {
    if (it->have) {
        it->have = 0;
        *ps = it->ms;
        *pe = it->off = it->me;
        return 1;
    }
    if (it->off >= it->n)
        return 0;
    int m;
    for (;;) {
        m = pcre2_match(it->re, (PCRE2_SPTR)it->s, it->n, it->off, it->opts, it->md, NULL);
        if (m < 0 && m != PCRE2_ERROR_NOMATCH && !it->opts) {
            it->opts = PCRE2_NO_JIT; /* e.g. JIT stack exhausted: retry interpreted */
            continue;
        }
        break;
    }
    size_t ms = it->n, me = it->n;
    if (m >= 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(it->md);
        ms = ov[0];
        me = ov[1];
        if (ms < it->off || me < ms || me > it->n) /* defensive: never trust a bad ovector */
            ms = me = it->n;
    }
    if (me == ms && ms < it->n)
        me = ms + 1; /* an empty match still moves on */
    if (ms > it->off) {
        *ps = it->off;
        *pe = ms;
        if (me > ms) {
            it->have = 1;
            it->ms = ms;
            it->me = me;
        }
        it->off = ms;
        return 1;
    }
    *ps = ms;
    *pe = it->off = me;
    return 1;
}

int64_t tok_bpe_split(const struct tok *t, const char *s, size_t n, size_t *ends, int64_t cap) {
    if (!t->re)
        return SS_EINVAL;
    struct pre_iter it = { .re = t->re, .s = s, .n = n };
    it.md = pcre2_match_data_create(1, NULL);
    if (!it.md)
        return SS_ENOMEM;
    int64_t k = 0;
    size_t ps, pe;
    while (pre_next(&it, &ps, &pe)) {
        if (k < cap)
            ends[k] = pe;
        k++;
    }
    pcre2_match_data_free(it.md);
    return k;
}

int tok_bpe_encode(const struct tok *t, const char *s, size_t n, struct tok_vec *out) {
    if (n == 0)
        return 0;
    if (n > INT32_MAX / 2)
        return SS_ETOOLONG;
    struct bpe_ctx c = { .t = t, .out = out };
    struct pre_iter it = { .re = t->re, .s = s, .n = n };
    c.id = malloc(n * sizeof *c.id);
    c.prev = malloc(n * sizeof *c.prev);
    c.next = malloc(n * sizeof *c.next);
    c.mapped = malloc(2 * n);
    it.md = pcre2_match_data_create(1, NULL);
    int rc = 0;
    if (!c.id || !c.prev || !c.next || !c.mapped || !it.md)
        rc = SS_ENOMEM;
    size_t ps, pe;
    while (!rc && pre_next(&it, &ps, &pe))
        rc = encode_word(&c, (const uint8_t *)s + ps, (int32_t)(pe - ps));
    pcre2_match_data_free(it.md);
    free(c.id);
    free(c.prev);
    free(c.next);
    free(c.mapped);
    free(c.h.e);
    return rc;
}

size_t tok_bpe_piece(const struct tok *t, int32_t id, char *dst) {
    const uint8_t *s = (const uint8_t *)t->text + t->text_off[id];
    uint32_t n = t->text_len[id];
    size_t k = 0;
    for (uint32_t i = 0; i < n;) {
        int r = tok_utf8_seq(s + i, n - i);
        uint32_t cp = 0xFFFFFFFF;
        if (r == 1)
            cp = s[i];
        else if (r == 2)
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
        if (cp < 324 && t->bpe_inv[cp] >= 0) {
            dst[k++] = (char)t->bpe_inv[cp];
            i += (uint32_t)r;
        } else { /* not a mapped byte: keep the text as it is */
            int len = r > 0 ? r : (r < 0 ? -r : (int)(n - i));
            memcpy(dst + k, s + i, (size_t)len);
            k += (size_t)len;
            i += (uint32_t)len;
        }
    }
    return k;
}
