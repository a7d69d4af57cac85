/* errors.c - output buffers, JSON string escaping and OpenAI error objects.
 *
 * Pure functions; any thread. Output JSON is written by hand (the shapes are
 * fixed) so the per-token path does no tree allocation; request parsing uses
 * cJSON (completions.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "kernels/ss_error.h"

void api_buf_init(struct api_buf *b) {
    memset(b, 0, sizeof(*b));
}

void api_buf_free(struct api_buf *b) {
    if (!b)
        return;
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Makes room for n more bytes plus a NUL. */
static int buf_reserve(struct api_buf *b, size_t n) {
    if (b->oom)
        return SS_ENOMEM;
    if (n > SIZE_MAX / 2 - b->len) {
        b->oom = 1;
        return SS_ENOMEM;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = 1;
        return SS_ENOMEM;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

int api_buf_append(struct api_buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n))
        return SS_ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int api_buf_puts(struct api_buf *b, const char *s) {
    return api_buf_append(b, s, strlen(s));
}

int api_buf_printf(struct api_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n))
        return SS_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void api_buf_consume(struct api_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        if (b->data)
            b->data[0] = '\0';
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

/* Length of the valid UTF-8 sequence starting at s (n bytes available), or 0
 * if the bytes there are not valid UTF-8 (overlongs and surrogates rejected). */
static size_t utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

int api_buf_json_str(struct api_buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    /* worst case 6 bytes per input byte, plus quotes */
    if (n > SIZE_MAX / 8 || buf_reserve(b, n * 6 + 2))
        return SS_ENOMEM;
    char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            *o++ = '\\';
            switch (c) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            default:
                o += sprintf(o, "u%04x", c);
                break;
            }
            i++;
            continue;
        }
        size_t l = utf8_valid_len(s + i, n - i);
        if (l == 0) {
            memcpy(o, "\xEF\xBF\xBD", 3); /* U+FFFD */
            o += 3;
            i++;
        } else {
            memcpy(o, s + i, l);
            o += l;
            i += l;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return 0;
}

static void error_fill(struct api_error *e, const char *param, const char *code, const char *fmt,
                       va_list ap, const char *fallback) {
    e->code = code;
    e->param[0] = '\0';
    if (param)
        snprintf(e->param, sizeof(e->param), "%s", param);
    if (fmt)
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
    else
        snprintf(e->message, sizeof(e->message), "%s", fallback);
}

/* What each SS_E* code means on the wire: HTTP status and OpenAI error type.
 * Codes not listed are internal failures (500, server_error). */
static const struct {
    int code, http;
    const char *type;
} ss_http[] = {
    {SS_OK, 200, "ok"},
    {SS_EINVAL, 400, "invalid_request_error"},
    {SS_ETOOLONG, 400, "invalid_request_error"},
    {SS_EUNSUPPORTED, 400, "invalid_request_error"},
    {SS_ENOTFOUND, 404, "invalid_request_error"},
    {SS_ECANCELLED, 499, "server_error"},
    {SS_EAGAIN, 503, "server_error"},
};

int api_err_http_status(int ss) {
    for (size_t i = 0; i < sizeof ss_http / sizeof ss_http[0]; i++)
        if (ss_http[i].code == ss) return ss_http[i].http;
    return 500;
}

static const char *err_type(int ss) {
    for (size_t i = 0; i < sizeof ss_http / sizeof ss_http[0]; i++)
        if (ss_http[i].code == ss) return ss_http[i].type;
    return "server_error";
}

void api_error_set(struct api_error *e, int ss, const char *param, const char *code,
                   const char *fmt, ...) {
    e->status = api_err_http_status(ss);
    e->type = err_type(ss);
    va_list ap;
    va_start(ap, fmt);
    error_fill(e, param, code, fmt, ap, ss_strerror(ss));
    va_end(ap);
}

void api_error_set_http(struct api_error *e, int status, const char *type, const char *param,
                        const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = type ? type : "invalid_request_error";
    va_list ap;
    va_start(ap, fmt);
    error_fill(e, param, code, fmt, ap, "error");
    va_end(ap);
}

int api_error_json(struct api_buf *b, const struct api_error *e) {
    api_buf_puts(b, "{\"error\":{\"message\":");
    api_buf_json_str(b, e->message, strlen(e->message));
    api_buf_puts(b, ",\"type\":");
    const char *type = e->type ? e->type : "server_error";
    api_buf_json_str(b, type, strlen(type));
    api_buf_puts(b, ",\"param\":");
    if (e->param[0])
        api_buf_json_str(b, e->param, strlen(e->param));
    else
        api_buf_puts(b, "null");
    api_buf_puts(b, ",\"code\":");
    if (e->code)
        api_buf_json_str(b, e->code, strlen(e->code));
    else
        api_buf_puts(b, "null");
    return api_buf_puts(b, "}}");
}

int api_sse_error(struct api_buf *b, const struct api_error *e) {
    api_buf_puts(b, "data: ");
    api_error_json(b, e);
    return api_buf_puts(b, "\n\n");
}

int api_sse_done(struct api_buf *b) {
    return api_buf_puts(b, "data: [DONE]\n\n");
}
