/* grammar_store.c - token masks shared by every matcher of equal grammars.
 *
 * Two requests with the same schema compile two equal grammars; their parse
 * states, written canonically (each stack as its element positions from the
 * top down, stacks sorted), are equal too, and so are their masks. The store
 * keeps masks under (grammar class, canonical state) with a bounded number of
 * slots, evicted round robin; a grammar class holds a reference to one of the
 * equal grammars and is compared exactly (hash, then content) once per
 * matcher. Masks for a warm schema then cost a lookup whatever request asks,
 * which is what keeps many concurrent constrained streams cheap (xgrammar
 * caches compiled grammars with their masks for the same reason).
 *
 * One thread at a time (the engine thread); a returned mask stays valid until
 * the next insertion into the same store.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "kernels/ss_error.h"

#define STORE_CLASSES 64

struct sentry {
    int32_t cls;
    uint32_t cls_gen;
    uint32_t gen;     /* bumped when the slot is reused */
    uint32_t hash;
    int32_t *key;     /* malloc'd canonical state */
    int32_t n_key;
    int live;
};

struct gram_store {
    int32_t words;           /* mask size in uint32 */
    int32_t cap;             /* slots */
    uint32_t *masks;         /* [cap][words] */
    struct sentry *e;        /* [cap] */
    int32_t *index;          /* open addressing over slots: -1 empty, -2 deleted */
    uint32_t index_cap;
    int32_t n_deleted;
    int32_t next;            /* round-robin victim */
    struct gram *cls[STORE_CLASSES];
    uint32_t cls_gen[STORE_CLASSES];
    int32_t next_cls;
};

int gram_store_new(struct gram_store **out, int32_t n_vocab, int max_masks) {
    *out = NULL;
    struct gram_store *s = calloc(1, sizeof(*s));
    if (!s) return SS_ENOMEM;
    s->words = (n_vocab + 31) / 32;
    s->cap = max_masks < 1 ? 1 : max_masks;
    s->index_cap = 4;
    while (s->index_cap < (uint32_t)s->cap * 2) s->index_cap *= 2;
    s->masks = malloc(sizeof(uint32_t) * (size_t)s->words * (size_t)s->cap);
    s->e = calloc((size_t)s->cap, sizeof(*s->e));
    s->index = malloc(sizeof(int32_t) * s->index_cap);
    if (!s->masks || !s->e || !s->index) {
        gram_store_free(s);
        return SS_ENOMEM;
    }
    memset(s->index, -1, sizeof(int32_t) * s->index_cap);
    *out = s;
    return 0;
}

void gram_store_free(struct gram_store *s) {
    if (!s) return;
    for (int32_t i = 0; s->e && i < s->cap; i++) free(s->e[i].key);
    for (int i = 0; i < STORE_CLASSES; i++) gram_unref(s->cls[i]);
    free(s->masks);
    free(s->e);
    free(s->index);
    free(s);
}

static int same_grammar(const struct gram *a, const struct gram *b) {
    if (a == b) return 1;
    if (a->hash != b->hash || a->n_el != b->n_el || a->n_rules != b->n_rules || a->n_sets != b->n_sets ||
        a->root != b->root)
        return 0;
    int32_t n_alts = a->alt_off[a->n_rules];
    return n_alts == b->alt_off[b->n_rules] && memcmp(a->el, b->el, sizeof(*a->el) * (size_t)a->n_el) == 0 &&
           memcmp(a->alt_off, b->alt_off, sizeof(int32_t) * (size_t)(a->n_rules + 1)) == 0 &&
           memcmp(a->alts, b->alts, sizeof(int32_t) * (size_t)n_alts) == 0 &&
           memcmp(a->sets, b->sets, sizeof(a->sets[0]) * (size_t)a->n_sets) == 0;
}

int gram_store_class(struct gram_store *s, const struct gram *g, uint32_t *gen) {
    for (int i = 0; i < STORE_CLASSES; i++)
        if (s->cls[i] && same_grammar(s->cls[i], g)) {
            *gen = s->cls_gen[i];
            return i;
        }
    int i = s->next_cls;
    s->next_cls = (s->next_cls + 1) % STORE_CLASSES;
    gram_unref(s->cls[i]); /* its masks become unreachable: their cls_gen no longer matches */
    s->cls[i] = (struct gram *)g;
    gram_ref(s->cls[i]);
    *gen = ++s->cls_gen[i];
    return i;
}

int gram_store_class_valid(const struct gram_store *s, int cls, uint32_t gen) {
    return cls >= 0 && cls < STORE_CLASSES && s->cls_gen[cls] == gen && s->cls[cls];
}

static int entry_is(const struct sentry *e, int cls, uint32_t cls_gen, const int32_t *key, int32_t n, uint32_t h) {
    return e->live && e->hash == h && e->cls == cls && e->cls_gen == cls_gen && e->n_key == n &&
           memcmp(e->key, key, sizeof(int32_t) * (size_t)n) == 0;
}

const uint32_t *gram_store_find(struct gram_store *s, int cls, uint32_t cls_gen, const int32_t *key, int32_t n,
                                uint32_t h, int32_t *slot, uint32_t *gen) {
    uint32_t m = s->index_cap - 1;
    for (uint32_t k = h & m;; k = (k + 1) & m) {
        int32_t i = s->index[k];
        if (i == -1) return NULL;
        if (i >= 0 && entry_is(&s->e[i], cls, cls_gen, key, n, h)) {
            *slot = i;
            *gen = s->e[i].gen;
            return s->masks + (size_t)s->words * (size_t)i;
        }
    }
}

const uint32_t *gram_store_get(const struct gram_store *s, int32_t slot, uint32_t gen) {
    if (slot < 0 || slot >= s->cap || !s->e[slot].live || s->e[slot].gen != gen) return NULL;
    return s->masks + (size_t)s->words * (size_t)slot;
}

static void index_remove(struct gram_store *s, int32_t slot) {
    uint32_t m = s->index_cap - 1;
    for (uint32_t k = s->e[slot].hash & m;; k = (k + 1) & m) {
        if (s->index[k] == -1) return;
        if (s->index[k] == slot) {
            s->index[k] = -2;
            s->n_deleted++;
            return;
        }
    }
}

static void index_rebuild(struct gram_store *s) {
    memset(s->index, -1, sizeof(int32_t) * s->index_cap);
    uint32_t m = s->index_cap - 1;
    for (int32_t i = 0; i < s->cap; i++) {
        if (!s->e[i].live) continue;
        uint32_t k = s->e[i].hash & m;
        while (s->index[k] != -1) k = (k + 1) & m;
        s->index[k] = i;
    }
    s->n_deleted = 0;
}

uint32_t *gram_store_insert(struct gram_store *s, int cls, uint32_t cls_gen, const int32_t *key, int32_t n,
                            uint32_t h, int32_t *slot, uint32_t *gen) {
    int32_t i = s->next;
    s->next = (s->next + 1) % s->cap;
    struct sentry *e = &s->e[i];
    if (e->live) index_remove(s, i);
    e->live = 0;
    int32_t *k = realloc(e->key, sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!k) return NULL;
    e->key = k;
    memcpy(e->key, key, sizeof(int32_t) * (size_t)n);
    e->n_key = n;
    e->hash = h;
    e->cls = cls;
    e->cls_gen = cls_gen;
    e->gen++;
    e->live = 1;
    if (s->n_deleted > s->cap / 2) index_rebuild(s);
    uint32_t m = s->index_cap - 1, p = h & m;
    while (s->index[p] >= 0) p = (p + 1) & m;
    if (s->index[p] == -2) s->n_deleted--;
    s->index[p] = i;
    *slot = i;
    *gen = e->gen;
    return s->masks + (size_t)s->words * (size_t)i;
}
