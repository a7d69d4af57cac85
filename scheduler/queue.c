/* queue.c - every piece of cross-thread code of the scheduler lives here:
 * request reference counting, the submission queue and output hand-off.
 *
 *   loop thread                         engine thread
 *   sched_submit ──> squeue (mutex) ──> squeue_take
 *   sched_cancel ──> r->cancelled  ───> req_is_cancelled
 *   sched_req_take <── r->out (r->lock) <── req_out_push ──> notify()
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

double sched_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct sched_req *sched_req_new(void) {
    static uint64_t next_id = 1; /* loop thread only */
    struct sched_req *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        free(r);
        return NULL;
    }
    r->refs = 1;
    r->id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);
    smp_params_default(&r->p.smp);
    r->p.max_tokens = 16;
    r->p.repetition_penalty = 1.0f;
    r->p.logprobs = -1;
    return r;
}

void sched_req_ref(struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    r->refs++;
    pthread_mutex_unlock(&r->lock);
}

void sched_req_unref(struct sched_req *r) {
    if (!r) return;
    pthread_mutex_lock(&r->lock);
    int left = --r->refs;
    pthread_mutex_unlock(&r->lock);
    if (left > 0) return;
    free(r->p.prompt);
    free(r->p.bias_ids);
    free(r->p.bias_vals);
    free(r->out.toks);
    for (int i = 0; i < r->p.n_stop; i++) free(r->p.stop[i]);
    free(r->out.text);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int squeue_init(struct squeue *q) {
    memset(q, 0, sizeof(*q));
    if (pthread_mutex_init(&q->lock, NULL) != 0) return SS_EINTERNAL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&q->lock);
        return SS_EINTERNAL;
    }
    return 0;
}

void squeue_destroy(struct squeue *q) {
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
}

/* Loop thread. The engine-side queue length (n_pending) bounds admission. */
int sched_submit(struct sched *s, struct sched_req *r) {
    struct squeue *q = &s->q;
    /* Validation that needs only immutable model facts happens here, on the
     * loop thread, so a bad request never reaches the engine. */
    if (r->p.n_prompt < 1) {
        snprintf(r->out.errmsg, sizeof(r->out.errmsg), "the prompt is empty");
        return SS_EINVAL;
    }
    for (int32_t i = 0; i < r->p.n_prompt; i++) {
        if (r->p.prompt[i] < 0 || r->p.prompt[i] >= s->n_vocab) {
            snprintf(r->out.errmsg, sizeof(r->out.errmsg),
                     "token id %d at position %d is outside the vocabulary [0, %d)", r->p.prompt[i], i,
                     s->n_vocab);
            return SS_EINVAL;
        }
    }
    if (r->p.max_tokens < 1) {
        snprintf(r->out.errmsg, sizeof(r->out.errmsg), "max_tokens must be at least 1");
        return SS_EINVAL;
    }
    if (r->p.logprobs > REQ_MAX_LOGPROBS) {
        snprintf(r->out.errmsg, sizeof(r->out.errmsg), "logprobs must be at most %d", REQ_MAX_LOGPROBS);
        return SS_EINVAL;
    }
    if (!(r->p.repetition_penalty > 0)) r->p.repetition_penalty = 1.0f;
    int64_t need = (int64_t)r->p.n_prompt + r->p.max_tokens;
    if (r->p.n_prompt >= s->n_ctx || need > s->n_ctx) {
        snprintf(r->out.errmsg, sizeof(r->out.errmsg),
                 "this model's maximum context length is %d tokens; the request has %d prompt tokens "
                 "and asks for %d completion tokens (n_prompt_tokens=%d)",
                 s->n_ctx, r->p.n_prompt, r->p.max_tokens, r->p.n_prompt);
        return SS_ETOOLONG;
    }
    /* A prompt that needs more pages than the whole pool can never run. */
    if (kv_pages_for(need) > eng_model_n_pages(s->model)) { /* worst case: every level keeps all */
        snprintf(r->out.errmsg, sizeof(r->out.errmsg),
                 "the request needs %d KV pages (n_prompt_tokens=%d plus max_tokens=%d) but the KV "
                 "cache has only %d pages of %d tokens",
                 kv_pages_for(need), r->p.n_prompt, r->p.max_tokens, eng_model_n_pages(s->model),
                 KV_PAGE_SLOTS);
        return SS_ETOOLONG;
    }
    r->out.n_prompt = r->p.n_prompt;
    r->t_submit = sched_now();

    pthread_mutex_lock(&q->lock);
    if (q->stop) {
        pthread_mutex_unlock(&q->lock);
        snprintf(r->out.errmsg, sizeof(r->out.errmsg), "the server is shutting down");
        return SS_EAGAIN;
    }
    if (q->n_pending >= s->opt.max_queued) {
        pthread_mutex_unlock(&q->lock);
        snprintf(r->out.errmsg, sizeof(r->out.errmsg),
                 "too many requests waiting (%d); retry later", s->opt.max_queued);
        return SS_EAGAIN;
    }
    sched_req_ref(r); /* the engine's reference */
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n_pending++;
    q->wake = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

void sched_cancel(struct sched *s, struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    r->cancelled = 1;
    pthread_mutex_unlock(&r->lock);
    squeue_wake(&s->q);
}

int req_is_cancelled(struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    int c = r->cancelled;
    pthread_mutex_unlock(&r->lock);
    return c;
}

void squeue_wake(struct squeue *q) {
    pthread_mutex_lock(&q->lock);
    q->wake = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

struct sched_req *squeue_take(struct squeue *q, int block, int *stop) {
    pthread_mutex_lock(&q->lock);
    while (block && !q->head && !q->wake && !q->stop) pthread_cond_wait(&q->cond, &q->lock);
    struct sched_req *list = q->head;
    q->head = q->tail = NULL;
    q->wake = 0;
    *stop = q->stop;
    pthread_mutex_unlock(&q->lock);
    return list;
}

void req_out_push(struct sched *s, struct sched_req *r, const char *text, size_t n, int32_t n_gen,
                  int finish, int error, const char *errmsg) {
    int call = 0;
    pthread_mutex_lock(&r->lock);
    struct req_out *o = &r->out;
    if (n > 0) {
        if (o->len + n + 1 > o->cap) {
            size_t cap = o->cap ? o->cap : 256;
            while (cap < o->len + n + 1) cap *= 2;
            char *nt = realloc(o->text, cap);
            if (nt) {
                o->text = nt;
                o->cap = cap;
            } else {
                /* Out of memory: end the request rather than lose text silently. */
                n = 0;
                finish = REQ_FINISH_ERROR;
                error = SS_ENOMEM;
                errmsg = "out of memory while buffering output";
            }
        }
        if (n > 0) {
            memcpy(o->text + o->len, text, n);
            o->len += n;
            o->text[o->len] = 0;
        }
    }
    if (n_gen > 0 && o->t_first_token == 0) o->t_first_token = sched_now() - r->t_submit;
    o->n_gen = n_gen;
    if (finish != REQ_FINISH_NONE && o->finish == REQ_FINISH_NONE) {
        o->finish = finish;
        o->error = error;
        if (errmsg) snprintf(o->errmsg, sizeof(o->errmsg), "%s", errmsg);
    }
    if (!r->notified) {
        r->notified = 1;
        call = 1;
    }
    pthread_mutex_unlock(&r->lock);
    if (call && s->notify) s->notify(s->notify_ud, r);
}

int req_out_push_tok(struct sched_req *r, const struct req_tok *t) {
    pthread_mutex_lock(&r->lock);
    struct req_out *o = &r->out;
    int rc = 0;
    if (o->n_toks == o->cap_toks) {
        int32_t cap = o->cap_toks ? o->cap_toks * 2 : 16;
        struct req_tok *nt = realloc(o->toks, sizeof(*nt) * (size_t)cap);
        if (!nt)
            rc = SS_ENOMEM;
        else {
            o->toks = nt;
            o->cap_toks = cap;
        }
    }
    if (rc == 0) o->toks[o->n_toks++] = *t;
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int sched_req_take(struct sched_req *r, struct req_out *dst) {
    pthread_mutex_lock(&r->lock);
    *dst = r->out;
    r->out.text = NULL; /* ownership moves to the caller */
    r->out.len = r->out.cap = 0;
    r->out.toks = NULL;
    r->out.n_toks = r->out.cap_toks = 0;
    r->notified = 0;
    int done = r->out.finish != REQ_FINISH_NONE;
    pthread_mutex_unlock(&r->lock);
    return done;
}
