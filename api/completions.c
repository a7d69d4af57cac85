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

#define DEFAULT_MAX_TOKENS 16

static int empty_prompt(struct api_error *err) {
    api_error_set(err, SS_EINVAL, "prompt", "invalid_value", "'prompt' must not be empty");
    return SS_EINVAL;
}

/* Token ids used verbatim: integers in [0, n_vocab). */
static int prompt_from_ids(const struct api_model_info *mi, const cJSON *arr, struct req_params *p,
                           struct api_error *err) {
    int n = cJSON_GetArraySize(arr);
    if (n == 0)
        return empty_prompt(err);
    p->prompt = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->prompt) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    int k = 0;
    for (const cJSON *e = arr->child; e && k < n; e = e->next, k++) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble)) {
            api_error_set(err, SS_EINVAL, "prompt", "invalid_type",
                          "'prompt' token ids must be integers (element %d is not)", k);
            return SS_EINVAL;
        }
        double d = e->valuedouble;
        if (d < 0 || d >= (double)mi->n_vocab) {
            api_error_set(err, SS_EINVAL, "prompt", "invalid_value",
                          "token id %.0f at index %d is out of range: the vocabulary has %d "
                          "tokens (ids 0..%d)",
                          d, k, (int)mi->n_vocab, (int)mi->n_vocab - 1);
            return SS_EINVAL;
        }
        p->prompt[k] = (int32_t)d;
    }
    p->n_prompt = n;
    return 0;
}

static int prompt_from_text(const struct api_model_info *mi, const char *s, struct req_params *p,
                            struct api_error *err) {
    size_t len = strlen(s);
    if (len == 0)
        return empty_prompt(err);
    int add_bos = mi->tok ? tok_add_bos(mi->tok) : 0;
    return api_encode_text(mi, s, len, add_bos, 0, "prompt", &p->prompt, &p->n_prompt, err);
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
    if ((rc = api_parse_lengths(mi, root, "max_tokens", DEFAULT_MAX_TOKENS, c, err)) < 0)
        return rc;
    if (c->echo && (rc = make_echo(mi, text, c, err)) < 0)
        return rc;
    return 0;
}

int api_request_parse(const struct api_model_info *mi, const char *body, size_t len, int kind,
                      api_fields_fn fields, struct api_completion *out, struct api_error *err) {
    memset(out, 0, sizeof(*out));
    api_req_params_init(&out->p);
    out->kind = kind;
    out->n = 1;
    cJSON *root = api_parse_object(body, len, err);
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

/* ---- request parameters ---- */

void api_req_params_init(struct req_params *p) {
    memset(p, 0, sizeof(*p));
    p->max_tokens = DEFAULT_MAX_TOKENS;
    smp_params_default(&p->smp);
    p->repetition_penalty = 1.0f; /* off */
    p->logprobs = -1;             /* none */
}

void api_req_params_clear(struct req_params *p) {
    if (!p)
        return;
    free(p->prompt);
    p->prompt = NULL;
    p->n_prompt = 0;
    for (int i = 0; i < p->n_stop && i < REQ_MAX_STOP; i++) {
        free(p->stop[i]);
        p->stop[i] = NULL;
    }
    p->n_stop = 0;
    free(p->bias_ids);
    free(p->bias_vals);
    p->bias_ids = NULL;
    p->bias_vals = NULL;
    p->n_bias = 0;
}

int api_req_params_copy(struct req_params *dst, const struct req_params *src) {
    *dst = *src;
    dst->prompt = NULL;
    dst->bias_ids = NULL;
    dst->bias_vals = NULL;
    for (int i = 0; i < REQ_MAX_STOP; i++)
        dst->stop[i] = NULL;
    dst->n_stop = 0;
    dst->n_bias = 0;
    if (src->n_prompt > 0) {
        dst->prompt = malloc(sizeof(int32_t) * (size_t)src->n_prompt);
        if (!dst->prompt)
            goto oom;
        memcpy(dst->prompt, src->prompt, sizeof(int32_t) * (size_t)src->n_prompt);
    }
    for (int i = 0; i < src->n_stop && i < REQ_MAX_STOP; i++) {
        if (!(dst->stop[i] = strdup(src->stop[i])))
            goto oom;
        dst->n_stop = i + 1;
    }
    if (src->n_bias > 0) {
        dst->bias_ids = malloc(sizeof(int32_t) * (size_t)src->n_bias);
        dst->bias_vals = malloc(sizeof(float) * (size_t)src->n_bias);
        if (!dst->bias_ids || !dst->bias_vals)
            goto oom;
        memcpy(dst->bias_ids, src->bias_ids, sizeof(int32_t) * (size_t)src->n_bias);
        memcpy(dst->bias_vals, src->bias_vals, sizeof(float) * (size_t)src->n_bias);
        dst->n_bias = src->n_bias;
    }
    return 0;
oom:
    api_req_params_clear(dst);
    return SS_ENOMEM;
}

void api_completion_free(struct api_completion *c) {
    if (!c)
        return;
    api_req_params_clear(&c->p);
    free(c->echo_text);
    c->echo_text = NULL;
    c->echo_len = 0;
}
