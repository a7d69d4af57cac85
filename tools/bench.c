/* bench.c - `slimserve bench`: a load generator for OpenAI-compatible servers.
 *
 * Layout of this file:
 *   1. small helpers (clock, PRNG, growable string)
 *   2. bench_parse: incremental HTTP/1.1 response + SSE parser
 *   3. request bodies (synthetic token-id / text prompts, JSON-lines dataset)
 *   4. client threads: one blocking-with-poll() socket per thread, keep-alive
 *   5. statistics, bench_run(), JSON and text reports
 *   6. command line
 *
 * Timing: every request is timed from just before its bytes are sent (a fresh
 * connection's connect() is not counted) to the arrival of "data: [DONE]".
 * TTFT = first event with non-empty text; ITL = gaps between successive such
 * events (pooled over requests); TPOT = (E2E - TTFT) / (output tokens - 1) for
 * requests with more than one output token; output tokens come from the usage
 * chunk (stream_options.include_usage).
 *
 * NOTE: traffic goes only to the host given, meant to be this machine
 * (127.0.0.1); the run is bounded by --num-requests and --timeout-s.
 */
#include "tools/bench.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/ss_error.h"

/* ================= 1. helpers ================= */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Growable NUL-terminated byte string; p is NULL until the first append. */
struct sbuf {
    char *p;
    size_t len, cap;
    int oom; /* an append failed (the string is then incomplete) */
};

static int sb_add(struct sbuf *b, const void *s, size_t n) {
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

static int sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(struct sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return SS_EINVAL;
    if ((size_t)n < sizeof(tmp))
        return sb_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return SS_ENOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sb_add(b, big, (size_t)n);
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
    struct sbuf head;        /* status line + headers until the blank line */
    int status, conn_close;
    int64_t body_left;       /* B_LENGTH: bytes still expected */
    uint64_t chunk_left;     /* C_DATA: bytes left in the current chunk */
    char cline[40];          /* C_SIZE: start of the chunk-size line */
    size_t cline_len, trailer_len;
    struct sbuf line, data;  /* SSE: current line, data of the current event */
    struct sbuf errbody;     /* non-200 body (first ERRBODY_MAX bytes) */
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
    if ((p->have_data && sb_add(&p->data, "\n", 1) < 0) ||
        sb_add(&p->data, v, (size_t)(l + n - v)) < 0) {
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
        if (k > i && sb_add(&p->line, buf + i, k - i) < 0) {
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
        sb_add(&p->errbody, buf, n < k ? n : k); /* OOM: message just gets shorter */
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
    if (sb_add(&p->head, buf, n) < 0) {
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

/* ================= 3. request bodies ================= */

struct ds_item {
    char *prompt_json; /* serialized "prompt" value: a string or an array of ids */
    int max_tokens;    /* -1: use --output-len */
    int n_ids;         /* prompt length when it is an id array, else -1 */
};

struct dataset {
    struct ds_item *items;
    int n;
};

static void dataset_free(struct dataset *d) {
    for (int i = 0; i < d->n; i++)
        free(d->items[i].prompt_json);
    free(d->items);
    d->items = NULL;
    d->n = 0;
}

static int dataset_line(struct dataset *d, char *line, int lineno, char *err, size_t errcap) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "max_tokens");
    int rc = SS_EINVAL;
    if (!cJSON_IsObject(j) || !(cJSON_IsString(pr) || cJSON_IsArray(pr))) {
        snprintf(err, errcap, "dataset line %d: expected {\"prompt\": string or [ids], ...}", lineno);
    } else if (mt && (!cJSON_IsNumber(mt) || mt->valuedouble < 1 || mt->valuedouble > 1e9)) {
        snprintf(err, errcap, "dataset line %d: max_tokens must be a positive integer", lineno);
    } else {
        struct ds_item it = {cJSON_PrintUnformatted(pr), mt ? (int)mt->valuedouble : -1,
                             cJSON_IsArray(pr) ? cJSON_GetArraySize(pr) : -1};
        struct ds_item *q = it.prompt_json ? realloc(d->items, (size_t)(d->n + 1) * sizeof(*q)) : NULL;
        if (!q) {
            free(it.prompt_json);
            snprintf(err, errcap, "out of memory reading the dataset");
            rc = SS_ENOMEM;
        } else {
            d->items = q;
            d->items[d->n++] = it;
            rc = 0;
        }
    }
    cJSON_Delete(j);
    return rc;
}

static int dataset_load(struct dataset *d, const char *path, char *err, size_t errcap) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "cannot open dataset %s: %s", path, strerror(errno));
        return SS_EIO;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
            s++;
        if (*s)
            rc = dataset_line(d, s, lineno, err, errcap);
    }
    free(line);
    fclose(f);
    if (rc == 0 && d->n == 0) {
        snprintf(err, errcap, "dataset %s holds no prompt", path);
        rc = SS_EINVAL;
    }
    if (rc < 0)
        dataset_free(d);
    return rc;
}

static const char *const WORDS[] = {
    "the", "of", "and", "a", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by",
    "at", "from", "his", "her", "they", "which", "river", "city", "small", "house", "water",
    "light", "morning", "garden", "people", "history", "music", "winter", "summer", "stone",
    "bridge", "market", "teacher", "window", "story", "mountain", "village", "road", "old",
    "new", "quiet", "bright", "walked", "found", "built", "opened", "carried", "remembered",
    "along", "under", "between", "before", "after", "every", "many", "long", "green", "early",
};
#define N_WORDS ((int)(sizeof(WORDS) / sizeof(WORDS[0])))

/* Prompt of request idx: a JSON value appended to b. *n_ids gets its token count
 * when known (id prompts), else -1. */
static int synth_prompt(const struct bench_config *c, int idx, struct sbuf *b, int *n_ids) {
    uint64_t s = c->seed * 0x2545F4914F6CDD1Dull + (uint64_t)idx * 0x9E3779B97F4A7C15ull + 1;
    splitmix64(&s);
    if (!c->text_prompts) {
        uint64_t span = (uint64_t)((int64_t)c->max_token_id - c->min_token_id + 1);
        sb_add(b, "[", 1);
        for (int i = 0; i < c->prompt_len; i++)
            sb_printf(b, i ? ",%lld" : "%lld",
                      (long long)c->min_token_id + (long long)(splitmix64(&s) % span));
        *n_ids = c->prompt_len;
        return sb_add(b, "]", 1);
    }
    *n_ids = -1;
    sb_add(b, "\"", 1);
    for (int i = 0, start = 1; i < c->prompt_len; i++) {
        const char *w = WORDS[splitmix64(&s) % N_WORDS];
        if (start)
            sb_printf(b, "%s%c%s", i ? " " : "", w[0] - 'a' + 'A', w + 1);
        else
            sb_printf(b, " %s", w);
        start = splitmix64(&s) % 10 == 0 || i + 1 == c->prompt_len;
        if (start)
            sb_add(b, ".", 1);
    }
    return sb_add(b, "\"", 1);
}

/* The JSON body of request idx (malloc'd), or NULL on OOM. */
static char *build_body(const struct bench_config *c, const struct dataset *d, int idx,
                        int *n_ids) {
    struct sbuf b = {0};
    int max_tokens = c->output_len;
    sb_add(&b, "{", 1);
    if (c->model) {
        cJSON *ms = cJSON_CreateString(c->model);
        char *m = ms ? cJSON_PrintUnformatted(ms) : NULL;
        cJSON_Delete(ms);
        if (!m) {
            free(b.p);
            return NULL;
        }
        sb_printf(&b, "\"model\":%s,", m);
        free(m);
    }
    sb_add(&b, "\"prompt\":", 9);
    if (d->n) {
        const struct ds_item *it = &d->items[idx % d->n];
        sb_add(&b, it->prompt_json, strlen(it->prompt_json));
        *n_ids = it->n_ids;
        if (it->max_tokens > 0)
            max_tokens = it->max_tokens;
    } else {
        synth_prompt(c, idx, &b, n_ids);
    }
    sb_printf(&b, ",\"max_tokens\":%d,\"temperature\":%.17g,\"stream\":true,"
                  "\"stream_options\":{\"include_usage\":true}%s}",
              max_tokens, c->temperature, c->ignore_eos ? ",\"ignore_eos\":true" : "");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ================= 4. client threads ================= */

struct rec { /* one request's outcome; written only by the thread that ran it */
    int state;         /* REC_* */
    double t_end;      /* when it finished or failed (for "first error") */
    double ttft, e2e;  /* seconds */
    int64_t in_tok, out_tok;
    int usage_missing;
    double *itl;       /* [n_itl] gaps between content events, seconds (malloc'd) */
    int n_itl;
    char err[256];
};
enum { REC_NOT_SENT, REC_OK, REC_FAILED };

struct run {
    const struct bench_config *cfg;
    const struct dataset *ds;
    struct addrinfo *ai;
    char hosthdr[300];
    struct rec *recs;  /* [cfg->num_requests] */
    int next;          /* next request index to claim (atomic) */
    double deadline;
};

static int ms_left(double deadline) {
    double ms = (deadline - now_s()) * 1e3;
    if (ms <= 0)
        return 0;
    return ms > INT_MAX / 2 ? INT_MAX / 2 : (int)ms + 1;
}

/* Waits for ev on fd until deadline: 1 ready, 0 timed out, -errno on error. */
static int wait_fd(int fd, short ev, double deadline) {
    for (;;) {
        int ms = ms_left(deadline);
        if (ms == 0)
            return 0;
        struct pollfd pf = {.fd = fd, .events = ev};
        int n = poll(&pf, 1, ms);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/* A connected non-blocking socket, or -1 with err filled. */
static int conn_open(const struct run *r, char *err, size_t errcap) {
    int last = ECONNREFUSED;
    for (const struct addrinfo *a = r->ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc < 0 && errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, r->deadline);
            socklen_t sl = sizeof(last);
            if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &last, &sl) == 0 && last == 0)
                rc = 0;
            else if (w == 0)
                last = ETIMEDOUT;
            else if (w < 0)
                last = -w;
        } else if (rc < 0) {
            last = errno;
        }
        if (rc == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return fd;
        }
        close(fd);
    }
    snprintf(err, errcap, "connect to %s:%d: %s", r->cfg->host, r->cfg->port, strerror(last));
    return -1;
}

/* 0 sent, -1 peer gone (retryable on a reused connection), -2 timeout. */
static int send_all(int fd, const char *buf, size_t n, double deadline, char *err, size_t errcap) {
    while (n > 0) {
        ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
        if (k > 0) {
            buf += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w == 0) {
                snprintf(err, errcap, "timeout sending the request (--timeout-s)");
                return -2;
            }
            continue; /* error conditions surface on the next send() */
        }
        snprintf(err, errcap, "send: %s", k < 0 ? strerror(errno) : "connection closed");
        return -1;
    }
    return 0;
}

enum { EX_OK, EX_RETRY, EX_FAIL };

/* Sends one request on *fdp and reads the response into p. On EX_FAIL err holds
 * the reason unless p has one. Closes *fdp (sets -1) unless it can be reused. */
static int exchange(const struct run *r, int *fdp, int reused, const struct sbuf *req,
                    struct bench_parse *p, double *t_start, char *err, size_t errcap) {
    char buf[16384];
    int got = 0, res = EX_FAIL;
    *t_start = now_s();
    int s = send_all(*fdp, req->p, req->len, r->deadline, err, errcap);
    if (s == -1 && reused) {
        res = EX_RETRY;
        goto close;
    }
    if (s < 0)
        goto close;
    for (;;) {
        struct bench_parse_info in;
        bench_parse_get(p, &in);
        /* After [DONE], give the framing (last chunk) a moment, then stop waiting. */
        double until = in.done && in.t_done + 1.0 < r->deadline ? in.t_done + 1.0 : r->deadline;
        int w = wait_fd(*fdp, POLLIN, until);
        if (w == 0) {
            if (in.done) {
                res = EX_OK;
                goto close;
            }
            snprintf(err, errcap, "timeout: no complete response within --timeout-s %g s",
                     r->cfg->timeout_s);
            goto close;
        }
        ssize_t n = recv(*fdp, buf, sizeof(buf), 0);
        double t = now_s();
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n <= 0 && reused && !got) { /* a kept-alive connection the server had closed */
            res = EX_RETRY;
            goto close;
        }
        if (n < 0) {
            snprintf(err, errcap, "recv: %s", strerror(errno));
            if (bench_parse_eof(p, t) == 1)
                res = EX_OK;
            goto close;
        }
        if (n == 0) {
            res = bench_parse_eof(p, t) == 1 ? EX_OK : EX_FAIL;
            goto close;
        }
        got = 1;
        int f = bench_parse_feed(p, buf, (size_t)n, t);
        if (f == 1) {
            bench_parse_get(p, &in);
            if (in.reusable)
                return EX_OK;
            res = EX_OK;
            goto close;
        }
        if (f < 0)
            goto close;
    }
close:
    close(*fdp);
    *fdp = -1;
    return res;
}

static void rec_fail(struct rec *rc, const char *msg) {
    rc->state = REC_FAILED;
    rc->t_end = now_s();
    snprintf(rc->err, sizeof(rc->err), "%s", msg && msg[0] ? msg : "unknown error");
}

static void rec_success(struct rec *rc, const struct bench_parse_info *in, double t0, int n_ids) {
    rc->state = REC_OK;
    rc->t_end = in->t_done;
    rc->e2e = in->t_done - t0;
    double tf = in->n_content ? in->t_content[0] : in->t_first_chunk ? in->t_first_chunk : in->t_done;
    rc->ttft = tf - t0;
    rc->out_tok = in->completion_tokens;
    if (rc->out_tok < 0) {
        rc->out_tok = in->n_content;
        rc->usage_missing = 1;
    }
    rc->in_tok = in->prompt_tokens >= 0 ? in->prompt_tokens : n_ids > 0 ? n_ids : 0;
    if (in->n_content > 1) {
        rc->itl = malloc((size_t)(in->n_content - 1) * sizeof(double));
        if (rc->itl) {
            rc->n_itl = in->n_content - 1;
            for (int k = 1; k < in->n_content; k++)
                rc->itl[k - 1] = in->t_content[k] - in->t_content[k - 1];
        }
    }
}

static int build_request(const struct run *r, const char *body, struct sbuf *req) {
    const struct bench_config *c = r->cfg;
    req->len = 0;
    sb_printf(req,
              "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: slimserve-bench\r\n"
              "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
              "Connection: keep-alive\r\nContent-Length: %zu\r\n",
              c->url_path, r->hosthdr, strlen(body));
    if (c->api_key && c->api_key[0])
        sb_printf(req, "Authorization: Bearer %s\r\n", c->api_key);
    sb_add(req, "\r\n", 2);
    sb_add(req, body, strlen(body));
    return req->oom ? SS_ENOMEM : 0;
}

/* Runs request idx on *fdp (a kept-alive connection or -1). */
static void run_one(struct run *r, int *fdp, int idx) {
    struct rec *rc = &r->recs[idx];
    int n_ids = -1;
    char *body = build_body(r->cfg, r->ds, idx, &n_ids);
    struct sbuf req = {0};
    if (!body || build_request(r, body, &req) < 0) {
        rec_fail(rc, "out of memory building the request");
        free(body);
        free(req.p);
        return;
    }
    free(body);
    char err[256] = "";
    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = *fdp >= 0 && attempt == 0;
        if (*fdp < 0 && (*fdp = conn_open(r, err, sizeof(err))) < 0) {
            rec_fail(rc, err);
            break;
        }
        struct bench_parse *p = bench_parse_new();
        if (!p) {
            rec_fail(rc, "out of memory");
            break;
        }
        double t0;
        err[0] = '\0';
        int ex = exchange(r, fdp, reused, &req, p, &t0, err, sizeof(err));
        struct bench_parse_info in;
        bench_parse_get(p, &in);
        if (ex == EX_OK && in.status == 200 && in.done && !in.failed)
            rec_success(rc, &in, t0, n_ids);
        else if (ex != EX_RETRY)
            rec_fail(rc, in.error[0] ? in.error : err);
        bench_parse_free(p);
        if (ex != EX_RETRY)
            break;
    }
    if (rc->state == REC_NOT_SENT)
        rec_fail(rc, err[0] ? err : "connection lost");
    free(req.p);
}

static void *worker(void *arg) {
    struct run *r = arg;
    int fd = -1;
    for (;;) {
        int idx = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (idx >= r->cfg->num_requests || now_s() >= r->deadline)
            break; /* requests never claimed stay REC_NOT_SENT */
        run_one(r, &fd, idx);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

/* ================= 5. statistics and reports ================= */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between closest ranks (numpy's default percentile). */
static double percentile(const double *sorted, int n, double q) {
    double pos = q / 100.0 * (n - 1);
    int lo = (int)floor(pos);
    int hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/* Summarises v[0..n) given in seconds; sorts v. */
static struct bench_metric summarize(double *v, int n) {
    struct bench_metric m = {0};
    if (n <= 0 || !v)
        return m;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    m.n = n;
    m.mean = sum / n * 1e3;
    m.median = percentile(v, n, 50) * 1e3;
    m.p99 = percentile(v, n, 99) * 1e3;
    return m;
}

static int aggregate(const struct run *run, struct bench_result *r) {
    const struct bench_config *c = run->cfg;
    int n = c->num_requests;
    size_t n_itl = 0;
    for (int i = 0; i < n; i++)
        n_itl += (size_t)run->recs[i].n_itl;
    double *ttft = malloc((size_t)n * sizeof(double) + 1), *tpot = malloc((size_t)n * sizeof(double) + 1);
    double *e2e = malloc((size_t)n * sizeof(double) + 1), *itl = malloc(n_itl * sizeof(double) + 1);
    if (!ttft || !tpot || !e2e || !itl) {
        free(ttft), free(tpot), free(e2e), free(itl);
        return SS_ENOMEM;
    }
    int n_ok = 0, n_tpot = 0;
    double t_err = INFINITY;
    n_itl = 0;
    for (int i = 0; i < n; i++) {
        const struct rec *rc = &run->recs[i];
        if (rc->state != REC_OK) {
            r->failed++;
            if (rc->state == REC_FAILED && rc->t_end < t_err) {
                t_err = rc->t_end;
                snprintf(r->first_error, sizeof(r->first_error), "%s", rc->err);
            }
            continue;
        }
        r->completed++;
        r->usage_missing += rc->usage_missing;
        r->total_input_tokens += rc->in_tok;
        r->total_output_tokens += rc->out_tok;
        ttft[n_ok] = rc->ttft;
        e2e[n_ok++] = rc->e2e;
        if (rc->out_tok > 1)
            tpot[n_tpot++] = (rc->e2e - rc->ttft) / (double)(rc->out_tok - 1);
        if (rc->n_itl)
            memcpy(itl + n_itl, rc->itl, (size_t)rc->n_itl * sizeof(double));
        n_itl += (size_t)rc->n_itl;
    }
    if (r->failed && !r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error),
                 "not sent: --timeout-s %g s reached first", c->timeout_s);
    r->ttft = summarize(ttft, n_ok);
    r->e2e = summarize(e2e, n_ok);
    r->tpot = summarize(tpot, n_tpot);
    r->itl = summarize(itl, n_itl > INT_MAX ? INT_MAX : (int)n_itl);
    free(ttft), free(tpot), free(e2e), free(itl);
    return 0;
}

void bench_config_default(struct bench_config *c) {
    memset(c, 0, sizeof(*c));
    c->host = "127.0.0.1";
    c->port = 8080;
    c->url_path = "/v1/completions";
    c->concurrency = 4;
    c->num_requests = 32;
    c->prompt_len = 32;
    c->output_len = 32;
    c->min_token_id = 10;
    c->max_token_id = 250;
    c->seed = 0;
    c->timeout_s = 600;
    c->ignore_eos = 1;
}

static int check_config(const struct bench_config *c, char *err, size_t cap) {
    if (!c->host || !c->host[0] || c->port < 1 || c->port > 65535)
        snprintf(err, cap, "need a host and a port in 1..65535");
    else if (!c->url_path || c->url_path[0] != '/' || strpbrk(c->url_path, " \r\n"))
        snprintf(err, cap, "--url-path must start with '/' and hold no spaces");
    else if (c->concurrency < 1 || c->concurrency > 1024)
        snprintf(err, cap, "--concurrency must be in 1..1024");
    else if (c->num_requests < 1)
        snprintf(err, cap, "--num-requests must be at least 1");
    else if (!c->dataset && (c->prompt_len < 1 || c->output_len < 1))
        snprintf(err, cap, "--prompt-len and --output-len must be at least 1");
    else if (c->min_token_id < 0 || c->max_token_id < c->min_token_id)
        snprintf(err, cap, "need 0 <= --min-token-id <= --max-token-id");
    else if (!(c->timeout_s > 0) || c->timeout_s > 1e7)
        snprintf(err, cap, "--timeout-s must be positive");
    else if (!(c->temperature >= 0) || c->temperature > 100)
        snprintf(err, cap, "--temperature must be >= 0");
    else if ((c->model && strpbrk(c->model, "\r\n")) || (c->api_key && strpbrk(c->api_key, "\r\n")))
        snprintf(err, cap, "--model and --api-key may not hold line breaks");
    else
        return 0;
    return SS_EINVAL;
}

static int resolve(struct run *run, char *err, size_t cap) {
    const struct bench_config *c = run->cfg;
    char port[16];
    snprintf(port, sizeof(port), "%d", c->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int g = getaddrinfo(c->host, port, &hints, &run->ai);
    if (g != 0) {
        snprintf(err, cap, "cannot resolve %s: %s", c->host, gai_strerror(g));
        return SS_EINVAL;
    }
    snprintf(run->hosthdr, sizeof(run->hosthdr), strchr(c->host, ':') ? "[%.256s]:%d" : "%.256s:%d",
             c->host, c->port);
    return 0;
}

/* Starts the client threads and waits for them. */
static int run_threads(struct run *run, char *err, size_t cap) {
    const struct bench_config *c = run->cfg;
    int nt = c->concurrency < c->num_requests ? c->concurrency : c->num_requests;
    pthread_t *th = calloc((size_t)nt, sizeof(*th));
    if (!th) {
        snprintf(err, cap, "out of memory");
        return SS_ENOMEM;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int started = 0;
    for (int i = 0; i < nt; i++) {
        if (pthread_create(&th[i], &attr, worker, run) != 0)
            break;
        started++;
    }
    pthread_attr_destroy(&attr);
    if (started == 0)
        worker(run); /* could not start any thread: run on this one */
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    return 0;
}

int bench_run(const struct bench_config *cfg, struct bench_result *r) {
    memset(r, 0, sizeof(*r));
    r->num_requests = cfg->num_requests;
    struct dataset ds = {0};
    struct run run = {.cfg = cfg, .ds = &ds};
    int rc = check_config(cfg, r->first_error, sizeof(r->first_error));
    if (rc == 0 && cfg->dataset)
        rc = dataset_load(&ds, cfg->dataset, r->first_error, sizeof(r->first_error));
    if (rc == 0)
        rc = resolve(&run, r->first_error, sizeof(r->first_error));
    if (rc == 0 && !(run.recs = calloc((size_t)cfg->num_requests, sizeof(*run.recs)))) {
        snprintf(r->first_error, sizeof(r->first_error), "out of memory");
        rc = SS_ENOMEM;
    }
    if (rc == 0) {
        double t0 = now_s();
        run.deadline = t0 + cfg->timeout_s;
        rc = run_threads(&run, r->first_error, sizeof(r->first_error));
        r->duration_s = now_s() - t0;
    }
    if (rc == 0 && (rc = aggregate(&run, r)) < 0)
        snprintf(r->first_error, sizeof(r->first_error), "out of memory");
    if (rc == 0 && r->duration_s > 0) {
        r->request_throughput = r->completed / r->duration_s;
        r->output_throughput = (double)r->total_output_tokens / r->duration_s;
        r->total_token_throughput =
            (double)(r->total_input_tokens + r->total_output_tokens) / r->duration_s;
    }
    if (run.recs)
        for (int i = 0; i < cfg->num_requests; i++)
            free(run.recs[i].itl);
    free(run.recs);
    if (run.ai)
        freeaddrinfo(run.ai);
    dataset_free(&ds);
    return rc;
}

static void json_metric(cJSON *o, const char *name, const struct bench_metric *m) {
    static const char *const stat[] = {"mean", "median", "p99"};
    const double v[] = {m->mean, m->median, m->p99};
    char key[48];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "%s_%s_ms", stat[i], name);
        cJSON_AddItemToObject(o, key, m->n ? cJSON_CreateNumber(v[i]) : cJSON_CreateNull());
    }
}

char *bench_result_json(const struct bench_config *c, const struct bench_result *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "host", c->host);
    cJSON_AddNumberToObject(o, "port", c->port);
    cJSON_AddStringToObject(o, "url_path", c->url_path);
    cJSON_AddNumberToObject(o, "concurrency", c->concurrency);
    cJSON_AddNumberToObject(o, "num_requests", r->num_requests);
    if (c->dataset)
        cJSON_AddStringToObject(o, "dataset", c->dataset);
    else
        cJSON_AddNumberToObject(o, "prompt_len", c->prompt_len);
    cJSON_AddNumberToObject(o, "output_len", c->output_len);
    cJSON_AddNumberToObject(o, "completed", r->completed);
    cJSON_AddNumberToObject(o, "failed", r->failed);
    cJSON_AddNumberToObject(o, "usage_missing", r->usage_missing);
    cJSON_AddNumberToObject(o, "duration", r->duration_s);
    cJSON_AddNumberToObject(o, "total_input_tokens", (double)r->total_input_tokens);
    cJSON_AddNumberToObject(o, "total_output_tokens", (double)r->total_output_tokens);
    cJSON_AddNumberToObject(o, "request_throughput", r->request_throughput);
    cJSON_AddNumberToObject(o, "output_throughput", r->output_throughput);
    cJSON_AddNumberToObject(o, "total_token_throughput", r->total_token_throughput);
    json_metric(o, "ttft", &r->ttft);
    json_metric(o, "tpot", &r->tpot);
    json_metric(o, "itl", &r->itl);
    json_metric(o, "e2el", &r->e2e);
    cJSON_AddItemToObject(o, "first_error",
                          r->first_error[0] ? cJSON_CreateString(r->first_error) : cJSON_CreateNull());
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void print_metric(FILE *f, const char *title, const char *abbr, const struct bench_metric *m) {
    fprintf(f, "%s\n", title);
    if (!m->n) {
        fprintf(f, "%-40s %s\n", "(no sample)", "-");
        return;
    }
    char k[64];
    snprintf(k, sizeof(k), "Mean %s (ms):", abbr);
    fprintf(f, "%-40s %.2f\n", k, m->mean);
    snprintf(k, sizeof(k), "Median %s (ms):", abbr);
    fprintf(f, "%-40s %.2f\n", k, m->median);
    snprintf(k, sizeof(k), "P99 %s (ms):", abbr);
    fprintf(f, "%-40s %.2f\n", k, m->p99);
}

static void print_text(FILE *f, const struct bench_config *c, const struct bench_result *r) {
    fprintf(f, "============ Serving Benchmark Result ============\n");
    fprintf(f, "%-40s %s:%d%s\n", "Target:", c->host, c->port, c->url_path);
    fprintf(f, "%-40s %d\n", "Concurrency:", c->concurrency);
    fprintf(f, "%-40s %d\n", "Successful requests:", r->completed);
    fprintf(f, "%-40s %d\n", "Failed requests:", r->failed);
    if (r->first_error[0])
        fprintf(f, "%-40s %s\n", "First error:", r->first_error);
    if (r->usage_missing)
        fprintf(f, "%-40s %d (tokens counted as chunks)\n", "Requests without usage:",
                r->usage_missing);
    fprintf(f, "%-40s %.2f\n", "Benchmark duration (s):", r->duration_s);
    fprintf(f, "%-40s %lld\n", "Total input tokens:", (long long)r->total_input_tokens);
    fprintf(f, "%-40s %lld\n", "Total generated tokens:", (long long)r->total_output_tokens);
    fprintf(f, "%-40s %.2f\n", "Request throughput (req/s):", r->request_throughput);
    fprintf(f, "%-40s %.2f\n", "Output token throughput (tok/s):", r->output_throughput);
    fprintf(f, "%-40s %.2f\n", "Total token throughput (tok/s):", r->total_token_throughput);
    print_metric(f, "---------------Time to First Token----------------", "TTFT", &r->ttft);
    print_metric(f, "-----Time per Output Token (excl. 1st token)------", "TPOT", &r->tpot);
    print_metric(f, "---------------Inter-token Latency----------------", "ITL", &r->itl);
    print_metric(f, "----------------End-to-end Latency----------------", "E2EL", &r->e2e);
    fprintf(f, "==================================================\n");
}

/* ================= 6. command line ================= */

static void usage(FILE *f) {
    fprintf(f,
        "usage: slimserve bench [options]\n"
        "Load generator for an OpenAI-compatible server: streamed POST /v1/completions from\n"
        "--concurrency clients until --num-requests are done; reports TTFT, TPOT, ITL, E2E\n"
        "latency and throughput. Meant for a server on this machine (127.0.0.1): traffic goes\n"
        "only to --host, and the run stops by itself after --timeout-s.\n"
        "\n"
        "  --host H             server address (default 127.0.0.1)\n"
        "  --port N             (default 8080)\n"
        "  --url-path P         (default /v1/completions)\n"
        "  --model NAME         sent as \"model\" (default: omitted)\n"
        "  --api-key KEY        sent as Authorization: Bearer KEY\n"
        "  --concurrency N      concurrent clients, 1..1024 (default 4)\n"
        "  --num-requests M     total requests (default 32)\n"
        "  --prompt-len P       synthetic prompt length in tokens (default 32)\n"
        "  --output-len O       max_tokens (default 32)\n"
        "  --min-token-id A     synthetic token ids are uniform in [A, B] (default 10)\n"
        "  --max-token-id B     (default 250)\n"
        "  --text-prompts       English-like prompts of about P words instead of token ids\n"
        "  --dataset FILE       JSON lines {\"prompt\": \"...\", \"max_tokens\": N}, used in turn;\n"
        "                       overrides the prompt flags (and --output-len where max_tokens is given)\n"
        "  --seed S             prompt seed (default 0)\n"
        "  --temperature T      (default 0)\n"
        "  --ignore-eos         send \"ignore_eos\": true (default)\n"
        "  --no-ignore-eos      omit ignore_eos\n"
        "  --timeout-s T        bound on the whole run in seconds (default 600)\n"
        "  --json               print one JSON object instead of the text report\n"
        "Exit status: 0 all requests succeeded, 1 some failed, 2 usage or setup error.\n");
}

/* Value of option `name` at argv[*i] ("--name V" or "--name=V"), advancing *i;
 * NULL if argv[*i] is another option; *missing set when the value is absent. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

struct int_opt {
    const char *name;
    size_t off;
    long lo, hi;
};
#define IOPT(n, field, lo, hi) {n, offsetof(struct bench_config, field), lo, hi}
static const struct int_opt INT_OPTS[] = {
    IOPT("--port", port, 1, 65535),
    IOPT("--concurrency", concurrency, 1, 1024),
    IOPT("--num-requests", num_requests, 1, 100000000),
    IOPT("--prompt-len", prompt_len, 1, 10000000),
    IOPT("--output-len", output_len, 1, 10000000),
    IOPT("--min-token-id", min_token_id, 0, INT_MAX),
    IOPT("--max-token-id", max_token_id, 0, INT_MAX),
};

/* Parses argv into c and *json. Returns 0, 1 for --help, -1 on error (printed). */
static int parse_args(int argc, char **argv, struct bench_config *c, int *json) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int missing = 0, bad = 0, hit = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!strcmp(a, "--json") || !strcmp(a, "--text-prompts") || !strcmp(a, "--ignore-eos") ||
            !strcmp(a, "--no-ignore-eos")) {
            *json |= !strcmp(a, "--json");
            c->text_prompts |= !strcmp(a, "--text-prompts");
            if (!strcmp(a, "--ignore-eos") || !strcmp(a, "--no-ignore-eos"))
                c->ignore_eos = !strcmp(a, "--ignore-eos");
            continue;
        }
        for (size_t k = 0; k < sizeof(INT_OPTS) / sizeof(INT_OPTS[0]) && !hit; k++) {
            if ((v = opt_value(argc, argv, &i, INT_OPTS[k].name, &missing))) {
                hit = 1;
                bad = parse_int(v, INT_OPTS[k].lo, INT_OPTS[k].hi,
                                (int *)((char *)c + INT_OPTS[k].off)) < 0;
            }
        }
        if (hit || missing) {
        } else if ((v = opt_value(argc, argv, &i, "--host", &missing))) {
            c->host = v;
        } else if ((v = opt_value(argc, argv, &i, "--url-path", &missing))) {
            c->url_path = v;
        } else if ((v = opt_value(argc, argv, &i, "--model", &missing))) {
            c->model = v;
        } else if ((v = opt_value(argc, argv, &i, "--api-key", &missing))) {
            c->api_key = v;
        } else if ((v = opt_value(argc, argv, &i, "--dataset", &missing))) {
            c->dataset = v;
        } else if ((v = opt_value(argc, argv, &i, "--seed", &missing))) {
            char *end;
            errno = 0;
            c->seed = strtoull(v, &end, 0);
            bad = end == v || *end || errno;
        } else if ((v = opt_value(argc, argv, &i, "--timeout-s", &missing))) {
            bad = parse_double(v, &c->timeout_s) < 0 || c->timeout_s <= 0;
        } else if ((v = opt_value(argc, argv, &i, "--temperature", &missing))) {
            bad = parse_double(v, &c->temperature) < 0 || c->temperature < 0;
        } else if (!missing) {
            fprintf(stderr, "bench: unknown option '%s' (see --help)\n", a);
            return -1;
        }
        if (missing || bad) {
            fprintf(stderr, "bench: %s for %s (see --help)\n", missing ? "missing value" : "bad value", a);
            return -1;
        }
    }
    return 0;
}

int tool_bench_main(int argc, char **argv) {
    struct bench_config c;
    struct bench_result r;
    int json = 0;
    bench_config_default(&c);
    int a = parse_args(argc, argv, &c, &json);
    if (a > 0)
        usage(stdout);
    if (a != 0)
        return a > 0 ? 0 : 2;
    int rc = bench_run(&c, &r);
    if (rc < 0) {
        fprintf(stderr, "bench: %s\n", r.first_error[0] ? r.first_error : ss_strerror(rc));
        return 2;
    }
    if (json) {
        char *s = bench_result_json(&c, &r);
        if (!s) {
            fprintf(stderr, "bench: out of memory\n");
            return 2;
        }
        printf("%s\n", s);
        free(s);
    } else {
        print_text(stdout, &c, &r);
    }
    fflush(stdout);
    return r.failed ? 1 : 0;
}
