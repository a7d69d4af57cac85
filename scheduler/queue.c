/* queue.c - every lock and atomic shared by the loop and engine threads
 * lives here: request reference counting, the submission queue, the
 * statistics snapshot, output hand-off and the server's ready list. The rest
 * of the scheduler is engine-thread code without locks.
 *
 *   loop thread                              engine thread
 *   sched_submit ──> squeue (q->lock) ──────> squeue_take / squeue_left
 *   sched_stop ───> q->stop (q->lock) ──────> squeue_take (stop = 1)
 *   sched_cancel ──> r->cancelled (r->lock) ─> req_is_cancelled
 *   sched_req_take <── r->out (r->lock) <──── req_out_push ──> notify()
 *   sched_ready_pop <── sched_ready (rl->lock) <── sched_ready_push (in notify)
 *   sched_get_stats <── q->stats (q->stats_lock) <── squeue_stats_write
 *
 * Lock order: a ready list's lock, then a request's lock; no other lock is
 * ever held while another is taken.
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
    req_params_init(&r->p);
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
    req_params_free(&r->p);
    free(r->out.toks);
    free(r->out.text);
    free(r->out.embd);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int squeue_init(struct squeue *q) {
    memset(q, 0, sizeof(*q));
    if (pthread_mutex_init(&q->lock, NULL) != 0) return SS_EINTERNAL;
    if (pthread_mutex_init(&q->stats_lock, NULL) != 0) {
        pthread_mutex_destroy(&q->lock);
        return SS_EINTERNAL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&q->stats_lock);
        pthread_mutex_destroy(&q->lock);
        return SS_EINTERNAL;
    }
    return 0;
}

void squeue_destroy(struct squeue *q) {
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->stats_lock);
    pthread_mutex_destroy(&q->lock);
}

/* Appends r to the list head..tail, linked through r->next (submission
 * queue) or r->ready_next (ready list). Caller holds the list's lock. */
static void req_append(struct sched_req **head, struct sched_req **tail, struct sched_req *r, int ready) {
    struct sched_req **link = ready ? &r->ready_next : &r->next;
    *link = NULL;
    if (*tail)
        *(ready ? &(*tail)->ready_next : &(*tail)->next) = r;
    else
        *head = r;
    *tail = r;
}

/* Loop thread. The engine-side queue length (n_pending) bounds admission. */
int sched_submit(struct sched *s, struct sched_req *r) {
    struct squeue *q = &s->q;
    /* Checks need only immutable model facts: they run here, on the loop
     * thread, so a bad request never reaches the engine. */
    int field;
    int rc = sched_check_params(&s->lim, &r->p, r->out.errmsg, sizeof(r->out.errmsg), &field);
    if (rc != 0) return rc;
    if (!(r->p.repetition_penalty > 0)) r->p.repetition_penalty = 1.0f;
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
    req_append(&q->head, &q->tail, r, 0);
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

void sched_queue_exempt(struct sched_req *r) {
    if (r)
        __atomic_store_n(&r->queue_exempt, 1, __ATOMIC_RELAXED);
}

int req_is_queue_exempt(const struct sched_req *r) {
    return __atomic_load_n(&r->queue_exempt, __ATOMIC_RELAXED);
}

int req_is_cancelled(struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    int c = r->cancelled;
    pthread_mutex_unlock(&r->lock);
    return c;
}

/* Wakes the engine's squeue_take, for news (a cancel) or to stop. */
static void squeue_signal(struct squeue *q, int stop) {
    pthread_mutex_lock(&q->lock);
    q->wake = 1;
    if (stop) q->stop = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

void squeue_wake(struct squeue *q) {
    squeue_signal(q, 0);
}

void squeue_stop(struct squeue *q) {
    squeue_signal(q, 1);
}

void squeue_left(struct squeue *q) {
    pthread_mutex_lock(&q->lock);
    q->n_pending--;
    pthread_mutex_unlock(&q->lock);
}

void squeue_stats_write(struct squeue *q, const struct sched_stats *st) {
    pthread_mutex_lock(&q->stats_lock);
    q->stats = *st;
    pthread_mutex_unlock(&q->stats_lock);
}

void squeue_stats_read(struct squeue *q, struct sched_stats *st) {
    pthread_mutex_lock(&q->stats_lock);
    *st = q->stats;
    pthread_mutex_unlock(&q->stats_lock);
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

void req_out_set_cached(struct sched_req *r, int32_t n) {
    pthread_mutex_lock(&r->lock);
    r->out.n_cached = n;
    pthread_mutex_unlock(&r->lock);
}

/* r->lock held: 1 if the loop thread has no wake-up pending for r yet (the
 * caller then notifies, after unlocking). */
static int mark_notified(struct sched_req *r) {
    if (r->notified) return 0;
    r->notified = 1;
    return 1;
}

void req_out_push(struct sched *s, struct sched_req *r, const char *text, size_t n, int32_t n_gen,
                  int finish, int error, const char *errmsg) {
    int call;
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
    call = mark_notified(r);
    pthread_mutex_unlock(&r->lock);
    if (call && s->notify) s->notify(s->notify_ud, r);
}

void req_out_admitted(struct sched *s, struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    r->out.admitted = 1;
    int call = s->opt.notify_admitted && mark_notified(r);
    pthread_mutex_unlock(&r->lock);
    if (call && s->notify) s->notify(s->notify_ud, r);
}

void req_out_set_embedding(struct sched_req *r, float *v, int32_t n) {
    pthread_mutex_lock(&r->lock);
    free(r->out.embd);
    r->out.embd = v;
    r->out.n_embd = n;
    pthread_mutex_unlock(&r->lock);
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
    r->out.embd = NULL;
    r->out.n_embd = 0;
    r->notified = 0;
    int done = r->out.finish != REQ_FINISH_NONE;
    pthread_mutex_unlock(&r->lock);
    return done;
}

/* ---------- the ready list ---------- */

int sched_ready_init(struct sched_ready *rl) {
    memset(rl, 0, sizeof(*rl));
    return pthread_mutex_init(&rl->lock, NULL) == 0 ? 0 : SS_EINTERNAL;
}

void sched_ready_push(struct sched_ready *rl, struct sched_req *r) {
    pthread_mutex_lock(&rl->lock);
    if (!r->ready_listed) {
        r->ready_listed = 1;
        sched_req_ref(r);
        req_append(&rl->head, &rl->tail, r, 1);
    }
    pthread_mutex_unlock(&rl->lock);
}

size_t sched_ready_pop(struct sched_ready *rl, struct sched_req **out, size_t cap) {
    size_t n = 0;
    pthread_mutex_lock(&rl->lock);
    while (n < cap && rl->head) {
        struct sched_req *r = rl->head;
        rl->head = r->ready_next;
        r->ready_next = NULL;
        r->ready_listed = 0;
        out[n++] = r;
    }
    if (!rl->head) rl->tail = NULL;
    pthread_mutex_unlock(&rl->lock);
    return n;
}

void sched_ready_destroy(struct sched_ready *rl) {
    struct sched_req *batch[64];
    size_t n;
    while ((n = sched_ready_pop(rl, batch, 64)) > 0)
        for (size_t i = 0; i < n; i++) sched_req_unref(batch[i]);
    pthread_mutex_destroy(&rl->lock);
}
