/* kv.h - KV page pool and per-sequence block tables (scheduler-private).
 *
 * The pool owns the free list of physical page ids [0, n_pages). A block table
 * maps a sequence's logical pages to physical ids; only its last page may be
 * partly filled. The engine's KV buffers are indexed by these ids; the engine
 * never allocates pages itself.
 *
 * Engine thread only: no locking.
 */
#ifndef SS_KV_H
#define SS_KV_H

#include <stdint.h>

#include "kernels/backend.h" /* BE_PAGE_SLOTS */

#define KV_PAGE_SLOTS BE_PAGE_SLOTS

struct kv_pool;

struct kv_table {
    int32_t *pages; /* [cap] physical page ids */
    int32_t n_pages;
    int32_t cap;
};

struct kv_pool *kv_pool_new(int32_t n_pages); /* NULL on OOM */
void kv_pool_free(struct kv_pool *p);
int32_t kv_pool_n_pages(const struct kv_pool *p);
int32_t kv_pool_n_free(const struct kv_pool *p);

static inline int32_t kv_pages_for(int64_t n_tokens) {
    return (int32_t)((n_tokens + KV_PAGE_SLOTS - 1) / KV_PAGE_SLOTS);
}

/* Grows t so it can hold n_tokens entries. All or nothing: returns 0, or
 * SS_EAGAIN when the pool lacks pages (t unchanged), or SS_ENOMEM. */
int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens);
/* Returns every page of t to the pool; t becomes empty (storage kept). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);
/* Frees t's storage (pages must have been released). */
void kv_table_free(struct kv_table *t);

#endif
