/* api.c - routing table, API-key check and the small fixed responses.
 *
 * Pure functions; any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/api.h"
#include "kernels/ss_error.h"

struct route {
    const char *path;
    int route;
    const char *method; /* the one allowed method (GET routes also take HEAD) */
    const char *allow;  /* Allow header for 405 */
};

static const struct route routes[] = {
    {"/health", API_ROUTE_HEALTH, "GET", "GET, HEAD"},
    {"/v1/models", API_ROUTE_MODELS, "GET", "GET, HEAD"},
    {"/v1/completions", API_ROUTE_COMPLETIONS, "POST", "POST"},
    {"/v1/chat/completions", API_ROUTE_CHAT, "POST", "POST"},
    {"/v1/embeddings", API_ROUTE_EMBEDDINGS, "POST", "POST"},
    {"/tokenize", API_ROUTE_TOKENIZE, "POST", "POST"},
    {"/detokenize", API_ROUTE_DETOKENIZE, "POST", "POST"},
    {"/metrics", API_ROUTE_METRICS, "GET", "GET, HEAD"},
};

int api_route_find(const char *method, const char *url, int *allowed, const char **allow_hdr) {
    *allowed = 0;
    *allow_hdr = NULL;
    if (!url || !method)
        return API_ROUTE_NONE;
    size_t n = strcspn(url, "?#");
    /* tolerate one trailing slash ("/v1/models/") */
    if (n > 1 && url[n - 1] == '/')
        n--;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const struct route *r = &routes[i];
        if (strlen(r->path) != n || memcmp(r->path, url, n) != 0)
            continue;
        *allow_hdr = r->allow;
        if (strcmp(method, r->method) == 0 ||
            (strcmp(r->method, "GET") == 0 && strcmp(method, "HEAD") == 0))
            *allowed = 1;
        return r->route;
    }
    return API_ROUTE_NONE;
}

/* 1 if url is path exactly, up to an optional query string. */
static int path_is(const char *url, const char *path) {
    size_t n = strlen(path);
    return strncmp(url, path, n) == 0 && (url[n] == '\0' || url[n] == '?');
}

int api_path_needs_auth(const char *url) {
    if (!url)
        return 0;
    if (path_is(url, "/tokenize") || path_is(url, "/detokenize"))
        return 1; /* they run the model's tokenizer: as costly as /v1 (issue 14) */
    return strncmp(url, "/v1", 3) == 0 && (url[3] == '/' || url[3] == '\0' || url[3] == '?');
}

int api_auth_ok(const char *authorization, const char *key) {
    if (!key || !key[0])
        return 1;
    if (!authorization)
        return 0;
    /* scheme is case-insensitive; allow extra spaces after it */
    if (strncasecmp(authorization, "Bearer", 6) != 0 || (authorization[6] != ' ' &&
                                                         authorization[6] != '\t'))
        return 0;
    const char *tok = authorization + 6;
    while (*tok == ' ' || *tok == '\t')
        tok++;
    size_t tl = strlen(tok);
    while (tl > 0 && (tok[tl - 1] == ' ' || tok[tl - 1] == '\t'))
        tl--;
    size_t kl = strlen(key);
    /* compare every byte of the key whatever the token: no early exit */
    unsigned diff = (unsigned)(tl != kl);
    for (size_t i = 0; i < kl; i++) {
        unsigned char t = i < tl ? (unsigned char)tok[i] : 0;
        diff |= (unsigned)(t ^ (unsigned char)key[i]);
    }
    return diff == 0;
}

void api_completion_id(char *out, size_t cap, uint64_t seq, int kind) {
    /* Unique within a process by seq; the clock and address-space bits make
     * collisions across restarts unlikely. Not a secret. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)(uintptr_t)out << 7);
    uint64_t z = a + seq * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    snprintf(out, cap, "%s-%016llx%016llx", kind == API_KIND_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)z, (unsigned long long)seq);
}

int api_models_json(struct api_buf *b, const struct api_model_info *mi) {
    const char *name = mi->name ? mi->name : "";
    api_buf_puts(b, "{\"object\":\"list\",\"data\":[{\"id\":");
    api_buf_json_str(b, name, strlen(name));
    api_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"slimserve\",\"root\":",
                   (long long)mi->created);
    api_buf_json_str(b, name, strlen(name));
    return api_buf_printf(b, ",\"parent\":null,\"max_model_len\":%d}]}", mi->n_ctx);
}

int api_health_json(struct api_buf *b) {
    return api_buf_puts(b, "{\"status\":\"ok\"}");
}
