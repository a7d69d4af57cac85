/* bench.h - load generator for OpenAI-compatible servers (`slimserve bench`).
 *
 * Like `vllm bench serve` or guidellm: N client threads (one per concurrent
 * client) send M streamed POST /v1/completions requests over plain HTTP/1.1
 * (keep-alive, chunked or length-delimited or close-delimited bodies), parse the
 * SSE stream incrementally with cJSON and report TTFT, TPOT, ITL and E2E
 * latency and throughput.
 *
 * Traffic goes only to cfg->host:cfg->port. It is meant for a server on this
 * machine (127.0.0.1 / ::1): every run is bounded in request count and in time
 * (cfg->timeout_s) and stops by itself.
 *
 * Prefix: bench_. Thread contract: bench_run() may be called from any thread;
 * it starts and joins its own worker threads and shares no global state, so
 * concurrent runs are safe. The parser functions are single-threaded per object.
 */
#ifndef SS_TOOLS_BENCH_H
#define SS_TOOLS_BENCH_H

#include <stddef.h>
#include <stdint.h>

struct bench_config {
    const char *host;        /* "127.0.0.1"; a name or an IPv4/IPv6 literal (not owned) */
    int port;                /* 8080 */
    const char *url_path;    /* "/v1/completions" */
    const char *model;       /* NULL: the "model" field is omitted */
    const char *api_key;     /* NULL: no Authorization header */
    int concurrency;         /* client threads (1..1024); capped at num_requests */
    int num_requests;        /* total requests */
    int prompt_len;          /* synthetic prompts: tokens (ids) or about this many words */
    int output_len;          /* max_tokens */
    int text_prompts;        /* 1: English-like text prompts instead of token-id arrays */
    int min_token_id;        /* synthetic ids are uniform in [min_token_id, max_token_id] */
    int max_token_id;
    const char *dataset;     /* JSON lines {"prompt": str|[ids], "max_tokens": N}; NULL: synthetic */
    uint64_t seed;           /* prompts depend only on (seed, request index) */
    double timeout_s;        /* bound on the whole run (requests still running then fail) */
    int ignore_eos;          /* 1: send "ignore_eos": true; 0: omit the field */
    double temperature;      /* 0 by default */
};

/* Fills c with the defaults documented in `slimserve bench --help`. */
void bench_config_default(struct bench_config *c);

/* Latency summary in milliseconds; n == 0 means no sample (values are 0). */
struct bench_metric {
    int n;
    double mean, median, p99;
};

struct bench_result {
    int num_requests;            /* requested */
    int completed;               /* HTTP 200, stream reached [DONE], no error event */
    int failed;                  /* everything else, including requests never sent in time */
    int usage_missing;           /* completed requests without a usage chunk (tokens then
                                    counted as content chunks) */
    double duration_s;           /* from the first request to the last answer */
    int64_t total_input_tokens;  /* completed requests: usage.prompt_tokens (else the
                                    synthetic prompt length when known) */
    int64_t total_output_tokens; /* completed requests: usage.completion_tokens */
    double request_throughput;   /* completed / duration_s */
    double output_throughput;    /* total_output_tokens / duration_s */
    double total_token_throughput; /* (input + output) / duration_s */
    struct bench_metric ttft, tpot, itl, e2e;
    char first_error[256];       /* message of the earliest failure, "" if none */
};

/* Runs one benchmark. Returns 0 when the run took place (failed requests are
 * counted in r, not returned), or a negative SS_E* code when it could not start
 * (bad config, unreadable dataset, unresolvable host, out of memory) with the
 * reason in r->first_error. r is always fully written. Blocks for at most about
 * cfg->timeout_s seconds (plus dataset loading). Never aborts. */
int bench_run(const struct bench_config *cfg, struct bench_result *r);

/* Writes r as one JSON object (vLLM's key names: completed, failed, duration,
 * request_throughput, mean_ttft_ms, ...) to a malloc'd string; NULL on OOM. */
char *bench_result_json(const struct bench_config *cfg, const struct bench_result *r);

/* `slimserve bench ...`: argv[0] = "bench". Returns the process exit code:
 * 0 every request succeeded, 1 some failed, 2 bad usage or setup error. */
int tool_bench_main(int argc, char **argv);

/* ---- incremental response parser (exposed for tests) ----
 * Parses one HTTP/1.1 response to a streamed completion, fed in pieces split
 * anywhere: status line and headers, then a chunked / Content-Length /
 * close-delimited body; a 200 body is read as SSE and each event is decoded
 * with cJSON; another status's body is kept (first 8 KiB) for its error message. */
struct bench_parse;

struct bench_parse_info {
    int status;              /* HTTP status, 0 before the headers ended */
    int done;                /* "data: [DONE]" seen */
    int failed;              /* protocol error, non-200, error event, malformed event */
    int reusable;            /* the connection may carry another request */
    const char *error;       /* first error message ("" if none); owned by the parser */
    int64_t prompt_tokens;   /* from the usage chunk, -1 if none */
    int64_t completion_tokens;
    double t_done;           /* time passed with the bytes holding [DONE]; 0 if not seen */
    double t_first_chunk;    /* first event with a choice (even with empty text) */
    int n_content;           /* events with non-empty text (or token ids) */
    const double *t_content; /* [n_content] times of those events; owned by the parser */
};

/* NULL on OOM. */
struct bench_parse *bench_parse_new(void);
void bench_parse_free(struct bench_parse *p); /* NULL-safe */
/* Feeds n bytes that arrived at time t (seconds, any clock). Returns 1 once the
 * response is complete (framing ended), 0 if more bytes are needed, or -1 on a
 * protocol error (message in info.error; the connection must be closed). Bytes
 * after a complete response are ignored. */
int bench_parse_feed(struct bench_parse *p, const char *buf, size_t n, double t);
/* The peer closed the connection at time t. Returns 1 if that completes the
 * response (close-delimited body, or [DONE] already seen), -1 otherwise. */
int bench_parse_eof(struct bench_parse *p, double t);
void bench_parse_get(const struct bench_parse *p, struct bench_parse_info *out);

#endif
