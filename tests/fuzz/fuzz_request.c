/* fuzz_request.c - libFuzzer target: the request parser of every route.
 *
 * Input: one selector byte, then the request body (JSON, any bytes).
 *   selector bits 0-1  route: 0 /v1/completions, 1 /v1/chat/completions,
 *                      2 /tokenize, 3 /detokenize or /v1/embeddings (bit 6)
 *   bits 2-4           chat template family (enum api_tmpl_family, mod 6)
 *   bit 5              tokenizer: 0 SPM, 1 byte-level BPE
 *   bit 6              KV pool checked (64 pages) or not; route 3: embeddings
 *   bit 7              instead of a body: "METHOD URL\nAUTHORIZATION" through
 *                      routing (api_route_find, api_path_needs_auth,
 *                      api_auth_ok) and the bytes as a GGUF chat template
 *                      through api_tmpl_detect
 * Structured outputs (response_format, structured_outputs, guided_*, grammar,
 * json_schema) compile through engine/grammar*; a compiled grammar is then
 * run for a few steps through the token-mask matcher over the vocabulary.
 *
 * Properties checked beyond "no crash, no leak, no UB":
 *   - a rejected request has a 4xx/5xx status and an error body that is JSON;
 *   - an accepted generation request passes the scheduler's own checks
 *     (sched_check_params) and keeps n, stop strings and lengths in range;
 *   - /tokenize and /detokenize answers are JSON objects;
 *   - accepted embeddings inputs are non-empty, within the context and the
 *     vocabulary, and their 200 body (over made-up vectors) is JSON;
 *   - a chat request accepted with tools: its last message's content (and the
 *     raw body) read as model output by the tool-call parser give the same
 *     content and calls whether fed whole or in pieces (a stream and a
 *     non-stream answer agree), and every call's arguments are a JSON object.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "engine/engine.h"
#include "engine/grammar.h"
#include "engine/tokenizer.h"
#include "fuzz_util.h"
#include "kernels/ss_error.h"

#define N_CTX 512

static struct gram_vocab *vocabs[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int k = 0; k < 2; k++)
        if (gram_vocab_new(&vocabs[k], fz_tok(k)) != 0) fz_fail("gram_vocab_new");
    return 0;
}

static void check_json(const char *what, const char *s, size_t n) {
    cJSON *j = cJSON_ParseWithLength(s, n);
    if (!j || !cJSON_IsObject(j)) fz_fail("%s is not a JSON object: %.*s", what, (int)(n > 400 ? 400 : n), s);
    cJSON_Delete(j);
}

static void check_error(int rc, const struct api_error *err) {
    if (rc >= 0) fz_fail("error path with rc %d", rc);
    if (err->status < 400 || err->status > 599) fz_fail("status %d for rc %d", err->status, rc);
    if (!err->message[0]) fz_fail("empty error message (status %d)", err->status);
    struct api_buf b;
    api_buf_init(&b);
    if (api_error_json(&b, err) != 0) fz_fail("api_error_json failed");
    check_json("error body", b.data, b.len);
    api_buf_free(&b);
}

/* A few steps of constrained decoding: mask, then the first allowed token. */
static void run_grammar(const struct gram *g, int kind) {
    struct gram_store *st;
    struct gram_matcher *m;
    if (gram_store_new(&st, tok_n_vocab(fz_tok(kind)), 8) != 0) fz_fail("gram_store_new");
    if (gram_matcher_new(&m, g, vocabs[kind], st) != 0) {
        gram_store_free(st);
        return;
    }
    int32_t V = tok_n_vocab(fz_tok(kind));
    for (int step = 0; step < 6; step++) {
        int err = 0;
        const uint32_t *mask = gram_matcher_mask(m, &err);
        if (!mask) break;
        int32_t pick = -1;
        for (int32_t i = (step * 97) % V, k = 0; k < V; k++, i = (i + 1) % V)
            if (mask[i / 32] >> (i % 32) & 1) {
                pick = i;
                break;
            }
        if (pick < 0) break;
        int rc = gram_matcher_accept_token(m, pick);
        if (rc == SS_EINVAL) fz_fail("matcher rejected token %d that its mask allowed", (int)pick);
        if (rc) break;
        (void)gram_matcher_is_complete(m);
    }
    gram_matcher_free(m);
    gram_store_free(st);
}

static void check_completion(const struct api_model_info *mi, const struct api_completion *c, int kind) {
    const struct req_params *p = &c->p;
    if (c->n < 1 || c->n > API_MAX_N) fz_fail("n = %d accepted", c->n);
    const struct req_stops *st = p->stops;
    if (st && (st->n < 1 || st->n > REQ_MAX_STOP)) fz_fail("%d stop strings", st->n);
    for (int i = 0; st && i < st->n; i++)
        if (!st->s[i] || strlen(st->s[i]) != st->len[i] || st->len[i] > st->max_len)
            fz_fail("stop[%d] inconsistent", i);
    struct sched_limits lim = {mi->n_ctx, mi->n_vocab, mi->kv_pages};
    char msg[320];
    int field = 0;
    if (sched_check_params(&lim, p, msg, sizeof msg, &field) != 0)
        fz_fail("accepted by the api, refused by the scheduler: %s", msg);
    if (p->grammar) run_grammar(p->grammar, kind);
}

/* The tool-call parser over text (model output), fed whole and in pieces of
 * `step` bytes: content and calls must agree. */
static void check_tool_stream(const struct api_tools *tools, const char *text, size_t n, size_t step) {
    struct api_tool_stream a, b;
    struct api_buf ca, cb;
    api_tool_stream_init(&a, tools);
    api_tool_stream_init(&b, tools);
    api_buf_init(&ca);
    api_buf_init(&cb);
    if (api_tool_stream_feed(&a, text, n, 1, &ca) != 0) fz_fail("tool parser: out of memory");
    for (size_t off = 0; off < n || off == 0; off += step) {
        size_t k = n - off < step ? n - off : step;
        if (api_tool_stream_feed(&b, text + off, k, off + k >= n, &cb) != 0) fz_fail("tool parser: out of memory");
        if (off + k >= n) break;
    }
    if (ca.len != cb.len || (ca.len && memcmp(ca.data, cb.data, ca.len) != 0))
        fz_fail("tool parser: content whole \"%.*s\" vs pieces of %zu \"%.*s\"", (int)ca.len, ca.data, step,
                (int)cb.len, cb.data);
    if (a.n_calls != b.n_calls) fz_fail("tool parser: %d calls whole, %d in pieces", a.n_calls, b.n_calls);
    for (int i = 0; i < a.n_calls; i++) {
        if (strcmp(a.calls[i].name, b.calls[i].name) != 0 || strcmp(a.calls[i].args, b.calls[i].args) != 0)
            fz_fail("tool parser: call %d differs", i);
        cJSON *j = cJSON_Parse(a.calls[i].args);
        if (!j || !cJSON_IsObject(j)) fz_fail("tool call arguments are not a JSON object: %s", a.calls[i].args);
        cJSON_Delete(j);
    }
    api_buf_free(&ca);
    api_buf_free(&cb);
    api_tool_stream_free(&a);
    api_tool_stream_free(&b);
}

/* /v1/embeddings: parse; an accepted request's inputs are checked and its
 * answer over made-up unit vectors must be JSON. */
static void run_embeddings(const struct api_model_info *mi, const char *body, size_t len) {
    enum { N_EMBD = 8 };
    struct api_embed_config ec = {ENG_POOL_MEAN, N_EMBD, 4};
    struct api_embed em;
    struct api_error err;
    memset(&err, 0, sizeof err);
    int rc = api_embed_parse(mi, &ec, body, len, &em, &err);
    if (rc != 0) {
        check_error(rc, &err);
        return;
    }
    if (em.n < 1 || em.n > ec.max_inputs) fz_fail("%d embedding inputs accepted", em.n);
    if (em.dimensions < 1 || em.dimensions > N_EMBD) fz_fail("dimensions %d", em.dimensions);
    static const float unit[N_EMBD] = {0.5f, -0.5f, 0.5f, -0.5f, 0, 0, 0, 0};
    const float *vecs[4];
    for (int i = 0; i < em.n; i++) {
        const struct req_params *p = &em.p[i];
        if (p->n_prompt < 1 || p->n_prompt > mi->n_ctx) fz_fail("input %d: %d tokens", i, p->n_prompt);
        for (int32_t k = 0; k < p->n_prompt; k++)
            if (p->prompt[k] < 0 || p->prompt[k] >= mi->n_vocab) fz_fail("input %d: id %d", i, p->prompt[k]);
        vecs[i] = unit;
    }
    struct api_buf b;
    api_buf_init(&b);
    if (api_embed_json(&b, mi->name, &em, vecs, N_EMBD) != 0) fz_fail("api_embed_json failed");
    check_json("/v1/embeddings answer", b.data, b.len);
    api_buf_free(&b);
    api_embed_free(&em);
}

/* Routing and template detection over the raw bytes (selector bit 7). */
static void route_and_template(const char *s, size_t n) {
    int uses_bos = 0;
    int fam = api_tmpl_detect(s, n, &uses_bos);
    if (fam < API_TMPL_NONE || fam > API_TMPL_GEMMA) fz_fail("api_tmpl_detect = %d", fam);
    char *z = malloc(n + 1); /* NUL-terminated copy, split at the first ' ' and '\n' */
    if (!z) return;
    memcpy(z, s, n);
    z[n] = 0;
    char *url = strchr(z, ' ');
    char *auth = strchr(z, '\n');
    if (url) *url++ = 0;
    if (auth) *auth++ = 0;
    if (url && auth && auth < url) auth = NULL;
    int allowed = -1;
    const char *allow = NULL;
    int r = api_route_find(z, url ? url : "/", &allowed, &allow);
    if (r < API_ROUTE_NONE || r >= API_ROUTE_COUNT || (allowed != 0 && allowed != 1))
        fz_fail("api_route_find = %d, allowed %d", r, allowed);
    if (r != API_ROUTE_NONE && !allowed && !allow) fz_fail("405 without an Allow header");
    (void)api_path_needs_auth(url ? url : z);
    const char *a = auth ? auth : z;
    if (api_auth_ok(a, "fuzz-key")) {
        /* only "Bearer" (any case), blanks, the key, blanks */
        const char *k = strcasestr(a, "fuzz-key");
        int ok = k && strncasecmp(a, "bearer", 6) == 0 && strspn(a + 6, " \t") == (size_t)(k - a - 6) &&
                 k - a > 6 && strspn(k + 8, " \t") == strlen(k + 8) && strncmp(k, "fuzz-key", 8) == 0;
        if (!ok) fz_fail("api_auth_ok accepted '%s'", a);
    }
    free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t sel = data[0];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    if (sel & 0x80) {
        route_and_template(body, len);
        return 0;
    }
    int kind = sel >> 5 & 1;
    const struct tok *t = fz_tok(kind);
    int family = (sel >> 2 & 7) % 6;
    struct api_model_info mi = {
        .name = "fuzz-model",
        .n_ctx = N_CTX,
        .n_vocab = tok_n_vocab(t),
        .tok = t,
        .created = 1700000000,
        .chat_family = family,
        .chat_bos = family != API_TMPL_CHATML,
        .kv_pages = sel & 0x40 ? 64 : 0,
    };
    struct api_error err;
    memset(&err, 0, sizeof err);
    int route = sel & 3;
    if (route <= 1) {
        struct api_completion c;
        int rc = route == 0 ? api_completion_parse(&mi, body, len, &c, &err)
                            : api_chat_parse(&mi, body, len, &c, &err);
        if (rc == 0) {
            check_completion(&mi, &c, kind);
            if (c.tools) {
                check_tool_stream(c.tools, body, len, 7);
                cJSON *root = cJSON_ParseWithLength(body, len);
                const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
                const cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
                const cJSON *text = cJSON_GetObjectItemCaseSensitive(last, "content");
                if (cJSON_IsString(text)) {
                    size_t n = strlen(text->valuestring);
                    check_tool_stream(c.tools, text->valuestring, n, 1);
                    check_tool_stream(c.tools, text->valuestring, n, 5);
                }
                cJSON_Delete(root);
            }
            api_completion_free(&c);
        } else {
            check_error(rc, &err);
        }
        return 0;
    }
    if (route == 3 && sel & 0x40) {
        run_embeddings(&mi, body, len);
        return 0;
    }
    struct api_buf b;
    api_buf_init(&b);
    int rc = route == 2 ? api_tokenize(&mi, body, len, &b, &err) : api_detokenize(&mi, body, len, &b, &err);
    if (rc == 0)
        check_json(route == 2 ? "/tokenize answer" : "/detokenize answer", b.data, b.len);
    else
        check_error(rc, &err);
    api_buf_free(&b);
    return 0;
}
