/* metrics.c - GET /metrics: Prometheus text exposition format (version 0.0.4).
 *
 * Pure function of one struct sched_stats snapshot (sched_get_stats copies it
 * under the scheduler's stats lock), so /metrics costs O(number of series) on
 * the loop thread and nothing per token. Every family has HELP and TYPE lines;
 * histograms write cumulative _bucket{le=...} series ending with le="+Inf"
 * (= _count), then _sum and _count.
 *
 * Two name sets, always both (the text is a few KiB; nothing to configure):
 *   - "slimserve:" + vLLM's names, without labels except level/finished_reason/
 *     le, plus the SUBLLM per-level families;
 *   - "vllm:" + the same names, with vLLM's model_name label on each series
 *     and without the per-level families (vLLM has none), so that a router or
 *     dashboard written for vLLM reads slimserve unchanged: the Gateway API
 *     Inference Extension's endpoint picker reads vllm:num_requests_waiting,
 *     vllm:num_requests_running, vllm:kv_cache_usage_perc and
 *     vllm:cache_config_info with no configuration.
 * cache_config_info is an info-style gauge (value 1) whose labels carry the
 * pool's geometry as strings, as vLLM does: block_size (token slots per page)
 * and num_gpu_blocks (pages of the pool across all layers, whatever the device).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "engine/engine.h"
#include "kernels/ss_error.h"

/* entries of sched_stats.level_units / level_tokens */
#define API_STAT_LEVELS ((int)(sizeof(((struct sched_stats *)0)->level_units) / sizeof(int32_t)))

/* Where a name set is written: its prefix and the labels every one of its
 * series carries ("" or 'model_name="x"', already escaped). */
struct emit {
    struct api_buf *b;
    const char *prefix;
    const char *base; /* labels of every series, without braces; "" for none */
};

/* Writes "{base,extra}" (or nothing when both are empty). */
static void labels(const struct emit *e, const char *extra) {
    int has_base = e->base[0] != '\0', has_extra = extra && extra[0];
    if (!has_base && !has_extra)
        return;
    api_buf_printf(e->b, "{%s%s%s}", e->base, has_base && has_extra ? "," : "",
                   has_extra ? extra : "");
}

/* A label value with \\, " and newline escaped (text format 0.0.4). */
static void escape_label(char *dst, size_t cap, const char *v) {
    size_t n = 0;
    for (; v && *v && n + 3 < cap; v++) {
        if (*v == '\\' || *v == '"')
            dst[n++] = '\\', dst[n++] = *v;
        else if (*v == '\n')
            dst[n++] = '\\', dst[n++] = 'n';
        else
            dst[n++] = *v;
    }
    dst[n] = '\0';
}

static void family(const struct emit *e, const char *name, const char *type, const char *help) {
    api_buf_printf(e->b, "# HELP %s%s %s\n# TYPE %s%s %s\n", e->prefix, name, help, e->prefix,
                   name, type);
}

/* A sample value into t: integers exactly, others with enough digits to
 * round-trip. */
static const char *fmt_value(char t[40], double v) {
    if (isnan(v))
        return "NaN";
    if (isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(t, 40, "%.0f", v);
        return t;
    }
    for (int prec = 6; prec <= 17; prec++) { /* shortest text that reads back as v */
        snprintf(t, 40, "%.*g", prec, v);
        if (strtod(t, NULL) == v)
            break;
    }
    return t;
}

/* One series: prefix + name + suffix, labels (base and extra), value. */
static void sample_sfx(const struct emit *e, const char *name, const char *suffix,
                       const char *extra, double v) {
    api_buf_printf(e->b, "%s%s%s", e->prefix, name, suffix);
    labels(e, extra);
    char t[40];
    api_buf_printf(e->b, " %s\n", fmt_value(t, v));
}

static void sample(const struct emit *e, const char *name, const char *extra, double v) {
    sample_sfx(e, name, "", extra, v);
}

static void gauge(const struct emit *e, const char *name, const char *help, double v) {
    family(e, name, "gauge", help);
    sample(e, name, NULL, v);
}

static void counter(const struct emit *e, const char *name, const char *help, uint64_t v) {
    family(e, name, "counter", help);
    sample(e, name, NULL, (double)v);
}

static void histogram(const struct emit *e, const char *name, const char *help,
                      const struct sched_hist *h) {
    family(e, name, "histogram", help);
    uint64_t cum = 0;
    int n = h->n < 0 ? 0 : h->n > SCHED_HIST_MAX ? SCHED_HIST_MAX : h->n;
    char le[64];
    for (int i = 0; i <= n; i++) {
        cum += h->count[i];
        char t[40];
        snprintf(le, sizeof(le), "le=\"%s\"", i < n ? fmt_value(t, h->le[i]) : "+Inf");
        sample_sfx(e, name, "_bucket", le, (double)cum);
    }
    sample_sfx(e, name, "_sum", NULL, h->sum);
    sample_sfx(e, name, "_count", NULL, (double)cum);
}

/* The KV cache by SUBLLM level (DESIGN.md section 5; one level for dense
 * models), slimserve: names only. Units are 16 token slots of one layer
 * (engine.h), so the usage of level k is the share of the whole pool that
 * level k's block tables hold: the per-level usages add up to the unlabelled
 * total, except that a prefix block shared by several tables (dense models
 * only) counts once per table.
 * level_kept_fraction{level="k"} is level_tokens[k] /
 * level_tokens[k-1], k >= 1: for nested brackets ("TT(TT(T)TT)TT") level k-1
 * is the parent level, so it is the fraction the k-th subsampler kept.
 * NOTE: sibling brackets ("T(T)T(T)T") have level 0 as every level's parent;
 * sched_stats does not say which level is whose parent, so the ratio stays
 * to the previous level there. A snapshot with n_levels < 1 (taken before the
 * scheduler's first update) is shown as one level holding pages_used. */
static void kv_levels(const struct emit *e, const struct sched_stats *st) {
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

    for (int k = 0; k < n; k++) { /* continues the unlabelled kv_cache_usage_perc family */
        snprintf(lab, sizeof(lab), "level=\"%d\"", k);
        sample(e, "kv_cache_usage_perc", lab, total > 0 ? (double)units[k] / total : 0.0);
    }

    family(e, "kv_cache_level_units", "gauge",
           "KV units (16 token slots of one layer) held by requests at each SUBLLM level.");
    for (int k = 0; k < n; k++) {
        snprintf(lab, sizeof(lab), "level=\"%d\"", k);
        sample(e, "kv_cache_level_units", lab, (double)units[k]);
    }

    family(e, "level_tokens_total", "counter",
           "Tokens computed at each SUBLLM level (level 0: every computed token).");
    for (int k = 0; k < n; k++) {
        snprintf(lab, sizeof(lab), "level=\"%d\"", k);
        sample(e, "level_tokens_total", lab, (double)st->level_tokens[k]);
    }

    family(e, "level_kept_fraction", "gauge",
           "Fraction of the tokens reaching level k-1 that were kept at level k "
           "(cumulative; 0 before any token).");
    for (int k = 1; k < n; k++) {
        snprintf(lab, sizeof(lab), "level=\"%d\"", k);
        uint64_t den = st->level_tokens[k - 1];
        sample(e, "level_kept_fraction", lab,
               den > 0 ? (double)st->level_tokens[k] / (double)den : 0.0);
    }
}

/* The KV pool's geometry as an info gauge (vLLM's cache_config_info). Written
 * without the base labels: vLLM's carries only the cache config. */
static void cache_config(const struct emit *e, const struct api_model_info *mi) {
    family(e, "cache_config_info", "gauge",
           "Information of the KV cache configuration (value 1; the labels carry it): "
           "block_size token slots per page, num_gpu_blocks pages in the pool.");
    struct emit bare = *e;
    bare.base = "";
    char lab[96];
    snprintf(lab, sizeof(lab), "block_size=\"%d\",num_gpu_blocks=\"%ld\"", ENG_PAGE_SLOTS,
             mi ? (long)mi->kv_pages : 0L);
    sample(&bare, "cache_config_info", lab, 1.0);
}

/* LTE sparsity (DESIGN.md section 5), only for a model with LTE in force:
 * per routed layer the mean fraction of experts active per token since start,
 * and the histogram over (layer, step) of the union fraction: the experts
 * active for at least one token of the step, i.e. the share of FFN weights the
 * step read. */
static void lte_metrics(const struct emit *e, const struct eng_lte_stats *l) {
    if (l->n_layers <= 0)
        return;
    family(e, "lte_active_expert_fraction", "gauge",
           "Mean fraction of LTE experts active per token, by layer (since start).");
    for (int il = 0; il < l->n_layers && il < ENG_LTE_STAT_LAYERS; il++) {
        if (!l->routed[il])
            continue;
        char lab[32];
        snprintf(lab, sizeof(lab), "layer=\"%d\"", il);
        sample(e, "lte_active_expert_fraction", lab, l->active_frac[il]);
    }
    struct sched_hist h = {.n = ENG_LTE_UNION_BINS, .total = l->union_steps, .sum = l->union_sum};
    for (int i = 0; i < ENG_LTE_UNION_BINS; i++) {
        h.le[i] = (i + 1) / (double)ENG_LTE_UNION_BINS;
        h.count[i] = l->union_count[i];
    }
    histogram(e, "lte_step_union_fraction",
              "Per layer and engine step: fraction of LTE experts active for at least one token.", &h);
}

/* Embeddings (slimserve: only; vLLM has no such families): sequences that
 * ended with a vector (one per input of /v1/embeddings) and their prompt
 * tokens. Both also count in prompt_tokens_total and request_success_total
 * ("stop"), as vLLM counts its pooling requests. */
static void embed_metrics(const struct emit *e, const struct sched_stats *st) {
    counter(e, "embedding_inputs_total",
            "Embedding inputs (one sequence each) answered with a vector.", st->n_embed_done);
    counter(e, "embedding_prompt_tokens_total", "Prompt tokens of the embedding inputs answered.",
            st->n_embed_tokens);
}

/* One name set. per_level: also the SUBLLM per-level series (slimserve: only). */
static void name_set(const struct emit *e, const struct sched_stats *st,
                     const struct api_model_info *mi, int per_level) {
    gauge(e, "num_requests_running", "Number of requests in the running batch.", st->n_running);
    gauge(e, "num_requests_waiting", "Number of requests waiting to be scheduled.",
          st->n_waiting);

    double total = st->pages_total > 0 ? (double)st->pages_total : 0.0;
    gauge(e, "kv_cache_usage_perc",
          per_level ? "KV-cache usage: fraction of the KV unit pool in use by requests (1 = full); "
                      "with a level label, the fraction held by that SUBLLM level's block tables."
                    : "KV-cache usage: fraction of the KV unit pool in use by requests (1 = full).",
          total > 0 ? (double)st->pages_used / total : 0.0);
    if (per_level)
        kv_levels(e, st);
    cache_config(e, mi);

    counter(e, "num_preemptions_total", "Cumulative number of preemptions.", st->n_preemptions);
    counter(e, "prompt_tokens_total", "Number of prefill tokens processed.", st->n_prompt_tokens);
    counter(e, "generation_tokens_total", "Number of generation tokens processed.",
            st->n_gen_tokens);
    counter(e, "prefix_cache_queries_total",
            "Prefix-cache queries, in tokens looked up at admission.", st->n_prefix_queries);
    counter(e, "prefix_cache_hits_total", "Prefix-cache hits, in tokens found cached.",
            st->n_prefix_hits);

    family(e, "request_success_total", "counter", "Count of finished requests by finish reason.");
    static const struct { int finish; const char *label; } reasons[] = {
        {REQ_FINISH_STOP, "stop"},
        {REQ_FINISH_LENGTH, "length"},
        {REQ_FINISH_CANCELLED, "abort"},
        {REQ_FINISH_ERROR, "error"},
    };
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        char lab[48];
        snprintf(lab, sizeof(lab), "finished_reason=\"%s\"", reasons[i].label);
        sample(e, "request_success_total", lab, (double)st->n_finished[reasons[i].finish]);
    }

    histogram(e, "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              &st->ttft_s);
    histogram(e, "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              &st->itl_s);
    histogram(e, "e2e_request_latency_seconds",
              "Histogram of end-to-end request latency in seconds.", &st->e2e_s);
    histogram(e, "request_queue_time_seconds",
              "Histogram of time spent waiting in the queue in seconds.", &st->queue_s);
    histogram(e, "iteration_tokens_total", "Histogram of tokens per engine step.",
              &st->batch_tokens);

    /* speculative decoding (scheduler/spec.c), vLLM's counter names */
    counter(e, "spec_decode_num_drafts_total",
            "Speculative decoding: verifications (one sequence's draft tokens in one step).",
            st->n_spec_drafts);
    counter(e, "spec_decode_num_draft_tokens_total", "Speculative decoding: draft tokens verified.",
            st->n_spec_draft_tokens);
    counter(e, "spec_decode_num_accepted_tokens_total",
            "Speculative decoding: draft tokens accepted.", st->n_spec_accepted);
    if (per_level) /* slimserve: only */
        histogram(e, "spec_decode_accepted_tokens_per_step",
                  "Speculative decoding: draft tokens accepted per verification (one sequence, "
                  "one step).",
                  &st->spec_accepted);
}

int api_metrics_text(struct api_buf *b, const struct sched_stats *st,
                     const struct api_model_info *mi) {
    struct emit own = {b, "slimserve:", ""};
    name_set(&own, st, mi, 1);
    lte_metrics(&own, &st->lte); /* slimserve: only, like the per-level series */
    embed_metrics(&own, st);

    char name[200], base[240];
    escape_label(name, sizeof(name), mi && mi->name ? mi->name : "");
    snprintf(base, sizeof(base), "model_name=\"%s\"", name);
    struct emit vllm = {b, "vllm:", base};
    name_set(&vllm, st, mi, 0);
    return b->oom ? SS_ENOMEM : 0;
}
