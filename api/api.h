/* api.h - the OpenAI HTTP protocol as pure functions (no sockets, no threads).
 *
 * Module api/: owns request parsing and validation, JSON/SSE output, error
 * objects and their HTTP statuses, chat templates, the Prometheus text. May
 * include scheduler/ (request types) and engine/ (tokenizer) only.
 *
 * The server (server/) owns connections; this module turns request bytes into a
 * validated struct req_params (or an error object), and engine output into JSON
 * and SSE bytes. Everything here is reentrant and may be called from any thread;
 * in the server only the loop thread calls it.
 *
 * Errors are OpenAI-shaped: {"error":{"message","type","param","code"}} with the
 * HTTP status of the SS_E* code (kernels/ss_error.h) where one applies; the
 * mapping of codes to statuses lives here (api/errors.c).
 */
#ifndef SS_API_H
#define SS_API_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/sched.h"

struct tok;
struct api_tool_call;

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
/* HTTP status of an SS_E* code (500 for codes that are internal failures). */
int api_err_http_status(int ss);
void api_error_set(struct api_error *e, int ss, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same, with an explicit HTTP status and type (401, 404 route, 405, 413). */
void api_error_set_http(struct api_error *e, int status, const char *type, const char *param,
                        const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Appends {"error":{...}} (no trailing newline). */
int api_error_json(struct api_buf *b, const struct api_error *e);

/* ---- chat templates (template.c) ----
 * A GGUF's tokenizer.chat_template is a Jinja program; we do not run Jinja.
 * Instead the template text is recognised by the distinctive markers of a few
 * families, and each family is rendered by hand in C:
 *   gemma   <start_of_turn>      chatml  <|im_start|>      llama3  <|start_header_id|>
 *   llama2  [INST] and <<SYS>>   mistral [INST] without <<SYS>>
 * (checked in that order). The exact strings each family produces are written
 * down in template.c. add_generation_prompt is always true. */
enum api_tmpl_family {
    API_TMPL_NONE = 0, /* no recognised template: chat requests get a 400 */
    API_TMPL_CHATML,
    API_TMPL_LLAMA3,
    API_TMPL_LLAMA2,
    API_TMPL_MISTRAL,
    API_TMPL_GEMMA,
};
enum api_role { API_ROLE_SYSTEM = 0, API_ROLE_USER, API_ROLE_ASSISTANT, API_ROLE_TOOL };

/* One function call of an assistant message (request history). */
struct api_msg_call {
    const char *id;   /* NUL-terminated, may be "" */
    const char *name; /* NUL-terminated */
    const char *args; /* the arguments object as JSON text in Python json.dumps
                       * style ({"a": 1, "b": [1, 2]}), as the Jinja templates'
                       * tojson writes it */
};

struct api_chat_msg {
    int role;         /* enum api_role */
    const char *text; /* content, len bytes (not owned, need not be NUL-terminated) */
    size_t len;
    const struct api_msg_call *calls; /* assistant: its tool_calls (n_calls), else NULL */
    int n_calls;
    const char *call_id; /* tool: tool_call_id (NUL-terminated), else NULL */
};

/* ---- tool calling (tools.c: request fields and the forcing grammar;
 * tool_parse.c: the model's output turned into calls) ---- */
enum api_tool_choice { API_TOOLS_AUTO = 0, API_TOOLS_NONE, API_TOOLS_REQUIRED, API_TOOLS_NAMED };
#define API_MAX_TOOLS 128
struct api_tool {
    char *name;  /* [A-Za-z0-9_-]{1,64} */
    char *json;  /* {"type": "function", "function": {...}} in json.dumps style */
    char *json4; /* the same with indent=4 (llama3 puts tools in the user turn this way) */
};
struct api_tools {
    int n;                /* 1..API_MAX_TOOLS */
    struct api_tool *t;   /* [n] */
    int choice;           /* enum api_tool_choice */
    int named;            /* API_TOOLS_NAMED: index into t */
    int parallel;         /* parallel_tool_calls (default 1) */
    int family;           /* enum api_tmpl_family the calls are written in */
};
/* Frees what t owns and t itself. NULL is a no-op. */
void api_tools_free(struct api_tools *t);

/* Family of a template text (len bytes), API_TMPL_NONE if none matches.
 * *uses_bos (may be NULL) is set to 1 if the text mentions bos_token. */
int api_tmpl_detect(const char *src, size_t len, int *uses_bos);
/* How api_tmpl_for_model found a model's family. */
enum api_tmpl_source {
    API_TMPL_SRC_NONE = 0,  /* no template in the file, no family's markers in the vocabulary */
    API_TMPL_SRC_TEMPLATE,  /* the file's tokenizer.chat_template */
    API_TMPL_SRC_UNKNOWN,   /* the file has a template of no known family */
    API_TMPL_SRC_VOCAB,     /* no template; the vocabulary holds one family's turn markers */
};
/* The chat family of a loaded model: its tokenizer.chat_template (tmpl, len
 * bytes; NULL or 0 when the file has none) recognised by api_tmpl_detect, or,
 * without a template, the first family (gemma, chatml, llama3) whose turn
 * markers are all single tokens of t's vocabulary (the Gemma 3 270M GGUF has
 * no template). Sets *family (API_TMPL_NONE when none) and *bos; returns the
 * enum api_tmpl_source. Any thread. */
int api_tmpl_for_model(const char *tmpl, size_t len, const struct tok *t, int *family, int *bos);
/* "chatml", "llama3", "llama2", "mistral", "gemma" -> family; -1 otherwise. */
int api_tmpl_by_name(const char *name);
const char *api_tmpl_name(int family); /* "none" for API_TMPL_NONE */
/* Whether the family's reference template starts with bos_token (used when a
 * family is chosen by name): 1 for all but chatml. */
int api_tmpl_default_bos(int family);
/* Renders the conversation followed by the assistant generation prompt into
 * out. bos and eos are the tokenizer's BOS/EOS token texts ("" if none or not
 * wanted: the caller passes "" as bos when the template does not emit it).
 * Returns 0, SS_EINVAL with *err filled (param "messages") when the family
 * cannot express the conversation (roles not alternating, a system message
 * that is not first, no messages), or SS_ENOMEM. */
int api_tmpl_render(int family, const struct api_chat_msg *msgs, int n, const char *bos,
                    const char *eos, struct api_buf *out, struct api_error *err);
/* Same with the request's tools (NULL or choice NONE: not listed) and tool
 * history (assistant calls, tool messages) written in the family's convention
 * (template.c's header comment lists them). llama2 has none: tools or tool
 * history there are SS_EINVAL. */
int api_tmpl_render_tools(int family, const struct api_chat_msg *msgs, int n,
                          const struct api_tools *tools, const char *bos, const char *eos,
                          struct api_buf *out, struct api_error *err);

/* ---- the served model ---- */
struct api_model_info {
    const char *name;      /* served model name (not owned) */
    int n_ctx;             /* max tokens per sequence (prompt + completion) */
    int32_t n_vocab;
    const struct tok *tok; /* for string prompts; NULL -> string prompts are rejected */
    int64_t created;       /* unix time the server started */
    int chat_family;       /* enum api_tmpl_family; NONE -> chat requests get a 400 */
    int chat_bos;          /* 1: the rendered chat prompt starts with the BOS token text */
    int32_t kv_pages;      /* KV pages in the scheduler's pool (sched_get_limits); 0: not checked */
};

/* ---- routing ---- */
enum api_route {
    API_ROUTE_NONE = 0,     /* unknown path: 404 */
    API_ROUTE_HEALTH,
    API_ROUTE_MODELS,
    API_ROUTE_COMPLETIONS,
    API_ROUTE_CHAT,         /* POST /v1/chat/completions */
    API_ROUTE_TOKENIZE,     /* POST /tokenize */
    API_ROUTE_DETOKENIZE,   /* POST /detokenize */
    API_ROUTE_METRICS,      /* GET /metrics */
    API_ROUTE_EMBEDDINGS,   /* POST /v1/embeddings */
    API_ROUTE_COUNT,        /* number of values above (keep last) */
};
/* Looks up a path (query string ignored) and method. Returns the route, and in
 * *allowed 1 if the method is allowed for it (GET routes also allow HEAD).
 * *allow_hdr receives the Allow header value for a 405 (static string). */
int api_route_find(const char *method, const char *url, int *allowed, const char **allow_hdr);
/* 1 if a path needs the API key when one is configured: everything under /v1/
 * (known route or not), /tokenize and /detokenize; never /health or /metrics. */
int api_path_needs_auth(const char *url);
/* Checks an Authorization header value against key ("Bearer <key>"), in time
 * independent of where the strings differ. Returns 1 if authorised. */
int api_auth_ok(const char *authorization, const char *key);

/* ---- generation requests: /v1/completions and /v1/chat/completions ---- */
enum api_kind { API_KIND_COMPLETION = 0, API_KIND_CHAT = 1 };

#define API_MAX_N 16 /* choices per request (n) */

struct api_completion {
    struct req_params p;  /* prompt, stop strings, logit_bias malloc'd; moved into a sched_req */
    int kind;             /* enum api_kind */
    int n;                /* choices, 1..API_MAX_N; choice i uses seed + i when seeded */
    int stream;
    int include_usage;    /* stream_options.include_usage */
    int max_tokens_given; /* 0: default applied */
    int echo;             /* completions: prompt prepended to each choice's text */
    int prompt_only;      /* echo with max_tokens 0 (prompt logprobs only, as lm-eval asks):
                           * p.max_tokens is 1 and the server drops that token */
    char *echo_text;      /* malloc'd prompt text when echo (NUL-terminated), else NULL */
    size_t echo_len;
    struct api_tools *tools; /* chat with tools and tool_choice other than none: malloc'd
                              * (api_completion_free frees it unless moved out), else NULL */
};
/* Parses and validates a /v1/completions body (len bytes, need not be
 * NUL-terminated) against the model. Returns 0 and fills *out (free with
 * api_completion_free unless p was moved out), or a negative SS_E* code with
 * *err filled (nothing to free). String prompts are tokenized with
 * tok_add_bos() and without special-token parsing. Defaults: max_tokens 16
 * (clamped to the room left in the context). */
int api_completion_parse(const struct api_model_info *mi, const char *body, size_t len,
                         struct api_completion *out, struct api_error *err);
/* Same for a /v1/chat/completions body: messages are rendered with the
 * model's chat template (mi->chat_family) and encoded with special tokens
 * recognised and no extra BOS. max_tokens (or max_completion_tokens) defaults
 * to the room left in the context. "logprobs": true with "top_logprobs": k
 * sets p.logprobs = k. */
int api_chat_parse(const struct api_model_info *mi, const char *body, size_t len,
                   struct api_completion *out, struct api_error *err);
void api_completion_free(struct api_completion *c);

/* "stop" / "length" / NULL (still running; error/cancelled -> NULL too). */
const char *api_finish_reason(int finish);

/* Shared identity of one response's output objects. */
struct api_completion_meta {
    const char *id;       /* "cmpl-..." or "chatcmpl-..." */
    int64_t created;
    const char *model;
    int kind;             /* enum api_kind: object names and choice shapes */
    const struct tok *tok; /* token texts for logprobs; NULL -> "" */
    int32_t n_cached;     /* usage.prompt_tokens_details.cached_tokens (prefix cache hits) */
};
/* Writes a fresh id "cmpl-<32 hex>" (chat: "chatcmpl-<32 hex>") into out
 * (cap >= 48). seq makes it unique. */
void api_completion_id(char *out, size_t cap, uint64_t seq, int kind);

/* Running text offsets of one completions choice's logprobs (text_offset). */
struct api_lp_state {
    size_t prompt_off;    /* next prompt token's offset in the choice text */
    size_t gen_off;       /* bytes of generated token pieces so far */
    size_t echo_len;      /* generated tokens start after the echoed prompt */
};

/* One choice as a response or a chunk shows it. */
struct api_choice_out {
    int index;
    const char *text;     /* completions: text (with echo); chat: content (delta) */
    size_t len;
    int finish;           /* enum req_finish; NONE while running */
    int logprobs;         /* requested top-N, -1: "logprobs": null */
    const struct req_tok *toks; /* logprob records (prompt ones first) */
    int32_t n_toks;
    struct api_lp_state *lps;   /* completions offsets (in/out); NULL -> from 0 */
    const struct api_tool_call *calls; /* chat, non-stream: parsed tool calls (n_calls > 0:
                                        * "tool_calls" in the message, content null when
                                        * len is 0, finish_reason "tool_calls") */
    int n_calls;
    int tool_finish;      /* stream: the final chunk says "tool_calls" instead of "stop" */
};

/* Whole non-streamed response body: choices ch[0..n), usage with
 * prompt_tokens counted once. JSON numbers: logprobs -inf become -9999.0,
 * the NaN of a first prompt token null. Returns 0 or SS_ENOMEM. */
int api_response_json(struct api_buf *b, const struct api_completion_meta *m,
                      const struct api_choice_out *ch, int n, int32_t n_prompt, int64_t n_gen);
/* One SSE event "data: {chunk}\n\n" for one choice: completions text delta or
 * chat content delta, its logprobs, and finish_reason when ch->finish != NONE.
 * with_usage_null adds "usage":null (include_usage streams). */
int api_sse_chunk(struct api_buf *b, const struct api_completion_meta *m,
                  const struct api_choice_out *ch, int with_usage_null);
/* Chat only: the first chunk of a choice, delta {"role":"assistant","content":""}. */
int api_sse_role(struct api_buf *b, const struct api_completion_meta *m, int index,
                 int with_usage_null);
/* The usage event of include_usage streams (choices: []). */
int api_sse_usage(struct api_buf *b, const struct api_completion_meta *m, int32_t n_prompt,
                  int64_t n_gen);
/* Chat stream: the two chunks of one tool call as the OpenAI SDK assembles
 * them: delta {"tool_calls":[{"index":k,"id","type":"function","function":
 * {"name","arguments":""}}]}, then {"tool_calls":[{"index":k,"function":
 * {"arguments":"..."}}]}. 0 or SS_ENOMEM. */
int api_sse_tool_call(struct api_buf *b, const struct api_completion_meta *m, int index, int k,
                      const struct api_tool_call *call, int with_usage_null);
/* "data: {"error":...}\n\n" */
int api_sse_error(struct api_buf *b, const struct api_error *e);
int api_sse_done(struct api_buf *b); /* "data: [DONE]\n\n" */

/* ---- the model's output as tool calls (tool_parse.c) ----
 * Conventions per family (what the prompt asked for; see template.c):
 *   chatml, gemma  <tool_call>{"name": N, "arguments": {...}}</tool_call> (repeated;
 *                  the closing tag may be missing at the end)
 *   llama3         {"name": N, "parameters": {...}} as the whole answer (optionally
 *                  after <|python_tag|>; several separated by blanks or ';')
 *   mistral        [TOOL_CALLS] [{"name": N, "arguments": {...}}, ...] (the marker is a
 *                  control token, so a bare [...] at the start is a call too)
 * "arguments" and "parameters" are both accepted everywhere; a name must be one
 * of the request's tools. Text before the first call is content; once a call
 * parsed, text after the calls is dropped; text that starts like a call but
 * does not parse stays content. Without parallel_tool_calls only the first
 * call is kept.
 *
 * One parser serves both shapes: a non-stream response feeds the whole text
 * with finish = 1; a stream feeds each piece, getting the content that is safe
 * to send (a suffix that could begin a call marker is held back until it is
 * known not to) and the calls completed so far. Pure; one thread at a time. */
struct api_tool_call {
    char id[40];  /* "call_" + 24 random characters */
    char *name;   /* malloc'd */
    char *args;   /* malloc'd compact JSON text of the arguments object */
};
struct api_tool_stream {
    const struct api_tools *tools; /* not owned */
    struct api_buf acc;   /* everything fed so far */
    size_t sent;          /* acc[0..sent) went out as content (or is call text) */
    size_t start;         /* CALLS: where the first call's text begins */
    size_t resume;        /* CALLS: where parsing continues (after the last complete call) */
    int mode;             /* internal state */
    struct api_tool_call *calls; /* [n_calls] complete calls */
    int n_calls, cap_calls;
    int n_sent;           /* calls the caller already emitted (it advances this) */
};
void api_tool_stream_init(struct api_tool_stream *s, const struct api_tools *tools);
void api_tool_stream_free(struct api_tool_stream *s);
/* Feeds len bytes; finish = 1 when no more text follows. Appends the content
 * now safe to emit to *content; new complete calls are calls[n_sent ..
 * n_calls). 0 or SS_ENOMEM. */
int api_tool_stream_feed(struct api_tool_stream *s, const char *text, size_t len, int finish,
                         struct api_buf *content);
/* Writes "call_" and 24 random alphanumerics into out (cap >= 30). */
void api_tool_call_id(char *out, size_t cap);

/* ---- /v1/embeddings (embeddings.c) ----
 * Body: "input" (required): a string, an array of strings, an array of token
 * ids, or an array of arrays of token ids; each input becomes one prefill-only
 * sequence (struct req_params with pooling = ec->pooling, max_tokens 0).
 * Strings are tokenized as /v1/completions prompts are (BOS added when the
 * tokenizer asks for it, no special-token parsing); ids are used verbatim.
 * "model" as elsewhere; "encoding_format": "float" (default) or "base64"
 * (the little-endian float32 bytes, base64-encoded); "dimensions": k in
 * [1, ec->n_embd] keeps the first k components, re-normalised (Matryoshka style;
 * for a model not trained that way, a plain truncation); "user" ignored.
 * Every input is checked (empty, ids outside the vocabulary, longer than the
 * context or the KV pool): a 400 whose message names input[i]. */
#define API_MAX_EMBED_INPUTS 128 /* inputs per request (lowered to the server's queue size) */
struct api_embed_config {
    int pooling;           /* ENG_POOL_MEAN, _CLS or _LAST (anything else: every request gets a 400) */
    int32_t n_embd;        /* the model's hidden size: the vector length */
    int max_inputs;        /* inputs per request, 1..API_MAX_EMBED_INPUTS (0: API_MAX_EMBED_INPUTS) */
};
enum api_embd_format { API_EMBD_FLOAT = 0, API_EMBD_BASE64 = 1 };
struct api_embed {
    struct req_params *p; /* [n] one per input, in order; each moved into a sched_req */
    int n;
    int format;           /* enum api_embd_format */
    int dimensions;       /* vector length answered: n_embd unless "dimensions" asked less */
    int64_t n_prompt;     /* tokens over all inputs (usage) */
};
/* Parses and validates a body (len bytes) against the model. Returns 0 and
 * fills *out (free with api_embed_free), or a negative SS_E* code with *err
 * filled (nothing to free). */
int api_embed_parse(const struct api_model_info *mi, const struct api_embed_config *ec, const char *body,
                    size_t len, struct api_embed *out, struct api_error *err);
void api_embed_free(struct api_embed *e); /* the params not moved out; e may be NULL */
/* The 200 body: {"object": "list", "data": [{"object": "embedding", "index": i,
 * "embedding": [floats] or "base64"}], "model", "usage": {"prompt_tokens",
 * "total_tokens"}}. vecs[i] holds n_embd floats (L2-normalised); the first
 * e->dimensions of each are written, re-normalised when fewer than n_embd.
 * Floats are written with 9 significant digits, so they parse back to the
 * same float32. Returns 0 or SS_ENOMEM. */
int api_embed_json(struct api_buf *b, const char *model, const struct api_embed *e, const float *const *vecs,
                   int32_t n_embd);
/* Standard base64 (RFC 4648, padded) of n bytes, appended. 0 or SS_ENOMEM. */
int api_buf_base64(struct api_buf *b, const void *p, size_t n);

/* ---- /tokenize and /detokenize (tokenize.c) ----
 * /tokenize: {"prompt": str, "add_special_tokens": bool = true} (the prompt
 * encoded as /v1/completions would) or {"messages": [...],
 * "add_special_tokens": bool = false} (rendered with the chat template);
 * "model" optional. Answer {"count", "max_model_len", "tokens", "token_strs": null}.
 * /detokenize: {"tokens": [ids]} -> {"prompt": text} (special tokens rendered),
 * at most API_DETOKENIZE_MAX_IDS ids (400 above, found before the JSON tree is
 * built, so a huge array costs no memory).
 * Both write the 200 body into b and return 0, or return a negative code with
 * *err filled. */
#define API_DETOKENIZE_MAX_IDS 262144
int api_tokenize(const struct api_model_info *mi, const char *body, size_t len,
                 struct api_buf *b, struct api_error *err);
int api_detokenize(const struct api_model_info *mi, const char *body, size_t len,
                   struct api_buf *b, struct api_error *err);

/* ---- /metrics (metrics.c) ----
 * Prometheus text exposition format 0.0.4 from one snapshot of the scheduler's
 * counters: vLLM's metric names twice, with the prefix "slimserve:" and with
 * vLLM's own "vllm:" (plus its model_name label, mi->name), so routers and
 * dashboards made for vLLM read it unchanged; cache_config_info gives the KV
 * pool's geometry (ENG_PAGE_SLOTS slots per page, mi->kv_pages pages; mi may
 * be NULL: 0 pages and an empty model_name). Content type: API_METRICS_CTYPE.
 * Returns 0 or SS_ENOMEM. Any thread (pure function). */
#define API_METRICS_CTYPE "text/plain; version=0.0.4; charset=utf-8"
int api_metrics_text(struct api_buf *b, const struct sched_stats *st,
                     const struct api_model_info *mi);

/* ---- other routes ---- */
int api_models_json(struct api_buf *b, const struct api_model_info *mi);
int api_health_json(struct api_buf *b);

#endif
