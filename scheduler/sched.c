/* sched.c - the engine thread: each step decides, runs, then applies.
 *
 * The step (vLLM V1's shape):
 *   schedule()            decides the batch under a token budget: which
 *                         sequences, how many tokens each, which running
 *                         sequence to preempt, which waiting one to admit;
 *   eng_forward()         runs it;
 *   update_from_output()  applies the output: the KV state advances, each
 *                         sequence with logits samples and accepts one token.
 * Every request ends in sched_finish (stop, length, abort, error, cancel,
 * shutdown), the only code that frees a sequence.
 *
 * Batch policy: running sequences in admission order get a decode token or
 * the next chunk of an unfinished prefill (also after preemption, when a
 * sequence recomputes its prompt and the tokens it had generated); then
 * waiting sequences, in the waiting queue's order, while seats and budget
 * remain. A sequence gets logits only when its chunk reaches the end of its
 * tokens. When the page pool runs dry for a running sequence, the most
 * recently admitted running sequence is preempted: its pages are freed and it
 * goes back to the waiting queue, to be recomputed later. Its sampler state is
 * kept, so a fixed seed gives the same output as if it had never stopped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/grammar.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

/* ---------- queues (engine thread) ---------- */

/* The waiting queue's order, in one place: 1 if q (being queued) goes before
 * w (already waiting). A lower priority value goes first (vLLM's "priority").
 * Within one priority, a preempted sequence (admitted before) goes back to the
 * front: it has waited already and holds a running request's sampler state;
 * new arrivals queue in submission order. */
int sched_waiting_before(const struct seq *q, const struct seq *w) {
    int32_t pq = q->req->p.priority, pw = w->req->p.priority;
    if (pq != pw) return pq < pw;
    return q->admit_order != 0;
}

/* The running sequence to preempt when a step runs out of pages, among
 * running[from..n_running) (those not yet in this step's batch): the
 * largest priority value, and among equals the most recently admitted. */
int sched_preempt_victim(const struct sched *s, int from) {
    int v = s->n_running - 1;
    for (int i = s->n_running - 2; i >= from; i--)
        if (s->running[i]->req->p.priority > s->running[v]->req->p.priority) v = i;
    return v;
}

/* Queues q at its place (sched_waiting_before). 0 or SS_ENOMEM. */
static int waiting_insert(struct sched *s, struct seq *q) {
    if (s->n_waiting == s->cap_waiting) {
        int cap = s->cap_waiting ? s->cap_waiting * 2 : 64;
        struct seq **nw = realloc(s->waiting, sizeof(*nw) * (size_t)cap);
        if (!nw) return SS_ENOMEM;
        s->waiting = nw;
        s->cap_waiting = cap;
    }
    int at = 0;
    while (at < s->n_waiting && !sched_waiting_before(q, s->waiting[at])) at++;
    memmove(s->waiting + at + 1, s->waiting + at, sizeof(*s->waiting) * (size_t)(s->n_waiting - at));
    s->waiting[at] = q;
    s->n_waiting++;
    return 0;
}

/* Removes q from list[*n] if it is there. Returns 1 if it was. */
static int list_remove(struct seq **list, int *n, const struct seq *q) {
    for (int i = 0; i < *n; i++) {
        if (list[i] == q) {
            memmove(list + i, list + i + 1, sizeof(*list) * (size_t)(*n - i - 1));
            (*n)--;
            return 1;
        }
    }
    return 0;
}

/* ---------- the finish path ---------- */

/* NOTE: KV pages are returned and the statistics published before the client
 * can observe the end, so stats read after a finish are exact. */
void sched_finish(struct sched *s, struct sched_req *r, int finish, int err, const char *msg) {
    struct seq *q = r->eng;
    if (!q || q->admit_order == 0) squeue_left(&s->q); /* never admitted: still counted as queued */
    const char *text = NULL;
    size_t n_text = 0;
    int32_t n_gen = 0;
    if (q) {
        if (!list_remove(s->running, &s->n_running, q)) list_remove(s->waiting, &s->n_waiting, q);
        seq_release_kv(s, q);
        n_gen = q->n_gen;
        if (finish == REQ_FINISH_STOP || finish == REQ_FINISH_LENGTH) {
            text = q->hold; /* the rest of the text; errors and cancels drop it */
            n_text = q->n_hold;
        }
    }
    stats_on_finish(s, r, finish);
    stats_publish(s);
    req_out_push(s, r, text, n_text, n_gen, finish, err, msg);
    if (q) seq_free(s, q);
    sched_req_unref(r); /* the engine's reference */
}

/* Ends every request still here (shutdown). */
static void finish_all(struct sched *s, int err, const char *msg) {
    while (s->n_running > 0) sched_finish(s, s->running[s->n_running - 1]->req, REQ_FINISH_ERROR, err, msg);
    while (s->n_waiting > 0) sched_finish(s, s->waiting[s->n_waiting - 1]->req, REQ_FINISH_ERROR, err, msg);
}

/* ---------- schedule: decide the step ---------- */

static void preempt(struct sched *s, int i) {
    struct seq *q = s->running[i];
    seq_release_kv(s, q);
    list_remove(s->running, &s->n_running, q);
    if (waiting_insert(s, q) != 0) {
        sched_finish(s, q->req, REQ_FINISH_ERROR, SS_ENOMEM, "out of memory while preempting");
        return;
    }
    stats_on_preempt(s);
}

/* Requests that waited longer than --max-queue-time without ever being
 * admitted end with SS_EAGAIN (the server answers 503 + Retry-After).
 * Preempted sequences (admitted before) are not waiting for a first seat, nor
 * are choices whose sibling was admitted (sched_queue_exempt). */
static void drop_expired(struct sched *s, double now) {
    if (s->opt.max_queue_time <= 0) return;
    for (int i = 0; i < s->n_waiting;) {
        struct seq *q = s->waiting[i];
        if (q->admit_order == 0 && !req_is_queue_exempt(q->req) &&
            now - q->req->t_submit > s->opt.max_queue_time) {
            char msg[96];
            snprintf(msg, sizeof(msg), "the request waited more than %g s in the queue; retry later",
                     s->opt.max_queue_time);
            sched_finish(s, q->req, REQ_FINISH_ERROR, SS_EAGAIN, msg);
        } else {
            i++;
        }
    }
}

static void drop_cancelled(struct sched *s) {
    for (int i = 0; i < s->n_running;) {
        struct sched_req *r = s->running[i]->req;
        if (req_is_cancelled(r))
            sched_finish(s, r, REQ_FINISH_CANCELLED, SS_ECANCELLED, "cancelled");
        else
            i++;
    }
    for (int i = 0; i < s->n_waiting;) {
        struct sched_req *r = s->waiting[i]->req;
        if (req_is_cancelled(r))
            sched_finish(s, r, REQ_FINISH_CANCELLED, SS_ECANCELLED, "cancelled");
        else
            i++;
    }
}

/* Tokens a sequence may take this step: the rest of its tokens, within the
 * budget; prompt-logprob prefill goes in SCHED_PLP_CHUNK pieces, one sequence
 * per step. Returns 0 if it must sit this step out. */
static int32_t chunk_for(const struct plan *pl, const struct seq *q, int32_t budget) {
    int32_t n = q->n_tokens - q->n_computed;
    if (q->plp && q->n_computed < q->n_prompt) {
        if (pl->plp_used) return 0;
        if (n > SCHED_PLP_CHUNK) n = SCHED_PLP_CHUNK;
    }
    return n < budget ? n : budget;
}

static void plan_add(struct sched *s, struct plan *pl, struct seq *q, int32_t n) {
    struct eng_seq *e = &s->b_seqs[pl->n_seqs];
    e->tok0 = pl->n_tokens;
    e->n_tok = n;
    e->n_past = q->n_computed;
    /* Per-layer unit tables: layer l reads the table of its level. */
    const int32_t **lp = s->b_layer_pages + (size_t)pl->n_seqs * (size_t)s->n_layers;
    int32_t most = 0;
    for (int l = 0; l < s->n_layers; l++) {
        const struct kv_table *t = &q->tables[s->layer_level[l]];
        lp[l] = t->units[s->layer_index[l]];
    }
    for (int k = 0; k < s->n_levels; k++) {
        e->level_n_past[k] = q->level_n_past[k];
        if (q->tables[k].n_pages > most) most = q->tables[k].n_pages;
    }
    e->layer_pages = lp;
    e->layer_n_pages = most; /* each level's table holds what it needs (seq_reserve) */
    e->level_kept = s->b_kept[pl->n_seqs];
    /* n tokens: n - n_draft of the sequence's own, then its drafts (spec.c),
     * each of which wants its row of logits */
    const int32_t n_own = n - q->sp.n_draft;
    /* an embedding sequence wants hidden states, never logits */
    e->want_hidden = q->pool != NULL;
    e->want_logits = !e->want_hidden && q->n_computed + n_own == q->n_tokens;
    e->all_logits = !e->want_hidden && q->plp && q->n_computed < q->n_prompt;
    if (e->all_logits) pl->plp_used = 1;
    e->all_logits |= q->sp.n_draft > 0;
    memcpy(s->b_tokens + pl->n_tokens, q->tokens + q->n_computed, sizeof(int32_t) * (size_t)n_own);
    memcpy(s->b_tokens + pl->n_tokens + n_own, q->sp.draft, sizeof(int32_t) * (size_t)q->sp.n_draft);
    s->b_owner[pl->n_seqs] = q;
    pl->n_seqs++;
    pl->n_tokens += n;
}

/* Draft tokens this step may carry: --spec-max-batch-tokens less the decode
 * tokens of the running sequences (0 when speculation is off). */
static int spec_step_room(const struct sched *s) {
    if (!s->opt.spec_ngram) return 0;
    int room = s->opt.spec_max_batch_tokens;
    for (int i = 0; i < s->n_running && room > 0; i++)
        if (s->running[i]->n_tokens - s->running[i]->n_computed == 1) room--;
    return room;
}

/* Running sequences, in admission order: the next chunk of each, preempting
 * the most recently admitted ones when pages run out. Returns the budget left. */
static int32_t schedule_running(struct sched *s, struct plan *pl, int32_t budget) {
    int spec_room = spec_step_room(s);
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        struct seq *q = s->running[i];
        int32_t n = chunk_for(pl, q, budget);
        if (n == 0) continue;
        /* drafts (spec.c) only where the pool has room for them: they never preempt */
        int k = n == 1 && spec_room > 0 ? spec_propose(s, q, spec_room < budget - 1 ? spec_room : budget - 1) : 0;
        if (k > 0 && seq_reserve(s, q, 1 + k) == 0) {
            q->sp.n_draft = k;
            spec_room -= k;
            plan_add(s, pl, q, 1 + k);
            budget -= 1 + k;
            continue;
        }
        int rc;
        while ((rc = seq_reserve(s, q, n)) == SS_EAGAIN) {
            /* Preempt a sequence not yet in the batch (sched_preempt_victim). */
            int victim = sched_preempt_victim(s, i);
            preempt(s, victim);
            if (victim == i) break;
        }
        if (rc != 0) {
            if (rc != SS_EAGAIN) { /* ENOMEM: end this sequence */
                sched_finish(s, q->req, REQ_FINISH_ERROR, rc, "out of memory");
                i--;
            }
            /* else: q itself was preempted; the loop ends because i == n_running */
            continue;
        }
        plan_add(s, pl, q, n);
        budget -= n;
    }
    return budget;
}

/* Waiting sequences, front first, while seats, budget and pages remain;
 * admission never preempts. */
static void schedule_waiting(struct sched *s, struct plan *pl, int32_t budget) {
    while (s->n_waiting > 0 && s->n_running < s->opt.max_num_seqs && budget > 0) {
        struct seq *q = s->waiting[0];
        /* Reuse cached full pages of the same prefix (prompt, plus the tokens
         * generated before a preemption). NOTE: not for embeddings, which
         * pool the hidden state of every token, cached or not. */
        int64_t hit = q->plp || q->pool ? 0 : kv_table_match_prefix(s->pool, &q->tables[0], q->tokens, q->n_tokens);
        q->n_computed = q->level_n_past[0] = (int32_t)hit;
        int32_t n = chunk_for(pl, q, budget);
        int rc = n == 0 ? SS_EAGAIN : seq_reserve(s, q, n);
        if (rc == SS_EAGAIN) { /* no room this step: wait */
            seq_release_kv(s, q);
            break;
        }
        if (rc != 0) {
            sched_finish(s, q->req, REQ_FINISH_ERROR, rc, "out of memory");
            continue;
        }
        if (q->admit_order == 0) { /* first admission leaves the queue */
            squeue_left(&s->q);
            req_out_set_cached(q->req, (int32_t)(hit < q->n_prompt ? hit : q->n_prompt));
            req_out_admitted(s, q->req);
        }
        stats_on_admit(s, q, hit);
        list_remove(s->waiting, &s->n_waiting, q);
        q->admit_order = ++s->admit_counter;
        s->running[s->n_running++] = q;
        plan_add(s, pl, q, n);
        budget -= n;
    }
}

/* Decides this step's batch into pl (and s->b_*): pure policy plus the page
 * reservations and preemptions it implies; no output is produced here except
 * the end of a request that ran out of memory. */
static void schedule(struct sched *s, struct plan *pl) {
    pl->n_seqs = 0;
    pl->n_tokens = 0;
    pl->plp_used = 0;
    int32_t budget = schedule_running(s, pl, s->opt.max_batched_tokens);
    schedule_waiting(s, pl, budget);
}

/* ---------- update: apply the engine's output ---------- */

/* The sequences' cache state advances (level 0 by the chunk, deeper levels by
 * what the engine kept; unused worst-case blocks go back), full level-0
 * blocks join the prefix cache. level_tokens[k] receives the tokens stored
 * at level k. */
static void advance_kv(struct sched *s, const struct plan *pl, uint64_t *level_tokens) {
    for (int i = 0; i < pl->n_seqs; i++) {
        struct seq *q = s->b_owner[i];
        const struct eng_seq *e = &s->b_seqs[i];
        /* drafts are not part of the sequence until spec_verify accepts them */
        const int32_t n_own = e->n_tok - q->sp.n_draft;
        q->n_computed += n_own;
        q->level_n_past[0] = q->n_computed;
        level_tokens[0] += (uint64_t)n_own;
        for (int k = 1; k < s->n_levels; k++) {
            q->level_n_past[k] += e->level_kept[k];
            kv_table_trim(s->pool, &q->tables[k], q->level_n_past[k]);
            level_tokens[k] += (uint64_t)e->level_kept[k];
        }
        /* embeddings keep the prefix cache clean: their pages go back free */
        if (!q->pool) kv_table_commit(s->pool, &q->tables[0], q->tokens, q->n_computed);
        /* sliding-window layers: pages no later query reads go back (kv.h) */
        for (int k = 0; k < s->n_levels; k++) kv_table_slide(s->pool, &q->tables[k], q->level_n_past[k]);
    }
}

/* The logits row of batch entry i, or NULL when it produces no token this
 * step. Reports prompt logprobs on the way; *row advances past its rows. */
static float *entry_logits(struct sched *s, int i, int *row) {
    struct seq *q = s->b_owner[i];
    const struct eng_seq *e = &s->b_seqs[i];
    if (e->all_logits) { /* one row per token: prompt logprobs, last row samples */
        int32_t pos0 = q->n_computed - e->n_tok;
        seq_prompt_logprobs(s, q, s->logits + (size_t)*row * (size_t)s->n_vocab, pos0, e->n_tok);
        *row += e->n_tok - 1;
        if (!e->want_logits) {
            (*row)++;
            return NULL;
        }
    } else if (!e->want_logits) {
        return NULL;
    }
    return s->logits + (size_t)(*row)++ * (size_t)s->n_vocab;
}

/* An embedding sequence's chunk: its hidden rows join the pool; the last
 * chunk ends the request with the vector. */
static void embed_update(struct sched *s, struct seq *q, const struct eng_seq *e, const float *rows) {
    float *v = NULL;
    int rc = seq_pool_rows(s, q, e->n_past, e->n_tok, rows, &v);
    if (rc < 0) {
        sched_finish(s, q->req, REQ_FINISH_ERROR, rc,
                     rc == SS_ENOMEM ? "out of memory" : "the model produced a non-finite hidden state");
    } else if (rc == 1) {
        req_out_set_embedding(q->req, v, s->dim);
        sched_finish(s, q->req, REQ_FINISH_STOP, 0, NULL);
    }
}

/* Applies one forward pass: KV state, step counters (published before any
 * output, so whoever sees a token also sees the step that produced it), then
 * one sampled and accepted token per sequence with logits, and the pooled
 * hidden rows of each embedding sequence. */
static void update_from_output(struct sched *s, const struct plan *pl, double busy_s) {
    uint64_t lt[ENG_MAX_LEVELS] = {0};
    advance_kv(s, pl, lt);
    stats_on_step(s, pl->n_tokens, busy_s, lt);
    stats_publish(s);
    int row = 0;
    size_t hrow = 0;
    for (int i = 0; i < pl->n_seqs; i++) {
        const struct eng_seq *e = &s->b_seqs[i];
        if (e->want_hidden) {
            embed_update(s, s->b_owner[i], e, s->hidden + hrow * (size_t)s->dim);
            hrow += (size_t)e->n_tok;
            continue;
        }
        struct seq *q = s->b_owner[i];
        if (q->sp.n_draft > 0) { /* 1 + n_draft rows: spec.c samples and accepts */
            float *rows = s->logits + (size_t)row * (size_t)s->n_vocab;
            row += e->n_tok;
            spec_verify(s, q, rows);
            continue;
        }
        float *lg = entry_logits(s, i, &row);
        if (!lg) continue;
        int32_t tok = seq_sample(s, q, lg);
        if (tok < 0) {
            sched_finish(s, q->req, REQ_FINISH_ERROR, tok, q->gram_msg);
            continue;
        }
        stats_on_token(s, q, sched_now());
        int err = 0;
        const char *msg = NULL;
        int finish = seq_accept_token(s, q, tok, &err, &msg);
        if (finish != REQ_FINISH_NONE) sched_finish(s, q->req, finish, err, msg);
    }
}

/* ---------- the engine thread ---------- */

static void run_batch(struct sched *s, const struct plan *pl) {
    struct eng_batch b = {s->b_tokens, pl->n_tokens, s->b_seqs, pl->n_seqs, s->hidden};
    double t0 = sched_now();
    int rc = eng_forward(s->model, &b, s->logits);
    if (rc != 0) {
        for (int i = 0; i < pl->n_seqs; i++)
            sched_finish(s, s->b_owner[i]->req, REQ_FINISH_ERROR, rc, "the forward pass failed");
        return;
    }
    update_from_output(s, pl, sched_now() - t0);
}

/* Newly submitted requests join the waiting queue. */
static void accept_new(struct sched *s, struct sched_req *list) {
    while (list) {
        struct sched_req *r = list;
        list = r->next;
        r->next = NULL;
        struct seq *q = seq_new(s, r);
        if (!q || waiting_insert(s, q) != 0)
            sched_finish(s, r, REQ_FINISH_ERROR, SS_ENOMEM, "out of memory");
    }
}

static void *engine_main(void *arg) {
    struct sched *s = arg;
    for (;;) {
        int stop = 0;
        int idle = s->n_running == 0 && s->n_waiting == 0;
        struct sched_req *list = squeue_take(&s->q, idle, &stop);
        accept_new(s, list);
        if (stop) break; /* the take with stop = 1 returned the last submissions */
        drop_cancelled(s);
        drop_expired(s, sched_now());
        struct plan pl;
        schedule(s, &pl);
        if (pl.n_seqs > 0) run_batch(s, &pl);
        stats_publish(s);
    }
    finish_all(s, SS_ECANCELLED, "the server is shutting down");
    return NULL;
}

/* ---------- lifecycle ---------- */

/* Frees what sched_new allocated; the engine thread is not running. */
static void sched_release(struct sched *s, int queue_ok) {
    kv_pool_free(s->pool);
    free(s->running);
    free(s->waiting);
    free(s->b_tokens);
    free(s->b_seqs);
    free(s->b_owner);
    free(s->logits);
    free(s->smp_work);
    free(s->raw_row);
    free(s->piece);
    free(s->eog_ids);
    free(s->eog_saved);
    free(s->cand_ids);
    free(s->cand_vals);
    free(s->hidden);
    gram_vocab_free(s->gvocab);
    gram_store_free(s->gstore);
    free(s->layer_level);
    free(s->layer_index);
    free(s->b_layer_pages);
    free(s->b_kept);
    if (queue_ok) squeue_destroy(&s->q);
    free(s);
}

/* Levels and layers: which level each layer belongs to, its index there
 * (global layers first, then the sliding-window ones, whose rows are the
 * last level_local[k] of the level's tables), and the window whose pages
 * are recycled (s->swa_window, 0 when off: no such layer, opt.no_swa_recycle,
 * windows that differ, or a level of local layers only). Returns the most
 * layers of any level, or 0 on OOM. */
static int map_layers(struct sched *s) {
    s->layer_level = calloc((size_t)s->n_layers, sizeof(int));
    s->layer_index = calloc((size_t)s->n_layers, sizeof(int));
    if (!s->layer_level || !s->layer_index) return 0;
    int max_layers = 1, window = 0, uniform = 1;
    for (int l = 0; l < s->n_layers; l++) {
        int k = eng_model_layer_level(s->model, l), w = eng_model_layer_window(s->model, l);
        s->layer_level[l] = k;
        s->level_layers[k]++;
        if (w > 0) {
            s->level_local[k]++;
            if (window > 0 && w != window) uniform = 0;
            window = w;
        }
        if (s->level_layers[k] > max_layers) max_layers = s->level_layers[k];
    }
    int next_global[ENG_MAX_LEVELS] = {0}, next_local[ENG_MAX_LEVELS];
    for (int k = 0; k < ENG_MAX_LEVELS; k++) {
        next_local[k] = s->level_layers[k] - s->level_local[k];
        if (s->level_local[k] > 0 && next_local[k] == 0) uniform = 0;
    }
    for (int l = 0; l < s->n_layers; l++) {
        int k = s->layer_level[l];
        s->layer_index[l] = eng_model_layer_window(s->model, l) > 0 ? next_local[k]++ : next_global[k]++;
    }
    s->swa_window = uniform && !s->opt.no_swa_recycle ? window : 0;
    return max_layers;
}

/* The speculative-decoding options in force: o's, with defaults and bounds
 * (off unless o->spec_ngram). */
static void spec_options(struct sched_options *opt, const struct sched_options *o) {
    opt->spec_ngram = o && o->spec_ngram ? 1 : 0;
    if (!opt->spec_ngram) return;
#define SPEC_OPT(f, def, lo, hi) opt->f = o->f <= 0 ? (def) : o->f < (lo) ? (lo) : o->f > (hi) ? (hi) : o->f
    SPEC_OPT(spec_tokens, SCHED_SPEC_DEF_TOKENS, 1, REQ_SPEC_MAX_TOKENS);
    SPEC_OPT(spec_ngram_min, SCHED_SPEC_DEF_NGRAM_MIN, 1, SCHED_SPEC_NGRAM_MAX);
    SPEC_OPT(spec_ngram_max, SCHED_SPEC_DEF_NGRAM_MAX, opt->spec_ngram_min, SCHED_SPEC_NGRAM_MAX);
    SPEC_OPT(spec_max_batch_tokens, SCHED_SPEC_DEF_BATCH_TOKENS, 1, SCHED_SPEC_MAX_BATCH_TOKENS);
#undef SPEC_OPT
    if (opt->spec_ngram_max < opt->spec_ngram_min) opt->spec_ngram_max = opt->spec_ngram_min;
}

struct sched *sched_new(struct eng_model *m, const struct sched_options *o, sched_notify_fn notify,
                        void *ud) {
    struct sched *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->model = m;
    s->tok = eng_model_tok(m);
    s->notify = notify;
    s->notify_ud = ud;
    s->opt.max_num_seqs = o && o->max_num_seqs > 0 ? o->max_num_seqs : 64;
    s->opt.max_batched_tokens = o && o->max_batched_tokens > 0 ? o->max_batched_tokens : 2048;
    s->opt.max_queued = o && o->max_queued > 0 ? o->max_queued : 256;
    s->opt.no_prefix_cache = o ? o->no_prefix_cache : 0;
    s->opt.max_queue_time = o && o->max_queue_time > 0 ? o->max_queue_time : 0;
    s->opt.notify_admitted = o ? o->notify_admitted : 0;
    s->opt.no_swa_recycle = o ? o->no_swa_recycle : 0;
    spec_options(&s->opt, o);
    s->n_ctx = eng_model_n_ctx(m);
    s->n_vocab = eng_model_config(m)->n_vocab;
    s->n_sample = s->tok && tok_n_vocab(s->tok) < s->n_vocab ? tok_n_vocab(s->tok) : s->n_vocab;
    s->dim = eng_model_config(m)->dim;
    s->lim.n_ctx = s->n_ctx;
    s->lim.n_vocab = s->n_sample;
    s->lim.n_pages = eng_model_n_pages(m);
    s->n_layers = eng_model_config(m)->n_layers;
    s->n_levels = eng_model_n_levels(m);
    if (squeue_init(&s->q) != 0) {
        sched_release(s, 0);
        return NULL;
    }
    int max_layers = s->n_levels >= 1 && s->n_levels <= ENG_MAX_LEVELS ? map_layers(s) : 0;
    /* Prefix caching stays exact only for level 0 of single-level models: a
     * deeper level's blocks do not line up with the prompt's pages. */
    if (max_layers > 0)
        s->pool = kv_pool_new(eng_model_n_units(m), max_layers, !s->opt.no_prefix_cache && s->n_levels == 1);
    s->b_layer_pages = calloc((size_t)s->opt.max_num_seqs * (size_t)s->n_layers, sizeof(*s->b_layer_pages));
    s->b_kept = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_kept));
    s->running = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->running));
    s->b_tokens = malloc(sizeof(int32_t) * (size_t)s->opt.max_batched_tokens);
    s->b_seqs = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_seqs));
    s->b_owner = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_owner));
    /* rows: one per sequence, a prompt-logprobs chunk, the drafts of a step */
    s->logits = malloc(sizeof(float) * (size_t)(s->opt.max_num_seqs + SCHED_PLP_CHUNK + s->opt.spec_max_batch_tokens) *
                       (size_t)s->n_vocab);
    s->smp_work = malloc((size_t)s->n_vocab * (sizeof(float) + sizeof(int32_t)));
    s->raw_row = malloc(sizeof(float) * (size_t)s->n_vocab);
    s->piece_cap = 3 * ((size_t)tok_max_piece_len(s->tok) + 4);
    s->piece = malloc(s->piece_cap);
    s->eog_ids = malloc(sizeof(int32_t) * 64);
    s->eog_saved = malloc(sizeof(float) * 64);
    for (int32_t i = 0; s->eog_ids && i < s->n_vocab && s->n_eog < 64; i++)
        if (tok_is_eog(s->tok, i)) s->eog_ids[s->n_eog++] = i;
    if (!s->pool || !s->running || !s->b_tokens || !s->b_seqs || !s->b_owner || !s->logits ||
        !s->smp_work || !s->raw_row || !s->piece || !s->eog_ids || !s->eog_saved || !s->b_layer_pages || !s->b_kept) {
        sched_release(s, 1);
        return NULL;
    }
    stats_init(&s->st);
    stats_publish(s);
    return s;
}

void sched_get_limits(const struct sched *s, struct sched_limits *lim) {
    *lim = s->lim;
}

int sched_start(struct sched *s) {
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) return SS_EINTERNAL;
    s->started = 1;
    return 0;
}

void sched_stop(struct sched *s) {
    if (!s || s->stopped) return;
    s->stopped = 1;
    squeue_stop(&s->q);
    if (s->started) {
        pthread_join(s->thread, NULL); /* its last take saw stop and ended everything */
        s->started = 0;
        return;
    }
    /* Never started: no engine thread will take what was submitted; end it here. */
    int stop;
    accept_new(s, squeue_take(&s->q, 0, &stop));
    finish_all(s, SS_ECANCELLED, "the server is shutting down");
}

void sched_free(struct sched *s) {
    if (!s) return;
    sched_stop(s);
    sched_release(s, 1);
}
