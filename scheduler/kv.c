/* kv.c - KV page pool, block tables and the prefix cache. See kv.h. */
#include "scheduler/kv.h"

#include <stdlib.h>
#include <string.h>

#include "engine/ss_error.h"

struct kv_page {
    int32_t refs;
    int32_t parent;      /* identity: page before this one, KV_NO_PAGE for the first */
    uint32_t parent_gen;
    uint32_t gen;        /* bumped on eviction: children naming the old gen go stale */
    int hashed;          /* has an identity and sits in the map */
    uint64_t hash;
    int32_t tokens[KV_PAGE_SLOTS];
    int32_t lru_prev, lru_next; /* cached (hashed, refs == 0) pages, head = oldest */
};

struct kv_pool {
    int32_t n_pages;
    int prefix_cache;
    struct kv_page *pg;
    int32_t *free_ids; /* pages without identity, the first n_free are free */
    int32_t n_free;
    int32_t lru_head, lru_tail, n_cached;
    int32_t *map;      /* open addressing (linear probing), page ids or KV_NO_PAGE */
    uint64_t map_mask;
};

/* ---------- hashing and the identity map ---------- */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t page_hash(int32_t parent, uint32_t parent_gen, const int32_t *tokens) {
    uint64_t h = mix64(((uint64_t)(uint32_t)parent << 32) ^ parent_gen ^ 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < KV_PAGE_SLOTS; i++) h = mix64(h ^ (uint32_t)tokens[i]) + (uint64_t)i;
    return h;
}

static int page_is(const struct kv_page *pg, uint64_t h, int32_t parent, uint32_t parent_gen,
                   const int32_t *tokens) {
    return pg->hash == h && pg->parent == parent && pg->parent_gen == parent_gen &&
           memcmp(pg->tokens, tokens, sizeof(pg->tokens)) == 0;
}

static int32_t map_find(const struct kv_pool *p, uint64_t h, int32_t parent, uint32_t parent_gen,
                        const int32_t *tokens) {
    for (uint64_t i = h & p->map_mask;; i = (i + 1) & p->map_mask) {
        int32_t id = p->map[i];
        if (id == KV_NO_PAGE) return KV_NO_PAGE;
        if (page_is(&p->pg[id], h, parent, parent_gen, tokens)) return id;
    }
}

static void map_insert(struct kv_pool *p, int32_t id) {
    uint64_t i = p->pg[id].hash & p->map_mask;
    while (p->map[i] != KV_NO_PAGE) i = (i + 1) & p->map_mask;
    p->map[i] = id;
}

/* Linear-probing delete with backward shift (no tombstones). */
static void map_remove(struct kv_pool *p, int32_t id) {
    uint64_t i = p->pg[id].hash & p->map_mask;
    while (p->map[i] != id) i = (i + 1) & p->map_mask;
    uint64_t j = i;
    for (;;) {
        p->map[i] = KV_NO_PAGE;
        for (;;) {
            j = (j + 1) & p->map_mask;
            if (p->map[j] == KV_NO_PAGE) return;
            uint64_t home = p->pg[p->map[j]].hash & p->map_mask;
            /* move map[j] into the hole at i unless its home lies in (i, j] */
            int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
            if (!stays) break;
        }
        p->map[i] = p->map[j];
        i = j;
    }
}

/* ---------- LRU of cached pages ---------- */

static void lru_push_tail(struct kv_pool *p, int32_t id) {
    struct kv_page *pg = &p->pg[id];
    pg->lru_next = KV_NO_PAGE;
    pg->lru_prev = p->lru_tail;
    if (p->lru_tail != KV_NO_PAGE)
        p->pg[p->lru_tail].lru_next = id;
    else
        p->lru_head = id;
    p->lru_tail = id;
    p->n_cached++;
}

static void lru_unlink(struct kv_pool *p, int32_t id) {
    struct kv_page *pg = &p->pg[id];
    if (pg->lru_prev != KV_NO_PAGE)
        p->pg[pg->lru_prev].lru_next = pg->lru_next;
    else
        p->lru_head = pg->lru_next;
    if (pg->lru_next != KV_NO_PAGE)
        p->pg[pg->lru_next].lru_prev = pg->lru_prev;
    else
        p->lru_tail = pg->lru_prev;
    pg->lru_prev = pg->lru_next = KV_NO_PAGE;
    p->n_cached--;
}

/* ---------- pool ---------- */

struct kv_pool *kv_pool_new(int32_t n_pages, int prefix_cache) {
    if (n_pages < 0) return NULL;
    struct kv_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    size_t n = (size_t)(n_pages > 0 ? n_pages : 1);
    uint64_t map_size = 16;
    while (map_size < 2 * (uint64_t)n) map_size *= 2;
    p->pg = calloc(n, sizeof(*p->pg));
    p->free_ids = malloc(sizeof(int32_t) * n);
    p->map = malloc(sizeof(int32_t) * map_size);
    if (!p->pg || !p->free_ids || !p->map) {
        kv_pool_free(p);
        return NULL;
    }
    for (uint64_t i = 0; i < map_size; i++) p->map[i] = KV_NO_PAGE;
    p->map_mask = map_size - 1;
    p->n_pages = n_pages;
    p->prefix_cache = prefix_cache;
    p->n_free = n_pages;
    p->lru_head = p->lru_tail = KV_NO_PAGE;
    /* Hand out low ids first (pop from the end). */
    for (int32_t i = 0; i < n_pages; i++) {
        p->free_ids[i] = n_pages - 1 - i;
        p->pg[i].parent = KV_NO_PAGE;
        p->pg[i].lru_prev = p->pg[i].lru_next = KV_NO_PAGE;
    }
    return p;
}

void kv_pool_free(struct kv_pool *p) {
    if (!p) return;
    free(p->pg);
    free(p->free_ids);
    free(p->map);
    free(p);
}

int32_t kv_pool_n_pages(const struct kv_pool *p) { return p->n_pages; }
int32_t kv_pool_n_free(const struct kv_pool *p) { return p->n_free + p->n_cached; }
int32_t kv_pool_n_cached(const struct kv_pool *p) { return p->n_cached; }

/* Takes a page: a free one, else evicts the least recently used cached one. */
static int32_t page_alloc(struct kv_pool *p) {
    int32_t id;
    if (p->n_free > 0) {
        id = p->free_ids[--p->n_free];
    } else if (p->lru_head != KV_NO_PAGE) {
        id = p->lru_head;
        lru_unlink(p, id);
        map_remove(p, id);
        p->pg[id].hashed = 0;
        p->pg[id].gen++;
    } else {
        return KV_NO_PAGE;
    }
    p->pg[id].refs = 1;
    return id;
}

static void page_unref(struct kv_pool *p, int32_t id) {
    struct kv_page *pg = &p->pg[id];
    if (--pg->refs > 0) return;
    if (pg->hashed)
        lru_push_tail(p, id);
    else
        p->free_ids[p->n_free++] = id;
}

static int table_grow(struct kv_table *t, int32_t need) {
    if (need <= t->cap) return 0;
    int32_t cap = t->cap ? t->cap : 8;
    while (cap < need) cap *= 2;
    int32_t *np = realloc(t->pages, sizeof(int32_t) * (size_t)cap);
    if (!np) return SS_ENOMEM;
    t->pages = np;
    t->cap = cap;
    return 0;
}

int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens) {
    int32_t need = kv_pages_for(n_tokens);
    if (need <= t->n_pages) return 0;
    int32_t more = need - t->n_pages;
    if (more > kv_pool_n_free(p)) return SS_EAGAIN;
    if (table_grow(t, need) != 0) return SS_ENOMEM;
    for (int32_t i = 0; i < more; i++) t->pages[t->n_pages++] = page_alloc(p);
    return 0;
}

void kv_table_release(struct kv_pool *p, struct kv_table *t) {
    /* Unref from the last page to the first: the LRU then evicts a sequence's
     * tail before its head, so shared prefixes live longest. Free pages go back
     * so that a re-reserve gets the same ids in the same order. */
    for (int32_t i = t->n_pages - 1; i >= 0; i--) page_unref(p, t->pages[i]);
    t->n_pages = 0;
    t->n_committed = 0;
}

void kv_table_free(struct kv_table *t) {
    free(t->pages);
    t->pages = NULL;
    t->n_pages = t->cap = t->n_committed = 0;
}

/* ---------- prefix cache ---------- */

int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n) {
    if (!p->prefix_cache || t->n_pages != 0) return 0;
    /* Never match the page holding the last token: it is recomputed privately
     * (its logits are needed), so no shared page is ever written. */
    int64_t n_full = (n - 1) / KV_PAGE_SLOTS;
    if (n_full <= 0 || table_grow(t, (int32_t)n_full) != 0) return 0;
    int32_t parent = KV_NO_PAGE;
    uint32_t pgen = 0;
    for (int64_t i = 0; i < n_full; i++) {
        const int32_t *tk = tokens + i * KV_PAGE_SLOTS;
        int32_t id = map_find(p, page_hash(parent, pgen, tk), parent, pgen, tk);
        if (id == KV_NO_PAGE) break;
        if (p->pg[id].refs == 0) lru_unlink(p, id);
        p->pg[id].refs++;
        t->pages[t->n_pages++] = id;
        parent = id;
        pgen = p->pg[id].gen;
    }
    t->n_committed = t->n_pages;
    return (int64_t)t->n_pages * KV_PAGE_SLOTS;
}

void kv_table_commit(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n_computed) {
    if (!p->prefix_cache) return;
    int64_t n_full = n_computed / KV_PAGE_SLOTS;
    if (n_full > t->n_pages) n_full = t->n_pages;
    while (t->n_committed < n_full) {
        int32_t i = t->n_committed;
        int32_t id = t->pages[i];
        struct kv_page *pg = &p->pg[id];
        int32_t parent = i > 0 ? t->pages[i - 1] : KV_NO_PAGE;
        uint32_t pgen = parent != KV_NO_PAGE ? p->pg[parent].gen : 0;
        const int32_t *tk = tokens + (int64_t)i * KV_PAGE_SLOTS;
        if (!pg->hashed) {
            uint64_t h = page_hash(parent, pgen, tk);
            if (map_find(p, h, parent, pgen, tk) != KV_NO_PAGE) return; /* a twin exists: stay private */
            pg->hash = h;
            pg->parent = parent;
            pg->parent_gen = pgen;
            memcpy(pg->tokens, tk, sizeof(pg->tokens));
            pg->hashed = 1;
            map_insert(p, id);
        }
        t->n_committed++;
    }
}
