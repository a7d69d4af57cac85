/* completion.c - one /v1/completions request on the loop thread: submission,
 * output hand-off from the engine, SSE streaming, disconnect detection.
 *
 *   access handler (full body) -> completion_start: parse, sched_submit
 *     non-stream: suspend; each wake-up completion_pump() appends text; when
 *                 finished, resume -> MHD calls the handler -> completion_resumed
 *                 queues the JSON (or the error).
 *     stream:     queue a callback response; the reader hands out SSE bytes that
 *                 completion_pump() formatted, or suspends when there are none.
 *   While suspended, a uv_poll on the socket notices a client that went away
 *   (MHD does not watch suspended sockets) and cancels the request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "engine/ss_error.h"
#include "server/http_internal.h"

#define STREAM_BLOCK (16 * 1024)

static size_t pending(const struct srv_conn *c) {
    return c->out.len - c->out_off;
}

static void inflight_add(struct srv_conn *c) {
    struct srv *s = c->srv;
    c->prev = NULL;
    c->next = s->inflight;
    if (s->inflight)
        s->inflight->prev = c;
    s->inflight = c;
    c->inflight = 1;
    s->n_inflight++;
}

/* ------------------------------------------------------------ socket watch */

static void on_fdw_closed(uv_handle_t *h) {
    conn_unref(h->data);
}

static void on_fd_event(uv_poll_t *h, int status, int events) {
    struct srv_conn *c = h->data;
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    int gone = n == 0 || status < 0 ||
               (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
               (n < 0 && (events & UV_DISCONNECT));
    if (!gone) {
        if (n > 0) /* pipelined bytes hide a later EOF: stop looking (no spinning) */
            fdwatch_stop(c);
        return;
    }
    srv_log(SRV_LOG_DEBUG, "%s %s: client went away while waiting", c->method, c->path);
    c->client_gone = 1;
    completion_cancel(c, CANCEL_CLIENT);
    conn_resume(c);
    srv_mhd_run(c->srv);
}

void fdwatch_start(struct srv_conn *c) {
    struct srv *s = c->srv;
    if (!c->mc || s->phase == SRV_STOPPED || c->fdw_active)
        return;
    if (!c->fdw_init) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
            return;
        c->fd = ci->connect_fd;
        if (uv_poll_init_socket(&s->loop, &c->fdw, c->fd) != 0)
            return;
        c->fdw.data = c;
        c->fdw_init = 1;
        c->refs++; /* released in on_fdw_closed */
    }
    if (uv_poll_start(&c->fdw, UV_READABLE | UV_DISCONNECT, on_fd_event) == 0)
        c->fdw_active = 1;
}

void fdwatch_stop(struct srv_conn *c) {
    if (c->fdw_active) {
        uv_poll_stop(&c->fdw);
        c->fdw_active = 0;
    }
}

void fdwatch_close(struct srv_conn *c) {
    if (c->fdw_init) {
        c->fdw_active = 0;
        c->fdw_init = 0;
        uv_close((uv_handle_t *)&c->fdw, on_fdw_closed);
    }
}

/* ------------------------------------------------------------ output */

static void shutdown_error(struct api_error *e) {
    api_error_set(e, SS_EAGAIN, NULL, "server_shutting_down",
                  "the server is shutting down; retry the request");
}

/* The error a request that did not end with stop/length reports. */
static void finish_error(const struct srv_conn *c, struct api_error *e) {
    if (c->cancel_reason == CANCEL_SLOW)
        api_error_set(e, SS_EAGAIN, NULL, "stream_buffer_full",
                      "the client did not read the stream fast enough; generation was cancelled");
    else if (c->cancel_reason == CANCEL_SHUTDOWN || c->error == SS_ECANCELLED ||
             c->finish == REQ_FINISH_CANCELLED)
        shutdown_error(e);
    else
        api_error_set(e, c->error < 0 ? c->error : SS_EINTERNAL, NULL, NULL, "%s",
                      c->errmsg[0] ? c->errmsg : "generation failed");
}

/* Appends the closing SSE events. */
static void stream_close(struct srv_conn *c, const char *text, size_t len) {
    if (c->finish == REQ_FINISH_STOP || c->finish == REQ_FINISH_LENGTH) {
        api_sse_chunk(&c->out, &c->meta, text, len, c->finish, c->include_usage);
        if (c->include_usage)
            api_sse_usage(&c->out, &c->meta, c->n_prompt, c->n_gen);
    } else {
        if (len)
            api_sse_chunk(&c->out, &c->meta, text, len, REQ_FINISH_NONE, c->include_usage);
        struct api_error e;
        finish_error(c, &e);
        api_sse_error(&c->out, &e);
    }
    api_sse_done(&c->out);
    c->stream_closed = 1;
}

void completion_pump(struct srv_conn *c) {
    if (!c->req || c->finished)
        return;
    if (c->stream && c->out_off > 65536 && c->out_off * 2 > c->out.len) {
        api_buf_consume(&c->out, c->out_off); /* compact what MHD already took */
        c->out_off = 0;
    }
    struct req_out o;
    memset(&o, 0, sizeof(o));
    int done = sched_req_take(c->req, &o);
    c->n_prompt = o.n_prompt;
    c->n_gen = o.n_gen;
    if (!c->stream) {
        if (o.len)
            api_buf_append(&c->out, o.text, o.len);
    } else if (!done && o.len) {
        api_sse_chunk(&c->out, &c->meta, o.text, o.len, REQ_FINISH_NONE, c->include_usage);
    }
    if (done) {
        c->finished = 1;
        c->finish = o.finish;
        c->error = o.error;
        memcpy(c->errmsg, o.errmsg, sizeof(c->errmsg));
        c->errmsg[sizeof(c->errmsg) - 1] = '\0';
        inflight_remove(c);
        if (c->stream)
            stream_close(c, o.text, o.len);
    }
    free(o.text);
    free(o.toks); /* logprobs are not requested yet */
    if (c->out.oom) {
        /* cannot even buffer the answer: drop the connection */
        completion_cancel(c, CANCEL_CLIENT);
        c->client_gone = 1;
        conn_resume(c);
        return;
    }
    if (c->stream && !c->finished && c->cancel_reason == CANCEL_NONE &&
        pending(c) > c->srv->cfg->max_stream_buffer) {
        srv_log(SRV_LOG_WARN, "stream %s: %zu bytes unsent, client too slow: cancelling", c->id,
                pending(c));
        completion_cancel(c, CANCEL_SLOW);
    }
    if (c->suspended && (c->finished || (c->stream && pending(c) > 0)))
        conn_resume(c);
}

void completion_cancel(struct srv_conn *c, int reason) {
    if (!c->req || c->finished)
        return;
    if (c->cancel_reason == CANCEL_NONE) {
        c->cancel_reason = reason;
        sched_cancel(c->srv->sched, c->req);
    }
    if (reason == CANCEL_CLIENT) {
        /* nobody to send the rest to */
        c->finished = 1;
        inflight_remove(c);
    }
}

/* ------------------------------------------------------------ streaming reader */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct srv_conn *c = cls;
    if (c->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (pending(c) == 0 && c->inflight)
        completion_pump(c);
    size_t n = pending(c);
    if (n > 0) {
        if (n > max)
            n = max;
        memcpy(buf, c->out.data + c->out_off, n);
        c->out_off += n;
        if (c->out_off == c->out.len)
            c->out.len = c->out_off = 0;
        return (ssize_t)n;
    }
    if (c->stream_closed)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (!c->inflight)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    conn_suspend(c); /* nothing yet: the next wake-up resumes us (never return 0 unsuspended) */
    return 0;
}

static void stream_free(void *cls) {
    conn_unref(cls);
}

/* ------------------------------------------------------------ start / finish */

static enum MHD_Result start_stream(struct srv_conn *c) {
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, c,
                                          stream_free);
    if (!resp) {
        completion_cancel(c, CANCEL_CLIENT);
        return MHD_NO;
    }
    c->refs++; /* the response's reference */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    c->status = 200;
    conn_set_state(c, CS_STREAM);
    return ret;
}

enum MHD_Result completion_start(struct srv_conn *c) {
    struct srv *s = c->srv;
    struct api_completion comp;
    struct api_error e;
    int rc = api_completion_parse(&s->mi, c->body.data, c->body.len, &comp, &e);
    api_buf_free(&c->body);
    if (rc < 0)
        return srv_respond_error(c, &e);

    struct sched_req *r = sched_req_new();
    if (!r) {
        api_completion_free(&comp);
        api_error_set(&e, SS_ENOMEM, NULL, NULL, NULL);
        return srv_respond_error(c, &e);
    }
    r->p = comp.p; /* the request owns prompt and stop strings from here */
    memset(&comp.p, 0, sizeof(comp.p));
    r->user = c;
    rc = sched_submit(s->sched, r);
    if (rc < 0) {
        if (rc == SS_EAGAIN)
            api_error_set(&e, rc, NULL, "queue_full", "%s",
                          r->out.errmsg[0] ? r->out.errmsg : "too many requests; retry later");
        else
            api_error_set(&e, rc, rc == SS_ETOOLONG ? "prompt" : NULL,
                          rc == SS_ETOOLONG ? "context_length_exceeded" : NULL, "%s",
                          r->out.errmsg[0] ? r->out.errmsg : ss_strerror(rc));
        r->user = NULL;
        sched_req_unref(r);
        return srv_respond_error(c, &e);
    }
    c->req = r;
    c->n_prompt = r->p.n_prompt;
    c->stream = comp.stream;
    c->include_usage = comp.include_usage;
    api_completion_id(c->id, sizeof(c->id), ++s->seq);
    c->meta.id = c->id;
    c->meta.created = (int64_t)time(NULL);
    c->meta.model = s->mi.name;
    inflight_add(c);
    if (c->stream)
        return start_stream(c);
    conn_set_state(c, CS_WAIT);
    conn_suspend(c);
    return MHD_YES;
}

/* Non-stream: MHD calls the handler again after each resume. */
enum MHD_Result completion_resumed(struct srv_conn *c) {
    if (c->client_gone)
        return MHD_NO; /* closes the connection */
    if (!c->finished) {
        conn_suspend(c);
        return MHD_YES;
    }
    struct api_error e;
    if (c->finish == REQ_FINISH_STOP || c->finish == REQ_FINISH_LENGTH) {
        struct api_buf b;
        api_buf_init(&b);
        api_completion_json(&b, &c->meta, c->out.data, c->out.len, c->finish, c->n_prompt,
                            c->n_gen);
        api_buf_free(&c->out);
        if (b.oom) {
            api_buf_free(&b);
            api_error_set(&e, SS_ENOMEM, NULL, NULL, NULL);
            return srv_respond_error(c, &e);
        }
        return srv_respond(c, 200, "application/json", &b, NULL, NULL);
    }
    finish_error(c, &e);
    return srv_respond_error(c, &e);
}
