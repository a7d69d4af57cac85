/* kv.c - KV page pool (a LIFO free list of page ids) and block tables. */
#include "scheduler/kv.h"

#include <stdlib.h>

#include "engine/ss_error.h"

struct kv_pool {
    int32_t n_pages;
    int32_t n_free;
    int32_t *free_ids; /* [n_pages], the first n_free are free */
};

struct kv_pool *kv_pool_new(int32_t n_pages) {
    if (n_pages < 0) return NULL;
    struct kv_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->free_ids = malloc(sizeof(int32_t) * (size_t)(n_pages > 0 ? n_pages : 1));
    if (!p->free_ids) {
        free(p);
        return NULL;
    }
    p->n_pages = n_pages;
    p->n_free = n_pages;
    /* Hand out low ids first (pop from the end). */
    for (int32_t i = 0; i < n_pages; i++) p->free_ids[i] = n_pages - 1 - i;
    return p;
}

void kv_pool_free(struct kv_pool *p) {
    if (!p) return;
    free(p->free_ids);
    free(p);
}

int32_t kv_pool_n_pages(const struct kv_pool *p) { return p->n_pages; }
int32_t kv_pool_n_free(const struct kv_pool *p) { return p->n_free; }

int kv_table_reserve(struct kv_pool *p, struct kv_table *t, int64_t n_tokens) {
    int32_t need = kv_pages_for(n_tokens);
    if (need <= t->n_pages) return 0;
    int32_t more = need - t->n_pages;
    if (more > p->n_free) return SS_EAGAIN;
    if (need > t->cap) {
        int32_t cap = t->cap ? t->cap : 8;
        while (cap < need) cap *= 2;
        int32_t *np = realloc(t->pages, sizeof(int32_t) * (size_t)cap);
        if (!np) return SS_ENOMEM;
        t->pages = np;
        t->cap = cap;
    }
    for (int32_t i = 0; i < more; i++) t->pages[t->n_pages++] = p->free_ids[--p->n_free];
    return 0;
}

void kv_table_release(struct kv_pool *p, struct kv_table *t) {
    /* Push back in reverse so a re-reserve gets the same ids in the same order. */
    for (int32_t i = t->n_pages - 1; i >= 0; i--) p->free_ids[p->n_free++] = t->pages[i];
    t->n_pages = 0;
}

void kv_table_free(struct kv_table *t) {
    free(t->pages);
    t->pages = NULL;
    t->n_pages = t->cap = 0;
}
