/* ops.c - what an operator sets around the HTTP API (issue 13):
 *   - API keys: --api-key and --api-key-file (one key per line), any one opens the /v1/ routes;
 *   - CORS: --cors-allow-origins ("*" or a comma-separated list of origins):
 *     Access-Control-* headers on responses, OPTIONS preflights answered 204;
 *   - request ids: an incoming X-Request-Id (when well-formed) or a generated
 *     one, echoed in the response's X-Request-Id and written in every log line
 *     of that request;
 *   - the log line format: --log-format text (default) or json (one object per line);
 *   - SSE keep-alive comments: a stream that has sent nothing for
 *     --sse-keepalive seconds (a long prefill) gets ": keep-alive" so proxies
 *     and clients do not time it out.
 * Threads: srv_ops_setup / srv_ops_free run on the main thread before / after
 * srv_run; srv_log_req on any thread; the rest on the loop thread.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "server/http_internal.h"

int srv_log_json = 0;

/* ------------------------------------------------------------ logging */

/* s as a JSON string body (no quotes) into out[cap]; truncates whole escapes. */
static void json_escape(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = '\0';
}

void srv_log_v(int level, const char *rid, const char *fmt, va_list ap) {
    if (level > srv_log_level)
        return;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *lv = names[level < 0 ? 0 : level > 3 ? 3 : level];
    char msg[1024], stamp[40], line[2600];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (srv_log_json) {
        gmtime_r(&ts.tv_sec, &tm);
        size_t n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ", ts.tv_nsec / 1000000L);
        char emsg[2200], erid[160];
        json_escape(emsg, sizeof(emsg), msg);
        json_escape(erid, sizeof(erid), rid ? rid : "");
        snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\"%s%s%s,\"msg\":\"%s\"}",
                 stamp, lv, rid ? ",\"request_id\":\"" : "", rid ? erid : "", rid ? "\"" : "", emsg);
    } else {
        localtime_r(&ts.tv_sec, &tm);
        size_t n = strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(stamp + n, sizeof(stamp) - n, ".%03ld", ts.tv_nsec / 1000000L);
        snprintf(line, sizeof(line), "%s %-5s %s%s%s%s", stamp, lv, rid ? "[" : "", rid ? rid : "",
                 rid ? "] " : "", msg);
    }
    fprintf(stderr, "%s\n", line); /* one call: lines from different threads do not interleave */
}

void srv_log_req(int level, const char *rid, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    srv_log_v(level, rid && rid[0] ? rid : NULL, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ setup */

/* Every key gathered, also those of a setup that failed half-way, is freed
 * at exit: the config pointing to them lives on main's stack, and main has
 * many ways out. keys_copy mirrors that config's key list. */
static int keys_atexit;
static struct srv_config keys_copy;

static void free_keys_at_exit(void) {
    srv_ops_free(&keys_copy);
}

/* Appends a copy of key[0..n) to cfg's key list. 0 or -1 (OOM). */
static int add_key(struct srv_config *cfg, const char *key, size_t n) {
    if (!keys_atexit && atexit(free_keys_at_exit) == 0)
        keys_atexit = 1;
    char **k = realloc(cfg->api_keys, sizeof(*k) * (size_t)(cfg->n_api_keys + 1));
    if (!k)
        return -1;
    cfg->api_keys = keys_copy.api_keys = k;
    if (!(k[cfg->n_api_keys] = strndup(key, n)))
        return -1;
    keys_copy.n_api_keys = ++cfg->n_api_keys;
    return 0;
}

/* One key per line; blank lines and lines starting with '#' are skipped,
 * surrounding whitespace is not part of a key. */
static int load_key_file(struct srv_config *cfg, const char *path, char *err, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "--api-key-file: cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int lineno = 0, before = cfg->n_api_keys, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            snprintf(err, cap, "--api-key-file: %s:%d: line longer than %zu bytes", path, lineno,
                     sizeof(line) - 2);
            rc = -1;
            break;
        }
        char *a = line, *b = line + len;
        while (*a == ' ' || *a == '\t') a++;
        while (b > a && (b[-1] == '\n' || b[-1] == '\r' || b[-1] == ' ' || b[-1] == '\t')) b--;
        if (b == a || *a == '#')
            continue;
        if (add_key(cfg, a, (size_t)(b - a)) != 0) {
            snprintf(err, cap, "out of memory");
            rc = -1;
        }
    }
    fclose(f);
    if (rc == 0 && cfg->n_api_keys == before) {
        snprintf(err, cap, "--api-key-file: '%s' holds no key", path);
        rc = -1;
    }
    return rc;
}

int srv_ops_setup(struct srv_config *cfg, char *err, size_t cap) {
    const char *lf = cfg->log_format ? cfg->log_format : "text";
    if (!strcmp(lf, "json"))
        srv_log_json = 1;
    else if (strcmp(lf, "text") != 0) {
        snprintf(err, cap, "--log-format must be text or json, got '%.40s'", lf);
        return -1;
    }
    if (cfg->api_key && cfg->api_key[0] && add_key(cfg, cfg->api_key, strlen(cfg->api_key)) != 0) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    if (cfg->api_key_file && cfg->api_key_file[0] &&
        load_key_file(cfg, cfg->api_key_file, err, cap) != 0)
        return -1;
    const char *o = cfg->cors_origins;
    if (o && o[0] && strcmp(o, "*") != 0) {
        for (const char *p = o; *p; p++)
            if (*p == ' ' || *p == '\t' || *p == '*') {
                snprintf(err, cap, "--cors-allow-origins: '*' alone, or origins separated by "
                                   "commas without spaces (https://a.example,http://b.example)");
                return -1;
            }
    }
    return 0;
}

void srv_ops_free(struct srv_config *cfg) {
    for (int i = 0; i < cfg->n_api_keys; i++) {
        /* keys are secrets: clear them before the memory goes back */
        volatile char *k = cfg->api_keys[i];
        for (size_t j = 0; k[j]; j++) k[j] = 0;
        free(cfg->api_keys[i]);
    }
    free(cfg->api_keys);
    cfg->api_keys = NULL;
    cfg->n_api_keys = 0;
}

/* ------------------------------------------------------------ per request */

int srv_auth_ok(const struct srv_config *cfg, const char *authorization) {
    int ok = 0;
    for (int i = 0; i < cfg->n_api_keys; i++) /* every key compared: no early exit */
        ok |= api_auth_ok(authorization, cfg->api_keys[i]);
    return ok;
}

void srv_request_id(const char *incoming, char *out, size_t cap) {
    size_t n = incoming ? strlen(incoming) : 0;
    int ok = n > 0 && n < cap && n <= SRV_RID_MAX_IN;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = incoming[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             strchr("-_.:@/+=", ch) != NULL;
    }
    if (ok) {
        memcpy(out, incoming, n + 1);
        return;
    }
    /* 128 random-looking bits: splitmix64 over a per-process seed and a counter */
    static uint64_t seed, counter;
    if (!seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
        seed |= 1;
    }
    uint64_t h[2];
    for (int k = 0; k < 2; k++) {
        uint64_t z = seed + 0x9e3779b97f4a7c15ull * ++counter;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        h[k] = z ^ (z >> 31);
    }
    snprintf(out, cap, "%016llx%016llx", (unsigned long long)h[0], (unsigned long long)h[1]);
}

/* The origin to echo in Access-Control-Allow-Origin, or NULL when CORS is off
 * or the request's Origin is not allowed. */
static const char *cors_origin(const struct srv_config *cfg, const char *origin) {
    const char *list = cfg->cors_origins;
    if (!list || !list[0] || !origin || !origin[0])
        return NULL;
    if (!strcmp(list, "*"))
        return "*";
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncasecmp(p, origin, n))
            return origin;
        p += len + (e ? 1 : 0);
    }
    return NULL;
}

void srv_ops_headers(struct srv_conn *c, struct MHD_Response *resp) {
    if (c->rid[0])
        MHD_add_response_header(resp, "X-Request-Id", c->rid);
    const char *origin =
        c->mc ? MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, "Origin") : NULL;
    const char *allow = cors_origin(c->srv->cfg, origin);
    if (!allow)
        return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", allow);
    if (strcmp(allow, "*") != 0)
        MHD_add_response_header(resp, "Vary", "Origin");
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
}

int srv_cors_preflight(struct srv_conn *c, const char *method) {
    if (strcmp(method, "OPTIONS") != 0 || !c->mc)
        return 0;
    const char *origin = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, "Origin");
    const char *want = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND,
                                                   "Access-Control-Request-Method");
    if (!want || !cors_origin(c->srv->cfg, origin))
        return 0; /* not a preflight this server allows: the normal 405 */
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return -1;
    srv_ops_headers(c, resp);
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                            "Authorization, Content-Type, X-Request-Id, X-Session-ID");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    int ok = MHD_queue_response(c->mc, MHD_HTTP_NO_CONTENT, resp) == MHD_YES;
    MHD_destroy_response(resp);
    c->status = 204;
    conn_set_state(c, CS_RESPONDED);
    return ok ? 1 : -1;
}

/* ------------------------------------------------------------ SSE keep-alive */

static void on_keepalive(uv_timer_t *t) {
    struct srv *s = t->data;
    uint64_t now = uv_now(&s->loop);
    uint64_t quiet = (uint64_t)(s->cfg->sse_keepalive_s * 1000.0);
    int resumed = 0;
    for (struct srv_conn *c = s->inflight; c; c = c->next) {
        if (!c->stream || c->state != CS_STREAM || c->finished || c->out.len > c->out_off ||
            now - c->t_sent < quiet)
            continue;
        api_buf_puts(&c->out, ": keep-alive\n\n");
        c->t_sent = now;
        if (c->suspended) {
            conn_resume(c);
            resumed = 1;
        }
    }
    if (resumed)
        srv_mhd_run(s);
}

void srv_keepalive_init(struct srv *s) {
    uv_timer_init(&s->loop, &s->keepalive_timer);
    s->keepalive_timer.data = s;
    if (s->cfg->sse_keepalive_s > 0) {
        /* checked at a quarter of the period: a comment goes out 1-1.25 periods after the last bytes */
        uint64_t ms = (uint64_t)(s->cfg->sse_keepalive_s * 250.0);
        uv_timer_start(&s->keepalive_timer, on_keepalive, ms ? ms : 1, ms ? ms : 1);
    }
}
