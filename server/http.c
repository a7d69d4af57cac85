/* http.c - libmicrohttpd driven from a libuv loop: routing, simple routes,
 * engine wake-ups and graceful shutdown.
 *
 * Pattern: MHD runs with no thread of its own in epoll mode; a uv_poll_t
 * watches MHD's epoll fd and a uv_timer_t follows MHD_get_timeout(). Every MHD
 * call happens on the loop thread. The engine thread's notify callback only
 * appends to a ready list and uv_async_send()s; the async callback drains it,
 * resumes connections that have news, then calls MHD_run() once. policy.c's
 * tick (read deadlines, vanished clients) also runs MHD every SRV_TICK_MS, so
 * the listening socket is serviced even when MHD reports no timeout.
 * NOTE: libmicrohttpd 0.9.75 facts this relies on, each seen as a failure when
 * ignored: MHD_resume_connection wakes nothing in external mode (MHD_run must
 * follow); a content reader returning 0 without suspending spins; a suspended
 * connection's disconnect is invisible to MHD (its fd is watched here);
 * MHD_stop_daemon aborts while a connection is suspended (resume all first);
 * returning MHD_NO mid-upload resets the connection after "100 Continue" (413
 * is answered at the first call instead).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "server/http_internal.h"

/* ------------------------------------------------------------ MHD <-> uv */

static void on_mhd_timer(uv_timer_t *t) {
    srv_mhd_run(t->data);
}

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    srv_mhd_run(p->data);
}

/* NOTE: at its connection limit MHD 0.9.75 takes the listening socket out of
 * its epoll set and puts it back only at the start of a later MHD_run. So a
 * run that closed connections is followed by another (the listener comes back
 * now, not at the next event), and policy.c's tick runs MHD every SRV_TICK_MS
 * whatever MHD_get_timeout says. */
void srv_mhd_run(struct srv *s) {
    if (!s->d || s->in_mhd_run)
        return;
    s->in_mhd_run = 1;
    for (int i = 0; i < 4 && s->d; i++) {
        int before = s->n_socks;
        MHD_run(s->d);
        if (s->n_socks >= before)
            break;
    }
    s->in_mhd_run = 0;
    if (!s->d)
        return;
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (MHD_get_timeout(s->d, &to) == MHD_YES) {
        if (to > 3600u * 1000u)
            to = 3600u * 1000u;
        uv_timer_start(&s->mhd_timer, on_mhd_timer, (uint64_t)to, 0);
    } else {
        uv_timer_stop(&s->mhd_timer);
    }
}

/* ------------------------------------------------------------ conns */

static void conn_free(struct srv_conn *c) {
    srv_work_conn_free(c);
    completion_free(c); /* choices: r->user cleared, references dropped */
    srv_body_release(c);
    api_buf_free(&c->out);
    free(c);
}

void conn_unref(struct srv_conn *c) {
    if (c && --c->refs == 0)
        conn_free(c);
}

void conn_set_state(struct srv_conn *c, int state) {
    if (c->state == CS_HEADERS && state != CS_HEADERS) {
        c->srv->n_receiving--;
        srv_policy_request_done(c); /* no read deadline from now on */
    }
    c->state = state;
}

void conn_suspend(struct srv_conn *c) {
    if (c->suspended || !c->mc)
        return;
    MHD_suspend_connection(c->mc);
    c->suspended = 1;
    fdwatch_start(c);
}

void conn_resume(struct srv_conn *c) {
    if (!c->suspended || !c->mc)
        return;
    fdwatch_stop(c);
    MHD_resume_connection(c->mc);
    c->suspended = 0;
}

void inflight_remove(struct srv_conn *c) {
    if (!c->inflight)
        return;
    struct srv *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->inflight = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->inflight = 0;
    s->n_inflight--;
}

/* ------------------------------------------------------------ responses */

enum MHD_Result srv_respond(struct srv_conn *c, int status, const char *ctype, struct api_buf *body,
                            const char *hdr_name, const char *hdr_value) {
    struct MHD_Response *resp;
    if (body && body->len > 0 && !body->oom) {
        resp = MHD_create_response_from_buffer(body->len, body->data, MHD_RESPMEM_MUST_FREE);
        if (resp)
            api_buf_init(body); /* MHD owns the bytes now */
    } else {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (body)
        api_buf_free(body);
    if (!resp)
        return MHD_NO;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (hdr_name && hdr_value)
        MHD_add_response_header(resp, hdr_name, hdr_value);
    srv_ops_headers(c, resp);
    if (c->srv->phase != SRV_RUNNING)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned)status, resp);
    MHD_destroy_response(resp);
    c->status = status;
    conn_set_state(c, CS_RESPONDED);
    return ret;
}

enum MHD_Result srv_respond_error(struct srv_conn *c, const struct api_error *e) {
    struct api_buf b;
    api_buf_init(&b);
    api_error_json(&b, e);
    const char *hn = NULL, *hv = NULL;
    if (e->status == 503) {
        hn = MHD_HTTP_HEADER_RETRY_AFTER;
        hv = "1";
    } else if (e->status == 401) {
        hn = MHD_HTTP_HEADER_WWW_AUTHENTICATE;
        hv = "Bearer";
    }
    return srv_respond(c, e->status, "application/json", &b, hn, hv);
}

static enum MHD_Result respond_json(struct srv_conn *c, int status, struct api_buf *b) {
    return srv_respond(c, status, "application/json", b, NULL, NULL);
}

/* ------------------------------------------------------------ access handler */

static void body_budget_error(struct api_error *e) {
    api_error_set(e, SS_EAGAIN, NULL, "body_budget_exhausted",
                  "the server is buffering too many request bodies (--max-body-total); retry "
                  "the request");
}

/* First call for a request: everything decidable from the headers. */
/* Answers an error decided on the headers alone. A client that sent a body
 * without "Expect: 100-continue" is still writing it: answering and closing now
 * would reset the connection under its feet (it sees EPIPE, a proxy answers
 * 502). So its body is read and dropped first (bounded, see on_body) and the
 * answer goes out when it is complete. */
static enum MHD_Result early_error(struct srv_conn *c, const struct api_error *e, const char *allow) {
    struct MHD_Connection *mc = c->mc;
    const char *expect = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Expect");
    const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Transfer-Encoding");
    int has_body = (cl && strcmp(cl, "0") != 0) || te;
    if (has_body && !(expect && strcasecmp(expect, "100-continue") == 0)) {
        c->deferred = 1;
        c->deferred_err = *e;
        c->deferred_allow = allow;
        c->too_large = 1; /* on_body drops what arrives */
        return MHD_YES;
    }
    if (allow) {
        struct api_buf b;
        api_buf_init(&b);
        api_error_json(&b, e);
        return srv_respond(c, e->status, "application/json", &b, MHD_HTTP_HEADER_ALLOW, allow);
    }
    return srv_respond_error(c, e);
}

/* The deferred answer, once the body has been drained. */
static enum MHD_Result early_error_now(struct srv_conn *c, const struct api_error *e) {
    if (c->deferred_allow) {
        struct api_buf b;
        api_buf_init(&b);
        api_error_json(&b, e);
        return srv_respond(c, e->status, "application/json", &b, MHD_HTTP_HEADER_ALLOW,
                           c->deferred_allow);
    }
    return srv_respond_error(c, e);
}

static enum MHD_Result on_first_call(struct srv *s, struct MHD_Connection *mc, const char *url,
                                     const char *method, const char *version, void **con_cls) {
    struct srv_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return MHD_NO;
    c->srv = s;
    c->mc = mc;
    c->refs = 1;
    c->fd = -1;
    c->t0 = uv_hrtime();
    c->http10 = strcmp(version, MHD_HTTP_VERSION_1_1) != 0;
    srv_policy_head_done(c, mc); /* the head is in: body deadlines from now */
    snprintf(c->method, sizeof(c->method), "%s", method);
    snprintf(c->path, sizeof(c->path), "%s", url);
    for (char *p = c->path; *p; p++) /* the path goes to the log: keep it one printable line */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    for (char *p = c->method; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    *con_cls = c;
    s->n_conns++;
    s->n_receiving++; /* calloc: state CS_HEADERS */

    srv_request_id(MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "X-Request-Id"), c->rid,
                   sizeof(c->rid));
    int pre = srv_cors_preflight(c, method); /* before auth: preflights carry no key */
    if (pre != 0)
        return pre > 0 ? MHD_YES : MHD_NO;
    struct api_error e;
    if (s->cfg->n_api_keys > 0 && api_path_needs_auth(url) &&
        !srv_auth_ok(s->cfg, MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization"))) {
        api_error_set_http(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                           "missing or invalid API key: send 'Authorization: Bearer <key>'");
        return early_error(c, &e, NULL);
    }
    int allowed;
    const char *allow;
    c->route = api_route_find(method, url, &allowed, &allow);
    if (c->route == API_ROUTE_NONE) {
        api_error_set_http(&e, 404, "invalid_request_error", NULL, "not_found",
                           "no route for %.20s %.200s", method, url);
        return early_error(c, &e, NULL);
    }
    if (!allowed) {
        api_error_set_http(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                           "method %.20s is not allowed on %.200s (allowed: %s)", method, url, allow);
        return early_error(c, &e, allow);
    }
    if (s->phase != SRV_RUNNING) {
        api_error_set(&e, SS_EAGAIN, NULL, "server_shutting_down", "the server is shutting down");
        return early_error(c, &e, NULL);
    }
    struct api_buf b;
    api_buf_init(&b);
    switch (c->route) {
    case API_ROUTE_HEALTH:
        api_health_json(&b);
        return respond_json(c, 200, &b);
    case API_ROUTE_MODELS:
        api_models_json(&b, &s->mi);
        return respond_json(c, 200, &b);
    case API_ROUTE_METRICS: {
        struct sched_stats st;
        sched_get_stats(s->sched, &st); /* one locked copy; no per-token work */
        api_metrics_text(&b, &st, &s->mi);
        return srv_respond(c, 200, API_METRICS_CTYPE, &b, NULL, NULL);
    }
    default:
        break;
    }
    /* POST with a body: refuse an announced oversize body before reading it
     * (answering later would reset the connection after 100 Continue). */
    const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == ERANGE || (end != cl && n > s->cfg->max_body)) {
            api_error_set_http(&e, 413, "invalid_request_error", NULL, "body_too_large",
                               "the request body (%.30s bytes) exceeds the limit of %zu bytes", cl,
                               s->cfg->max_body);
            return early_error(c, &e, NULL);
        }
        /* the body's bytes come out of --max-body-total before they are read */
        if (end != cl && n > 0 && srv_body_reserve(c, (size_t)n) != 0) {
            body_budget_error(&e);
            return early_error(c, &e, NULL);
        }
    }
    return MHD_YES; /* stays in CS_HEADERS until the body is complete */
}

/* Body bytes; chunked bodies are capped while they accumulate. */
static enum MHD_Result on_body(struct srv_conn *c, const char *data, size_t size) {
    srv_policy_body_read(c);
    if (c->state != CS_HEADERS)
        return MHD_YES; /* a response is already queued: discard */
    size_t cap = c->srv->cfg->max_body;
    if (!c->too_large && c->body.len + size > cap) {
        c->too_large = 1;
        srv_body_release(c);
    }
    if (!c->too_large && srv_body_reserve(c, c->body.len + size) != 0) {
        /* a chunked body outgrew the budget: drain it, then answer 503 */
        c->deferred = 1;
        body_budget_error(&c->deferred_err);
        c->deferred_allow = NULL;
        c->too_large = 1;
        srv_body_release(c);
    }
    if (c->too_large) {
        c->discarded += size;
        /* keep reading so the 413 can be sent, but not forever */
        return c->discarded > 4 * (uint64_t)cap + (1u << 20) ? MHD_NO : MHD_YES;
    }
    return api_buf_append(&c->body, data, size) == 0 ? MHD_YES : MHD_NO;
}

/* The whole body is in: a worker parses it (worker.c), off the loop thread. */
static enum MHD_Result body_complete(struct srv_conn *c) {
    return srv_work_start(c);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *mc, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
    struct srv_conn *c = *con_cls;
    if (!c)
        return on_first_call(cls, mc, url, method, version, con_cls);
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return on_body(c, upload_data, n);
    }
    switch (c->state) {
    case CS_HEADERS:
        if (c->deferred) {
            struct api_error e = c->deferred_err;
            return early_error_now(c, &e);
        }
        if (c->too_large) {
            struct api_error e;
            api_error_set_http(&e, 413, "invalid_request_error", NULL, "body_too_large",
                               "the request body exceeds the limit of %zu bytes",
                               c->srv->cfg->max_body);
            return srv_respond_error(c, &e);
        }
        return body_complete(c);
    case CS_WAIT:
        return completion_resumed(c);
    case CS_WORK:
        return srv_work_resumed(c);
    default:
        return MHD_YES;
    }
}

static const char *toe_name(enum MHD_RequestTerminationCode toe) {
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
    case MHD_REQUEST_TERMINATED_WITH_ERROR: return "connection error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "read error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client closed";
    default: return "aborted";
    }
}

/* The request is over (response sent, or the connection died). One access-log line. */
static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)mc;
    struct srv *s = cls;
    struct srv_conn *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    if (c->n_ch && !c->finished)
        completion_cancel(c, CANCEL_CLIENT);
    fdwatch_close(c);
    c->mc = NULL;
    c->suspended = 0;
    conn_set_state(c, CS_RESPONDED);
    srv_policy_request_done(c); /* the connection waits for its next request head */
    s->n_conns--;

    double ms = (double)(uv_hrtime() - c->t0) / 1e6;
    const char *why = toe_name(toe);
    if (!why && c->client_gone)
        why = "client closed";
    if (c->n_ch)
        srv_log_req(SRV_LOG_INFO, c->rid, "%s %s %d %.1fms prompt=%d completion=%lld%s%s%s%s",
                c->method, c->path, c->status, ms, (int)c->n_prompt, (long long)completion_n_gen(c),
                c->n_ch > 1 ? " n>1" : "", c->stream ? " stream" : "", why ? " aborted: " : "",
                why ? why : "");
    else
        srv_log_req(SRV_LOG_INFO, c->rid, "%s %s %d %.1fms%s%s", c->method, c->path, c->status, ms,
                why ? " aborted: " : "", why ? why : "");
    conn_unref(c);
}

/* ------------------------------------------------------------ engine wake-ups */

/* Engine thread (sched notify): never touches MHD or the conn. The ready
 * list's reference keeps r alive until the loop thread has looked at it. */
static void on_notify(void *ud, struct sched_req *r) {
    struct srv *s = ud;
    sched_ready_push(&s->ready, r);
    uv_async_send(&s->wake);
}

/* Loop thread: handles the pending wake-ups (a bounded number; more wake the
 * loop again), then the caller runs MHD once. */
static void drain_ready(struct srv *s) {
    struct sched_req *batch[64];
    for (int round = 0; round < 16; round++) {
        size_t n = sched_ready_pop(&s->ready, batch, 64);
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++) {
            struct srv_choice *ch = batch[i]->user;
            if (ch && ch->req == batch[i] && ch->conn->inflight && s->phase != SRV_STOPPED)
                completion_pump_choice(ch);
            sched_req_unref(batch[i]);
        }
    }
    uv_async_send(&s->wake);
}

static void on_wake(uv_async_t *a) {
    struct srv *s = a->data;
    drain_ready(s);
    srv_mhd_run(s);
}

/* ------------------------------------------------------------ shutdown */

static void on_handle_closed(uv_handle_t *h) {
    (void)h;
}

/* NOTE: SIGINT/SIGTERM are blocked in every thread but the loop's (srv_run
 * blocks them before any of its threads starts). Closing a uv_signal_t puts
 * back the default action (death by the signal), so the loop thread blocks
 * them first, closes, and ignores them from then on: a signal during the rest
 * of the teardown changes nothing, and the exit status stays the clean one. */
static void signals_mask(int how) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(how, &set, NULL);
}

static void signals_close(struct srv *s) {
    signals_mask(SIG_BLOCK);
    uv_close((uv_handle_t *)&s->sig_int, on_handle_closed);
    uv_close((uv_handle_t *)&s->sig_term, on_handle_closed);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL); /* also drops one already pending */
    sigaction(SIGTERM, &sa, NULL);
}

/* Stops everything: no suspended connection may remain when MHD stops. */
static void final_stop(struct srv *s) {
    if (s->phase == SRV_STOPPED)
        return;
    s->phase = SRV_STOPPED;
    uv_timer_stop(&s->shutdown_timer);
    if (s->d) {
        /* every conn still waiting: end it (its reader/handler sees client_gone) */
        for (struct srv_conn *c = s->inflight, *next; c; c = next) {
            next = c->next;
            c->client_gone = 1;
            completion_cancel(c, CANCEL_SHUTDOWN);
            inflight_remove(c);
            conn_resume(c);
        }
        srv_work_stop(s); /* joins the workers; their conns are resumed (answered or closed) */
        MHD_run(s->d); /* let MHD process pending resumes before the stop */
        uv_close((uv_handle_t *)&s->mhd_poll, on_handle_closed);
        uv_close((uv_handle_t *)&s->mhd_timer, on_handle_closed);
        srv_policy_close(s);
        MHD_stop_daemon(s->d);
        s->d = NULL;
    }
    sched_stop(s->sched); /* joins the engine thread; no notify after this */
    drain_ready(s);
    srv_work_stop(s); /* (if the daemon never started) */
    uv_close((uv_handle_t *)&s->wake, on_handle_closed);
    signals_close(s);
    uv_close((uv_handle_t *)&s->shutdown_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->keepalive_timer, on_handle_closed);
    srv_log(SRV_LOG_INFO, "server stopped");
}

static void on_shutdown_tick(uv_timer_t *t) {
    struct srv *s = t->data;
    uint64_t now = uv_hrtime();
    if (s->phase == SRV_DRAINING && (s->n_inflight == 0 || now >= s->t_grace_end)) {
        s->phase = SRV_CANCELLING;
        if (s->n_inflight)
            srv_log(SRV_LOG_INFO, "cancelling %d request(s) still running", s->n_inflight);
        for (struct srv_conn *c = s->inflight, *next; c; c = next) {
            next = c->next;
            completion_cancel(c, CANCEL_SHUTDOWN);
        }
        srv_mhd_run(s);
    }
    /* Connections still sending a request body are not waited for: MHD 0.9.75
     * may not notice such a client leaving before its connection timeout. */
    if (s->phase == SRV_CANCELLING &&
        (s->n_conns - s->n_receiving == 0 || now >= s->t_hard_end))
        final_stop(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct srv *s = h->data;
    if (s->phase == SRV_RUNNING) {
        srv_log(SRV_LOG_INFO, "%s: finishing %d request(s) (up to %.1fs), refusing new ones",
                signum == SIGINT ? "SIGINT" : "SIGTERM", s->n_inflight, s->cfg->shutdown_grace_s);
        s->phase = SRV_DRAINING;
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
        uint64_t now = uv_hrtime();
        s->t_grace_end = now + (uint64_t)(s->cfg->shutdown_grace_s * 1e9);
        s->t_hard_end = s->t_grace_end + 2000000000ull;
        uv_timer_start(&s->shutdown_timer, on_shutdown_tick, 0, 20);
    } else if (s->phase != SRV_STOPPED) {
        srv_log(SRV_LOG_INFO, "second signal: stopping now");
        final_stop(s);
    }
}

/* ------------------------------------------------------------ start */

static struct MHD_Daemon *start_daemon(struct srv *s, int *port_out) {
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof(port), "%d", s->cfg->port);
    int rc = getaddrinfo(s->cfg->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        fprintf(stderr, "slimserve: cannot resolve host '%s': %s\n", s->cfg->host,
                gai_strerror(rc));
        return NULL;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg->port, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
        srv_policy_notify, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg->conn_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->cfg->max_conns_per_ip, MHD_OPTION_END);
    int err = errno;
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "slimserve: cannot listen on %s:%d: %s\n", s->cfg->host, s->cfg->port,
                err ? strerror(err) : "libmicrohttpd failed to start");
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = di ? di->port : s->cfg->port;
    return d;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

static int start_loop(struct srv *s) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || di->epoll_fd < 0)
        return -1;
    if (uv_poll_init(&s->loop, &s->mhd_poll, di->epoll_fd) != 0)
        return -1;
    s->mhd_poll.data = s;
    uv_timer_init(&s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    uv_timer_init(&s->loop, &s->shutdown_timer);
    s->shutdown_timer.data = s;
    srv_keepalive_init(s);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_term);
    s->sig_int.data = s->sig_term.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    srv_policy_init(s);
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    return 0;
}

int srv_run(const struct srv_config *cfg, struct eng_model *m) {
    struct srv *s = calloc(1, sizeof(*s));
    if (!s) {
        fprintf(stderr, "slimserve: out of memory\n");
        return 1;
    }
    s->cfg = cfg;
    s->mi.name = cfg->served_name;
    s->mi.n_ctx = eng_model_n_ctx(m);
    s->mi.tok = eng_model_tok(m);
    s->mi.n_vocab = s->mi.tok ? tok_n_vocab(s->mi.tok) : eng_model_config(m)->n_vocab;
    s->mi.created = (int64_t)time(NULL);
    s->mi.chat_family = cfg->chat_family;
    s->mi.chat_bos = cfg->chat_bos;
    s->ec.pooling = cfg->pooling;
    s->ec.n_embd = eng_model_config(m)->dim;
    /* an embedding request's inputs all queue at once: never more than the queue takes */
    int queue = cfg->max_queued > 0 ? cfg->max_queued : 256;
    s->ec.max_inputs = queue < API_MAX_EMBED_INPUTS ? queue : API_MAX_EMBED_INPUTS;
    if (sched_ready_init(&s->ready) != 0) {
        fprintf(stderr, "slimserve: cannot create the event loop\n");
        free(s);
        return 1;
    }
    if (uv_loop_init(&s->loop) != 0) {
        fprintf(stderr, "slimserve: cannot create the event loop\n");
        sched_ready_destroy(&s->ready);
        free(s);
        return 1;
    }

    uv_async_init(&s->loop, &s->wake, on_wake); /* before the engine can notify */
    s->wake.data = s;
    signals_mask(SIG_BLOCK); /* inherited by the engine and worker threads */
    if (srv_work_init(s) != 0) {
        fprintf(stderr, "slimserve: cannot start the worker threads\n");
        uv_walk(&s->loop, close_walk_cb, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        sched_ready_destroy(&s->ready);
        free(s);
        return 1;
    }

    struct sched_options so;
    memset(&so, 0, sizeof(so));
    so.max_num_seqs = cfg->max_num_seqs;
    so.max_batched_tokens = cfg->max_batched_tokens;
    so.max_queued = cfg->max_queued;
    so.no_prefix_cache = cfg->no_prefix_cache;
    so.no_swa_recycle = cfg->no_swa_recycle;
    so.spec_ngram = cfg->spec_ngram;
    so.spec_tokens = cfg->spec_tokens;
    so.spec_ngram_min = cfg->spec_ngram_min;
    so.spec_ngram_max = cfg->spec_ngram_max;
    so.spec_max_batch_tokens = cfg->spec_max_batch_tokens;
    so.max_queue_time = cfg->max_queue_time;
    so.notify_admitted = 1; /* streams answer their headers when admitted (completion.c) */
    s->sched = sched_new(m, &so, on_notify, s);
    int port = 0, rc = 1;
    if (!s->sched || sched_start(s->sched) != 0) {
        fprintf(stderr, "slimserve: cannot start the scheduler\n");
        goto out;
    }
    struct sched_limits lim;
    sched_get_limits(s->sched, &lim);
    s->mi.kv_pages = lim.n_pages; /* the api checks requests against the pool too */
    s->d = start_daemon(s, &port);
    if (!s->d)
        goto out;
    if (start_loop(s) != 0) {
        fprintf(stderr, "slimserve: cannot watch the HTTP daemon from the event loop\n");
        MHD_stop_daemon(s->d);
        s->d = NULL;
        goto out;
    }
    int v6 = strchr(cfg->host, ':') != NULL;
    printf("listening on http://%s%s%s:%d\n", v6 ? "[" : "", cfg->host, v6 ? "]" : "", port);
    fflush(stdout);
    srv_log(SRV_LOG_INFO, "serving model '%s' (context %d) on %s:%d", cfg->served_name,
            s->mi.n_ctx, cfg->host, port);
    srv_mhd_run(s);
    signals_mask(SIG_UNBLOCK); /* the loop thread alone takes SIGINT/SIGTERM */
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (s->sched) {
        sched_stop(s->sched);
        drain_ready(s);
        sched_free(s->sched);
    }
    if (rc != 0) {
        srv_work_stop(s);
        /* handles were never started, or the daemon failed: close what exists */
        uv_walk(&s->loop, close_walk_cb, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
    }
    int lc = uv_loop_close(&s->loop);
    if (lc != 0) {
        srv_log(SRV_LOG_WARN, "event loop did not close cleanly: %s", uv_strerror(lc));
        if (rc == 0)
            rc = 1;
    }
    sched_ready_destroy(&s->ready);
    free(s);
    return rc;
}
