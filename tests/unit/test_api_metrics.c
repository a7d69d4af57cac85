/* test_api_metrics.c - the Prometheus text of GET /metrics (api/metrics.c),
 * parsed back: HELP/TYPE lines, counters and gauges from a scheduler
 * snapshot, cumulative histogram buckets with _sum/_count, per-level series,
 * the vllm: name set (model_name label) and cache_config_info.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "scheduler/sched.h"
#include "tu_check.h"

/* ---------------------------------------------------------------- metrics */

/* One parsed sample line of the exposition text. */
struct prom_sample {
    char name[96];
    char labels[96];
    double value;
};

/* Parses the text: every sample's family must have had HELP and TYPE lines
 * first. Returns the number of samples written to out (cap entries). */
static int prom_parse(const char *text, struct prom_sample *out, int cap, char types[][2][64],
                      int *n_types) {
    int n = 0;
    *n_types = 0;
    char help_for[96] = "";
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        ck_assert_msg(nl != NULL, "the text must end with a newline");
        char line[256];
        size_t len = (size_t)(nl - p);
        ck_assert(len < sizeof(line));
        memcpy(line, p, len);
        line[len] = '\0';
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            ck_assert(sscanf(line + 7, "%95s", help_for) == 1);
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], type[32];
            ck_assert(sscanf(line + 7, "%95s %31s", name, type) == 2);
            ck_assert_msg(strcmp(name, help_for) == 0, "TYPE %s without HELP", name);
            ck_assert(*n_types < 128);
            snprintf(types[*n_types][0], 64, "%.63s", name);
            snprintf(types[*n_types][1], 64, "%.31s", type);
            (*n_types)++;
            continue;
        }
        ck_assert_msg(line[0] != '#' && line[0] != '\0', "unexpected line '%s'", line);
        ck_assert(n < cap);
        struct prom_sample *s = &out[n++];
        char *sp = strchr(line, ' ');
        ck_assert(sp != NULL);
        *sp = '\0';
        char *brace = strchr(line, '{');
        s->labels[0] = '\0';
        if (brace) {
            snprintf(s->labels, sizeof(s->labels), "%.95s", brace);
            *brace = '\0';
        }
        snprintf(s->name, sizeof(s->name), "%.95s", line);
        s->value = strcmp(sp + 1, "+Inf") == 0 ? INFINITY : strtod(sp + 1, NULL);
        ck_assert_msg(!strncmp(s->name, "slimserve:", 10) || !strncmp(s->name, "vllm:", 5), "%s",
                      s->name);
        /* the family was declared */
        int found = 0;
        for (int t = 0; t < *n_types && !found; t++) {
            size_t fl = strlen(types[t][0]);
            found = strncmp(s->name, types[t][0], fl) == 0 &&
                    (s->name[fl] == '\0' || !strcmp(s->name + fl, "_bucket") ||
                     !strcmp(s->name + fl, "_sum") || !strcmp(s->name + fl, "_count"));
        }
        ck_assert_msg(found, "sample %s has no TYPE line before it", s->name);
    }
    return n;
}

static double prom_get(const struct prom_sample *s, int n, const char *name, const char *labels) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name) && !strcmp(s[i].labels, labels ? labels : ""))
            return s[i].value;
    ck_abort_msg("no sample %s%s", name, labels ? labels : "");
    return NAN;
}

START_TEST(test_metrics_text) {
    struct sched_stats st;
    memset(&st, 0, sizeof(st));
    st.n_running = 3;
    st.n_waiting = 2;
    st.pages_used = 25;
    st.pages_total = 100;
    st.n_prompt_tokens = 1234;
    st.n_gen_tokens = 567;
    st.n_preemptions = 4;
    st.n_prefix_queries = 90;
    st.n_prefix_hits = 32;
    st.n_finished[REQ_FINISH_STOP] = 5;
    st.n_finished[REQ_FINISH_LENGTH] = 6;
    st.n_finished[REQ_FINISH_CANCELLED] = 1;
    st.n_finished[REQ_FINISH_ERROR] = 2;
    struct sched_hist *hs[] = {&st.ttft_s, &st.itl_s, &st.e2e_s, &st.queue_s, &st.batch_tokens};
    static const double le[] = {0.001, 0.005, 0.1, 1.0, 2.5};
    for (int k = 0; k < 5; k++) {
        hs[k]->n = 5;
        memcpy(hs[k]->le, le, sizeof(le));
    }
    static const double obs[] = {0.0005, 0.003, 0.003, 0.05, 0.7, 2.0, 9.0};
    for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++)
        sched_hist_observe(&st.ttft_s, obs[i]);
    sched_hist_observe(&st.batch_tokens, 0.0008);

    struct api_buf b;
    api_buf_init(&b);
    ck_assert_int_eq(api_metrics_text(&b, &st, NULL), 0);
    static struct prom_sample s[512];
    static char types[128][2][64];
    int nt = 0;
    int n = prom_parse(b.data, s, 512, types, &nt);
    ck_assert(n > 40);

    ck_assert(prom_get(s, n, "slimserve:num_requests_running", NULL) == 3);
    ck_assert(prom_get(s, n, "slimserve:num_requests_waiting", NULL) == 2);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", NULL) == 0.25);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"0\"}") == 0.25);
    ck_assert(prom_get(s, n, "slimserve:prompt_tokens_total", NULL) == 1234);
    ck_assert(prom_get(s, n, "slimserve:generation_tokens_total", NULL) == 567);
    ck_assert(prom_get(s, n, "slimserve:num_preemptions_total", NULL) == 4);
    ck_assert(prom_get(s, n, "slimserve:prefix_cache_queries_total", NULL) == 90);
    ck_assert(prom_get(s, n, "slimserve:prefix_cache_hits_total", NULL) == 32);
    ck_assert(prom_get(s, n, "slimserve:request_success_total", "{finished_reason=\"stop\"}") == 5);
    ck_assert(prom_get(s, n, "slimserve:request_success_total", "{finished_reason=\"length\"}") ==
              6);
    ck_assert(prom_get(s, n, "slimserve:request_success_total", "{finished_reason=\"abort\"}") ==
              1);
    ck_assert(prom_get(s, n, "slimserve:request_success_total", "{finished_reason=\"error\"}") ==
              2);

    /* every histogram: cumulative buckets ending at +Inf == _count, a _sum */
    static const char *const hist[] = {
        "slimserve:time_to_first_token_seconds", "slimserve:inter_token_latency_seconds",
        "slimserve:e2e_request_latency_seconds", "slimserve:request_queue_time_seconds",
        "slimserve:iteration_tokens_total"};
    for (int h = 0; h < 5; h++) {
        int typed = 0;
        for (int t = 0; t < nt; t++)
            typed |= !strcmp(types[t][0], hist[h]) && !strcmp(types[t][1], "histogram");
        ck_assert_msg(typed, "%s is not typed histogram", hist[h]);
        char bucket[128];
        snprintf(bucket, sizeof(bucket), "%s_bucket", hist[h]);
        double prev = -1, prev_le = -INFINITY, inf = -1;
        int nb = 0;
        for (int i = 0; i < n; i++) {
            if (strcmp(s[i].name, bucket) != 0)
                continue;
            nb++;
            ck_assert(strncmp(s[i].labels, "{le=\"", 5) == 0);
            double lev = strcmp(s[i].labels, "{le=\"+Inf\"}") == 0 ? INFINITY
                                                                  : strtod(s[i].labels + 5, NULL);
            ck_assert_msg(lev > prev_le, "%s: le not increasing", hist[h]);
            ck_assert_msg(s[i].value >= prev, "%s: buckets not cumulative", hist[h]);
            prev = s[i].value;
            prev_le = lev;
            if (isinf(lev))
                inf = s[i].value;
        }
        ck_assert_int_eq(nb, 6);
        ck_assert(isinf(prev_le)); /* the last bucket is +Inf */
        char cnt[128], sum[128];
        snprintf(cnt, sizeof(cnt), "%s_count", hist[h]);
        snprintf(sum, sizeof(sum), "%s_sum", hist[h]);
        ck_assert(prom_get(s, n, cnt, NULL) == inf);
        (void)prom_get(s, n, sum, NULL);
    }
    /* the ttft buckets hold the observations, cumulatively */
    const char *tb = "slimserve:time_to_first_token_seconds_bucket";
    ck_assert(prom_get(s, n, tb, "{le=\"0.001\"}") == 1);
    ck_assert(prom_get(s, n, tb, "{le=\"0.005\"}") == 3);
    ck_assert(prom_get(s, n, tb, "{le=\"0.1\"}") == 4);
    ck_assert(prom_get(s, n, tb, "{le=\"1\"}") == 5);
    ck_assert(prom_get(s, n, tb, "{le=\"2.5\"}") == 6);
    ck_assert(prom_get(s, n, tb, "{le=\"+Inf\"}") == 7);
    ck_assert(fabs(prom_get(s, n, "slimserve:time_to_first_token_seconds_sum", NULL) - 11.7565) <
              1e-9);
    ck_assert(prom_get(s, n, "slimserve:iteration_tokens_total_count", NULL) == 1);
    ck_assert(prom_get(s, n, "slimserve:e2e_request_latency_seconds_count", NULL) == 0);
    api_buf_free(&b);

    /* an empty pool does not divide by zero */
    memset(&st, 0, sizeof(st));
    api_metrics_text(&b, &st, NULL);
    ck_assert(strstr(b.data, "slimserve:kv_cache_usage_perc 0\n") != NULL);
    api_buf_free(&b);
}
END_TEST

/* The type the text declares for a family, or "" if none. */
static const char *prom_type(char types[][2][64], int nt, const char *name) {
    for (int t = 0; t < nt; t++)
        if (!strcmp(types[t][0], name)) return types[t][1];
    return "";
}

static int prom_has(const struct prom_sample *s, int n, const char *name, const char *labels) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name) && !strcmp(s[i].labels, labels)) return 1;
    return 0;
}

/* Per-level KV series of a SUBLLM model (3 levels), of a dense model, and of
 * degenerate snapshots (no tokens yet, n_levels out of range). */
START_TEST(test_metrics_levels) {
    struct sched_stats st;
    memset(&st, 0, sizeof(st));
    st.pages_total = 200;
    st.pages_used = 54;
    st.n_levels = 3;
    st.level_units[0] = 30;
    st.level_units[1] = 18;
    st.level_units[2] = 6;
    st.level_units[3] = 999; /* beyond n_levels: never shown */
    st.level_tokens[0] = 1000;
    st.level_tokens[1] = 640;
    st.level_tokens[2] = 400;
    st.level_tokens[3] = 7;

    struct api_buf b;
    api_buf_init(&b);
    ck_assert_int_eq(api_metrics_text(&b, &st, NULL), 0);
    static struct prom_sample s[512];
    static char types[128][2][64];
    int nt = 0;
    int n = prom_parse(b.data, s, 512, types, &nt);

    ck_assert_str_eq(prom_type(types, nt, "slimserve:kv_cache_usage_perc"), "gauge");
    ck_assert_str_eq(prom_type(types, nt, "slimserve:kv_cache_level_units"), "gauge");
    ck_assert_str_eq(prom_type(types, nt, "slimserve:level_tokens_total"), "counter");
    ck_assert_str_eq(prom_type(types, nt, "slimserve:level_kept_fraction"), "gauge");
    /* the unlabelled total stays: pages_used / pages_total */
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", NULL) == 0.27);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"0\"}") == 0.15);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"1\"}") == 0.09);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"2\"}") == 0.03);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_level_units", "{level=\"0\"}") == 30);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_level_units", "{level=\"1\"}") == 18);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_level_units", "{level=\"2\"}") == 6);
    ck_assert(prom_get(s, n, "slimserve:level_tokens_total", "{level=\"0\"}") == 1000);
    ck_assert(prom_get(s, n, "slimserve:level_tokens_total", "{level=\"1\"}") == 640);
    ck_assert(prom_get(s, n, "slimserve:level_tokens_total", "{level=\"2\"}") == 400);
    ck_assert(prom_get(s, n, "slimserve:level_kept_fraction", "{level=\"1\"}") == 0.64);
    ck_assert(prom_get(s, n, "slimserve:level_kept_fraction", "{level=\"2\"}") == 0.625);
    /* no fraction for level 0, nothing at or past n_levels */
    ck_assert(!prom_has(s, n, "slimserve:level_kept_fraction", "{level=\"0\"}"));
    ck_assert(!prom_has(s, n, "slimserve:kv_cache_usage_perc", "{level=\"3\"}"));
    ck_assert(!prom_has(s, n, "slimserve:kv_cache_level_units", "{level=\"3\"}"));
    ck_assert(!prom_has(s, n, "slimserve:level_tokens_total", "{level=\"3\"}"));
    ck_assert(!prom_has(s, n, "slimserve:level_kept_fraction", "{level=\"3\"}"));
    /* the exact text of a few lines */
    ck_assert(strstr(b.data, "\nslimserve:kv_cache_usage_perc{level=\"1\"} 0.09\n") != NULL);
    ck_assert(strstr(b.data, "\nslimserve:kv_cache_level_units{level=\"2\"} 6\n") != NULL);
    ck_assert(strstr(b.data, "\nslimserve:level_tokens_total{level=\"0\"} 1000\n") != NULL);
    ck_assert(strstr(b.data, "\nslimserve:level_kept_fraction{level=\"2\"} 0.625\n") != NULL);
    ck_assert(strstr(b.data, "# TYPE slimserve:level_kept_fraction gauge\n") != NULL);
    ck_assert(strstr(b.data, "# TYPE slimserve:level_tokens_total counter\n") != NULL);
    api_buf_free(&b);

    /* a zero denominator gives 0, not NaN: no token reached level 1 yet */
    st.level_tokens[0] = 50;
    st.level_tokens[1] = 0;
    st.level_tokens[2] = 0;
    api_metrics_text(&b, &st, NULL);
    n = prom_parse(b.data, s, 512, types, &nt);
    ck_assert(prom_get(s, n, "slimserve:level_kept_fraction", "{level=\"1\"}") == 0);
    ck_assert(prom_get(s, n, "slimserve:level_kept_fraction", "{level=\"2\"}") == 0);
    api_buf_free(&b);
    memset(st.level_tokens, 0, sizeof(st.level_tokens));
    api_metrics_text(&b, &st, NULL);
    ck_assert(strstr(b.data, "slimserve:level_kept_fraction{level=\"1\"} 0\n") != NULL);
    ck_assert(strstr(b.data, "NaN") == NULL);
    api_buf_free(&b);

    /* a dense model: one level, no kept fraction samples (the family is declared) */
    memset(&st, 0, sizeof(st));
    st.pages_total = 64;
    st.pages_used = 16;
    st.n_levels = 1;
    st.level_units[0] = 16;
    st.level_tokens[0] = 77;
    api_metrics_text(&b, &st, NULL);
    n = prom_parse(b.data, s, 512, types, &nt);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"0\"}") == 0.25);
    ck_assert(prom_get(s, n, "slimserve:level_tokens_total", "{level=\"0\"}") == 77);
    ck_assert(!prom_has(s, n, "slimserve:kv_cache_usage_perc", "{level=\"1\"}"));
    for (int i = 0; i < n; i++) ck_assert(strcmp(s[i].name, "slimserve:level_kept_fraction") != 0);
    api_buf_free(&b);

    /* n_levels beyond the arrays is clamped to them; an empty pool divides by nothing */
    memset(&st, 0, sizeof(st));
    st.n_levels = 1000;
    for (int k = 0; k < 8; k++) st.level_units[k] = k;
    api_metrics_text(&b, &st, NULL);
    n = prom_parse(b.data, s, 512, types, &nt);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_level_units", "{level=\"7\"}") == 7);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"7\"}") == 0);
    ck_assert(!prom_has(s, n, "slimserve:kv_cache_level_units", "{level=\"8\"}"));
    api_buf_free(&b);
    st.n_levels = -5; /* a snapshot before the first update: one level, = pages_used */
    st.pages_total = 10;
    st.pages_used = 5;
    api_metrics_text(&b, &st, NULL);
    n = prom_parse(b.data, s, 512, types, &nt);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"0\"}") == 0.5);
    ck_assert(prom_get(s, n, "slimserve:kv_cache_level_units", "{level=\"0\"}") == 5);
    ck_assert(!prom_has(s, n, "slimserve:kv_cache_level_units", "{level=\"1\"}"));
    api_buf_free(&b);
}
END_TEST

/* The vllm: name set beside the slimserve: one: the same values under vLLM's
 * names with a model_name label (escaped), no per-level series, and
 * cache_config_info carrying the pool's geometry as label strings. */
START_TEST(test_metrics_vllm_names) {
    struct sched_stats st;
    memset(&st, 0, sizeof(st));
    st.n_running = 7;
    st.n_waiting = 11;
    st.pages_used = 30;
    st.pages_total = 120;
    st.n_levels = 2;
    st.level_units[0] = 20;
    st.level_units[1] = 10;
    st.n_preemptions = 3;
    st.n_finished[REQ_FINISH_LENGTH] = 9;
    st.n_embed_done = 5;
    st.n_embed_tokens = 44;
    st.n_spec_drafts = 6;
    st.n_spec_draft_tokens = 15;
    st.n_spec_accepted = 9;
    st.spec_accepted.n = 2;
    st.spec_accepted.le[0] = 0;
    st.spec_accepted.le[1] = 2;
    sched_hist_observe(&st.spec_accepted, 3);
    st.ttft_s.n = 2;
    st.ttft_s.le[0] = 0.5;
    st.ttft_s.le[1] = 2;
    sched_hist_observe(&st.ttft_s, 0.25);
    sched_hist_observe(&st.ttft_s, 1.0);
    struct api_model_info mi;
    memset(&mi, 0, sizeof(mi));
    mi.name = "m\"x\\y";
    mi.kv_pages = 40;

    struct api_buf b;
    api_buf_init(&b);
    ck_assert_int_eq(api_metrics_text(&b, &st, &mi), 0);
    static struct prom_sample s[512];
    static char types[128][2][64];
    int nt = 0;
    int n = prom_parse(b.data, s, 512, types, &nt);
    const char *ml = "{model_name=\"m\\\"x\\\\y\"}";
    ck_assert(prom_get(s, n, "vllm:num_requests_running", ml) == 7);
    ck_assert(prom_get(s, n, "vllm:num_requests_waiting", ml) == 11);
    ck_assert(prom_get(s, n, "vllm:kv_cache_usage_perc", ml) == 0.25);
    ck_assert(prom_get(s, n, "vllm:num_preemptions_total", ml) == 3);
    ck_assert(prom_get(s, n, "vllm:request_success_total",
                       "{model_name=\"m\\\"x\\\\y\",finished_reason=\"length\"}") == 9);
    ck_assert(prom_get(s, n, "vllm:time_to_first_token_seconds_bucket",
                       "{model_name=\"m\\\"x\\\\y\",le=\"0.5\"}") == 1);
    ck_assert(prom_get(s, n, "vllm:time_to_first_token_seconds_bucket",
                       "{model_name=\"m\\\"x\\\\y\",le=\"+Inf\"}") == 2);
    ck_assert(prom_get(s, n, "vllm:time_to_first_token_seconds_count", ml) == 2);
    ck_assert(prom_get(s, n, "vllm:time_to_first_token_seconds_sum", ml) == 1.25);
    ck_assert_str_eq(prom_type(types, nt, "vllm:num_requests_waiting"), "gauge");
    ck_assert_str_eq(prom_type(types, nt, "vllm:kv_cache_usage_perc"), "gauge");
    ck_assert_str_eq(prom_type(types, nt, "vllm:prompt_tokens_total"), "counter");
    ck_assert_str_eq(prom_type(types, nt, "vllm:time_to_first_token_seconds"), "histogram");
    ck_assert_str_eq(prom_type(types, nt, "vllm:cache_config_info"), "gauge");
    ck_assert_str_eq(prom_type(types, nt, "slimserve:cache_config_info"), "gauge");
    /* cache_config_info: value 1, the geometry in labels, no model_name */
    const char *cc = "{block_size=\"16\",num_gpu_blocks=\"40\"}";
    ck_assert(prom_get(s, n, "vllm:cache_config_info", cc) == 1);
    ck_assert(prom_get(s, n, "slimserve:cache_config_info", cc) == 1);
    /* per-level series stay slimserve-only; slimserve: series carry no model_name */
    ck_assert(prom_get(s, n, "slimserve:kv_cache_usage_perc", "{level=\"1\"}") == 10.0 / 120);
    ck_assert(prom_get(s, n, "slimserve:num_requests_waiting", NULL) == 11);
    ck_assert_str_eq(prom_type(types, nt, "vllm:kv_cache_level_units"), "");
    for (int i = 0; i < n; i++)
        ck_assert_msg(strncmp(s[i].name, "vllm:", 5) != 0 || strstr(s[i].labels, "level=\"") == NULL,
                      "%s%s", s[i].name, s[i].labels);
    /* embeddings: slimserve-only counters */
    ck_assert(prom_get(s, n, "slimserve:embedding_inputs_total", NULL) == 5);
    ck_assert(prom_get(s, n, "slimserve:embedding_prompt_tokens_total", NULL) == 44);
    ck_assert_str_eq(prom_type(types, nt, "slimserve:embedding_inputs_total"), "counter");
    ck_assert_str_eq(prom_type(types, nt, "vllm:embedding_inputs_total"), "");
    /* speculative decoding: vLLM's counters in both sets, the histogram slimserve-only */
    ck_assert(prom_get(s, n, "slimserve:spec_decode_num_drafts_total", NULL) == 6);
    ck_assert(prom_get(s, n, "vllm:spec_decode_num_draft_tokens_total", ml) == 15);
    ck_assert(prom_get(s, n, "vllm:spec_decode_num_accepted_tokens_total", ml) == 9);
    ck_assert_str_eq(prom_type(types, nt, "vllm:spec_decode_num_drafts_total"), "counter");
    ck_assert(prom_get(s, n, "slimserve:spec_decode_accepted_tokens_per_step_bucket", "{le=\"2\"}") == 0);
    ck_assert(prom_get(s, n, "slimserve:spec_decode_accepted_tokens_per_step_bucket", "{le=\"+Inf\"}") == 1);
    ck_assert_str_eq(prom_type(types, nt, "vllm:spec_decode_accepted_tokens_per_step"), "");
    /* the two sets hold the same series, apart from the per-level, embedding
     * and accepted-per-step ones */
    int n_own = 0, n_vllm = 0;
    for (int i = 0; i < n; i++) {
        if (!strncmp(s[i].name, "vllm:", 5))
            n_vllm++;
        else if (!strstr(s[i].labels, "level=\"") && strncmp(s[i].name, "slimserve:level_", 16) &&
                 strncmp(s[i].name, "slimserve:embedding_", 20) &&
                 strncmp(s[i].name, "slimserve:spec_decode_accepted_tokens_per_step", 46))
            n_own++;
    }
    ck_assert_int_eq(n_own, n_vllm);
    api_buf_free(&b);
}
END_TEST

static Suite *metrics_suite(void) {
    Suite *s = suite_create("api_metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics_text);
    tcase_add_test(tc, test_metrics_levels);
    tcase_add_test(tc, test_metrics_vllm_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    int failed = tu_check_run(metrics_suite());
    return failed != 0;
}
