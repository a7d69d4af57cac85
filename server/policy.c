/* policy.c - connection policy: read deadlines, vanished clients, the
 * buffered-body budget and the fallback tick that keeps MHD serviced.
 *
 * Every TCP connection gets a struct srv_sock from MHD_OPTION_NOTIFY_CONNECTION
 * (accept to close). Its phase follows the request on it:
 *
 *   accept / previous request over        first access call      body complete
 *        |                                      |                     |
 *   SOCK_HEAD ----------------------------> SOCK_BODY ----------> SOCK_BUSY
 *   absolute deadline t_head_end            no gap > --body-timeout   (no read deadline:
 *   (--header-timeout after accept;         between body reads         generation and
 *    after a previous request:                                         answering never
 *    --timeout + --header-timeout)                                     count)
 *
 * A tick every SRV_TICK_MS checks the deadlines and, in SOCK_HEAD and
 * SOCK_BODY, whether the client has closed (EOF peeked: a request that can
 * never complete). Such a connection is shut down (shutdown(SHUT_RDWR)), which
 * MHD sees as an error on its next run and closes, freeing the slot.
 * NOTE: libmicrohttpd 0.9.75 facts this works around: a client that closes
 * mid-head or mid-body is noticed only at MHD_OPTION_CONNECTION_TIMEOUT, and
 * at the connection limit the listening socket leaves MHD's epoll set until a
 * later MHD_run, which a purely event-driven loop may never make. The tick
 * always ends with an MHD_run, so the listener is serviced at least every
 * SRV_TICK_MS whatever MHD_get_timeout says.
 *
 * Body budget: a request reserves its announced Content-Length (a chunked one
 * grows its share as bytes arrive) from --max-body-total before its body is
 * buffered; the share is released when the body buffer is freed.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "server/http_internal.h"

static uint64_t ms_of(double s) {
    return (uint64_t)(s * 1000.0 + 0.5);
}

/* ------------------------------------------------------------ socket list */

void srv_policy_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                       enum MHD_ConnectionNotificationCode toe) {
    struct srv *s = cls;
    struct srv_sock *sk = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        sk = ci ? calloc(1, sizeof(*sk)) : NULL;
        if (!sk)
            return; /* no policy for this one: MHD's idle timeout still applies */
        sk->srv = s;
        sk->fd = ci->connect_fd;
        sk->phase = SOCK_HEAD;
        sk->t_head_end = uv_now(&s->loop) + ms_of(s->cfg->header_timeout_s);
        sk->next = s->socks;
        if (s->socks)
            s->socks->prev = sk;
        s->socks = sk;
        s->n_socks++;
        *socket_context = sk;
        return;
    }
    if (!sk) /* MHD_CONNECTION_NOTIFY_CLOSED */
        return;
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        s->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    s->n_socks--;
    *socket_context = NULL;
    free(sk);
}

void srv_policy_head_done(struct srv_conn *c, struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    c->sock = ci ? ci->socket_context : NULL;
    if (c->sock) {
        c->sock->phase = SOCK_BODY;
        c->sock->t_read = uv_now(&c->srv->loop);
    }
}

void srv_policy_body_read(struct srv_conn *c) {
    if (c->sock)
        c->sock->t_read = uv_now(&c->srv->loop);
}

void srv_policy_request_done(struct srv_conn *c) {
    struct srv_sock *sk = c->sock;
    if (!sk)
        return;
    if (c->mc) { /* the body is complete: reading is over for this request */
        sk->phase = SOCK_BUSY;
        return;
    }
    /* NOTIFY_COMPLETED: a kept-alive connection waits for its next request.
     * Idle, MHD's --timeout closes it; the next head must be whole by
     * --timeout + --header-timeout, however slowly it trickles in. */
    const struct srv_config *cfg = c->srv->cfg;
    sk->phase = SOCK_HEAD;
    sk->t_head_end = uv_now(&c->srv->loop) + ms_of(cfg->conn_timeout_s) +
                     (cfg->header_timeout_s > 0 ? ms_of(cfg->header_timeout_s) : 0);
    c->sock = NULL;
}

/* ------------------------------------------------------------ body budget */

int srv_body_reserve(struct srv_conn *c, size_t total) {
    struct srv *s = c->srv;
    if (total <= c->body_reserved)
        return 0;
    size_t more = total - c->body_reserved;
    if (more > s->cfg->max_body_total || s->body_total > s->cfg->max_body_total - more)
        return -1;
    s->body_total += more;
    c->body_reserved = total;
    return 0;
}

void srv_body_release(struct srv_conn *c) {
    api_buf_free(&c->body);
    c->srv->body_total -= c->body_reserved;
    c->body_reserved = 0;
}

/* ------------------------------------------------------------ tick */

enum cut_reason { CUT_NONE = 0, CUT_HEAD_TIME, CUT_BODY_TIME, CUT_EOF, CUT_ERROR };

static const char *const cut_why[] = {
    [CUT_HEAD_TIME] = "request head not complete in time (--header-timeout)",
    [CUT_BODY_TIME] = "request body stalled (--body-timeout)",
    [CUT_EOF] = "client closed mid-request",
    [CUT_ERROR] = "connection error mid-request",
};

/* Whether sk must be cut now, and why. */
static int sock_verdict(const struct srv_sock *sk, uint64_t now) {
    const struct srv_config *cfg = sk->srv->cfg;
    if (sk->cut || sk->phase == SOCK_BUSY)
        return CUT_NONE;
    if (sk->phase == SOCK_HEAD && cfg->header_timeout_s > 0 && now >= sk->t_head_end)
        return CUT_HEAD_TIME;
    if (sk->phase == SOCK_BODY && cfg->body_timeout_s > 0 &&
        now - sk->t_read > ms_of(cfg->body_timeout_s))
        return CUT_BODY_TIME;
    /* EOF before the request is whole: it never will be. Bytes still queued
     * (n > 0) are MHD's to read first. */
    char b;
    ssize_t n = recv(sk->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return CUT_EOF;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return CUT_ERROR;
    return CUT_NONE;
}

static void on_policy_tick(uv_timer_t *t) {
    struct srv *s = t->data;
    if (!s->d)
        return;
    uint64_t now = uv_now(&s->loop);
    for (struct srv_sock *sk = s->socks; sk; sk = sk->next) {
        int why = sock_verdict(sk, now);
        if (why == CUT_NONE)
            continue;
        sk->cut = 1;
        /* between requests, EOF is an ordinary keep-alive close: no log line */
        if (!(sk->phase == SOCK_HEAD && why >= CUT_EOF))
            srv_log(why == CUT_EOF ? SRV_LOG_DEBUG : SRV_LOG_INFO, "closing connection (fd %d): %s",
                    sk->fd, cut_why[why]);
        shutdown(sk->fd, SHUT_RDWR); /* MHD sees the error and closes it */
    }
    fdwatch_sweep(s);
    srv_mhd_run(s); /* also the fallback run: the listener is re-armed here */
}

void srv_policy_init(struct srv *s) {
    uv_timer_init(&s->loop, &s->policy_timer);
    s->policy_timer.data = s;
    uv_timer_start(&s->policy_timer, on_policy_tick, SRV_TICK_MS, SRV_TICK_MS);
}

static void on_timer_closed(uv_handle_t *h) {
    (void)h;
}

void srv_policy_close(struct srv *s) {
    if (!uv_is_closing((uv_handle_t *)&s->policy_timer))
        uv_close((uv_handle_t *)&s->policy_timer, on_timer_closed);
}
