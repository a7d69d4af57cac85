/* params.c - request parameters: their lifecycle (defaults, deep copy, free)
 * and every check of a request against the model (token ids, context, KV
 * pool). The api calls the checks while it parses, to answer with a 400
 * naming the field; sched_submit calls them for every request it queues, so
 * the engine never sees one that cannot run. Each check is written here only.
 *
 * Pure functions; any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar.h"
#include "kernels/ss_error.h"
#include "scheduler/kv.h"
#include "scheduler/sched.h"

void req_params_init(struct req_params *p) {
    memset(p, 0, sizeof(*p));
    p->max_tokens = REQ_DEFAULT_MAX_TOKENS;
    smp_params_default(&p->smp);
    p->repetition_penalty = 1.0f; /* off */
    p->logprobs = -1;             /* none */
    p->spec_max = REQ_SPEC_DEFAULT;
}

void req_params_free(struct req_params *p) {
    if (!p) return;
    free(p->prompt);
    p->prompt = NULL;
    p->n_prompt = 0;
    req_stops_unref(p->stops);
    p->stops = NULL;
    free(p->bias_ids);
    free(p->bias_vals);
    p->bias_ids = NULL;
    p->bias_vals = NULL;
    p->n_bias = 0;
    gram_unref(p->grammar);
    p->grammar = NULL;
}

int req_params_copy(struct req_params *dst, const struct req_params *src) {
    *dst = *src;
    dst->prompt = NULL;
    dst->bias_ids = NULL;
    dst->bias_vals = NULL;
    dst->n_bias = 0;
    gram_ref(dst->grammar); /* shared: a compiled grammar is immutable */
    req_stops_ref(dst->stops); /* shared too */
    if (src->n_prompt > 0) {
        dst->prompt = malloc(sizeof(int32_t) * (size_t)src->n_prompt);
        if (!dst->prompt) goto oom;
        memcpy(dst->prompt, src->prompt, sizeof(int32_t) * (size_t)src->n_prompt);
    }
    if (src->n_bias > 0) {
        dst->bias_ids = malloc(sizeof(int32_t) * (size_t)src->n_bias);
        dst->bias_vals = malloc(sizeof(float) * (size_t)src->n_bias);
        if (!dst->bias_ids || !dst->bias_vals) goto oom;
        memcpy(dst->bias_ids, src->bias_ids, sizeof(int32_t) * (size_t)src->n_bias);
        memcpy(dst->bias_vals, src->bias_vals, sizeof(float) * (size_t)src->n_bias);
        dst->n_bias = src->n_bias;
    }
    return 0;
oom:
    req_params_free(dst);
    return SS_ENOMEM;
}

struct req_stops *req_stops_new(const char *const *s, const size_t *len, int n) {
    if (n < 1 || n > REQ_MAX_STOP || !s || !len) return NULL;
    size_t total = sizeof(struct req_stops);
    for (int i = 0; i < n; i++) {
        if (!s[i] || len[i] == 0 || len[i] > REQ_MAX_STOP_LEN || memchr(s[i], '\0', len[i])) return NULL;
        total += len[i] + 1;
    }
    struct req_stops *st = malloc(total);
    if (!st) return NULL;
    memset(st, 0, sizeof(*st));
    char *arena = (char *)(st + 1);
    st->refs = 1;
    st->n = n;
    for (int i = 0; i < n; i++) {
        memcpy(arena, s[i], len[i]);
        arena[len[i]] = '\0';
        st->s[i] = arena;
        st->len[i] = len[i];
        if (len[i] > st->max_len) st->max_len = len[i];
        arena += len[i] + 1;
    }
    return st;
}

struct req_stops *req_stops_ref(struct req_stops *st) {
    if (st) __atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED);
    return st;
}

void req_stops_unref(struct req_stops *st) {
    if (st && __atomic_sub_fetch(&st->refs, 1, __ATOMIC_ACQ_REL) == 0) free(st);
}

/* ---------- checks against the model ---------- */

int sched_check_prompt(const struct sched_limits *lim, const int32_t *ids, int32_t n, char *msg,
                       size_t cap) {
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= lim->n_vocab) {
            snprintf(msg, cap,
                     "token id %d at index %d is out of range: the vocabulary has %d tokens (ids 0..%d)",
                     ids[i], i, lim->n_vocab, lim->n_vocab - 1);
            return SS_EINVAL;
        }
    }
    return 0;
}

int sched_check_lengths(const struct sched_limits *lim, int32_t n_prompt, int32_t max_tokens,
                        char *msg, size_t cap, int *field) {
    int64_t need = (int64_t)n_prompt + max_tokens;
    *field = SCHED_FIELD_PROMPT;
    if (n_prompt >= lim->n_ctx) {
        snprintf(msg, cap,
                 "The prompt has %d tokens but this model's context is %d tokens; the prompt must "
                 "leave room for at least one generated token",
                 n_prompt, lim->n_ctx);
        return SS_ETOOLONG;
    }
    if (need > lim->n_ctx) {
        *field = SCHED_FIELD_MAX_TOKENS;
        snprintf(msg, cap,
                 "This model's maximum context length is %d tokens, but %lld were requested "
                 "(n_prompt_tokens=%d plus %d completion tokens); reduce the prompt or the "
                 "completion length",
                 lim->n_ctx, (long long)need, n_prompt, max_tokens);
        return SS_ETOOLONG;
    }
    /* Worst case: every level keeps every token. */
    if (lim->n_pages > 0 && kv_pages_for(need) > lim->n_pages) {
        snprintf(msg, cap,
                 "the request needs %d KV pages (n_prompt_tokens=%d plus max_tokens=%d) but the KV "
                 "cache has only %d pages of %d tokens",
                 kv_pages_for(need), n_prompt, max_tokens, lim->n_pages, KV_PAGE_SLOTS);
        return SS_ETOOLONG;
    }
    *field = SCHED_FIELD_NONE;
    return 0;
}

/* An embedding request: prefill only, so the whole context is the input's. */
static int check_embedding(const struct sched_limits *lim, const struct req_params *p, char *msg,
                           size_t cap, int *field) {
    *field = SCHED_FIELD_NONE;
    if (p->pooling != ENG_POOL_MEAN && p->pooling != ENG_POOL_CLS && p->pooling != ENG_POOL_LAST) {
        snprintf(msg, cap, "pooling %d is not mean, cls or last", p->pooling);
        return SS_EINVAL;
    }
    if (p->max_tokens != 0) {
        *field = SCHED_FIELD_MAX_TOKENS;
        snprintf(msg, cap, "an embedding request generates nothing: max_tokens must be 0");
        return SS_EINVAL;
    }
    *field = SCHED_FIELD_PROMPT;
    if (p->n_prompt > lim->n_ctx) {
        snprintf(msg, cap, "the input has %d tokens but this model's context is %d tokens", p->n_prompt,
                 lim->n_ctx);
        return SS_ETOOLONG;
    }
    if (lim->n_pages > 0 && kv_pages_for(p->n_prompt) > lim->n_pages) {
        snprintf(msg, cap, "the input needs %d KV pages (%d tokens) but the KV cache has only %d pages of %d tokens",
                 kv_pages_for(p->n_prompt), p->n_prompt, lim->n_pages, KV_PAGE_SLOTS);
        return SS_ETOOLONG;
    }
    *field = SCHED_FIELD_NONE;
    return 0;
}

int sched_check_params(const struct sched_limits *lim, const struct req_params *p, char *msg,
                       size_t cap, int *field) {
    *field = SCHED_FIELD_PROMPT;
    if (p->n_prompt < 1) {
        snprintf(msg, cap, "the prompt is empty");
        return SS_EINVAL;
    }
    int rc = sched_check_prompt(lim, p->prompt, p->n_prompt, msg, cap);
    if (rc != 0) return rc;
    if (p->pooling != ENG_POOL_NONE) return check_embedding(lim, p, msg, cap, field);
    *field = SCHED_FIELD_MAX_TOKENS;
    if (p->max_tokens < 1) {
        snprintf(msg, cap, "max_tokens must be at least 1");
        return SS_EINVAL;
    }
    *field = SCHED_FIELD_NONE;
    if (p->logprobs > REQ_MAX_LOGPROBS) {
        snprintf(msg, cap, "logprobs must be at most %d", REQ_MAX_LOGPROBS);
        return SS_EINVAL;
    }
    if (p->spec_max != REQ_SPEC_DEFAULT && (p->spec_max < 0 || p->spec_max > REQ_SPEC_MAX_TOKENS)) {
        snprintf(msg, cap, "speculative tokens must be between 0 and %d", REQ_SPEC_MAX_TOKENS);
        return SS_EINVAL;
    }
    return sched_check_lengths(lim, p->n_prompt, p->max_tokens, msg, cap, field);
}
