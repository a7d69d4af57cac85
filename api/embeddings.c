/* embeddings.c - POST /v1/embeddings: request validation and the response
 * body (float lists or base64 of little-endian float32, as the OpenAI SDK
 * decodes them).
 *
 * Pure functions; any thread. Each input becomes one struct req_params (a
 * prefill-only sequence: pooling set, max_tokens 0) that the server submits
 * like one choice of a completion; the scheduler pools and L2-normalises
 * (scheduler/seq.c), this file only truncates for "dimensions".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"

void api_embed_free(struct api_embed *e) {
    if (!e)
        return;
    for (int i = 0; i < e->n; i++)
        req_params_free(&e->p[i]);
    free(e->p);
    memset(e, 0, sizeof(*e));
}

static int input_error(struct api_error *err, const char *code, const char *fmt, int i) {
    api_error_set(err, SS_EINVAL, "input", code, fmt, i);
    return SS_EINVAL;
}

/* One string input: tokenized as a /v1/completions prompt is. */
static int input_text(const struct api_model_info *mi, const cJSON *v, int i, struct req_params *p,
                      struct api_error *err) {
    size_t len = strlen(v->valuestring);
    if (len == 0)
        return input_error(err, "invalid_value", "input[%d] is an empty string", i);
    int add_bos = mi->tok ? tok_add_bos(mi->tok) : 0;
    /* n_ctx tokens fit (nothing is generated); more are refused before the
     * whole string is tokenised */
    return api_encode_text(mi, v->valuestring, len, add_bos, 0, (int64_t)mi->n_ctx, "input",
                           &p->prompt, &p->n_prompt, err);
}

/* Element i of "input" (or the whole of it, i = 0, for a single input) into
 * p: kind is the JSON type every input must have (that of the first). */
static int input_one(const struct api_model_info *mi, const cJSON *v, int i, int kind, struct req_params *p,
                     struct api_error *err) {
    if (kind == cJSON_String) {
        if (!cJSON_IsString(v))
            return input_error(err, "invalid_type", "input[%d] is not a string (the first input is)", i);
        return input_text(mi, v, i, p, err);
    }
    if (!cJSON_IsArray(v))
        return input_error(err, "invalid_type", "input[%d] is not an array of token ids (the first input is)",
                           i);
    char what[32];
    snprintf(what, sizeof(what), "input[%d]", i);
    return api_ids_from_array(mi, v, "input", what, &p->prompt, &p->n_prompt, err);
}

/* The inputs of "input": a string, [strings], [ids] or [[ids]]. Fills e->p,
 * e->n. */
static int parse_inputs(const struct api_model_info *mi, const struct api_embed_config *ec, const cJSON *root,
                        struct api_embed *e, struct api_error *err) {
    const cJSON *v = api_field(root, "input");
    if (!v) {
        api_error_set(err, SS_EINVAL, "input", "missing_required_parameter", "'input' is required");
        return SS_EINVAL;
    }
    if (!cJSON_IsString(v) && !cJSON_IsArray(v)) {
        api_error_set(err, SS_EINVAL, "input", "invalid_type",
                      "'input' must be a string, an array of strings, an array of token ids or an "
                      "array of arrays of token ids");
        return SS_EINVAL;
    }
    /* single: a string or one list of ids; else one input per element */
    int single = cJSON_IsString(v) || (v->child && cJSON_IsNumber(v->child));
    int n = single ? 1 : cJSON_GetArraySize(v);
    if (n == 0) {
        api_error_set(err, SS_EINVAL, "input", "invalid_value", "'input' must not be an empty array");
        return SS_EINVAL;
    }
    int cap = ec->max_inputs > 0 && ec->max_inputs < API_MAX_EMBED_INPUTS ? ec->max_inputs : API_MAX_EMBED_INPUTS;
    if (n > cap) {
        api_error_set(err, SS_EINVAL, "input", "too_many_inputs",
                      "'input' has %d inputs; this server takes at most %d per request", n, cap);
        return SS_EINVAL;
    }
    int kind = single ? (cJSON_IsString(v) ? cJSON_String : cJSON_Array) : (v->child->type & 0xff);
    if (!single && kind != cJSON_String && kind != cJSON_Array)
        return input_error(err, "invalid_type",
                           "input[%d] must be a string or an array of token ids", 0);
    e->p = calloc((size_t)n, sizeof(*e->p));
    if (!e->p) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    struct sched_limits lim = api_limits(mi);
    const cJSON *el = single ? v : v->child;
    for (int i = 0; i < n; i++, el = el->next) {
        struct req_params *p = &e->p[i];
        req_params_init(p);
        e->n = i + 1; /* freed from here on */
        p->max_tokens = 0;
        p->pooling = ec->pooling;
        int rc = input_one(mi, el, i, kind, p, err);
        if (rc < 0)
            return rc;
        char msg[sizeof(err->message) - 16];
        int field;
        rc = sched_check_params(&lim, p, msg, sizeof(msg), &field);
        if (rc < 0) {
            api_error_set(err, rc, "input", rc == SS_ETOOLONG ? "context_length_exceeded" : "invalid_value",
                          "input[%d]: %s", i, msg);
            return rc;
        }
        e->n_prompt += p->n_prompt;
    }
    return 0;
}

/* encoding_format and dimensions. */
static int parse_format(const struct api_embed_config *ec, const cJSON *root, struct api_embed *e,
                        struct api_error *err) {
    const cJSON *f = api_field(root, "encoding_format");
    e->format = API_EMBD_FLOAT;
    if (f) {
        if (cJSON_IsString(f) && strcmp(f->valuestring, "base64") == 0) {
            e->format = API_EMBD_BASE64;
        } else if (!cJSON_IsString(f) || strcmp(f->valuestring, "float") != 0) {
            api_error_set(err, SS_EINVAL, "encoding_format", "invalid_value",
                          "'encoding_format' must be \"float\" or \"base64\"");
            return SS_EINVAL;
        }
    }
    e->dimensions = ec->n_embd;
    int64_t k;
    int rc = api_get_integer(root, "dimensions", -1e18, 1e18, &k, err);
    if (rc < 0)
        return rc;
    if (rc && (k < 1 || k > ec->n_embd)) {
        api_error_set(err, SS_EINVAL, "dimensions", "invalid_value",
                      "'dimensions' must be between 1 and %d (this model's embedding size), got %lld",
                      (int)ec->n_embd, (long long)k);
        return SS_EINVAL;
    }
    if (rc)
        e->dimensions = (int)k;
    return 0;
}

int api_embed_parse(const struct api_model_info *mi, const struct api_embed_config *ec, const char *body,
                    size_t len, struct api_embed *out, struct api_error *err) {
    memset(out, 0, sizeof(*out));
    if (!ec || ec->n_embd < 1 ||
        (ec->pooling != ENG_POOL_MEAN && ec->pooling != ENG_POOL_CLS && ec->pooling != ENG_POOL_LAST)) {
        api_error_set(err, SS_EUNSUPPORTED, NULL, "unsupported", "this server does not serve embeddings");
        return SS_EUNSUPPORTED;
    }
    /* every input may be a context of ids: bound the values before parsing */
    size_t max_values = (size_t)(ec->max_inputs > 0 ? ec->max_inputs : API_MAX_EMBED_INPUTS) *
                            (size_t)(mi->n_ctx > 0 ? mi->n_ctx + 1 : 1) + 65536;
    cJSON *root = api_parse_object(body, len, max_values, "input", "too many values in input",
                                   err);
    if (!root)
        return SS_EINVAL;
    int rc = api_parse_model(mi, root, err);
    if (rc >= 0)
        rc = parse_format(ec, root, out, err);
    if (rc >= 0)
        rc = parse_inputs(mi, ec, root, out, err);
    cJSON_Delete(root);
    if (rc < 0) {
        api_embed_free(out);
        return rc;
    }
    return 0;
}

/* ---- output ---- */

int api_buf_base64(struct api_buf *b, const void *p, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = p;
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        q[0] = tab[(v >> 18) & 63];
        q[1] = tab[(v >> 12) & 63];
        q[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        q[3] = i + 2 < n ? tab[v & 63] : '=';
        if (api_buf_append(b, q, 4) < 0)
            return SS_ENOMEM;
    }
    return 0;
}

/* The answered vector: the first k components, re-normalised when k < n_embd
 * (all of it is written unchanged otherwise, so the bits are the scheduler's). */
static void truncate_vec(const float *v, int32_t n_embd, int k, float *out) {
    double ss = 0.0;
    for (int j = 0; j < k; j++)
        ss += (double)v[j] * v[j];
    double inv = k < n_embd && ss > 0.0 ? 1.0 / sqrt(ss) : 1.0;
    for (int j = 0; j < k; j++)
        out[j] = k < n_embd ? (float)(v[j] * inv) : v[j];
}

static void put_vec(struct api_buf *b, const float *v, int k, int format) {
    if (format == API_EMBD_BASE64) {
        unsigned char *bytes = malloc((size_t)k * 4);
        if (!bytes) {
            b->oom = 1;
            return;
        }
        for (int j = 0; j < k; j++) { /* little-endian whatever the host */
            uint32_t u;
            memcpy(&u, &v[j], 4);
            for (int s = 0; s < 4; s++)
                bytes[(size_t)j * 4 + (size_t)s] = (unsigned char)(u >> (8 * s));
        }
        api_buf_puts(b, "\"");
        api_buf_base64(b, bytes, (size_t)k * 4);
        api_buf_puts(b, "\"");
        free(bytes);
        return;
    }
    api_buf_puts(b, "[");
    for (int j = 0; j < k; j++) /* the scheduler hands finite values only */
        api_buf_printf(b, j ? ",%.9g" : "%.9g", (double)v[j]);
    api_buf_puts(b, "]");
}

int api_embed_json(struct api_buf *b, const char *model, const struct api_embed *e, const float *const *vecs,
                   int32_t n_embd) {
    int k = e->dimensions > 0 && e->dimensions <= n_embd ? e->dimensions : n_embd;
    float *tmp = malloc(sizeof(float) * (size_t)(k > 0 ? k : 1));
    if (!tmp)
        return SS_ENOMEM;
    api_buf_puts(b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < e->n; i++) {
        truncate_vec(vecs[i], n_embd, k, tmp);
        api_buf_printf(b, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        put_vec(b, tmp, k, e->format);
        api_buf_puts(b, "}");
    }
    api_buf_puts(b, "],\"model\":");
    api_buf_json_str(b, model ? model : "", model ? strlen(model) : 0);
    api_buf_printf(b, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}", (long long)e->n_prompt,
                   (long long)e->n_prompt);
    free(tmp);
    return b->oom ? SS_ENOMEM : 0;
}
