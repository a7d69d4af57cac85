/* test_api.c - the OpenAI protocol layer without a network: request validation
 * (every field, every error status and shape), routing, API keys, and the JSON /
 * SSE bytes produced. Outputs are checked by parsing them back with cJSON.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "engine/gguf.h"
#include "engine/ss_error.h"
#include "engine/tokenizer.h"
#include "tools/genmodel.h"

/* A model with no tokenizer: token-id prompts only. */
static struct api_model_info mi_ids(void) {
    struct api_model_info mi = {"tiny", 64, 100, NULL, 1700000000};
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

    ck_assert(api_path_needs_auth("/v1/completions"));
    ck_assert(api_path_needs_auth("/v1/whatever"));
    ck_assert(!api_path_needs_auth("/health"));
    ck_assert(!api_path_needs_auth("/v10/x"));
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
    ck_assert_int_eq(c.p.n_stop, 0);
    ck_assert_int_eq(c.p.logprobs, -1);        /* the scheduler's "none" */
    ck_assert(c.p.repetition_penalty == 1.0f); /* the scheduler's "off" */
    ck_assert_int_eq(c.p.n_bias, 0);
    ck_assert_int_eq(c.stream, 0);
    ck_assert_int_eq(c.include_usage, 0);
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
    ck_assert_int_eq(c.p.n_stop, 2); /* "" ignored */
    ck_assert_str_eq(c.p.stop[0], "a");
    ck_assert_str_eq(c.p.stop[1], "bc");
    ck_assert_int_eq(c.stream, 1);
    ck_assert_int_eq(c.include_usage, 1);
    ck_assert_int_eq(c.p.ignore_eos, 1);
    api_completion_free(&c);

    /* top_k -1 and 0 are "off"; null fields are defaults; stop as one string */
    expect_ok("{\"prompt\":[1],\"top_k\":-1,\"temperature\":null,\"stop\":\"x\",\"model\":null}",
              &c);
    ck_assert_int_eq(c.p.smp.top_k, 0);
    ck_assert(c.p.smp.temperature == 1.0f);
    ck_assert_int_eq(c.p.n_stop, 1);
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
    expect_err("{\"prompt\":[1],\"n\":2}", 400, "n");
    expect_err("{\"prompt\":[1],\"n\":0}", 400, "n");
    expect_err("{\"prompt\":[1],\"n\":\"1\"}", 400, "n");
    expect_err("{\"prompt\":[1],\"echo\":true}", 400, "echo");
    expect_err("{\"prompt\":[1],\"echo\":1}", 400, "echo");
    expect_err("{\"prompt\":[1],\"logprobs\":1}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"logprobs\":0}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"logprobs\":\"x\"}", 400, "logprobs");
    expect_err("{\"prompt\":[1],\"best_of\":2}", 400, "best_of");
    expect_err("{\"prompt\":[1],\"frequency_penalty\":0.5}", 400, "frequency_penalty");
    expect_err("{\"prompt\":[1],\"ignore_eos\":\"no\"}", 400, "ignore_eos");

    /* n > 1 says so clearly */
    struct api_model_info mi = mi_ids();
    struct api_completion c;
    struct api_error e;
    parse(&mi, "{\"prompt\":[1],\"n\":3}", &c, &e);
    ck_assert_msg(strstr(e.message, "not supported"), "%s", e.message);
    parse(&mi, "{\"prompt\":[1],\"echo\":true}", &c, &e);
    ck_assert_msg(strstr(e.message, "not supported yet"), "%s", e.message);
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
    const char *dir = getenv("SLIMSERVE_TEST_TMP");
    char path[512];
    snprintf(path, sizeof(path), "%s/test_api_%s_%d.gguf", dir ? dir : "/tmp", kind, (int)getpid());
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = kind;
    o.n_layers = 1;
    o.n_ctx = 128;
    char err[256];
    ck_assert_msg(genmodel_write(&o, path, err, sizeof(err)) == 0, "%s", err);
    struct gguf_file *f = NULL;
    ck_assert_msg(gguf_open(&f, path, err, sizeof(err)) == 0, "%s", err);
    struct tok *t = NULL;
    ck_assert_msg(tok_load(&t, f, err, sizeof(err)) == 0, "%s", err);

    struct api_model_info mi = {"m", 128, tok_n_vocab(t), t, 0};
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

    tok_free(t);
    gguf_close(f);
    unlink(path);
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
    struct api_completion_meta m = {"cmpl-abc", 1700000001, "tiny"};
    struct api_buf b;
    api_buf_init(&b);
    ck_assert_int_eq(api_completion_json(&b, &m, "hi \"there\"\n", 11, REQ_FINISH_LENGTH, 5, 7),
                     0);
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
    cJSON_Delete(j);
    api_buf_free(&b);

    /* empty text, stop */
    api_completion_json(&b, &m, NULL, 0, REQ_FINISH_STOP, 1, 0);
    j = cJSON_Parse(b.data);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "");
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON_Delete(j);
    api_buf_free(&b);
}
END_TEST

START_TEST(test_sse_events) {
    struct api_completion_meta m = {"cmpl-x", 1, "tiny"};
    struct api_buf b;
    api_buf_init(&b);
    api_sse_chunk(&b, &m, "ab", 2, REQ_FINISH_NONE, 0);
    cJSON *j = sse_payload(b.data);
    ck_assert_ptr_nonnull(j);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "ab");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "usage"));
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    cJSON_Delete(j);
    api_buf_free(&b);

    api_sse_chunk(&b, &m, "", 0, REQ_FINISH_STOP, 1);
    j = sse_payload(b.data);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
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
    api_completion_id(a, sizeof(a), 1);
    api_completion_id(c, sizeof(c), 2);
    ck_assert(strncmp(a, "cmpl-", 5) == 0);
    ck_assert_uint_eq(strlen(a), 5 + 32);
    ck_assert_str_ne(a, c);
}
END_TEST

static Suite *api_suite(void) {
    Suite *s = suite_create("api");
    struct {
        const char *name;
        const TTest *fn;
    } tests[] = {
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
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        TCase *tc = tcase_create(tests[i].name);
        tcase_add_test(tc, tests[i].fn);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(api_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
