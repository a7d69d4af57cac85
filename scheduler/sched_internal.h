/* sched_internal.h - scheduler-private structures and the contracts between
 * its files (not a public interface: only scheduler/ and its tests include it).
 *
 *   sched.c   engine thread: the step (schedule -> forward -> update), the one
 *             finish path, admission, preemption, scheduler lifecycle
 *   seq.c     engine thread: one sequence (sampling, accepting a token)
 *   spec.c    engine thread: speculative decoding (n-gram drafts, their
 *             verification, the KV rollback of rejected drafts)
 *   stats.c   engine thread: histograms and counters (published by queue.c)
 *   queue.c   every lock and atomic shared by the loop and engine threads
 *   params.c  request parameters: lifecycle and validation (pure, any thread)
 *   kv.c      engine thread: KV unit pool, block tables, prefix cache
 */
#ifndef SS_SCHED_INTERNAL_H
#define SS_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "scheduler/kv.h"
#include "scheduler/sched.h"

/* Speculative decoding state of one sequence (spec.c).
 * The n-gram index: every start i of an n-gram of ngram_min tokens with a
 * token after it is chained from head[hash(tokens[i, i + ngram_min))], most
 * recent first (chain[i] = the previous start in that bucket, -1 at the end).
 * It covers the starts [0, n_indexed); tokens never change once appended
 * (a preemption keeps them), so the index is only ever extended. */
struct spec_seq {
    int32_t draft[REQ_SPEC_MAX_TOKENS]; /* this step's drafts (n_draft > 0: in the batch) */
    int n_draft;
    int32_t *head;         /* [mask + 1] bucket -> latest start, -1 none; NULL until the first lookup */
    int32_t *chain;        /* [seq cap] */
    uint32_t mask;
    int32_t n_indexed;
    double acc, trials;    /* decayed counts of accepted drafts and of drafts put to the test */
    int32_t idle;          /* steps the policy said no while a draft was at hand (probe timer) */
};

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
    uint64_t admit_order;  /* increases with each admission (preemption victim choice); 0 = never admitted */
    int plp;               /* prompt logprobs wanted: prefill in small chunks with all logits */
    int32_t plp_next;      /* next prompt position to report (recompute after preemption skips) */
    double t_last;         /* time of the previous token (inter-token latency) */
    /* Constrained decoding: the matcher follows the generated tokens (created at
     * the first sample). A preempted sequence keeps its generated tokens and is
     * recomputed from them, so its matcher state stays valid as it is. */
    struct gram_matcher *gm;
    const char *gram_msg;  /* why seq_sample failed (static text) */
    /* Embedding (req->p.pooling): the pooled state of the tokens computed so
     * far, in token order (a sum for mean pooling, else the chosen row); a
     * chunk at position 0 (a recompute after preemption too) restarts it. */
    double *pool;          /* [dim], NULL for generation */
    struct spec_seq sp;    /* speculative decoding (spec.c) */
};

/* Everything the loop and engine threads share besides each request's own
 * lock (queue.c). */
struct squeue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct sched_req *head, *tail; /* submitted, not yet taken by the engine */
    int n_pending;                 /* submitted and never admitted (bounds the queue) */
    int wake;                      /* a cancel or submit happened */
    int stop;
    pthread_mutex_t stats_lock;
    struct sched_stats stats;      /* last published snapshot (sched_get_stats) */
};

/* One step's batch, as schedule() decided it (engine thread). */
struct plan {
    int n_seqs;
    int32_t n_tokens;
    int plp_used; /* one prompt-logprobs sequence per step (logits buffer room) */
};

struct sched {
    struct eng_model *model;
    const struct tok *tok;
    struct sched_options opt;
    struct sched_limits lim;
    sched_notify_fn notify;
    void *notify_ud;
    int32_t n_ctx, n_vocab; /* n_vocab: logit rows' width (the embedding's rows) */
    /* Ids a token may be: min(n_vocab, the tokenizer's size). A model whose
     * embedding is padded past its vocabulary (rows a tokenizer does not know)
     * never samples, reports or accepts those ids: they stay out of the
     * sampler's view, as if their logits were -inf (issue 14). */
    int32_t n_sample;

    struct squeue q;
    pthread_t thread;
    int started, stopped;

    /* engine thread only */
    struct kv_pool *pool;
    struct seq **running;  /* [max_num_seqs] in admission order */
    int n_running;
    struct seq **waiting;  /* front = next to admit (order: waiting_goes_before) */
    int n_waiting, cap_waiting;
    uint64_t admit_counter;
    int n_levels;
    int n_layers;
    int *layer_level;      /* [n_layers] level of each layer */
    int *layer_index;      /* [n_layers] its index among the layers of its level */
    int level_layers[ENG_MAX_LEVELS];
    int level_local[ENG_MAX_LEVELS]; /* sliding-window layers of each level (the last rows) */
    int swa_window;        /* > 0: local layers' dead pages are recycled (kv_table_slide) */
    struct sched_stats st; /* recorded here (stats.c), published to q.stats */
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
    struct gram_vocab *gvocab; /* byte trie of the vocabulary, built at the first constrained request */
    struct gram_store *gstore; /* token masks shared by the matchers of equal grammars */
    float *eog_saved;      /* [64] end-of-generation logits around the grammar mask */
    int32_t *cand_ids;     /* [SCHED_GRAM_GATHER + 64] a narrow mask's allowed ids, */
    float *cand_vals;      /* and their logits (with the first constrained request) */
    char *piece;           /* detokenizer output for one token */
    size_t piece_cap;
    int dim;               /* hidden size of the model */
    float *hidden;         /* [max_batched_tokens][dim] hidden rows of the embedding sequences
                            * of a step; allocated with the first embedding sequence */
};

/* Prompt tokens per step of a sequence that wants prompt logprobs (every row's
 * logits are kept for it, so its chunks are small). */
#define SCHED_PLP_CHUNK 32
/* Masks kept for constrained decoding: 512 x n_vocab bits (16 MiB for a
 * 262,144-token vocabulary). */
#define SCHED_GRAM_MASKS 512
/* A mask allowing at most this many tokens is sampled from the gathered
 * allowed entries (gram_mask_gather), a wider one by masking the row. */
#define SCHED_GRAM_GATHER 16384

/* ---- sched.c (engine thread) ---- */

/* The policy, pure (tests call them on hand-made queues):
 * sched_waiting_before: 1 if q, being queued, goes before w, already waiting
 * (lower priority value first; within one priority a preempted sequence goes
 * to the front, new arrivals in submission order).
 * sched_preempt_victim: the index of the running sequence to preempt when a
 * step runs out of pages, among running[from..n_running) (not yet in this
 * step's batch; from < n_running): the largest priority value, the most
 * recently admitted among equals. */
int sched_waiting_before(const struct seq *q, const struct seq *w);
int sched_preempt_victim(const struct sched *s, int from);

/* THE finish path: every end of a request (stop, length, error, cancel,
 * shutdown, out of memory) goes through here. It takes the sequence out of
 * whichever queue holds it, returns its KV, records the statistics and
 * publishes them, pushes what remains of its text with the final state (held
 * text only for STOP and LENGTH), and drops the engine's reference. r->eng
 * (the sequence) may be NULL for a request that never got one. Engine thread,
 * or the thread that stops a scheduler whose engine thread is not running. */
void sched_finish(struct sched *s, struct sched_req *r, int finish, int err, const char *msg);

/* ---- seq.c (engine thread) ---- */

/* A new sequence for r (r->eng points to it). NULL on OOM. */
struct seq *seq_new(struct sched *s, struct sched_req *r);
/* Frees the sequence (KV returned); r->eng is cleared, r itself is untouched. */
void seq_free(struct sched *s, struct seq *q);
/* The next token (>= 0), or a negative SS_E* code when constrained decoding
 * fails (q->gram_msg says why; the caller finishes the request with an error).
 * Constrained: tokens the grammar rejects get -inf after bias, penalties and
 * min_tokens; end-of-generation tokens stay allowed only when the grammar is
 * complete. Logprobs stay those of the raw distribution. */
int32_t seq_sample(struct sched *s, struct seq *q, float *logits);
void seq_prompt_logprobs(struct sched *s, struct seq *q, const float *rows, int32_t pos0, int32_t n);
/* Accepts one sampled token: appends it, decodes it into held text, checks
 * EOS, stop strings and the length limits. Returns REQ_FINISH_NONE after
 * releasing the text that can no longer be part of a stop string, or the
 * finish reason (held text trimmed to what the client gets; the caller then
 * calls sched_finish). On a decoding failure returns REQ_FINISH_ERROR with
 * *err and *msg set. Per-token state (a grammar matcher, say) advances here. */
int seq_accept_token(struct sched *s, struct seq *q, int32_t tok, int *err, const char **msg);
/* Embedding: folds the hidden rows [n][dim] of tokens [n_past, n_past + n)
 * of q into its pool. Returns 0 while tokens remain; once the chunk ends the
 * prompt, 1 with *out the pooled, L2-normalised vector (malloc'd, dim
 * floats); SS_ENOMEM, or SS_EINTERNAL for a non-finite hidden state. */
int seq_pool_rows(struct sched *s, struct seq *q, int32_t n_past, int32_t n, const float *rows, float **out);
/* Room for n more tokens at every level (worst case: all kept). 0, SS_EAGAIN
 * or SS_ENOMEM; on EAGAIN some levels may have grown (harmless). */
int seq_reserve(struct sched *s, struct seq *q, int32_t n);
/* Returns every level's blocks to the pool and forgets the cached K/V. */
void seq_release_kv(struct sched *s, struct seq *q);

/* ---- spec.c (engine thread) ----
 * Speculative decoding without a draft model. A decoding sequence whose
 * tokens end with an n-gram seen earlier in its prompt or output gets the
 * tokens that followed it as drafts: the step computes its last token and
 * the drafts (1 + k rows of logits); spec_verify then samples each row with
 * the sequence's own sampler, exactly as plain decoding would, accepting
 * while the sample equals the draft; the first mismatch is emitted and ends
 * the run. Same RNG draws, same rows bitwise (engine.h): the same tokens as
 * without speculation. Rejected drafts' KV entries are dropped. */

/* Drafts for q (decoding: exactly its last token is not computed) into
 * q->sp.draft, at most max_k; 0 when off for q, nothing found, or the
 * acceptance the sequence has shown does not pay for the rows. Does not set
 * q->sp.n_draft (the caller does, once the step has room for them). */
int spec_propose(struct sched *s, struct seq *q, int max_k);
/* The step ran q's last token and its q->sp.n_draft drafts (advance_kv moved
 * n_computed past the last token only); rows are their 1 + n_draft logits
 * rows. Samples and accepts tokens through the normal path (stop strings,
 * logprobs, length), fixes the KV state (rejected entries dropped, prefix
 * cache and sliding window updated for the verified tokens only) or finishes
 * the request. */
void spec_verify(struct sched *s, struct seq *q, float *rows);
/* What q's index owns (seq_free). */
void spec_seq_free(struct spec_seq *sp);

/* ---- stats.c (engine thread; s->st has no lock) ---- */

void stats_init(struct sched_stats *st);
/* A sequence is admitted; hit = prompt tokens found in the prefix cache. */
void stats_on_admit(struct sched *s, const struct seq *q, int64_t hit);
void stats_on_preempt(struct sched *s);
/* One forward pass: tokens in the batch, seconds it took, tokens per level. */
void stats_on_step(struct sched *s, int32_t n_tokens, double busy_s, const uint64_t *level_tokens);
/* One generated token of q, sampled at now (time to first token or between tokens). */
void stats_on_token(struct sched *s, struct seq *q, double now);
/* A request ends with finish (enum req_finish). */
void stats_on_finish(struct sched *s, const struct sched_req *r, int finish);
/* One verification: n_draft drafts of a sequence, n_accepted of them accepted. */
void stats_on_spec(struct sched *s, int n_draft, int n_accepted);
/* Updates the gauges (queues, KV units) and publishes a copy for readers:
 * whoever reads the stats after seeing an output sees the state before it. */
void stats_publish(struct sched *s);

/* ---- queue.c ---- */

double sched_now(void); /* monotonic seconds; any thread */
/* The thread that creates / frees the scheduler (no other thread uses q then).
 * squeue_init returns 0 or SS_EINTERNAL. */
int squeue_init(struct squeue *q);
void squeue_destroy(struct squeue *q);
/* Engine thread: takes every newly submitted request (a list linked by ->next).
 * If block and nothing to do, waits until a submission, cancel or stop. */
struct sched_req *squeue_take(struct squeue *q, int block, int *stop);
/* Any thread: wakes a blocked squeue_take. */
void squeue_wake(struct squeue *q);
/* Thread that stops the scheduler: refuses new submissions from now on and
 * wakes the engine; the engine's next take returns stop = 1 together with
 * every request that was ever accepted. */
void squeue_stop(struct squeue *q);
/* Engine thread: a submitted request leaves the bounded queue (its first
 * admission, or its end before that). */
void squeue_left(struct squeue *q);
/* Engine thread: replaces the snapshot sched_get_stats returns. */
void squeue_stats_write(struct squeue *q, const struct sched_stats *st);
/* Any thread: copies the last snapshot. */
void squeue_stats_read(struct squeue *q, struct sched_stats *st);
/* Engine thread: append output bytes/tokens and optionally finish; calls notify
 * when the loop thread has no pending wake-up for this request. */
void req_out_push(struct sched *s, struct sched_req *r, const char *text, size_t n, int32_t n_gen,
                  int finish, int error, const char *errmsg);
/* Engine thread: r was admitted for the first time; sets r->out.admitted and,
 * with opt.notify_admitted, wakes the loop thread (a stream's headers go out then). */
void req_out_admitted(struct sched *s, struct sched_req *r);
/* Engine thread: 1 once sched_cancel was called on r. */
int req_is_cancelled(struct sched_req *r);
int req_is_queue_exempt(const struct sched_req *r); /* sched_queue_exempt was called */
/* Engine thread: records the prompt tokens served by the prefix cache. */
void req_out_set_cached(struct sched_req *r, int32_t n);
/* Engine thread: hands an embedding request its vector v [n] (ownership
 * moves to the request; the finish that follows makes it visible). */
void req_out_set_embedding(struct sched_req *r, float *v, int32_t n);
/* Engine thread: appends one token record (logprobs); 0 or SS_ENOMEM. */
int req_out_push_tok(struct sched_req *r, const struct req_tok *t);

#endif
