/* kv.h - KV page pool, block tables and the prefix cache (scheduler-private).
 *
 * The pool owns physical page ids [0, n_pages). Every page is in one of three
 * states:
 *
 *   free ──alloc──> in use (refs >= 1) ──last unref──> free        (no identity)
 *                        │  ▲                     └──> cached (LRU) (full page
 *                        │  └──────prefix hit─────────┘             with identity)
 *                        └─ kv_page_commit gives a full page an identity
 *
 * A full page's identity is (parent page id, parent generation, its 16 token
 * ids): the parent is the page before it in the sequence (or none). Lookups
 * verify the tokens and the parent exactly, so a hash collision can never hand
 * out wrong K/V. A cached page is evicted (LRU first) only when the free list
 * is empty; eviction bumps its generation, which makes every child that named
 * it unreachable.
 *
 * Engine thread only: no locking.
 */
#ifndef SS_KV_H
#define SS_KV_H

#include <stdint.h>

#include "kernels/backend.h" /* BE_PAGE_SLOTS */

#define KV_PAGE_SLOTS BE_PAGE_SLOTS
#define KV_NO_PAGE (-1)

struct kv_pool;

struct kv_table {
    int32_t *pages; /* [cap] physical page ids */
    int32_t n_pages;
    int32_t cap;
    int32_t n_committed; /* leading pages that have a prefix-cache identity */
};

/* prefix_cache: 1 to keep full pages reusable after their sequence ends. */
struct kv_pool *kv_pool_new(int32_t n_pages, int prefix_cache); /* NULL on OOM */
void kv_pool_free(struct kv_pool *p);
int32_t kv_pool_n_pages(const struct kv_pool *p);
/* Pages available to allocate: free plus cached-and-unreferenced. */
int32_t kv_pool_n_free(const struct kv_pool *p);
/* Pages holding a prefix-cache identity and referenced by nobody. */
int32_t kv_pool_n_cached(const struct kv_pool *p);

static inline int32_t kv_pages_for(int64_t n_tokens) {
    return (int32_t)((n_tokens + KV_PAGE_SLOTS - 1) / KV_PAGE_SLOTS);
}

/* Grows t so it can hold n_tokens entries. All or nothing: returns 0, or
 * SS_EAGAIN when the pool lacks pages (t unchanged), or SS_ENOMEM. */
int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens);
/* Drops t's reference on every page (full committed pages stay cached); t
 * becomes empty (storage kept). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);
/* Frees t's storage (pages must have been released). */
void kv_table_free(struct kv_table *t);

/* Prefix lookup for an empty table: appends the longest run of cached full
 * pages matching tokens[0, n) from the start, taking a reference on each.
 * Returns the number of tokens covered (a multiple of KV_PAGE_SLOTS). */
int64_t kv_table_match_prefix(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n);
/* Gives identities to t's pages that are full: pages [t->n_committed,
 * n_full) where n_full = n_computed / KV_PAGE_SLOTS; tokens are the sequence's
 * ids. A page whose identity already exists elsewhere stays private. */
void kv_table_commit(struct kv_pool *p, struct kv_table *t, const int32_t *tokens, int64_t n_computed);

#endif
