/* kv.h - KV unit pool, block tables per level and the prefix cache
 * (scheduler-private).
 *
 * Memory model (see "KV units and levels" in engine/engine.h): the pool owns
 * units [0, n_units); a unit is 16 token slots of K and V for one layer. A
 * block (a logical page of 16 tokens) at a level with L layers owns L units,
 * one per layer of that level. A sequence has one table per level; level 0
 * holds every token, deeper levels (SUBLLM) only the tokens kept there, so a
 * level costs exactly what it stores.
 *
 * Every block is in one of three states:
 *
 *   free ──alloc──> in use (refs >= 1) ──last unref──> free        (no identity)
 *                        │  ▲                     └──> cached (LRU) (full block
 *                        │  └──────prefix hit─────────┘             with identity)
 *                        └─ kv_table_commit gives a full level-0 block an identity
 *
 * A full block's identity is (parent block id, parent generation, its 16 token
 * ids): the parent is the block before it in the sequence (or none). Lookups
 * verify the tokens and the parent exactly, so a hash collision can never hand
 * out wrong K/V. A cached block is evicted (LRU first) only when free units run
 * out; eviction bumps its generation, which makes every child that named it
 * unreachable. Prefix caching applies to single-level models only (the owner
 * passes prefix_cache = 0 otherwise).
 *
 * Engine thread only: no locking.
 */
#ifndef SS_KV_H
#define SS_KV_H

#include <stdint.h>

#include "engine/engine.h" /* ENG_PAGE_SLOTS */

#define KV_PAGE_SLOTS ENG_PAGE_SLOTS
#define KV_NONE (-1)

struct kv_pool;

struct kv_table {
    int n_layers;         /* units per block (layers of this table's level) */
    int32_t *blocks;      /* [cap] block ids, logical page order */
    int32_t **units;      /* [n_layers][cap]: units[j][i] = unit of layer j of block i */
    int32_t n_pages;      /* blocks held */
    int32_t cap;
    int32_t n_committed;  /* leading blocks that have a prefix-cache identity */
};

/* n_units units; blocks own at most max_layers units. prefix_cache: 1 to keep
 * full blocks reusable after their sequence ends. NULL on OOM/bad sizes. */
struct kv_pool *kv_pool_new(int32_t n_units, int max_layers, int prefix_cache);
void kv_pool_free(struct kv_pool *p);
int32_t kv_pool_n_units(const struct kv_pool *p);
/* Units available to allocate: free plus those of cached, unreferenced blocks. */
int32_t kv_pool_n_free(const struct kv_pool *p);
/* Units held by cached, unreferenced blocks (evictable). */
int32_t kv_pool_n_cached(const struct kv_pool *p);

static inline int32_t kv_pages_for(int64_t n_tokens) {
    return (int32_t)((n_tokens + KV_PAGE_SLOTS - 1) / KV_PAGE_SLOTS);
}

/* An empty table for a level of n_layers layers (no allocation yet). */
void kv_table_init(struct kv_table *t, int n_layers);
/* Grows t so it can hold n_tokens entries. All or nothing: returns 0, or
 * SS_EAGAIN when the pool lacks units (t unchanged), or SS_ENOMEM. */
int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens);
/* Returns the blocks beyond what n_tokens entries need (worst-case
 * reservations that a deeper level did not use). */
void kv_table_trim(struct kv_pool *p, struct kv_table *t, int64_t n_tokens);
/* Drops t's reference on every block (full committed blocks stay cached); t
 * becomes empty (storage kept). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);
/* Frees t's storage (blocks must have been released). */
void kv_table_free(struct kv_table *t);

/* Prefix lookup for an empty table: appends the longest run of cached full
 * blocks matching tokens[0, n) from the start, taking a reference on each. The
 * block holding token n-1 is never matched (it is recomputed privately, so no
 * shared block is ever written). Returns the tokens covered (multiple of 16). */
int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n);
/* Gives identities to t's full blocks [t->n_committed, n_computed / 16);
 * tokens are the sequence's ids. A block whose identity exists elsewhere stays
 * private (and so do the ones after it). */
void kv_table_commit(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n_computed);

#endif
