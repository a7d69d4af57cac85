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
#include "engine/ss_error.h"

#define P "slimserve:"

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

int api_metrics_text(struct api_buf *b, const struct sched_stats *st) {
    family(b, "num_requests_running", "gauge", "Number of requests in the running batch.");
    sample(b, "num_requests_running", NULL, st->n_running);
    family(b, "num_requests_waiting", "gauge", "Number of requests waiting to be scheduled.");
    sample(b, "num_requests_waiting", NULL, st->n_waiting);

    double usage = st->pages_total > 0 ? (double)st->pages_used / (double)st->pages_total : 0.0;
    family(b, "kv_cache_usage_perc", "gauge",
           "KV-cache usage: fraction of KV pages in use by requests (1 = full).");
    sample(b, "kv_cache_usage_perc", NULL, usage);
    sample(b, "kv_cache_usage_perc", "{level=\"0\"}", usage);

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
    return b->oom ? SS_ENOMEM : 0;
}
