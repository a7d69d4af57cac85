/* tool_parse.c - the model's text as tool calls (conventions: api.h, "the
 * model's output as tool calls"), for whole responses and for streams.
 *
 * Pure functions; one thread at a time per api_tool_stream.
 *
 * States of a stream:
 *
 *   SCAN --marker / bare start--> FIRST --call--> CALLS --end of calls--> DONE
 *     |                             |               | bad / no parallel
 *     | finish: flush held text     | bad, or       v
 *     v                             | unfinished    DONE (the rest is dropped)
 *   (content)                       v at finish
 *                                 PLAIN (the held text is content after all)
 *
 * SCAN emits content up to the last byte that cannot start a marker; FIRST
 * and CALLS hold everything. Parsing restarts at `resume` (just after the
 * last complete call), so each byte of a finished call is scanned once more
 * per piece fed at most while its object is open.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "kernels/ss_error.h"

enum { M_SCAN = 0, M_FIRST, M_CALLS, M_PLAIN, M_DONE };
enum { P_CALL = 0, P_PARTIAL, P_BAD, P_END };

struct syntax {
    const char *marker; /* opens a call (or the list of calls) anywhere in the text */
    char bare;          /* a call may also start the answer with this byte (0: no) */
    const char *close;  /* optional closing tag after each call */
    int list;           /* calls inside one JSON array: "[" call ("," call)* "]" */
};

static struct syntax syntax_of(int family) {
    switch (family) {
    case API_TMPL_LLAMA3: return (struct syntax){"<|python_tag|>", '{', NULL, 0};
    case API_TMPL_MISTRAL: return (struct syntax){"[TOOL_CALLS]", '[', NULL, 1};
    default: return (struct syntax){"<tool_call>", 0, "</tool_call>", 0};
    }
}

void api_tool_call_id(char *out, size_t cap) {
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)(uintptr_t)out << 3) ^
                 (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 0x9E3779B97F4A7C15ull);
    size_t n = 0;
    const char *pre = "call_";
    while (*pre && n + 1 < cap)
        out[n++] = *pre++;
    for (int i = 0; i < 24 && n + 1 < cap; i++) {
        if (i % 8 == 0) { /* splitmix64 step: 8 characters per 64 bits */
            z += 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
        }
        out[n++] = al[(z >> (8 * (i % 8))) % 62];
    }
    if (cap)
        out[n] = '\0';
}

void api_tool_stream_init(struct api_tool_stream *s, const struct api_tools *tools) {
    memset(s, 0, sizeof(*s));
    s->tools = tools;
    api_buf_init(&s->acc);
}

void api_tool_stream_free(struct api_tool_stream *s) {
    if (!s)
        return;
    for (int i = 0; i < s->n_calls; i++) {
        free(s->calls[i].name);
        free(s->calls[i].args);
    }
    free(s->calls);
    api_buf_free(&s->acc);
    memset(s, 0, sizeof(*s));
}

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_blank(const char *t, size_t n, size_t p) {
    while (p < n && is_blank(t[p]))
        p++;
    return p;
}

/* 1: lit starts at t[p]; 0: t[p..n) is a proper prefix of lit; -1: neither. */
static int lit_at(const char *t, size_t n, size_t p, const char *lit) {
    size_t l = strlen(lit), have = n - p;
    if (have >= l)
        return memcmp(t + p, lit, l) == 0 ? 1 : -1;
    return memcmp(t + p, lit, have) == 0 ? 0 : -1;
}

/* The end (one past '}') of the JSON object at t[p], 0 if it is not closed
 * yet, or -1 if t[p] is not '{'. */
static long object_end(const char *t, size_t n, size_t p) {
    if (p >= n || t[p] != '{')
        return -1;
    int depth = 0, str = 0, esc = 0;
    for (size_t i = p; i < n; i++) {
        char c = t[i];
        if (str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                str = 0;
        } else if (c == '"') {
            str = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return (long)(i + 1);
        }
    }
    return 0;
}

static int known_tool(const struct api_tools *t, const char *name) {
    for (int i = 0; t && i < t->n; i++)
        if (strcmp(t->t[i].name, name) == 0)
            return 1;
    return 0;
}

/* t[a..b) holds a JSON object: appends it as a call if it is one. */
static int add_call(struct api_tool_stream *s, const char *t, size_t a, size_t b) {
    cJSON *o = cJSON_ParseWithLength(t + a, b - a);
    const cJSON *name = o ? cJSON_GetObjectItemCaseSensitive(o, "name") : NULL;
    const cJSON *args = o ? cJSON_GetObjectItemCaseSensitive(o, "arguments") : NULL;
    if (!args && o)
        args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    cJSON *parsed = NULL;
    if (cJSON_IsString(args))
        args = parsed = cJSON_Parse(args->valuestring);
    int rc = P_BAD;
    if (cJSON_IsString(name) && known_tool(s->tools, name->valuestring) &&
        (!args || cJSON_IsObject(args))) {
        if (s->n_calls == s->cap_calls) {
            int cap = s->cap_calls ? s->cap_calls * 2 : 4;
            struct api_tool_call *nc = realloc(s->calls, sizeof(*nc) * (size_t)cap);
            if (!nc)
                goto oom;
            s->calls = nc;
            s->cap_calls = cap;
        }
        struct api_tool_call *c = &s->calls[s->n_calls];
        c->name = strdup(name->valuestring);
        c->args = args ? cJSON_PrintUnformatted(args) : strdup("{}");
        if (!c->name || !c->args) {
            free(c->name);
            free(c->args);
            goto oom;
        }
        api_tool_call_id(c->id, sizeof(c->id));
        s->n_calls++;
        rc = P_CALL;
    }
    cJSON_Delete(o);
    cJSON_Delete(parsed);
    return rc;
oom:
    cJSON_Delete(o);
    cJSON_Delete(parsed);
    return SS_ENOMEM;
}

/* One step of the call syntax from s->resume: P_CALL (a call was added,
 * resume moved past it), P_PARTIAL (needs more text), P_BAD, P_END (the
 * calls are over), or SS_ENOMEM. */
static int parse_step(struct api_tool_stream *s, const struct syntax *sx) {
    const char *t = s->acc.data ? s->acc.data : "";
    size_t n = s->acc.len, p = s->resume;
    int r;
    if (s->mode == M_FIRST) {
        if ((r = lit_at(t, n, p, sx->marker)) == 0)
            return P_PARTIAL;
        if (r == 1)
            p += strlen(sx->marker);
        p = skip_blank(t, n, p);
        if (sx->list) {
            if (p >= n)
                return P_PARTIAL;
            if (t[p] != '[')
                return P_BAD;
            p = skip_blank(t, n, p + 1);
        }
    } else {
        p = skip_blank(t, n, p);
        if (sx->close && (r = lit_at(t, n, p, sx->close)) >= 0) {
            if (r == 0)
                return P_PARTIAL;
            p = skip_blank(t, n, p + strlen(sx->close));
        }
        while (!sx->list && !sx->close && p < n && (t[p] == ';' || is_blank(t[p])))
            p++;
        if (p >= n)
            return P_PARTIAL;
        if (sx->list) {
            if (t[p] != ',')
                return P_END; /* "]" or anything else closes the list */
            p = skip_blank(t, n, p + 1);
        } else if ((r = lit_at(t, n, p, sx->marker)) >= 0) {
            if (r == 0)
                return P_PARTIAL;
            p = skip_blank(t, n, p + strlen(sx->marker));
        } else if (sx->close || t[p] != '{') {
            return P_END;
        }
    }
    if (p >= n)
        return P_PARTIAL;
    long e = object_end(t, n, p);
    if (e < 0)
        return P_BAD;
    if (e == 0)
        return P_PARTIAL;
    r = add_call(s, t, p, (size_t)e);
    if (r == P_CALL)
        s->resume = (size_t)e;
    return r;
}

/* SCAN: where a call starts in acc (from sent on), or -1; *hold: bytes at the
 * end that might still become a marker. */
static long find_start(const struct api_tool_stream *s, const struct syntax *sx, size_t *hold) {
    const char *t = s->acc.data ? s->acc.data : "";
    size_t n = s->acc.len, ml = strlen(sx->marker);
    *hold = 0;
    size_t k = skip_blank(t, n, 0);
    if (k == n) { /* blanks only so far: held, so that a call's leading blanks are not content */
        *hold = n - s->sent;
        return -1;
    }
    if (sx->bare && t[k] == sx->bare && k >= s->sent)
        return (long)k;
    const char *m = n > s->sent ? memmem(t + s->sent, n - s->sent, sx->marker, ml) : NULL;
    if (m)
        return (long)(m - t);
    for (size_t h = ml - 1; h > 0; h--)
        if (h <= n - s->sent && memcmp(t + n - h, sx->marker, h) == 0) {
            /* blanks only before it: they are held too (dropped if a call
             * follows, content if not), as a whole-text parse treats them */
            *hold = k >= n - h ? n - s->sent : h;
            break;
        }
    return -1;
}

static void emit(struct api_tool_stream *s, size_t upto, struct api_buf *content) {
    if (upto > s->sent)
        api_buf_append(content, s->acc.data + s->sent, upto - s->sent);
    if (upto > s->sent)
        s->sent = upto;
}

int api_tool_stream_feed(struct api_tool_stream *s, const char *text, size_t len, int finish,
                         struct api_buf *content) {
    if (s->mode == M_DONE)
        return 0;
    if (len && api_buf_append(&s->acc, text, len) < 0)
        return SS_ENOMEM;
    struct syntax sx = syntax_of(s->tools ? s->tools->family : API_TMPL_CHATML);
    if (s->mode == M_SCAN) {
        size_t hold;
        long at = find_start(s, &sx, &hold);
        if (at < 0) {
            emit(s, finish ? s->acc.len : s->acc.len - hold, content);
            return content->oom ? SS_ENOMEM : 0;
        }
        /* only blanks before the call: held (dropped once a call parses, as
         * CALLS and DONE emit nothing; content if it turns out PLAIN) */
        if (skip_blank(s->acc.data, (size_t)at, 0) < (size_t)at)
            emit(s, (size_t)at, content);
        s->start = s->resume = (size_t)at;
        s->mode = M_FIRST;
    }
    while (s->mode == M_FIRST || s->mode == M_CALLS) {
        int r = parse_step(s, &sx);
        if (r == SS_ENOMEM)
            return r;
        if (r == P_CALL) {
            s->mode = s->tools && !s->tools->parallel ? M_DONE : M_CALLS;
            continue;
        }
        if (r == P_PARTIAL && !finish)
            break;
        if (s->mode == M_FIRST && r != P_END) { /* not a call after all: it is content */
            s->mode = M_PLAIN;
        } else {
            s->mode = M_DONE;
        }
    }
    if (s->mode == M_PLAIN)
        emit(s, s->acc.len, content);
    return content->oom ? SS_ENOMEM : 0;
}
