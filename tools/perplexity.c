/* perplexity.c - `slimserve perplexity`: perplexity over a text file.
 *
 * See perplexity.h for what is computed. Flow of ppl_run:
 *   check options -> read the text -> tokenize it with the file's tokenizer
 *   (loaded on its own, before the model, so the KV pool and scratch can be
 *   sized for the windows that really exist) -> load the model -> evaluate
 *   the windows in groups of `batch` -> sum the NLLs in window order.
 *
 * One group, B windows, chunk C, N = ctx, h = N/2:
 *
 *   forward k:  [ w0 pos a..b | w1 pos a..b | ... | w(B-1) pos a..b ]
 *               chunk boundaries: 0, C, 2C, .. h, h+Cs, h+2Cs, .. N-1
 *               (Cs <= C: scored chunks carry logits, so the logits budget
 *               may make them shorter)
 *   window slot w writes its K/V into pages [w*P, (w+1)*P) (identity
 *   per-layer tables, eng_kv_identity_tables: each layer its own unit)
 *   SUBLLM models: each slot tracks its KV entries per level (level_n_past),
 *   advanced by what each forward reports kept (level_kept); deeper levels
 *   use the first pages of the same tables
 *
 * Ownership: everything ppl_run allocates is freed before it returns.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "kernels/cpu/pool.h"
#include "tools/perplexity.h"

#define PPL_MAX_CTX (1 << 20)
#define PPL_MAX_BATCH 4096
#define PPL_MAX_TEXT ((size_t)256 << 20) /* tok_encode's own limit */

static int fail(char *err, size_t err_len, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int rc, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void ppl_opts_default(struct ppl_opts *o) {
    memset(o, 0, sizeof *o);
    o->ctx = 512;
    o->batch = 4;
    o->chunk = 64;
    o->logits_budget = (size_t)128 << 20;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int check_opts(const struct ppl_opts *o, char *err, size_t err_len) {
    if (!o->model_path || !o->model_path[0])
        return fail(err, err_len, SS_EINVAL, "no model given");
    if (!o->text && (!o->text_path || !o->text_path[0]))
        return fail(err, err_len, SS_EINVAL, "no text file given");
    if (o->ctx < 4 || o->ctx > PPL_MAX_CTX)
        return fail(err, err_len, SS_EINVAL, "ctx %d out of range [4, %d]", o->ctx, PPL_MAX_CTX);
    if (o->batch < 1 || o->batch > PPL_MAX_BATCH)
        return fail(err, err_len, SS_EINVAL, "batch %d out of range [1, %d]", o->batch, PPL_MAX_BATCH);
    if (o->chunk < 1 || o->chunk > PPL_MAX_CTX)
        return fail(err, err_len, SS_EINVAL, "chunk %d out of range [1, %d]", o->chunk, PPL_MAX_CTX);
    if (o->max_windows < 0)
        return fail(err, err_len, SS_EINVAL, "max_windows %d is negative", o->max_windows);
    return 0;
}

/* Reads a whole file into a malloc'd buffer (*len bytes, NUL-terminated). */
static int read_text(const char *path, char **out, size_t *len, char *err, size_t err_len) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return fail(err, err_len, errno == ENOENT ? SS_ENOTFOUND : SS_EIO, "cannot open text file %s: %s",
                    path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    int rc = 0;
    while (buf) {
        if (n == cap) {
            if (cap >= PPL_MAX_TEXT) {
                rc = fail(err, err_len, SS_ETOOLONG, "text file %s is larger than %zu MiB", path,
                          PPL_MAX_TEXT >> 20);
                break;
            }
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                rc = fail(err, err_len, SS_ENOMEM, "out of memory reading %s", path);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp)) rc = fail(err, err_len, SS_EIO, "cannot read text file %s", path);
            break;
        }
    }
    fclose(fp);
    if (!buf) return fail(err, err_len, SS_ENOMEM, "out of memory reading %s", path);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* Tokenizes text with the tokenizer of the GGUF file (no BOS, special texts
 * as plain text). *ids is malloc'd. Also returns the BOS to put first in each
 * window, or -1 when the tokenizer does not add one. */
static int tokenize(const char *model_path, const char *text, size_t len, int32_t **ids, int64_t *n,
                    int32_t *bos, char *err, size_t err_len) {
    struct gguf_file *f = NULL;
    struct tok *t = NULL;
    int rc = gguf_open(&f, model_path, err, err_len);
    if (rc < 0) return rc;
    if ((rc = tok_load(&t, f, err, err_len)) < 0) {
        gguf_close(f);
        return rc;
    }
    *bos = tok_add_bos(t) && tok_bos(t) >= 0 ? tok_bos(t) : -1;
    int64_t cap = (int64_t)len + 16, got = 0;
    int32_t *buf = NULL;
    for (int tries = 0; tries < 2; tries++) {
        int32_t *nb = realloc(buf, (size_t)cap * sizeof *buf);
        if (!nb) {
            rc = fail(err, err_len, SS_ENOMEM, "out of memory for %lld tokens", (long long)cap);
            break;
        }
        buf = nb;
        got = tok_encode(t, text, len, 0, 0, buf, cap);
        if (got < 0) {
            rc = fail(err, err_len, (int)got, "tokenizing the text failed: %s", ss_strerror((int)got));
            break;
        }
        if (got <= cap) break;
        cap = got;
    }
    tok_free(t);
    gguf_close(f);
    if (rc < 0 || got > cap) {
        free(buf);
        return rc < 0 ? rc : fail(err, err_len, SS_EINTERNAL, "tokenizer returned inconsistent counts");
    }
    *ids = buf;
    *n = got;
    return 0;
}

/* ------------------------------------------------------------ evaluation */

struct ppl_eval {
    struct eng_model *m;
    const int32_t *text;  /* [n_windows * N] tokens of the evaluated windows */
    int32_t bos;          /* -1: keep the window's own first token */
    int N, h, B, P, V, n_threads;
    struct kcpu_pool *pool; /* n_threads threads for the scoring of rows */
    int C;                /* tokens per window per forward in the context half */
    int Cs;               /* the same in the scored half (Cs <= C: the logits budget) */
    int32_t *in;          /* [B*C] batch tokens */
    struct eng_seq *seqs; /* [B] */
    int32_t *pages;       /* [B*P]: pages[i] = i */
    struct eng_kv_tables *kvt; /* [B]: window slot w's tables over pages [w*P, (w+1)*P) */
    int32_t (*lnp)[ENG_MAX_LEVELS];  /* [B] KV entries cached per level (SUBLLM) */
    int32_t (*kept)[ENG_MAX_LEVELS]; /* [B] tokens kept per level by the last forward */
    float *logits;        /* [B*Cs][V] */
    double *row_nll;      /* [B*Cs] */
};

/* exp(x[i] - mx) in double for n <= PPL_EXP_BLOCK entries, written to out.
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then the degree-13
 * Taylor polynomial of e^r (relative error ~3e-16) times 2^k built from bits.
 * Arguments below -700 are clamped there (e^-700 ~ 1e-304 is nothing next to
 * the row's maximum term, 1). Written branch-free so the compiler vectorises
 * it: no-trapping-math lets the clamp become a max instruction.
 * NaN or +-inf inputs give NaN (the d * 0.0 term), so the caller sees them. */
#define PPL_EXP_BLOCK 256
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default"), optimize("no-trapping-math")))
#endif
static void exp_block(double *out, const float *x, int n, double mx) {
    const double log2e = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
                 ln2_lo = 1.90821492927058770002e-10, magic = 6755399441055744.0; /* 1.5 * 2^52 */
    for (int i = 0; i < n; i++) {
        double d0 = (double)x[i] - mx;
        double d = d0 > -700.0 ? d0 : -700.0;
        double kd = d * log2e + magic; /* round to nearest: k sits in the low mantissa bits */
        uint64_t u;
        memcpy(&u, &kd, sizeof u);
        kd -= magic;
        double r = d - kd * ln2_hi - kd * ln2_lo;
        double p = 1.0 / 6227020800.0;
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        uint64_t sb = (u << 52) + ((uint64_t)1023 << 52); /* 2^k, k in [-1010, 0] */
        double scale;
        memcpy(&scale, &sb, sizeof scale);
        out[i] = p * scale + d0 * 0.0;
    }
}

/* -log softmax(row)[target] = logsumexp(row) - row[target], in double with
 * the maximum subtracted first; the sum runs in a fixed order (4 partial
 * sums), so the result is a pure function of the row. NaN or infinite logits
 * give a non-finite result (checked by the caller). */
static double row_nll(const float *row, int V, int32_t target) {
    float mx = row[0];
    for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
    double buf[PPL_EXP_BLOCK], acc[4] = {0, 0, 0, 0};
    for (int j = 0; j < V; j += PPL_EXP_BLOCK) {
        int n = V - j < PPL_EXP_BLOCK ? V - j : PPL_EXP_BLOCK, k = 0;
        exp_block(buf, row + j, n, (double)mx);
        for (; k + 4 <= n; k += 4) {
            acc[0] += buf[k];
            acc[1] += buf[k + 1];
            acc[2] += buf[k + 2];
            acc[3] += buf[k + 3];
        }
        for (; k < n; k++) acc[k & 3] += buf[k];
    }
    double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return (double)mx + log(s) - (double)row[target];
}

/* The negative log-likelihoods of rows [r0, r1) of the last forward's logits
 * (window w0 + r / len, position a + r % len). */
struct nll_job {
    struct ppl_eval *e;
    int w0, a, len;
};

static void nll_rows(void *arg, int64_t r0, int64_t r1) {
    const struct nll_job *J = arg;
    struct ppl_eval *e = J->e;
    for (int64_t r = r0; r < r1; r++) {
        int w = (int)(r / J->len), p = J->a + (int)(r % J->len);
        int32_t target = e->text[(size_t)(J->w0 + w) * e->N + p + 1];
        e->row_nll[r] = row_nll(e->logits + (size_t)r * e->V, e->V, target);
    }
}

/* Runs one chunk [a, a+len) of the nw windows starting at window w0 of the
 * text. When scored, adds each row's NLL into win_nll[w0 + w] in position
 * order. */
static int eval_chunk(struct ppl_eval *e, int w0, int nw, int a, int len, int scored, double *win_nll,
                      char *err, size_t err_len) {
    for (int w = 0; w < nw; w++) {
        const int32_t *src = e->text + (size_t)(w0 + w) * e->N;
        for (int j = 0; j < len; j++) {
            int p = a + j;
            e->in[w * len + j] = (p == 0 && e->bos >= 0) ? e->bos : src[p];
        }
        if (a == 0) memset(e->lnp[w], 0, sizeof e->lnp[w]);
        e->seqs[w] = (struct eng_seq){.tok0 = w * len, .n_tok = len, .n_past = a,
                                      .layer_pages = e->kvt[w].rows, .layer_n_pages = e->P,
                                      .want_logits = scored, .all_logits = scored,
                                      .level_kept = e->kept[w]};
        e->lnp[w][0] = a;
        memcpy(e->seqs[w].level_n_past, e->lnp[w], sizeof e->lnp[w]);
    }
    struct eng_batch b = {.tokens = e->in, .n_tokens = nw * len, .seqs = e->seqs, .n_seqs = nw};
    int rc = eng_forward(e->m, &b, scored ? e->logits : NULL);
    if (rc < 0)
        return fail(err, err_len, SS_EINTERNAL, "forward failed at window %d, positions %d..%d: %s", w0,
                    a, a + len - 1, ss_strerror(rc));
    for (int w = 0; w < nw; w++)
        for (int k = 1; k < eng_model_n_levels(e->m); k++) e->lnp[w][k] += e->kept[w][k];
    if (!scored) return 0;
    const int rows = nw * len;
    struct nll_job J = {e, w0, a, len};
    kcpu_pool_for(e->pool, e->n_threads, rows, 1, nll_rows, &J);
    for (int r = 0; r < rows; r++) {
        if (!isfinite(e->row_nll[r]))
            return fail(err, err_len, SS_EINTERNAL, "non-finite logits in window %d at position %d",
                        w0 + r / len, a + r % len);
        win_nll[w0 + r / len] += e->row_nll[r];
    }
    return 0;
}

/* Evaluates windows [w0, w0+nw) from scratch (their pages are simply
 * overwritten: positions are written before they are read). */
static int eval_group(struct ppl_eval *e, int w0, int nw, double *win_nll, char *err, size_t err_len) {
    int a = 0;
    while (a < e->N - 1) {
        int end = a < e->h ? e->h : e->N - 1, c = a < e->h ? e->C : e->Cs;
        int len = end - a < c ? end - a : c;
        int rc = eval_chunk(e, w0, nw, a, len, a >= e->h, win_nll, err, err_len);
        if (rc < 0) return rc;
        a += len;
    }
    return 0;
}

static int run_windows(const struct ppl_opts *o, struct ppl_eval *e, int n_windows, double *win_nll,
                       struct ppl_result *res, char *err, size_t err_len) {
    size_t rows = (size_t)e->B * e->Cs;
    e->in = malloc((size_t)e->B * e->C * sizeof *e->in);
    e->seqs = malloc((size_t)e->B * sizeof *e->seqs);
    e->pages = malloc((size_t)e->B * e->P * sizeof *e->pages);
    e->lnp = calloc((size_t)e->B, sizeof *e->lnp);
    e->kept = calloc((size_t)e->B, sizeof *e->kept);
    e->logits = malloc(rows * (size_t)e->V * sizeof *e->logits);
    e->row_nll = malloc(rows * sizeof *e->row_nll);
    e->kvt = calloc((size_t)e->B, sizeof *e->kvt);
    if (!e->in || !e->seqs || !e->pages || !e->lnp || !e->kept || !e->logits || !e->row_nll || !e->kvt)
        return fail(err, err_len, SS_ENOMEM, "out of memory for %zu rows of %d logits", rows, e->V);
    for (int i = 0; i < e->B * e->P; i++) e->pages[i] = i;
    for (int w = 0; w < e->B; w++)
        if (eng_kv_identity_tables(&e->kvt[w], e->m, e->pages + (size_t)w * e->P, e->P) < 0)
            return fail(err, err_len, SS_ENOMEM, "out of memory for the block tables");

    const int64_t per_window = e->N - 1 - e->h;
    double t0 = now_s(), sum = 0.0;
    for (int w0 = 0; w0 < n_windows; w0 += e->B) {
        int nw = n_windows - w0 < e->B ? n_windows - w0 : e->B;
        int rc = eval_group(e, w0, nw, win_nll, err, err_len);
        if (rc < 0) return rc;
        for (int w = w0; w < w0 + nw; w++) sum += win_nll[w];
        if (o->progress)
            o->progress(o->progress_ud, w0 + nw, n_windows, exp(sum / (double)(per_window * (w0 + nw))));
    }
    res->seconds = now_s() - t0;
    res->n_scored = per_window * n_windows;
    res->nll_sum = sum;
    res->nll_mean = sum / (double)res->n_scored;
    res->perplexity = exp(res->nll_mean);
    res->tokens_per_second =
        res->seconds > 0 ? (double)n_windows * e->N / res->seconds : 0.0;
    return 0;
}

int ppl_run(const struct ppl_opts *o, struct ppl_result *res, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!o || !res) return fail(err, err_len, SS_EINVAL, "no options");
    memset(res, 0, sizeof *res);
    int rc = check_opts(o, err, err_len);
    if (rc < 0) return rc;

    char *owned = NULL;
    const char *text = o->text;
    size_t text_len = o->text_len;
    if (!text) {
        if ((rc = read_text(o->text_path, &owned, &text_len, err, err_len)) < 0) return rc;
        text = owned;
    }
    int32_t *ids = NULL, bos = -1;
    int64_t n_ids = 0;
    rc = tokenize(o->model_path, text, text_len, &ids, &n_ids, &bos, err, err_len);
    free(owned);
    if (rc < 0) return rc;

    const int N = o->ctx;
    int64_t n_windows = n_ids / N;
    if (o->max_windows > 0 && n_windows > o->max_windows) n_windows = o->max_windows;
    if (n_windows < 1) {
        free(ids);
        return fail(err, err_len, SS_EINVAL,
                    "the text has %lld tokens, fewer than one window of ctx %d: use a longer text or a smaller --ctx",
                    (long long)n_ids, N);
    }
    if (n_windows > INT32_MAX / N) n_windows = INT32_MAX / N;

    struct ppl_eval e = {.text = ids, .bos = bos, .N = N, .h = N / 2,
                         .P = (N + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS};
    e.B = o->batch < n_windows ? o->batch : (int)n_windows;
    e.C = o->chunk < N ? o->chunk : N;
    if ((int64_t)e.B * e.C > (1 << 20)) e.C = (1 << 20) / e.B;
    struct eng_options eo = o->eng;
    eo.n_ctx = N;
    eo.max_batch_tokens = e.B * e.C;
    eo.kv_bytes = 0;
    eo.kv_default_seqs = e.B;
    if ((rc = eng_model_load(&e.m, o->model_path, &eo, err, err_len)) < 0) {
        free(ids);
        return rc;
    }
    e.V = eng_model_config(e.m)->n_vocab;
    if (kcpu_pool_init(&e.pool, o->eng.n_threads, -1) < 0) { /* <= 0: one per CPU */
        eng_model_free(e.m);
        free(ids);
        return fail(err, err_len, SS_ENOMEM, "out of memory");
    }
    e.n_threads = kcpu_pool_size(e.pool);
    size_t budget = o->logits_budget ? o->logits_budget : (size_t)128 << 20;
    size_t budget_rows = budget / ((size_t)e.V * sizeof(float));
    e.Cs = e.C;
    if ((size_t)e.B * e.Cs > budget_rows) e.Cs = budget_rows / (size_t)e.B > 0 ? (int)(budget_rows / e.B) : 1;

    double *win_nll = calloc((size_t)n_windows, sizeof *win_nll);
    if (!win_nll)
        rc = fail(err, err_len, SS_ENOMEM, "out of memory");
    else if (eng_model_n_pages(e.m) < e.B * e.P)
        rc = fail(err, err_len, SS_EINTERNAL, "KV pool has %d pages, %d needed", (int)eng_model_n_pages(e.m),
                  e.B * e.P);
    else
        rc = run_windows(o, &e, (int)n_windows, win_nll, res, err, err_len);
    if (rc == 0) {
        res->n_text_tokens = n_ids;
        res->n_windows = (int)n_windows;
        res->ctx = N;
        res->batch = e.B;
        res->chunk = e.C;
        res->logit_chunk = e.Cs;
        res->n_vocab = e.V;
        res->n_ctx_train = eng_model_config(e.m)->n_ctx_train;
    }
    free(win_nll);
    free(e.in);
    free(e.seqs);
    free(e.pages);
    for (int w = 0; e.kvt && w < e.B; w++) eng_kv_tables_free(&e.kvt[w]);
    free(e.kvt);
    free(e.lnp);
    free(e.kept);
    free(e.logits);
    free(e.row_nll);
    kcpu_pool_free(e.pool);
    eng_model_free(e.m);
    free(ids);
    return rc;
}

/* ------------------------------------------------------------------- CLI */

static void usage(FILE *f) {
    fprintf(f,
            "usage: slimserve perplexity --model PATH --file TEXT [options]\n"
            "\n"
            "Perplexity over non-overlapping windows of --ctx tokens of TEXT; the second\n"
            "half of each window is scored (llama.cpp's method).\n"
            "\n"
            "  --model PATH       GGUF model (required)\n"
            "  --file PATH        text file (required)\n"
            "  --ctx N            window length in tokens (default 512)\n"
            "  --batch B          windows evaluated together per forward (default 4)\n"
            "  --threads T        CPU threads (default 0 = all cores)\n"
            "  --chunk C          tokens per window per forward (default 64; scored chunks\n"
            "                     are shortened so the logits buffer stays under 128 MiB)\n"
            "  --max-windows K    evaluate only the first K windows (default all)\n"
            "  --backend NAME     cpu (default) or cuda\n"
            "  --kv-type TYPE     f16 (default) or f32\n"
            "  --activation-precision P  auto (default, as serve), f32 (the exact path), int8, mixed or bf16\n"
            "  --layer-parallel S:E  run layers [S, E) as pairs (layer parallelism), or off;\n"
            "                     default: the model file's lp.range key, else off\n"
            "  --lte on|off       off runs an LTE model densely, every expert on (default on)\n"
            "  --lte-threshold T  LTE threshold in (0, 1) instead of the file's (e.g. 1e-7:\n"
            "                     every expert on through the sparse path)\n"
            "  --json             print one JSON object instead of the text line\n"
            "  --quiet            no running estimates on stderr\n");
}

/* Parses a decimal int in [lo, hi]; returns 0 or -1. */
static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static void cli_progress(void *ud, int done, int total, double ppl) {
    (void)ud;
    fprintf(stderr, "[%d]%.4f%s", done, ppl, done == total ? "\n" : ",");
    fflush(stderr);
}

/* Applies one --flag value pair; returns 0, or -1 for a bad value, -2 for an
 * unknown flag. */
static int apply_flag(struct ppl_opts *o, const char *flag, const char *val) {
    if (!strcmp(flag, "model")) o->model_path = val;
    else if (!strcmp(flag, "file")) o->text_path = val;
    else if (!strcmp(flag, "ctx")) return parse_int(val, 4, PPL_MAX_CTX, &o->ctx);
    else if (!strcmp(flag, "batch")) return parse_int(val, 1, PPL_MAX_BATCH, &o->batch);
    else if (!strcmp(flag, "threads")) return parse_int(val, 0, 1024, &o->eng.n_threads);
    else if (!strcmp(flag, "chunk")) return parse_int(val, 1, PPL_MAX_CTX, &o->chunk);
    else if (!strcmp(flag, "max-windows")) return parse_int(val, 0, INT_MAX, &o->max_windows);
    else if (!strcmp(flag, "backend")) {
        if (strcmp(val, "cpu") && strcmp(val, "cuda")) return -1;
        o->eng.backend = val;
    } else if (!strcmp(flag, "kv-type")) {
        if (!strcmp(val, "f16")) o->eng.kv_type = ENG_KV_F16;
        else if (!strcmp(val, "f32")) o->eng.kv_type = ENG_KV_F32;
        else return -1;
    } else if (!strcmp(flag, "lte")) {
        if (strcmp(val, "on") && strcmp(val, "off")) return -1;
        o->eng.lte_off = !strcmp(val, "off");
    } else if (!strcmp(flag, "lte-threshold")) {
        char *end;
        double t = strtod(val, &end);
        if (*end || !(t > 0.0 && t < 1.0)) return -1;
        o->eng.lte_threshold = (float)t;
    } else if (!strcmp(flag, "activation-precision")) {
        return eng_act_parse(val, &o->eng.act_precision);
    } else if (!strcmp(flag, "layer-parallel")) {
        char e[200];
        if (eng_lp_parse_flag(val, &o->eng, e, sizeof e) < 0) {
            fprintf(stderr, "perplexity: %s\n", e);
            return -1;
        }
    } else return -2;
    return 0;
}

int tool_perplexity_main(int argc, char **argv) {
    struct ppl_opts o;
    ppl_opts_default(&o);
    o.eng.act_precision = ENG_ACT_AUTO; /* the served path (slimserve serve's default) */
    int json = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "perplexity: unexpected argument '%s' (try --help)\n", a);
            return 2;
        }
        char flag[64];
        const char *val, *eq = strchr(a, '=');
        size_t fl = eq ? (size_t)(eq - a) - 2 : strlen(a) - 2;
        if (fl == 0 || fl >= sizeof flag) {
            fprintf(stderr, "perplexity: unknown option '%s' (try --help)\n", a);
            return 2;
        }
        memcpy(flag, a + 2, fl);
        flag[fl] = 0;
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "perplexity: option --%s needs a value (try --help)\n", flag);
            return 2;
        }
        int rc = apply_flag(&o, flag, val);
        if (rc == -2) {
            fprintf(stderr, "perplexity: unknown option --%s (try --help)\n", flag);
            return 2;
        }
        if (rc < 0) {
            fprintf(stderr, "perplexity: bad value '%s' for --%s (try --help)\n", val, flag);
            return 2;
        }
    }
    if (!o.model_path || !o.text_path) {
        fprintf(stderr, "perplexity: --model and --file are required (try --help)\n");
        return 2;
    }
    if (!quiet) {
        o.progress = cli_progress;
        fprintf(stderr, "perplexity: %s over %s, ctx %d, batch %d\n", o.model_path, o.text_path, o.ctx,
                o.batch);
    }
    struct ppl_result r;
    char err[512];
    int rc = ppl_run(&o, &r, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "perplexity: %s\n", err[0] ? err : ss_strerror(rc));
        /* a --layer-parallel range the model cannot take is a usage error */
        return rc == SS_EINVAL && o.eng.lp_mode == ENG_LP_RANGE && strstr(err, "layer parallelism") ? 2 : 1;
    }
    if (json)
        printf("{\"perplexity\":%.17g,\"nll_mean\":%.17g,\"tokens\":%lld,\"ctx\":%d,\"windows\":%d,"
               "\"batch\":%d,\"seconds\":%.6f,\"tokens_per_second\":%.3f}\n",
               r.perplexity, r.nll_mean, (long long)r.n_scored, r.ctx, r.n_windows, r.batch, r.seconds,
               r.tokens_per_second);
    else
        printf("perplexity: %.4f over %lld tokens (ctx %d, %d windows), %.1f tokens/s\n", r.perplexity,
               (long long)r.n_scored, r.ctx, r.n_windows, r.tokens_per_second);
    if (r.ctx > r.n_ctx_train)
        fprintf(stderr, "perplexity: warning: ctx %d is beyond the model's training context %d\n", r.ctx,
                r.n_ctx_train);
    if (!quiet)
        fprintf(stderr, "perplexity: %lld text tokens, %d windows, batch %d, chunk %d (%d with logits), %.2f s\n",
                (long long)r.n_text_tokens, r.n_windows, r.batch, r.chunk, r.logit_chunk, r.seconds);
    return 0;
}
