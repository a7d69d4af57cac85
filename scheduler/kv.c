/* kv.c - KV unit pool, per-level block tables and the prefix cache. See kv.h. */
#include "scheduler/kv.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"

struct kv_block {
    int32_t refs;        /* holders of the global part (every holder) */
    int32_t lrefs;       /* holders of the local part (<= refs) */
    int32_t n_units;     /* units of a whole block (layers of its level) */
    int32_t n_local;     /* the last n_local of them are local-layer units */
    int has_local;       /* the local units are present (not freed or evicted) */
    int32_t parent;      /* identity: block before this one, KV_NONE for the first */
    uint32_t parent_gen;
    uint32_t gen;        /* bumped on eviction: children naming the old gen go stale */
    int hashed;          /* has an identity and sits in the map */
    uint64_t hash;
    int32_t tokens[KV_PAGE_SLOTS];
    /* LRU lists (head = oldest, tick = when pushed): whole cached blocks
     * (hashed, refs == 0) and cached local parts (hashed, lrefs == 0) */
    int32_t lru_prev, lru_next;
    int32_t llru_prev, llru_next;
    uint64_t tick, ltick;
};

/* A doubly linked list threaded through the blocks by one of the two link pairs. */
struct kv_lru {
    int32_t head, tail;
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
    struct kv_lru lru, llru; /* cached blocks, cached local parts */
    uint64_t tick;
    int32_t n_cached_units; /* units held by cached blocks and cached local parts */
    int32_t n_cached_blocks; /* blocks on the LRU of whole cached blocks */
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

/* ---------- LRU of cached blocks and cached local parts ---------- */

static int32_t *link_prev(struct kv_block *b, int local) { return local ? &b->llru_prev : &b->lru_prev; }
static int32_t *link_next(struct kv_block *b, int local) { return local ? &b->llru_next : &b->lru_next; }

/* Units a list entry stands for: the global part, or the local part. */
static int32_t lru_units(const struct kv_block *b, int local) {
    return local ? b->n_local : b->n_units - b->n_local;
}

static void lru_push_tail(struct kv_pool *p, int32_t id, int local) {
    struct kv_lru *L = local ? &p->llru : &p->lru;
    struct kv_block *pg = &p->pg[id];
    *link_next(pg, local) = KV_NONE;
    *link_prev(pg, local) = L->tail;
    if (L->tail != KV_NONE)
        *link_next(&p->pg[L->tail], local) = id;
    else
        L->head = id;
    L->tail = id;
    *(local ? &pg->ltick : &pg->tick) = ++p->tick;
    p->n_cached_units += lru_units(pg, local);
    p->n_cached_blocks += !local;
}

static void lru_unlink(struct kv_pool *p, int32_t id, int local) {
    struct kv_lru *L = local ? &p->llru : &p->lru;
    struct kv_block *pg = &p->pg[id];
    int32_t prev = *link_prev(pg, local), next = *link_next(pg, local);
    if (prev != KV_NONE)
        *link_next(&p->pg[prev], local) = next;
    else
        L->head = next;
    if (next != KV_NONE)
        *link_prev(&p->pg[next], local) = prev;
    else
        L->tail = prev;
    *link_prev(pg, local) = *link_next(pg, local) = KV_NONE;
    p->n_cached_units -= lru_units(pg, local);
    p->n_cached_blocks -= !local;
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
    p->lru.head = p->lru.tail = p->llru.head = p->llru.tail = KV_NONE;
    /* Hand out low ids first (pop from the end). */
    for (int32_t i = 0; i < n_units; i++) {
        p->free_blocks[i] = n_units - 1 - i;
        p->free_units[i] = n_units - 1 - i;
        p->pg[i].parent = KV_NONE;
        p->pg[i].lru_prev = p->pg[i].lru_next = p->pg[i].llru_prev = p->pg[i].llru_next = KV_NONE;
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

/* Frees the block's local units (the caller unlinked a cached local part). */
static void local_free(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int32_t j = pg->n_units - 1; j >= pg->n_units - pg->n_local; j--) {
        p->free_units[p->n_free_units++] = u[j];
        u[j] = KV_NONE;
    }
    pg->has_local = 0;
}

/* Frees every unit the block still has and the block itself. */
static void block_drop(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    if (pg->has_local) local_free(p, id);
    const int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int32_t j = pg->n_units - pg->n_local - 1; j >= 0; j--) p->free_units[p->n_free_units++] = u[j];
    pg->n_units = pg->n_local = 0;
    p->free_blocks[p->n_free_blocks++] = id;
}

/* Evicts a cached block: its identity dies, every unit it has goes free. */
static void evict_block(struct kv_pool *p, int32_t b) {
    struct kv_block *pg = &p->pg[b];
    lru_unlink(p, b, 0);
    if (pg->has_local) lru_unlink(p, b, 1); /* lrefs <= refs == 0: it is cached */
    map_remove(p, b);
    pg->hashed = 0;
    pg->gen++;
    block_drop(p, b);
}

/* Evicts the oldest cached entry: a whole block, or a local part (the block
 * keeps its identity and global part). 0 if none. */
static int evict_one(struct kv_pool *p) {
    int32_t b = p->lru.head, l = p->llru.head;
    if (b == KV_NONE && l == KV_NONE) return 0;
    if (b != KV_NONE && (l == KV_NONE || p->pg[b].tick < p->pg[l].ltick)) {
        evict_block(p, b);
    } else {
        lru_unlink(p, l, 1);
        local_free(p, l);
    }
    return 1;
}

/* Takes a block of L units, the last n_local of them local: free units
 * first, evicting the oldest cached entries while short of units, then
 * cached blocks while short of block ids. The caller checked
 * kv_pool_n_free() >= L and that a block id is free or cached. */
static int32_t block_alloc(struct kv_pool *p, int L, int n_local) {
    while (p->n_free_units < L && evict_one(p)) {
    }
    while (p->n_free_blocks == 0 && p->lru.head != KV_NONE) evict_block(p, p->lru.head);
    if (p->n_free_units < L || p->n_free_blocks == 0) return KV_NONE;
    int32_t id = p->free_blocks[--p->n_free_blocks];
    struct kv_block *pg = &p->pg[id];
    int32_t *u = p->bunits + (size_t)id * (size_t)p->max_layers;
    for (int j = 0; j < L; j++) u[j] = p->free_units[--p->n_free_units];
    pg->n_units = L;
    pg->n_local = n_local;
    pg->has_local = n_local > 0;
    pg->refs = 1;
    pg->lrefs = n_local > 0;
    pg->hashed = 0;
    return id;
}

/* Drops one hold on the block's local part. */
static void local_unref(struct kv_pool *p, int32_t id) {
    struct kv_block *pg = &p->pg[id];
    if (--pg->lrefs > 0) return;
    if (pg->hashed)
        lru_push_tail(p, id, 1);
    else
        local_free(p, id);
}

/* Drops one hold on the block (and on its local part when held_local). */
static void block_unref(struct kv_pool *p, int32_t id, int held_local) {
    struct kv_block *pg = &p->pg[id];
    if (held_local && pg->n_local > 0) local_unref(p, id);
    if (--pg->refs > 0) return;
    if (pg->hashed)
        lru_push_tail(p, id, 0);
    else
        block_drop(p, id);
}

/* ---------- tables ---------- */

void kv_table_init(struct kv_table *t, int n_layers) {
    memset(t, 0, sizeof(*t));
    t->n_layers = n_layers;
}

void kv_table_init_swa(struct kv_table *t, int n_layers, int n_local, int32_t window) {
    kv_table_init(t, n_layers);
    if (n_local > 0 && n_local < n_layers && window > 0) {
        t->n_local = n_local;
        t->window = window;
    }
}

/* First page the next query at position n_next reads on local rows. */
static int32_t first_live_page(const struct kv_table *t, int64_t n_next) {
    if (t->n_local == 0) return 0;
    int64_t lo = n_next - t->window + 1;
    return lo <= 0 ? 0 : (int32_t)(lo / KV_PAGE_SLOTS);
}

void kv_table_slide(struct kv_pool *p, struct kv_table *t, int64_t n_next) {
    int32_t drop = first_live_page(t, n_next);
    if (drop > t->n_pages) drop = t->n_pages;
    const int g = t->n_layers - t->n_local;
    for (; t->n_slid < drop; t->n_slid++) {
        local_unref(p, t->blocks[t->n_slid]);
        for (int j = g; j < t->n_layers; j++) t->units[j][t->n_slid] = KV_NONE;
    }
}

int64_t kv_table_n_units(const struct kv_table *t) {
    return (int64_t)t->n_pages * (t->n_layers - t->n_local) + (int64_t)(t->n_pages - t->n_slid) * t->n_local;
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
    /* a block id per page: free ones, or cached blocks to evict (a block
     * that lost its local part holds fewer units than a whole one) */
    if (more * t->n_layers > kv_pool_n_free(p) || more > p->n_free_blocks + p->n_cached_blocks) return SS_EAGAIN;
    if (table_grow(t, need) != 0) return SS_ENOMEM;
    while (t->n_pages < need) {
        int32_t id = block_alloc(p, t->n_layers, t->n_local);
        if (id == KV_NONE) return SS_EINTERNAL; /* cannot happen: checked above */
        table_push(p, t, id);
    }
    return 0;
}

void kv_table_trim(struct kv_pool *p, struct kv_table *t, int64_t n_tokens) {
    int32_t keep = kv_pages_for(n_tokens);
    while (t->n_pages > keep) {
        t->n_pages--;
        block_unref(p, t->blocks[t->n_pages], t->n_pages >= t->n_slid);
    }
    if (t->n_committed > t->n_pages) t->n_committed = t->n_pages;
    if (t->n_slid > t->n_pages) t->n_slid = t->n_pages;
}

void kv_table_release(struct kv_pool *p, struct kv_table *t) {
    /* Unref from the last block to the first: the LRU then evicts a sequence's
     * tail before its head, so shared prefixes live longest. */
    for (int32_t i = t->n_pages - 1; i >= 0; i--) block_unref(p, t->blocks[i], i >= t->n_slid);
    t->n_pages = 0;
    t->n_committed = 0;
    t->n_slid = 0;
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

/* The longest count c <= m of matched blocks (ids[0, m)) that the prefix
 * rule allows: blocks [first_live_page(16c), c) all have their local part. */
static int32_t prefix_usable(const struct kv_pool *p, const struct kv_table *t, const int32_t *ids, int32_t m) {
    if (t->n_local == 0) return m;
    for (int32_t c = m; c > 0; c--) {
        int32_t i = first_live_page(t, (int64_t)c * KV_PAGE_SLOTS);
        while (i < c && p->pg[ids[i]].has_local) i++;
        if (i == c) return c;
    }
    return 0;
}

int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n) {
    if (!p->prefix_cache || t->n_pages != 0) return 0;
    int64_t n_full = (n - 1) / KV_PAGE_SLOTS;
    if (n_full <= 0 || table_grow(t, (int32_t)n_full) != 0) return 0;
    /* Walk the chain first (ids into t->blocks), then take what is usable. */
    int32_t parent = KV_NONE, m = 0;
    uint32_t pgen = 0;
    for (int64_t i = 0; i < n_full; i++) {
        const int32_t *tk = tokens + i * KV_PAGE_SLOTS;
        int32_t id = map_find(p, page_hash(parent, pgen, tk), parent, pgen, tk);
        if (id == KV_NONE || p->pg[id].n_units != t->n_layers || p->pg[id].n_local != t->n_local) break;
        t->blocks[m++] = id;
        parent = id;
        pgen = p->pg[id].gen;
    }
    int32_t c = prefix_usable(p, t, t->blocks, m);
    int32_t live = first_live_page(t, (int64_t)c * KV_PAGE_SLOTS);
    const int g = t->n_layers - t->n_local;
    for (int32_t i = 0; i < c; i++) {
        int32_t id = t->blocks[i];
        struct kv_block *pg = &p->pg[id];
        if (pg->refs++ == 0) lru_unlink(p, id, 0);
        if (i >= live && pg->lrefs++ == 0) lru_unlink(p, id, 1);
        table_push(p, t, id);
        if (i < live)
            for (int j = g; j < t->n_layers; j++) t->units[j][i] = KV_NONE;
    }
    t->n_slid = live;
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
