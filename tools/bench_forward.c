/* bench_forward.c - single-stream decode (and prefill) speed of eng_forward.
 *
 *   bench_forward MODEL [-n N_DECODE] [-p N_PREFILL] [-t THREADS] [-kv f16|f32] [-r REPEATS]
 *
 * Prefills N_PREFILL tokens in one batch, then decodes N_DECODE tokens one at a
 * time (greedy on the logits, so the work is real). Prints prefill tokens/s,
 * decode tokens/s and the decode memory traffic implied by the weights:
 * GB/s = eng_model_weight_bytes() * tokens/s (decode reads every matrix once).
 * Reports the best of REPEATS runs. Not a test: no pass/fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/ss_error.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [-n N_DECODE] [-p N_PREFILL] [-t THREADS] [-kv f16|f32] [-r REPEATS]\n",
                argv[0]);
        return 2;
    }
    int n_decode = 64, n_prefill = 32, repeats = 3;
    struct eng_options opt = {0};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-n")) n_decode = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-p")) n_prefill = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) opt.n_threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-r")) repeats = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-kv")) opt.kv_type = !strcmp(argv[i + 1], "f32") ? ENG_KV_F32 : ENG_KV_F16;
    }
    if (n_prefill < 1) n_prefill = 1;
    if (n_decode < 1) n_decode = 1;
    if (repeats < 1) repeats = 1;
    opt.n_ctx = n_prefill + n_decode;
    opt.kv_default_seqs = 1;
    opt.max_batch_tokens = n_prefill;

    char err[256];
    struct eng_model *m;
    int rc = eng_model_load(&m, argv[1], &opt, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "load: %s (%s)\n", err, ss_strerror(rc));
        return 1;
    }
    const struct eng_config *c = eng_model_config(m);
    int32_t n_pages = eng_model_n_pages(m);
    int32_t *pages = malloc(n_pages * sizeof *pages);
    int32_t *toks = malloc(n_prefill * sizeof *toks);
    float *logits = malloc((size_t)c->n_vocab * sizeof *logits);
    if (!pages || !toks || !logits) return 1;
    for (int32_t i = 0; i < n_pages; i++) pages[i] = n_pages - 1 - i;
    for (int i = 0; i < n_prefill; i++) toks[i] = (int32_t)((i * 7919 + 13) % c->n_vocab);

    double best_pre = 1e30, best_dec = 1e30;
    for (int rep = 0; rep < repeats; rep++) {
        struct eng_seq s = {.tok0 = 0, .n_tok = n_prefill, .n_past = 0, .pages = pages,
                            .n_pages = n_pages, .want_logits = 1};
        struct eng_batch b = {.tokens = toks, .n_tokens = n_prefill, .seqs = &s, .n_seqs = 1};
        double t0 = now_s();
        if ((rc = eng_forward(m, &b, logits)) < 0) {
            fprintf(stderr, "forward: %s\n", ss_strerror(rc));
            return 1;
        }
        double t1 = now_s();
        int32_t tok = argmax(logits, c->n_vocab);
        for (int i = 0; i < n_decode; i++) {
            s = (struct eng_seq){.tok0 = 0, .n_tok = 1, .n_past = n_prefill + i, .pages = pages,
                                 .n_pages = n_pages, .want_logits = 1};
            b = (struct eng_batch){.tokens = &tok, .n_tokens = 1, .seqs = &s, .n_seqs = 1};
            if ((rc = eng_forward(m, &b, logits)) < 0) {
                fprintf(stderr, "forward: %s\n", ss_strerror(rc));
                return 1;
            }
            tok = argmax(logits, c->n_vocab);
        }
        double t2 = now_s();
        if (t1 - t0 < best_pre) best_pre = t1 - t0;
        if (t2 - t1 < best_dec) best_dec = t2 - t1;
    }
    double wb = (double)eng_model_weight_bytes(m);
    double dec_tps = n_decode / best_dec;
    printf("model %s: %d layers, dim %d, ffn %d, vocab %d, weights read per token %.1f MB\n", c->name,
           c->n_layers, c->dim, c->ffn_dim, c->n_vocab, wb / 1e6);
    printf("prefill %d tokens: %.1f tokens/s\n", n_prefill, n_prefill / best_pre);
    printf("decode %d tokens: %.2f tokens/s, %.2f ms/token, %.2f GB/s of weights\n", n_decode, dec_tps,
           1e3 / dec_tps, wb * dec_tps / 1e9);
    free(pages);
    free(toks);
    free(logits);
    eng_model_free(m);
    return 0;
}
