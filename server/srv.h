/* srv.h - the server module's internal interface (main.c <-> http.c).
 *
 * Module server/ (top of the layer order): owns main, flags, the libuv loop
 * driving libmicrohttpd, routing, logging and signals. May include api/,
 * scheduler/, engine/ and tools/ (the subcommands); tools/check_layers.sh checks.
 *
 * main.c turns flags and environment variables into a struct srv_config, loads
 * the model and calls srv_run(), which owns everything else: the libuv loop,
 * the libmicrohttpd daemon (driven from the loop), the scheduler and its engine
 * thread. Only main() exits the process.
 */
#ifndef SS_SRV_H
#define SS_SRV_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct eng_model;

enum srv_log_level { SRV_LOG_ERROR = 0, SRV_LOG_WARN, SRV_LOG_INFO, SRV_LOG_DEBUG };

struct srv_config {
    const char *model_path;
    const char *host;           /* bind address (numeric or name) */
    int port;                   /* 0: any free port */
    const char *api_key;        /* NULL/"": no authentication */
    const char *served_name;    /* the "model" clients send */
    size_t max_body;            /* request body cap in bytes (413 above) */
    int max_num_seqs;           /* scheduler: running sequences */
    int max_batched_tokens;     /* scheduler: tokens per step */
    int max_queued;             /* scheduler: waiting requests before 503 */
    int max_connections;        /* libmicrohttpd connection limit */
    int conn_timeout_s;         /* idle connection timeout (not while generating) */
    double shutdown_grace_s;    /* SIGTERM: time in-flight requests get to finish */
    size_t max_stream_buffer;   /* per-stream unsent bytes before the request is cancelled */
    int log_level;              /* enum srv_log_level */
    int no_prefix_cache;        /* 1: scheduler without prefix caching */
    int no_swa_recycle;         /* 1: sliding-window layers keep every KV page */
    int spec_ngram;             /* --speculative: 1 ngram (default), 0 off (scheduler/spec.c) */
    int spec_tokens;            /* --spec-tokens: drafts per sequence and step (0: default) */
    int spec_ngram_min, spec_ngram_max; /* --spec-ngram-min/-max (0: defaults) */
    int spec_max_batch_tokens;  /* --spec-max-batch-tokens (0: default) */
    int chat_family;            /* enum api_tmpl_family for /v1/chat/completions (0: none) */
    int chat_bos;               /* 1: the chat template emits the BOS token text */
    int pooling;                /* /v1/embeddings: ENG_POOL_MEAN, _CLS or _LAST (main.c: --pooling,
                                 * else the model's pooling_type, else mean) */

    /* operations (server/ops.c; issue 13) */
    const char *api_key_file;   /* --api-key-file: more keys, one per line */
    char **api_keys;            /* --api-key plus the file's keys (srv_ops_setup); none: open */
    int n_api_keys;
    const char *cors_origins;   /* --cors-allow-origins: "*" or comma-separated origins; NULL off */
    const char *log_format;     /* --log-format: text (default) or json */
    double sse_keepalive_s;     /* SSE comment after this many quiet seconds on a stream; 0 off */
    double max_queue_time;      /* seconds before a never-admitted request gets 503; 0 off */

    /* connection policy (server/policy.c; issue 14) */
    double header_timeout_s;    /* the request head must be complete this long after accept; 0 off */
    double body_timeout_s;      /* longest gap between body reads; 0 off */
    size_t max_body_total;      /* request bodies buffered at once, all connections (503 above) */
    int max_conns_per_ip;       /* connections from one address; 0: no limit */
};

/* Serves until SIGINT/SIGTERM. The model must stay loaded until it returns.
 * Returns the process exit code: 0 after a clean shutdown, 1 if the server
 * could not start (message already printed). Loop thread = the calling thread. */
int srv_run(const struct srv_config *cfg, struct eng_model *m);

/* stderr logging with a level filter; thread-safe (one fprintf per line).
 * --log-format json writes one JSON object per line ({"time", "level",
 * "request_id" when known, "msg"}). srv_log_req tags the line with a request
 * id (rid NULL or "": none). Any thread. */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_log_req(int level, const char *rid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void srv_log_v(int level, const char *rid, const char *fmt, va_list ap);
extern int srv_log_level;
extern int srv_log_json; /* 1: --log-format json */

/* Main thread, after the flags and before srv_run: checks --log-format and
 * --cors-allow-origins, gathers the API keys (--api-key, --api-key-file) into
 * cfg->api_keys. 0, or -1 with a message in err. The keys are freed (and
 * cleared) at exit; srv_ops_free frees those of a config at once. */
int srv_ops_setup(struct srv_config *cfg, char *err, size_t cap);
void srv_ops_free(struct srv_config *cfg);

#endif
