/* stats.c - the scheduler's statistics: latency and batch-size histograms,
 * counters and gauges, recorded on the engine thread into s->st (no lock:
 * only the engine thread touches it). stats_publish hands a copy to readers
 * through queue.c, the only place with the lock; sched_get_stats reads it.
 */
#include <string.h>

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

void stats_init(struct sched_stats *st) {
    static const double lat[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0};
    static const double itl[] = {0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                                 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0};
    static const double bt[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
    memset(st, 0, sizeof(*st));
    hist_init(&st->ttft_s, lat, 20);
    hist_init(&st->itl_s, itl, 20);
    hist_init(&st->e2e_s, lat, 20);
    hist_init(&st->queue_s, lat, 20);
    hist_init(&st->batch_tokens, bt, 14);
    static const double acc[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16};
    hist_init(&st->spec_accepted, acc, 12);
}

void stats_on_spec(struct sched *s, int n_draft, int n_accepted) {
    s->st.n_spec_drafts++;
    s->st.n_spec_draft_tokens += (uint64_t)n_draft;
    s->st.n_spec_accepted += (uint64_t)n_accepted;
    sched_hist_observe(&s->st.spec_accepted, n_accepted);
}

void stats_on_admit(struct sched *s, const struct seq *q, int64_t hit) {
    if (!q->pool) { /* embeddings do not look the prefix cache up */
        s->st.n_prefix_queries += (uint64_t)q->n_tokens;
        s->st.n_prefix_hits += (uint64_t)hit;
    }
    if (q->admit_order == 0) { /* first admission: it leaves the queue */
        sched_hist_observe(&s->st.queue_s, sched_now() - q->req->t_submit);
        s->st.n_prompt_tokens += (uint64_t)q->n_prompt;
    }
}

void stats_on_preempt(struct sched *s) {
    s->st.n_preemptions++;
}

void stats_on_step(struct sched *s, int32_t n_tokens, double busy_s, const uint64_t *level_tokens) {
    sched_hist_observe(&s->st.batch_tokens, n_tokens);
    s->st.n_steps++;
    s->st.busy_s += busy_s;
    for (int k = 0; k < s->n_levels; k++) s->st.level_tokens[k] += level_tokens[k];
}

void stats_on_token(struct sched *s, struct seq *q, double now) {
    if (q->n_gen == 0)
        sched_hist_observe(&s->st.ttft_s, now - q->req->t_submit);
    else
        sched_hist_observe(&s->st.itl_s, now - q->t_last);
    q->t_last = now;
    s->st.n_gen_tokens++;
}

void stats_on_finish(struct sched *s, const struct sched_req *r, int finish) {
    sched_hist_observe(&s->st.e2e_s, sched_now() - r->t_submit);
    if (finish >= 0 && finish < 5) s->st.n_finished[finish]++;
    s->st.n_requests_done++;
    if (r->p.pooling != ENG_POOL_NONE && finish == REQ_FINISH_STOP) {
        s->st.n_embed_done++;
        s->st.n_embed_tokens += (uint64_t)r->p.n_prompt;
    }
}

/* Gauges: queue lengths and KV units in use, per level. */
static void stats_refresh(struct sched *s) {
    struct sched_stats *st = &s->st;
    st->n_running = s->n_running;
    st->n_waiting = s->n_waiting;
    st->pages_total = kv_pool_n_units(s->pool);
    st->pages_used = st->pages_total - kv_pool_n_free(s->pool);
    st->pages_cached = kv_pool_n_cached(s->pool);
    st->n_levels = s->n_levels;
    for (int k = 0; k < s->n_levels; k++) {
        int32_t used = 0;
        for (int i = 0; i < s->n_running; i++) used += s->running[i]->tables[k].n_pages;
        for (int i = 0; i < s->n_waiting; i++) used += s->waiting[i]->tables[k].n_pages;
        st->level_units[k] = used * s->level_layers[k];
    }
}

void stats_publish(struct sched *s) {
    stats_refresh(s);
    eng_model_lte_stats(s->model, &s->st.lte); /* engine thread, like the rest */
    squeue_stats_write(&s->q, &s->st);
}

void sched_get_stats(struct sched *s, struct sched_stats *st) {
    squeue_stats_read(&s->q, st);
}
