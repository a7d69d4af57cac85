/* bench_parse.c - incremental HTTP/1.1 response + SSE parser of `slimserve bench`
 * (the bench_parse_* API of tools/bench.h) and the growable string shared with
 * tools/bench.c (tools/bench_internal.h).
 *
 * Layout of this file:
 *   1. growable string (bench_sbuf)
 *   2. bench_parse: status line and headers, chunked / Content-Length /
 *      close-delimited framing, SSE lines and events decoded with cJSON
 *
 * Thread contract: no global state; one parser object is used by one thread at
 * a time. Nothing a peer sends can crash it: every buffer is bounded (HEAD_MAX,
 * ERRBODY_MAX, SSE_LINE_MAX) and errors end up in bench_parse_info.error.
 */
#include "tools/bench.h"
#include "tools/bench_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "kernels/ss_error.h"

/* ================= 1. growable string ================= */

/* Contracts in tools/bench_internal.h. */
int bench_sb_add(struct bench_sbuf *b, const void *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return SS_ENOMEM;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int bench_sb_printf(struct bench_sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return SS_EINVAL;
    if ((size_t)n < sizeof(tmp))
        return bench_sb_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return SS_ENOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = bench_sb_add(b, big, (size_t)n);
    free(big);
    return rc;
}

/* ================= 2. response parser ================= */

#define HEAD_MAX (64 * 1024)
#define ERRBODY_MAX 8192
#define SSE_LINE_MAX ((size_t)16 << 20)

enum { P_HEAD, P_BODY, P_END };
enum { B_LENGTH, B_CHUNKED, B_CLOSE };
enum { C_SIZE, C_DATA, C_DATA_CRLF, C_TRAILER };

struct bench_parse {
    int state, framing, cstate;
    struct bench_sbuf head;  /* status line + headers until the blank line */
    int status, conn_close;
    int64_t body_left;       /* B_LENGTH: bytes still expected */
    uint64_t chunk_left;     /* C_DATA: bytes left in the current chunk */
    char cline[40];          /* C_SIZE: start of the chunk-size line */
    size_t cline_len, trailer_len;
    struct bench_sbuf line, data; /* SSE: current line, data of the current event */
    struct bench_sbuf errbody;    /* non-200 body (first ERRBODY_MAX bytes) */
    int prev_cr, have_data;
    int done, failed, proto_err, have_first;
    char err[256];
    int64_t prompt_tokens, completion_tokens;
    double t_done, t_first_chunk;
    double *tc;              /* [n_tc] arrival times of content events */
    int n_tc, cap_tc;
};

static void pfail(struct bench_parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pfail(struct bench_parse *p, const char *fmt, ...) {
    p->failed = 1;
    if (p->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    for (char *c = p->err; *c; c++) /* keep reports on one line */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
}

struct bench_parse *bench_parse_new(void) {
    struct bench_parse *p = calloc(1, sizeof(*p));
    if (p)
        p->prompt_tokens = p->completion_tokens = -1;
    return p;
}

void bench_parse_free(struct bench_parse *p) {
    if (!p)
        return;
    free(p->head.p);
    free(p->line.p);
    free(p->data.p);
    free(p->errbody.p);
    free(p->tc);
    free(p);
}

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void sse_choices(struct bench_parse *p, const cJSON *choices, double t) {
    int content = 0, any = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, choices) {
        any = 1;
        const char *text = json_str(c, "text");
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c, "delta");
        if (!text && cJSON_IsObject(delta))
            text = json_str(delta, "content");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "token_ids");
        if ((text && text[0]) || (cJSON_IsArray(ids) && cJSON_GetArraySize(ids) > 0))
            content = 1;
    }
    if (any && !p->have_first) {
        p->have_first = 1;
        p->t_first_chunk = t;
    }
    if (!content)
        return;
    if (p->n_tc == p->cap_tc) {
        int cap = p->cap_tc ? p->cap_tc * 2 : 64;
        double *q = realloc(p->tc, (size_t)cap * sizeof(*q));
        if (!q) {
            pfail(p, "out of memory");
            return;
        }
        p->tc = q;
        p->cap_tc = cap;
    }
    p->tc[p->n_tc++] = t;
}

/* One complete SSE event (its data lines joined by '\n'). */
static void sse_event(struct bench_parse *p, double t) {
    const char *d = p->data.p;
    size_t len = p->data.len;
    p->have_data = 0;
    p->data.len = 0;
    if (p->done || len == 0)
        return; /* events after [DONE] and empty events carry nothing */
    if (len == 6 && memcmp(d, "[DONE]", 6) == 0) {
        p->done = 1;
        p->t_done = t;
        return;
    }
    cJSON *j = cJSON_ParseWithLength(d, len);
    if (!j || !cJSON_IsObject(j)) {
        pfail(p, "malformed SSE event: %.100s", d);
        cJSON_Delete(j);
        return;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const char *obj = json_str(j, "object");
    if (e || (obj && strcmp(obj, "error") == 0)) {
        const char *msg = cJSON_IsString(e) ? e->valuestring
                          : e               ? json_str(e, "message")
                                            : json_str(j, "message");
        pfail(p, "error event: %.200s", msg ? msg : "(no message)");
    }
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "choices");
    if (cJSON_IsArray(ch))
        sse_choices(p, ch, t);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    if (cJSON_IsObject(u)) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
        if (cJSON_IsNumber(ct) && ct->valuedouble >= 0)
            p->completion_tokens = (int64_t)ct->valuedouble;
        if (cJSON_IsNumber(pt) && pt->valuedouble >= 0)
            p->prompt_tokens = (int64_t)pt->valuedouble;
    }
    cJSON_Delete(j);
}

/* One SSE line without its terminator (in p->line). */
static void sse_line(struct bench_parse *p, double t) {
    const char *l = p->line.p ? p->line.p : "";
    size_t n = p->line.len;
    p->line.len = 0;
    if (n == 0) {
        if (p->have_data)
            sse_event(p, t);
        return;
    }
    if (l[0] == ':')
        return; /* comment / keep-alive */
    const char *colon = memchr(l, ':', n);
    size_t name_len = colon ? (size_t)(colon - l) : n;
    if (name_len != 4 || memcmp(l, "data", 4) != 0)
        return; /* event:, id:, retry: carry nothing we measure */
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ')
        v++;
    if (p->data.len > SSE_LINE_MAX) {
        pfail(p, "malformed stream: SSE event longer than %zu bytes", SSE_LINE_MAX);
        p->proto_err = 1;
        return;
    }
    if ((p->have_data && bench_sb_add(&p->data, "\n", 1) < 0) ||
        bench_sb_add(&p->data, v, (size_t)(l + n - v)) < 0) {
        pfail(p, "out of memory");
        p->proto_err = 1;
    }
    p->have_data = 1;
}

static void sse_feed(struct bench_parse *p, const char *buf, size_t n, double t) {
    size_t i = 0;
    while (i < n && !p->proto_err) {
        if (p->prev_cr && buf[i] == '\n') { /* second half of a CRLF split anywhere */
            p->prev_cr = 0;
            i++;
            continue;
        }
        p->prev_cr = 0;
        size_t k = i;
        while (k < n && buf[k] != '\n' && buf[k] != '\r')
            k++;
        if (p->line.len + (k - i) > SSE_LINE_MAX) {
            pfail(p, "malformed stream: SSE line longer than %zu bytes", SSE_LINE_MAX);
            p->proto_err = 1;
            return;
        }
        if (k > i && bench_sb_add(&p->line, buf + i, k - i) < 0) {
            pfail(p, "out of memory");
            p->proto_err = 1;
            return;
        }
        if (k == n)
            return;
        p->prev_cr = buf[k] == '\r';
        sse_line(p, t);
        i = k + 1;
    }
}

static void payload(struct bench_parse *p, const char *buf, size_t n, double t) {
    if (p->status == 200) {
        sse_feed(p, buf, n, t);
    } else if (p->errbody.len < ERRBODY_MAX) {
        size_t k = ERRBODY_MAX - p->errbody.len;
        bench_sb_add(&p->errbody, buf, n < k ? n : k); /* OOM: message just gets shorter */
    }
}

/* Framing ended (or the peer closed): flush and settle the outcome. */
static void body_end(struct bench_parse *p, double t) {
    p->state = P_END;
    if (p->status == 200) {
        if (p->line.len)
            sse_line(p, t); /* lenient: a last line without its newline */
        if (p->have_data)
            sse_event(p, t);
        if (!p->done)
            pfail(p, "stream ended before data: [DONE]");
        return;
    }
    cJSON *j = p->errbody.len ? cJSON_ParseWithLength(p->errbody.p, p->errbody.len) : NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const char *msg = cJSON_IsString(e) ? e->valuestring : json_str(e, "message");
    if (!msg)
        msg = json_str(j, "message");
    if (msg)
        pfail(p, "HTTP %d: %.200s", p->status, msg);
    else
        pfail(p, "HTTP %d: %.120s", p->status, p->errbody.p ? p->errbody.p : "");
    cJSON_Delete(j);
}

static void parse_head(struct bench_parse *p, double t) {
    int maj = 0, min = 0, status = 0;
    const char *h = p->head.p;
    if (sscanf(h, "HTTP/%d.%d %d", &maj, &min, &status) != 3 || status < 100 || status > 999) {
        int l = (int)strcspn(h, "\r\n");
        pfail(p, "malformed HTTP status line: %.*s", l < 60 ? l : 60, h);
        p->proto_err = 1;
        return;
    }
    if (status < 200) { /* 100 Continue and friends: the real answer follows */
        p->head.len = 0;
        return;
    }
    int chunked = 0, have_len = 0, keep_alive = 0;
    int64_t clen = 0;
    for (const char *l = strchr(h, '\n'); l; l = strchr(l, '\n')) {
        l++;
        const char *colon = strchr(l, ':');
        const char *eol = strchr(l, '\n');
        if (!colon || (eol && colon > eol))
            continue;
        size_t nl = (size_t)(colon - l);
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t vl = eol ? (size_t)(eol - v) : strlen(v);
        char val[128];
        snprintf(val, sizeof(val), "%.*s", (int)(vl < 127 ? vl : 127), v);
        if (nl == 14 && strncasecmp(l, "content-length", 14) == 0) {
            char *end;
            clen = strtoll(val, &end, 10);
            have_len = end != val && clen >= 0;
        } else if (nl == 17 && strncasecmp(l, "transfer-encoding", 17) == 0) {
            chunked = strcasestr(val, "chunked") != NULL;
        } else if (nl == 10 && strncasecmp(l, "connection", 10) == 0) {
            p->conn_close |= strcasestr(val, "close") != NULL;
            keep_alive = strcasestr(val, "keep-alive") != NULL;
        }
    }
    if (maj == 1 && min == 0 && !keep_alive)
        p->conn_close = 1;
    p->status = status;
    p->state = P_BODY;
    if (chunked) {
        p->framing = B_CHUNKED;
        p->cstate = C_SIZE;
    } else if (have_len) {
        p->framing = B_LENGTH;
        p->body_left = clen;
    } else {
        p->framing = B_CLOSE;
        p->conn_close = 1;
    }
    if (status == 204 || status == 304 || (p->framing == B_LENGTH && clen == 0))
        body_end(p, t);
}

/* Returns how many bytes of buf belong to the head. */
static size_t head_feed(struct bench_parse *p, const char *buf, size_t n, double t) {
    size_t old = p->head.len;
    if (bench_sb_add(&p->head, buf, n) < 0) {
        pfail(p, "out of memory");
        p->proto_err = 1;
        return n;
    }
    const char *h = p->head.p;
    for (size_t i = old > 2 ? old - 2 : 0; i < p->head.len; i++) {
        if (h[i] != '\n')
            continue;
        size_t j = i + 1;
        if (j < p->head.len && h[j] == '\r')
            j++;
        if (j < p->head.len && h[j] == '\n') {
            size_t end = j + 1; /* head is h[0..end) */
            p->head.len = end;
            p->head.p[end] = '\0';
            parse_head(p, t);
            return end - old;
        }
    }
    if (p->head.len > HEAD_MAX) {
        pfail(p, "malformed response: headers longer than %d bytes", HEAD_MAX);
        p->proto_err = 1;
    }
    return n;
}

static int chunk_size_line(struct bench_parse *p) {
    p->cline[p->cline_len < sizeof(p->cline) ? p->cline_len : sizeof(p->cline) - 1] = '\0';
    char *end;
    errno = 0;
    unsigned long long sz = strtoull(p->cline, &end, 16);
    while (*end == ' ' || *end == '\t' || *end == '\r')
        end++;
    if (end == p->cline || errno || (*end && *end != ';') || p->cline[0] == '-') {
        int l = (int)strcspn(p->cline, "\r");
        pfail(p, "malformed chunked encoding: size line '%.*s'", l < 20 ? l : 20, p->cline);
        p->proto_err = 1;
        return -1;
    }
    p->cline_len = 0;
    p->chunk_left = sz;
    p->cstate = sz ? C_DATA : C_TRAILER;
    p->trailer_len = 0;
    return 0;
}

static size_t chunked_feed(struct bench_parse *p, const char *buf, size_t n, double t) {
    size_t i = 0;
    while (i < n && p->state == P_BODY && !p->proto_err) {
        char c = buf[i];
        switch (p->cstate) {
        case C_SIZE:
            i++;
            if (c == '\n')
                chunk_size_line(p);
            else if (p->cline_len < sizeof(p->cline) - 1)
                p->cline[p->cline_len++] = c;
            else
                p->cline_len = sizeof(p->cline); /* an extension too long to keep: ignored */
            break;
        case C_DATA: {
            size_t k = n - i < p->chunk_left ? n - i : (size_t)p->chunk_left;
            payload(p, buf + i, k, t);
            i += k;
            p->chunk_left -= k;
            if (!p->chunk_left)
                p->cstate = C_DATA_CRLF;
            break;
        }
        case C_DATA_CRLF:
            i++;
            if (c == '\n') {
                p->cstate = C_SIZE;
            } else if (c != '\r') {
                pfail(p, "malformed chunked encoding: no CRLF after chunk data");
                p->proto_err = 1;
            }
            break;
        case C_TRAILER:
            i++;
            if (c == '\n') {
                if (p->trailer_len == 0)
                    body_end(p, t);
                p->trailer_len = 0;
            } else if (c != '\r') {
                p->trailer_len++;
            }
            break;
        }
    }
    return i;
}

int bench_parse_feed(struct bench_parse *p, const char *buf, size_t n, double t) {
    while (n > 0 && p->state != P_END && !p->proto_err) {
        size_t used;
        if (p->state == P_HEAD) {
            used = head_feed(p, buf, n, t);
        } else if (p->framing == B_CHUNKED) {
            used = chunked_feed(p, buf, n, t);
        } else if (p->framing == B_LENGTH) {
            used = (int64_t)n < p->body_left ? n : (size_t)p->body_left;
            payload(p, buf, used, t);
            p->body_left -= (int64_t)used;
            if (p->body_left == 0)
                body_end(p, t);
        } else {
            payload(p, buf, n, t);
            used = n;
        }
        buf += used;
        n -= used;
    }
    if (p->proto_err)
        return -1;
    return p->state == P_END;
}

int bench_parse_eof(struct bench_parse *p, double t) {
    if (p->state == P_END)
        return 1;
    p->conn_close = 1;
    if (p->proto_err)
        return -1;
    if (p->state == P_HEAD) {
        pfail(p, p->head.len ? "connection closed inside the response headers"
                             : "connection closed by the server without a response");
        p->proto_err = 1;
        return -1;
    }
    int complete = p->framing == B_CLOSE || p->done;
    if (!complete)
        pfail(p, "connection closed mid-response (HTTP %d)", p->status);
    body_end(p, t);
    return complete ? 1 : -1;
}

void bench_parse_get(const struct bench_parse *p, struct bench_parse_info *o) {
    o->status = p->state == P_HEAD ? 0 : p->status;
    o->done = p->done;
    o->failed = p->failed || p->proto_err;
    o->reusable = p->state == P_END && !p->conn_close && !p->proto_err && p->framing != B_CLOSE;
    o->error = p->err;
    o->prompt_tokens = p->prompt_tokens;
    o->completion_tokens = p->completion_tokens;
    o->t_done = p->t_done;
    o->t_first_chunk = p->have_first ? p->t_first_chunk : 0;
    o->n_content = p->n_tc;
    o->t_content = p->tc;
}
