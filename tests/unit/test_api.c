/* test_api.c - the OpenAI protocol layer without a network: request validation
 * (every field, every error status and shape), routing, API keys, the JSON /
 * SSE bytes produced (n > 1, logprobs, echo, chat). Outputs are checked by
 * parsing them back with cJSON. Chat templates, chat requests and /tokenize are
 * in test_api_chat.c, the Prometheus text of /metrics in test_api_metrics.c.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "tools/genmodel.h"
#include "testutil.h"
#include "tu_check.h"

/* A model with no tokenizer: token-id prompts only. */
static struct api_model_info mi_ids(void) {
    struct api_model_info mi = {"tiny", 64, 100, NULL, 1700000000, API_TMPL_NONE, 0, 0};
    return mi;
}

/* Parses body; returns rc. */
static int parse(const struct api_model_info *mi, const char *body, struct api_completion *c,
                 struct api_error *e) {
    memset(e, 0, sizeof(*e));
    return api_completion_parse(mi, body, strlen(body), c, e);
}

/* Expects a failure with status and param ("" = null). */
static void expect_err(const char *body, int status, const char *param) {
    struct api_model_info mi = mi_ids();
    struct api_completion c;
    struct api_error e;
    int rc = parse(&mi, body, &c, &e);
    ck_assert_msg(rc < 0, "accepted: %s", body);
    ck_assert_msg(e.status == status, "%s: status %d, want %d (%s)", body, e.status, status,
                  e.message);
    ck_assert_msg(strcmp(e.param, param) == 0, "%s: param '%s', want '%s'", body, e.param, param);
    ck_assert_msg(e.message[0] != '\0', "%s: empty message", body);
    ck_assert_ptr_nonnull(e.type);
}

static void expect_ok(const char *body, struct api_completion *c) {
    struct api_model_info mi = mi_ids();
    struct api_error e;
    int rc = parse(&mi, body, c, &e);
    ck_assert_msg(rc == 0, "%s rejected: %d %s", body, e.status, e.message);
}

/* ---------------------------------------------------------------- buffers */

START_TEST(test_json_escape) {
    struct api_buf b;
    api_buf_init(&b);
    const char in[] = "a\"b\\c\n\t\x01\x7f\xc3\xa9\xff\xe2\x82";
    api_buf_json_str(&b, in, sizeof(in) - 1);
    ck_assert_str_eq(b.data, "\"a\\\"b\\\\c\\n\\t\\u0001\x7f\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd"
                             "\xef\xbf\xbd\"");
    api_buf_free(&b);
    /* embedded NUL survives as \u0000 */
    api_buf_json_str(&b, "x\0y", 3);
    ck_assert_str_eq(b.data, "\"x\\u0000y\"");
    /* overlong and surrogate encodings are replaced */
    api_buf_free(&b);
    api_buf_json_str(&b, "\xc0\xaf\xed\xa0\x80", 5);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    ck_assert(strstr(j->valuestring, "\xef\xbf\xbd") != NULL);
    cJSON_Delete(j);
    api_buf_free(&b);
}
END_TEST

START_TEST(test_buf_ops) {
    struct api_buf b;
    api_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        api_buf_printf(&b, "%d,", i);
    ck_assert(!b.oom);
    ck_assert(strncmp(b.data, "0,1,2,", 6) == 0);
    size_t len = b.len;
    api_buf_consume(&b, 2);
    ck_assert_uint_eq(b.len, len - 2);
    ck_assert(strncmp(b.data, "1,2,", 4) == 0);
    api_buf_consume(&b, b.len + 10);
    ck_assert_uint_eq(b.len, 0);
    api_buf_free(&b);
    api_buf_free(NULL);
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_error_shape) {
    struct api_error e;
    api_error_set(&e, SS_ENOTFOUND, "model", "model_not_found", "no model '%s'", "x\"y");
    ck_assert_int_eq(e.status, 404);
    struct api_buf b;
    api_buf_init(&b);
    api_error_json(&b, &e);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    cJSON *err = cJSON_GetObjectItem(j, "error");
    ck_assert(cJSON_IsObject(err));
    ck_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, "no model 'x\"y'");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "invalid_request_error");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "param")->valuestring, "model");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "code")->valuestring, "model_not_found");
    cJSON_Delete(j);
    api_buf_free(&b);

    /* null param and code; default message from the table */
    api_error_set(&e, SS_EAGAIN, NULL, NULL, NULL);
    ck_assert_int_eq(e.status, 503);
    api_buf_init(&b);
    api_sse_error(&b, &e);
    ck_assert(strncmp(b.data, "data: {", 7) == 0);
    ck_assert(b.len > 2 && strcmp(b.data + b.len - 2, "\n\n") == 0);
    j = cJSON_Parse(b.data + 6);
    ck_assert_ptr_nonnull(j);
    err = cJSON_GetObjectItem(j, "error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(err, "param")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(err, "code")));
    ck_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, ss_strerror(SS_EAGAIN));
    cJSON_Delete(j);
    api_buf_free(&b);

    api_error_set_http(&e, 413, NULL, NULL, "body_too_large", "too big: %d", 5);
    ck_assert_int_eq(e.status, 413);
    ck_assert_str_eq(e.type, "invalid_request_error");
}
END_TEST

/* ---------------------------------------------------------------- routing */

START_TEST(test_routes) {
    int ok;
    const char *allow;
    ck_assert_int_eq(api_route_find("GET", "/health", &ok, &allow), API_ROUTE_HEALTH);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("HEAD", "/health", &ok, &allow), API_ROUTE_HEALTH);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("POST", "/health", &ok, &allow), API_ROUTE_HEALTH);
    ck_assert_int_eq(ok, 0);
    ck_assert_str_eq(allow, "GET, HEAD");
    ck_assert_int_eq(api_route_find("GET", "/v1/models?x=1", &ok, &allow), API_ROUTE_MODELS);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("GET", "/v1/models/", &ok, &allow), API_ROUTE_MODELS);
    ck_assert_int_eq(api_route_find("POST", "/v1/completions", &ok, &allow),
                     API_ROUTE_COMPLETIONS);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("GET", "/v1/completions", &ok, &allow),
                     API_ROUTE_COMPLETIONS);
    ck_assert_int_eq(ok, 0);
    ck_assert_str_eq(allow, "POST");
    ck_assert_int_eq(api_route_find("GET", "/v1/complete", &ok, &allow), API_ROUTE_NONE);
    ck_assert_int_eq(api_route_find("GET", "/", &ok, &allow), API_ROUTE_NONE);
    ck_assert_int_eq(api_route_find("GET", "/v1/completionsX", &ok, &allow), API_ROUTE_NONE);
    ck_assert_int_eq(api_route_find("POST", "/v1/chat/completions", &ok, &allow), API_ROUTE_CHAT);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("POST", "/tokenize", &ok, &allow), API_ROUTE_TOKENIZE);
    ck_assert_int_eq(api_route_find("POST", "/detokenize", &ok, &allow), API_ROUTE_DETOKENIZE);
    ck_assert_int_eq(api_route_find("GET", "/tokenize", &ok, &allow), API_ROUTE_TOKENIZE);
    ck_assert_int_eq(ok, 0);
    ck_assert_int_eq(api_route_find("GET", "/metrics", &ok, &allow), API_ROUTE_METRICS);
    ck_assert_int_eq(ok, 1);
    ck_assert_int_eq(api_route_find("HEAD", "/metrics", &ok, &allow), API_ROUTE_METRICS);
    ck_assert_int_eq(ok, 1);

    ck_assert(api_path_needs_auth("/v1/completions"));
    ck_assert(api_path_needs_auth("/v1/whatever"));
    ck_assert(!api_path_needs_auth("/health"));
    ck_assert(!api_path_needs_auth("/v10/x"));
    ck_assert(!api_path_needs_auth("/metrics"));
    ck_assert(api_path_needs_auth("/tokenize"));
    ck_assert(api_path_needs_auth("/detokenize?x=1"));
    ck_assert(!api_path_needs_auth("/tokenizer"));
}
END_TEST

START_TEST(test_auth) {
    ck_assert(api_auth_ok(NULL, NULL));
    ck_assert(api_auth_ok(NULL, ""));
    ck_assert(!api_auth_ok(NULL, "k1"));
    ck_assert(api_auth_ok("Bearer k1", "k1"));
    ck_assert(api_auth_ok("bearer  k1 ", "k1"));
    ck_assert(!api_auth_ok("Bearer k2", "k1"));
    ck_assert(!api_auth_ok("Bearer k1x", "k1"));
    ck_assert(!api_auth_ok("Bearer k", "k1"));
    ck_assert(!api_auth_ok("Basic k1", "k1"));
    ck_assert(!api_auth_ok("Bearerk1", "k1"));
    ck_assert(!api_auth_ok("", "k1"));
}
END_TEST

/* ---------------------------------------------------------------- parsing */

START_TEST(test_parse_defaults) {
    struct api_completion c;
    expect_ok("{\"prompt\":[1,2,3]}", &c);
    ck_assert_int_eq(c.p.n_prompt, 3);
    ck_assert_int_eq(c.p.prompt[0], 1);
    ck_assert_int_eq(c.p.prompt[2], 3);
    ck_assert_int_eq(c.p.max_tokens, 16);
    ck_assert_int_eq(c.max_tokens_given, 0);
    ck_assert(c.p.smp.temperature == 1.0f);
    ck_assert(c.p.smp.top_p == 1.0f);
    ck_assert_int_eq(c.p.smp.top_k, 0);
    ck_assert(c.p.smp.min_p == 0.0f);
    ck_assert_int_eq(c.p.smp.has_seed, 0);
    ck_assert_ptr_null(c.p.stops);
    ck_assert_int_eq(c.p.logprobs, -1);        /* the scheduler's "none" */
    ck_assert(c.p.repetition_penalty == 1.0f); /* the scheduler's "off" */
    ck_assert_int_eq(c.p.n_bias, 0);
    ck_assert_int_eq(c.stream, 0);
    ck_assert_int_eq(c.include_usage, 0);
    ck_assert_int_eq(c.n, 1);
    ck_assert_int_eq(c.echo, 0);
    ck_assert_ptr_null(c.echo_text);
    ck_assert_int_eq(c.p.prompt_logprobs, 0);
    ck_assert_int_eq(c.p.min_tokens, 0);
    ck_assert(c.p.presence_penalty == 0.0f && c.p.frequency_penalty == 0.0f);
    ck_assert_int_eq(c.kind, API_KIND_COMPLETION);
    api_completion_free(&c);
    api_completion_free(&c); /* idempotent */
}
END_TEST

START_TEST(test_parse_fields) {
    struct api_completion c;
    expect_ok("{\"model\":\"tiny\",\"prompt\":[[5,6]],\"max_tokens\":7,\"temperature\":0,"
              "\"top_p\":0.5,\"top_k\":40,\"min_p\":0.1,\"seed\":-1,\"stop\":[\"a\",\"\",\"bc\"],"
              "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u\","
              "\"n\":1,\"echo\":false,\"logprobs\":null,\"ignore_eos\":true,\"extra\":{}}",
              &c);
    ck_assert_int_eq(c.p.n_prompt, 2);
    ck_assert_int_eq(c.p.prompt[1], 6);
    ck_assert_int_eq(c.p.max_tokens, 7);
    ck_assert_int_eq(c.max_tokens_given, 1);
    ck_assert(c.p.smp.temperature == 0.0f);
    ck_assert(c.p.smp.top_p == 0.5f);
    ck_assert_int_eq(c.p.smp.top_k, 40);
    ck_assert(c.p.smp.min_p > 0.099f && c.p.smp.min_p < 0.101f);
    ck_assert_int_eq(c.p.smp.has_seed, 1);
    ck_assert(c.p.smp.seed == UINT64_MAX);
    ck_assert_int_eq(c.p.stops->n, 2); /* "" ignored */
    ck_assert_str_eq(c.p.stops->s[0], "a");
    ck_assert_str_eq(c.p.stops->s[1], "bc");
    ck_assert_uint_eq(c.p.stops->max_len, 2);
    ck_assert_int_eq(c.stream, 1);
    ck_assert_int_eq(c.include_usage, 1);
    ck_assert_int_eq(c.p.ignore_eos, 1);
    api_completion_free(&c);

    /* top_k -1 and 0 are "off"; null fields are defaults; stop as one string */
    expect_ok("{\"prompt\":[1],\"top_k\":-1,\"temperature\":null,\"stop\":\"x\",\"model\":null}",
              &c);
    ck_assert_int_eq(c.p.smp.top_k, 0);
    ck_assert(c.p.smp.temperature == 1.0f);
    ck_assert_int_eq(c.p.stops->n, 1);
    api_completion_free(&c);
    expect_ok("{\"prompt\":[1],\"top_k\":0,\"seed\":12345}", &c);
    ck_assert_int_eq(c.p.smp.top_k, 0);
    ck_assert(c.p.smp.seed == 12345);
    api_completion_free(&c);

    /* boundaries that are valid */
    expect_ok("{\"prompt\":[0,99],\"temperature\":2,\"top_p\":1,\"min_p\":1,\"max_tokens\":62}",
              &c);
    ck_assert_int_eq(c.p.max_tokens, 62);
    api_completion_free(&c);
}
END_TEST

START_TEST(test_parse_bad_json) {
    expect_err("", 400, "");
    expect_err("{", 400, "");
    expect_err("{\"prompt\":[1],}", 400, "");
    expect_err("[1,2]", 400, "");
    expect_err("\"prompt\"", 400, "");
    expect_err("null", 400, "");
    expect_err("42", 400, "");
}
END_TEST

START_TEST(test_parse_bad_prompt) {
    expect_err("{}", 400, "prompt");
    expect_err("{\"prompt\":null}", 400, "prompt");
    expect_err("{\"prompt\":\"\"}", 400, "prompt");
    expect_err("{\"prompt\":[]}", 400, "prompt");
    expect_err("{\"prompt\":[[]]}", 400, "prompt");
    expect_err("{\"prompt\":5}", 400, "prompt");
    expect_err("{\"prompt\":{}}", 400, "prompt");
    expect_err("{\"prompt\":true}", 400, "prompt");
    expect_err("{\"prompt\":[1,\"a\"]}", 400, "prompt");
    expect_err("{\"prompt\":[1,2.5]}", 400, "prompt");
    expect_err("{\"prompt\":[-1]}", 400, "prompt");
    expect_err("{\"prompt\":[100]}", 400, "prompt");
    expect_err("{\"prompt\":[1e12]}", 400, "prompt");
    expect_err("{\"prompt\":[null]}", 400, "prompt");
    expect_err("{\"prompt\":[\"a\",\"b\"]}", 400, "prompt");
    expect_err("{\"prompt\":[[1],[2]]}", 400, "prompt");
    /* no tokenizer in this model: a string prompt cannot be honoured */
    expect_err("{\"prompt\":\"hello\"}", 400, "prompt");
    expect_err("{\"prompt\":[\"hello\"]}", 400, "prompt");

    /* the message names the bad id and the vocabulary size */
    struct api_model_info mi = mi_ids();
    struct api_completion c;
    struct api_error e;
    ck_assert_int_eq(parse(&mi, "{\"prompt\":[1,2,150]}", &c, &e), SS_EINVAL);
    ck_assert_msg(strstr(e.message, "150") && strstr(e.message, "100"), "%s", e.message);
}
END_TEST

START_TEST(test_parse_bad_fields) {
    expect_err("{\"prompt\":[1],\"model\":\"other\"}", 404, "model");
    expect_err("{\"prompt\":[1],\"model\":5}", 400, "model");
    expect_err("{\"prompt\":[1],\"max_tokens\":0}", 400, "max_tokens");
    expect_err("{\"prompt\":[1],\"max_tokens\":-3}", 400, "max_tokens");
    expect_err("{\"prompt\":[1],\"max_tokens\":65}", 400, "max_tokens");
    expect_err("{\"prompt\":[1],\"max_tokens\":1.5}", 400, "max_tokens");
    expect_err("{\"prompt\":[1],\"max_tokens\":\"5\"}", 400, "max_tokens");
    expect_err("{\"prompt\":[1],\"temperature\":-0.1}", 400, "temperature");
    expect_err("{\"prompt\":[1],\"temperature\":2.01}", 400, "temperature");
    expect_err("{\"prompt\":[1],\"temperature\":\"hot\"}", 400, "temperature");
    expect_err("{\"prompt\":[1],\"top_p\":0}", 400, "top_p");
    expect_err("{\"prompt\":[1],\"top_p\":1.5}", 400, "top_p");
    expect_err("{\"prompt\":[1],\"top_p\":[]}", 400, "top_p");
    expect_err("{\"prompt\":[1],\"top_k\":-2}", 400, "top_k");
    expect_err("{\"prompt\":[1],\"top_k\":2.5}", 400, "top_k");
    expect_err("{\"prompt\":[1],\"min_p\":-0.5}", 400, "min_p");
    expect_err("{\"prompt\":[1],\"min_p\":1.5}", 400, "min_p");
    expect_err("{\"prompt\":[1],\"seed\":1.5}", 400, "seed");
    expect_err("{\"prompt\":[1],\"seed\":\"1\"}", 400, "seed");
    expect_err("{\"prompt\":[1],\"stop\":5}", 400, "stop");
    expect_err("{\"prompt\":[1],\"stop\":[\"a\",1]}", 400, "stop");
    expect_err("{\"prompt\":[1],\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}",
               400, "stop");
    expect_err("{\"prompt\":[1],\"stream\":\"yes\"}", 400, "stream");
    expect_err("{\"prompt\":[1],\"stream\":1}", 400, "stream");
    expect_err("{\"prompt\":[1],\"stream_options\":{\"include_usage\":true}}", 400,
               "stream_options");
    expect_err("{\"prompt\":[1],\"stream\":true,\"stream_options\":5}", 400, "stream_options");
    expect_err("{\"prompt\":[1],\"stream\":true,\"stream_options\":{\"include_usage\":1}}", 400,
               "stream_options.include_usage");
    expect_err("{\"prompt\":[1],\"n\":17}", 400, "n");
    expect_err("{\"prompt\":[1],\"n\":0}", 400, "n");
    expect_err("{\"prompt\":[1],\"n\":\"1\"}", 400, "n");
    expect_err("{\"prompt\":[1],\"n\":1.5}", 400, "n");
    expect_err("{\"prompt\":[1],\"echo\":1}", 400, "echo");
    expect_err("{\"prompt\":[1],\"logprobs\":21}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"logprobs\":-1}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"logprobs\":\"x\"}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"logprobs\":1.5}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"best_of\":2}", 400, "best_of");
    expect_err("{\"prompt\":[1],\"n\":2,\"best_of\":3}", 400, "best_of");
    expect_err("{\"prompt\":[1],\"frequency_penalty\":2.5}", 400, "frequency_penalty");
    expect_err("{\"prompt\":[1],\"frequency_penalty\":\"a\"}", 400, "frequency_penalty");
    expect_err("{\"prompt\":[1],\"presence_penalty\":-2.01}", 400, "presence_penalty");
    expect_err("{\"prompt\":[1],\"repetition_penalty\":0}", 400, "repetition_penalty");
    expect_err("{\"prompt\":[1],\"repetition_penalty\":-1}", 400, "repetition_penalty");
    expect_err("{\"prompt\":[1],\"logit_bias\":[1]}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\"x\":1}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\"100\":1}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\"-1\":1}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\" 5\":1}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\"5\":100.5}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"logit_bias\":{\"5\":\"1\"}}", 400, "logit_bias");
    expect_err("{\"prompt\":[1],\"min_tokens\":-1}", 400, "min_tokens");
    expect_err("{\"prompt\":[1],\"min_tokens\":17}", 400, "min_tokens"); /* > default 16 */
    expect_err("{\"prompt\":[1],\"max_tokens\":4,\"min_tokens\":5}", 400, "min_tokens");
    expect_err("{\"prompt\":[1],\"suffix\":\"x\"}", 400, "suffix");
    expect_err("{\"prompt\":[1],\"ignore_eos\":\"no\"}", 400, "ignore_eos");

    struct api_model_info mi = mi_ids();
    struct api_completion c;
    struct api_error e;
    parse(&mi, "{\"prompt\":[1],\"logit_bias\":{\"250\":1}}", &c, &e);
    ck_assert_msg(strstr(e.message, "250") && strstr(e.message, "99"), "%s", e.message);
    parse(&mi, "{\"prompt\":[1],\"model\":\"gpt\"}", &c, &e);
    ck_assert_str_eq(e.code, "model_not_found");
}
END_TEST

START_TEST(test_parse_context) {
    struct api_model_info mi = mi_ids(); /* n_ctx 64 */
    struct api_completion c;
    struct api_error e;
    char body[1024];
    /* 64 tokens: no room to generate */
    int n = snprintf(body, sizeof(body), "{\"prompt\":[");
    for (int i = 0; i < 64; i++)
        n += snprintf(body + n, sizeof(body) - (size_t)n, "%s%d", i ? "," : "", i % 90);
    snprintf(body + n, sizeof(body) - (size_t)n, "]}");
    ck_assert_int_eq(parse(&mi, body, &c, &e), SS_ETOOLONG);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "prompt");
    ck_assert_msg(strstr(e.message, "64 tokens") && strstr(e.message, "context"), "%s",
                  e.message);

    /* 60 + max_tokens 10 > 64 */
    n = snprintf(body, sizeof(body), "{\"max_tokens\":10,\"prompt\":[");
    for (int i = 0; i < 60; i++)
        n += snprintf(body + n, sizeof(body) - (size_t)n, "%s%d", i ? "," : "", i);
    snprintf(body + n, sizeof(body) - (size_t)n, "]}");
    ck_assert_int_eq(parse(&mi, body, &c, &e), SS_ETOOLONG);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "max_tokens");
    ck_assert_msg(strstr(e.message, "64") && strstr(e.message, "60") && strstr(e.message, "10"),
                  "%s", e.message);

    /* 60 tokens, default max_tokens: clamped to the 4 left */
    n = snprintf(body, sizeof(body), "{\"prompt\":[");
    for (int i = 0; i < 60; i++)
        n += snprintf(body + n, sizeof(body) - (size_t)n, "%s%d", i ? "," : "", i);
    snprintf(body + n, sizeof(body) - (size_t)n, "]}");
    ck_assert_int_eq(parse(&mi, body, &c, &e), 0);
    ck_assert_int_eq(c.p.max_tokens, 4);
    api_completion_free(&c);
}
END_TEST

/* String prompts through a real tokenizer (both kinds) from a generated model. */
static void check_text_prompt(const char *kind) {
    struct tu_gen_tok g;
    tu_gen_tok_load(&g, "test_api", kind);
    struct tok *t = g.t;
    struct api_model_info mi = {"m", 128, tok_n_vocab(t), t, 0, 0, 0, 0};
    struct api_completion c;
    struct api_error e;
    const char *text = "The quick brown fox jumps over the lazy dog";
    char body[256];
    snprintf(body, sizeof(body), "{\"prompt\":\"%s\"}", text);
    ck_assert_msg(parse(&mi, body, &c, &e) == 0, "%s", e.message);
    int32_t ids[256];
    int64_t n = tok_encode(t, text, strlen(text), tok_add_bos(t), 0, ids, 256);
    ck_assert_int_eq(c.p.n_prompt, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_eq(c.p.prompt[i], ids[i]);
    if (tok_add_bos(t) && tok_bos(t) >= 0)
        ck_assert_int_eq(c.p.prompt[0], tok_bos(t));
    api_completion_free(&c);

    /* ["text"] is the same as "text" */
    snprintf(body, sizeof(body), "{\"prompt\":[\"%s\"]}", text);
    ck_assert_msg(parse(&mi, body, &c, &e) == 0, "%s", e.message);
    ck_assert_int_eq(c.p.n_prompt, n);
    api_completion_free(&c);

    /* a long text prompt is measured in tokens against the context */
    char big[4096];
    int k = snprintf(big, sizeof(big), "{\"prompt\":\"");
    for (int i = 0; i < 60; i++)
        k += snprintf(big + k, sizeof(big) - (size_t)k, "zq%dx ", i);
    snprintf(big + k, sizeof(big) - (size_t)k, "\"}");
    ck_assert_int_eq(parse(&mi, big, &c, &e), SS_ETOOLONG);
    ck_assert_int_eq(e.status, 400);

    /* echo: the prompt as sent; token-id prompts are decoded */
    snprintf(body, sizeof(body), "{\"prompt\":\"%s\",\"echo\":true,\"logprobs\":0}", text);
    ck_assert_msg(parse(&mi, body, &c, &e) == 0, "%s", e.message);
    ck_assert_str_eq(c.echo_text, text);
    ck_assert_uint_eq(c.echo_len, strlen(text));
    ck_assert_int_eq(c.p.prompt_logprobs, 1);
    ck_assert_int_eq(c.p.logprobs, 0);
    api_completion_free(&c);
    int k2 = snprintf(body, sizeof(body), "{\"echo\":true,\"prompt\":[");
    for (int64_t i = 0; i < n; i++)
        k2 += snprintf(body + k2, sizeof(body) - (size_t)k2, "%s%d", i ? "," : "", (int)ids[i]);
    snprintf(body + k2, sizeof(body) - (size_t)k2, "]}");
    ck_assert_msg(parse(&mi, body, &c, &e) == 0, "%s", e.message);
    ck_assert_str_eq(c.echo_text, text);
    ck_assert_int_eq(c.p.prompt_logprobs, 0); /* echo without logprobs */
    api_completion_free(&c);

    tu_gen_tok_free(&g);
}

START_TEST(test_text_prompt_spm) {
    check_text_prompt("spm");
}
END_TEST

START_TEST(test_text_prompt_bpe) {
    check_text_prompt("bpe");
}
END_TEST

/* ---------------------------------------------------------------- output */

static cJSON *sse_payload(const char *event) {
    ck_assert(strncmp(event, "data: ", 6) == 0);
    size_t n = strlen(event);
    ck_assert(n >= 8 && strcmp(event + n - 2, "\n\n") == 0);
    return cJSON_ParseWithLength(event + 6, n - 8);
}

START_TEST(test_completion_json) {
    struct api_completion_meta m = {"cmpl-abc", 1700000001, "tiny", API_KIND_COMPLETION, NULL, 3};
    struct api_buf b;
    api_buf_init(&b);
    struct api_choice_out co = {0, "hi \"there\"\n", 11, REQ_FINISH_LENGTH, -1, NULL, 0, NULL, NULL, 0, 0};
    ck_assert_int_eq(api_response_json(&b, &m, &co, 1, 5, 7), 0);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, "cmpl-abc");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    ck_assert_int_eq(cJSON_GetObjectItem(j, "created")->valuedouble, 1700000001);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model")->valuestring, "tiny");
    cJSON *ch = cJSON_GetObjectItem(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(ch), 1);
    cJSON *c0 = cJSON_GetArrayItem(ch, 0);
    ck_assert_int_eq(cJSON_GetObjectItem(c0, "index")->valueint, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "hi \"there\"\n");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "logprobs")));
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length");
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 5);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 7);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint, 12);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(u, "prompt_tokens_details"), "cached_tokens")->valueint, 3);
    cJSON_Delete(j);
    api_buf_free(&b);

    /* empty text, stop */
    struct api_choice_out e0 = {0, NULL, 0, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0};
    api_response_json(&b, &m, &e0, 1, 1, 0);
    j = cJSON_Parse(b.data);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "");
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON_Delete(j);
    api_buf_free(&b);

    /* n = 3: choices in index order, usage counts the prompt once */
    struct api_choice_out three[3] = {{0, "a", 1, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0},
                                      {1, "bb", 2, REQ_FINISH_LENGTH, -1, NULL, 0, NULL, NULL, 0, 0},
                                      {2, "", 0, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0}};
    api_response_json(&b, &m, three, 3, 4, 9);
    j = cJSON_Parse(b.data);
    ch = cJSON_GetObjectItem(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(ch), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(ch, i), "index")->valueint, i);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(ch, 1), "text")->valuestring, "bb");
    u = cJSON_GetObjectItem(j, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 4);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 9);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint, 13);
    cJSON_Delete(j);
    api_buf_free(&b);
}
END_TEST

START_TEST(test_sse_events) {
    struct api_completion_meta m = {"cmpl-x", 1, "tiny", API_KIND_COMPLETION, NULL, 0};
    struct api_buf b;
    api_buf_init(&b);
    struct api_choice_out co = {0, "ab", 2, REQ_FINISH_NONE, -1, NULL, 0, NULL, NULL, 0, 0};
    api_sse_chunk(&b, &m, &co, 0);
    cJSON *j = sse_payload(b.data);
    ck_assert_ptr_nonnull(j);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "ab");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "usage"));
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    cJSON_Delete(j);
    api_buf_free(&b);

    /* a later choice of n > 1 carries its index */
    struct api_choice_out fin = {2, "", 0, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0};
    api_sse_chunk(&b, &m, &fin, 1);
    j = sse_payload(b.data);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(c0, "index")->valueint, 2);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    cJSON_Delete(j);
    api_buf_free(&b);

    api_sse_usage(&b, &m, 3, 4);
    j = sse_payload(b.data);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint,
                     7);
    cJSON_Delete(j);
    api_buf_free(&b);

    api_sse_done(&b);
    ck_assert_str_eq(b.data, "data: [DONE]\n\n");
    api_buf_free(&b);
}
END_TEST

START_TEST(test_chat_shapes) {
    struct api_completion_meta m = {"chatcmpl-x", 5, "tiny", API_KIND_CHAT, NULL, 0};
    struct api_buf b;
    api_buf_init(&b);
    struct api_choice_out co[2] = {{0, "Hello", 5, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0},
                                   {1, "Hi", 2, REQ_FINISH_LENGTH, -1, NULL, 0, NULL, NULL, 0, 0}};
    ck_assert_int_eq(api_response_json(&b, &m, co, 2, 10, 3), 0);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    cJSON *c1 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1);
    cJSON *msg = cJSON_GetObjectItem(c1, "message");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "content")->valuestring, "Hi");
    ck_assert_str_eq(cJSON_GetObjectItem(c1, "finish_reason")->valuestring, "length");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c1, "logprobs")));
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint,
                     13);
    cJSON_Delete(j);
    api_buf_free(&b);

    /* stream: role chunk, content delta, final chunk with an empty delta */
    api_sse_role(&b, &m, 1, 1);
    j = sse_payload(b.data);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion.chunk");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_int_eq(cJSON_GetObjectItem(c0, "index")->valueint, 1);
    cJSON *d = cJSON_GetObjectItem(c0, "delta");
    ck_assert_str_eq(cJSON_GetObjectItem(d, "role")->valuestring, "assistant");
    ck_assert_str_eq(cJSON_GetObjectItem(d, "content")->valuestring, "");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    cJSON_Delete(j);
    api_buf_free(&b);

    struct api_choice_out dl = {0, "wor", 3, REQ_FINISH_NONE, -1, NULL, 0, NULL, NULL, 0, 0};
    api_sse_chunk(&b, &m, &dl, 0);
    j = sse_payload(b.data);
    d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "delta");
    ck_assert_str_eq(cJSON_GetObjectItem(d, "content")->valuestring, "wor");
    ck_assert_ptr_null(cJSON_GetObjectItem(d, "role"));
    cJSON_Delete(j);
    api_buf_free(&b);

    struct api_choice_out end = {0, NULL, 0, REQ_FINISH_STOP, -1, NULL, 0, NULL, NULL, 0, 0};
    api_sse_chunk(&b, &m, &end, 0);
    j = sse_payload(b.data);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    d = cJSON_GetObjectItem(c0, "delta");
    ck_assert(cJSON_IsObject(d) && d->child == NULL);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON_Delete(j);
    api_buf_free(&b);

    api_sse_usage(&b, &m, 2, 3);
    j = sse_payload(b.data);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion.chunk");
    cJSON_Delete(j);
    api_buf_free(&b);
}
END_TEST

START_TEST(test_models_health_id) {
    struct api_model_info mi = mi_ids();
    struct api_buf b;
    api_buf_init(&b);
    api_models_json(&b, &mi);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "list");
    cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(d0, "id")->valuestring, "tiny");
    ck_assert_str_eq(cJSON_GetObjectItem(d0, "object")->valuestring, "model");
    ck_assert_int_eq(cJSON_GetObjectItem(d0, "max_model_len")->valueint, 64);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "data")), 1);
    cJSON_Delete(j);
    api_buf_free(&b);

    api_health_json(&b);
    ck_assert_str_eq(b.data, "{\"status\":\"ok\"}");
    api_buf_free(&b);

    char a[48], c[48];
    api_completion_id(a, sizeof(a), 1, API_KIND_COMPLETION);
    api_completion_id(c, sizeof(c), 2, API_KIND_COMPLETION);
    ck_assert(strncmp(a, "cmpl-", 5) == 0);
    ck_assert_uint_eq(strlen(a), 5 + 32);
    ck_assert_str_ne(a, c);
    api_completion_id(c, sizeof(c), 3, API_KIND_CHAT);
    ck_assert(strncmp(c, "chatcmpl-", 9) == 0);
    ck_assert_uint_eq(strlen(c), 9 + 32);
}
END_TEST

/* ---------------------------------------------------------------- new fields */

START_TEST(test_parse_sampling_extras) {
    struct api_completion c;
    expect_ok("{\"prompt\":[1,2],\"n\":3,\"best_of\":3,\"logprobs\":5,\"echo\":true,"
              "\"presence_penalty\":-2,\"frequency_penalty\":1.5,\"repetition_penalty\":1.3,"
              "\"logit_bias\":{\"5\":-100,\"99\":2.5},\"ignore_eos\":true,\"min_tokens\":3,"
              "\"max_tokens\":8,\"seed\":7}",
              &c);
    ck_assert_int_eq(c.n, 3);
    ck_assert_int_eq(c.p.logprobs, 5);
    ck_assert_int_eq(c.echo, 1);
    ck_assert_int_eq(c.p.prompt_logprobs, 1);
    ck_assert_ptr_nonnull(c.echo_text); /* no tokenizer: the ids cannot be decoded */
    ck_assert_str_eq(c.echo_text, "");
    ck_assert(c.p.presence_penalty == -2.0f);
    ck_assert(c.p.frequency_penalty == 1.5f);
    ck_assert(fabsf(c.p.repetition_penalty - 1.3f) < 1e-6f);
    ck_assert_int_eq(c.p.n_bias, 2);
    ck_assert_int_eq(c.p.bias_ids[0], 5);
    ck_assert(c.p.bias_vals[0] == -100.0f);
    ck_assert_int_eq(c.p.bias_ids[1], 99);
    ck_assert(c.p.bias_vals[1] == 2.5f);
    ck_assert_int_eq(c.p.ignore_eos, 1);
    ck_assert_int_eq(c.p.min_tokens, 3);
    ck_assert_int_eq(c.p.max_tokens, 8);

    /* deep copy for the extra choices: same values, separate memory */
    struct req_params q;
    ck_assert_int_eq(req_params_copy(&q, &c.p), 0);
    ck_assert_ptr_ne(q.prompt, c.p.prompt);
    ck_assert_ptr_ne(q.bias_ids, c.p.bias_ids);
    ck_assert_int_eq(q.n_prompt, 2);
    ck_assert_int_eq(q.prompt[1], 2);
    ck_assert_int_eq(q.n_bias, 2);
    ck_assert(q.bias_vals[1] == 2.5f);
    ck_assert_int_eq(q.logprobs, 5);
    ck_assert(q.smp.seed == 7 && q.smp.has_seed);
    req_params_free(&q);
    api_completion_free(&c);

    /* logprobs: false and null are "none", true is 1, 0 is the chosen token only */
    expect_ok("{\"prompt\":[1],\"logprobs\":false,\"echo\":true}", &c);
    ck_assert_int_eq(c.p.logprobs, -1);
    ck_assert_int_eq(c.p.prompt_logprobs, 0);
    api_completion_free(&c);
    expect_ok("{\"prompt\":[1],\"logprobs\":true}", &c);
    ck_assert_int_eq(c.p.logprobs, 1);
    api_completion_free(&c);
    expect_ok("{\"prompt\":[1],\"logprobs\":0,\"logit_bias\":{},\"min_tokens\":16}", &c);
    ck_assert_int_eq(c.p.logprobs, 0);
    ck_assert_int_eq(c.p.n_bias, 0);
    ck_assert_int_eq(c.p.min_tokens, 16);
    api_completion_free(&c);
    expect_ok("{\"prompt\":[1],\"n\":16,\"logprobs\":20,\"suffix\":\"\"}", &c);
    ck_assert_int_eq(c.n, 16);
    ck_assert_int_eq(c.prompt_only, 0);
    api_completion_free(&c);
    /* echo with max_tokens 0: prompt logprobs only; the scheduler still gets 1 */
    expect_ok("{\"prompt\":[1,2],\"echo\":true,\"logprobs\":1,\"max_tokens\":0}", &c);
    ck_assert_int_eq(c.prompt_only, 1);
    ck_assert_int_eq(c.p.max_tokens, 1);
    ck_assert_int_eq(c.p.prompt_logprobs, 1);
    api_completion_free(&c);
    expect_err("{\"prompt\":[1],\"echo\":true,\"max_tokens\":0,\"min_tokens\":1}", 400,
               "min_tokens");
}
END_TEST

/* ---------------------------------------------------------------- logprobs */

static struct req_tok mk_tok(int32_t id, int prompt, float lp, int n_top, const int32_t *ids,
                             const float *lps) {
    struct req_tok t;
    memset(&t, 0, sizeof(t));
    t.id = id;
    t.prompt = prompt;
    t.lp = lp;
    t.n_top = n_top;
    for (int i = 0; i < n_top; i++) {
        t.top_ids[i] = ids[i];
        t.top_lps[i] = lps[i];
    }
    return t;
}

static size_t piece_len(const struct tok *t, int32_t id, char *buf) {
    int n = tok_piece(t, id, buf, 256);
    ck_assert(n >= 0);
    buf[n] = '\0';
    return (size_t)n;
}

START_TEST(test_logprobs_json) {
    struct tu_gen_tok g;
    tu_gen_tok_load(&g, "test_api", "spm");
    const struct tok *t = g.t;
    int32_t A = 300, B = 301, C = 302, X80 = 3 + 0x80, X81 = 3 + 0x81; /* <0x80>, <0x81> */
    char pa[256], pb[256], pc[256];
    size_t la = piece_len(t, A, pa), lb = piece_len(t, B, pb), lc = piece_len(t, C, pc);
    ck_assert(la > 0 && lb > 0 && lc > 0);

    struct req_tok toks[4];
    toks[0] = mk_tok(tok_bos(t), 1, NAN, 0, NULL, NULL);            /* first prompt token */
    toks[1] = mk_tok(A, 1, -1.25f, 2, (int32_t[]){B, A}, (float[]){-0.5f, -1.25f});
    /* greedy-style: the chosen token is the top one (merged, max kept) */
    toks[2] = mk_tok(B, 0, -0.75f, 3, (int32_t[]){B, X80, X81}, (float[]){-0.7f, -2.0f, -3.0f});
    toks[3] = mk_tok(C, 0, -INFINITY, 1, (int32_t[]){A}, (float[]){-0.1f});
    struct api_lp_state st = {0, 0, 20};
    struct api_choice_out co = {0, "x", 1, REQ_FINISH_LENGTH, 2, toks, 4, &st, NULL, 0, 0};
    struct api_completion_meta m = {"cmpl-1", 1, "m", API_KIND_COMPLETION, t, 0};
    struct api_buf b;
    api_buf_init(&b);
    ck_assert_int_eq(api_response_json(&b, &m, &co, 1, 2, 2), 0);
    cJSON *j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                    "logprobs");
    cJSON *tk = cJSON_GetObjectItem(lp, "tokens"), *tl = cJSON_GetObjectItem(lp, "token_logprobs");
    cJSON *tp = cJSON_GetObjectItem(lp, "top_logprobs"), *to = cJSON_GetObjectItem(lp, "text_offset");
    ck_assert_int_eq(cJSON_GetArraySize(tk), 4);
    ck_assert_int_eq(cJSON_GetArraySize(tl), 4);
    ck_assert_int_eq(cJSON_GetArraySize(tp), 4);
    ck_assert_int_eq(cJSON_GetArraySize(to), 4);
    ck_assert_str_eq(cJSON_GetArrayItem(tk, 0)->valuestring, ""); /* control token */
    ck_assert_str_eq(cJSON_GetArrayItem(tk, 1)->valuestring, pa);
    ck_assert_str_eq(cJSON_GetArrayItem(tk, 2)->valuestring, pb);
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(tl, 0)));
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(tp, 0)));
    ck_assert(fabs(cJSON_GetArrayItem(tl, 1)->valuedouble + 1.25) < 1e-6);
    ck_assert(cJSON_GetArrayItem(tl, 3)->valuedouble == -9999.0); /* -inf */
    /* top of token 1: {B: -0.5, A: -1.25}: the chosen A merged with its top entry */
    cJSON *d1 = cJSON_GetArrayItem(tp, 1);
    ck_assert_int_eq(cJSON_GetArraySize(d1), 2);
    ck_assert(fabs(cJSON_GetObjectItem(d1, pb)->valuedouble + 0.5) < 1e-6);
    ck_assert(fabs(cJSON_GetObjectItem(d1, pa)->valuedouble + 1.25) < 1e-6);
    /* token 2: B merged (max of -0.7 and -0.75), two bytes that both read as U+FFFD merged */
    cJSON *d2 = cJSON_GetArrayItem(tp, 2);
    ck_assert_int_eq(cJSON_GetArraySize(d2), 2);
    ck_assert(fabs(cJSON_GetObjectItem(d2, pb)->valuedouble + 0.7) < 1e-6);
    ck_assert(fabs(cJSON_GetObjectItem(d2, "\xef\xbf\xbd")->valuedouble + 2.0) < 1e-6);
    /* token 3: top A plus the chosen C at -inf */
    cJSON *d3 = cJSON_GetArrayItem(tp, 3);
    ck_assert_int_eq(cJSON_GetArraySize(d3), 2);
    ck_assert(cJSON_GetObjectItem(d3, pc)->valuedouble == -9999.0);
    /* offsets: prompt tokens from 0, generated ones after the echoed prompt */
    ck_assert_int_eq(cJSON_GetArrayItem(to, 0)->valueint, 0);
    ck_assert_int_eq(cJSON_GetArrayItem(to, 1)->valueint, 0);
    ck_assert_int_eq(cJSON_GetArrayItem(to, 2)->valueint, 20);
    ck_assert_int_eq(cJSON_GetArrayItem(to, 3)->valueint, 20 + (int)lb);
    ck_assert_uint_eq(st.gen_off, lb + lc); /* the state runs on for the next chunk */
    cJSON_Delete(j);
    api_buf_free(&b);

    /* chat: generated tokens only, exactly top N, bytes of each token */
    m.kind = API_KIND_CHAT;
    co.logprobs = 1;
    api_response_json(&b, &m, &co, 1, 2, 2);
    j = cJSON_Parse(b.data);
    ck_assert_ptr_nonnull(j);
    lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    cJSON *content = cJSON_GetObjectItem(lp, "content");
    ck_assert_int_eq(cJSON_GetArraySize(content), 2);
    cJSON *e0 = cJSON_GetArrayItem(content, 0);
    ck_assert_str_eq(cJSON_GetObjectItem(e0, "token")->valuestring, pb);
    ck_assert(fabs(cJSON_GetObjectItem(e0, "logprob")->valuedouble + 0.75) < 1e-6);
    cJSON *bytes = cJSON_GetObjectItem(e0, "bytes");
    ck_assert_int_eq(cJSON_GetArraySize(bytes), (int)lb);
    for (size_t i = 0; i < lb; i++)
        ck_assert_int_eq(cJSON_GetArrayItem(bytes, (int)i)->valueint, (unsigned char)pb[i]);
    cJSON *top = cJSON_GetObjectItem(e0, "top_logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(top), 1);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "token")->valuestring, pb);
    cJSON *e1 = cJSON_GetArrayItem(content, 1);
    ck_assert(cJSON_GetObjectItem(e1, "logprob")->valuedouble == -9999.0);
    cJSON_Delete(j);
    api_buf_free(&b);

    /* a streamed chunk with logprobs and no tokens yet: empty lists, valid JSON */
    m.kind = API_KIND_COMPLETION;
    struct api_choice_out empty = {1, "", 0, REQ_FINISH_STOP, 0, NULL, 0, NULL, NULL, 0, 0};
    api_sse_chunk(&b, &m, &empty, 0);
    j = sse_payload(b.data);
    ck_assert_ptr_nonnull(j);
    lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 0);
    cJSON_Delete(j);
    api_buf_free(&b);
    tu_gen_tok_free(&g);
}
END_TEST

static Suite *api_suite(void) {
    Suite *s = suite_create("api");
    const struct tu_case tests[] = {
        {"json_escape", test_json_escape},
        {"buf_ops", test_buf_ops},
        {"error_shape", test_error_shape},
        {"routes", test_routes},
        {"auth", test_auth},
        {"parse_defaults", test_parse_defaults},
        {"parse_fields", test_parse_fields},
        {"parse_bad_json", test_parse_bad_json},
        {"parse_bad_prompt", test_parse_bad_prompt},
        {"parse_bad_fields", test_parse_bad_fields},
        {"parse_context", test_parse_context},
        {"text_prompt_spm", test_text_prompt_spm},
        {"text_prompt_bpe", test_text_prompt_bpe},
        {"completion_json", test_completion_json},
        {"sse_events", test_sse_events},
        {"models_health_id", test_models_health_id},
        {"chat_shapes", test_chat_shapes},
        {"parse_sampling_extras", test_parse_sampling_extras},
        {"logprobs_json", test_logprobs_json},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 0);
    return s;
}

int main(void) {
    int failed = tu_check_run(api_suite());
    return failed != 0;
}
