/* sched_internal.h - scheduler-private structures shared by sched.c and queue.c. */
#ifndef SS_SCHED_INTERNAL_H
#define SS_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "scheduler/kv.h"
#include "scheduler/sched.h"

/* Engine-side state of one request (engine thread only). */
struct seq {
    struct sched_req *req;
    int32_t *tokens;       /* [cap] prompt then generated ids */
    int32_t n_tokens, cap;
    int32_t n_prompt;
    int32_t n_computed;    /* tokens whose K/V are in the cache */
    int32_t n_gen;
    struct kv_table tables[ENG_MAX_LEVELS]; /* per level; [0] holds every token */
    int32_t level_n_past[ENG_MAX_LEVELS];   /* K/V entries stored at each level ([0] = n_computed) */
    struct smp_state rng;
    struct tok_stream ts;
    char *hold;            /* decoded text not yet released (stop-string lookahead) */
    size_t n_hold, cap_hold;
    uint64_t admit_order;  /* increases with each admission (preemption victim choice) */
    int plp;               /* prompt logprobs wanted: prefill in small chunks with all logits */
    int32_t plp_next;
    double t_last;         /* time of the previous token (inter-token latency) */      /* next prompt position to report (recompute after preemption skips) */
};

/* Cross-thread submission queue (queue.c). */
struct squeue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct sched_req *head, *tail; /* submitted, not yet taken by the engine */
    int n_pending;                 /* submitted + waiting on the engine side */
    int wake;                      /* a cancel or submit happened */
    int stop;
};

struct sched {
    struct eng_model *model;
    const struct tok *tok;
    struct sched_options opt;
    sched_notify_fn notify;
    void *notify_ud;
    int32_t n_ctx, n_vocab;

    struct squeue q;
    pthread_t thread;
    int started;

    /* engine thread only */
    struct kv_pool *pool;
    struct seq **running;  /* [max_num_seqs] in admission order */
    int n_running;
    struct seq **waiting;  /* FIFO ring, front = next to admit */
    int n_waiting, cap_waiting;
    uint64_t admit_counter;
    int n_levels;
    int n_layers;
    int *layer_level;      /* [n_layers] level of each layer */
    int *layer_index;      /* [n_layers] its index among the layers of its level */
    int level_layers[ENG_MAX_LEVELS];
    /* step scratch */
    const int32_t **b_layer_pages; /* [max_num_seqs][n_layers] per-layer unit tables */
    int32_t (*b_kept)[ENG_MAX_LEVELS]; /* [max_num_seqs] tokens kept per level this step */
    int32_t *b_tokens;
    struct eng_seq *b_seqs;
    struct seq **b_owner;
    float *logits;         /* [max_num_seqs + SCHED_PLP_CHUNK][n_vocab] */
    void *smp_work;
    float *raw_row;        /* [n_vocab] unmodified logits, for logprobs */
    int32_t *eog_ids;      /* end-of-generation ids (min_tokens bans them) */
    int32_t n_eog;
    char *piece;           /* detokenizer output for one token */
    size_t piece_cap;

    /* stats, under stats_lock */
    pthread_mutex_t stats_lock;
    struct sched_stats stats;
};

/* Prompt tokens per step of a sequence that wants prompt logprobs (every row's
 * logits are kept for it, so its chunks are small). */
#define SCHED_PLP_CHUNK 32

double sched_now(void);
void stats_add(struct sched *s, uint64_t prompt_tok, uint64_t gen_tok, int done, int preempt);
/* A request ends: end-to-end latency, finish reason, done counter. */
void stats_finish(struct sched *s, struct seq *q, int finish);

/* seq.c (engine thread) */
struct seq *seq_new(struct sched *s, struct sched_req *r);
void seq_free(struct sched *s, struct seq *q);
int32_t seq_sample(struct sched *s, struct seq *q, float *logits);
void seq_prompt_logprobs(struct sched *s, struct seq *q, const float *rows, int32_t pos0, int32_t n);
int seq_accept_token(struct sched *s, struct seq *q, int32_t tok);
/* Room for n more tokens at every level (worst case: all kept). 0, SS_EAGAIN
 * or SS_ENOMEM; on EAGAIN some levels may have grown (harmless). */
int seq_reserve(struct sched *s, struct seq *q, int32_t n);
/* Returns every level's blocks to the pool and forgets the cached K/V. */
void seq_release_kv(struct sched *s, struct seq *q);

/* queue.c */
int squeue_init(struct squeue *q);
void squeue_destroy(struct squeue *q);
/* Engine thread: takes every newly submitted request (a list linked by ->next).
 * If block and nothing to do, waits until a submission, cancel or stop. */
struct sched_req *squeue_take(struct squeue *q, int block, int *stop);
void squeue_wake(struct squeue *q);
/* Engine thread: append output bytes/tokens and optionally finish; calls notify
 * when the loop thread has no pending wake-up for this request. */
void req_out_push(struct sched *s, struct sched_req *r, const char *text, size_t n, int32_t n_gen,
                  int finish, int error, const char *errmsg);
int req_is_cancelled(struct sched_req *r);
/* Engine thread: appends one token record (logprobs); 0 or SS_ENOMEM. */
int req_out_push_tok(struct sched_req *r, const struct req_tok *t);

#endif
