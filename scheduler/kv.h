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
 * Sliding-window layers (Gemma 3's local layers). A table may mark its last
 * n_local unit rows as local layers of window W (kv_table_init_swa): a query
 * at position P of such a layer reads only positions [P - W + 1, P]. Once
 * every position still to be computed is >= n_next, page i is dead for the
 * local rows when (i + 1) * 16 <= n_next - W + 1; kv_table_slide then drops
 * the table's hold on those local units (its rows read KV_NONE there; the
 * engine never reads them and rejects a missing unit it does need). A block
 * thus has two parts with their own reference counts: the global part (refs,
 * the rows every holder reads) and the local part (lrefs <= refs). A local
 * part nobody holds is freed at once, unless the block has an identity: then
 * it stays cached (evictable, on its own LRU) so a later prefix hit ending
 * near it can still use it. Eviction takes the older of the two LRU heads; a
 * whole-block eviction frees its cached local part with it.
 * Prefix rule: a hit of H tokens is used only if every matched block has its
 * global part (always) and every block that the next query reads on local
 * layers, [max(0, H - W + 1) / 16, H / 16), still has its local part; the
 * longest such H among the matched blocks is taken (possibly 0).
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
    int n_local;          /* the last n_local unit rows are sliding-window layers (0: none) */
    int32_t window;       /* their window in KV entries (> 0 when n_local > 0) */
    int32_t n_slid;       /* leading blocks whose local part this table no longer holds */
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
/* The same, with the last n_local rows (0 <= n_local < n_layers: at least one
 * global row) local layers of window > 0 whose dead pages kv_table_slide
 * returns; n_local 0 or window <= 0 is kv_table_init. Every table of a pool
 * with prefix caching must use the same n_local and window. */
void kv_table_init_swa(struct kv_table *t, int n_layers, int n_local, int32_t window);
/* Every position still to be computed is >= n_next: drops the local part of
 * each block entirely before n_next - window + 1 (see the header comment). */
void kv_table_slide(struct kv_pool *p, struct kv_table *t, int64_t n_next);
/* Units t holds (global rows of every block, local rows of the blocks not slid). */
int64_t kv_table_n_units(const struct kv_table *t);
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
 * shared block is ever written). With local rows, the run is cut to the
 * longest prefix the prefix rule allows and the local parts before its window
 * are not taken (n_slid set). Returns the tokens covered (multiple of 16). */
int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n);
/* Gives identities to t's full blocks [t->n_committed, n_computed / 16);
 * tokens are the sequence's ids. A block whose identity exists elsewhere stays
 * private (and so do the ones after it). */
void kv_table_commit(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n_computed);

#endif
