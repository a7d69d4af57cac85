/* chat.c - POST /v1/chat/completions request validation: messages, the chat
 * template, and the chat-only fields (logprobs/top_logprobs,
 * max_completion_tokens). Shared fields: params.c. Output shapes: output.c.
 *
 * Pure functions; any thread.
 *
 * messages: [{"role": "system"|"developer"|"user"|"assistant", "content": C}]
 * where C is a string or an array of {"type": "text", "text": str} parts
 * (joined with "\n"); other part types are rejected (400). An assistant
 * message may have a null or missing content (rendered as ""). "developer" is
 * OpenAI's newer name for "system". Tools and functions are rejected rather
 * than ignored; response_format is api_parse_structured's (structured.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

#define MAX_MESSAGES 4096

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
    else {
        api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                      "messages[%d]: role '%.40s' is not supported (use system, user or "
                      "assistant)",
                      i, s);
        return SS_EINVAL;
    }
    return 0;
}

/* Content of message i appended to text (parts joined with "\n"). */
static int parse_content(const cJSON *m, int i, int role, struct api_buf *text,
                         struct api_error *err) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
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

/* Collects messages: texts concatenated in *store, offsets in msgs (text
 * pointers fixed up once store stops moving). */
static int parse_messages(const cJSON *root, struct api_chat_msg **out, int *n_out,
                          struct api_buf *store, struct api_error *err) {
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
    struct api_chat_msg *msgs = calloc((size_t)n, sizeof(*msgs));
    size_t *off = calloc((size_t)n, sizeof(*off));
    if (!msgs || !off) {
        free(msgs);
        free(off);
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    int i = 0, rc = 0;
    for (const cJSON *m = v->child; m && i < n; m = m->next, i++) {
        if (!cJSON_IsObject(m)) {
            rc = msg_error(err, i, "each message must be an object");
            break;
        }
        if ((rc = parse_role(m, i, &msgs[i].role, err)) < 0)
            break;
        off[i] = store->len;
        if ((rc = parse_content(m, i, msgs[i].role, store, err)) < 0)
            break;
        msgs[i].len = store->len - off[i];
    }
    if (rc == 0 && store->oom) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        rc = SS_ENOMEM;
    }
    if (rc < 0) {
        free(msgs);
        free(off);
        return rc;
    }
    for (i = 0; i < n; i++)
        msgs[i].text = store->data ? store->data + off[i] : "";
    free(off);
    *out = msgs;
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

    static const char *const no[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = api_field(root, no[i]);
        if (v && !(cJSON_IsArray(v) && !v->child)) {
            api_error_set(err, SS_EUNSUPPORTED, no[i], "unsupported",
                          "'%s' (tool calling) is not supported", no[i]);
            return SS_EUNSUPPORTED;
        }
    }
    return 0; /* response_format: api_parse_structured (shared with completions) */
}

int api_chat_prompt(const struct api_model_info *mi, const cJSON *root, int64_t max_count,
                    struct req_params *p, struct api_error *err) {
    if (mi->chat_family == API_TMPL_NONE || !mi->tok) {
        api_error_set(err, SS_EUNSUPPORTED, "messages", "chat_template_missing",
                      "this model has no chat template the server recognises (known families: "
                      "chatml, llama3, llama2, mistral, gemma): use /v1/completions, or start "
                      "the server with --chat-template NAME");
        return SS_EUNSUPPORTED;
    }
    struct api_buf store, text;
    api_buf_init(&store);
    api_buf_init(&text);
    struct api_chat_msg *msgs = NULL;
    int n = 0;
    int rc = parse_messages(root, &msgs, &n, &store, err);
    if (rc == 0) {
        const char *bos = "", *eos = "";
        size_t l;
        if (mi->chat_bos && tok_bos(mi->tok) >= 0)
            bos = tok_text(mi->tok, tok_bos(mi->tok), &l);
        if (tok_eos(mi->tok) >= 0)
            eos = tok_text(mi->tok, tok_eos(mi->tok), &l);
        rc = api_tmpl_render(mi->chat_family, msgs, n, bos ? bos : "", eos ? eos : "", &text,
                             err);
    }
    if (rc == 0)
        rc = api_encode_text(mi, text.data ? text.data : "", text.len, 0, 1, max_count,
                             "messages", &p->prompt, &p->n_prompt, err);
    free(msgs);
    api_buf_free(&store);
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
    if ((rc = api_chat_prompt(mi, root, API_PROMPT_MAX_COUNT(mi), &c->p, err)) < 0)
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
