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
    int chat_family;            /* enum api_tmpl_family for /v1/chat/completions (0: none) */
    int chat_bos;               /* 1: the chat template emits the BOS token text */
};

/* Serves until SIGINT/SIGTERM. The model must stay loaded until it returns.
 * Returns the process exit code: 0 after a clean shutdown, 1 if the server
 * could not start (message already printed). Loop thread = the calling thread. */
int srv_run(const struct srv_config *cfg, struct eng_model *m);

/* stderr logging with a level filter; thread-safe (one fprintf per line). */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int srv_log_level;

#endif
