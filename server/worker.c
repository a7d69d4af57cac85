/* worker.c - request inputs are parsed off the loop thread (issue 14).
 *
 * JSON parsing, chat template rendering, tokenisation (completions, chat,
 * /tokenize) and detokenisation (/detokenize) can take a second for a body of
 * megabytes; on the loop thread that would stall every other client. So a
 * POST body, once complete, becomes a job for a small pool of worker threads:
 *
 *   loop thread                          worker thread(s)
 *   body_complete -> srv_work_start:
 *     job (body moved in, +1 conn ref)
 *     push on w->head (w->lock) -------> pops, runs the api_* parser (pure)
 *     suspend the conn (CS_WORK)         pushes on w->done, uv_async_send
 *   on_async: pops every done job <-----
 *     c->job = job, resume, MHD_run
 *   handler (CS_WORK) -> srv_work_resumed: answers (tokenize, errors) or
 *     hands the parsed request to completion_submit.
 *
 * Only the loop thread touches conns, MHD and reference counts; a worker sees
 * the job's body, the model info (immutable while serving) and its own result
 * fields. The queue is bounded (SRV_WORK_MAX_JOBS waiting or running): beyond
 * it a request gets 503 + Retry-After. NOTE: not libuv's uv_queue_work pool
 * (shared and small, STYLE.md); these threads block SIGINT/SIGTERM like every
 * thread but the loop's (srv_signals_block, main.c).
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "server/http_internal.h"

struct srv_job {
    int route;                  /* enum api_route: what to run */
    const struct api_model_info *mi;
    const struct api_embed_config *ec; /* /v1/embeddings */
    struct api_buf body;        /* the request body (moved in from the conn) */
    struct srv_conn *conn;      /* loop thread only; the job holds one reference */
    /* results (written by the worker, read by the loop thread after the hand-back) */
    int rc;                     /* 0 or SS_E*; SS_ECANCELLED: never run (shutdown) */
    struct api_error err;
    struct api_buf out;         /* /tokenize, /detokenize: the 200 body */
    struct api_completion comp; /* completions, chat: the parsed request */
    int have_comp;
    struct api_embed embed;     /* /v1/embeddings: the parsed inputs */
    int have_embed;
    struct srv_job *next;
};

struct srv_worker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t th[SRV_WORK_THREADS];
    int n_th;
    struct srv_job *head, *tail; /* waiting (w->lock) */
    struct srv_job *done, *done_tail; /* finished, for the loop thread (w->lock) */
    int n_jobs;                  /* waiting + running + done, not yet handed back */
    int stop;
    uv_async_t async;
    struct srv *srv;
};

static void job_free(struct srv_job *j) {
    if (!j)
        return;
    api_buf_free(&j->body);
    api_buf_free(&j->out);
    if (j->have_comp)
        api_completion_free(&j->comp);
    if (j->have_embed)
        api_embed_free(&j->embed);
    free(j);
}

/* Worker thread: the pure parse of one body. */
static void job_run(struct srv_job *j) {
    const char *b = j->body.data;
    size_t n = j->body.len;
    switch (j->route) {
    case API_ROUTE_TOKENIZE:
        j->rc = api_tokenize(j->mi, b, n, &j->out, &j->err);
        break;
    case API_ROUTE_DETOKENIZE:
        j->rc = api_detokenize(j->mi, b, n, &j->out, &j->err);
        break;
    case API_ROUTE_EMBEDDINGS:
        j->rc = api_embed_parse(j->mi, j->ec, b, n, &j->embed, &j->err);
        j->have_embed = j->rc == 0;
        break;
    case API_ROUTE_CHAT:
        j->rc = api_chat_parse(j->mi, b, n, &j->comp, &j->err);
        j->have_comp = j->rc == 0;
        break;
    default:
        j->rc = api_completion_parse(j->mi, b, n, &j->comp, &j->err);
        j->have_comp = j->rc == 0;
        break;
    }
    api_buf_free(&j->body); /* the body is not needed any more: free it here, off the loop */
}

static void *worker_main(void *arg) {
    struct srv_worker *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->stop)
            break;
        struct srv_job *j = w->head;
        w->head = j->next;
        if (!w->head)
            w->tail = NULL;
        pthread_mutex_unlock(&w->lock);
        job_run(j);
        pthread_mutex_lock(&w->lock);
        j->next = NULL;
        if (w->done_tail)
            w->done_tail->next = j;
        else
            w->done = j;
        w->done_tail = j;
        uv_async_send(&w->async); /* any thread */
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* Loop thread: hands one finished (or cancelled) job back to its conn. */
static void job_deliver(struct srv *s, struct srv_job *j) {
    struct srv_conn *c = j->conn;
    j->conn = NULL;
    if (c->mc && !c->client_gone && c->state == CS_WORK) {
        c->job = j;
        conn_resume(c); /* the handler answers (srv_work_resumed) */
    } else {
        job_free(j); /* the client left meanwhile */
    }
    conn_unref(c);
    (void)s;
}

/* Loop thread: every finished job. */
static void on_done(uv_async_t *a) {
    struct srv_worker *w = a->data;
    pthread_mutex_lock(&w->lock);
    struct srv_job *list = w->done;
    w->done = w->done_tail = NULL;
    pthread_mutex_unlock(&w->lock);
    int any = 0;
    while (list) {
        struct srv_job *j = list;
        list = j->next;
        pthread_mutex_lock(&w->lock);
        w->n_jobs--;
        pthread_mutex_unlock(&w->lock);
        job_deliver(w->srv, j);
        any = 1;
    }
    if (any && w->srv->phase != SRV_STOPPED)
        srv_mhd_run(w->srv);
}

int srv_work_init(struct srv *s) {
    struct srv_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return -1;
    w->srv = s;
    if (pthread_mutex_init(&w->lock, NULL) != 0) {
        free(w);
        return -1;
    }
    if (pthread_cond_init(&w->cond, NULL) != 0 || uv_async_init(&s->loop, &w->async, on_done) != 0) {
        pthread_mutex_destroy(&w->lock);
        free(w);
        return -1;
    }
    w->async.data = w;
    s->work = w;
    for (int i = 0; i < SRV_WORK_THREADS; i++) {
        if (pthread_create(&w->th[i], NULL, worker_main, w) != 0)
            break;
        w->n_th++;
    }
    if (w->n_th == 0) {
        srv_work_stop(s);
        return -1;
    }
    return 0;
}

static void on_async_closed(uv_handle_t *h) {
    struct srv_worker *w = h->data;
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

void srv_work_stop(struct srv *s) {
    struct srv_worker *w = s->work;
    if (!w)
        return;
    s->work = NULL;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->n_th; i++)
        pthread_join(w->th[i], NULL); /* a running job finishes first */
    /* never run: cancelled; then everything goes back to its conn */
    for (struct srv_job *j = w->head; j; j = j->next) {
        j->rc = SS_ECANCELLED;
        api_error_set(&j->err, SS_EAGAIN, NULL, "server_shutting_down",
                      "the server is shutting down; retry the request");
    }
    if (w->head) {
        if (w->done_tail)
            w->done_tail->next = w->head;
        else
            w->done = w->head;
        w->done_tail = w->tail;
        w->head = w->tail = NULL;
    }
    on_done(&w->async);
    uv_close((uv_handle_t *)&w->async, on_async_closed);
}

/* ------------------------------------------------------------ conn side */

enum MHD_Result srv_work_start(struct srv_conn *c) {
    struct srv *s = c->srv;
    struct srv_worker *w = s->work;
    struct api_error e;
    struct srv_job *j = w ? calloc(1, sizeof(*j)) : NULL;
    if (!j) {
        srv_body_release(c);
        api_error_set(&e, SS_ENOMEM, NULL, NULL, NULL);
        return srv_respond_error(c, &e);
    }
    j->route = c->route;
    j->mi = &s->mi;
    j->ec = &s->ec;
    j->body = c->body; /* moved */
    api_buf_init(&c->body);
    int full;
    pthread_mutex_lock(&w->lock);
    full = w->stop || w->n_jobs >= SRV_WORK_MAX_JOBS;
    if (!full) {
        j->conn = c;
        c->refs++; /* the job's reference, dropped in job_deliver */
        if (w->tail)
            w->tail->next = j;
        else
            w->head = j;
        w->tail = j;
        w->n_jobs++;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    if (full) {
        job_free(j);
        srv_body_release(c); /* the body's share of --max-body-total */
        api_error_set(&e, SS_EAGAIN, NULL, "queue_full",
                      "too many requests are being parsed; retry later");
        return srv_respond_error(c, &e);
    }
    conn_set_state(c, CS_WORK);
    conn_suspend(c);
    return MHD_YES;
}

enum MHD_Result srv_work_resumed(struct srv_conn *c) {
    if (c->client_gone)
        return MHD_NO; /* closes the connection; a pending job is dropped when it returns */
    struct srv_job *j = c->job;
    if (!j) { /* not ours yet */
        conn_suspend(c);
        return MHD_YES;
    }
    c->job = NULL;
    srv_body_release(c); /* the worker freed the body: its share of --max-body-total goes back */
    enum MHD_Result ret;
    if (j->rc < 0) {
        ret = srv_respond_error(c, &j->err);
    } else if (!j->have_comp && !j->have_embed) {
        ret = srv_respond(c, 200, "application/json", &j->out, NULL, NULL);
    } else if (c->srv->phase >= SRV_CANCELLING) {
        struct api_error e;
        api_error_set(&e, SS_EAGAIN, NULL, "server_shutting_down",
                      "the server is shutting down; retry the request");
        ret = srv_respond_error(c, &e);
    } else if (j->have_embed) {
        ret = embed_submit(c, &j->embed); /* takes the inputs */
    } else {
        ret = completion_submit(c, &j->comp); /* takes what it keeps of comp */
    }
    job_free(j);
    return ret;
}

void srv_work_conn_free(struct srv_conn *c) {
    job_free(c->job);
    c->job = NULL;
}
