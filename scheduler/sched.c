/* sched.c - the engine thread: admission, batching policy, preemption and
 * turning logits into output.
 *
 * Each step (vLLM V1 style) builds one ragged batch under a token budget:
 *   1. running sequences in admission order: a decode token, or the next chunk
 *      of an unfinished prefill (also after preemption, when a sequence
 *      recomputes its prompt and the tokens it had generated);
 *   2. waiting sequences in arrival order, while seats and budget remain.
 * A sequence gets logits only when its chunk reaches the end of its tokens.
 * When the page pool runs dry for a running sequence, the most recently
 * admitted running sequence is preempted: its pages are freed and it goes back
 * to the front of the waiting queue, to be recomputed later. Its sampler state
 * is kept, so a fixed seed gives the same output as if it had never stopped.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

void sched_hist_observe(struct sched_hist *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->count[i]++;
    h->total++;
    h->sum += v;
}

static void hist_init(struct sched_hist *h, const double *le, int n) {
    memset(h, 0, sizeof(*h));
    h->n = n;
    memcpy(h->le, le, sizeof(double) * (size_t)n);
}

static void stats_init(struct sched_stats *st) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0};
    static const double itl[] = {0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                                 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0};
    static const double bt[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
    hist_init(&st->ttft_s, lat, 20);
    hist_init(&st->itl_s, itl, 20);
    hist_init(&st->e2e_s, lat, 20);
    hist_init(&st->queue_s, lat, 20);
    hist_init(&st->batch_tokens, bt, 14);
}

void stats_finish(struct sched *s, struct seq *q, int finish) {
    pthread_mutex_lock(&s->stats_lock);
    sched_hist_observe(&s->stats.e2e_s, sched_now() - q->req->t_submit);
    if (finish >= 0 && finish < 5) s->stats.n_finished[finish]++;
    pthread_mutex_unlock(&s->stats_lock);
    stats_add(s, 0, 0, 1, 0);
}

void stats_add(struct sched *s, uint64_t prompt_tok, uint64_t gen_tok, int done, int preempt) {
    pthread_mutex_lock(&s->stats_lock);
    s->stats.n_prompt_tokens += prompt_tok;
    s->stats.n_gen_tokens += gen_tok;
    s->stats.n_requests_done += (uint64_t)done;
    s->stats.n_preemptions += (uint64_t)preempt;
    s->stats.n_running = s->n_running;
    s->stats.n_waiting = s->n_waiting;
    s->stats.pages_total = kv_pool_n_units(s->pool);
    s->stats.pages_used = s->stats.pages_total - kv_pool_n_free(s->pool);
    s->stats.pages_cached = kv_pool_n_cached(s->pool);
    s->stats.n_levels = s->n_levels;
    for (int k = 0; k < s->n_levels; k++) {
        int32_t used = 0;
        for (int i = 0; i < s->n_running; i++) used += s->running[i]->tables[k].n_pages;
        for (int i = 0; i < s->n_waiting; i++) used += s->waiting[i]->tables[k].n_pages;
        s->stats.level_units[k] = used * s->level_layers[k];
    }
    pthread_mutex_unlock(&s->stats_lock);
}

/* ---------- queues (engine thread) ---------- */

static int waiting_push(struct sched *s, struct seq *q, int front) {
    if (s->n_waiting == s->cap_waiting) {
        int cap = s->cap_waiting ? s->cap_waiting * 2 : 64;
        struct seq **nw = realloc(s->waiting, sizeof(*nw) * (size_t)cap);
        if (!nw) return SS_ENOMEM;
        s->waiting = nw;
        s->cap_waiting = cap;
    }
    if (front) {
        memmove(s->waiting + 1, s->waiting, sizeof(*s->waiting) * (size_t)s->n_waiting);
        s->waiting[0] = q;
    } else {
        s->waiting[s->n_waiting] = q;
    }
    s->n_waiting++;
    return 0;
}

static void waiting_remove(struct sched *s, int i) {
    memmove(s->waiting + i, s->waiting + i + 1, sizeof(*s->waiting) * (size_t)(s->n_waiting - i - 1));
    s->n_waiting--;
}

static void running_remove(struct sched *s, int i) {
    memmove(s->running + i, s->running + i + 1, sizeof(*s->running) * (size_t)(s->n_running - i - 1));
    s->n_running--;
}

static void pending_dec(struct sched *s) {
    pthread_mutex_lock(&s->q.lock);
    s->q.n_pending--;
    pthread_mutex_unlock(&s->q.lock);
}

/* Ends a sequence that is in neither queue any more. */
/* Pages are returned and counters updated before the client can observe the
 * end, so stats read after a finish are exact. */
static void seq_finish(struct sched *s, struct seq *q, int finish, int err, const char *msg) {
    seq_release_kv(s, q);
    stats_finish(s, q, finish);
    req_out_push(s, q->req, NULL, 0, q->n_gen, finish, err, msg);
    seq_free(s, q);
}

/* ---------- one step ---------- */

static void preempt(struct sched *s, int i) {
    struct seq *q = s->running[i];
    seq_release_kv(s, q);
    running_remove(s, i);
    if (waiting_push(s, q, 1) != 0) {
        seq_finish(s, q, REQ_FINISH_ERROR, SS_ENOMEM, "out of memory while preempting");
        return;
    }
    stats_add(s, 0, 0, 0, 1);
}

static void drop_cancelled(struct sched *s) {
    for (int i = 0; i < s->n_running;) {
        struct seq *q = s->running[i];
        if (req_is_cancelled(q->req)) {
            running_remove(s, i);
            seq_finish(s, q, REQ_FINISH_CANCELLED, SS_ECANCELLED, "cancelled");
        } else {
            i++;
        }
    }
    for (int i = 0; i < s->n_waiting;) {
        struct seq *q = s->waiting[i];
        if (req_is_cancelled(q->req)) {
            waiting_remove(s, i);
            if (q->admit_order == 0) pending_dec(s); /* never admitted */
            seq_finish(s, q, REQ_FINISH_CANCELLED, SS_ECANCELLED, "cancelled");
        } else {
            i++;
        }
    }
}

struct plan {
    int n_seqs;
    int32_t n_tokens;
    int plp_used; /* one prompt-logprobs sequence per step (logits buffer room) */
};

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
    e->want_logits = (q->n_computed + n == q->n_tokens);
    e->all_logits = q->plp && q->n_computed < q->n_prompt;
    if (e->all_logits) pl->plp_used = 1;
    memcpy(s->b_tokens + pl->n_tokens, q->tokens + q->n_computed, sizeof(int32_t) * (size_t)n);
    s->b_owner[pl->n_seqs] = q;
    pl->n_seqs++;
    pl->n_tokens += n;
}

static void schedule(struct sched *s, struct plan *pl) {
    int32_t budget = s->opt.max_batched_tokens;
    pl->n_seqs = 0;
    pl->n_tokens = 0;
    pl->plp_used = 0;
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        struct seq *q = s->running[i];
        int32_t n = chunk_for(pl, q, budget);
        if (n == 0) continue;
        int rc;
        while ((rc = seq_reserve(s, q, n)) == SS_EAGAIN) {
            /* Preempt the most recently admitted sequence not yet in the batch. */
            int victim = s->n_running - 1;
            preempt(s, victim);
            if (victim == i) break;
        }
        if (rc != 0) {
            if (rc != SS_EAGAIN) { /* ENOMEM: end this sequence */
                running_remove(s, i);
                seq_finish(s, q, REQ_FINISH_ERROR, rc, "out of memory");
                i--;
            }
            /* else: q itself was preempted; the loop ends because i == n_running */
            continue;
        }
        plan_add(s, pl, q, n);
        budget -= n;
    }
    while (s->n_waiting > 0 && s->n_running < s->opt.max_num_seqs && budget > 0) {
        struct seq *q = s->waiting[0];
        /* Reuse cached full pages of the same prefix (prompt, plus the tokens
         * generated before a preemption). */
        int64_t hit = q->plp ? 0 : kv_table_match_prefix(s->pool, &q->tables[0], q->tokens, q->n_tokens);
        q->n_computed = q->level_n_past[0] = (int32_t)hit;
        int32_t n = chunk_for(pl, q, budget);
        if (n == 0) {
            seq_release_kv(s, q);
            break;
        }
        int rc = seq_reserve(s, q, n);
        if (rc == SS_EAGAIN) { /* wait for pages; admission never preempts */
            seq_release_kv(s, q);
            break;
        }
        pthread_mutex_lock(&s->stats_lock);
        s->stats.n_prefix_queries += (uint64_t)q->n_tokens;
        s->stats.n_prefix_hits += (uint64_t)hit;
        pthread_mutex_unlock(&s->stats_lock);
        waiting_remove(s, 0);
        if (rc != 0) {
            if (q->admit_order == 0) pending_dec(s);
            seq_finish(s, q, REQ_FINISH_ERROR, rc, "out of memory");
            continue;
        }
        if (q->admit_order == 0) { /* first admission leaves the queue */
            pending_dec(s);
            pthread_mutex_lock(&s->stats_lock);
            sched_hist_observe(&s->stats.queue_s, sched_now() - q->req->t_submit);
            s->stats.n_prompt_tokens += (uint64_t)q->n_prompt;
            pthread_mutex_unlock(&s->stats_lock);
        }
        q->admit_order = ++s->admit_counter;
        s->running[s->n_running++] = q;
        plan_add(s, pl, q, n);
        budget -= n;
    }
}

static void running_drop(struct sched *s, struct seq *q) {
    for (int j = 0; j < s->n_running; j++)
        if (s->running[j] == q) {
            running_remove(s, j);
            return;
        }
}

/* After a forward: the sequences' cache state advances (level 0 by the chunk,
 * deeper levels by what the engine kept; unused worst-case blocks go back),
 * full level-0 blocks join the prefix cache. */
static void advance_kv(struct sched *s, const struct plan *pl) {
    uint64_t lt[ENG_MAX_LEVELS] = {0};
    for (int i = 0; i < pl->n_seqs; i++) {
        struct seq *q = s->b_owner[i];
        const struct eng_seq *e = &s->b_seqs[i];
        q->n_computed += e->n_tok;
        q->level_n_past[0] = q->n_computed;
        lt[0] += (uint64_t)e->n_tok;
        for (int k = 1; k < s->n_levels; k++) {
            q->level_n_past[k] += e->level_kept[k];
            kv_table_trim(s->pool, &q->tables[k], q->level_n_past[k]);
            lt[k] += (uint64_t)e->level_kept[k];
        }
        kv_table_commit(s->pool, &q->tables[0], q->tokens, q->n_computed);
    }
    pthread_mutex_lock(&s->stats_lock);
    for (int k = 0; k < s->n_levels; k++) s->stats.level_tokens[k] += lt[k];
    pthread_mutex_unlock(&s->stats_lock);
}

static void run_batch(struct sched *s, const struct plan *pl) {
    struct eng_batch b = {s->b_tokens, pl->n_tokens, s->b_seqs, pl->n_seqs};
    double t0 = sched_now();
    int rc = eng_forward(s->model, &b, s->logits);
    if (rc != 0) {
        for (int i = 0; i < pl->n_seqs; i++) {
            running_drop(s, s->b_owner[i]);
            seq_finish(s, s->b_owner[i], REQ_FINISH_ERROR, rc, "the forward pass failed");
        }
        return;
    }
    /* Step counters and cache state before any output is pushed: whoever sees
     * a request end (or a token arrive) also sees the step that produced it. */
    advance_kv(s, pl);
    pthread_mutex_lock(&s->stats_lock);
    sched_hist_observe(&s->stats.batch_tokens, pl->n_tokens);
    s->stats.n_steps++;
    s->stats.busy_s += sched_now() - t0;
    pthread_mutex_unlock(&s->stats_lock);
    stats_add(s, 0, 0, 0, 0);

    uint64_t gen_tok = 0;
    int row = 0;
    for (int i = 0; i < pl->n_seqs; i++) {
        struct seq *q = s->b_owner[i];
        const struct eng_seq *e = &s->b_seqs[i];
        int32_t pos0 = q->n_computed - e->n_tok;
        if (e->all_logits) { /* one row per token: prompt logprobs, last row samples */
            seq_prompt_logprobs(s, q, s->logits + (size_t)row * (size_t)s->n_vocab, pos0, e->n_tok);
            row += e->n_tok - 1;
            if (!e->want_logits) {
                row++;
                continue;
            }
        } else if (!e->want_logits) {
            continue;
        }
        float *lg = s->logits + (size_t)row * (size_t)s->n_vocab;
        row++;
        int32_t tok = seq_sample(s, q, lg);
        double now = sched_now();
        pthread_mutex_lock(&s->stats_lock);
        if (q->n_gen == 0)
            sched_hist_observe(&s->stats.ttft_s, now - q->req->t_submit);
        else
            sched_hist_observe(&s->stats.itl_s, now - q->t_last);
        pthread_mutex_unlock(&s->stats_lock);
        q->t_last = now;
        if (seq_accept_token(s, q, tok)) {
            running_drop(s, q);
            seq_free(s, q);
        } else {
            gen_tok++;
        }
    }
    stats_add(s, 0, gen_tok, 0, 0);
}

static void accept_new(struct sched *s, struct sched_req *list) {
    while (list) {
        struct sched_req *r = list;
        list = r->next;
        r->next = NULL;
        struct seq *q = seq_new(s, r);
        if (!q || waiting_push(s, q, 0) != 0) {
            pending_dec(s);
            req_out_push(s, r, NULL, 0, 0, REQ_FINISH_ERROR, SS_ENOMEM, "out of memory");
            if (q) {
                q->req = NULL;
                free(q->tokens);
                free(q);
            }
            sched_req_unref(r);
        }
    }
}

static void *engine_main(void *arg) {
    struct sched *s = arg;
    for (;;) {
        int stop = 0;
        int idle = s->n_running == 0 && s->n_waiting == 0;
        struct sched_req *list = squeue_take(&s->q, idle, &stop);
        accept_new(s, list);
        if (stop) break;
        drop_cancelled(s);
        struct plan pl;
        schedule(s, &pl);
        if (pl.n_seqs > 0) run_batch(s, &pl);
        stats_add(s, 0, 0, 0, 0);
    }
    /* Shutdown: end everything still here. */
    while (s->n_running > 0) {
        struct seq *q = s->running[s->n_running - 1];
        s->n_running--;
        seq_finish(s, q, REQ_FINISH_ERROR, SS_ECANCELLED, "the server is shutting down");
    }
    while (s->n_waiting > 0) {
        struct seq *q = s->waiting[s->n_waiting - 1];
        s->n_waiting--;
        seq_finish(s, q, REQ_FINISH_ERROR, SS_ECANCELLED, "the server is shutting down");
    }
    return NULL;
}

/* ---------- lifecycle ---------- */

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
    s->n_ctx = eng_model_n_ctx(m);
    s->n_vocab = eng_model_config(m)->n_vocab;
    int ok = squeue_init(&s->q) == 0;
    ok = ok && pthread_mutex_init(&s->stats_lock, NULL) == 0;
    s->opt.no_prefix_cache = o ? o->no_prefix_cache : 0;
    s->n_layers = eng_model_config(m)->n_layers;
    s->n_levels = eng_model_n_levels(m);
    if (s->n_levels < 1 || s->n_levels > ENG_MAX_LEVELS) {
        free(s);
        return NULL;
    }
    s->layer_level = calloc((size_t)s->n_layers, sizeof(int));
    s->layer_index = calloc((size_t)s->n_layers, sizeof(int));
    int max_layers = 1;
    for (int l = 0; s->layer_level && s->layer_index && l < s->n_layers; l++) {
        int k = eng_model_layer_level(m, l);
        s->layer_level[l] = k;
        s->layer_index[l] = s->level_layers[k]++;
        if (s->level_layers[k] > max_layers) max_layers = s->level_layers[k];
    }
    /* Prefix caching stays exact only for level 0 of single-level models: a
     * deeper level's blocks do not line up with the prompt's pages. */
    s->pool = kv_pool_new(eng_model_n_units(m), max_layers, !s->opt.no_prefix_cache && s->n_levels == 1);
    s->b_layer_pages = calloc((size_t)s->opt.max_num_seqs * (size_t)s->n_layers, sizeof(*s->b_layer_pages));
    s->b_kept = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_kept));
    s->running = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->running));
    s->b_tokens = malloc(sizeof(int32_t) * (size_t)s->opt.max_batched_tokens);
    s->b_seqs = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_seqs));
    s->b_owner = calloc((size_t)s->opt.max_num_seqs, sizeof(*s->b_owner));
    s->logits = malloc(sizeof(float) * (size_t)(s->opt.max_num_seqs + SCHED_PLP_CHUNK) * (size_t)s->n_vocab);
    s->smp_work = malloc((size_t)s->n_vocab * (sizeof(float) + sizeof(int32_t)));
    s->raw_row = malloc(sizeof(float) * (size_t)s->n_vocab);
    s->piece_cap = 3 * ((size_t)tok_max_piece_len(s->tok) + 4);
    s->piece = malloc(s->piece_cap);
    s->eog_ids = malloc(sizeof(int32_t) * 64);
    for (int32_t i = 0; s->eog_ids && i < s->n_vocab && s->n_eog < 64; i++)
        if (tok_is_eog(s->tok, i)) s->eog_ids[s->n_eog++] = i;
    if (!ok || !s->pool || !s->running || !s->b_tokens || !s->b_seqs || !s->b_owner || !s->logits ||
        !s->smp_work || !s->raw_row || !s->piece || !s->eog_ids || !s->layer_level || !s->layer_index ||
        !s->b_layer_pages || !s->b_kept) {
        sched_free(s);
        return NULL;
    }
    stats_init(&s->stats);
    s->stats.pages_total = kv_pool_n_units(s->pool);
    s->stats.n_levels = s->n_levels;
    return s;
}

int sched_start(struct sched *s) {
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) return SS_EINTERNAL;
    s->started = 1;
    return 0;
}

void sched_stop(struct sched *s) {
    if (!s || !s->started) return;
    pthread_mutex_lock(&s->q.lock);
    s->q.stop = 1;
    pthread_cond_signal(&s->q.cond);
    pthread_mutex_unlock(&s->q.lock);
    pthread_join(s->thread, NULL);
    s->started = 0;
    /* Requests submitted after the engine's last take. */
    int stop;
    struct sched_req *list = squeue_take(&s->q, 0, &stop);
    while (list) {
        struct sched_req *r = list;
        list = r->next;
        req_out_push(s, r, NULL, 0, 0, REQ_FINISH_ERROR, SS_ECANCELLED, "the server is shutting down");
        sched_req_unref(r);
    }
}

void sched_free(struct sched *s) {
    if (!s) return;
    sched_stop(s);
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
    free(s->layer_level);
    free(s->layer_index);
    free(s->b_layer_pages);
    free(s->b_kept);
    squeue_destroy(&s->q);
    pthread_mutex_destroy(&s->stats_lock);
    free(s);
}

void sched_get_stats(struct sched *s, struct sched_stats *st) {
    pthread_mutex_lock(&s->stats_lock);
    *st = s->stats;
    pthread_mutex_unlock(&s->stats_lock);
    eng_model_lte_stats(s->model, &st->lte); /* its own lock */
}
