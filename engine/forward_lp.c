/* forward_lp.c - layer parallelism: pairs of consecutive layers run as one
 * step (DESIGN.md section 5; "Leveraging the True Depth of LLMs").
 *
 * For a pair (a, b) = (l, l+1) of the range:
 *
 *     x ──┬─ norm_a ─ Attn_a ─ post_a ─┐
 *         ├─ norm_b ─ Attn_b ─ post_b ─┤
 *         └────────────────────────────+──> h
 *     h ──┬─ ffn_norm_a ─ MLP_a ─ post_ffw_a ─┐
 *         ├─ ffn_norm_b ─ MLP_b ─ post_ffw_b ─┤
 *         └───────────────────────────────────+──> y
 *
 * A branch is exactly the sequential layer's sub-layer (forward.c): pre-norm,
 * projections (+ qwen2 biases), gemma3 per-head q/k norms, RoPE with the
 * layer's own base, K/V stored into the layer's own cache at the batch's
 * slots, paged attention with the layer's window, output projection, and the
 * gemma3 post-norm of the branch output before it joins the residual stream.
 * NOTE on post-norms: the authors' code (Llama only) has none; each layer's
 * post_attention_norm / post_ffw_norm normalises its own branch output, since
 * it is part of what that sub-layer adds to the residual. (Their Llama code
 * also averages the two FFN pre-norm weights to share one normalised input
 * across GPUs; here each layer keeps its own ffn_norm, as the design says.)
 *
 * Residual sums: h = (x + out_a) + out_b, y = (h + mlp_a) + mlp_b, in fp32.
 *
 * Execution (lp->split): on the CPU backend with two threads the two
 * branches of a sub-layer run at once, one per core, each on its own
 * single-threaded CPU backend context (its own tile scratch), with one join
 * per sub-layer instead of a fork/join per operation. Otherwise (one thread,
 * other backends) the branches run one after the other on the model's
 * backend. Both give bitwise the same values: every kernel's result per row
 * is independent of the thread count (kernels/backend.h).
 * NOTE (measured on the 2-core dev machine, medians of interleaved runs,
 * every layer paired): one-after-the-other is as fast as the sequential
 * model (same operations, same barriers); the two-core split makes decode
 * 1.09-1.12x faster on Gemma 3 270M Q4_K_M (whose 262k-row output matrix
 * takes half the time) and 1.17x on a 14-layer 100M q8_0 llama, prefill
 * 1.04-1.09x, a 16-sequence decode step 1.03-1.06x. The gain is the ~14
 * fork/joins of two sequential layers replaced by two joins, plus decode
 * attention (one KV head: a single work item) of both layers at once.
 *
 * Buffers: branch a uses the model's scratch (m->s), branch b its own set of
 * the same shapes (struct lp_bufs), allocated on the model's backend for
 * max_batch_tokens rows when a range is first set. Positions (m->s.pos) and
 * the K/V views of the two layers (eng_layer_view: view buffer 0 for the first
 * layer, 1 for the second; plain or per-layer addressing, the current SUBLLM
 * frame's rows) are shared read-only.
 *
 * Thread: the engine thread owning the model; the split region's worker only
 * runs branch b between the fork and the join.
 */
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward_lp.h"
#include "engine/gguf.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

/* One branch's activations; shapes in rows of the batch (T = max_batch_tokens). */
struct lp_bufs {
    float *xb;  /* [T][dim] normalised input; post-normed output */
    float *xb2; /* [T][dim] sub-layer output */
    float *q;   /* [T][qdim] */
    float *k;   /* [T][kvdim] */
    float *v;   /* [T][kvdim] */
    float *att; /* [T][qdim] */
    float *hb;  /* [T][ffn] */
    float *hb2; /* [T][ffn] */
};

struct eng_lp {
    int start, end;      /* paired range; start == end: off */
    struct lp_bufs b;    /* branch b's scratch (model backend memory), NULL until first set */
    int split;           /* 1: branches on two cores (per-core backends below) */
    struct be core[2];   /* single-threaded CPU backends of branch a and b (split only) */
    int core_open[2];
    int n_threads;       /* eng_options.n_threads at load (0 = one per core) */
};

static int lp_fail(char *err, size_t len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int lp_fail(char *err, size_t len, int code, const char *fmt, ...) {
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ------------------------------------------------------------ one branch */

/* Per-head RMSNorm (gemma3) into out, then RoPE; returns the rotated buffer
 * (as forward.c's norm_rope, on the given backend). */
static float *lp_norm_rope(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                           float *out, float *x, const float *norm, int n, int heads) {
    const struct eng_config *c = &m->cfg;
    if (norm) {
        be_rmsnorm(be, out, x, norm, n * heads, c->head_dim, c->norm_eps);
        x = out;
    }
    struct be_rope_params rp = {.n_heads = heads, .head_dim = c->head_dim, .n_rot = c->n_rot,
                                .theta_base = L->swa ? c->rope_theta_swa : c->rope_theta,
                                .freq_scale = L->swa ? 1.0f : c->rope_freq_scale,
                                .neox = c->rope_neox, .freq_factors = m->rope_freqs};
    be_rope(be, x, m->s.pos, n, &rp);
    return x;
}

static void lp_bias(struct be *be, float *y, const float *bias, int n, int d) {
    if (!bias) return;
    for (int r = 0; r < n; r++) be_add(be, y + (size_t)r * d, bias, d);
}

/* Branch output of one sub-layer: post_norm(y) into B->xb, or y itself.
 * Returns the buffer holding it. */
static const float *lp_post(const struct eng_model *m, struct be *be, const struct lp_bufs *B,
                            const float *post_norm, int n) {
    if (!post_norm) return B->xb2;
    be_rmsnorm(be, B->xb, B->xb2, post_norm, n, m->cfg.dim, m->cfg.norm_eps);
    return B->xb;
}

/* Attention branch of layer L over input x (read only): stores L's K/V for
 * the frame's rows through the layer's view kv and returns
 * post_norm(Wo . attention) (a buffer of B). */
static const float *lp_attn(struct eng_model *m, struct be *be, struct eng_layer *L,
                            const struct lp_bufs *B, const float *x, const struct eng_kv_view *kv, int n) {
    const struct eng_config *c = &m->cfg;
    const int qdim = eng_qdim(c), kvdim = eng_kvdim(c);
    be_rmsnorm(be, B->xb, x, L->attn_norm, n, c->dim, c->norm_eps);
    be_matmul(be, B->q, B->xb, &L->wq, n);
    be_matmul(be, B->k, B->xb, &L->wk, n);
    be_matmul(be, B->v, B->xb, &L->wv, n);
    lp_bias(be, B->q, L->bq, n, qdim);
    lp_bias(be, B->k, L->bk, n, kvdim);
    lp_bias(be, B->v, L->bv, n, kvdim);
    const float *k = lp_norm_rope(m, be, L, B->att, B->k, L->k_norm, n, c->n_kv_heads);
    be_kv_store(be, kv->kv, k, B->v, kv->slots, n, kvdim);
    const float *q = lp_norm_rope(m, be, L, B->att, B->q, L->q_norm, n, c->n_heads);
    struct be_attn_params ap = {.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                                .head_dim = c->head_dim, .scale = c->attn_scale,
                                .window = L->swa ? c->swa_window : 0, .softcap = 0.0f};
    be_attention(be, B->att, q, kv->kv, kv->aseq, kv->n_seqs, &ap);
    be_matmul(be, B->xb2, B->att, &L->wo, n);
    return lp_post(m, be, B, L->post_attn_norm, n);
}

/* FFN branch of layer L over input x (read only): returns
 * post_norm(Wdown . (act(Wgate xn) * Wup xn)), xn = ffn_norm(x). */
static const float *lp_ffn(struct eng_model *m, struct be *be, const struct eng_layer *L,
                           const struct lp_bufs *B, const float *x, int n) {
    const struct eng_config *c = &m->cfg;
    be_rmsnorm(be, B->xb, x, L->ffn_norm, n, c->dim, c->norm_eps);
    be_matmul(be, B->hb, B->xb, &L->w_gate, n);
    be_matmul(be, B->hb2, B->xb, &L->w_up, n);
    be_glu(be, B->hb, B->hb, B->hb2, (int64_t)n * c->ffn_dim, m->desc->act);
    be_matmul(be, B->xb2, B->hb, &L->w_down, n);
    return lp_post(m, be, B, L->post_ffn_norm, n);
}

/* ------------------------------------------------------------ one pair */

/* Runs sub-layer `ffn` (0 attention, 1 FFN) of layers il and il+1 on the same
 * residual x, then x += out_a; x += out_b. kv: the two layers' K/V views. */
static void lp_sublayer(struct eng_model *m, int il, int ffn, const struct eng_kv_view kv[2], int n) {
    struct eng_lp *lp = m->lp;
    const struct lp_bufs A = {m->s.xb, m->s.xb2, m->s.q, m->s.k, m->s.v, m->s.att, m->s.hb, m->s.hb2};
    const struct lp_bufs *bufs[2] = {&A, &lp->b};
    const float *out[2] = {NULL, NULL};
    const float *x = m->s.x;
    if (lp->split) {
#pragma omp parallel num_threads(2)
        {
            int nt = omp_get_num_threads();
            for (int j = omp_get_thread_num(); j < 2; j += nt) {
                struct eng_layer *L = &m->layers[il + j];
                out[j] = ffn ? lp_ffn(m, &lp->core[j], L, bufs[j], x, n)
                             : lp_attn(m, &lp->core[j], L, bufs[j], x, &kv[j], n);
            }
        }
    } else {
        for (int j = 0; j < 2; j++) {
            struct eng_layer *L = &m->layers[il + j];
            out[j] = ffn ? lp_ffn(m, &m->be, L, bufs[j], x, n)
                         : lp_attn(m, &m->be, L, bufs[j], x, &kv[j], n);
        }
    }
    const int64_t len = (int64_t)n * m->cfg.dim;
    be_add(&m->be, m->s.x, out[0], len);
    be_add(&m->be, m->s.x, out[1], len);
}

int eng_lp_pair(struct eng_model *m, int il, int n, int n_seqs) {
    struct eng_lp *lp = m->lp;
    if (!lp || il < lp->start || il + 1 >= lp->end || (il - lp->start) % 2) return 0;
    struct eng_kv_view kv[2]; /* view buffer 0 is layer il's (eng_forward's), 1 is il+1's */
    eng_layer_view(m, il, 0, &kv[0]);
    eng_layer_view(m, il + 1, 1, &kv[1]);
    (void)n_seqs; /* == kv[j].n_seqs */
    lp_sublayer(m, il, 0, kv, n);
    lp_sublayer(m, il, 1, kv, n);
    return 2;
}

/* ------------------------------------------------------------ setup */

static void lp_free_bufs(struct eng_model *m, struct lp_bufs *b) {
    float *all[] = {b->xb, b->xb2, b->q, b->k, b->v, b->att, b->hb, b->hb2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be_dealloc(&m->be, all[i]);
    memset(b, 0, sizeof *b);
}

void eng_lp_free(struct eng_model *m) {
    if (!m || !m->lp) return;
    struct eng_lp *lp = m->lp;
    lp_free_bufs(m, &lp->b);
    for (int j = 0; j < 2; j++)
        if (lp->core_open[j]) be_close(&lp->core[j]);
    free(lp);
    m->lp = NULL;
}

static int lp_alloc_bufs(struct eng_model *m, struct lp_bufs *b) {
    const struct eng_config *c = &m->cfg;
    size_t T = (size_t)m->max_batch_tokens, f = sizeof(float);
    struct { float **p; size_t n; } want[] = {
        {&b->xb, T * c->dim},        {&b->xb2, T * c->dim},      {&b->q, T * eng_qdim(c)},
        {&b->k, T * eng_kvdim(c)},   {&b->v, T * eng_kvdim(c)},  {&b->att, T * eng_qdim(c)},
        {&b->hb, T * c->ffn_dim},    {&b->hb2, T * c->ffn_dim},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!(*want[i].p = be_alloc(&m->be, want[i].n * f))) return SS_ENOMEM;
    return 0;
}

/* Execution mode: SLIMSERVE_LP_EXEC = "seq" or "split" forces one (for
 * measurements); by default split iff the backend is the CPU one running two
 * threads (one branch per core; with more cores the branches would need
 * nested teams, not done yet). */
static void lp_choose_exec(struct eng_model *m, struct eng_lp *lp) {
    const char *env = getenv("SLIMSERVE_LP_EXEC");
    int cpu = m->be.ops && m->be.ops->name && strcmp(m->be.ops->name, "cpu") == 0;
    int threads = lp->n_threads > 0 ? lp->n_threads : omp_get_num_procs();
    int want = cpu && threads == 2;
    if (env && !strcmp(env, "seq")) want = 0;
    else if (env && !strcmp(env, "split")) want = cpu;
    lp->split = 0;
    if (!want) return;
    for (int j = 0; j < 2; j++)
        if (!lp->core_open[j]) {
            if (be_open(&lp->core[j], "cpu", 1) < 0) return; /* fall back to sequential */
            lp->core_open[j] = 1;
        }
    lp->split = 1;
}

/* Refuses ranges that overlap a SUBLLM bracket: every paired layer must run
 * at level 0, and no '(' or ')' may sit between the two layers of a pair. */
static int lp_check_levels(const struct eng_model *m, int start, int end, char *err, size_t err_len) {
    if (eng_model_n_levels(m) <= 1) return 0;
    for (int l = start; l < end; l++) {
        int lev = eng_model_layer_level(m, l);
        if (lev != 0)
            return lp_fail(err, err_len, SS_EINVAL,
                           "layer parallelism %d:%d overlaps a SUBLLM bracket (layer %d runs at level %d); "
                           "pair only level-0 layers outside every subsampler",
                           start, end, l, lev);
    }
    const int32_t *st = m->sub.step0; /* steps [st[l], st[l+1]) run before layer l */
    for (int l = start + 1; st && l < end; l += 2)
        if (st[l] != st[l + 1])
            return lp_fail(err, err_len, SS_EINVAL,
                           "layer parallelism %d:%d: a SUBLLM bracket sits between layers %d and %d",
                           start, end, l - 1, l);
    return 0;
}

int eng_model_set_layer_parallel(struct eng_model *m, int start, int end, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!m) return lp_fail(err, err_len, SS_EINVAL, "no model");
    const int nl = m->cfg.n_layers;
    if (start == 0 && end == 0) {
        if (m->lp) m->lp->start = m->lp->end = 0;
        return 0;
    }
    if (start < 0 || end > nl || start >= end)
        return lp_fail(err, err_len, SS_EINVAL,
                       "layer parallelism range %d:%d is invalid: need 0 <= START < END <= %d (layers)",
                       start, end, nl);
    if ((end - start) % 2)
        return lp_fail(err, err_len, SS_EINVAL,
                       "layer parallelism range %d:%d has an odd number of layers (%d); it must pair them",
                       start, end, end - start);
    int rc = lp_check_levels(m, start, end, err, err_len);
    if (rc < 0) return rc;
    if (!m->lp) {
        struct eng_lp *lp = calloc(1, sizeof *lp);
        if (!lp) return lp_fail(err, err_len, SS_ENOMEM, "out of memory");
        m->lp = lp;
        if (lp_alloc_bufs(m, &lp->b) < 0) {
            eng_lp_free(m);
            return lp_fail(err, err_len, SS_ENOMEM, "out of memory for layer-parallel activations");
        }
    }
    lp_choose_exec(m, m->lp); /* the environment may have changed (measurements) */
    m->lp->start = start;
    m->lp->end = end;
    return 0;
}

int eng_model_layer_parallel(const struct eng_model *m, int *start, int *end) {
    if (!m || !m->lp || m->lp->start >= m->lp->end) return 0;
    if (start) *start = m->lp->start;
    if (end) *end = m->lp->end;
    return 1;
}

/* Parses "S:E" (or "off") of len bytes. Returns 0 and the range (0:0 = off),
 * or SS_EINVAL. */
static int lp_parse(const char *s, size_t len, int *start, int *end) {
    char buf[64];
    if (len >= sizeof buf) return SS_EINVAL;
    memcpy(buf, s, len);
    buf[len] = 0;
    if (!strcmp(buf, "off") || !strcmp(buf, "none")) {
        *start = *end = 0;
        return 0;
    }
    char *p, *q;
    long a = strtol(buf, &p, 10);
    if (p == buf || *p != ':') return SS_EINVAL;
    long b = strtol(p + 1, &q, 10);
    if (q == p + 1 || *q || a < 0 || b < 0 || a > 1 << 20 || b > 1 << 20) return SS_EINVAL;
    *start = (int)a;
    *end = (int)b;
    return 0;
}

int eng_lp_parse_flag(const char *s, struct eng_options *o, char *err, size_t err_len) {
    int start, end;
    if (!s || !o || lp_parse(s, strlen(s), &start, &end) < 0)
        return lp_fail(err, err_len, SS_EINVAL, "layer parallelism '%.40s': expected START:END (e.g. 4:10) or off",
                       s ? s : "");
    if (start == 0 && end == 0 && strchr(s, ':') == NULL) {
        o->lp_mode = ENG_LP_OFF;
        o->lp_start = o->lp_end = 0;
        return 0;
    }
    if (start >= end)
        return lp_fail(err, err_len, SS_EINVAL, "layer parallelism %d:%d: START must be below END", start, end);
    if ((end - start) % 2)
        return lp_fail(err, err_len, SS_EINVAL,
                       "layer parallelism %d:%d has an odd number of layers (%d); it must pair them", start, end,
                       end - start);
    o->lp_mode = ENG_LP_RANGE;
    o->lp_start = start;
    o->lp_end = end;
    return 0;
}

/* The file's lp.range: 0 and the range (0:0 when absent or "off"), or SS_EINVAL. */
static int lp_file_range(const struct eng_model *m, int *start, int *end, char *err, size_t err_len) {
    *start = *end = 0;
    const struct gguf_kv *kv = m->gguf ? gguf_find(m->gguf, "lp.range") : NULL;
    if (!kv) return 0;
    if (kv->type == GGUF_T_STRING) {
        struct gguf_str s;
        if (gguf_get_str(m->gguf, "lp.range", &s) == 0 && lp_parse(s.s, s.len, start, end) == 0) return 0;
        return lp_fail(err, err_len, SS_EINVAL, "file key lp.range '%.*s': expected \"START:END\" or \"off\"",
                       (int)(s.len < 40 ? s.len : 40), s.s);
    }
    double a, b;
    if (kv->type == GGUF_T_ARRAY && kv->arr_n == 2 && gguf_arr_num(kv, 0, &a) == 0 &&
        gguf_arr_num(kv, 1, &b) == 0 && a >= 0 && b >= 0 && a <= 1 << 20 && b <= 1 << 20 &&
        a == (int)a && b == (int)b) {
        *start = (int)a;
        *end = (int)b;
        return 0;
    }
    return lp_fail(err, err_len, SS_EINVAL, "file key lp.range: expected a string \"START:END\" or an array [START, END]");
}

int eng_model_apply_layer_parallel(struct eng_model *m, const struct eng_options *opt, char *err,
                                   size_t err_len) {
    if (!m) return lp_fail(err, err_len, SS_EINVAL, "no model");
    int mode = opt ? opt->lp_mode : ENG_LP_FILE, start = 0, end = 0, rc;
    if (mode == ENG_LP_RANGE) {
        start = opt->lp_start;
        end = opt->lp_end;
    } else if (mode == ENG_LP_FILE) {
        if ((rc = lp_file_range(m, &start, &end, err, err_len)) < 0) return rc;
    } else if (mode != ENG_LP_OFF) {
        return lp_fail(err, err_len, SS_EINVAL, "lp_mode %d: use ENG_LP_FILE, ENG_LP_OFF or ENG_LP_RANGE", mode);
    }
    if (mode == ENG_LP_RANGE && start == 0 && end == 0)
        return lp_fail(err, err_len, SS_EINVAL, "layer parallelism range 0:0 is empty; use off");
    char sub[200];
    rc = eng_model_set_layer_parallel(m, start, end, sub, sizeof sub);
    if (rc < 0)
        return lp_fail(err, err_len, rc, "%s%s", mode == ENG_LP_FILE ? "file key lp.range: " : "", sub);
    if (m->lp && opt && m->lp->n_threads != opt->n_threads) {
        m->lp->n_threads = opt->n_threads; /* split needs exactly two threads */
        lp_choose_exec(m, m->lp);
    }
    return 0;
}
