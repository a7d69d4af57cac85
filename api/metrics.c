/* metrics.c - GET /metrics: Prometheus text exposition format (version 0.0.4).
 *
 * Pure function of one struct sched_stats snapshot (sched_get_stats copies it
 * under the scheduler's stats lock), so /metrics costs O(number of series) on
 * the loop thread and nothing per token. Names are vLLM's with the prefix
 * "slimserve:" instead of "vllm:". Every family has HELP and TYPE lines;
 * histograms write cumulative _bucket{le=...} series ending with le="+Inf"
 * (= _count), then _sum and _count.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "kernels/ss_error.h"

#define P "slimserve:"
/* entries of sched_stats.level_units / level_tokens */
#define API_STAT_LEVELS ((int)(sizeof(((struct sched_stats *)0)->level_units) / sizeof(int32_t)))

static void family(struct api_buf *b, const char *name, const char *type, const char *help) {
    api_buf_printf(b, "# HELP " P "%s %s\n# TYPE " P "%s %s\n", name, help, name, type);
}

/* A sample value: integers exactly, others with enough digits to round-trip. */
static void value(struct api_buf *b, double v) {
    if (isnan(v))
        api_buf_puts(b, "NaN");
    else if (isinf(v))
        api_buf_puts(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        api_buf_printf(b, "%.0f", v);
    else {
        char t[40];
        for (int prec = 6; prec <= 17; prec++) { /* shortest text that reads back as v */
            snprintf(t, sizeof(t), "%.*g", prec, v);
            if (strtod(t, NULL) == v)
                break;
        }
        api_buf_puts(b, t);
    }
}

static void sample(struct api_buf *b, const char *name, const char *labels, double v) {
    api_buf_printf(b, P "%s%s ", name, labels ? labels : "");
    value(b, v);
    api_buf_puts(b, "\n");
}

static void counter(struct api_buf *b, const char *name, const char *help, uint64_t v) {
    family(b, name, "counter", help);
    sample(b, name, NULL, (double)v);
}

static void histogram(struct api_buf *b, const char *name, const char *help,
                      const struct sched_hist *h) {
    family(b, name, "histogram", help);
    uint64_t cum = 0;
    int n = h->n < 0 ? 0 : h->n > SCHED_HIST_MAX ? SCHED_HIST_MAX : h->n;
    for (int i = 0; i < n; i++) {
        cum += h->count[i];
        api_buf_printf(b, P "%s_bucket{le=\"", name);
        value(b, h->le[i]);
        api_buf_printf(b, "\"} %llu\n", (unsigned long long)cum);
    }
    cum += h->count[n];
    api_buf_printf(b, P "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    api_buf_printf(b, P "%s_sum ", name);
    value(b, h->sum);
    api_buf_printf(b, "\n" P "%s_count %llu\n", name, (unsigned long long)cum);
}

/* The KV cache by SUBLLM level (DESIGN.md section 5; one level for dense
 * models). Units are 16 token slots of one layer (engine.h), so the usage of
 * level k is the share of the whole pool that level k's block tables hold:
 * the per-level usages add up to the unlabelled total, except that a prefix
 * block shared by several tables (dense models only) counts once per table.
 * level_kept_fraction{level="k"} is level_tokens[k] /
 * level_tokens[k-1], k >= 1: for nested brackets ("TT(TT(T)TT)TT") level k-1
 * is the parent level, so it is the fraction the k-th subsampler kept.
 * NOTE: sibling brackets ("T(T)T(T)T") have level 0 as every level's parent;
 * sched_stats does not say which level is whose parent, so the ratio stays
 * to the previous level there. A snapshot with n_levels < 1 (taken before the
 * scheduler's first update) is shown as one level holding pages_used. */
static void kv_levels(struct api_buf *b, const struct sched_stats *st) {
    int n = st->n_levels > API_STAT_LEVELS ? API_STAT_LEVELS : st->n_levels;
    int32_t units[API_STAT_LEVELS];
    if (n < 1) {
        n = 1;
        units[0] = st->pages_used;
    } else {
        for (int k = 0; k < n; k++) units[k] = st->level_units[k];
    }
    double total = st->pages_total > 0 ? (double)st->pages_total : 0.0;
    char lab[32];

    family(b, "kv_cache_usage_perc", "gauge",
           "KV-cache usage: fraction of the KV unit pool in use by requests (1 = full); "
           "with a level label, the fraction held by that SUBLLM level's block tables.");
    sample(b, "kv_cache_usage_perc", NULL, total > 0 ? (double)st->pages_used / total : 0.0);
    for (int k = 0; k < n; k++) {
        snprintf(lab, sizeof(lab), "{level=\"%d\"}", k);
        sample(b, "kv_cache_usage_perc", lab, total > 0 ? (double)units[k] / total : 0.0);
    }

    family(b, "kv_cache_level_units", "gauge",
           "KV units (16 token slots of one layer) held by requests at each SUBLLM level.");
    for (int k = 0; k < n; k++) {
        snprintf(lab, sizeof(lab), "{level=\"%d\"}", k);
        sample(b, "kv_cache_level_units", lab, (double)units[k]);
    }

    family(b, "level_tokens_total", "counter",
           "Tokens computed at each SUBLLM level (level 0: every computed token).");
    for (int k = 0; k < n; k++) {
        snprintf(lab, sizeof(lab), "{level=\"%d\"}", k);
        sample(b, "level_tokens_total", lab, (double)st->level_tokens[k]);
    }

    family(b, "level_kept_fraction", "gauge",
           "Fraction of the tokens reaching level k-1 that were kept at level k "
           "(cumulative; 0 before any token).");
    for (int k = 1; k < n; k++) {
        snprintf(lab, sizeof(lab), "{level=\"%d\"}", k);
        uint64_t den = st->level_tokens[k - 1];
        sample(b, "level_kept_fraction", lab,
               den > 0 ? (double)st->level_tokens[k] / (double)den : 0.0);
    }
}

/* LTE sparsity (DESIGN.md section 5), only for a model with LTE in force:
 * per routed layer the mean fraction of experts active per token since start,
 * and the histogram over (layer, step) of the union fraction: the experts
 * active for at least one token of the step, i.e. the share of FFN weights the
 * step read. */
static void lte_metrics(struct api_buf *b, const struct eng_lte_stats *l) {
    if (l->n_layers <= 0)
        return;
    family(b, "lte_active_expert_fraction", "gauge",
           "Mean fraction of LTE experts active per token, by layer (since start).");
    for (int il = 0; il < l->n_layers && il < ENG_LTE_STAT_LAYERS; il++) {
        if (!l->routed[il])
            continue;
        char lab[32];
        snprintf(lab, sizeof(lab), "{layer=\"%d\"}", il);
        sample(b, "lte_active_expert_fraction", lab, l->active_frac[il]);
    }
    struct sched_hist h = {.n = ENG_LTE_UNION_BINS, .total = l->union_steps, .sum = l->union_sum};
    for (int i = 0; i < ENG_LTE_UNION_BINS; i++) {
        h.le[i] = (i + 1) / (double)ENG_LTE_UNION_BINS;
        h.count[i] = l->union_count[i];
    }
    histogram(b, "lte_step_union_fraction",
              "Per layer and engine step: fraction of LTE experts active for at least one token.", &h);
}

int api_metrics_text(struct api_buf *b, const struct sched_stats *st) {
    family(b, "num_requests_running", "gauge", "Number of requests in the running batch.");
    sample(b, "num_requests_running", NULL, st->n_running);
    family(b, "num_requests_waiting", "gauge", "Number of requests waiting to be scheduled.");
    sample(b, "num_requests_waiting", NULL, st->n_waiting);

    kv_levels(b, st);

    counter(b, "num_preemptions_total", "Cumulative number of preemptions.", st->n_preemptions);
    counter(b, "prompt_tokens_total", "Number of prefill tokens processed.", st->n_prompt_tokens);
    counter(b, "generation_tokens_total", "Number of generation tokens processed.",
            st->n_gen_tokens);
    counter(b, "prefix_cache_queries_total",
            "Prefix-cache queries, in tokens looked up at admission.", st->n_prefix_queries);
    counter(b, "prefix_cache_hits_total", "Prefix-cache hits, in tokens found cached.",
            st->n_prefix_hits);

    family(b, "request_success_total", "counter",
           "Count of finished requests by finish reason.");
    static const struct { int finish; const char *label; } reasons[] = {
        {REQ_FINISH_STOP, "stop"},
        {REQ_FINISH_LENGTH, "length"},
        {REQ_FINISH_CANCELLED, "abort"},
        {REQ_FINISH_ERROR, "error"},
    };
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        char lab[48];
        snprintf(lab, sizeof(lab), "{finished_reason=\"%s\"}", reasons[i].label);
        sample(b, "request_success_total", lab, (double)st->n_finished[reasons[i].finish]);
    }

    histogram(b, "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              &st->ttft_s);
    histogram(b, "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              &st->itl_s);
    histogram(b, "e2e_request_latency_seconds",
              "Histogram of end-to-end request latency in seconds.", &st->e2e_s);
    histogram(b, "request_queue_time_seconds",
              "Histogram of time spent waiting in the queue in seconds.", &st->queue_s);
    histogram(b, "iteration_tokens_total", "Histogram of tokens per engine step.",
              &st->batch_tokens);
    lte_metrics(b, &st->lte);
    return b->oom ? SS_ENOMEM : 0;
}
