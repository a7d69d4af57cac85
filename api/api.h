/* api.h - the OpenAI HTTP protocol as pure functions (no sockets, no threads).
 *
 * The server (server/) owns connections; this module turns request bytes into a
 * validated struct req_params (or an error object), and engine output into JSON
 * and SSE bytes. Everything here is reentrant and may be called from any thread;
 * in the server only the loop thread calls it.
 *
 * Errors are OpenAI-shaped: {"error":{"message","type","param","code"}} with the
 * HTTP status taken from the SS_E* table (engine/ss_error.h) where one applies.
 */
#ifndef SS_API_H
#define SS_API_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/sched.h"

struct tok;

/* ---- growable byte buffer (used for every output) ---- */
struct api_buf {
    char *data;   /* malloc'd, NUL-terminated when len > 0; NULL when empty */
    size_t len, cap;
    int oom;      /* set once an append failed; further appends are no-ops */
};
void api_buf_init(struct api_buf *b);
void api_buf_free(struct api_buf *b);
int api_buf_append(struct api_buf *b, const void *p, size_t n); /* 0 or SS_ENOMEM */
int api_buf_puts(struct api_buf *b, const char *s);
int api_buf_printf(struct api_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s[0..n) as a JSON string literal (quotes included). Control bytes are
 * escaped, invalid UTF-8 becomes U+FFFD, so the output is always valid JSON. */
int api_buf_json_str(struct api_buf *b, const char *s, size_t n);
/* Drops the first n bytes (n <= len). */
void api_buf_consume(struct api_buf *b, size_t n);

/* ---- errors ---- */
struct api_error {
    int status;           /* HTTP status */
    const char *type;     /* OpenAI error type ("invalid_request_error", ...) */
    const char *code;     /* short machine code ("model_not_found") or NULL -> null */
    char param[48];       /* offending request field, "" -> null */
    char message[320];
};
/* Fills e from an SS_E* code (status and type from the table), param (NULL ok),
 * code (static string or NULL) and a printf message (NULL -> ss_strerror(ss)). */
void api_error_set(struct api_error *e, int ss, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same, with an explicit HTTP status and type (401, 404 route, 405, 413). */
void api_error_set_http(struct api_error *e, int status, const char *type, const char *param,
                        const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Appends {"error":{...}} (no trailing newline). */
int api_error_json(struct api_buf *b, const struct api_error *e);

/* ---- the served model ---- */
struct api_model_info {
    const char *name;      /* served model name (not owned) */
    int n_ctx;             /* max tokens per sequence (prompt + completion) */
    int32_t n_vocab;
    const struct tok *tok; /* for string prompts; NULL -> string prompts are rejected */
    int64_t created;       /* unix time the server started */
};

/* ---- routing ---- */
enum api_route {
    API_ROUTE_NONE = 0,     /* unknown path: 404 */
    API_ROUTE_HEALTH,
    API_ROUTE_MODELS,
    API_ROUTE_COMPLETIONS,
};
/* Looks up a path (query string ignored) and method. Returns the route, and in
 * *allowed 1 if the method is allowed for it (GET routes also allow HEAD).
 * *allow_hdr receives the Allow header value for a 405 (static string). */
int api_route_find(const char *method, const char *url, int *allowed, const char **allow_hdr);
/* 1 if a path needs the API key when one is configured: everything under /v1/
 * (known route or not), never /health. */
int api_path_needs_auth(const char *url);
/* Checks an Authorization header value against key ("Bearer <key>"), in time
 * independent of where the strings differ. Returns 1 if authorised. */
int api_auth_ok(const char *authorization, const char *key);

/* ---- /v1/completions ---- */
struct api_completion {
    struct req_params p;  /* prompt and stop strings malloc'd; moved into a sched_req */
    int stream;
    int include_usage;    /* stream_options.include_usage */
    int max_tokens_given; /* 0: default applied */
};
/* Parses and validates a request body (len bytes, need not be NUL-terminated)
 * against the model. Returns 0 and fills *out (free with api_completion_free
 * unless p was moved out), or a negative SS_E* code with *err filled (nothing to
 * free). String prompts are tokenized with tok_add_bos(). */
int api_completion_parse(const struct api_model_info *mi, const char *body, size_t len,
                         struct api_completion *out, struct api_error *err);
void api_completion_free(struct api_completion *c);
/* Request defaults (what the scheduler expects for "off"): max_tokens 16,
 * temperature 1, top_p 1, repetition_penalty 1, logprobs -1, the rest 0. */
void api_req_params_init(struct req_params *p);
/* Frees the malloc'd members of p and zeroes them (NULL-safe). */
void api_req_params_clear(struct req_params *p);

/* "stop" / "length" / NULL (still running; error/cancelled -> NULL too). */
const char *api_finish_reason(int finish);

/* Shared identity of one completion's output objects. */
struct api_completion_meta {
    const char *id;       /* "cmpl-..." */
    int64_t created;
    const char *model;
};
/* Writes a fresh id "cmpl-<32 hex>" into out (cap >= 40). seq makes it unique. */
void api_completion_id(char *out, size_t cap, uint64_t seq);

/* Whole non-streamed response body. */
int api_completion_json(struct api_buf *b, const struct api_completion_meta *m, const char *text,
                        size_t len, int finish, int32_t n_prompt, int32_t n_gen);
/* One SSE event "data: {chunk}\n\n" carrying a text delta; finish != NONE adds its
 * finish_reason. with_usage_null adds "usage":null (include_usage streams). */
int api_sse_chunk(struct api_buf *b, const struct api_completion_meta *m, const char *text,
                  size_t len, int finish, int with_usage_null);
/* The usage event of include_usage streams (choices: []). */
int api_sse_usage(struct api_buf *b, const struct api_completion_meta *m, int32_t n_prompt,
                  int32_t n_gen);
/* "data: {"error":...}\n\n" */
int api_sse_error(struct api_buf *b, const struct api_error *e);
int api_sse_done(struct api_buf *b); /* "data: [DONE]\n\n" */

/* ---- other routes ---- */
int api_models_json(struct api_buf *b, const struct api_model_info *mi);
int api_health_json(struct api_buf *b);

#endif
