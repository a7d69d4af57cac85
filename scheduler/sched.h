/* sched.h - request lifecycle, the engine thread and its batching loop.
 *
 * Module scheduler/: owns requests from submission to finish, the waiting and
 * running queues, the batching policy, the KV unit pool and block tables
 * (kv.h), the prefix cache and preemption. May include engine/ only.
 *
 * Threads:
 *   - the loop thread (server) creates requests, submits and cancels them, and
 *     takes their output;
 *   - the engine thread (started by sched_start) owns the model, the KV page
 *     pool and every queue of the scheduler; it runs one step at a time:
 *     schedule() decides the batch, the engine runs it, one update step applies
 *     the output (advance the KV, accept each token), and every request ends
 *     through one finish path (scheduler/sched.c).
 * The two share only the submission queue, the statistics snapshot, each
 * request's output buffer and the server's ready list, all behind mutexes in
 * scheduler/queue.c. Requests are reference counted: one reference for the
 * creator (connection), one taken by sched_submit for the engine; the last
 * sched_req_unref frees it.
 *
 * Each function below names the threads that may call it. "Any thread" ones
 * are pure or lock what they touch.
 */
#ifndef SS_SCHED_H
#define SS_SCHED_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/sampler.h"

struct eng_model;
struct gram;
struct sched;

enum req_finish { REQ_FINISH_NONE = 0, REQ_FINISH_STOP, REQ_FINISH_LENGTH, REQ_FINISH_ERROR,
                  REQ_FINISH_CANCELLED };

#define REQ_MAX_STOP 8        /* stop strings per request */
#define REQ_MAX_STOP_LEN 1024 /* bytes per stop string */

/* A request's stop strings: immutable once made and shared, reference
 * counted, by the n choices of one request (never copied per choice). The
 * lengths are computed once here: the per-token search never runs strlen. */
struct req_stops {
    int refs;                    /* atomic; any thread */
    int n;                       /* 1..REQ_MAX_STOP */
    size_t max_len;              /* the longest (the text held back per token) */
    size_t len[REQ_MAX_STOP];
    const char *s[REQ_MAX_STOP]; /* NUL-terminated, inside this allocation */
};
#define REQ_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

/* What the client asked for. Filled by api/ before submission; read-only after.
 * Its lifecycle (defaults, deep copy, free) and its validation against the
 * model are in scheduler/params.c, below. */
struct req_params {
    int32_t *prompt;        /* malloc'd token ids, owned by the request */
    int32_t n_prompt;
    int32_t max_tokens;     /* >= 1 */
    struct smp_params smp;
    struct req_stops *stops; /* NULL: none; one reference owned by the params */
    int ignore_eos;
    int32_t min_tokens;     /* EOS and stop strings are ignored before this many tokens */
    float presence_penalty, frequency_penalty; /* 0 = off (output tokens) */
    float repetition_penalty;                  /* 1 = off (prompt and output tokens) */
    int32_t *bias_ids;      /* logit_bias: malloc'd, n_bias entries */
    float *bias_vals;
    int n_bias;
    int logprobs;           /* -1: none; N >= 0: chosen token's logprob + top N (N <= REQ_MAX_LOGPROBS) */
    int prompt_logprobs;    /* 1: also report logprobs of the prompt tokens (echo) */
    struct gram *grammar;   /* constrained decoding (engine/grammar.h): one reference owned by
                             * the params (req_params_free drops it, req_params_copy takes one); NULL = free */
    int32_t priority;       /* vLLM's "priority": lower runs first among waiting requests and is
                             * preempted last; 0 by default */
    int pooling;            /* embedding request (ENG_POOL_MEAN, _CLS or _LAST): the prompt is
                             * prefilled only, never sampled, and the request ends with the
                             * pooled, L2-normalised final hidden state (req_out.embd);
                             * max_tokens must be 0. 0 (ENG_POOL_NONE): generation */
    int32_t spec_max;       /* speculative decoding (scheduler/spec.c): the most draft tokens a
                             * step may verify for this request; REQ_SPEC_DEFAULT (-1) = the
                             * server's --spec-tokens, 0 = off ("speculative": false) */
};
#define REQ_SPEC_DEFAULT (-1)
#define REQ_SPEC_MAX_TOKENS 16 /* the most draft tokens per sequence and step (flag and request) */

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
    int32_t n_cached;       /* prompt tokens found in the prefix cache at first admission */
    int32_t n_gen;          /* tokens generated so far (usage.completion_tokens) */
    int finish;             /* enum req_finish, NONE while running */
    int error;              /* SS_E* when finish == ERROR */
    char errmsg[320];
    double t_first_token;   /* seconds since submission, 0 until known */
    int admitted;           /* 1 once the request left the waiting queue for the batch */
    struct req_tok *toks;   /* tokens since the last take, when logprobs >= 0 (caller frees) */
    int32_t n_toks, cap_toks;
    float *embd;            /* embedding requests: the vector [n_embd], set with the STOP
                             * finish (moved out by sched_req_take: the caller frees) */
    int32_t n_embd;
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
    int queue_exempt;          /* atomic, any thread: --max-queue-time no longer applies
                                * (sched_queue_exempt: a sibling choice was admitted) */
    int notified;              /* loop thread has a pending wake-up for it */
    struct req_out out;

    /* engine thread only */
    struct sched_req *next;    /* queue link */
    void *eng;                 /* engine-side sequence state (struct seq), NULL before admission */

    /* the ready list that holds it (struct sched_ready), under that list's lock */
    struct sched_req *ready_next;
    int ready_listed;
};

typedef void (*sched_notify_fn)(void *ud, struct sched_req *r);

struct sched_options {
    int max_num_seqs;           /* running sequences at once (default 64) */
    int max_batched_tokens;     /* tokens per step (default 2048) */
    int max_queued;             /* waiting requests before 503 (default 256) */
    int no_prefix_cache;        /* 1 disables prefix caching */
    double max_queue_time;      /* seconds a request may wait before its first admission;
                                 * then it ends with finish ERROR, error SS_EAGAIN. 0: no limit */
    int notify_admitted;        /* 1: notify also when a request is first admitted (out.admitted
                                 * set, no output yet): a server answers a stream's headers then */
    int no_swa_recycle;         /* 1: sliding-window layers keep every page (no recycling) */
    /* Speculative decoding without a draft model (scheduler/spec.c): n-gram
     * (prompt-lookup) drafts verified in the normal batch. All 0: off. */
    int spec_ngram;             /* 1: on (--speculative ngram) */
    int spec_tokens;            /* drafts per sequence and step, 1..REQ_SPEC_MAX_TOKENS (default 3) */
    int spec_ngram_min;         /* shortest suffix looked up, >= 1 (default 2) */
    int spec_ngram_max;         /* longest, >= spec_ngram_min, <= SCHED_SPEC_NGRAM_MAX (default 5) */
    int spec_max_batch_tokens;  /* drafts go into a step only while its decode tokens plus its
                                 * drafts stay within this (default 4, at most
                                 * SCHED_SPEC_MAX_BATCH_TOKENS) */
};
#define SCHED_SPEC_NGRAM_MAX 16
#define SCHED_SPEC_MAX_BATCH_TOKENS 64 /* each is a logits row the scheduler keeps room for */
/* the defaults (a 0 field in sched_options takes them) */
#define SCHED_SPEC_DEF_TOKENS 3
#define SCHED_SPEC_DEF_NGRAM_MIN 2
#define SCHED_SPEC_DEF_NGRAM_MAX 5
#define SCHED_SPEC_DEF_BATCH_TOKENS 4

/* ---- request parameters (params.c; any thread, pure) ---- */

/* Defaults, what the engine reads as "off": max_tokens 16, temperature 1,
 * top_p 1, repetition_penalty 1, logprobs -1, the rest 0 or NULL. */
void req_params_init(struct req_params *p);
/* Deep copy of src into dst (dst is overwritten, not freed first). 0 or
 * SS_ENOMEM (dst then owns nothing). */
int req_params_copy(struct req_params *dst, const struct req_params *src);
/* Frees what p owns (prompt, stop strings, logit bias) and empties those
 * fields; the scalar fields are kept. p may be NULL. */
void req_params_free(struct req_params *p);
/* Stop strings s[i] of len[i] bytes (each 1..REQ_MAX_STOP_LEN, no NUL
 * inside; n in 1..REQ_MAX_STOP) in one allocation, one reference. NULL on
 * OOM or bad arguments. Any thread. */
struct req_stops *req_stops_new(const char *const *s, const size_t *len, int n);
struct req_stops *req_stops_ref(struct req_stops *st); /* returns st; NULL ok */
void req_stops_unref(struct req_stops *st);            /* frees at the last; NULL ok */

/* What a request is checked against: immutable facts of the loaded model. */
struct sched_limits {
    int32_t n_ctx;   /* tokens per sequence, prompt and completion */
    int32_t n_vocab; /* valid token ids: [0, n_vocab) */
    int32_t n_pages; /* KV pages of KV_PAGE_SLOTS tokens in the pool; 0: not checked */
};
/* The field a failed check names (the api's "param"). */
enum sched_field { SCHED_FIELD_NONE = 0, SCHED_FIELD_PROMPT, SCHED_FIELD_MAX_TOKENS };

/* Prompt token ids inside the vocabulary. 0 or SS_EINVAL with msg (cap bytes)
 * naming the id, its index and the vocabulary size. */
int sched_check_prompt(const struct sched_limits *lim, const int32_t *ids, int32_t n, char *msg,
                       size_t cap);
/* Can n_prompt tokens plus max_tokens generated ones ever run: the prompt
 * leaves room in the context, the total fits the context, and the worst case
 * fits the KV pool. 0 or SS_ETOOLONG with msg and *field (PROMPT or MAX_TOKENS). */
int sched_check_lengths(const struct sched_limits *lim, int32_t n_prompt, int32_t max_tokens,
                        char *msg, size_t cap, int *field);
/* Everything sched_submit checks: a non-empty prompt, max_tokens >= 1,
 * logprobs <= REQ_MAX_LOGPROBS, then both checks above. An embedding request
 * (p->pooling) instead needs max_tokens 0, a known pooling and a prompt of at
 * most n_ctx tokens that fits the KV pool. 0, SS_EINVAL or SS_ETOOLONG with
 * msg and *field. */
int sched_check_params(const struct sched_limits *lim, const struct req_params *p, char *msg,
                       size_t cap, int *field);

/* ---- scheduler lifecycle (sched.c) ---- */

/* Loop thread. Creates the scheduler over a loaded model (not owned). notify
 * is called on the engine thread whenever a request has new output or
 * finished (for a scheduler stopped before it started: on the thread calling
 * sched_stop), without r->lock held (it may call sched_req_ref); it must be
 * cheap and thread-safe (the server pushes onto a struct sched_ready and
 * uv_async_send()s). It is called again only after the loop thread's
 * sched_req_take cleared the pending wake-up. Returns NULL on OOM. */
struct sched *sched_new(struct eng_model *m, const struct sched_options *o, sched_notify_fn notify,
                        void *ud);
/* Loop thread: spawns the engine thread. 0 or SS_EINTERNAL. */
int sched_start(struct sched *s);
/* Loop thread: refuses new submissions, ends every request (finish ERROR,
 * "the server is shutting down"), joins the engine thread. No notify after it
 * returns. Idempotent; also ends what was submitted to a scheduler never started. */
void sched_stop(struct sched *s);
/* Loop thread: sched_stop, then frees. s may be NULL. */
void sched_free(struct sched *s);
/* Any thread: the limits sched_submit checks against. */
void sched_get_limits(const struct sched *s, struct sched_limits *lim);

/* ---- requests (queue.c) ---- */

/* Loop thread. Allocates a request with one reference (the caller's) and
 * default parameters (req_params_init). NULL on OOM. */
struct sched_req *sched_req_new(void);
void sched_req_ref(struct sched_req *r);    /* any thread */
void sched_req_unref(struct sched_req *r);  /* any thread; frees (with its params) at zero */

/* Loop thread. Validates against the model (sched_check_params) and queues.
 * Returns 0, SS_ETOOLONG / SS_EINVAL (with r->out.errmsg set), or SS_EAGAIN
 * if the waiting queue is full or the scheduler stopping. Takes its own
 * reference on success. */
int sched_submit(struct sched *s, struct sched_req *r);
/* Any thread. Marks the request cancelled; the engine ends it (finish
 * CANCELLED) at its next step. */
void sched_cancel(struct sched *s, struct sched_req *r);
/* The request's client is already being served (another choice of its
 * submission was admitted): it keeps waiting for a seat past --max-queue-time
 * instead of failing with queue_timeout. Any thread; r may be NULL. */
void sched_queue_exempt(struct sched_req *r);

/* Loop thread: copies the output state into *dst and moves the pending text
 * out: dst->text becomes a malloc'd buffer (dst->len bytes, NUL-terminated, or
 * NULL when nothing is pending) that the caller frees; likewise dst->toks
 * (dst->n_toks entries, logprobs only) and dst->embd. Clears r->notified, so
 * the next output triggers a new notify. Returns 1 if the request is finished
 * (then all of its output has been taken). */
int sched_req_take(struct sched_req *r, struct req_out *dst);

/* ---- the ready list: requests with news for the loop thread (queue.c) ----
 * The server's notify callback pushes (engine thread) and wakes its loop; the
 * loop thread pops. Intrusive (sched_req.ready_next): a push never allocates. */
struct sched_ready {
    pthread_mutex_t lock;
    struct sched_req *head, *tail;
};
int sched_ready_init(struct sched_ready *rl);   /* loop thread; 0 or SS_EINTERNAL */
/* Loop thread, once the engine thread has stopped: drops every listed request. */
void sched_ready_destroy(struct sched_ready *rl);
/* Any thread: lists r (taking a reference) unless it is listed already. */
void sched_ready_push(struct sched_ready *rl, struct sched_req *r);
/* Loop thread: unlists up to cap requests, oldest first, into out; each keeps
 * the reference its push took (the caller drops it). Returns how many. */
size_t sched_ready_pop(struct sched_ready *rl, struct sched_req **out, size_t cap);

/* ---- statistics (stats.c): counters for /metrics and /health ---- */
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
/* Any thread, on a histogram it owns: counts one observation. */
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
    uint64_t n_embed_done, n_embed_tokens;    /* embedding sequences finished with a vector, and
                                               * their prompt tokens (also in n_prompt_tokens) */
    /* KV memory in units (16 token slots of one layer; see engine.h) */
    int32_t pages_used;         /* units referenced by running or waiting sequences */
    int32_t pages_cached;       /* units unreferenced, kept for prefix reuse (evictable) */
    int32_t pages_total;        /* units in the pool */
    int n_levels;               /* 1, or SUBLLM levels */
    int32_t level_units[8];     /* units held per level (index < n_levels) */
    uint64_t level_tokens[8];   /* tokens that reached each level ([0]: every computed token) */
    struct eng_lte_stats lte;   /* LTE sparsity (engine.h; n_layers 0 without LTE) */
    /* speculative decoding (vLLM's spec_decode_* counters) */
    uint64_t n_spec_drafts;         /* verifications: one sequence's drafts in one step */
    uint64_t n_spec_draft_tokens;   /* draft tokens verified */
    uint64_t n_spec_accepted;       /* draft tokens accepted */
    struct sched_hist spec_accepted; /* accepted draft tokens per verification */
};
/* Any thread: the snapshot the engine published last. Counters, pages and
 * queue lengths are exact for everything a caller has already seen finish:
 * the engine publishes before it pushes a request's end. */
void sched_get_stats(struct sched *s, struct sched_stats *st);

#endif
