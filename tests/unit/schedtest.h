/* schedtest.h - a tiny scheduler client shared by the scheduler test runners
 * (test_sched.c, test_swa.c): requests with a fixed prompt pattern, a notify
 * callback, and polling until every request has finished. */
#ifndef SS_SCHEDTEST_H
#define SS_SCHEDTEST_H

#include <pthread.h>
#include <stdint.h>

#include "scheduler/sched.h"

/* Signalled by on_notify; wait_all sleeps on it. */
extern pthread_mutex_t g_lock;
extern pthread_cond_t g_cond;
extern int g_notes;
/* Optional: a request the engine thread cancels itself at the first notify
 * after g_cancel_after tokens (see schedtest.c). */
extern struct sched *g_cancel_sched;
extern struct sched_req *g_cancel_req;
extern int g_cancel_after;

/* Collects one request's output (text, token records) until it finishes. */
struct client {
    struct sched_req *r;
    char text[4096];
    size_t len;
    int done;
    struct req_out last;
    struct req_tok toks[512];
    int n_toks;
};

void on_notify(void *ud, struct sched_req *r);
void client_poll(struct client *c);
/* Polls cs[0, n) until all are done; fails the test after timeout_s seconds. */
void wait_all(struct client *cs, int n, double timeout_s);
/* A greedy request (ignore_eos) whose prompt is token 3 + (first*31 + i*7) % 250. */
struct sched_req *make_req(int32_t n_prompt, int32_t first, int32_t max_tokens);
void client_submit(struct sched *s, struct client *c, struct sched_req *r);
void clients_free(struct client *cs, int n);

#endif
