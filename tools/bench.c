/* bench.c - `slimserve bench`: a load generator for OpenAI-compatible servers.
 *
 * Layout of this file:
 *   1. small helpers (clock, PRNG)
 *   2. request bodies (synthetic token-id / text prompts, JSON-lines dataset)
 *   3. client threads: one blocking-with-poll() socket per thread, keep-alive
 *   4. statistics, bench_run(), JSON and text reports
 *   5. command line
 * The incremental HTTP/1.1 response + SSE parser (bench_parse_*) and the
 * growable string (bench_sbuf) live in bench_parse.c.
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
#include "tools/bench_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kernels/ss_error.h"

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

/* ================= 2. request bodies ================= */

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
static int synth_prompt(const struct bench_config *c, int idx, struct bench_sbuf *b, int *n_ids) {
    uint64_t s = c->seed * 0x2545F4914F6CDD1Dull + (uint64_t)idx * 0x9E3779B97F4A7C15ull + 1;
    splitmix64(&s);
    if (!c->text_prompts) {
        uint64_t span = (uint64_t)((int64_t)c->max_token_id - c->min_token_id + 1);
        bench_sb_add(b, "[", 1);
        for (int i = 0; i < c->prompt_len; i++)
            bench_sb_printf(b, i ? ",%lld" : "%lld",
                            (long long)c->min_token_id + (long long)(splitmix64(&s) % span));
        *n_ids = c->prompt_len;
        return bench_sb_add(b, "]", 1);
    }
    *n_ids = -1;
    bench_sb_add(b, "\"", 1);
    for (int i = 0, start = 1; i < c->prompt_len; i++) {
        const char *w = WORDS[splitmix64(&s) % N_WORDS];
        if (start)
            bench_sb_printf(b, "%s%c%s", i ? " " : "", w[0] - 'a' + 'A', w + 1);
        else
            bench_sb_printf(b, " %s", w);
        start = splitmix64(&s) % 10 == 0 || i + 1 == c->prompt_len;
        if (start)
            bench_sb_add(b, ".", 1);
    }
    return bench_sb_add(b, "\"", 1);
}

/* The JSON body of request idx (malloc'd), or NULL on OOM. */
static char *build_body(const struct bench_config *c, const struct dataset *d, int idx,
                        int *n_ids) {
    struct bench_sbuf b = {0};
    int max_tokens = c->output_len;
    bench_sb_add(&b, "{", 1);
    if (c->model) {
        cJSON *ms = cJSON_CreateString(c->model);
        char *m = ms ? cJSON_PrintUnformatted(ms) : NULL;
        cJSON_Delete(ms);
        if (!m) {
            free(b.p);
            return NULL;
        }
        bench_sb_printf(&b, "\"model\":%s,", m);
        free(m);
    }
    bench_sb_add(&b, "\"prompt\":", 9);
    if (d->n) {
        const struct ds_item *it = &d->items[idx % d->n];
        bench_sb_add(&b, it->prompt_json, strlen(it->prompt_json));
        *n_ids = it->n_ids;
        if (it->max_tokens > 0)
            max_tokens = it->max_tokens;
    } else {
        synth_prompt(c, idx, &b, n_ids);
    }
    bench_sb_printf(&b, ",\"max_tokens\":%d,\"temperature\":%.17g,\"stream\":true,"
                        "\"stream_options\":{\"include_usage\":true}%s}",
                    max_tokens, c->temperature, c->ignore_eos ? ",\"ignore_eos\":true" : "");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ================= 3. client threads ================= */

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
static int exchange(const struct run *r, int *fdp, int reused, const struct bench_sbuf *req,
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

static int build_request(const struct run *r, const char *body, struct bench_sbuf *req) {
    const struct bench_config *c = r->cfg;
    req->len = 0;
    bench_sb_printf(req,
                    "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: slimserve-bench\r\n"
                    "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                    "Connection: keep-alive\r\nContent-Length: %zu\r\n",
                    c->url_path, r->hosthdr, strlen(body));
    if (c->api_key && c->api_key[0])
        bench_sb_printf(req, "Authorization: Bearer %s\r\n", c->api_key);
    bench_sb_add(req, "\r\n", 2);
    bench_sb_add(req, body, strlen(body));
    return req->oom ? SS_ENOMEM : 0;
}

/* Runs request idx on *fdp (a kept-alive connection or -1). */
static void run_one(struct run *r, int *fdp, int idx) {
    struct rec *rc = &r->recs[idx];
    int n_ids = -1;
    char *body = build_body(r->cfg, r->ds, idx, &n_ids);
    struct bench_sbuf req = {0};
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

/* ================= 4. statistics and reports ================= */

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

/* ================= 5. command line ================= */

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
