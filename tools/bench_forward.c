/* bench_forward.c - single-stream prefill and decode speed of eng_forward.
 *
 *   bench_forward MODEL [-c CTX | -p N_PREFILL] [-n N_DECODE] [-b CHUNK] [-t THREADS]
 *                       [-kv f16|f32] [-r REPEATS] [-lte on|off] [-a f32|int8|mixed|bf16|auto]
 *                       [-B SEQS] [-e cpu|cuda|auto] [-d DEVICE]
 *
 * One sequence: prefills a context of synthetic token ids, then decodes
 * N_DECODE tokens one at a time (greedy on the logits, so the work is real).
 *   -p N  (default 32): the context is prefilled in one forward of N tokens;
 *   -c N: a long context, prefilled in chunks of up to CHUNK tokens (-b,
 *         default 512; the engine's max_batch_tokens is set to it) the way
 *         the scheduler prefills long prompts; decode then runs at context N.
 * Prints prefill tokens/s, decode tokens/s with the memory traffic implied by
 * the weights (GB/s = eng_model_weight_bytes() * tokens/s: decode reads every
 * matrix once; a SUBLLM token dropped by a subsampler reads less), and the
 * KV cache bytes per token actually stored at the end of the prefill:
 *     sum over levels k of kept_k * layers_k * unit_bytes / 16, / context
 * (kept_0 = context; dense models have one level, so this is
 * eng_model_kv_bytes_per_token()). Times are the median of REPEATS runs
 * (each from an empty cache; the runs are identical). Not a test: no
 * pass/fail.
 *
 * -e BACKEND (default cpu) and -d DEVICE (CUDA device number) choose the
 * backend (eng_options.backend / device; tools/gpu_check.sh runs -e cuda).
 *
 * -B SEQS (> 1, models with one KV level): batched decode. SEQS sequences on
 * disjoint pages, each prefilled alone with its own token ids (the prefill
 * figure counts all of them), then decoded together: every step is one
 * forward of SEQS sequences x 1 token; decode tokens/s counts every sequence.
 *
 * Levels (engine.h "KV units and levels"): identity per-layer tables over
 * every page of the pool (eng_kv_identity_tables), whose first pages every
 * level uses; the bench keeps level_n_past[k] itself, advancing it by
 * eng_seq.level_kept[k] after every forward.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One sequence's cache state over a model. */
struct bench {
    struct eng_model *m;
    int n_vocab;
    int n_levels;
    int level_layers[ENG_MAX_LEVELS]; /* layers at level k */
    int32_t *pages;                   /* page list, n_pages entries */
    int32_t n_pages;
    struct eng_kv_tables kvt;         /* per-layer tables over pages */
    int32_t past[ENG_MAX_LEVELS];     /* KV entries cached per level ([0] = n_past) */
    float *logits;                    /* [n_vocab] */
};

/* Forwards n tokens after the cached ones and advances every level by what
 * the engine kept. Logits of the last token land in B->logits. Returns 0 or
 * a negative SS_E* code (the state is unchanged then). */
static int bench_step(struct bench *B, const int32_t *toks, int32_t n) {
    int32_t kept[ENG_MAX_LEVELS] = {0};
    struct eng_seq s = {.tok0 = 0, .n_tok = n, .n_past = B->past[0], .layer_pages = B->kvt.rows,
                        .layer_n_pages = B->kvt.n_pages, .want_logits = 1, .level_kept = kept};
    for (int k = 1; k < B->n_levels; k++) s.level_n_past[k] = B->past[k];
    struct eng_batch b = {.tokens = toks, .n_tokens = n, .seqs = &s, .n_seqs = 1};
    int rc = eng_forward(B->m, &b, B->logits);
    if (rc < 0) return rc;
    B->past[0] += n;
    for (int k = 1; k < B->n_levels; k++) B->past[k] += kept[k];
    return 0;
}

/* Bytes of K/V the sequence stores now, per the formula in the file comment. */
static double bench_kv_bytes(const struct bench *B) {
    double unit = (double)eng_model_unit_bytes(B->m);
    double sum = 0;
    for (int k = 0; k < B->n_levels; k++)
        sum += (double)B->past[k] * B->level_layers[k] * unit / 16.0;
    return sum;
}

/* -B: n_seqs sequences prefilled one by one, then decoded together (file
 * comment). Prints the figures; returns 0 or a negative SS_E* code. */
static int bench_batch(struct eng_model *m, int n_seqs, int ctx, int chunk, int n_decode, int repeats) {
    const struct eng_config *c = eng_model_config(m);
    const int32_t np = eng_model_n_pages(m), pps = np / n_seqs, V = c->n_vocab;
    if (eng_model_n_levels(m) != 1) {
        fprintf(stderr, "-B: only models with one KV level\n");
        return SS_EINVAL;
    }
    if (pps < (ctx + n_decode + 15) / 16) {
        fprintf(stderr, "-B: %d pages are too few for %d sequences\n", np, n_seqs);
        return SS_EINVAL;
    }
    int32_t *pages = malloc((size_t)np * sizeof *pages), *past = calloc((size_t)n_seqs, sizeof *past);
    int32_t *toks = malloc((size_t)(ctx > n_seqs ? ctx : n_seqs) * sizeof *toks);
    struct eng_kv_tables *kvt = calloc((size_t)n_seqs, sizeof *kvt);
    struct eng_seq *seqs = calloc((size_t)n_seqs, sizeof *seqs);
    float *logits = malloc((size_t)n_seqs * (size_t)V * sizeof *logits);
    double *t_pre = malloc((size_t)repeats * sizeof *t_pre), *t_dec = malloc((size_t)repeats * sizeof *t_dec);
    int rc = pages && past && toks && kvt && seqs && logits && t_pre && t_dec ? 0 : SS_ENOMEM;
    for (int32_t i = 0; rc == 0 && i < np; i++) pages[i] = i;
    for (int s = 0; rc == 0 && s < n_seqs; s++) rc = eng_kv_identity_tables(&kvt[s], m, pages + (size_t)s * pps, pps);
    for (int rep = 0; rep < repeats && rc == 0; rep++) {
        double t0 = now_s();
        for (int s = 0; s < n_seqs && rc == 0; s++) { /* prefill: one sequence at a time */
            past[s] = 0;
            for (int i = 0; i < ctx && rc == 0; i += chunk) {
                int n = ctx - i < chunk ? ctx - i : chunk;
                for (int j = 0; j < n; j++) toks[j] = (int32_t)(((int64_t)(i + j) * 7919 + 13 + 104729 * s) % V);
                seqs[0] = (struct eng_seq){.n_tok = n, .n_past = past[s], .layer_pages = kvt[s].rows,
                                           .layer_n_pages = kvt[s].n_pages, .want_logits = 1};
                struct eng_batch b = {.tokens = toks, .n_tokens = n, .seqs = seqs, .n_seqs = 1};
                rc = eng_forward(m, &b, logits + (size_t)s * V);
                past[s] += n;
            }
        }
        double t1 = now_s();
        for (int s = 0; s < n_seqs && rc == 0; s++) toks[s] = argmax(logits + (size_t)s * V, V);
        for (int step = 0; step < n_decode && rc == 0; step++) {
            for (int s = 0; s < n_seqs; s++)
                seqs[s] = (struct eng_seq){.tok0 = s, .n_tok = 1, .n_past = past[s], .layer_pages = kvt[s].rows,
                                           .layer_n_pages = kvt[s].n_pages, .want_logits = 1};
            struct eng_batch b = {.tokens = toks, .n_tokens = n_seqs, .seqs = seqs, .n_seqs = n_seqs};
            rc = eng_forward(m, &b, logits);
            for (int s = 0; s < n_seqs && rc == 0; s++) {
                past[s]++;
                toks[s] = argmax(logits + (size_t)s * V, V);
            }
        }
        t_pre[rep] = t1 - t0;
        t_dec[rep] = now_s() - t1;
    }
    if (rc == 0) {
        double pre_s = median(t_pre, repeats), dec_s = median(t_dec, repeats);
        printf("model %s (%s): %d layers, dim %d, ffn %d, vocab %d\n", c->name, c->arch_name, c->n_layers, c->dim,
               c->ffn_dim, c->n_vocab);
        printf("prefill %d sequences x %d tokens, one at a time: %.1f tokens/s (median of %d)\n", n_seqs, ctx,
               (double)n_seqs * ctx / pre_s, repeats);
        printf("decode %d sequences x %d tokens at context %d: %.2f tokens/s, %.2f ms/step\n", n_seqs, n_decode,
               ctx, (double)n_seqs * n_decode / dec_s, 1e3 * dec_s / n_decode);
    } else {
        fprintf(stderr, "batch: %s\n", ss_strerror(rc));
    }
    for (int s = 0; kvt && s < n_seqs; s++) eng_kv_tables_free(&kvt[s]);
    free(pages), free(past), free(toks), free(kvt), free(seqs), free(logits), free(t_pre), free(t_dec);
    return rc;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s MODEL [-c CTX | -p N_PREFILL] [-n N_DECODE] [-b CHUNK] [-t THREADS]\n"
            "          [-kv f16|f32] [-r REPEATS] [-lte on|off] [-a f32|int8|mixed|bf16|auto]  (-a: activation precision)\n"
            "          [-B SEQS]  (batched decode of SEQS sequences) [-e cpu|cuda|auto] [-d DEVICE]\n",
            argv0);
}

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        usage(argv[0]);
        return 2;
    }
    int n_decode = 64, n_ctx_arg = 0, n_prefill = 32, chunk = 0, repeats = 3, n_seqs = 1;
    struct eng_options opt = {.act_precision = ENG_ACT_AUTO}; /* as slimserve serve */
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc) {
            usage(argv[0]);
            return 2;
        }
        const char *v = argv[i + 1];
        if (!strcmp(argv[i], "-n")) n_decode = atoi(v);
        else if (!strcmp(argv[i], "-p")) n_prefill = atoi(v);
        else if (!strcmp(argv[i], "-c")) n_ctx_arg = atoi(v);
        else if (!strcmp(argv[i], "-b")) chunk = atoi(v);
        else if (!strcmp(argv[i], "-t")) opt.n_threads = atoi(v);
        else if (!strcmp(argv[i], "-r")) repeats = atoi(v);
        else if (!strcmp(argv[i], "-e")) opt.backend = v;
        else if (!strcmp(argv[i], "-d")) opt.device = atoi(v);
        else if (!strcmp(argv[i], "-B") && atoi(v) >= 1 && atoi(v) <= 256) n_seqs = atoi(v);
        else if (!strcmp(argv[i], "-kv")) opt.kv_type = !strcmp(v, "f32") ? ENG_KV_F32 : ENG_KV_F16;
        else if (!strcmp(argv[i], "-lte")) opt.lte_off = !strcmp(v, "off"); /* on | off (LTE files) */
        else if (!strcmp(argv[i], "-a") && eng_act_parse(v, &opt.act_precision) == 0) continue;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    const int long_ctx = n_ctx_arg > 0;
    int ctx = long_ctx ? n_ctx_arg : (n_prefill < 1 ? 1 : n_prefill);
    if (n_decode < 1) n_decode = 1;
    if (repeats < 1) repeats = 1;
    if (chunk < 1) chunk = long_ctx ? 512 : ctx;
    if (chunk > ctx) chunk = ctx;
    opt.n_ctx = ctx + n_decode;
    opt.kv_default_seqs = n_seqs;
    opt.max_batch_tokens = chunk > n_seqs ? chunk : n_seqs;

    char err[256];
    struct eng_model *m;
    int rc = eng_model_load(&m, argv[1], &opt, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "load: %s (%s)\n", err, ss_strerror(rc));
        return 1;
    }
    const struct eng_config *c = eng_model_config(m);
    if (eng_model_n_ctx(m) < ctx + n_decode) {
        fprintf(stderr, "context %d + %d decode tokens exceeds the model's %d\n", ctx, n_decode,
                eng_model_n_ctx(m));
        eng_model_free(m);
        return 1;
    }
    if (n_seqs > 1) {
        rc = bench_batch(m, n_seqs, ctx, chunk, n_decode, repeats);
        eng_model_free(m);
        return rc < 0 ? 1 : 0;
    }
    struct bench B = {.m = m, .n_vocab = c->n_vocab, .n_levels = eng_model_n_levels(m),
                      .n_pages = eng_model_n_pages(m)};
    if (B.n_levels < 1 || B.n_levels > ENG_MAX_LEVELS) B.n_levels = 1;
    for (int l = 0; l < c->n_layers; l++) {
        int k = eng_model_layer_level(m, l);
        if (k >= 0 && k < B.n_levels) B.level_layers[k]++;
    }
    B.pages = malloc((size_t)B.n_pages * sizeof *B.pages);
    B.logits = malloc((size_t)c->n_vocab * sizeof *B.logits);
    int32_t *toks = malloc((size_t)ctx * sizeof *toks);
    double *t_pre = malloc((size_t)repeats * sizeof *t_pre);
    double *t_dec = malloc((size_t)repeats * sizeof *t_dec);
    if (!B.pages || !B.logits || !toks || !t_pre || !t_dec) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int32_t i = 0; i < B.n_pages; i++) B.pages[i] = B.n_pages - 1 - i;
    if (eng_kv_identity_tables(&B.kvt, m, B.pages, B.n_pages) < 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int i = 0; i < ctx; i++) toks[i] = (int32_t)(((int64_t)i * 7919 + 13) % c->n_vocab);

    int32_t kept_ctx[ENG_MAX_LEVELS] = {0}, kept_end[ENG_MAX_LEVELS] = {0};
    double kv_bytes = 0;
    for (int rep = 0; rep < repeats && rc == 0; rep++) {
        memset(B.past, 0, sizeof B.past);
        double t0 = now_s();
        for (int i = 0; i < ctx && rc == 0; i += chunk)
            rc = bench_step(&B, toks + i, ctx - i < chunk ? ctx - i : chunk);
        double t1 = now_s();
        memcpy(kept_ctx, B.past, sizeof kept_ctx);
        kv_bytes = bench_kv_bytes(&B);
        int32_t tok = argmax(B.logits, c->n_vocab);
        for (int i = 0; i < n_decode && rc == 0; i++) {
            rc = bench_step(&B, &tok, 1);
            tok = argmax(B.logits, c->n_vocab);
        }
        t_pre[rep] = t1 - t0;
        t_dec[rep] = now_s() - t1;
        memcpy(kept_end, B.past, sizeof kept_end);
    }
    if (rc < 0) {
        fprintf(stderr, "forward: %s\n", ss_strerror(rc));
        return 1;
    }

    double wb = (double)eng_model_weight_bytes(m);
    double pre_s = median(t_pre, repeats), dec_s = median(t_dec, repeats);
    double dec_tps = n_decode / dec_s;
    printf("model %s (%s): %d layers, dim %d, ffn %d, vocab %d, weights read per token %.1f MB, "
           "activations %s\n",
           c->name, c->arch_name, c->n_layers, c->dim, c->ffn_dim, c->n_vocab, wb / 1e6,
           eng_act_name(eng_model_act_precision(m)));
    if (long_ctx)
        printf("prefill %d tokens in chunks of %d: %.1f tokens/s (median of %d)\n", ctx, chunk,
               ctx / pre_s, repeats);
    else
        printf("prefill %d tokens: %.1f tokens/s (median of %d)\n", ctx, ctx / pre_s, repeats);
    printf("decode %d tokens at context %d: %.2f tokens/s, %.2f ms/token, %.2f GB/s of weights\n",
           n_decode, ctx, dec_tps, 1e3 / dec_tps, wb * dec_tps / 1e9);
    if (B.n_levels > 1) {
        double layer_steps = 0; /* layers a decode token ran through, summed */
        printf("levels (layers, tokens kept at context %d, kept during decode):", ctx);
        for (int k = 0; k < B.n_levels; k++) {
            printf(" %d: %d layers, %d (%.3f), %d/%d", k, B.level_layers[k], kept_ctx[k],
                   (double)kept_ctx[k] / ctx, kept_end[k] - kept_ctx[k], n_decode);
            layer_steps += (double)(kept_end[k] - kept_ctx[k]) * B.level_layers[k];
        }
        printf("\ndecode tokens ran through %.2f of %d layers on average\n", layer_steps / n_decode,
               c->n_layers);
    }
    double dense = (double)eng_model_kv_bytes_per_token(m);
    printf("KV stored at context %d: %.0f bytes/token (all layers storing every token: %.0f, ratio %.3f)\n",
           ctx, kv_bytes / ctx, dense, kv_bytes / ctx / dense);
    free(B.pages);
    eng_kv_tables_free(&B.kvt);
    free(B.logits);
    free(toks);
    free(t_pre);
    free(t_dec);
    eng_model_free(m);
    return 0;
}
