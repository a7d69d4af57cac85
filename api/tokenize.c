/* tokenize.c - POST /tokenize and POST /detokenize (vLLM's extra routes).
 *
 * Pure functions; any thread. See api.h for the shapes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#define TOO_MANY_IDS "'tokens' may hold at most " STR(API_DETOKENIZE_MAX_IDS) " ids: detokenize in parts"

static int need_tokenizer(const struct api_model_info *mi, struct api_error *err) {
    if (mi->tok)
        return 0;
    api_error_set(err, SS_EUNSUPPORTED, NULL, "unsupported", "this model has no tokenizer");
    return SS_EUNSUPPORTED;
}

static int tokenize_fields(const struct api_model_info *mi, const cJSON *root,
                           struct req_params *p, struct api_error *err) {
    int rc;
    if ((rc = api_parse_model(mi, root, err)) < 0)
        return rc;
    if ((rc = need_tokenizer(mi, err)) < 0)
        return rc;
    const cJSON *prompt = api_field(root, "prompt");
    const cJSON *messages = api_field(root, "messages");
    if (prompt && messages) {
        api_error_set(err, SS_EINVAL, "prompt", "invalid_value",
                      "send either 'prompt' or 'messages', not both");
        return SS_EINVAL;
    }
    int add_special = messages ? 0 : 1;
    if ((rc = api_get_bool(root, "add_special_tokens", &add_special, err)) < 0)
        return rc;
    if (messages) {
        if ((rc = api_chat_prompt(mi, root, NULL, 0, p, err)) < 0)
            return rc;
        /* vLLM: add_special_tokens on a chat prompt adds BOS on top of the template */
        if (add_special && tok_bos(mi->tok) >= 0) {
            int32_t *np = realloc(p->prompt, sizeof(int32_t) * ((size_t)p->n_prompt + 1));
            if (!np) {
                api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
                return SS_ENOMEM;
            }
            memmove(np + 1, np, sizeof(int32_t) * (size_t)p->n_prompt);
            np[0] = tok_bos(mi->tok);
            p->prompt = np;
            p->n_prompt++;
        }
        return 0;
    }
    if (!prompt || !cJSON_IsString(prompt)) {
        api_error_set(err, SS_EINVAL, "prompt", prompt ? "invalid_type" : "missing_required_parameter",
                      "'prompt' is required and must be a string");
        return SS_EINVAL;
    }
    if (prompt->valuestring[0] == '\0')
        return 0; /* "" tokenizes to nothing (or BOS alone) */
    rc = api_encode_text(mi, prompt->valuestring, strlen(prompt->valuestring),
                         add_special && tok_add_bos(mi->tok), 0, 0, "prompt", &p->prompt,
                         &p->n_prompt, err);
    return rc;
}

int api_tokenize(const struct api_model_info *mi, const char *body, size_t len,
                 struct api_buf *b, struct api_error *err) {
    cJSON *root = api_parse_object(body, len, API_MAX_VALUES(mi), NULL, NULL, err);
    if (!root)
        return SS_EINVAL;
    struct req_params p;
    req_params_init(&p);
    int rc = tokenize_fields(mi, root, &p, err);
    cJSON_Delete(root);
    if (rc == 0) {
        api_buf_printf(b, "{\"count\":%d,\"max_model_len\":%d,\"tokens\":[", (int)p.n_prompt,
                       mi->n_ctx);
        for (int32_t i = 0; i < p.n_prompt; i++)
            api_buf_printf(b, "%s%d", i ? "," : "", (int)p.prompt[i]);
        api_buf_puts(b, "],\"token_strs\":null}");
        if (b->oom) {
            api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
            rc = SS_ENOMEM;
        }
    }
    req_params_free(&p);
    return rc;
}

static int detokenize_ids(const struct api_model_info *mi, const cJSON *root, int32_t **ids,
                          int *n_out, struct api_error *err) {
    int rc;
    if ((rc = api_parse_model(mi, root, err)) < 0)
        return rc;
    if ((rc = need_tokenizer(mi, err)) < 0)
        return rc;
    const cJSON *v = api_field(root, "tokens");
    if (!v || !cJSON_IsArray(v)) {
        api_error_set(err, SS_EINVAL, "tokens", v ? "invalid_type" : "missing_required_parameter",
                      "'tokens' is required and must be an array of token ids");
        return SS_EINVAL;
    }
    int n = cJSON_GetArraySize(v);
    if (n > API_DETOKENIZE_MAX_IDS) {
        api_error_set(err, SS_EINVAL, "tokens", "invalid_value",
                      "%s", TOO_MANY_IDS);
        return SS_EINVAL;
    }
    *ids = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!*ids) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    int k = 0;
    for (const cJSON *e = v->child; e && k < n; e = e->next, k++) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= (double)mi->n_vocab) {
            api_error_set(err, SS_EINVAL, "tokens", "invalid_value",
                          "tokens[%d] is not a token id: ids are integers in 0..%d", k,
                          (int)mi->n_vocab - 1);
            return SS_EINVAL;
        }
        (*ids)[k] = (int32_t)e->valuedouble;
    }
    *n_out = k;
    return 0;
}

int api_detokenize(const struct api_model_info *mi, const char *body, size_t len,
                   struct api_buf *b, struct api_error *err) {
    cJSON *root = api_parse_object(body, len, API_DETOKENIZE_MAX_IDS + 64, "tokens", TOO_MANY_IDS, err);
    if (!root)
        return SS_EINVAL;
    int32_t *ids = NULL;
    int n = 0;
    int rc = detokenize_ids(mi, root, &ids, &n, err);
    cJSON_Delete(root);
    if (rc == 0) {
        char *text = tok_decode(mi->tok, ids, n, 0);
        if (!text) {
            api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
            rc = SS_ENOMEM;
        } else {
            api_buf_puts(b, "{\"prompt\":");
            api_buf_json_str(b, text, strlen(text));
            api_buf_puts(b, "}");
            free(text);
            if (b->oom) {
                api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
                rc = SS_ENOMEM;
            }
        }
    }
    free(ids);
    return rc;
}
