/* perplexity.h - perplexity of a model over a text file (llama.cpp-style).
 *
 * The whole text is tokenized once (no BOS) and cut into non-overlapping
 * windows of ctx tokens; a tail shorter than ctx is dropped. Each window is
 * evaluated from scratch as its own sequence; when the tokenizer adds BOS, the
 * window's first token is replaced by BOS (llama.cpp's rule). Only the second
 * half of a window is scored:
 *
 *   window w:  t0 t1 ... t(h-1) | t(h) ... t(N-2) t(N-1)      N = ctx, h = N/2
 *              context only     | logits at i in [h, N-1) score t(i+1)
 *
 *   NLL_i = logsumexp(logits_i) - logits_i[t(i+1)]   (double, max-subtracted)
 *   perplexity = exp(mean NLL over every scored token of every window)
 *
 * so a window scores N - 1 - h tokens. Position N-1 is never run through the
 * model (its logits would predict nothing).
 *
 * Evaluation: up to `batch` windows run together as one ragged batch per
 * eng_forward; each window advances `chunk` tokens per forward over its own
 * KV pages (window slot w of a batch owns pages [w*P, (w+1)*P), P =
 * ceil(ctx/16); the tool owns the whole page pool). Chunks are cut at h, so a
 * chunk is either all context (want_logits = 0, no logits at all) or all
 * scored (all_logits = 1). The logits buffer holds batch * logit_chunk rows
 * of n_vocab floats; scored chunks are shortened (logit_chunk < chunk) until
 * that fits logits_budget bytes.
 * The result does not depend on batch or chunk: the engine gives a sequence
 * bitwise the same logits whatever else is batched and however its prompt is
 * chunked, and the NLLs are summed in one fixed order (window, then position).
 *
 * Threading: ppl_run loads its own model and uses it on the calling thread
 * (the backend and the log-sum-exp loop parallelise inside); reentrant.
 */
#ifndef SS_PERPLEXITY_H
#define SS_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

struct ppl_opts {
    const char *model_path;   /* GGUF file (required) */
    const char *text_path;    /* text file, read whole; ignored when text != NULL */
    const char *text;         /* or: in-memory UTF-8 text of text_len bytes (caller owns) */
    size_t text_len;
    int ctx;                  /* window length N in tokens, >= 4 (default 512) */
    int batch;                /* windows per forward, >= 1 (default 4); lowered to the window count */
    int chunk;                /* tokens per window per forward, >= 1 (default 64) */
    int max_windows;          /* 0 = all windows of the text, else at most this many (the first ones) */
    size_t logits_budget;     /* bytes for the logits buffer (0 or default: 128 MiB); may shorten
                               * scored chunks, down to one token per window */
    /* Engine options, passed to eng_model_load. ppl_run overrides n_ctx (= ctx),
     * max_batch_tokens (= batch * chunk), kv_bytes (0) and kv_default_seqs
     * (= batch, so the pool is exactly batch * P pages); every other field
     * (backend, n_threads, kv_type, and any option added to eng_options later,
     * e.g. layer parallelism) is passed through unchanged. */
    struct eng_options eng;
    /* Optional progress report, called on the calling thread after each group
     * of windows: windows finished so far, total, running perplexity. */
    void (*progress)(void *ud, int done, int total, double ppl);
    void *progress_ud;
};

struct ppl_result {
    double perplexity;        /* exp(nll_mean) */
    double nll_mean;          /* mean NLL per scored token, nats */
    double nll_sum;
    int64_t n_scored;         /* tokens scored: windows * (ctx - 1 - ctx/2) */
    int64_t n_text_tokens;    /* tokens in the whole text */
    int n_windows;            /* windows evaluated */
    int ctx;
    int batch;                /* effective batch (after lowering to the window count) */
    int chunk;                /* effective chunk in the context half */
    int logit_chunk;          /* effective chunk in the scored half (after the logits budget) */
    int n_vocab;
    int n_ctx_train;          /* the model's training context (ctx beyond it is allowed) */
    double seconds;           /* wall time of the evaluation (load and tokenization excluded) */
    double tokens_per_second; /* n_windows * ctx / seconds: text tokens covered per second */
};

/* ctx 512, batch 4, chunk 64, logits_budget 128 MiB, everything else 0/NULL. */
void ppl_opts_default(struct ppl_opts *o);

/* Computes the perplexity. Returns 0 and fills *res, or a negative SS_E* code
 * with a one-line message in err: SS_EINVAL (bad option, or a text with fewer
 * tokens than one window), SS_EIO / SS_ENOTFOUND (text file), whatever
 * eng_model_load returns, SS_ENOMEM, SS_EINTERNAL (a forward failed or gave
 * non-finite logits). Prints nothing. */
int ppl_run(const struct ppl_opts *o, struct ppl_result *res, char *err, size_t err_len);

/* CLI: argv[0] = "perplexity".
 *   perplexity --model M --file TEXT [--ctx N] [--batch B] [--threads T]
 *              [--chunk C] [--max-windows K] [--backend cpu|cuda]
 *              [--kv-type f16|f32] [--json] [--quiet]
 * Prints one result line (or with --json exactly one JSON object) on stdout,
 * running estimates on stderr (llama.cpp's "[1]12.34,[2]..."; --quiet
 * turns them off). Returns 0 ok, 1 error (message on stderr), 2 usage. */
int tool_perplexity_main(int argc, char **argv);

#endif
