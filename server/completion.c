/* completion.c - one /v1/completions or /v1/chat/completions request on the
 * loop thread: submission of its n choices (one sched_req each), output
 * hand-off from the engine, SSE streaming, disconnect detection.
 *
 *   access handler (full body) -> worker.c parses it off the loop thread ->
 *     completion_submit: sched_submit x n
 *     non-stream: suspend; each wake-up completion_pump_choice() keeps text and
 *                 logprobs; when every choice finished, resume -> MHD calls the
 *                 handler -> completion_resumed queues the JSON (or the error).
 *     stream:     queue a callback response; the reader hands out SSE bytes that
 *                 completion_pump_choice() formatted (chunks carry their choice
 *                 index), or suspends when there are none.
 *   While suspended, a uv_poll on the socket notices a client that went away
 *   (MHD does not watch suspended sockets) and cancels the request. EOF alone
 *   may be a half-close (the client still reads): peer_eof_probe writes to
 *   tell the two apart, fdwatch_sweep (policy tick) acts on the reset.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "kernels/ss_error.h"
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

/* The client left while its request waited: cancel it and let MHD close the
 * connection. The caller runs MHD afterwards. */
static void conn_gone(struct srv_conn *c) {
    srv_log_req(SRV_LOG_DEBUG, c->rid, "%s %s: client went away while waiting", c->method, c->path);
    c->client_gone = 1;
    completion_cancel(c, CANCEL_CLIENT);
    conn_resume(c);
}

/* EOF on a suspended request: the client half-closed its write side (it may
 * still read the answer) or closed entirely; TCP cannot tell them apart until
 * the server writes. So write: before any response byte, an interim
 * "100 Continue" (HTTP/1.1 clients must skip unexpected 1xx answers); on a
 * stream, MHD's next chunk. A peer that closed answers the write with a reset,
 * which fdwatch_sweep sees (TCP state CLOSE) and treats as gone. Returns 1 if
 * the request may go on, 0 if the client is gone already. */
static int peer_eof_probe(struct srv_conn *c) {
    static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (c->http10)
        return 0; /* no 1xx for HTTP/1.0: EOF means gone, as before */
    c->peer_eof = 1;
    if (c->state == CS_STREAM)
        return 1; /* the stream's own writes are the probe */
    ssize_t n = send(c->fd, probe, sizeof(probe) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    return n == (ssize_t)(sizeof(probe) - 1);
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
    if (n == 0 && status >= 0 && (c->peer_eof || peer_eof_probe(c))) {
        fdwatch_stop(c); /* EOF stays readable: watching on would spin */
        return;
    }
    conn_gone(c);
    srv_mhd_run(c->srv);
}

void fdwatch_sweep(struct srv *s) {
    for (struct srv_conn *c = s->inflight, *next; c; c = next) {
        next = c->next;
        if (!c->peer_eof || !c->suspended || c->client_gone || !c->mc || c->fd < 0)
            continue;
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || ti.tcpi_state == TCP_CLOSE)
            conn_gone(c);
    }
}

void fdwatch_start(struct srv_conn *c) {
    struct srv *s = c->srv;
    if (!c->mc || s->phase == SRV_STOPPED || c->fdw_active || c->peer_eof)
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
    else if (c->error == SS_EAGAIN && !c->admitted) /* the scheduler's --max-queue-time */
        api_error_set(e, SS_EAGAIN, NULL, "queue_timeout", "%s",
                      c->errmsg[0] ? c->errmsg : "the request waited too long in the queue");
    else
        api_error_set(e, c->error < 0 ? c->error : SS_EINTERNAL, NULL, NULL, "%s",
                      c->errmsg[0] ? c->errmsg : "generation failed");
}

int64_t completion_n_gen(const struct srv_conn *c) {
    int64_t n = 0;
    for (int i = 0; i < c->n_ch; i++)
        n += c->ch[i].n_gen;
    return n;
}

/* Appends the closing SSE events (each choice already sent its final chunk). */
static void stream_close(struct srv_conn *c) {
    if (!c->failed) {
        if (c->include_usage)
            api_sse_usage(&c->out, &c->meta, c->n_prompt, completion_n_gen(c));
    } else {
        struct api_error e;
        finish_error(c, &e);
        api_sse_error(&c->out, &e);
    }
    api_sse_done(&c->out);
    c->stream_closed = 1;
}

/* A choice ended without stop/length: the whole response becomes an error.
 * The first error is reported (a real error beats the cancellations it
 * causes); the other choices are cancelled, nobody will see their output. */
static void choice_failed(struct srv_conn *c, struct srv_choice *ch, const struct req_out *o) {
    if (!c->failed || (c->finish == REQ_FINISH_CANCELLED && o->finish == REQ_FINISH_ERROR)) {
        c->finish = o->finish;
        c->error = o->error;
        memcpy(c->errmsg, o->errmsg, sizeof(c->errmsg));
        c->errmsg[sizeof(c->errmsg) - 1] = '\0';
    }
    if (!c->failed) {
        c->failed = 1;
        for (int i = 0; i < c->n_ch; i++)
            if (&c->ch[i] != ch && !c->ch[i].finished)
                sched_cancel(c->srv->sched, c->ch[i].req);
    }
}

/* Stream with tools: the text of this take goes through the choice's call
 * parser; content that is safe to show goes out as usual, each completed
 * call as its two tool_calls chunks. */
static void stream_tools(struct srv_conn *c, struct srv_choice *ch, struct api_choice_out *co,
                         struct api_buf *content, int done) {
    if (api_tool_stream_feed(&ch->ts, co->text, co->len, done, content) < 0)
        c->out.oom = 1;
    co->text = content->data;
    co->len = content->len;
}

static void stream_calls(struct srv_conn *c, struct srv_choice *ch) {
    for (; ch->ts.n_sent < ch->ts.n_calls; ch->ts.n_sent++)
        api_sse_tool_call(&c->out, &c->meta, ch->index, ch->ts.n_sent,
                          &ch->ts.calls[ch->ts.n_sent], c->include_usage);
}

/* Stream: SSE chunks for what one take brought (text, logprobs, the end). */
static void stream_take(struct srv_conn *c, struct srv_choice *ch, const struct req_out *o,
                        int done) {
    struct api_choice_out co = {ch->index, o->text, o->len, REQ_FINISH_NONE, c->logprobs,
                                o->toks, o->n_toks, &ch->lps, NULL, 0, 0};
    struct api_buf first, content;
    api_buf_init(&first);
    api_buf_init(&content);
    int echo_now = 0;
    if (!ch->started) {
        ch->started = 1;
        if (c->kind == API_KIND_CHAT)
            api_sse_role(&c->out, &c->meta, ch->index, c->include_usage);
        if (c->echo_text) { /* the prompt goes out with the first chunk */
            api_buf_append(&first, c->echo_text, c->echo_len);
            api_buf_append(&first, o->text ? o->text : "", o->len);
            co.text = first.data;
            co.len = first.len;
            echo_now = 1;
            if (first.oom)
                c->out.oom = 1;
        }
    }
    if (c->tools && !c->failed)
        stream_tools(c, ch, &co, &content, done);
    int ended = done && !c->failed && (o->finish == REQ_FINISH_STOP || o->finish == REQ_FINISH_LENGTH);
    if (!c->failed && (co.len || co.n_toks || echo_now) && (!ended || ch->ts.n_calls > ch->ts.n_sent)) {
        api_sse_chunk(&c->out, &c->meta, &co, c->include_usage); /* content before the calls */
        co.len = 0;
        co.n_toks = 0;
    }
    if (c->tools && !c->failed)
        stream_calls(c, ch);
    if (ended) {
        co.finish = o->finish;
        co.tool_finish = ch->ts.n_calls > 0;
        api_sse_chunk(&c->out, &c->meta, &co, c->include_usage);
    }
    api_buf_free(&first);
    api_buf_free(&content);
}

/* Non-stream: keeps text, logprob records and an embedding for the final body. */
static void keep_take(struct srv_choice *ch, struct req_out *o) {
    if (o->embd) {
        free(ch->embd);
        ch->embd = o->embd; /* moved */
        ch->n_embd = o->n_embd;
        o->embd = NULL;
    }
    if (o->len)
        api_buf_append(&ch->text, o->text, o->len);
    if (o->n_toks <= 0)
        return;
    if (ch->n_toks + o->n_toks > ch->cap_toks) {
        int32_t cap = ch->cap_toks ? ch->cap_toks : 16;
        while (cap < ch->n_toks + o->n_toks)
            cap *= 2;
        struct req_tok *nt = realloc(ch->toks, sizeof(*nt) * (size_t)cap);
        if (!nt) {
            ch->text.oom = 1;
            return;
        }
        ch->toks = nt;
        ch->cap_toks = cap;
    }
    memcpy(ch->toks + ch->n_toks, o->toks, sizeof(*o->toks) * (size_t)o->n_toks);
    ch->n_toks += o->n_toks;
}

/* echo with max_tokens 0: keeps the prompt's logprob records only; the token
 * the scheduler had to generate is not reported (usage 0, finish "length"). */
static void drop_generated(struct req_out *o) {
    o->len = 0;
    o->n_gen = 0;
    int32_t k = 0;
    for (int32_t i = 0; i < o->n_toks; i++)
        if (o->toks[i].prompt)
            o->toks[k++] = o->toks[i];
    o->n_toks = k;
    if (o->finish == REQ_FINISH_STOP)
        o->finish = REQ_FINISH_LENGTH;
}

void completion_pump_choice(struct srv_choice *ch) {
    struct srv_conn *c = ch->conn;
    if (!ch->req || ch->finished || c->finished)
        return;
    if (c->stream && c->out_off > 65536 && c->out_off * 2 > c->out.len) {
        api_buf_consume(&c->out, c->out_off); /* compact what MHD already took */
        c->out_off = 0;
    }
    struct req_out o;
    memset(&o, 0, sizeof(o));
    int done = sched_req_take(ch->req, &o);
    if (o.admitted && !c->admitted) {
        c->admitted = 1; /* the client is being served: its other choices wait for seats */
        for (int i = 0; i < c->n_ch; i++)
            sched_queue_exempt(c->ch[i].req);
    }
    if (c->prompt_only)
        drop_generated(&o);
    if (c->route != API_ROUTE_EMBEDDINGS) /* there: the sum over the inputs (embed_submit) */
        c->n_prompt = o.n_prompt;
    if (o.n_cached > c->meta.n_cached) /* n > 1: the best hit among the choices */
        c->meta.n_cached = o.n_cached;
    ch->n_gen = o.n_gen;
    if (done && o.finish != REQ_FINISH_STOP && o.finish != REQ_FINISH_LENGTH)
        choice_failed(c, ch, &o);
    if (c->stream)
        stream_take(c, ch, &o, done);
    else
        keep_take(ch, &o);
    if (done) {
        ch->finished = 1;
        ch->finish = o.finish;
        if (++c->n_done == c->n_ch) {
            c->finished = 1;
            inflight_remove(c);
            if (c->stream)
                stream_close(c);
        }
    }
    free(o.text);
    free(o.toks);
    free(o.embd);
    if (c->out.oom || ch->text.oom) {
        /* cannot even buffer the answer: drop the connection */
        completion_cancel(c, CANCEL_CLIENT);
        c->client_gone = 1;
        conn_resume(c);
        return;
    }
    if (c->stream && !c->finished && c->cancel_reason == CANCEL_NONE &&
        pending(c) > c->srv->cfg->max_stream_buffer) {
        srv_log_req(SRV_LOG_WARN, c->rid, "stream %s: %zu bytes unsent, client too slow: cancelling", c->id,
                pending(c));
        completion_cancel(c, CANCEL_SLOW);
    }
    /* a stream waiting for its first admission (CS_WAIT) starts once admitted */
    if (c->suspended && (c->finished || (c->stream && (pending(c) > 0 || c->admitted))))
        conn_resume(c);
}

void completion_pump(struct srv_conn *c) {
    for (int i = 0; i < c->n_ch && !c->finished; i++)
        completion_pump_choice(&c->ch[i]);
}

void completion_cancel(struct srv_conn *c, int reason) {
    if (c->n_ch == 0 || c->finished)
        return;
    if (c->cancel_reason == CANCEL_NONE) {
        c->cancel_reason = reason;
        for (int i = 0; i < c->n_ch; i++)
            if (c->ch[i].req && !c->ch[i].finished)
                sched_cancel(c->srv->sched, c->ch[i].req);
    }
    if (reason == CANCEL_CLIENT) {
        /* nobody to send the rest to */
        c->finished = 1;
        inflight_remove(c);
    }
}

void completion_free(struct srv_conn *c) {
    for (int i = 0; i < c->n_ch; i++) {
        struct srv_choice *ch = &c->ch[i];
        if (ch->req) {
            ch->req->user = NULL; /* loop-thread field: stale ready entries see no choice */
            sched_req_unref(ch->req);
        }
        api_buf_free(&ch->text);
        free(ch->toks);
        api_tool_stream_free(&ch->ts);
        free(ch->embd);
    }
    free(c->ch);
    c->ch = NULL;
    c->n_ch = 0;
    free(c->echo_text);
    c->echo_text = NULL;
    api_tools_free(c->tools);
    c->tools = NULL;
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
        c->t_sent = uv_now(&c->srv->loop);
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
    srv_ops_headers(c, resp);
    c->t_sent = uv_now(&c->srv->loop);
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    c->status = 200;
    conn_set_state(c, CS_STREAM);
    return ret;
}

static void submit_error(struct api_error *e, int rc, const struct sched_req *r) {
    if (rc == SS_EAGAIN)
        api_error_set(e, rc, NULL, "queue_full", "%s",
                      r->out.errmsg[0] ? r->out.errmsg : "too many requests; retry later");
    else
        api_error_set(e, rc, rc == SS_ETOOLONG ? "prompt" : NULL,
                      rc == SS_ETOOLONG ? "context_length_exceeded" : NULL, "%s",
                      r->out.errmsg[0] ? r->out.errmsg : ss_strerror(rc));
}

int completion_submit_choice(struct srv_conn *c, int i, struct req_params *p, struct api_error *e) {
    struct srv_choice *ch = &c->ch[i];
    ch->conn = c;
    ch->index = i;
    struct sched_req *r = sched_req_new();
    if (!r) {
        api_error_set(e, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    r->p = *p; /* the request owns prompt, stop strings and bias from here */
    memset(p, 0, sizeof(*p));
    r->user = ch;
    int rc = sched_submit(c->srv->sched, r);
    if (rc < 0) {
        submit_error(e, rc, r);
        r->user = NULL;
        sched_req_unref(r);
        return rc;
    }
    ch->req = r;
    return 0;
}

void completion_abort(struct srv_conn *c) {
    for (int i = 0; i < c->n_ch; i++)
        if (c->ch[i].req)
            sched_cancel(c->srv->sched, c->ch[i].req);
    completion_free(c); /* drops our references; the engine ends the cancelled ones */
}

/* Creates and submits the n requests of comp (its params move into the last
 * one; the others get deep copies, choice i seeded with seed + i). On failure
 * everything submitted is cancelled and released, and *e is filled. */
static int submit_choices(struct srv_conn *c, struct api_completion *comp, struct api_error *e) {
    int n = comp->n;
    c->ch = calloc((size_t)n, sizeof(*c->ch));
    if (!c->ch) {
        api_error_set(e, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    c->n_ch = n;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        c->ch[i].lps.echo_len = comp->echo_len;
        api_tool_stream_init(&c->ch[i].ts, comp->tools);
        struct req_params p;
        if (i == n - 1) {
            p = comp->p;
            memset(&comp->p, 0, sizeof(comp->p));
        } else if (req_params_copy(&p, &comp->p) != 0) {
            api_error_set(e, SS_ENOMEM, NULL, NULL, NULL);
            rc = SS_ENOMEM;
            break;
        }
        if (p.smp.has_seed)
            p.smp.seed += (uint64_t)i;
        rc = completion_submit_choice(c, i, &p, e);
        req_params_free(&p); /* empty unless the submission failed */
    }
    if (rc < 0)
        completion_abort(c);
    return rc;
}

void completion_wait(struct srv_conn *c) {
    inflight_add(c);
    conn_set_state(c, CS_WAIT);
    conn_suspend(c);
}

enum MHD_Result completion_submit(struct srv_conn *c, struct api_completion *comp) {
    struct srv *s = c->srv;
    struct api_error e;
    int rc;
    c->kind = comp->kind;
    c->logprobs = comp->p.logprobs;
    c->prompt_only = comp->prompt_only;
    c->n_prompt = comp->p.n_prompt;
    c->stream = comp->stream;
    c->include_usage = comp->include_usage;
    rc = submit_choices(c, comp, &e);
    if (rc < 0)
        return srv_respond_error(c, &e);
    c->echo_text = comp->echo_text; /* moved */
    c->echo_len = comp->echo_len;
    comp->echo_text = NULL;
    c->tools = comp->tools; /* moved (the choices' parsers point at it) */
    comp->tools = NULL;
    api_completion_id(c->id, sizeof(c->id), ++s->seq, c->kind);
    c->meta.id = c->id;
    c->meta.created = (int64_t)time(NULL);
    c->meta.model = s->mi.name;
    c->meta.kind = c->kind;
    c->meta.tok = s->mi.tok;
    /* A stream too waits (suspended) until it is admitted: a request that
     * times out in the queue (--max-queue-time), or is refused before its
     * first seat, still gets a status code (503 + Retry-After) instead of a
     * 200 stream carrying an error event. See completion_resumed. */
    completion_wait(c);
    return MHD_YES;
}

/* Non-stream with tools: the choice's whole text read as calls; content is
 * the text before them (trimmed; null when empty). */
static void body_tools(struct srv_choice *ch, struct api_choice_out *co,
                       struct api_buf *content, struct api_buf *b) {
    if (api_tool_stream_feed(&ch->ts, ch->text.data ? ch->text.data : "", ch->text.len, 1,
                             content) < 0)
        b->oom = 1;
    co->text = content->data;
    co->len = content->len;
    if (ch->ts.n_calls > 0) { /* a length finish keeps the calls completed before it, as
                               * a stream has already sent them (finish_reason stays "length") */
        co->calls = ch->ts.calls;
        co->n_calls = ch->ts.n_calls;
        while (co->len && (co->text[co->len - 1] == ' ' || co->text[co->len - 1] == '\n'))
            co->len--;
        while (co->len && (co->text[0] == ' ' || co->text[0] == '\n')) {
            co->text++;
            co->len--;
        }
    }
}

/* The whole non-streamed body; choices with echo get the prompt in front. */
static int response_body(struct srv_conn *c, struct api_buf *b) {
    struct api_choice_out *co = calloc((size_t)c->n_ch, sizeof(*co));
    struct api_buf *joined = calloc((size_t)c->n_ch, sizeof(*joined));
    struct api_lp_state *lps = calloc((size_t)c->n_ch, sizeof(*lps));
    int rc = SS_ENOMEM;
    if (co && joined && lps) {
        for (int i = 0; i < c->n_ch; i++) {
            struct srv_choice *ch = &c->ch[i];
            co[i] = (struct api_choice_out){i, ch->text.data, ch->text.len, ch->finish,
                                            c->logprobs, ch->toks, ch->n_toks, &lps[i], NULL, 0, 0};
            lps[i].echo_len = c->echo_len;
            if (c->tools)
                body_tools(ch, &co[i], &joined[i], b);
            else if (c->echo_text) {
                api_buf_append(&joined[i], c->echo_text, c->echo_len);
                api_buf_append(&joined[i], ch->text.data ? ch->text.data : "", ch->text.len);
                co[i].text = joined[i].data;
                co[i].len = joined[i].len;
                if (joined[i].oom)
                    b->oom = 1;
            }
        }
        rc = api_response_json(b, &c->meta, co, c->n_ch, c->n_prompt, completion_n_gen(c));
    }
    for (int i = 0; joined && i < c->n_ch; i++)
        api_buf_free(&joined[i]);
    free(co);
    free(joined);
    free(lps);
    return rc;
}

/* MHD calls the handler again after each resume while the request waits
 * (CS_WAIT): a non-stream until it is finished, a stream until it is
 * admitted (then its SSE response starts, with what is pending) or ended
 * before that (then the error's status: queue timeout, shutdown). */
enum MHD_Result completion_resumed(struct srv_conn *c) {
    if (c->client_gone)
        return MHD_NO; /* closes the connection */
    if (c->stream && (c->admitted || pending(c) > 0) && !(c->failed && !c->admitted))
        return start_stream(c);
    if (!c->finished) {
        conn_suspend(c);
        return MHD_YES;
    }
    struct api_error e;
    if (!c->failed) {
        struct api_buf b;
        api_buf_init(&b);
        int rc = c->route == API_ROUTE_EMBEDDINGS ? embed_body(c, &b) : response_body(c, &b);
        for (int i = 0; i < c->n_ch; i++)
            api_buf_free(&c->ch[i].text);
        if (rc < 0 || b.oom) {
            api_buf_free(&b);
            api_error_set(&e, SS_ENOMEM, NULL, NULL, NULL);
            return srv_respond_error(c, &e);
        }
        return srv_respond(c, 200, "application/json", &b, NULL, NULL);
    }
    finish_error(c, &e);
    return srv_respond_error(c, &e);
}
