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
 * A branch is the sequential layer's sub-layer itself: the same
 * eng_attention_block / eng_ffn_block of forward.c, on its own buffer set:
 * pre-norm,
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
 * Execution: the two branches of a sub-layer are two tasks of be_fork2 on the
 * model's backend, which may run them at once (the CPU backend with two
 * threads: one per core, each on a one-thread share of the backend, with one
 * join per sub-layer instead of a fork/join per operation; see
 * kernels/cpu/fork.c) or one after the other (the wrapper's default). Both
 * give bitwise the same values: every kernel's result per row is independent
 * of the thread count (kernels/backend.h). The engine does not know which.
 * NOTE (measured on the 2-core dev machine, medians of interleaved runs,
 * every layer paired): one-after-the-other is as fast as the sequential
 * model (same operations, same barriers); the two-core split makes decode
 * 1.09-1.12x faster on Gemma 3 270M Q4_K_M (whose 262k-row output matrix
 * takes half the time) and 1.17x on a 14-layer 100M q8_0 llama, prefill
 * 1.04-1.09x, a 16-sequence decode step 1.03-1.06x. The gain is the ~14
 * fork/joins of two sequential layers replaced by two joins, plus decode
 * attention (one KV head: a single work item) of both layers at once.
 * On CUDA, fork2 issues the two tasks on two streams (kernels/cuda/be_cuda.c).
 * Merged execution (eng_options.lp_exec, or the backend's merge_pairs: CUDA):
 * both layers' projections as one wider GEMM each, lp_merge.c; then the
 * sub-layer does not take the branch path below (and is not bitwise it).
 *
 * Buffers: branch a uses the model's buffer set (m->s.b), branch b its own
 * set of the same shapes (struct eng_bufs), allocated on the model's backend
 * for max_batch_tokens rows when a range is first set. Both read the residual
 * stream m->s.x and the positions m->s.pos; the K/V views of the two layers
 * (eng_layer_view: view buffer 0 for the first layer, 1 for the second; the
 * current SUBLLM frame's rows) are read only.
 *
 * Thread: the engine thread owning the model; a backend worker may run
 * branch b between the fork and the join.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward_lp.h"
#include "engine/gguf.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

struct eng_lp {
    int start, end;      /* paired range; start == end: off */
    struct eng_bufs b;   /* branch b's buffer set (model backend memory), made when first set */
    struct eng_lp_merged *merged; /* merged weights of the range's pairs (lp_merge.c), NULL:
                                   * branch by branch */
};

/* ------------------------------------------------------------ one pair */

/* One branch of a pair's sub-layer: a be_fork2 task. */
struct lp_branch {
    const struct eng_model *m;
    const struct eng_layer *L;
    const struct eng_bufs *B;
    const struct eng_kv_view *kv; /* the layer's K/V view; kv->n = rows */
    int ffn;                      /* 0: attention sub-layer, 1: FFN */
    const float *out;             /* result: the branch output (a buffer of B) */
};

static void lp_run_branch(struct be *be, void *arg) {
    struct lp_branch *t = arg;
    const float *x = t->m->s.x;
    t->out = t->ffn ? eng_ffn_block(t->m, be, t->L, t->B, x, t->kv->n, t->L->ffn)
                    : eng_attention_block(t->m, be, t->L, t->B, x, t->kv);
}

/* Runs sub-layer `ffn` (0 attention, 1 FFN) of layers il and il+1 on the same
 * residual x, then x += out_a; x += out_b. kv: the two layers' K/V views. */
static void lp_sublayer(struct eng_model *m, int il, int ffn, const struct eng_kv_view kv[2]) {
    struct lp_branch t[2] = {
        {.m = m, .L = &m->layers[il], .B = &m->s.b, .kv = &kv[0], .ffn = ffn},
        {.m = m, .L = &m->layers[il + 1], .B = &m->lp->b, .kv = &kv[1], .ffn = ffn},
    };
    if (eng_lp_merge_sublayer(m, m->lp->merged, il, ffn, &m->lp->b, kv)) return;
    be_fork2(&m->be, lp_run_branch, &t[0], &t[1]);
    const int64_t len = (int64_t)kv[0].n * m->cfg.dim;
    be_add(&m->be, m->s.x, t[0].out, len);
    be_add(&m->be, m->s.x, t[1].out, len);
}

int eng_lp_pair(struct eng_model *m, int il, const struct eng_kv_view *kv0) {
    struct eng_lp *lp = m->lp;
    if (!lp || il < lp->start || il + 1 >= lp->end || (il - lp->start) % 2) return 0;
    struct eng_kv_view kv[2]; /* view buffer 0 is layer il's (eng_forward's), 1 is il+1's */
    kv[0] = *kv0;
    eng_layer_view(m, il + 1, 1, &kv[1]);
    lp_sublayer(m, il, 0, kv);
    lp_sublayer(m, il, 1, kv);
    return 2;
}

/* ------------------------------------------------------------ setup */

void eng_lp_free(struct eng_model *m) {
    if (!m || !m->lp) return;
    eng_lp_merge_free(m, m->lp->merged);
    eng_bufs_free(m, &m->lp->b);
    free(m->lp);
    m->lp = NULL;
}

/* Refuses ranges that overlap a SUBLLM bracket: every paired layer must run
 * at level 0, and no '(' or ')' may sit between the two layers of a pair. */
static int lp_check_levels(const struct eng_model *m, int start, int end, char *err, size_t err_len) {
    if (eng_model_n_levels(m) <= 1) return 0;
    for (int l = start; l < end; l++) {
        int lev = eng_model_layer_level(m, l);
        if (lev != 0)
            return eng_fail(err, err_len, SS_EINVAL,
                           "layer parallelism %d:%d overlaps a SUBLLM bracket (layer %d runs at level %d); "
                           "pair only level-0 layers outside every subsampler",
                           start, end, l, lev);
    }
    const int32_t *st = m->sub.step0; /* steps [st[l], st[l+1]) run before layer l */
    for (int l = start + 1; st && l < end; l += 2)
        if (st[l] != st[l + 1])
            return eng_fail(err, err_len, SS_EINVAL,
                           "layer parallelism %d:%d: a SUBLLM bracket sits between layers %d and %d",
                           start, end, l - 1, l);
    return 0;
}

int eng_model_set_layer_parallel(struct eng_model *m, int start, int end, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!m) return eng_fail(err, err_len, SS_EINVAL, "no model");
    const int nl = m->cfg.n_layers;
    if (start == 0 && end == 0) {
        if (m->lp) {
            m->lp->start = m->lp->end = 0;
            eng_lp_merge_free(m, m->lp->merged);
            m->lp->merged = NULL;
        }
        return 0;
    }
    if (start < 0 || end > nl || start >= end)
        return eng_fail(err, err_len, SS_EINVAL,
                       "layer parallelism range %d:%d is invalid: need 0 <= START < END <= %d (layers)",
                       start, end, nl);
    if ((end - start) % 2)
        return eng_fail(err, err_len, SS_EINVAL,
                       "layer parallelism range %d:%d has an odd number of layers (%d); it must pair them",
                       start, end, end - start);
    int rc = lp_check_levels(m, start, end, err, err_len);
    if (rc < 0) return rc;
    if (!m->lp) {
        struct eng_lp *lp = calloc(1, sizeof *lp);
        if (!lp) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
        m->lp = lp;
        if (eng_bufs_alloc(m, &lp->b) < 0) {
            eng_lp_free(m);
            return eng_fail(err, err_len, SS_ENOMEM, "out of memory for layer-parallel activations");
        }
    }
    const int merge = m->lp_exec == ENG_LP_EXEC_MERGED ||
                      (m->lp_exec == ENG_LP_EXEC_AUTO && m->be.ops->merge_pairs && be_has_copy2d(&m->be));
    struct eng_lp_merged *mg = NULL; /* built first: on failure the previous setting stays */
    if (merge && (rc = eng_lp_merge_build(m, start, end, &mg, err, err_len)) < 0) return rc;
    eng_lp_merge_free(m, m->lp->merged);
    m->lp->merged = mg;
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

int eng_model_lp_merged(const struct eng_model *m) {
    return eng_model_layer_parallel(m, NULL, NULL) && m->lp->merged != NULL;
}

int eng_lp_exec_parse(const char *s, int *out) {
    static const char *const names[] = {"auto", "branches", "merged"}; /* ENG_LP_EXEC_* order */
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    return -1;
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
        return eng_fail(err, err_len, SS_EINVAL, "layer parallelism '%.40s': expected START:END (e.g. 4:10) or off",
                       s ? s : "");
    if (start == 0 && end == 0 && strchr(s, ':') == NULL) {
        o->lp_mode = ENG_LP_OFF;
        o->lp_start = o->lp_end = 0;
        return 0;
    }
    if (start >= end)
        return eng_fail(err, err_len, SS_EINVAL, "layer parallelism %d:%d: START must be below END", start, end);
    if ((end - start) % 2)
        return eng_fail(err, err_len, SS_EINVAL,
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
        return eng_fail(err, err_len, SS_EINVAL, "file key lp.range '%.*s': expected \"START:END\" or \"off\"",
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
    return eng_fail(err, err_len, SS_EINVAL, "file key lp.range: expected a string \"START:END\" or an array [START, END]");
}

int eng_model_apply_layer_parallel(struct eng_model *m, const struct eng_options *opt, char *err,
                                   size_t err_len) {
    if (!m) return eng_fail(err, err_len, SS_EINVAL, "no model");
    int mode = opt ? opt->lp_mode : ENG_LP_FILE, start = 0, end = 0, rc;
    if (mode == ENG_LP_RANGE) {
        start = opt->lp_start;
        end = opt->lp_end;
    } else if (mode == ENG_LP_FILE) {
        if ((rc = lp_file_range(m, &start, &end, err, err_len)) < 0) return rc;
    } else if (mode != ENG_LP_OFF) {
        return eng_fail(err, err_len, SS_EINVAL, "lp_mode %d: use ENG_LP_FILE, ENG_LP_OFF or ENG_LP_RANGE", mode);
    }
    if (mode == ENG_LP_RANGE && start == 0 && end == 0)
        return eng_fail(err, err_len, SS_EINVAL, "layer parallelism range 0:0 is empty; use off");
    char sub[200];
    m->lp_exec = opt ? opt->lp_exec : ENG_LP_EXEC_AUTO;
    rc = eng_model_set_layer_parallel(m, start, end, sub, sizeof sub);
    if (rc < 0)
        return eng_fail(err, err_len, rc, "%s%s", mode == ENG_LP_FILE ? "file key lp.range: " : "", sub);
    return 0;
}
