/* http_internal.h - state shared by http.c (daemon, loop, routing, shutdown)
 * and completion.c (one completion request's lifecycle).
 *
 * Threads: everything here belongs to the loop thread, except srv.ready, which
 * the engine thread's notify callback pushes onto (its lock is the scheduler's:
 * scheduler/queue.c, sched_ready_*).
 *
 * Lifetime of a struct srv_conn (one HTTP request) - loop-thread reference count:
 *   +1 the MHD request (dropped in NOTIFY_COMPLETED),
 *   +1 a streaming response (dropped in the reader's free callback),
 *   +1 an initialised fd watcher (dropped in its uv_close callback).
 * A conn holds one reference on each choice's sched_req; the engine holds
 * another while it works on it, and every ready-list entry holds one more
 * (taken in the notify callback). r->user points to the struct srv_choice
 * while the conn is alive; the loop thread sets it to NULL before freeing the
 * conn (the engine never reads it).
 */
#ifndef SS_HTTP_INTERNAL_H
#define SS_HTTP_INTERNAL_H

#include <stdint.h>

#include <microhttpd.h>
#include <uv.h>

#include "api/api.h"
#include "scheduler/sched.h"
#include "server/srv.h"

enum srv_phase {
    SRV_RUNNING = 0,
    SRV_DRAINING,   /* SIGTERM: no new requests, in-flight ones may finish */
    SRV_CANCELLING, /* grace over: in-flight requests cancelled, flushing */
    SRV_STOPPED,    /* daemon stopped, handles closing */
};

enum conn_state {
    CS_HEADERS = 0, /* first call seen, waiting for the body */
    CS_RESPONDED,   /* a response is queued */
    CS_WAIT,        /* non-streamed completion in progress (suspended) */
    CS_STREAM,      /* streaming response queued */
    CS_WORK,        /* body handed to a worker thread (worker.c), suspended */
};

/* What a TCP connection is doing, for its read deadlines (policy.c). */
enum sock_phase {
    SOCK_HEAD = 0, /* reading a request head: absolute deadline t_head_end */
    SOCK_BODY,     /* reading a request body: no gap over --body-timeout */
    SOCK_BUSY,     /* the request is complete (generating, answering): no read deadline */
};

/* One TCP connection, from accept (MHD_CONNECTION_NOTIFY_STARTED) to close
 * (..._CLOSED): MHD's socket context. Owned by policy.c; loop thread. */
struct srv_sock {
    struct srv *srv;
    struct srv_sock *prev, *next; /* srv->socks */
    int fd;
    int phase;                 /* enum sock_phase */
    int cut;                   /* shut down by the policy: MHD closes it */
    uint64_t t_head_end;       /* uv_now() ms: SOCK_HEAD deadline */
    uint64_t t_read;           /* uv_now() ms: last body bytes (SOCK_BODY) */
};

enum cancel_reason { CANCEL_NONE = 0, CANCEL_CLIENT, CANCEL_SLOW, CANCEL_SHUTDOWN };

struct srv;
struct srv_conn;
struct srv_job;
struct srv_worker;

#define SRV_WORK_THREADS 2     /* worker threads parsing and tokenising request bodies */
#define SRV_WORK_MAX_JOBS 1024 /* bodies waiting or being parsed; more: 503 + Retry-After */

/* One choice of a generation request (n > 1 gives several). r->user points
 * here while the conn is alive. */
struct srv_choice {
    struct srv_conn *conn;
    int index;
    struct sched_req *req;     /* our reference */
    struct api_buf text;       /* non-stream: generated text so far */
    struct req_tok *toks;      /* non-stream: logprob records so far (malloc'd) */
    int32_t n_toks, cap_toks;
    struct api_lp_state lps;   /* stream: text offsets of completions logprobs */
    int32_t n_gen;
    int started;               /* stream: first chunk (chat role / echo text) sent */
    int finished;              /* final output taken */
    int finish;                /* enum req_finish */
    struct api_tool_stream ts; /* chat with tools: the output read as calls (conn->tools) */
    float *embd;               /* embeddings: the vector (malloc'd, n_embd floats) once finished */
    int32_t n_embd;
};

struct srv_conn {
    struct srv *srv;
    struct MHD_Connection *mc; /* NULL after NOTIFY_COMPLETED */
    int refs;
    int state;                 /* enum conn_state */
    int route;                 /* enum api_route */
    char method[12];
    char path[96];
    uint64_t t0;               /* uv_hrtime() at the first call */
    int status;                /* HTTP status queued (for the access log) */

    /* request body */
    struct srv_sock *sock;     /* its TCP connection (NULL after NOTIFY_COMPLETED) */
    int http10;                /* HTTP/1.0 request: no interim 1xx answers */
    int peer_eof;              /* the client half-closed while we worked (completion.c) */
    size_t body_reserved;      /* bytes of srv->body_total held by this request */
    struct api_buf body;
    uint64_t discarded;        /* bytes dropped after the cap was hit */
    int too_large;
    int deferred;              /* an error answer waits until the body is drained */
    struct srv_job *job;       /* CS_WORK: the worker's finished job, until answered */
    struct api_error deferred_err;
    const char *deferred_allow; /* Allow header of a deferred 405 (static string) */

    /* generation (completions, chat); n_ch == 0 for other routes */
    struct srv_choice *ch;     /* [n_ch] */
    int n_ch;
    int n_done;                /* choices whose final output was taken */
    int inflight;              /* in srv->inflight: output still expected */
    struct srv_conn *prev, *next;
    int kind;                  /* enum api_kind */
    int stream, include_usage;
    int logprobs;              /* requested top-N, -1 none */
    int prompt_only;           /* echo + max_tokens 0: the one generated token is dropped */
    char *echo_text;           /* completions echo: prompt text (malloc'd) or NULL */
    size_t echo_len;
    struct api_tools *tools;   /* chat with tools (from the parsed request) or NULL */
    char id[48];
    struct api_completion_meta meta;
    struct api_buf out;        /* stream: SSE bytes not yet sent */
    size_t out_off;            /* stream: bytes of out already handed to MHD */
    int32_t n_prompt;
    int finished;              /* every choice done (or abandoned) */
    int failed;                /* a choice ended with an error or was cancelled */
    int finish, error;         /* of the first failed choice: enum req_finish, SS_E* */
    char errmsg[sizeof(((struct req_out *)0)->errmsg)];
    int stream_closed;         /* final SSE events appended */
    int cancel_reason;         /* enum cancel_reason */
    int client_gone;           /* peer closed while suspended */

    char rid[136];             /* request id: X-Request-Id or generated (ops.c) */
    uint64_t t_sent;           /* stream: uv_now() when bytes last went to MHD (keep-alive) */
    int admitted;              /* a choice left the waiting queue (a stream starts then) */
    struct api_embed embed;    /* /v1/embeddings: format, dimensions, usage (p moved out: NULL);
                                * one choice per input */

    int suspended;
    uv_poll_t fdw;             /* watches the socket while suspended */
    int fdw_init, fdw_active, fdw_events;
    int fd;
};

struct srv {
    const struct srv_config *cfg;
    struct api_model_info mi;
    struct api_embed_config ec; /* /v1/embeddings (pooling from --pooling or the model) */
    struct sched *sched;
    struct MHD_Daemon *d;
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    uv_async_t wake;
    uv_signal_t sig_int, sig_term;
    uv_timer_t shutdown_timer;
    uv_timer_t keepalive_timer; /* SSE keep-alive comments (ops.c) */
    int handles_closed;

    struct sched_ready ready;  /* engine thread -> loop thread (scheduler/queue.c) */
    struct srv_worker *work;   /* body parsing off the loop thread (worker.c) */

    struct srv_conn *inflight; /* conns expecting output (doubly linked) */
    int n_inflight;
    int n_conns;               /* srv_conns with a live MHD request */
    int n_receiving;           /* ... of which still in CS_HEADERS (body not complete) */
    int phase;                 /* enum srv_phase */
    uint64_t t_grace_end, t_hard_end; /* uv_hrtime() deadlines during shutdown */
    uint64_t seq;
    int in_mhd_run;

    /* connection policy (policy.c) */
    struct srv_sock *socks;    /* every open TCP connection (doubly linked) */
    int n_socks;
    uv_timer_t policy_timer;   /* deadlines + the fallback MHD_run, every SRV_TICK_MS */
    size_t body_total;         /* request body bytes reserved, all conns (--max-body-total) */
};

/* http.c */
void srv_mhd_run(struct srv *s);        /* MHD_run + re-arm the timer */
void conn_unref(struct srv_conn *c);
void conn_set_state(struct srv_conn *c, int state); /* keeps srv->n_receiving right */
void conn_suspend(struct srv_conn *c);
void conn_resume(struct srv_conn *c);   /* caller runs srv_mhd_run afterwards */
void inflight_remove(struct srv_conn *c);
enum MHD_Result srv_respond(struct srv_conn *c, int status, const char *ctype, struct api_buf *body,
                            const char *hdr_name, const char *hdr_value);
enum MHD_Result srv_respond_error(struct srv_conn *c, const struct api_error *e);

/* policy.c (loop thread) */
#define SRV_TICK_MS 250 /* policy sweep and fallback MHD_run period */
/* MHD_OPTION_NOTIFY_CONNECTION: keeps srv->socks. */
void srv_policy_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe);
void srv_policy_init(struct srv *s);   /* initialises and starts the tick timer */
void srv_policy_close(struct srv *s);  /* closes the tick timer (shutdown) */
/* The access handler's first call: the head is complete; a body may follow. */
void srv_policy_head_done(struct srv_conn *c, struct MHD_Connection *mc);
void srv_policy_body_read(struct srv_conn *c);   /* body bytes arrived */
void srv_policy_request_done(struct srv_conn *c); /* leaves SOCK_BODY / request over */
/* Grows c's share of --max-body-total to total bytes: 0, or -1 (nothing taken)
 * when the budget cannot hold it. */
int srv_body_reserve(struct srv_conn *c, size_t total);
void srv_body_release(struct srv_conn *c); /* frees c->body and its share */

/* completion.c */
/* Submits a parsed request's n choices (moving comp's params and echo text
 * out; the caller still frees comp) and waits, suspended, for its output. */
enum MHD_Result completion_submit(struct srv_conn *c, struct api_completion *comp);
/* Submits choice i of c (c->ch allocated) with params p, which move into the
 * request: p is left empty, except when the request could not even be
 * allocated (SS_ENOMEM): the caller req_params_free()s p in every case. 0, or
 * negative with *e filled. */
int completion_submit_choice(struct srv_conn *c, int i, struct req_params *p, struct api_error *e);
/* Cancels what was submitted and drops every choice (a failed submission). */
void completion_abort(struct srv_conn *c);
/* Every choice submitted: the conn waits (suspended, in flight) for output. */
void completion_wait(struct srv_conn *c);
enum MHD_Result completion_resumed(struct srv_conn *c);
void completion_pump(struct srv_conn *c);   /* take every choice's output; resume if news */
void completion_pump_choice(struct srv_choice *ch); /* one choice's output */
int64_t completion_n_gen(const struct srv_conn *c); /* completion tokens over choices */
void completion_free(struct srv_conn *c);   /* drops the choices (conn_free) */
void completion_cancel(struct srv_conn *c, int reason);
void fdwatch_start(struct srv_conn *c);
void fdwatch_stop(struct srv_conn *c);
void fdwatch_close(struct srv_conn *c);
/* Policy tick: a half-closed client (peer_eof) whose socket has since been
 * reset is gone: cancel its request. The caller runs MHD afterwards. */
void fdwatch_sweep(struct srv *s);

/* worker.c (loop thread, but for the workers themselves) */
int srv_work_init(struct srv *s);       /* 0 or -1; after uv_loop_init */
/* Joins the workers; jobs never run are answered 503; every job goes back to
 * its conn; closes the async handle. Idempotent. */
void srv_work_stop(struct srv *s);
/* A complete POST body: parse it on a worker (CS_WORK, suspended), or answer
 * 503 when the worker queue is full. */
enum MHD_Result srv_work_start(struct srv_conn *c);
enum MHD_Result srv_work_resumed(struct srv_conn *c); /* handler call in CS_WORK */
void srv_work_conn_free(struct srv_conn *c);          /* drops an unanswered job */

/* embed.c: /v1/embeddings on the completion lifecycle (one choice per input).
 * embed_submit takes a parsed request (moved out of *em, which is left empty). */
enum MHD_Result embed_submit(struct srv_conn *c, struct api_embed *em);
int embed_body(struct srv_conn *c, struct api_buf *b); /* the 200 body; 0 or SS_ENOMEM */

/* ops.c (loop thread) */
#define SRV_RID_MAX_IN 128 /* longest X-Request-Id taken from a client */
/* 1 if authorization carries one of cfg's keys. */
int srv_auth_ok(const struct srv_config *cfg, const char *authorization);
/* out[cap] (cap > SRV_RID_MAX_IN): incoming if it is 1..128 characters of
 * [A-Za-z0-9-_.:@/+=], else a generated 32-hex-digit id. */
void srv_request_id(const char *incoming, char *out, size_t cap);
/* X-Request-Id and, when the Origin is allowed, the CORS headers. */
void srv_ops_headers(struct srv_conn *c, struct MHD_Response *resp);
/* An allowed CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method): queues the 204 and returns 1; 0 if the
 * request is no such preflight; -1 if MHD failed. */
int srv_cors_preflight(struct srv_conn *c, const char *method);
/* Initialises the keep-alive timer (started when --sse-keepalive > 0). */
void srv_keepalive_init(struct srv *s);

#endif
