/* chat.c - POST /v1/chat/completions request validation: messages, the chat
 * template, and the chat-only fields (logprobs/top_logprobs,
 * max_completion_tokens). Shared fields: params.c. Output shapes: output.c.
 *
 * Pure functions; any thread.
 *
 * messages: [{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": C}]
 * where C is a string or an array of {"type": "text", "text": str} parts
 * (joined with "\n"); other part types are rejected (400). An assistant
 * message may have a null or missing content (rendered as "") and
 * "tool_calls": [{"id", "type": "function", "function": {"name", "arguments":
 * JSON text of an object}}]; a tool message needs "tool_call_id". "developer"
 * is OpenAI's newer name for "system". tools / tool_choice: tools.c;
 * response_format: api_parse_structured's (structured.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

#define MAX_MESSAGES 4096
#define MAX_CALLS 1024 /* tool calls in all assistant messages together */

/* Messages being collected: texts in store and call arguments in args, both
 * as offsets until the buffers stop moving. ids and names point into the
 * request's JSON tree, which outlives the rendering. */
struct msgs_ctx {
    struct api_chat_msg *msgs;
    size_t *off;
    struct api_msg_call *calls; /* [n_calls] in message order */
    size_t *arg_off;
    int n_calls;
    struct api_buf store, args;
};

static int msg_error(struct api_error *err, int i, const char *what) {
    api_error_set(err, SS_EINVAL, "messages", "invalid_value", "messages[%d]: %s", i, what);
    return SS_EINVAL;
}

static int parse_role(const cJSON *m, int i, int *role, struct api_error *err) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!r || !cJSON_IsString(r))
        return msg_error(err, i, "'role' is required and must be a string");
    const char *s = r->valuestring;
    if (!strcmp(s, "system") || !strcmp(s, "developer"))
        *role = API_ROLE_SYSTEM;
    else if (!strcmp(s, "user"))
        *role = API_ROLE_USER;
    else if (!strcmp(s, "assistant"))
        *role = API_ROLE_ASSISTANT;
    else if (!strcmp(s, "tool"))
        *role = API_ROLE_TOOL;
    else {
        api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                      "messages[%d]: role '%.40s' is not supported (use system, user, "
                      "assistant or tool)",
                      i, s);
        return SS_EINVAL;
    }
    return 0;
}

/* Content of message i appended to text (parts joined with "\n"). */
static int parse_content(const cJSON *m, int i, int role, struct api_buf *text,
                         struct api_error *err) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (role == API_ROLE_TOOL && cJSON_IsNull(c))
        return msg_error(err, i, "a tool message needs a 'content'");
    if (!c || cJSON_IsNull(c)) {
        if (role == API_ROLE_ASSISTANT)
            return 0;
        return msg_error(err, i, "'content' is required");
    }
    if (cJSON_IsString(c)) {
        api_buf_puts(text, c->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(c))
        return msg_error(err, i, "'content' must be a string or an array of text parts");
    int k = 0;
    for (const cJSON *part = c->child; part; part = part->next, k++) {
        const cJSON *type = cJSON_IsObject(part) ? cJSON_GetObjectItemCaseSensitive(part, "type")
                                                 : NULL;
        if (!type || !cJSON_IsString(type)) {
            api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                          "messages[%d].content[%d]: each part must be an object with a 'type'",
                          i, k);
            return SS_EINVAL;
        }
        if (strcmp(type->valuestring, "text") != 0) {
            api_error_set(err, SS_EUNSUPPORTED, "messages", "unsupported",
                          "messages[%d].content[%d]: content parts of type '%.40s' are not "
                          "supported (only 'text')",
                          i, k, type->valuestring);
            return SS_EUNSUPPORTED;
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!t || !cJSON_IsString(t)) {
            api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                          "messages[%d].content[%d]: a text part needs a string 'text'", i, k);
            return SS_EINVAL;
        }
        if (k)
            api_buf_puts(text, "\n");
        api_buf_puts(text, t->valuestring);
    }
    return 0;
}

static int call_error(struct api_error *err, int i, int k, const char *what) {
    api_error_set(err, SS_EINVAL, "messages", "invalid_value", "messages[%d].tool_calls[%d]: %s", i,
                  k, what);
    return SS_EINVAL;
}

/* The assistant message i's tool_calls into ctx->calls (from ctx->n_calls on). */
static int parse_calls(const cJSON *m, int i, struct msgs_ctx *x, struct api_error *err) {
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (!tc || cJSON_IsNull(tc))
        return 0;
    if (x->msgs[i].role != API_ROLE_ASSISTANT)
        return msg_error(err, i, "only assistant messages may have 'tool_calls'");
    if (!cJSON_IsArray(tc))
        return msg_error(err, i, "'tool_calls' must be an array");
    int k = 0;
    for (const cJSON *c = tc->child; c; c = c->next, k++) {
        if (x->n_calls >= MAX_CALLS)
            return msg_error(err, i, "too many tool calls in the conversation (at most 1024)");
        const cJSON *fn = cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "function") : NULL;
        const cJSON *id = cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "id") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        const cJSON *args = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "arguments")
                                               : NULL;
        if (!cJSON_IsString(name))
            return call_error(err, i, k, "'function.name' must be a string");
        if (id && !cJSON_IsNull(id) && !cJSON_IsString(id))
            return call_error(err, i, k, "'id' must be a string");
        cJSON *parsed = NULL;
        const cJSON *obj = args;
        if (cJSON_IsString(args)) { /* OpenAI sends the arguments as JSON text */
            parsed = cJSON_Parse(args->valuestring);
            obj = parsed;
        }
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(parsed);
            return call_error(err, i, k, "'function.arguments' must be the JSON text of an object");
        }
        struct api_msg_call *cl = &x->calls[x->n_calls];
        cl->id = cJSON_IsString(id) ? id->valuestring : "";
        cl->name = name->valuestring;
        x->arg_off[x->n_calls++] = x->args.len;
        api_json_py(&x->args, obj, 0, 0);
        api_buf_append(&x->args, "", 1); /* each one NUL-terminated */
        cJSON_Delete(parsed);
    }
    x->msgs[i].n_calls = k;
    return 0;
}

static int parse_message(const cJSON *m, int i, struct msgs_ctx *x, struct api_error *err) {
    int rc;
    if (!cJSON_IsObject(m))
        return msg_error(err, i, "each message must be an object");
    if ((rc = parse_role(m, i, &x->msgs[i].role, err)) < 0)
        return rc;
    x->off[i] = x->store.len;
    int first_call = x->n_calls;
    if ((rc = parse_calls(m, i, x, err)) < 0)
        return rc;
    if (x->msgs[i].n_calls) /* pointer fixed up later: the index for now */
        x->msgs[i].calls = (const struct api_msg_call *)(uintptr_t)(first_call + 1);
    if (x->msgs[i].role == API_ROLE_TOOL) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
        if (!cJSON_IsString(id))
            return msg_error(err, i, "a tool message needs a string 'tool_call_id'");
        x->msgs[i].call_id = id->valuestring;
    }
    if ((rc = parse_content(m, i, x->msgs[i].role, &x->store, err)) < 0)
        return rc;
    x->msgs[i].len = x->store.len - x->off[i];
    return 0;
}

static void msgs_ctx_free(struct msgs_ctx *x) {
    free(x->msgs);
    free(x->off);
    free(x->calls);
    free(x->arg_off);
    api_buf_free(&x->store);
    api_buf_free(&x->args);
}

/* Collects the messages of root into x (x->msgs[0..*n_out)). */
static int parse_messages(const cJSON *root, struct msgs_ctx *x, int *n_out,
                          struct api_error *err) {
    const cJSON *v = api_field(root, "messages");
    if (!v) {
        api_error_set(err, SS_EINVAL, "messages", "missing_required_parameter",
                      "'messages' is required");
        return SS_EINVAL;
    }
    if (!cJSON_IsArray(v)) {
        api_error_set(err, SS_EINVAL, "messages", "invalid_type",
                      "'messages' must be an array of message objects");
        return SS_EINVAL;
    }
    int n = cJSON_GetArraySize(v);
    if (n == 0 || n > MAX_MESSAGES) {
        api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                      "'messages' must hold between 1 and %d messages, got %d", MAX_MESSAGES, n);
        return SS_EINVAL;
    }
    x->msgs = calloc((size_t)n, sizeof(*x->msgs));
    x->off = calloc((size_t)n, sizeof(*x->off));
    x->calls = calloc(MAX_CALLS, sizeof(*x->calls));
    x->arg_off = calloc(MAX_CALLS, sizeof(*x->arg_off));
    if (!x->msgs || !x->off || !x->calls || !x->arg_off) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    int i = 0, rc = 0;
    for (const cJSON *m = v->child; m && i < n && rc == 0; m = m->next, i++)
        rc = parse_message(m, i, x, err);
    if (rc == 0 && (x->store.oom || x->args.oom)) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        rc = SS_ENOMEM;
    }
    if (rc < 0)
        return rc;
    for (i = 0; i < x->n_calls; i++)
        x->calls[i].args = x->args.data + x->arg_off[i];
    for (i = 0; i < n; i++) {
        x->msgs[i].text = x->store.data ? x->store.data + x->off[i] : "";
        if (x->msgs[i].n_calls)
            x->msgs[i].calls = x->calls + ((uintptr_t)x->msgs[i].calls - 1);
    }
    *n_out = n;
    return 0;
}

/* logprobs (bool), top_logprobs (0..20, needs logprobs), tools. */
static int parse_chat_only(const cJSON *root, struct api_completion *c, struct api_error *err) {
    int lp = 0, rc;
    int64_t k = 0;
    if ((rc = api_get_bool(root, "logprobs", &lp, err)) < 0)
        return rc;
    if ((rc = api_get_integer(root, "top_logprobs", -1e18, 1e18, &k, err)) < 0)
        return rc;
    if (rc && (k < 0 || k > REQ_MAX_LOGPROBS))
        return api_range_error(err, "top_logprobs", "an integer between 0 and 20", (double)k);
    if (rc && !lp) {
        api_error_set(err, SS_EINVAL, "top_logprobs", "invalid_value",
                      "'top_logprobs' requires 'logprobs': true");
        return SS_EINVAL;
    }
    c->p.logprobs = lp ? (int)k : -1;

    return 0; /* response_format: api_parse_structured (shared with completions) */
}

int api_chat_prompt(const struct api_model_info *mi, const cJSON *root,
                    const struct api_tools *tools, int64_t max_count, struct req_params *p,
                    struct api_error *err) {
    if (mi->chat_family == API_TMPL_NONE || !mi->tok) {
        api_error_set(err, SS_EUNSUPPORTED, "messages", "chat_template_missing",
                      "this model has no chat template the server recognises (known families: "
                      "chatml, llama3, llama2, mistral, gemma): use /v1/completions, or start "
                      "the server with --chat-template NAME");
        return SS_EUNSUPPORTED;
    }
    struct msgs_ctx x;
    memset(&x, 0, sizeof(x));
    struct api_buf text;
    api_buf_init(&text);
    int n = 0;
    int rc = parse_messages(root, &x, &n, err);
    if (rc == 0) {
        const char *bos = "", *eos = "";
        size_t l;
        if (mi->chat_bos && tok_bos(mi->tok) >= 0)
            bos = tok_text(mi->tok, tok_bos(mi->tok), &l);
        if (tok_eos(mi->tok) >= 0)
            eos = tok_text(mi->tok, tok_eos(mi->tok), &l);
        rc = api_tmpl_render_tools(mi->chat_family, x.msgs, n, tools, bos ? bos : "",
                                   eos ? eos : "", &text, err);
    }
    if (rc == 0)
        rc = api_encode_text(mi, text.data ? text.data : "", text.len, 0, 1, max_count,
                             "messages", &p->prompt, &p->n_prompt, err);
    msgs_ctx_free(&x);
    api_buf_free(&text);
    return rc;
}

static int parse_fields(const struct api_model_info *mi, const cJSON *root,
                        struct api_completion *c, struct api_error *err) {
    int rc;
    if ((rc = api_parse_common(mi, root, c, err)) < 0)
        return rc;
    if ((rc = parse_chat_only(root, c, err)) < 0)
        return rc;
    if ((rc = api_parse_tools(mi, root, c, err)) < 0)
        return rc;
    if ((rc = api_chat_prompt(mi, root, c->tools, API_PROMPT_MAX_COUNT(mi), &c->p, err)) < 0)
        return rc;
    /* max_completion_tokens is OpenAI's newer name; it wins when both are given */
    const char *mt = api_field(root, "max_completion_tokens") ? "max_completion_tokens"
                                                              : "max_tokens";
    return api_parse_lengths(mi, root, mt, 0, c, err);
}

int api_chat_parse(const struct api_model_info *mi, const char *body, size_t len,
                   struct api_completion *out, struct api_error *err) {
    return api_request_parse(mi, body, len, API_KIND_CHAT, parse_fields, out, err);
}
