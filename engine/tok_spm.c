/* tok_spm.c - SentencePiece-style ("llama") encoding: score-driven pair merging
 * with <0xNN> byte fallback, and piece decoding (U+2581 -> ' ', <0xNN> -> byte).
 *
 * Encoding one fragment (text without special tokens):
 *   "Hi you" --escape--> "▁Hi▁you" (marker first if prefix) --split--> UTF-8 chars
 *   then, while some adjacent pair (a, b) has a vocab token for a+b, merge the
 *   pair whose token has the highest score (leftmost on ties). Candidates sit in
 *   a max-heap; an entry is stale once either side has changed length, which
 *   is detected on pop, so the whole run is O(n log n).
 * Only normal, user-defined and untyped tokens take part in merges and output:
 * control, unknown, unused and byte tokens are never produced from text, as in
 * SentencePiece itself. A final symbol without a token falls back to its bytes
 * as <0xNN> tokens, or to the unknown token when the vocab has no byte tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "engine/tok_internal.h"

static const char MARK[3] = { (char)0xE2, (char)0x96, (char)0x81 }; /* U+2581 */

struct sym {
    int32_t start, len; /* byte span in the escaped text; len 0 = merged away */
    int32_t prev, next;
};

static int usable(const struct tok *t, int32_t id) {
    uint8_t ty = t->type[id];
    return ty == TOK_T_NORMAL || ty == TOK_T_USER || ty == TOK_T_UNDEF;
}

/* id of the usable token spelled by buf[start, start+len), or -1 */
static int32_t lookup(const struct tok *t, const char *buf, int32_t start, int32_t len) {
    int32_t id = tok_map_find(t, buf + start, (size_t)len);
    return id >= 0 && usable(t, id) ? id : -1;
}

static int try_pair(const struct tok *t, const char *buf, const struct sym *sy, int32_t l,
                    struct tok_heap *h) {
    if (l < 0 || sy[l].next < 0)
        return 0;
    int32_t r = sy[l].next;
    int32_t id = lookup(t, buf, sy[l].start, sy[l].len + sy[r].len);
    if (id < 0)
        return 0;
    struct tok_pair p = { t->score[id], l, r, sy[l].len, sy[r].len };
    return tok_heap_push(h, p);
}

static int emit_symbol(const struct tok *t, const char *buf, const struct sym *s, struct tok_vec *out) {
    int32_t id = lookup(t, buf, s->start, s->len);
    if (id >= 0)
        return tok_vec_push(out, id);
    int rc = 0;
    int unk_done = 0;
    for (int32_t k = 0; k < s->len && !rc; k++) {
        int32_t b = t->byte_tok[(uint8_t)buf[s->start + k]];
        if (b >= 0)
            rc = tok_vec_push(out, b);
        else if (t->unk >= 0 && !unk_done) {
            rc = tok_vec_push(out, t->unk); /* one unknown per symbol */
            unk_done = 1;
        }
    }
    return rc;
}

/* Merge the symbols of buf[start, end) and emit their ids (see the top). */
static int merge_segment(const struct tok *t, const char *buf, size_t start, size_t end, struct sym *sy,
                         struct tok_heap *h, struct tok_vec *out) {
    int32_t ns = 0;
    for (size_t i = start; i < end;) {
        int r = tok_utf8_seq((const uint8_t *)buf + i, end - i);
        int32_t len = r > 0 ? r : 1; /* a stray byte is a symbol of its own */
        sy[ns] = (struct sym){ (int32_t)i, len, ns - 1, -1 };
        if (ns > 0)
            sy[ns - 1].next = ns;
        ns++;
        i += (size_t)len;
    }
    if (ns == 1) /* common: a one-character word */
        return emit_symbol(t, buf, &sy[0], out);
    h->n = 0;
    int rc = 0;
    for (int32_t i = 0; i + 1 < ns && !rc; i++)
        rc = try_pair(t, buf, sy, i, h);
    struct tok_pair p;
    while (!rc && tok_heap_pop(h, &p)) {
        struct sym *l = &sy[p.left], *r = &sy[p.right];
        if (l->len != p.a || r->len != p.b)
            continue; /* stale: a side was merged since */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (l->next >= 0)
            sy[l->next].prev = p.left;
        rc = try_pair(t, buf, sy, l->prev, h);
        if (!rc)
            rc = try_pair(t, buf, sy, p.left, h);
    }
    for (int32_t i = 0; i >= 0 && !rc; i = sy[i].next)
        rc = emit_symbol(t, buf, &sy[i], out);
    return rc;
}

/* nobreak[i] = 1 where a cross token occurrence covers byte i past its start. */
static void mark_cross(const struct tok *t, const char *buf, size_t elen, uint8_t *nobreak) {
    for (int32_t k = 0; k < t->n_cross; k++) {
        int32_t id = t->spm_cross[k];
        const char *pat = t->text + t->text_off[id];
        size_t pl = t->text_len[id];
        const char *p = buf, *e = buf + elen;
        while ((p = memmem(p, (size_t)(e - p), pat, pl)) != NULL) {
            memset(nobreak + (p - buf) + 1, 1, pl - 1);
            p++;
        }
    }
}

int tok_spm_encode(const struct tok *t, const char *s, size_t n, int prefix, struct tok_vec *out) {
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++)
        spaces += s[i] == ' ';
    size_t elen = n + 2 * spaces + (prefix ? 3 : 0);
    if (elen == 0)
        return 0;
    if (elen > INT32_MAX)
        return SS_ETOOLONG;
    int split = t->n_cross <= TOK_SPM_MAX_CROSS;
    char *buf = malloc(elen);
    struct sym *sy = malloc(elen * sizeof *sy);
    uint8_t *nobreak = split && t->n_cross ? calloc(elen, 1) : NULL;
    struct tok_heap h = { 0 };
    int rc = 0;
    if (!buf || !sy || (split && t->n_cross && !nobreak)) {
        rc = SS_ENOMEM;
        goto done;
    }
    size_t k = 0;
    if (prefix) {
        memcpy(buf, MARK, 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + k, MARK, 3);
            k += 3;
        } else
            buf[k++] = s[i];
    }
    if (!split) {
        rc = merge_segment(t, buf, 0, elen, sy, &h, out);
        goto done;
    }
    /* NOTE: no usable token has a marker past its first byte except the cross
     * tokens, so no merge can span a cut made just before a marker outside
     * their occurrences: merging word by word gives the same result as merging
     * the whole text at once, with small heaps. */
    if (nobreak)
        mark_cross(t, buf, elen, nobreak);
    size_t seg = 0;
    for (size_t i = 1; i + 3 <= elen && !rc; i++) {
        if (buf[i] == MARK[0] && buf[i + 1] == MARK[1] && buf[i + 2] == MARK[2] && !(nobreak && nobreak[i])) {
            rc = merge_segment(t, buf, seg, i, sy, &h, out);
            seg = i;
        }
    }
    if (!rc)
        rc = merge_segment(t, buf, seg, elen, sy, &h, out);
done:
    free(buf);
    free(sy);
    free(nobreak);
    free(h.e);
    return rc;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* byte value of a "<0xNN>" text, or -1 */
static int byte_of(const char *s, uint32_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>')
        return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

size_t tok_spm_piece(const struct tok *t, int32_t id, char *dst) {
    const char *s = t->text + t->text_off[id];
    uint32_t n = t->text_len[id];
    if (t->type[id] == TOK_T_BYTE) {
        int b = byte_of(s, n);
        if (b >= 0) {
            dst[0] = (char)b;
            return 1;
        }
    }
    size_t k = 0;
    for (uint32_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, MARK, 3) == 0) {
            dst[k++] = ' ';
            i += 3;
        } else
            dst[k++] = s[i++];
    }
    return k;
}

int tok_spm_load(struct tok *t) {
    int32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        uint32_t len = t->text_len[id];
        if (usable(t, id) && len > 3 && memmem(s + 1, len - 1, MARK, 3))
            n++;
    }
    if (n && n <= TOK_SPM_MAX_CROSS) {
        t->spm_cross = malloc((size_t)n * sizeof *t->spm_cross);
        if (!t->spm_cross)
            return SS_ENOMEM;
        n = 0;
        for (int32_t id = 0; id < t->n_vocab; id++) {
            const char *s = t->text + t->text_off[id];
            uint32_t len = t->text_len[id];
            if (usable(t, id) && len > 3 && memmem(s + 1, len - 1, MARK, 3))
                t->spm_cross[n++] = id;
        }
    }
    t->n_cross = n;
    char name[8];
    for (int b = 0; b < 256; b++) {
        static const char hex[] = "0123456789ABCDEF";
        memcpy(name, "<0x", 3);
        name[3] = hex[b >> 4];
        name[4] = hex[b & 15];
        name[5] = '>';
        t->byte_tok[b] = tok_map_find(t, name, 6);
    }
    return 0;
}
