/* schedtest.c - the scheduler tests' tiny client (schedtest.h). */
#include "schedtest.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
int g_notes;

/* Optional: a request the engine thread cancels itself at the first notify
 * after g_cancel_after tokens (a client that leaves mid-generation,
 * deterministically). Notifies coalesce until the client takes the output, so
 * only the first token is sure to notify. */
struct sched *g_cancel_sched;
struct sched_req *g_cancel_req;
int g_cancel_after;

void on_notify(void *ud, struct sched_req *r) {
    (void)ud;
    if (r == g_cancel_req && r->out.n_gen >= g_cancel_after) sched_cancel(g_cancel_sched, r);
    pthread_mutex_lock(&g_lock);
    g_notes++;
    pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_lock);
}

void client_poll(struct client *c) {
    if (c->done) return;
    struct req_out o = {0};
    int done = sched_req_take(c->r, &o);
    if (o.text) {
        size_t n = o.len < sizeof(c->text) - 1 - c->len ? o.len : sizeof(c->text) - 1 - c->len;
        memcpy(c->text + c->len, o.text, n);
        c->len += n;
        c->text[c->len] = 0;
        free(o.text);
    }
    for (int32_t i = 0; i < o.n_toks && c->n_toks < 512; i++) c->toks[c->n_toks++] = o.toks[i];
    free(o.toks);
    o.toks = NULL;
    o.text = NULL;
    c->last = o;
    c->done = done;
}

void wait_all(struct client *cs, int n, double timeout_s) {
    double t0 = (double)time(NULL);
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            client_poll(&cs[i]);
            left += !cs[i].done;
        }
        if (!left) return;
        ck_assert_msg((double)time(NULL) - t0 < timeout_s, "requests did not finish in time");
        pthread_mutex_lock(&g_lock);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g_cond, &g_lock, &ts);
        pthread_mutex_unlock(&g_lock);
    }
}

struct sched_req *make_req(int32_t n_prompt, int32_t first, int32_t max_tokens) {
    struct sched_req *r = sched_req_new();
    ck_assert_ptr_nonnull(r);
    r->p.prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    for (int32_t i = 0; i < n_prompt; i++) r->p.prompt[i] = 3 + (first * 31 + i * 7) % 250;
    r->p.n_prompt = n_prompt;
    r->p.max_tokens = max_tokens;
    r->p.smp.temperature = 0;
    r->p.ignore_eos = 1;
    return r;
}

void client_submit(struct sched *s, struct client *c, struct sched_req *r) {
    memset(c, 0, sizeof(*c));
    c->r = r;
    ck_assert_int_eq(sched_submit(s, r), 0);
}

void clients_free(struct client *cs, int n) {
    for (int i = 0; i < n; i++) sched_req_unref(cs[i].r);
}

