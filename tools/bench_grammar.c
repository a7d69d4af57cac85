/* bench_grammar.c - cost of constrained decoding per token, without a model.
 *
 * Loads a GGUF's tokenizer, builds the vocabulary trie, compiles a JSON
 * Schema, then replays a document token by token (greedy longest-piece
 * split) through S independent matchers, as S constrained streams would:
 * per token, mask (trie walk or cache hit) + apply to a logits row + accept.
 * Prints the trie build time and ms per token per stream for: matchers with
 * private caches; matchers sharing one store, cold (the first requests with
 * this schema) and warm (a second round of new matchers: later requests).
 *
 *   bench_grammar MODEL.gguf [streams] [schema.json document.json]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/gguf.h"
#include "engine/grammar.h"
#include "engine/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

/* Greedy longest-piece split of text over the vocabulary. */
static int split(const struct tok *t, const char *text, int32_t *ids, int cap) {
    int32_t V = tok_n_vocab(t);
    char piece[1024];
    size_t at = 0, len = strlen(text);
    int n = 0;
    while (at < len && n < cap) {
        int best = -1, bl = 0;
        for (int32_t i = 0; i < V; i++) {
            int k = tok_piece(t, i, piece, sizeof piece);
            if (k > bl && (size_t)k <= len - at && memcmp(piece, text + at, (size_t)k) == 0) bl = k, best = i;
        }
        if (best < 0) return -1;
        ids[n++] = best;
        at += (size_t)bl;
    }
    return n;
}

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\","
    "\"minimum\":0,\"maximum\":150},\"email\":{\"type\":\"string\"},\"tags\":{\"type\":\"array\",\"items\":"
    "{\"type\":\"string\"},\"maxItems\":5},\"address\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
    "\"string\"},\"zip\":{\"type\":\"string\",\"pattern\":\"[0-9]{5}\"}},\"required\":[\"city\",\"zip\"]}},"
    "\"required\":[\"name\",\"age\",\"address\"]}";
static const char *DOC =
    "{\n  \"name\": \"Ada Lovelace\",\n  \"age\": 36,\n  \"email\": \"ada@example.org\",\n  \"tags\": "
    "[\"math\", \"poetry\", \"engines\"],\n  \"address\": {\"city\": \"London\", \"zip\": \"12345\"}\n}";

/* One pass: S fresh matchers step through ids; returns seconds. */
static double pass(const struct gram *g, const struct gram_vocab *v, struct gram_store *store, const int32_t *ids,
                   int n, int S, float *row, uint64_t *walks) {
    struct gram_matcher **m = calloc((size_t)S, sizeof(*m));
    int32_t V = gram_vocab_size(v);
    for (int s = 0; s < S; s++)
        if (gram_matcher_new(&m[s], g, v, store) != 0) exit(1);
    double t0 = now_s();
    for (int k = 0; k < n; k++)
        for (int s = 0; s < S; s++) {
            int err;
            const uint32_t *mask = gram_matcher_mask(m[s], &err);
            if (!mask) exit(2);
            gram_apply_mask(row, V, mask);
            if (gram_matcher_accept_token(m[s], ids[k]) != 0) exit(3);
        }
    double dt = now_s() - t0;
    for (int s = 0; s < S; s++) {
        uint64_t w, h;
        gram_matcher_counters(m[s], &w, &h);
        *walks += w;
        gram_matcher_free(m[s]);
    }
    free(m);
    return dt;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_grammar MODEL.gguf [streams] [schema.json document.json]\n");
        return 2;
    }
    int S = argc > 2 ? atoi(argv[2]) : 1;
    const char *schema = argc > 4 ? slurp(argv[3]) : SCHEMA, *doc = argc > 4 ? slurp(argv[4]) : DOC;
    char err[256];
    struct gguf_file *f;
    struct tok *t;
    if (!schema || !doc || gguf_open(&f, argv[1], err, sizeof err) != 0 || tok_load(&t, f, err, sizeof err) != 0) {
        fprintf(stderr, "load failed: %s\n", err);
        return 1;
    }
    gguf_close(f);
    double t0 = now_s();
    struct gram_vocab *v;
    if (gram_vocab_new(&v, t) != 0) return 1;
    double t_trie = now_s() - t0;
    struct gram *g;
    t0 = now_s();
    if (gram_compile_schema(&g, schema, strlen(schema), 0, err, sizeof err) != 0) {
        fprintf(stderr, "schema: %s\n", err);
        return 1;
    }
    double t_comp = now_s() - t0;
    int32_t ids[4096];
    int n = split(t, doc, ids, 4096);
    if (n <= 0) return 1;
    float *row = calloc((size_t)gram_vocab_size(v), sizeof(float));
    uint64_t w1 = 0, w2 = 0, w3 = 0;
    struct gram_store *store;
    if (gram_store_new(&store, gram_vocab_size(v), 512) != 0) return 1;
    double a0 = pass(g, v, NULL, ids, n, S, row, &w3);
    double a = pass(g, v, store, ids, n, S, row, &w1), b = pass(g, v, store, ids, n, S, row, &w2);
    gram_store_free(store);
    printf("vocab %d tokens: trie %.1f ms, schema compile %.2f ms, document %d tokens, %d stream(s)\n",
           gram_vocab_size(v), t_trie * 1e3, t_comp * 1e3, n, S);
    printf("ms per token per stream: private caches %.3f (%llu walks); shared store: cold %.3f (%llu walks), "
           "warm %.3f (%llu walks)\n",
           a0 * 1e3 / n / S, (unsigned long long)w3, a * 1e3 / n / S, (unsigned long long)w1, b * 1e3 / n / S,
           (unsigned long long)w2);
    free(row);
    gram_unref(g);
    gram_vocab_free(v);
    tok_free(t);
    return 0;
}
