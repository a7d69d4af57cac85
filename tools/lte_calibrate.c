/* lte_calibrate.c - `slimserve lte-calibrate`: an LTE file (DESIGN.md 4, 5)
 * from any dense model, MoEfication style.
 *
 *   1. FFN inputs: the model itself runs over the calibration text (windows
 *      of --ctx tokens, at most --max-tokens in all) and an engine probe
 *      (eng_model_set_ffn_probe) records every layer's normalised FFN input
 *      rows X [N][dim].
 *   2. Experts, per layer: balanced k-means of the gate rows into E = ffn/S
 *      clusters of exactly S neurons (centroids start at rows picked by a
 *      seeded splitmix64; each round assigns (neuron, cluster) pairs in
 *      increasing distance while clusters have room; 12 rounds). Expert e =
 *      cluster e, its neurons in increasing original order.
 *   3. Labels: per token, the output norm of each expert, ||down_e h_e||^2 =
 *      h_e^T G_e h_e with h = act(X gate^T) * (X up^T) and G_e = down_e^T
 *      down_e (S x S); an expert "matters" for a token when its norm is among
 *      the token's top K = round((1 - sparsity) E).
 *   4. Router, per layer: a ridge least-squares linear probe W = (X^T X +
 *      lambda I)^-1 X^T (Y - mean Y) (lambda = 1e-3 * trace / dim), bias =
 *      mean Y; then one shift of every bias so that exactly the target
 *      fraction of (token, expert) scores is <= 0 on the calibration text
 *      (the threshold is tau = 0.5, r > 0).
 *   5. The file: every key copied, lte.expert_size and lte.threshold added;
 *      gate and up rows permuted (whole rows: exact, type kept); down columns
 *      permuted: exact for F32/F16/BF16, re-quantised to Q8_0 for block types
 *      (a column permutation crosses their blocks; Q8_0 has 32-element
 *      blocks, so expert columns stay whole blocks, and its 8-bit values are
 *      finer than any 4-6 bit type they come from); routers F32.
 * Deterministic: the same inputs, options and seed give a byte-identical file
 * (fixed loop orders, double sums, be_matmul's batch-independent values).
 * Progress on stderr.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"
#include "tools/genmodel.h"
#include "tools/lte_calibrate.h"

struct cal {
    const char *model, *out;
    const char *texts[256];
    int n_texts;
    double sparsity;
    int S, ctx, max_tokens;
    uint64_t seed;
    /* state */
    struct eng_model *m;
    const struct eng_config *c;
    int E;
    int64_t N;       /* tokens recorded */
    float **X;       /* [n_layers][N][dim] */
    int *perm;       /* [n_layers][ffn]: new neuron i = old neuron perm[i] */
    float **W;       /* [n_layers][E][dim] routers */
    float **b;       /* [n_layers][E] */
};

static void probe(void *ctx, int layer, const float *xn, int n) {
    struct cal *k = ctx;
    memcpy(k->X[layer] + (size_t)k->N * k->c->dim, xn, sizeof(float) * (size_t)n * k->c->dim);
}

static uint64_t sm64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A 2-D tensor of the input file as floats [rows][ne0] (malloc). */
static float *dequant(const struct gguf_file *f, const char *name, int64_t *ne0, int64_t *rows) {
    const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
    if (!t) return NULL;
    *ne0 = t->ne[0], *rows = t->ne[1];
    float *v = malloc(sizeof(float) * (size_t)(*ne0 * *rows));
    size_t rb = be_row_bytes(t->type, *ne0);
    for (int64_t r = 0; v && r < *rows; r++) kref_dequant_row(t->type, (const uint8_t *)t->data + r * rb, v + r * *ne0, *ne0);
    return v;
}

/* 1. Runs the model over the text, recording FFN inputs. */
static int record(struct cal *k, const int32_t *toks, int64_t n_toks) {
    int32_t pages[4096];
    int P = (k->ctx + 15) / 16;
    for (int i = 0; i < P; i++) pages[i] = i;
    struct eng_kv_tables tab;
    int rc = eng_kv_identity_tables(&tab, k->m, pages, P);
    if (rc < 0) return rc;
    for (int64_t at = 0; at + k->ctx <= n_toks && k->N + k->ctx <= k->max_tokens; at += k->ctx) {
        struct eng_seq s = {.tok0 = 0, .n_tok = k->ctx, .layer_pages = tab.rows, .layer_n_pages = P};
        struct eng_batch bt = {.tokens = toks + at, .n_tokens = k->ctx, .seqs = &s, .n_seqs = 1};
        if ((rc = eng_forward(k->m, &bt, NULL)) < 0) break;
        k->N += k->ctx;
        fprintf(stderr, "lte-calibrate: FFN inputs of %lld tokens\r", (long long)k->N);
    }
    fprintf(stderr, "\n");
    eng_kv_tables_free(&tab);
    return rc < 0 ? rc : k->N > 0 ? 0 : SS_EINVAL;
}

struct pair {
    double d;
    int p;
};
static int pair_cmp(const void *a, const void *b) {
    const struct pair *x = a, *y = b;
    return x->d < y->d ? -1 : x->d > y->d ? 1 : (x->p > y->p) - (x->p < y->p);
}
static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* 2. Balanced k-means of the ffn gate rows g [ffn][dim] into E clusters of S. */
static void kmeans(const struct cal *k, const float *g, int *perm) {
    const int F = k->c->ffn_dim, D = k->c->dim, E = k->E, S = k->S;
    double *cen = calloc((size_t)E * D, sizeof *cen), *dist = malloc(sizeof(double) * (size_t)F * E);
    int *cl = malloc(sizeof(int) * F), *cnt = malloc(sizeof(int) * E);
    struct pair *pr = malloc(sizeof *pr * (size_t)F * E);
    uint64_t st = k->seed;
    for (int e = 0; e < E; e++) {
        int r = (int)(sm64(&st) % (uint64_t)F);
        for (int d = 0; d < D; d++) cen[(size_t)e * D + d] = g[(size_t)r * D + d];
    }
    for (int it = 0; it < 12; it++) {
        for (int i = 0; i < F; i++)
            for (int e = 0; e < E; e++) {
                double s = 0;
                for (int d = 0; d < D; d++) {
                    double t = g[(size_t)i * D + d] - cen[(size_t)e * D + d];
                    s += t * t;
                }
                dist[(size_t)i * E + e] = s;
            }
        /* (neuron, cluster) pairs by increasing distance, ties by index: a total order */
        for (int64_t p = 0; p < (int64_t)F * E; p++) pr[p] = (struct pair){dist[p], (int)p};
        qsort(pr, (size_t)F * E, sizeof *pr, pair_cmp);
        for (int i = 0; i < F; i++) cl[i] = -1;
        memset(cnt, 0, sizeof(int) * E);
        for (int64_t p = 0; p < (int64_t)F * E; p++) {
            int i = pr[p].p / E, e = pr[p].p % E;
            if (cl[i] < 0 && cnt[e] < S) cl[i] = e, cnt[e]++;
        }
        memset(cen, 0, sizeof(double) * (size_t)E * D);
        for (int i = 0; i < F; i++)
            for (int d = 0; d < D; d++) cen[(size_t)cl[i] * D + d] += g[(size_t)i * D + d] / S;
    }
    int o = 0;
    for (int e = 0; e < E; e++)
        for (int i = 0; i < F; i++)
            if (cl[i] == e) perm[o++] = i;
    free(cen), free(dist), free(cl), free(cnt), free(pr);
}

/* Solves A x = b in place for nrhs right-hand sides (A [n][n] SPD, b [n][nrhs];
 * Cholesky, double). Returns 0 or -1 when A is not positive definite. */
static int chol_solve(double *A, double *b, int n, int nrhs) {
    for (int j = 0; j < n; j++) {
        double s = A[(size_t)j * n + j];
        for (int k = 0; k < j; k++) s -= A[(size_t)j * n + k] * A[(size_t)j * n + k];
        if (!(s > 0)) return -1;
        double l = sqrt(s);
        A[(size_t)j * n + j] = l;
        for (int i = j + 1; i < n; i++) {
            double t = A[(size_t)i * n + j];
            for (int k = 0; k < j; k++) t -= A[(size_t)i * n + k] * A[(size_t)j * n + k];
            A[(size_t)i * n + j] = t / l;
        }
    }
    for (int r = 0; r < nrhs; r++) {
        for (int i = 0; i < n; i++) { /* L y = b */
            double t = b[(size_t)i * nrhs + r];
            for (int k = 0; k < i; k++) t -= A[(size_t)i * n + k] * b[(size_t)k * nrhs + r];
            b[(size_t)i * nrhs + r] = t / A[(size_t)i * n + i];
        }
        for (int i = n - 1; i >= 0; i--) { /* L^T x = y */
            double t = b[(size_t)i * nrhs + r];
            for (int k = i + 1; k < n; k++) t -= A[(size_t)k * n + i] * b[(size_t)k * nrhs + r];
            b[(size_t)i * nrhs + r] = t / A[(size_t)i * n + i];
        }
    }
    return 0;
}

/* 3. Labels Y [N][E] (0/1) of layer il: the token's top-K experts by output
 * norm, experts in the permuted order. */
static int labels(struct cal *k, struct be *be, int il, const int *perm, uint8_t *Y) {
    const int F = k->c->ffn_dim, D = k->c->dim, E = k->E, S = k->S;
    const int64_t N = k->N;
    const struct gguf_file *f = eng_model_gguf(k->m);
    char name[64];
    float *h = malloc(sizeof(float) * (size_t)N * F), *u = malloc(sizeof(float) * (size_t)N * F);
    double *G = malloc(sizeof(double) * (size_t)E * S * S), *nrm = malloc(sizeof(double) * E), *srt = malloc(sizeof(double) * E);
    int64_t ne0, rows;
    snprintf(name, sizeof name, "blk.%d.ffn_down.weight", il);
    float *down = dequant(f, name, &ne0, &rows); /* [dim][ffn] */
    if (!h || !u || !G || !nrm || !srt || !down) {
        free(h), free(u), free(G), free(nrm), free(srt), free(down);
        return SS_ENOMEM;
    }
    for (int part = 0; part < 2; part++) {
        snprintf(name, sizeof name, "blk.%d.ffn_%s.weight", il, part ? "up" : "gate");
        const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
        struct be_tensor w = {.type = t->type, .ne = {D, F, 1, 1}, .nb1 = be_row_bytes(t->type, D), .data = t->data};
        be_matmul(be, part ? u : h, k->X[il], &w, (int)N);
    }
    be_glu(be, h, h, u, N * F, k->c->arch == ENG_ARCH_GEMMA3 ? 1 : 0);
    for (int e = 0; e < E; e++)
        for (int j = 0; j < S; j++)
            for (int q = 0; q < S; q++) {
                double s = 0;
                for (int d = 0; d < D; d++)
                    s += (double)down[(size_t)d * F + perm[e * S + j]] * down[(size_t)d * F + perm[e * S + q]];
                G[((size_t)e * S + j) * S + q] = s;
            }
    int K = (int)lround((1.0 - k->sparsity) * E);
    K = K < 1 ? 1 : K > E ? E : K;
    for (int64_t t = 0; t < N; t++) {
        const float *ht = h + (size_t)t * F;
        for (int e = 0; e < E; e++) {
            double s = 0;
            const double *g = G + (size_t)e * S * S;
            for (int j = 0; j < S; j++)
                for (int q = 0; q < S; q++) s += ht[perm[e * S + j]] * g[j * S + q] * ht[perm[e * S + q]];
            nrm[e] = srt[e] = s;
        }
        qsort(srt, (size_t)E, sizeof *srt, dbl_cmp);
        double cut = srt[E - K]; /* the K-th largest */
        int taken = 0;
        for (int e = 0; e < E; e++) { /* ties at the cut: lower experts first, exactly K */
            int on = nrm[e] > cut || (nrm[e] == cut && taken < K);
            if (nrm[e] >= cut && on) taken++;
            Y[(size_t)t * E + e] = (uint8_t)on;
        }
    }
    free(h), free(u), free(G), free(nrm), free(srt), free(down);
    return 0;
}

/* 4. Router of layer il from X and Y: ridge least squares, then the bias
 * shift for the target sparsity. */
static int fit_router(struct cal *k, int il, const uint8_t *Y) {
    const int D = k->c->dim, E = k->E;
    const int64_t N = k->N;
    const float *X = k->X[il];
    double *A = calloc((size_t)D * D, sizeof *A), *B = calloc((size_t)D * E, sizeof *B), *ym = calloc(E, sizeof *ym);
    double *r = malloc(sizeof(double) * (size_t)N * E);
    if (!A || !B || !ym || !r) {
        free(A), free(B), free(ym), free(r);
        return SS_ENOMEM;
    }
    for (int64_t t = 0; t < N; t++)
        for (int e = 0; e < E; e++) ym[e] += Y[(size_t)t * E + e] / (double)N;
    for (int64_t t = 0; t < N; t++) {
        const float *x = X + (size_t)t * D;
        for (int i = 0; i < D; i++) {
            for (int j = 0; j <= i; j++) A[(size_t)i * D + j] += (double)x[i] * x[j];
            for (int e = 0; e < E; e++) B[(size_t)i * E + e] += (double)x[i] * (Y[(size_t)t * E + e] - ym[e]);
        }
    }
    double tr = 0;
    for (int i = 0; i < D; i++) tr += A[(size_t)i * D + i];
    for (int i = 0; i < D; i++) {
        A[(size_t)i * D + i] += 1e-3 * tr / D + 1e-12;
        for (int j = i + 1; j < D; j++) A[(size_t)i * D + j] = A[(size_t)j * D + i];
    }
    int rc = chol_solve(A, B, D, E) < 0 ? SS_EINVAL : 0;
    for (int64_t t = 0; rc == 0 && t < N; t++)
        for (int e = 0; e < E; e++) {
            double s = ym[e];
            for (int d = 0; d < D; d++) s += B[(size_t)d * E + e] * X[(size_t)t * D + d];
            r[(size_t)t * E + e] = s;
        }
    if (rc == 0) {
        qsort(r, (size_t)(N * E), sizeof *r, dbl_cmp);
        int64_t kk = (int64_t)llround(k->sparsity * (double)(N * E));
        kk = kk < 1 ? 1 : kk > N * E - 1 ? N * E - 1 : kk;
        double q = 0.5 * (r[kk - 1] + r[kk]); /* kk scores below, the rest above */
        for (int e = 0; e < E; e++) {
            k->b[il][e] = (float)(ym[e] - q);
            for (int d = 0; d < D; d++) k->W[il][(size_t)e * D + d] = (float)B[(size_t)d * E + e];
        }
    }
    free(A), free(B), free(ym), free(r);
    return rc;
}

/* Tensor t of the input as the output writes it: gate/up rows and down
 * columns permuted for layers with a router. */
static int write_tensor(struct cal *k, struct gguf_writer *w, const struct gguf_tensor_info *t, const char *name) {
    int il = -1, off = 0, kind = 0; /* 1 gate/up, 2 down */
    char suf[64] = "";
    if (sscanf(name, "blk.%d.%n", &il, &off) == 1 && off > 0) snprintf(suf, sizeof suf, "%s", name + off);
    kind = !strcmp(suf, "ffn_gate.weight") || !strcmp(suf, "ffn_up.weight") ? 1 : !strcmp(suf, "ffn_down.weight") ? 2 : 0;
    if (kind == 0 || il < 0 || il >= k->c->n_layers) {
        gguf_w_tensor(w, name, t->type, (int)t->n_dims, t->ne, t->data, t->nbytes);
        return 0;
    }
    const int *perm = k->perm + (size_t)il * k->c->ffn_dim;
    const int64_t ne0 = t->ne[0], rows = t->ne[1];
    const size_t rb = be_row_bytes(t->type, ne0);
    if (kind == 1) { /* whole rows: exact for any type */
        uint8_t *o = malloc(rb * (size_t)rows);
        if (!o) return SS_ENOMEM;
        for (int64_t r = 0; r < rows; r++) memcpy(o + (size_t)r * rb, (const uint8_t *)t->data + (size_t)perm[r] * rb, rb);
        gguf_w_tensor(w, name, t->type, 2, t->ne, o, rb * (size_t)rows);
        free(o);
        return 0;
    }
    const int es = t->type == BE_F32 ? 4 : t->type == BE_F16 || t->type == BE_BF16 ? 2 : 0;
    const int otype = es ? t->type : BE_Q8_0;
    const size_t orb = es ? rb : be_row_bytes(BE_Q8_0, ne0);
    uint8_t *o = malloc(orb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)ne0), *pr = malloc(sizeof(float) * (size_t)ne0);
    if (!o || !row || !pr || (!es && ne0 % 32)) {
        free(o), free(row), free(pr);
        return o && row && pr ? SS_EUNSUPPORTED : SS_ENOMEM;
    }
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *src = (const uint8_t *)t->data + (size_t)r * rb;
        uint8_t *dst = o + (size_t)r * orb;
        if (es) { /* element columns: exact */
            for (int64_t i = 0; i < ne0; i++) memcpy(dst + i * es, src + (size_t)perm[i] * es, (size_t)es);
            continue;
        }
        kref_dequant_row(t->type, src, row, ne0);
        for (int64_t i = 0; i < ne0; i++) pr[i] = row[perm[i]];
        for (int64_t bk = 0; bk < ne0 / 32; bk++) genmodel_q8_0_block(pr + 32 * bk, dst + 34 * bk);
    }
    gguf_w_tensor(w, name, otype, 2, t->ne, o, orb * (size_t)rows);
    free(o), free(row), free(pr);
    return 0;
}

static int write_out(struct cal *k, char *err, size_t err_len) {
    const struct gguf_file *f = eng_model_gguf(k->m);
    struct gguf_writer *w = gguf_writer_new();
    char name[160];
    int rc = 0;
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        snprintf(name, sizeof name, "%.*s", (int)kv->key.len, kv->key.s);
        if (strncmp(name, "lte.", 4) != 0) gguf_w_copy_kv(w, name, kv);
    }
    gguf_w_u32(w, "lte.expert_size", (uint32_t)k->S);
    gguf_w_f32(w, "lte.threshold", 0.5f);
    for (int64_t i = 0; i < gguf_n_tensors(f) && rc == 0; i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        rc = write_tensor(k, w, t, name);
    }
    for (int il = 0; il < k->c->n_layers && rc == 0; il++) {
        int64_t ne[2] = {k->c->dim, k->E};
        snprintf(name, sizeof name, "blk.%d.ffn_router.weight", il);
        gguf_w_tensor(w, name, BE_F32, 2, ne, k->W[il], sizeof(float) * (size_t)k->E * k->c->dim);
        snprintf(name, sizeof name, "blk.%d.ffn_router.bias", il);
        gguf_w_tensor(w, name, BE_F32, 1, &ne[1], k->b[il], sizeof(float) * (size_t)k->E);
    }
    if (rc == 0) rc = gguf_writer_save(w, k->out, err, err_len);
    else snprintf(err, err_len, "writing the tensors failed: %s", ss_strerror(rc));
    gguf_writer_free(w);
    return rc;
}

/* The whole text of every file, tokenized (no BOS). */
static int32_t *read_tokens(struct cal *k, int64_t *n, char *err, size_t err_len) {
    size_t len = 0, cap = 0;
    char *all = NULL;
    for (int i = 0; i < k->n_texts; i++) {
        FILE *fp = fopen(k->texts[i], "rb");
        if (!fp) {
            snprintf(err, err_len, "cannot open %s: %s", k->texts[i], strerror(errno));
            free(all);
            return NULL;
        }
        char buf[65536];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, fp)) > 0 && len < ((size_t)64 << 20)) {
            if (len + got + 2 > cap) {
                cap = (len + got + 2) * 2;
                char *nb = realloc(all, cap);
                if (!nb) break;
                all = nb;
            }
            memcpy(all + len, buf, got);
            len += got;
        }
        fclose(fp);
        if (all) all[len++] = '\n';
    }
    const struct tok *t = eng_model_tok(k->m);
    int64_t want = tok_encode(t, all ? all : "", len, 0, 0, NULL, 0);
    int32_t *toks = want > 0 ? malloc(sizeof(int32_t) * (size_t)want) : NULL;
    *n = toks ? tok_encode(t, all, len, 0, 0, toks, want) : 0;
    free(all);
    if (!toks || *n <= 0) {
        snprintf(err, err_len, "the text holds no tokens");
        free(toks);
        return NULL;
    }
    return toks;
}

static int calibrate(struct cal *k, char *err, size_t err_len) {
    struct eng_options o = {.n_ctx = k->ctx, .max_batch_tokens = k->ctx, .kv_default_seqs = 1, .lte_off = 1};
    int rc = eng_model_load(&k->m, k->model, &o, err, err_len);
    if (rc < 0) return rc;
    k->c = eng_model_config(k->m);
    const int L = k->c->n_layers, D = k->c->dim;
    if (k->c->ffn_dim % k->S) {
        snprintf(err, err_len, "the FFN size %d is not a multiple of the expert size %d", k->c->ffn_dim, k->S);
        return SS_EINVAL;
    }
    k->E = k->c->ffn_dim / k->S;
    int64_t n_toks = 0;
    int32_t *toks = read_tokens(k, &n_toks, err, err_len);
    if (!toks) return SS_EINVAL;
    if (n_toks / k->ctx * k->ctx < k->max_tokens) k->max_tokens = (int)(n_toks / k->ctx * k->ctx);
    k->X = calloc((size_t)L, sizeof *k->X);
    k->W = calloc((size_t)L, sizeof *k->W);
    k->b = calloc((size_t)L, sizeof *k->b);
    k->perm = malloc(sizeof(int) * (size_t)L * k->c->ffn_dim);
    for (int il = 0; k->X && il < L; il++) {
        k->X[il] = malloc(sizeof(float) * (size_t)k->max_tokens * D);
        k->W[il] = malloc(sizeof(float) * (size_t)k->E * D);
        k->b[il] = malloc(sizeof(float) * (size_t)k->E);
        if (!k->X[il] || !k->W[il] || !k->b[il]) rc = SS_ENOMEM;
    }
    if (!k->X || !k->W || !k->b || !k->perm || rc < 0 || k->max_tokens < k->ctx) {
        free(toks);
        snprintf(err, err_len, k->max_tokens < k->ctx ? "the text is shorter than one window of --ctx tokens" : "out of memory");
        return k->max_tokens < k->ctx ? SS_EINVAL : SS_ENOMEM;
    }
    eng_model_set_ffn_probe(k->m, probe, k);
    rc = record(k, toks, n_toks);
    eng_model_set_ffn_probe(k->m, NULL, NULL);
    free(toks);
    if (rc < 0) return rc;
    struct be be;
    if ((rc = be_open(&be, "cpu", 0)) < 0) return rc;
    uint8_t *Y = malloc((size_t)k->N * k->E);
    for (int il = 0; il < L && rc == 0 && Y; il++) {
        fprintf(stderr, "lte-calibrate: layer %d/%d: k-means, labels, router\n", il + 1, L);
        char name[64];
        int64_t ne0, rows;
        snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", il);
        float *g = dequant(eng_model_gguf(k->m), name, &ne0, &rows);
        if (!g) rc = SS_ENOMEM;
        else kmeans(k, g, k->perm + (size_t)il * k->c->ffn_dim);
        free(g);
        if (rc == 0) rc = labels(k, &be, il, k->perm + (size_t)il * k->c->ffn_dim, Y);
        if (rc == 0) rc = fit_router(k, il, Y);
    }
    if (!Y) rc = SS_ENOMEM;
    free(Y);
    be_close(&be);
    if (rc < 0) {
        snprintf(err, err_len, "calibration failed: %s", ss_strerror(rc));
        return rc;
    }
    return write_out(k, err, err_len);
}

static void cal_free(struct cal *k) {
    for (int il = 0; k->c && il < k->c->n_layers; il++) {
        if (k->X) free(k->X[il]);
        if (k->W) free(k->W[il]);
        if (k->b) free(k->b[il]);
    }
    free(k->X), free(k->W), free(k->b), free(k->perm);
    eng_model_free(k->m);
}

static void cal_usage(FILE *fp) {
    fprintf(fp, "usage: slimserve lte-calibrate --model IN.gguf --text FILE [--text FILE...] --sparsity S\n"
                "                               --out OUT.gguf [--expert-size 32] [--seed 1]\n"
                "                               [--max-tokens 4096] [--ctx 256]\n"
                "Makes an LTE file from a dense model: experts of --expert-size FFN neurons by\n"
                "balanced k-means of the gate rows, one router per layer fitted on the model's\n"
                "own FFN inputs over the text, biases set so that a fraction S of the experts\n"
                "(0 < S < 1) is off on that text. The same inputs and seed give the same file.\n");
}

/* A decimal int; a value that is no number, or beyond int, sets *end to a
 * non-empty tail (the caller reports it) and returns -1 (out of every range). */
static int int_arg(const char *v, char **end) {
    static char bad[] = "?";
    errno = 0;
    long x = strtol(v, end, 10);
    if (*end == v || errno || x < INT_MIN || x > INT_MAX) {
        *end = bad;
        return -1;
    }
    return (int)x;
}

int tool_lte_calibrate_main(int argc, char **argv) {
    struct cal k = {.sparsity = -1, .S = 32, .ctx = 256, .max_tokens = 4096, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cal_usage(stdout);
            return 0;
        }
        if (!v) break;
        char *end = NULL;
        if (!strcmp(a, "--model")) k.model = v;
        else if (!strcmp(a, "--out")) k.out = v;
        else if (!strcmp(a, "--text")) {
            if (k.n_texts == 256) {
                fprintf(stderr, "lte-calibrate: at most 256 --text files\n");
                return 2;
            }
            k.texts[k.n_texts++] = v;
        }
        else if (!strcmp(a, "--sparsity")) k.sparsity = strtod(v, &end);
        else if (!strcmp(a, "--expert-size")) k.S = int_arg(v, &end);
        else if (!strcmp(a, "--ctx")) k.ctx = int_arg(v, &end);
        else if (!strcmp(a, "--max-tokens")) k.max_tokens = int_arg(v, &end);
        else if (!strcmp(a, "--seed")) k.seed = strtoull(v, &end, 0);
        else {
            fprintf(stderr, "lte-calibrate: unexpected argument '%s' (try --help)\n", a);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "lte-calibrate: bad value for %s: '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    if (!k.model || !k.out || !k.n_texts || !(k.sparsity > 0 && k.sparsity < 1) || k.S < 1 || k.S > 4096 ||
        k.ctx < 2 || k.ctx > 4096 || k.max_tokens < k.ctx || k.max_tokens > (1 << 20)) {
        fprintf(stderr, "lte-calibrate: need --model, --out, --text and --sparsity in (0, 1); --expert-size in "
                        "[1, 4096], --ctx in [2, 4096], --max-tokens >= --ctx (try --help)\n");
        return 2;
    }
    char err[512] = "";
    int rc = calibrate(&k, err, sizeof err);
    if (rc < 0) fprintf(stderr, "lte-calibrate: %s\n", err[0] ? err : ss_strerror(rc));
    else fprintf(stderr, "lte-calibrate: wrote %s: %d layers, %d experts of %d, target sparsity %g, %lld tokens\n",
                 k.out, k.c->n_layers, k.E, k.S, k.sparsity, (long long)k.N);
    cal_free(&k);
    return rc < 0 ? 1 : 0;
}
