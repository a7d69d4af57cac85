/* lp_merge.c - merged layer pairs: layer parallelism's pair (forward_lp.c)
 * with both layers' projections as one wider GEMM each (DESIGN.md section 5,
 * "executed as wider operations").
 *
 * Both branches of a sub-layer read the same residual x but have their own
 * pre-norm weight w: rmsnorm(x) * w = (x / rms(x)) * w, so with the norm
 * weight folded into the projection's columns, W' = W diag(w), every branch
 * shares the unweighted xhat = x / rms(x) and one GEMM computes both:
 *
 *   attention (a, b = the pair's layers, W' folded with attn_norm):
 *     qkv[n][Q_a K_a V_a Q_b K_b V_b] = xhat . [Wq'_a; Wk'_a; Wv'_a; Wq'_b; Wk'_b; Wv'_b]^T  (+ biases)
 *     each branch: its q, k, v copied out (copy2d), its q/k norms, RoPE,
 *     K/V store and attention (eng_attention_core; the two layers keep their
 *     own caches, so attention stays one call per layer, through fork2)
 *     no post-norms: out = [att_a | att_b] . [Wo_a | Wo_b]^T  (K = 2*qdim,
 *     the sum of both branches); gemma3: Wo and post-norm per branch
 *   FFN (W' folded with ffn_norm; dense layers only, LTE keeps branches):
 *     g = xhat . [Wg'_a; Wg'_b]^T,  u = xhat . [Wu'_a; Wu'_b]^T,  h = act(g) * u
 *     no post-norms: out = h . [Wd_a | Wd_b]^T  (K = 2*ffn); gemma3: h split,
 *     down and post-norm per branch
 *
 * gemma3's (1 + w) norm convention: the GGUF already holds 1 + w (llama.cpp's
 * converter adds it), and the engine multiplies by the stored vector, so the
 * stored vector is what is folded. The output/down projections merge only
 * without post-norms (llama, qwen2): a post-norm normalises each branch on
 * its own, which a summed GEMM cannot.
 *
 * Numerics: the same sums in another rounding order (w applied to the
 * weight, not the activation; the two branches summed inside the GEMM, not
 * by two residual adds); merged weights are F32 when every source is F32,
 * else F16 (the CUDA backend's own GEMM precision). So a merged pair is NOT
 * bitwise the branch-by-branch pair: tests/unit/test_lp.c holds it to the
 * NumPy reference within tolerance. Batch invariance holds as for any matmul.
 *
 * Memory: a merged copy of each pair's projection weights, prepared on the
 * backend once per range set (the per-layer weights stay: sequential layers
 * and a later range use them). The host copy is released when the backend
 * keeps its own (CUDA); the CPU computes from it, so it stays. NOTE: a
 * backend copy (CUDA) lives until the backend is closed, so each change of
 * the range adds one (the server sets it once).
 *
 * Thread: the engine thread owning the model.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward_lp.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

/* One pair's merged weights. Shapes are [rows][row length]. */
enum { MW_QKV, MW_O, MW_GATE, MW_UP, MW_DOWN, MW_COUNT };
struct lp_mpair {
    struct be_tensor w[MW_COUNT]; /* qkv [2*(qdim+2*kvdim)][dim], o [dim][2*qdim],
                                   * gate, up [2*ffn][dim], down [dim][2*ffn];
                                   * ne[1] == 0: not merged (o, down with post-norms;
                                   * gate/up/down when a layer is not dense) */
    void *host[MW_COUNT];         /* host data owned (NULL once the backend has its copy) */
    float *bqkv;                  /* backend [2*(qdim+2*kvdim)] concatenated biases, NULL without */
};

struct eng_lp_merged {
    int start, n_pairs;
    struct lp_mpair *pairs; /* [n_pairs] pair p = layers start+2p, start+2p+1 */
    float *wide;            /* backend [T][max(2*(qdim+2*kvdim), 2*ffn)] */
    float *wide2;           /* backend [T][2*ffn] */
};

/* ------------------------------------------------------------ building */

/* Rows of w, dequantised, each column k times scale[k] (scale NULL: 1), into
 * dst (type dt: BE_F32 or BE_F16) at row r0, column c0, dst rows ld
 * elements long. row: scratch of w->ne[0] floats. */
static void put_rows(void *dst, int dt, int64_t ld, int64_t r0, int64_t c0, const struct be_tensor *w,
                     const float *scale, float *row) {
    const int64_t K = w->ne[0];
    const size_t nb1 = w->nb1 ? w->nb1 : be_row_bytes(w->type, K);
    for (int64_t r = 0; r < w->ne[1]; r++) {
        kref_dequant_row(w->type, (const uint8_t *)w->data + (size_t)r * nb1, row, K);
        const size_t o = (size_t)(r0 + r) * (size_t)ld + (size_t)c0;
        for (int64_t k = 0; k < K; k++) {
            float v = scale ? row[k] * scale[k] : row[k];
            if (dt == BE_F32)
                ((float *)dst)[o + (size_t)k] = v;
            else
                ((uint16_t *)dst)[o + (size_t)k] = kref_fp32_to_fp16(v);
        }
    }
}

/* A merged tensor of `rows` rows of K elements from the parts (each placed
 * at its row / column offset), prepared on the backend. */
struct part {
    const struct be_tensor *w;
    const float *scale;
    int64_t r0, c0;
};
static int make_merged(struct eng_model *m, struct lp_mpair *P, int which, int64_t K, int64_t rows,
                       const struct part *parts, int n_parts, float *row) {
    int dt = BE_F32;
    for (int i = 0; i < n_parts; i++)
        if (parts[i].w->type != BE_F32) dt = BE_F16;
    const size_t es = dt == BE_F32 ? 4 : 2;
    void *h = malloc((size_t)K * (size_t)rows * es);
    if (!h) return SS_ENOMEM;
    for (int i = 0; i < n_parts; i++) put_rows(h, dt, K, parts[i].r0, parts[i].c0, parts[i].w, parts[i].scale, row);
    struct be_tensor *t = &P->w[which];
    *t = (struct be_tensor){.type = dt, .ne = {K, rows, 1, 1}, .nb1 = (size_t)K * es, .data = h};
    P->host[which] = h;
    int rc = be_weight_prepare(&m->be, t);
    if (rc < 0) return rc;
    if (t->be_data) { /* the backend has its own copy (backend.h: be_data) */
        free(h);
        P->host[which] = NULL;
        t->data = NULL;
    }
    return 0;
}

/* host [d] copy of blk.<il>.<suffix> (fp32) */
static int host_vec(struct eng_model *m, int il, const char *suffix, int64_t d, float *out, char *err,
                    size_t err_len) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    return eng_host_vector(m, name, d, out, err, err_len);
}

/* The concatenated q/k/v biases of layers il, il+1 on the backend (P->bqkv). */
static int make_bias(struct eng_model *m, struct lp_mpair *P, int il, float *host, char *err, size_t err_len) {
    const struct eng_config *c = &m->cfg;
    static const char *const sfx[3] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
    const int64_t d[3] = {eng_qdim(c), eng_kvdim(c), eng_kvdim(c)};
    int64_t off = 0;
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 3; i++) {
            int rc = host_vec(m, il + j, sfx[i], d[i], host + off, err, err_len);
            if (rc < 0) return rc;
            off += d[i];
        }
    if (!(P->bqkv = be_alloc(&m->be, sizeof(float) * (size_t)off)))
        return eng_fail(err, err_len, SS_ENOMEM, "out of memory for merged biases");
    be_upload(&m->be, P->bqkv, host, sizeof(float) * (size_t)off);
    return 0;
}

/* Merged weights of the pair (il, il+1). nrm: host scratch [4][dim]. */
static int build_pair(struct eng_model *m, struct lp_mpair *P, int il, float *nrm, float *row, char *err,
                      size_t err_len) {
    const struct eng_config *c = &m->cfg;
    const struct eng_layer *La = &m->layers[il], *Lb = &m->layers[il + 1];
    const int64_t dim = c->dim, qd = eng_qdim(c), kvd = eng_kvdim(c), ffn = c->ffn_dim;
    float *an[2] = {nrm, nrm + dim}, *fn[2] = {nrm + 2 * dim, nrm + 3 * dim};
    for (int j = 0; j < 2; j++) {
        int rc = host_vec(m, il + j, "attn_norm.weight", dim, an[j], err, err_len);
        if (rc >= 0) rc = host_vec(m, il + j, "ffn_norm.weight", dim, fn[j], err, err_len);
        if (rc < 0) return rc;
    }
    const int64_t wq = qd + 2 * kvd; /* rows of one layer's q, k, v */
    const struct part qkv[6] = {{&La->wq, an[0], 0, 0},           {&La->wk, an[0], qd, 0},
                                {&La->wv, an[0], qd + kvd, 0},    {&Lb->wq, an[1], wq, 0},
                                {&Lb->wk, an[1], wq + qd, 0},     {&Lb->wv, an[1], wq + qd + kvd, 0}};
    int rc = make_merged(m, P, MW_QKV, dim, 2 * wq, qkv, 6, row);
    const int post = La->post_attn_norm || Lb->post_attn_norm;
    if (rc >= 0 && !post) {
        const struct part o[2] = {{&La->wo, NULL, 0, 0}, {&Lb->wo, NULL, 0, qd}};
        rc = make_merged(m, P, MW_O, 2 * qd, dim, o, 2, row);
    }
    if (rc >= 0 && La->ffn == ENG_FFN_DENSE && Lb->ffn == ENG_FFN_DENSE) {
        const struct part g[2] = {{&La->w_gate, fn[0], 0, 0}, {&Lb->w_gate, fn[1], ffn, 0}};
        const struct part u[2] = {{&La->w_up, fn[0], 0, 0}, {&Lb->w_up, fn[1], ffn, 0}};
        rc = make_merged(m, P, MW_GATE, dim, 2 * ffn, g, 2, row);
        if (rc >= 0) rc = make_merged(m, P, MW_UP, dim, 2 * ffn, u, 2, row);
        if (rc >= 0 && !(La->post_ffn_norm || Lb->post_ffn_norm)) {
            const struct part d[2] = {{&La->w_down, NULL, 0, 0}, {&Lb->w_down, NULL, 0, ffn}};
            rc = make_merged(m, P, MW_DOWN, 2 * ffn, dim, d, 2, row);
        }
    }
    if (rc < 0) return eng_fail(err, err_len, rc, "out of memory for the merged weights of layers %d, %d", il, il + 1);
    return La->bq ? make_bias(m, P, il, row, err, err_len) : 0;
}

void eng_lp_merge_free(struct eng_model *m, struct eng_lp_merged *g) {
    if (!g) return;
    for (int p = 0; p < g->n_pairs; p++) {
        for (int i = 0; i < MW_COUNT; i++) free(g->pairs[p].host[i]);
        be_dealloc(&m->be, g->pairs[p].bqkv);
    }
    free(g->pairs);
    be_dealloc(&m->be, g->wide);
    be_dealloc(&m->be, g->wide2);
    free(g);
}

int eng_lp_merge_build(struct eng_model *m, int start, int end, struct eng_lp_merged **out, char *err,
                       size_t err_len) {
    const struct eng_config *c = &m->cfg;
    *out = NULL;
    if (!be_has_copy2d(&m->be))
        return eng_fail(err, err_len, SS_EUNSUPPORTED, "backend %s cannot run merged layer pairs (no copy2d)",
                        m->be.ops->name);
    const int64_t dim = c->dim, T = m->max_batch_tokens, wq = 2 * ((int64_t)eng_qdim(c) + 2 * eng_kvdim(c));
    const int64_t w2 = 2 * (int64_t)c->ffn_dim, wide = wq > w2 ? wq : w2;
    int64_t big = dim; /* row scratch: the longest row of a source or a bias set */
    if (c->ffn_dim > big) big = c->ffn_dim;
    if (eng_qdim(c) > big) big = eng_qdim(c);
    if (wq > big) big = wq;
    struct eng_lp_merged *g = calloc(1, sizeof *g);
    float *nrm = malloc(sizeof(float) * 4 * (size_t)dim), *row = malloc(sizeof(float) * (size_t)big);
    int rc = 0;
    if (!g || !nrm || !row) {
        rc = eng_fail(err, err_len, SS_ENOMEM, "out of memory for merged layer pairs");
        goto done;
    }
    g->start = start;
    g->n_pairs = (end - start) / 2;
    g->pairs = calloc((size_t)g->n_pairs, sizeof *g->pairs);
    g->wide = be_alloc(&m->be, sizeof(float) * (size_t)(T * wide));
    g->wide2 = be_alloc(&m->be, sizeof(float) * (size_t)(T * w2));
    if (!g->pairs || !g->wide || !g->wide2) {
        rc = eng_fail(err, err_len, SS_ENOMEM, "out of memory for merged layer pairs");
        goto done;
    }
    for (int p = 0; p < g->n_pairs && rc >= 0; p++) rc = build_pair(m, &g->pairs[p], start + 2 * p, nrm, row, err, err_len);
done:
    free(nrm);
    free(row);
    if (rc < 0) {
        eng_lp_merge_free(m, g);
        return rc;
    }
    *out = g;
    return 0;
}

/* ------------------------------------------------------------ forward */

/* A branch of a merged attention sub-layer (a be_fork2 task): attention of
 * its copied-out q, k, v; with post-norms also its Wo and post-norm. */
struct mtask {
    const struct eng_model *m;
    const struct eng_layer *L;
    const struct eng_bufs *B;
    const struct eng_kv_view *kv;
    int own_wo;          /* 1: Wo and post-norm here (not merged) */
    const float *out;    /* with own_wo: the branch output */
};

static void mtask_run(struct be *be, void *arg) {
    struct mtask *t = arg;
    eng_attention_core(t->m, be, t->L, t->B, t->kv);
    if (!t->own_wo) return;
    be_matmul(be, t->B->xb2, t->B->att, &t->L->wo, t->kv->n);
    t->out = eng_post_norm(t->m, be, t->B, t->B->xb2, t->L->post_attn_norm, t->kv->n);
}

static void merged_attention(struct eng_model *m, const struct eng_lp_merged *g, const struct lp_mpair *P, int il,
                             const struct eng_bufs *B[2], const struct eng_kv_view kv[2]) {
    const struct eng_config *c = &m->cfg;
    struct be *be = &m->be;
    const int n = kv[0].n, qd = eng_qdim(c), kvd = eng_kvdim(c), W = (int)P->w[MW_QKV].ne[1];
    be_rmsnorm(be, B[0]->xb, m->s.x, NULL, n, c->dim, c->norm_eps);
    be_matmul(be, g->wide, B[0]->xb, &P->w[MW_QKV], n);
    eng_add_bias(be, g->wide, P->bqkv, n, W);
    struct mtask t[2];
    for (int j = 0; j < 2; j++) {
        const float *src = g->wide + (size_t)j * (size_t)(W / 2);
        be_copy2d(be, B[j]->q, qd, src, W, n, qd);
        be_copy2d(be, B[j]->k, kvd, src + qd, W, n, kvd);
        be_copy2d(be, B[j]->v, kvd, src + qd + kvd, W, n, kvd);
        t[j] = (struct mtask){.m = m, .L = &m->layers[il + j], .B = B[j], .kv = &kv[j],
                              .own_wo = P->w[MW_O].ne[1] == 0};
    }
    be_fork2(be, mtask_run, &t[0], &t[1]);
    const int64_t len = (int64_t)n * c->dim;
    if (t[0].own_wo) {
        be_add(be, m->s.x, t[0].out, len);
        be_add(be, m->s.x, t[1].out, len);
        return;
    }
    for (int j = 0; j < 2; j++) be_copy2d(be, g->wide + (size_t)j * (size_t)qd, 2 * qd, B[j]->att, qd, n, qd);
    be_matmul(be, B[0]->xb2, g->wide, &P->w[MW_O], n); /* K = 2*qdim: both branches summed */
    be_add(be, m->s.x, B[0]->xb2, len);
}

static void merged_ffn(struct eng_model *m, const struct eng_lp_merged *g, const struct lp_mpair *P, int il,
                       const struct eng_bufs *B[2], int n) {
    const struct eng_config *c = &m->cfg;
    struct be *be = &m->be;
    const int ffn = c->ffn_dim;
    const int64_t len = (int64_t)n * c->dim;
    be_rmsnorm(be, B[0]->xb, m->s.x, NULL, n, c->dim, c->norm_eps);
    be_matmul(be, g->wide, B[0]->xb, &P->w[MW_GATE], n);
    be_matmul(be, g->wide2, B[0]->xb, &P->w[MW_UP], n);
    be_glu(be, g->wide, g->wide, g->wide2, (int64_t)n * 2 * ffn, m->desc->act);
    if (P->w[MW_DOWN].ne[1]) {
        be_matmul(be, B[0]->xb2, g->wide, &P->w[MW_DOWN], n); /* K = 2*ffn: both branches summed */
        be_add(be, m->s.x, B[0]->xb2, len);
        return;
    }
    const float *out[2];
    for (int j = 0; j < 2; j++) { /* post-norms: down and post-norm per branch */
        const struct eng_layer *L = &m->layers[il + j];
        be_copy2d(be, B[j]->hb, ffn, g->wide + (size_t)j * (size_t)ffn, 2 * ffn, n, ffn);
        be_matmul(be, B[j]->xb2, B[j]->hb, &L->w_down, n);
        out[j] = eng_post_norm(m, be, B[j], B[j]->xb2, L->post_ffn_norm, n);
    }
    be_add(be, m->s.x, out[0], len);
    be_add(be, m->s.x, out[1], len);
}

int eng_lp_merge_sublayer(struct eng_model *m, const struct eng_lp_merged *g, int il, int ffn,
                          const struct eng_bufs *b1, const struct eng_kv_view *kv) {
    if (!g) return 0;
    const int p = (il - g->start) / 2;
    if (p < 0 || p >= g->n_pairs) return 0;
    const struct lp_mpair *P = &g->pairs[p];
    const struct eng_bufs *B[2] = {&m->s.b, b1};
    if (!ffn) {
        merged_attention(m, g, P, il, B, kv);
        return 1;
    }
    if (!P->w[MW_GATE].ne[1]) return 0; /* an LTE layer: branch by branch */
    merged_ffn(m, g, P, il, B, kv[0].n);
    return 1;
}
