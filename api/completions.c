/* completions.c - POST /v1/completions: request validation and output shapes.
 *
 * Pure functions; any thread. Parsing uses cJSON; every field is type-checked
 * and range-checked, and each error names the field in "param". Unknown fields
 * are ignored (as OpenAI and vLLM do); known fields with values we cannot honour
 * yet (n > 1, echo, logprobs, penalties, logit_bias, suffix, best_of) are
 * rejected with a 400 rather than silently ignored.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "engine/sampler.h"
#include "engine/ss_error.h"
#include "engine/tokenizer.h"

#define DEFAULT_MAX_TOKENS 16

/* ---- field accessors: absent and null both mean "not given" (return 0) ---- */

static const cJSON *field(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Returns 1 and sets *out if present, 0 if absent, SS_EINVAL (err set) if not a number. */
static int get_number(const cJSON *obj, const char *name, double *out, struct api_error *err) {
    const cJSON *v = field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        api_error_set(err, SS_EINVAL, name, "invalid_type", "'%s' must be a number", name);
        return SS_EINVAL;
    }
    *out = v->valuedouble;
    return 1;
}

/* Integer in [lo, hi] (as doubles; values beyond 2^53 lose precision). */
static int get_integer(const cJSON *obj, const char *name, double lo, double hi, int64_t *out,
                       struct api_error *err) {
    double d;
    int rc = get_number(obj, name, &d, err);
    if (rc <= 0)
        return rc;
    if (d != floor(d)) {
        api_error_set(err, SS_EINVAL, name, "invalid_type", "'%s' must be an integer", name);
        return SS_EINVAL;
    }
    if (d < lo || d > hi) {
        api_error_set(err, SS_EINVAL, name, "invalid_value",
                      "'%s' must be between %.0f and %.0f, got %.0f", name, lo, hi, d);
        return SS_EINVAL;
    }
    *out = (int64_t)d;
    return 1;
}

static int get_bool(const cJSON *obj, const char *name, int *out, struct api_error *err) {
    const cJSON *v = field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v)) {
        api_error_set(err, SS_EINVAL, name, "invalid_type", "'%s' must be a boolean", name);
        return SS_EINVAL;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

static int range_error(struct api_error *err, const char *name, const char *range, double got) {
    api_error_set(err, SS_EINVAL, name, "invalid_value", "'%s' must be %s, got %g", name, range,
                  got);
    return SS_EINVAL;
}

static int unsupported(struct api_error *err, const char *name, const char *what) {
    api_error_set(err, SS_EUNSUPPORTED, name, "unsupported", "%s is not supported yet", what);
    return SS_EUNSUPPORTED;
}

/* ---- sampling fields ---- */

static int parse_sampling(const cJSON *root, struct req_params *p, struct api_error *err) {
    double d;
    int64_t i;
    int rc;

    /* defaults (OpenAI): temperature 1, everything else off */
    smp_params_default(&p->smp);

    if ((rc = get_number(root, "temperature", &d, err)) < 0)
        return rc;
    if (rc && (d < 0.0 || d > 2.0))
        return range_error(err, "temperature", "between 0 and 2", d);
    if (rc)
        p->smp.temperature = (float)d;

    if ((rc = get_number(root, "top_p", &d, err)) < 0)
        return rc;
    if (rc && (d <= 0.0 || d > 1.0))
        return range_error(err, "top_p", "in (0, 1]", d);
    if (rc)
        p->smp.top_p = (float)d;

    if ((rc = get_integer(root, "top_k", -1e9, 1e9, &i, err)) < 0)
        return rc;
    if (rc && i < -1)
        return range_error(err, "top_k", "-1 (off) or at least 1", (double)i);
    if (rc)
        p->smp.top_k = i > 0 ? (int32_t)(i > INT32_MAX ? INT32_MAX : i) : 0; /* 0/-1: off */

    if ((rc = get_number(root, "min_p", &d, err)) < 0)
        return rc;
    if (rc && (d < 0.0 || d > 1.0))
        return range_error(err, "min_p", "between 0 and 1", d);
    if (rc)
        p->smp.min_p = (float)d;

    if ((rc = get_number(root, "seed", &d, err)) < 0)
        return rc;
    if (rc) {
        if (d != floor(d) || d < -9223372036854775808.0 || d >= 18446744073709551616.0) {
            api_error_set(err, SS_EINVAL, "seed", "invalid_value",
                          "'seed' must be an integer between -2^63 and 2^64-1");
            return SS_EINVAL;
        }
        /* negative seeds wrap to their two's complement, as a 64-bit RNG seed */
        p->smp.seed = d >= 0 ? (uint64_t)d : (uint64_t)(int64_t)d;
        p->smp.has_seed = 1;
    }
    return 0;
}

/* Features that are rejected unless left at their defaults. */
static int parse_unsupported(const cJSON *root, struct api_error *err) {
    int64_t i;
    double d;
    int b = 0, rc;

    if ((rc = get_integer(root, "n", -1e18, 1e18, &i, err)) < 0)
        return rc;
    if (rc && i < 1)
        return range_error(err, "n", "at least 1", (double)i);
    if (rc && i > 1) {
        api_error_set(err, SS_EUNSUPPORTED, "n", "unsupported",
                      "n > 1 is not supported yet (got n = %lld): send one request per completion",
                      (long long)i);
        return SS_EUNSUPPORTED;
    }
    if ((rc = get_integer(root, "best_of", -1e18, 1e18, &i, err)) < 0)
        return rc;
    if (rc && i != 1)
        return unsupported(err, "best_of", "best_of other than 1");

    if ((rc = get_bool(root, "echo", &b, err)) < 0)
        return rc;
    if (rc && b)
        return unsupported(err, "echo", "echo");

    const cJSON *v = field(root, "logprobs");
    if (v && !cJSON_IsFalse(v)) {
        if (!cJSON_IsNumber(v) && !cJSON_IsTrue(v)) {
            api_error_set(err, SS_EINVAL, "logprobs", "invalid_type",
                          "'logprobs' must be an integer or null");
            return SS_EINVAL;
        }
        return unsupported(err, "logprobs", "logprobs");
    }

    static const char *const penalties[] = {"frequency_penalty", "presence_penalty"};
    for (int k = 0; k < 2; k++) {
        if ((rc = get_number(root, penalties[k], &d, err)) < 0)
            return rc;
        if (rc && d != 0.0)
            return unsupported(err, penalties[k], penalties[k]);
    }
    if ((rc = get_number(root, "repetition_penalty", &d, err)) < 0)
        return rc;
    if (rc && d != 1.0)
        return unsupported(err, "repetition_penalty", "repetition_penalty");

    v = field(root, "logit_bias");
    if (v && !(cJSON_IsObject(v) && v->child == NULL))
        return unsupported(err, "logit_bias", "logit_bias");
    v = field(root, "suffix");
    if (v && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
        return unsupported(err, "suffix", "suffix");
    return 0;
}

/* stop: string or array of up to REQ_MAX_STOP strings; empty strings are ignored. */
static int parse_stop(const cJSON *root, struct req_params *p, struct api_error *err) {
    const cJSON *v = field(root, "stop");
    if (!v)
        return 0;
    const cJSON *one = NULL;
    int n = 0;
    if (cJSON_IsString(v)) {
        one = v;
        n = 1;
    } else if (cJSON_IsArray(v)) {
        n = cJSON_GetArraySize(v);
        if (n > REQ_MAX_STOP) {
            api_error_set(err, SS_EINVAL, "stop", "invalid_value",
                          "'stop' may hold at most %d strings, got %d", REQ_MAX_STOP, n);
            return SS_EINVAL;
        }
    } else {
        api_error_set(err, SS_EINVAL, "stop", "invalid_type",
                      "'stop' must be a string or an array of strings");
        return SS_EINVAL;
    }
    const cJSON *e = one ? one : v->child;
    for (int k = 0; k < n && e; k++, e = one ? NULL : e->next) {
        if (!cJSON_IsString(e)) {
            api_error_set(err, SS_EINVAL, "stop", "invalid_type",
                          "'stop' must be a string or an array of strings");
            return SS_EINVAL;
        }
        if (e->valuestring[0] == '\0')
            continue;
        char *s = strdup(e->valuestring);
        if (!s) {
            api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
            return SS_ENOMEM;
        }
        p->stop[p->n_stop++] = s;
    }
    return 0;
}

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
    if (!mi->tok) {
        api_error_set(err, SS_EUNSUPPORTED, "prompt", "unsupported",
                      "this model has no tokenizer: send the prompt as token ids");
        return SS_EUNSUPPORTED;
    }
    int add_bos = tok_add_bos(mi->tok);
    int64_t cap = (int64_t)len + 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (cap > INT32_MAX) {
            api_error_set(err, SS_ETOOLONG, "prompt", "context_length_exceeded",
                          "the prompt is too long");
            return SS_ETOOLONG;
        }
        int32_t *ids = realloc(p->prompt, sizeof(int32_t) * (size_t)cap);
        if (!ids) {
            api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
            return SS_ENOMEM;
        }
        p->prompt = ids;
        int64_t n = tok_encode(mi->tok, s, len, add_bos, 0, ids, cap);
        if (n < 0) {
            api_error_set(err, (int)n, "prompt", NULL, "could not tokenize the prompt: %s",
                          ss_strerror((int)n));
            return (int)n;
        }
        if (n <= cap) {
            if (n == 0)
                return empty_prompt(err);
            p->n_prompt = (int32_t)n;
            return 0;
        }
        cap = n;
    }
    api_error_set(err, SS_EINTERNAL, "prompt", NULL, "tokenizer returned inconsistent lengths");
    return SS_EINTERNAL;
}

/* prompt: "text" | ["text"] | [ids...] | [[ids...]] */
static int parse_prompt(const struct api_model_info *mi, const cJSON *root, struct req_params *p,
                        struct api_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!v || cJSON_IsNull(v)) {
        api_error_set(err, SS_EINVAL, "prompt", "missing_required_parameter",
                      "'prompt' is required");
        return SS_EINVAL;
    }
    if (cJSON_IsString(v))
        return prompt_from_text(mi, v->valuestring, p, err);
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
        return cJSON_IsString(first) ? prompt_from_text(mi, first->valuestring, p, err)
                                     : prompt_from_ids(mi, first, p, err);
    }
    api_error_set(err, SS_EINVAL, "prompt", "invalid_type",
                  "'prompt' must be a string or an array of token ids");
    return SS_EINVAL;
}

static int parse_model(const struct api_model_info *mi, const cJSON *root, struct api_error *err) {
    const cJSON *v = field(root, "model");
    if (!v)
        return 0;
    if (!cJSON_IsString(v)) {
        api_error_set(err, SS_EINVAL, "model", "invalid_type", "'model' must be a string");
        return SS_EINVAL;
    }
    if (!mi->name || strcmp(v->valuestring, mi->name) != 0) {
        api_error_set(err, SS_ENOTFOUND, "model", "model_not_found",
                      "The model '%.100s' does not exist: this server serves '%.100s'",
                      v->valuestring, mi->name ? mi->name : "");
        return SS_ENOTFOUND;
    }
    return 0;
}

static int parse_stream(const cJSON *root, struct api_completion *c, struct api_error *err) {
    int rc = get_bool(root, "stream", &c->stream, err);
    if (rc < 0)
        return rc;
    const cJSON *so = field(root, "stream_options");
    if (!so)
        return 0;
    if (!cJSON_IsObject(so)) {
        api_error_set(err, SS_EINVAL, "stream_options", "invalid_type",
                      "'stream_options' must be an object");
        return SS_EINVAL;
    }
    if (!c->stream) {
        api_error_set(err, SS_EINVAL, "stream_options", "invalid_value",
                      "'stream_options' is only allowed when 'stream' is true");
        return SS_EINVAL;
    }
    rc = get_bool(so, "include_usage", &c->include_usage, err);
    if (rc < 0)
        snprintf(err->param, sizeof(err->param), "stream_options.include_usage");
    return rc < 0 ? rc : 0;
}

/* Everything after JSON decoding; cheap checks first, tokenization last. */
static int parse_fields(const struct api_model_info *mi, const cJSON *root,
                        struct api_completion *c, struct api_error *err) {
    struct req_params *p = &c->p;
    int64_t mt = 0;
    int rc;

    if ((rc = parse_model(mi, root, err)) < 0)
        return rc;
    if ((rc = parse_stream(root, c, err)) < 0)
        return rc;
    if ((rc = parse_unsupported(root, err)) < 0)
        return rc;
    if ((rc = parse_sampling(root, p, err)) < 0)
        return rc;
    if ((rc = get_integer(root, "max_tokens", -1e18, 1e18, &mt, err)) < 0)
        return rc;
    if (rc && (mt < 1 || mt > mi->n_ctx)) {
        api_error_set(err, SS_EINVAL, "max_tokens", "invalid_value",
                      "'max_tokens' must be between 1 and %d (the context size), got %lld",
                      mi->n_ctx, (long long)mt);
        return SS_EINVAL;
    }
    c->max_tokens_given = rc;
    if ((rc = get_bool(root, "ignore_eos", &p->ignore_eos, err)) < 0)
        return rc;
    if ((rc = parse_stop(root, p, err)) < 0)
        return rc;
    if ((rc = parse_prompt(mi, root, p, err)) < 0)
        return rc;

    if (p->n_prompt >= mi->n_ctx) {
        api_error_set(err, SS_ETOOLONG, "prompt", "context_length_exceeded",
                      "The prompt has %d tokens but this model's context is %d tokens; the "
                      "prompt must leave room for at least one generated token",
                      (int)p->n_prompt, mi->n_ctx);
        return SS_ETOOLONG;
    }
    if (c->max_tokens_given) {
        if ((int64_t)p->n_prompt + mt > mi->n_ctx) {
            api_error_set(err, SS_ETOOLONG, "max_tokens", "context_length_exceeded",
                          "This model's maximum context length is %d tokens, but %lld were "
                          "requested (%d in the prompt, %lld in max_tokens); reduce the prompt "
                          "or max_tokens",
                          mi->n_ctx, (long long)p->n_prompt + mt, (int)p->n_prompt,
                          (long long)mt);
            return SS_ETOOLONG;
        }
        p->max_tokens = (int32_t)mt;
    } else {
        int room = mi->n_ctx - p->n_prompt;
        p->max_tokens = room < DEFAULT_MAX_TOKENS ? room : DEFAULT_MAX_TOKENS;
    }
    return 0;
}

void api_req_params_init(struct req_params *p) {
    memset(p, 0, sizeof(*p));
    p->max_tokens = DEFAULT_MAX_TOKENS;
    smp_params_default(&p->smp);
    p->repetition_penalty = 1.0f; /* off */
    p->logprobs = -1;             /* none */
}

int api_completion_parse(const struct api_model_info *mi, const char *body, size_t len,
                         struct api_completion *out, struct api_error *err) {
    memset(out, 0, sizeof(*out));
    api_req_params_init(&out->p);
    if (!body || len == 0) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json",
                      "the request body is empty: expected a JSON object");
        return SS_EINVAL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json",
                      "the request body is not valid JSON");
        return SS_EINVAL;
    }
    int rc;
    if (!cJSON_IsObject(root)) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json",
                      "the request body must be a JSON object");
        rc = SS_EINVAL;
    } else {
        rc = parse_fields(mi, root, out, err);
    }
    cJSON_Delete(root);
    if (rc < 0)
        api_completion_free(out);
    return rc;
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

void api_completion_free(struct api_completion *c) {
    if (c)
        api_req_params_clear(&c->p);
}

/* ---- output ---- */

const char *api_finish_reason(int finish) {
    switch (finish) {
    case REQ_FINISH_STOP: return "stop";
    case REQ_FINISH_LENGTH: return "length";
    default: return NULL;
    }
}

/* {"id":..,"object":"text_completion","created":..,"model":.., */
static void meta_head(struct api_buf *b, const struct api_completion_meta *m) {
    api_buf_puts(b, "{\"id\":");
    api_buf_json_str(b, m->id, strlen(m->id));
    api_buf_printf(b, ",\"object\":\"text_completion\",\"created\":%lld,\"model\":",
                   (long long)m->created);
    api_buf_json_str(b, m->model, strlen(m->model));
}

static void choice(struct api_buf *b, const char *text, size_t len, int finish) {
    api_buf_puts(b, "{\"index\":0,\"text\":");
    api_buf_json_str(b, text ? text : "", text ? len : 0);
    const char *fr = api_finish_reason(finish);
    api_buf_puts(b, ",\"logprobs\":null,\"finish_reason\":");
    if (fr)
        api_buf_printf(b, "\"%s\"}", fr);
    else
        api_buf_puts(b, "null}");
}

static void usage(struct api_buf *b, int32_t n_prompt, int32_t n_gen) {
    api_buf_printf(b,
                   "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                   "\"total_tokens\":%lld}",
                   (int)n_prompt, (int)n_gen, (long long)n_prompt + n_gen);
}

int api_completion_json(struct api_buf *b, const struct api_completion_meta *m, const char *text,
                        size_t len, int finish, int32_t n_prompt, int32_t n_gen) {
    meta_head(b, m);
    api_buf_puts(b, ",\"choices\":[");
    choice(b, text, len, finish);
    api_buf_puts(b, "],");
    usage(b, n_prompt, n_gen);
    api_buf_puts(b, "}");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_chunk(struct api_buf *b, const struct api_completion_meta *m, const char *text,
                  size_t len, int finish, int with_usage_null) {
    api_buf_puts(b, "data: ");
    meta_head(b, m);
    api_buf_puts(b, ",\"choices\":[");
    choice(b, text, len, finish);
    api_buf_puts(b, with_usage_null ? "],\"usage\":null}\n\n" : "]}\n\n");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_usage(struct api_buf *b, const struct api_completion_meta *m, int32_t n_prompt,
                  int32_t n_gen) {
    api_buf_puts(b, "data: ");
    meta_head(b, m);
    api_buf_puts(b, ",\"choices\":[],");
    usage(b, n_prompt, n_gen);
    api_buf_puts(b, "}\n\n");
    return b->oom ? SS_ENOMEM : 0;
}
