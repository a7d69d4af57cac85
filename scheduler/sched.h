/* sched.h - request lifecycle, the engine thread and its batching loop.
 *
 * Threads:
 *   - the loop thread (server) creates requests, submits and cancels them, and
 *     takes their output;
 *   - the engine thread (started by sched_start) owns the model, the KV page
 *     pool and every queue of the scheduler; it runs sched_step() in a loop.
 * The two share only the submission queue and each request's output buffer,
 * both behind mutexes in scheduler/queue.c. Requests are reference counted:
 * one reference for the creator (connection), one taken by sched_submit for the
 * engine; the last sched_req_unref frees it.
 */
#ifndef SS_SCHED_H
#define SS_SCHED_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/sampler.h"

struct eng_model;
struct sched;

enum req_finish { REQ_FINISH_NONE = 0, REQ_FINISH_STOP, REQ_FINISH_LENGTH, REQ_FINISH_ERROR,
                  REQ_FINISH_CANCELLED };

#define REQ_MAX_STOP 8

/* What the client asked for. Filled by api/ before submission; read-only after. */
struct req_params {
    int32_t *prompt;        /* malloc'd token ids, owned by the request */
    int32_t n_prompt;
    int32_t max_tokens;     /* >= 1 */
    struct smp_params smp;
    char *stop[REQ_MAX_STOP]; /* malloc'd NUL-terminated stop strings */
    int n_stop;
    int ignore_eos;
    int32_t min_tokens;     /* EOS and stop strings are ignored before this many tokens */
    float presence_penalty, frequency_penalty; /* 0 = off (output tokens) */
    float repetition_penalty;                  /* 1 = off (prompt and output tokens) */
    int32_t *bias_ids;      /* logit_bias: malloc'd, n_bias entries */
    float *bias_vals;
    int n_bias;
    int logprobs;           /* -1: none; N >= 0: chosen token's logprob + top N (N <= REQ_MAX_LOGPROBS) */
    int prompt_logprobs;    /* 1: also report logprobs of the prompt tokens (echo) */
};

#define REQ_MAX_LOGPROBS 20

/* One token with its log-probabilities (raw model distribution, before
 * penalties, bias and temperature, as vLLM reports them). */
struct req_tok {
    int32_t id;
    int prompt;             /* 1 for a prompt token (prompt_logprobs) */
    float lp;               /* log-probability of id; NAN for the first prompt token */
    int32_t n_top;
    int32_t top_ids[REQ_MAX_LOGPROBS];
    float top_lps[REQ_MAX_LOGPROBS];
};

/* Output accumulated by the engine thread, taken by the loop thread. */
struct req_out {
    char *text;             /* bytes produced since the last take (valid UTF-8) */
    size_t len, cap;
    int32_t n_prompt;       /* usage.prompt_tokens */
    int32_t n_gen;          /* tokens generated so far (usage.completion_tokens) */
    int finish;             /* enum req_finish, NONE while running */
    int error;              /* SS_E* when finish == ERROR */
    char errmsg[320];
    double t_first_token;   /* seconds since submission, 0 until known */
    struct req_tok *toks;   /* tokens since the last take, when logprobs >= 0 (caller frees) */
    int32_t n_toks, cap_toks;
};

struct sched_req {
    /* immutable after submit */
    uint64_t id;
    struct req_params p;
    void *user;                /* loop thread only (its connection state); the engine never reads it */
    double t_submit;           /* monotonic seconds */

    /* shared: protected by lock */
    pthread_mutex_t lock;
    int refs;
    int cancelled;             /* set by sched_cancel */
    int notified;              /* loop thread has a pending wake-up for it */
    struct req_out out;

    /* engine thread only */
    struct sched_req *next;    /* queue link */
    void *eng;                 /* engine-side sequence state (sched.c) */
};

typedef void (*sched_notify_fn)(void *ud, struct sched_req *r);

struct sched_options {
    int max_num_seqs;           /* running sequences at once (default 64) */
    int max_batched_tokens;     /* tokens per step (default 2048) */
    int max_queued;             /* waiting requests before 503 (default 256) */
    int no_prefix_cache;        /* 1 disables prefix caching */
};

/* Creates the scheduler over a loaded model (not owned). notify is called on the
 * engine thread whenever a request has new output or finished, without r->lock
 * held (it may call sched_req_ref); it must be cheap and thread-safe (the
 * server pushes onto a ready list and uv_async_send()s). It is called again
 * only after the loop thread's sched_req_take cleared the pending wake-up.
 * Returns NULL on OOM. */
struct sched *sched_new(struct eng_model *m, const struct sched_options *o, sched_notify_fn notify,
                        void *ud);
int sched_start(struct sched *s);          /* spawns the engine thread */
void sched_stop(struct sched *s);          /* cancels everything, joins the thread */
void sched_free(struct sched *s);

/* Loop thread. Allocates a request with one reference (the caller's). */
struct sched_req *sched_req_new(void);
void sched_req_ref(struct sched_req *r);
void sched_req_unref(struct sched_req *r);  /* frees at zero (any thread) */

/* Loop thread. Validates against the model (prompt length vs context, token ids)
 * and queues. Returns 0, SS_ETOOLONG / SS_EINVAL (with r->out.errmsg set), or
 * SS_EAGAIN if the waiting queue is full. Takes its own reference on success. */
int sched_submit(struct sched *s, struct sched_req *r);
/* Any thread. Marks the request cancelled; the engine frees it at its next step. */
void sched_cancel(struct sched *s, struct sched_req *r);

/* Loop thread: copies the output state into *dst and moves the pending text
 * out: dst->text becomes a malloc'd buffer (dst->len bytes, NUL-terminated, or
 * NULL when nothing is pending) that the caller frees; likewise dst->toks
 * (dst->n_toks entries, logprobs only). Clears r->notified, so
 * the next output triggers a new notify. Returns 1 if the request is finished
 * (then all of its output has been taken). */
int sched_req_take(struct sched_req *r, struct req_out *dst);

/* Counters for /metrics and /health (any thread, approximate). */
/* A Prometheus-style histogram: count[i] observations <= le[i] (not cumulative;
 * the exporter accumulates), count[n] above the last bound. */
#define SCHED_HIST_MAX 20
struct sched_hist {
    int n;
    double le[SCHED_HIST_MAX];
    uint64_t count[SCHED_HIST_MAX + 1];
    uint64_t total;
    double sum;
};
void sched_hist_observe(struct sched_hist *h, double v);

struct sched_stats {
    int n_running, n_waiting;
    struct sched_hist ttft_s;       /* submission -> first token */
    struct sched_hist itl_s;        /* between consecutive tokens of a request */
    struct sched_hist e2e_s;        /* submission -> finish */
    struct sched_hist queue_s;      /* submission -> first admission */
    struct sched_hist batch_tokens; /* tokens per engine step */
    uint64_t n_finished[5];         /* by enum req_finish */
    uint64_t n_steps;
    double busy_s;                  /* seconds spent in forward passes */
    uint64_t n_prompt_tokens, n_gen_tokens, n_requests_done, n_preemptions;
    uint64_t n_prefix_queries, n_prefix_hits; /* tokens looked up / found cached */
    /* KV memory in units (16 token slots of one layer; see engine.h) */
    int32_t pages_used;         /* units referenced by running or waiting sequences */
    int32_t pages_cached;       /* units unreferenced, kept for prefix reuse (evictable) */
    int32_t pages_total;        /* units in the pool */
    int n_levels;               /* 1, or SUBLLM levels */
    int32_t level_units[8];     /* units held per level (index < n_levels) */
    uint64_t level_tokens[8];   /* tokens that reached each level ([0]: every computed token) */
    struct eng_lte_stats lte;   /* LTE sparsity (engine.h; n_layers 0 without LTE) */
};
void sched_get_stats(struct sched *s, struct sched_stats *st);

#endif
