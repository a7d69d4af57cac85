/* kv.c - KV unit pool, per-level block tables and the prefix cache. See kv.h. */
#include "scheduler/kv.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"

struct kv_block {
    int32_t refs;
    int32_t n_units;     /* units owned (layers of its level) */
    int32_t parent;      /* identity: block before this one, KV_NONE for the first */
    uint32_t parent_gen;
    uint32_t gen;        /* bumped on eviction: children naming the old gen go stale */
    int hashed;          /* has an identity and sits in the map */
    uint64_t hash;
    int32_t tokens[KV_PAGE_SLOTS];
    int32_t lru_prev, lru_next; /* cached (hashed, refs == 0) blocks, head = oldest */
};

struct kv_pool {
    int32_t n_units;
    int max_layers;
    int prefix_cache;
    struct kv_block *pg;   /* [n_units] block slots (a block owns >= 1 unit) */
    int32_t *bunits;       /* [n_units][max_layers] units of each block */
    int32_t *free_blocks;  /* unused block ids, the first n_free_blocks */
    int32_t n_free_blocks;
    int32_t *free_units;   /* unused unit ids, the first n_free_units */
    int32_t n_free_units;
    int32_t lru_head, lru_tail;
    int32_t n_cached_units; /* units held by cached blocks */
    int32_t *map;          /* open addressing (linear probing), block ids or KV_NONE */
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

static int page_is(const struct kv_block *pg, uint64_t h, int32_t parent, uint32_t parent_gen,
                   const int32_t *tokens) {
    return pg->hash == h && pg->parent == parent && pg->parent_gen == parent_gen &&
           memcmp(pg->tokens, tokens, sizeof(pg->tokens)) == 0;
}

static int32_t map_find(const struct kv_pool *p, uint64_t h, int32_t parent, uint32_t parent_gen,
                        const int32_t *tokens) {
    for (uint64_t i = h & p->map_mask;; i = (i + 1) & p->map_mask) {
        int32_t id = p->map[i];
        if (id == KV_NONE) return KV_NONE;
        if (page_is(&p->pg[id], h, parent, parent_gen, tokens)) return id;
    }
}

static void map_insert(struct kv_pool *p, int32_t id) {
    uint64_t i = p->pg[id].hash & p->map_mask;
    while (p->map[i] != KV_NONE) i = (i + 1) & p->map_mask;
    p->map[i] = id;
}

/* Linear-probing delete with backward shift (no tombstones). */
static void map_remove(struct kv_pool *p, int32_t id) {
    uint64_t i = p->pg[id].hash & p->map_mask;
    while (p->map[i] != id) i = (i + 1) & p->map_mask;
    uint64_t j = i;
    for (;;) {
        p->map[i] = KV_NONE;
        for (;;) {
            j = (j + 1) & p->map_mask;
            if (p->map[j] == KV_NONE) return;
            uint64_t home = p->pg[p->map[j]].hash & p->map_mask;
            /* move map[j] into the hole at i unless its home lies in (i, j] */
            int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
            if (!stays) break;
        }
        p->map[i] = p->map[j];
        i = j;
    }
}

/* ---------- LRU of cached blocks ---------- */

static void lru_push_tail(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    pg->lru_next = KV_NONE;
    pg->lru_prev = p->lru_tail;
    if (p->lru_tail != KV_NONE)
        p->pg[p->lru_tail].lru_next = id;
    else
        p->lru_head = id;
    p->lru_tail = id;
    p->n_cached_units += pg->n_units;
}

static void lru_unlink(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    if (pg->lru_prev != KV_NONE)
        p->pg[pg->lru_prev].lru_next = pg->lru_next;
    else
        p->lru_head = pg->lru_next;
    if (pg->lru_next != KV_NONE)
        p->pg[pg->lru_next].lru_prev = pg->lru_prev;
    else
        p->lru_tail = pg->lru_prev;
    pg->lru_prev = pg->lru_next = KV_NONE;
    p->n_cached_units -= pg->n_units;
}

/* ---------- pool ---------- */

struct kv_pool *kv_pool_new(int32_t n_units, int max_layers, int prefix_cache) {
    if (n_units < 0 || max_layers < 1) return NULL;
    struct kv_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    size_t n = (size_t)(n_units > 0 ? n_units : 1);
    uint64_t map_size = 16;
    while (map_size < 2 * (uint64_t)n) map_size *= 2;
    p->pg = calloc(n, sizeof(*p->pg));
    p->bunits = malloc(sizeof(int32_t) * n * (size_t)max_layers);
    p->free_blocks = malloc(sizeof(int32_t) * n);
    p->free_units = malloc(sizeof(int32_t) * n);
    p->map = malloc(sizeof(int32_t) * map_size);
    if (!p->pg || !p->bunits || !p->free_blocks || !p->free_units || !p->map) {
        kv_pool_free(p);
        return NULL;
    }
    for (uint64_t i = 0; i < map_size; i++) p->map[i] = KV_NONE;
    p->map_mask = map_size - 1;
    p->n_units = n_units;
    p->max_layers = max_layers;
    p->prefix_cache = prefix_cache;
    p->lru_head = p->lru_tail = KV_NONE;
    /* Hand out low ids first (pop from the end). */
    for (int32_t i = 0; i < n_units; i++) {
        p->free_blocks[i] = n_units - 1 - i;
        p->free_units[i] = n_units - 1 - i;
        p->pg[i].parent = KV_NONE;
        p->pg[i].lru_prev = p->pg[i].lru_next = KV_NONE;
    }
    p->n_free_blocks = p->n_free_units = n_units;
    return p;
}

void kv_pool_free(struct kv_pool *p) {
    if (!p) return;
    free(p->pg);
    free(p->bunits);
    free(p->free_blocks);
    free(p->free_units);
    free(p->map);
    free(p);
}

int32_t kv_pool_n_units(const struct kv_pool *p) { return p->n_units; }
int32_t kv_pool_n_free(const struct kv_pool *p) { return p->n_free_units + p->n_cached_units; }
int32_t kv_pool_n_cached(const struct kv_pool *p) { return p->n_cached_units; }

static void block_drop(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    const int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int32_t j = pg->n_units - 1; j >= 0; j--) p->free_units[p->n_free_units++] = u[j];
    pg->n_units = 0;
    p->free_blocks[p->n_free_blocks++] = id;
}

/* Takes a block of L units: free units first, evicting least recently used
 * cached blocks while short. The caller checked kv_pool_n_free() >= L. */
static int32_t block_alloc(struct kv_pool *p, int L) {
    while (p->n_free_units < L && p->lru_head != KV_NONE) {
        int32_t victim = p->lru_head;
        lru_unlink(p, victim);
        map_remove(p, victim);
        p->pg[victim].hashed = 0;
        p->pg[victim].gen++;
        block_drop(p, victim);
    }
    if (p->n_free_units < L || p->n_free_blocks == 0) return KV_NONE;
    int32_t id = p->free_blocks[--p->n_free_blocks];
    struct kv_block *pg = &p->pg[id];
    int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int j = 0; j < L; j++) u[j] = p->free_units[--p->n_free_units];
    pg->n_units = L;
    pg->refs = 1;
    pg->hashed = 0;
    return id;
}

static void block_unref(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    if (--pg->refs > 0) return;
    if (pg->hashed)
        lru_push_tail(p, id);
    else
        block_drop(p, id);
}

/* ---------- tables ---------- */

void kv_table_init(struct kv_table *t, int n_layers) {
    memset(t, 0, sizeof(*t));
    t->n_layers = n_layers;
}

static int table_grow(struct kv_table *t, int32_t need) {
    if (need <= t->cap) return 0;
    int32_t cap = t->cap ? t->cap : 8;
    while (cap < need) cap *= 2;
    if (!t->units) {
        t->units = calloc((size_t)t->n_layers, sizeof(*t->units));
        if (!t->units) return SS_ENOMEM;
    }
    int32_t *nb = realloc(t->blocks, sizeof(int32_t) * (size_t)cap);
    if (!nb) return SS_ENOMEM;
    t->blocks = nb;
    for (int j = 0; j < t->n_layers; j++) {
        int32_t *nu = realloc(t->units[j], sizeof(int32_t) * (size_t)cap);
        if (!nu) return SS_ENOMEM; /* earlier rows keep their bigger size: harmless */
        t->units[j] = nu;
    }
    t->cap = cap;
    return 0;
}

static void table_push(struct kv_pool *p, struct kv_table *t, int32_t id) {
    const int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int j = 0; j < t->n_layers; j++) t->units[j][t->n_pages] = u[j];
    t->blocks[t->n_pages++] = id;
}

int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens) {
    int32_t need = kv_pages_for(n_tokens);
    if (need <= t->n_pages) return 0;
    if (t->n_layers < 1 || t->n_layers > p->max_layers) return SS_EINVAL;
    int64_t more = need - t->n_pages;
    if (more * t->n_layers > kv_pool_n_free(p) || more > p->n_free_blocks) return SS_EAGAIN;
    if (table_grow(t, need) != 0) return SS_ENOMEM;
    while (t->n_pages < need) {
        int32_t id = block_alloc(p, t->n_layers);
        if (id == KV_NONE) return SS_EINTERNAL; /* cannot happen: checked above */
        table_push(p, t, id);
    }
    return 0;
}

void kv_table_trim(struct kv_pool *p, struct kv_table *t, int64_t n_tokens) {
    int32_t keep = kv_pages_for(n_tokens);
    while (t->n_pages > keep) block_unref(p, t->blocks[--t->n_pages]);
    if (t->n_committed > t->n_pages) t->n_committed = t->n_pages;
}

void kv_table_release(struct kv_pool *p, struct kv_table *t) {
    /* Unref from the last block to the first: the LRU then evicts a sequence's
     * tail before its head, so shared prefixes live longest. */
    for (int32_t i = t->n_pages - 1; i >= 0; i--) block_unref(p, t->blocks[i]);
    t->n_pages = 0;
    t->n_committed = 0;
}

void kv_table_free(struct kv_table *t) {
    if (t->units)
        for (int j = 0; j < t->n_layers; j++) free(t->units[j]);
    free(t->units);
    free(t->blocks);
    int L = t->n_layers;
    memset(t, 0, sizeof(*t));
    t->n_layers = L;
}

/* ---------- prefix cache ---------- */

int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n) {
    if (!p->prefix_cache || t->n_pages != 0) return 0;
    int64_t n_full = (n - 1) / KV_PAGE_SLOTS;
    if (n_full <= 0 || table_grow(t, (int32_t)n_full) != 0) return 0;
    int32_t parent = KV_NONE;
    uint32_t pgen = 0;
    for (int64_t i = 0; i < n_full; i++) {
        const int32_t *tk = tokens + i * KV_PAGE_SLOTS;
        int32_t id = map_find(p, page_hash(parent, pgen, tk), parent, pgen, tk);
        if (id == KV_NONE || p->pg[id].n_units != t->n_layers) break;
        if (p->pg[id].refs == 0) lru_unlink(p, id);
        p->pg[id].refs++;
        table_push(p, t, id);
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
        int32_t id = t->blocks[i];
        struct kv_block *pg = &p->pg[id];
        int32_t parent = i > 0 ? t->blocks[i - 1] : KV_NONE;
        uint32_t pgen = parent != KV_NONE ? p->pg[parent].gen : 0;
        const int32_t *tk = tokens + (int64_t)i * KV_PAGE_SLOTS;
        if (!pg->hashed) {
            uint64_t h = page_hash(parent, pgen, tk);
            if (map_find(p, h, parent, pgen, tk) != KV_NONE) return; /* a twin exists: stay private */
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
