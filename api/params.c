/* params.c - request fields shared by /v1/completions and /v1/chat/completions:
 * type and range checks of every sampling field, n, penalties, logit_bias,
 * stop strings, stream options, lengths (checked against the model by the
 * scheduler: sched_check_lengths) and text encoding. Pure functions; any thread.
 *
 * Ranges (OpenAI / vLLM): temperature [0, 2], top_p (0, 1], top_k -1 or >= 0
 * (0/-1 off), min_p [0, 1], presence/frequency_penalty [-2, 2],
 * repetition_penalty > 0, logit_bias values [-100, 100] with keys token ids
 * in [0, n_vocab), n [1, API_MAX_N], min_tokens [0, max_tokens].
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "engine/sampler.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

#define MAX_LOGIT_BIAS 1024 /* entries in one logit_bias object */

/* ---- field accessors ---- */

const cJSON *api_field(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

int api_get_number(const cJSON *obj, const char *name, double *out, struct api_error *err) {
    const cJSON *v = api_field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        api_error_set(err, SS_EINVAL, name, "invalid_type", "'%s' must be a number", name);
        return SS_EINVAL;
    }
    *out = v->valuedouble;
    return 1;
}

int api_get_integer(const cJSON *obj, const char *name, double lo, double hi, int64_t *out,
                    struct api_error *err) {
    double d;
    int rc = api_get_number(obj, name, &d, err);
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

int api_get_bool(const cJSON *obj, const char *name, int *out, struct api_error *err) {
    const cJSON *v = api_field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v)) {
        api_error_set(err, SS_EINVAL, name, "invalid_type", "'%s' must be a boolean", name);
        return SS_EINVAL;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

int api_range_error(struct api_error *err, const char *name, const char *range, double got) {
    api_error_set(err, SS_EINVAL, name, "invalid_value", "'%s' must be %s, got %g", name, range,
                  got);
    return SS_EINVAL;
}

/* One pass over the raw body, before cJSON sees it: a NUL inside a string
 * (raw, or written \u0000) would silently cut the C string cJSON hands out,
 * so it is refused; *n_values receives an upper bound of the values (commas
 * outside strings, plus one), which bounds cJSON's memory (a node per value). */
static int json_prescan(const char *b, size_t len, size_t *n_values) {
    size_t commas = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = b[i];
        if (ch == '\0')
            return -1;
        if (!in_str) {
            if (ch == '"')
                in_str = 1;
            else if (ch == ',')
                commas++;
            continue;
        }
        if (ch == '"') {
            in_str = 0;
        } else if (ch == '\\' && i + 1 < len) {
            if (b[i + 1] == 'u' && i + 5 < len && memcmp(b + i + 2, "0000", 4) == 0)
                return -1;
            i++; /* the escaped character (a quote or backslash among them) */
        }
    }
    *n_values = commas + 1;
    return 0;
}

cJSON *api_parse_object(const char *body, size_t len, size_t max_values, const char *param,
                        const char *too_many, struct api_error *err) {
    if (!body || len == 0) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json",
                      "the request body is empty: expected a JSON object");
        return NULL;
    }
    size_t n_values;
    if (json_prescan(body, len, &n_values) != 0) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_value",
                      "the request holds a NUL character (\\u0000) in a string, which is not "
                      "supported");
        return NULL;
    }
    if (max_values > 0 && n_values > max_values) {
        if (too_many)
            api_error_set(err, SS_EINVAL, param, "invalid_value", "%s", too_many);
        else
            api_error_set(err, SS_EINVAL, param, "invalid_value",
                          "the request holds too many JSON values: at most %zu", max_values);
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json", "the request body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        api_error_set(err, SS_EINVAL, NULL, "invalid_json",
                      "the request body must be a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int api_parse_model(const struct api_model_info *mi, const cJSON *root, struct api_error *err) {
    const cJSON *v = api_field(root, "model");
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

/* ---- sampling ---- */

static int parse_sampling(const cJSON *root, struct req_params *p, struct api_error *err) {
    double d;
    int64_t i;
    int rc;

    smp_params_default(&p->smp); /* OpenAI: temperature 1, everything else off */

    if ((rc = api_get_number(root, "temperature", &d, err)) < 0)
        return rc;
    if (rc && (d < 0.0 || d > 2.0))
        return api_range_error(err, "temperature", "between 0 and 2", d);
    if (rc)
        p->smp.temperature = (float)d;

    if ((rc = api_get_number(root, "top_p", &d, err)) < 0)
        return rc;
    if (rc && (d <= 0.0 || d > 1.0))
        return api_range_error(err, "top_p", "in (0, 1]", d);
    if (rc)
        p->smp.top_p = (float)d;

    if ((rc = api_get_integer(root, "top_k", -1e9, 1e9, &i, err)) < 0)
        return rc;
    if (rc && i < -1)
        return api_range_error(err, "top_k", "-1 (off) or at least 1", (double)i);
    if (rc)
        p->smp.top_k = i > 0 ? (int32_t)(i > INT32_MAX ? INT32_MAX : i) : 0; /* 0/-1: off */

    if ((rc = api_get_number(root, "min_p", &d, err)) < 0)
        return rc;
    if (rc && (d < 0.0 || d > 1.0))
        return api_range_error(err, "min_p", "between 0 and 1", d);
    if (rc)
        p->smp.min_p = (float)d;

    if ((rc = api_get_number(root, "seed", &d, err)) < 0)
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

static int parse_penalties(const cJSON *root, struct req_params *p, struct api_error *err) {
    double d;
    int rc;
    if ((rc = api_get_number(root, "presence_penalty", &d, err)) < 0)
        return rc;
    if (rc && (d < -2.0 || d > 2.0))
        return api_range_error(err, "presence_penalty", "between -2 and 2", d);
    if (rc)
        p->presence_penalty = (float)d;
    if ((rc = api_get_number(root, "frequency_penalty", &d, err)) < 0)
        return rc;
    if (rc && (d < -2.0 || d > 2.0))
        return api_range_error(err, "frequency_penalty", "between -2 and 2", d);
    if (rc)
        p->frequency_penalty = (float)d;
    if ((rc = api_get_number(root, "repetition_penalty", &d, err)) < 0)
        return rc;
    if (rc && (d <= 0.0 || d > 1e6))
        return api_range_error(err, "repetition_penalty", "greater than 0", d);
    if (rc)
        p->repetition_penalty = (float)d;
    return 0;
}

/* A logit_bias key: a token id written canonically in decimal ("123"; "0"),
 * no sign, spaces or leading zeros: "01" and "1" would otherwise be two
 * entries for one token whose biases add up past +-100. */
static int bias_key(const char *k, int32_t n_vocab, int32_t *id) {
    if (!k || !*k || strlen(k) > 10 || (k[0] == '0' && k[1] != '\0'))
        return -1;
    for (const char *c = k; *c; c++)
        if (*c < '0' || *c > '9')
            return -1;
    long long v = strtoll(k, NULL, 10);
    if (v < 0 || v >= n_vocab)
        return -1;
    *id = (int32_t)v;
    return 0;
}

/* logit_bias: {"token id": bias in [-100, 100], ...} */
static int parse_logit_bias(const struct api_model_info *mi, const cJSON *root,
                            struct req_params *p, struct api_error *err) {
    const cJSON *v = api_field(root, "logit_bias");
    if (!v)
        return 0;
    if (!cJSON_IsObject(v)) {
        api_error_set(err, SS_EINVAL, "logit_bias", "invalid_type",
                      "'logit_bias' must be an object mapping token ids to biases");
        return SS_EINVAL;
    }
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return 0;
    if (n > MAX_LOGIT_BIAS) {
        api_error_set(err, SS_EINVAL, "logit_bias", "invalid_value",
                      "'logit_bias' may hold at most %d entries, got %d", MAX_LOGIT_BIAS, n);
        return SS_EINVAL;
    }
    p->bias_ids = malloc(sizeof(int32_t) * (size_t)n);
    p->bias_vals = malloc(sizeof(float) * (size_t)n);
    if (!p->bias_ids || !p->bias_vals) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    int k = 0;
    for (const cJSON *e = v->child; e && k < n; e = e->next) {
        int32_t id;
        if (bias_key(e->string, mi->n_vocab, &id) != 0) {
            api_error_set(err, SS_EINVAL, "logit_bias", "invalid_value",
                          "'logit_bias' key '%.40s' is not a token id: keys must be decimal "
                          "integers in 0..%d without leading zeros",
                          e->string ? e->string : "", (int)mi->n_vocab - 1);
            return SS_EINVAL;
        }
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || e->valuedouble < -100.0 ||
            e->valuedouble > 100.0) {
            api_error_set(err, SS_EINVAL, "logit_bias", "invalid_value",
                          "'logit_bias' value for token %d must be a number between -100 and 100",
                          (int)id);
            return SS_EINVAL;
        }
        for (int j = 0; j < k; j++) { /* a JSON object may repeat a key (at most 1024 here) */
            if (p->bias_ids[j] == id) {
                api_error_set(err, SS_EINVAL, "logit_bias", "invalid_value",
                              "'logit_bias' names token %d twice", (int)id);
                return SS_EINVAL;
            }
        }
        p->bias_ids[k] = id;
        p->bias_vals[k] = (float)e->valuedouble;
        p->n_bias = ++k;
    }
    return 0;
}

/* stop: string or array of up to REQ_MAX_STOP strings of at most
 * REQ_MAX_STOP_LEN bytes; empty strings are ignored. One shared copy for all
 * the choices (struct req_stops). */
static int parse_stop(const cJSON *root, struct req_params *p, struct api_error *err) {
    const cJSON *v = api_field(root, "stop");
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
    const char *s[REQ_MAX_STOP];
    size_t len[REQ_MAX_STOP];
    int k = 0;
    const cJSON *e = one ? one : v->child;
    for (int i = 0; i < n && e; i++, e = one ? NULL : e->next) {
        if (!cJSON_IsString(e)) {
            api_error_set(err, SS_EINVAL, "stop", "invalid_type",
                          "'stop' must be a string or an array of strings");
            return SS_EINVAL;
        }
        size_t l = strlen(e->valuestring);
        if (l > REQ_MAX_STOP_LEN) {
            api_error_set(err, SS_EINVAL, "stop", "invalid_value",
                          "each 'stop' string may be at most %d bytes long, got %zu",
                          REQ_MAX_STOP_LEN, l);
            return SS_EINVAL;
        }
        if (l == 0)
            continue;
        s[k] = e->valuestring;
        len[k++] = l;
    }
    if (k == 0)
        return 0;
    p->stops = req_stops_new(s, len, k);
    if (!p->stops) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    return 0;
}

static int parse_stream(const cJSON *root, struct api_completion *c, struct api_error *err) {
    int rc = api_get_bool(root, "stream", &c->stream, err);
    if (rc < 0)
        return rc;
    const cJSON *so = api_field(root, "stream_options");
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
    rc = api_get_bool(so, "include_usage", &c->include_usage, err);
    if (rc < 0)
        snprintf(err->param, sizeof(err->param), "stream_options.include_usage");
    return rc < 0 ? rc : 0;
}

/* "speculative": true (the server's setting, the default), false (off for
 * this request), or {"n_max": K}: at most K draft tokens per step (0 = off,
 * at most REQ_SPEC_MAX_TOKENS). Speculation never changes the output, only
 * its speed (scheduler/spec.c). */
static int parse_speculative(const cJSON *root, struct req_params *p, struct api_error *err) {
    const cJSON *v = api_field(root, "speculative");
    if (!v)
        return 0;
    if (cJSON_IsBool(v)) {
        p->spec_max = cJSON_IsTrue(v) ? REQ_SPEC_DEFAULT : 0;
        return 0;
    }
    if (!cJSON_IsObject(v)) {
        api_error_set(err, SS_EINVAL, "speculative", "invalid_type",
                      "'speculative' must be a boolean or an object such as {\"n_max\": 3}");
        return SS_EINVAL;
    }
    for (const cJSON *f = v->child; f; f = f->next) {
        if (!f->string || strcmp(f->string, "n_max") != 0) {
            api_error_set(err, SS_EINVAL, "speculative", "invalid_value",
                          "'speculative' has an unknown field '%s' (known: n_max)",
                          f->string ? f->string : "");
            return SS_EINVAL;
        }
    }
    int64_t k;
    int rc = api_get_integer(v, "n_max", 0, REQ_SPEC_MAX_TOKENS, &k, err);
    if (rc < 0) {
        snprintf(err->param, sizeof(err->param), "speculative.n_max");
        return rc;
    }
    if (rc)
        p->spec_max = (int32_t)k;
    return 0;
}

int api_parse_common(const struct api_model_info *mi, const cJSON *root, struct api_completion *c,
                     struct api_error *err) {
    struct req_params *p = &c->p;
    int64_t i;
    int rc;
    if ((rc = api_parse_model(mi, root, err)) < 0)
        return rc;
    if ((rc = parse_stream(root, c, err)) < 0)
        return rc;
    c->n = 1;
    if ((rc = api_get_integer(root, "n", -1e18, 1e18, &i, err)) < 0)
        return rc;
    if (rc && (i < 1 || i > API_MAX_N)) {
        api_error_set(err, SS_EINVAL, "n", "invalid_value",
                      "'n' must be between 1 and %d, got %lld", API_MAX_N, (long long)i);
        return SS_EINVAL;
    }
    if (rc)
        c->n = (int)i;
    if ((rc = parse_sampling(root, p, err)) < 0)
        return rc;
    if ((rc = parse_penalties(root, p, err)) < 0)
        return rc;
    if ((rc = parse_logit_bias(mi, root, p, err)) < 0)
        return rc;
    if ((rc = api_get_bool(root, "ignore_eos", &p->ignore_eos, err)) < 0)
        return rc;
    /* vLLM's scheduling priority: lower first among waiting requests */
    if ((rc = api_get_integer(root, "priority", -2147483648.0, 2147483647.0, &i, err)) < 0)
        return rc;
    if (rc)
        p->priority = (int32_t)i;
    if ((rc = parse_stop(root, p, err)) < 0)
        return rc;
    if ((rc = parse_speculative(root, p, err)) < 0)
        return rc;
    return api_parse_structured(root, p, err);
}

/* ---- prompt text and lengths ---- */

int api_encode_text(const struct api_model_info *mi, const char *s, size_t len, int add_bos,
                    int parse_special, int64_t max_count, const char *param, int32_t **ids_out,
                    int32_t *n_out, struct api_error *err) {
    if (!mi->tok) {
        api_error_set(err, SS_EUNSUPPORTED, param, "unsupported",
                      "this model has no tokenizer: send the prompt as token ids");
        return SS_EUNSUPPORTED;
    }
    int64_t cap = (int64_t)len + 8;
    if (max_count > 0 && cap > max_count + 1)
        cap = max_count + 1; /* the encoder stops at max_count + 1 ids */
    for (int attempt = 0; attempt < 2; attempt++) {
        if (cap > INT32_MAX) {
            api_error_set(err, SS_ETOOLONG, param, "context_length_exceeded",
                          "the prompt is too long");
            return SS_ETOOLONG;
        }
        int32_t *ids = realloc(*ids_out, sizeof(int32_t) * (size_t)cap);
        if (!ids) {
            api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
            return SS_ENOMEM;
        }
        *ids_out = ids;
        int64_t n = tok_encode_max(mi->tok, s, len, add_bos, parse_special, ids, cap, max_count);
        if (n < 0) {
            api_error_set(err, (int)n, param, NULL, "could not tokenize the prompt: %s",
                          ss_strerror((int)n));
            return (int)n;
        }
        if (max_count > 0 && n > max_count) {
            api_error_set(err, SS_ETOOLONG, param, "context_length_exceeded",
                          "The prompt has more than %lld tokens but this model's context is %d "
                          "tokens; the prompt must leave room for at least one generated token",
                          (long long)max_count, mi->n_ctx);
            return SS_ETOOLONG;
        }
        if (n <= cap) {
            if (n == 0) {
                api_error_set(err, SS_EINVAL, param, "invalid_value",
                              "'%s' must not be empty", param);
                return SS_EINVAL;
            }
            *n_out = (int32_t)n;
            return 0;
        }
        cap = n;
    }
    api_error_set(err, SS_EINTERNAL, param, NULL, "tokenizer returned inconsistent lengths");
    return SS_EINTERNAL;
}

int api_ids_from_array(const struct api_model_info *mi, const cJSON *arr, const char *param, const char *what,
                       int32_t **ids_out, int32_t *n_out, struct api_error *err) {
    int n = cJSON_GetArraySize(arr);
    if (n == 0) {
        api_error_set(err, SS_EINVAL, param, "invalid_value", "%s must not be empty", what);
        return SS_EINVAL;
    }
    int32_t *ids = realloc(*ids_out, sizeof(int32_t) * (size_t)n);
    if (!ids) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    *ids_out = ids;
    int k = 0;
    for (const cJSON *e = arr->child; e && k < n; e = e->next, k++) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble)) {
            api_error_set(err, SS_EINVAL, param, "invalid_type",
                          "%s token ids must be integers (element %d is not)", what, k);
            return SS_EINVAL;
        }
        double d = e->valuedouble;
        if (d < INT32_MIN || d > INT32_MAX) {
            api_error_set(err, SS_EINVAL, param, "invalid_value",
                          "%s element %d (%.0f) is not a 32-bit token id", what, k, d);
            return SS_EINVAL;
        }
        ids[k] = (int32_t)d;
    }
    *n_out = n;
    struct sched_limits lim = api_limits(mi);
    char msg[sizeof(err->message) - 64];
    int rc = sched_check_prompt(&lim, ids, n, msg, sizeof(msg));
    if (rc < 0)
        api_error_set(err, rc, param, "invalid_value", "%s: %s", what, msg);
    return rc;
}

struct sched_limits api_limits(const struct api_model_info *mi) {
    struct sched_limits lim = {mi->n_ctx, mi->n_vocab, mi->kv_pages};
    return lim;
}

int api_check_error(struct api_error *err, int rc, const char *param, const char *msg) {
    if (rc < 0)
        api_error_set(err, rc, param,
                      rc == SS_ETOOLONG ? "context_length_exceeded" : "invalid_value", "%s", msg);
    return rc;
}

int api_parse_lengths(const struct api_model_info *mi, const cJSON *root, const char *mt_name,
                      int default_max, struct api_completion *c, struct api_error *err) {
    struct req_params *p = &c->p;
    int64_t mt = 0, mn = 0;
    int rc;
    if ((rc = api_get_integer(root, mt_name, -1e18, 1e18, &mt, err)) < 0)
        return rc;
    if (rc && mt == 0 && c->echo) {
        /* vLLM: echo with max_tokens 0 scores the prompt and generates nothing;
         * the scheduler needs one token, which the server drops */
        c->prompt_only = 1;
        mt = 1;
    } else if (rc && (mt < 1 || mt > mi->n_ctx)) {
        api_error_set(err, SS_EINVAL, mt_name, "invalid_value",
                      "'%s' must be between 1 and %d (the context size), got %lld%s", mt_name,
                      mi->n_ctx, (long long)mt,
                      mt == 0 && c->kind == API_KIND_COMPLETION ? " (0 needs echo)" : "");
        return SS_EINVAL;
    }
    c->max_tokens_given = rc;
    int room = mi->n_ctx - p->n_prompt;
    if (c->max_tokens_given)
        p->max_tokens = (int32_t)mt;
    else /* the room left, at most default_max (a prompt with no room fails below) */
        p->max_tokens = room < 1 ? 1 : default_max > 0 && room > default_max ? default_max : room;
    /* The context and the KV pool: the scheduler's check. */
    struct sched_limits lim = api_limits(mi);
    char msg[sizeof(err->message)];
    int field;
    rc = sched_check_lengths(&lim, p->n_prompt, p->max_tokens, msg, sizeof(msg), &field);
    if (rc < 0)
        return api_check_error(err, rc,
                               field == SCHED_FIELD_MAX_TOKENS ? mt_name
                               : c->kind == API_KIND_CHAT      ? "messages"
                                                               : "prompt",
                               msg);
    if ((rc = api_get_integer(root, "min_tokens", -1e18, 1e18, &mn, err)) < 0)
        return rc;
    if (rc && (mn < 0 || mn > (c->prompt_only ? 0 : p->max_tokens))) {
        api_error_set(err, SS_EINVAL, "min_tokens", "invalid_value",
                      "'min_tokens' must be between 0 and max_tokens (%d), got %lld",
                      (int)p->max_tokens, (long long)mn);
        return SS_EINVAL;
    }
    if (rc)
        p->min_tokens = (int32_t)mn;
    return 0;
}
