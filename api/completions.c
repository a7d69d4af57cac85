/* completions.c - POST /v1/completions request validation, and the request
 * parameter lifecycle (init, deep copy for n > 1, clear).
 *
 * Pure functions; any thread. Parsing uses cJSON; every field is type-checked
 * and range-checked, and each error names the field in "param". Unknown fields
 * are ignored (as OpenAI and vLLM do); known fields with values we cannot
 * honour (best_of != n, suffix, several prompts) are rejected with a 400
 * rather than silently ignored. Shared fields: params.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "engine/sampler.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

static int empty_prompt(struct api_error *err) {
    api_error_set(err, SS_EINVAL, "prompt", "invalid_value", "'prompt' must not be empty");
    return SS_EINVAL;
}

/* Token ids used verbatim (api_ids_from_array). */
static int prompt_from_ids(const struct api_model_info *mi, const cJSON *arr, struct req_params *p,
                           struct api_error *err) {
    return api_ids_from_array(mi, arr, "prompt", "'prompt'", &p->prompt, &p->n_prompt, err);
}

static int prompt_from_text(const struct api_model_info *mi, const char *s, struct req_params *p,
                            struct api_error *err) {
    size_t len = strlen(s);
    if (len == 0)
        return empty_prompt(err);
    int add_bos = mi->tok ? tok_add_bos(mi->tok) : 0;
    return api_encode_text(mi, s, len, add_bos, 0, API_PROMPT_MAX_COUNT(mi), "prompt", &p->prompt,
                           &p->n_prompt, err);
}

/* prompt: "text" | ["text"] | [ids...] | [[ids...]]. *text receives the prompt
 * string when it was given as text (borrowed from the tree), else NULL. */
static int parse_prompt(const struct api_model_info *mi, const cJSON *root, struct req_params *p,
                        const char **text, struct api_error *err) {
    *text = NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!v || cJSON_IsNull(v)) {
        api_error_set(err, SS_EINVAL, "prompt", "missing_required_parameter",
                      "'prompt' is required");
        return SS_EINVAL;
    }
    if (cJSON_IsString(v)) {
        *text = v->valuestring;
        return prompt_from_text(mi, v->valuestring, p, err);
    }
    if (!cJSON_IsArray(v)) {
        api_error_set(err, SS_EINVAL, "prompt", "invalid_type",
                      "'prompt' must be a string or an array of token ids");
        return SS_EINVAL;
    }
    const cJSON *first = v->child;
    if (!first)
        return empty_prompt(err);
    if (cJSON_IsNumber(first))
        return prompt_from_ids(mi, v, p, err);
    if (cJSON_IsString(first) || cJSON_IsArray(first)) {
        if (first->next) {
            api_error_set(err, SS_EUNSUPPORTED, "prompt", "unsupported",
                          "several prompts in one request are not supported yet: send one "
                          "request per prompt");
            return SS_EUNSUPPORTED;
        }
        if (cJSON_IsString(first)) {
            *text = first->valuestring;
            return prompt_from_text(mi, first->valuestring, p, err);
        }
        return prompt_from_ids(mi, first, p, err);
    }
    api_error_set(err, SS_EINVAL, "prompt", "invalid_type",
                  "'prompt' must be a string or an array of token ids");
    return SS_EINVAL;
}

/* logprobs (integer 0..20 or null; false = null, true = 1), echo, best_of, suffix. */
static int parse_completion_only(const cJSON *root, struct api_completion *c,
                                 struct api_error *err) {
    int64_t i;
    int rc;
    const cJSON *v = api_field(root, "logprobs");
    if (v && cJSON_IsBool(v)) {
        c->p.logprobs = cJSON_IsTrue(v) ? 1 : -1;
    } else if (v) {
        if ((rc = api_get_integer(root, "logprobs", -1e18, 1e18, &i, err)) < 0)
            return rc;
        if (i < 0 || i > REQ_MAX_LOGPROBS)
            return api_range_error(err, "logprobs", "an integer between 0 and 20", (double)i);
        c->p.logprobs = (int)i;
    }
    if ((rc = api_get_bool(root, "echo", &c->echo, err)) < 0)
        return rc;
    c->p.prompt_logprobs = c->echo && c->p.logprobs >= 0;

    if ((rc = api_get_integer(root, "best_of", -1e18, 1e18, &i, err)) < 0)
        return rc;
    if (rc && i != c->n) {
        api_error_set(err, SS_EUNSUPPORTED, "best_of", "unsupported",
                      "best_of other than n is not supported (got best_of = %lld, n = %d)",
                      (long long)i, c->n);
        return SS_EUNSUPPORTED;
    }
    v = api_field(root, "suffix");
    if (v && !(cJSON_IsString(v) && v->valuestring[0] == '\0')) {
        api_error_set(err, SS_EUNSUPPORTED, "suffix", "unsupported",
                      "suffix is not supported");
        return SS_EUNSUPPORTED;
    }
    return 0;
}

/* The text echoed before each choice: the prompt as sent, or the token ids
 * decoded (special tokens skipped). */
static int make_echo(const struct api_model_info *mi, const char *text, struct api_completion *c,
                     struct api_error *err) {
    if (text)
        c->echo_text = strdup(text);
    else if (mi->tok)
        c->echo_text = tok_decode(mi->tok, c->p.prompt, c->p.n_prompt, 1);
    else
        c->echo_text = strdup("");
    if (!c->echo_text) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    c->echo_len = strlen(c->echo_text);
    return 0;
}

/* Everything after JSON decoding; cheap checks first, tokenization last. */
static int parse_fields(const struct api_model_info *mi, const cJSON *root,
                        struct api_completion *c, struct api_error *err) {
    int rc;
    if ((rc = api_parse_common(mi, root, c, err)) < 0)
        return rc;
    if ((rc = parse_completion_only(root, c, err)) < 0)
        return rc;
    const char *text;
    if ((rc = parse_prompt(mi, root, &c->p, &text, err)) < 0)
        return rc;
    if ((rc = api_parse_lengths(mi, root, "max_tokens", REQ_DEFAULT_MAX_TOKENS, c, err)) < 0)
        return rc;
    if (c->echo && (rc = make_echo(mi, text, c, err)) < 0)
        return rc;
    return 0;
}

int api_request_parse(const struct api_model_info *mi, const char *body, size_t len, int kind,
                      api_fields_fn fields, struct api_completion *out, struct api_error *err) {
    memset(out, 0, sizeof(*out));
    req_params_init(&out->p);
    out->kind = kind;
    out->n = 1;
    cJSON *root = api_parse_object(body, len, API_MAX_VALUES(mi), NULL, NULL, err);
    if (!root)
        return SS_EINVAL;
    int rc = fields(mi, root, out, err);
    cJSON_Delete(root);
    if (rc < 0)
        api_completion_free(out);
    return rc;
}

int api_completion_parse(const struct api_model_info *mi, const char *body, size_t len,
                         struct api_completion *out, struct api_error *err) {
    return api_request_parse(mi, body, len, API_KIND_COMPLETION, parse_fields, out, err);
}

void api_completion_free(struct api_completion *c) {
    if (!c)
        return;
    req_params_free(&c->p);
    free(c->echo_text);
    c->echo_text = NULL;
    c->echo_len = 0;
    api_tools_free(c->tools);
    c->tools = NULL;
}
