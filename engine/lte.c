/* lte.c - LTE sparse FFNs (DESIGN.md sections 4 and 5): loading and
 * validating routers, the expert-major copy of ffn_down, and the LTE variant
 * of the FFN sub-layer.
 *
 * File format (any architecture): lte.expert_size S (u32, default 32),
 * lte.threshold tau (f32 in (0, 1), default 0.5), and per layer an optional
 * blk.N.ffn_router.weight [dim, n_experts] (n_experts = ffn / S) with an
 * optional blk.N.ffn_router.bias [n_experts]. Layers without a router stay
 * dense. Expert e is FFN neurons [e*S, (e+1)*S).
 *
 * Forward of a routed layer, for the rows of the current frame:
 *   r = W_r xn + b               (be_matmul: per-row bitwise, batch independent)
 *   mask[t][e] = r[t][e] > logit(tau)
 *   out[t] = sum over active e, in increasing e, of down_e(act(gate_e xn) * up_e xn)
 * The backend's lte_ffn entry computes the last line; its determinism
 * contract (kernels/backend.h) makes out[t] independent of the batch and of
 * the path (grouped sparse or dense fallback), so the path choice below is a
 * pure speed decision (bitwise on the CPU; on CUDA the dense path's cuBLAS
 * gate/up make it within tolerance, backend.h).
 *
 * Thread: the engine thread (the scheduler publishes eng_model_lte_stats
 * with its own statistics; no lock here).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

/* lte.expert_size and lte.threshold, with their defaults. *present is set when
 * either key is in the file. */
static int read_keys(const struct gguf_file *f, int ffn, int *S, float *tau, int *present, char *err,
                     size_t err_len) {
    int64_t s = 32;
    *present = 0;
    int rc = gguf_get_i64(f, "lte.expert_size", &s);
    if (rc == 0) *present = 1;
    else if (rc != SS_ENOTFOUND)
        return eng_fail(err, err_len, SS_EBADMODEL, "key lte.expert_size has a non-integer type");
    if (s < 1 || s > ffn)
        return eng_fail(err, err_len, SS_EBADMODEL, "lte.expert_size = %lld is outside [1, %d] (the FFN size)",
                     (long long)s, ffn);
    *S = (int)s;
    *tau = 0.5f;
    rc = gguf_get_f32(f, "lte.threshold", tau);
    if (rc == 0) *present = 1;
    else if (rc != SS_ENOTFOUND)
        return eng_fail(err, err_len, SS_EBADMODEL, "key lte.threshold has a non-float type");
    if (!(*tau > 0.0f && *tau < 1.0f))
        return eng_fail(err, err_len, SS_EBADMODEL, "lte.threshold = %g is outside (0, 1)", (double)*tau);
    return 0;
}

/* Routers present; a bias without a weight is an error. */
static int count_routers(struct eng_model *m, int *n_routed, char *err, size_t err_len) {
    char w[64], b[64];
    *n_routed = 0;
    for (int il = 0; il < m->cfg.n_layers; il++) {
        snprintf(w, sizeof w, "blk.%d.ffn_router.weight", il);
        snprintf(b, sizeof b, "blk.%d.ffn_router.bias", il);
        int hw = gguf_find_tensor(m->gguf, w) != NULL, hb = gguf_find_tensor(m->gguf, b) != NULL;
        if (hb && !hw) return eng_fail(err, err_len, SS_EBADMODEL, "tensor %s without %s", b, w);
        *n_routed += hw;
    }
    return 0;
}

/* The expert-major copy of layer il's ffn_down [ffn -> dim]: row d of expert e
 * is the file's blocks [e*S/blck, (e+1)*S/blck) of row d, moved unchanged.
 * It is built in host memory, which is what be_weight_prepare reads (a
 * backend with its own weight copies, CUDA, uploads it there and the host
 * copy is freed; the CPU backend uses it in place, so it stays, 64-byte
 * aligned as be_alloc's memory). */
static int make_down_x(struct eng_model *m, int il, struct eng_lte_layer *LL, char *err, size_t err_len) {
    const struct be_tensor *down = &m->layers[il].w_down;
    const int S = m->lte.expert_size, E = m->lte.n_experts, dim = m->cfg.dim;
    size_t rbs = be_row_bytes(down->type, S); /* > 0: checked by bind_router */
    size_t per_expert = rbs * (size_t)dim;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, per_expert * (size_t)E) != 0)
        return eng_fail(err, err_len, SS_ENOMEM, "out of memory for the expert-major ffn_down of layer %d", il);
    LL->down_mem = mem;
    const uint8_t *src = down->data;
    for (int e = 0; e < E; e++) {
        uint8_t *dst = (uint8_t *)mem + (size_t)e * per_expert;
        size_t col = (size_t)e * rbs; /* byte offset of expert e's blocks in a row */
        for (int d = 0; d < dim; d++) memcpy(dst + (size_t)d * rbs, src + (size_t)d * down->nb1 + col, rbs);
    }
    LL->down_x = (struct be_tensor){.type = down->type, .ne = {S, (int64_t)E * dim, 1, 1}, .nb1 = rbs,
                                    .data = mem};
    int rc = be_weight_prepare(&m->be, &LL->down_x);
    if (rc < 0) return eng_fail(err, err_len, rc, "backend could not prepare the LTE ffn_down of layer %d", il);
    if (LL->down_x.be_data) { /* the backend keeps its own copy: the host one is not read again */
        free(LL->down_mem);
        LL->down_mem = NULL;
        LL->down_x.data = NULL;
    }
    return 0;
}

static int bind_router(struct eng_model *m, int il, int build, char *err, size_t err_len) {
    struct eng_lte_layer *LL = &m->lte.layers[il];
    const int E = m->lte.n_experts;
    char name[64];
    snprintf(name, sizeof name, "blk.%d.ffn_router.weight", il);
    if (!gguf_find_tensor(m->gguf, name)) return 0; /* dense layer */
    int rc = eng_bind_matrix(m, &LL->router, name, m->cfg.dim, E, err, err_len);
    if (rc < 0) return rc;
    LL->bias = calloc((size_t)E, sizeof *LL->bias);
    if (!LL->bias) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    snprintf(name, sizeof name, "blk.%d.ffn_router.bias", il);
    if (gguf_find_tensor(m->gguf, name) && (rc = eng_host_vector(m, name, E, LL->bias, err, err_len)) < 0)
        return rc;
    for (int e = 0; e < E; e++)
        if (!isfinite(LL->bias[e])) return eng_fail(err, err_len, SS_EBADMODEL, "tensor %s holds a non-finite value", name);
    const struct be_type_info *ti = be_type_get(m->layers[il].w_down.type);
    if (be_row_bytes(m->layers[il].w_down.type, m->lte.expert_size) == 0)
        return eng_fail(err, err_len, SS_EBADMODEL,
                     "blk.%d.ffn_down.weight has type %s with %d-element blocks: an LTE layer needs a "
                     "block size that divides lte.expert_size %d (re-quantise ffn_down, e.g. to q8_0)",
                     il, ti && ti->name ? ti->name : "?", ti ? ti->blck : 0, m->lte.expert_size);
    if (!build) return 0; /* --lte off: validated only */
    return make_down_x(m, il, LL, err, err_len);
}

int eng_lte_load(struct eng_model *m, const struct eng_options *o, char *err, size_t err_len) {
    struct eng_lte *lt = &m->lte;
    int S = 32, present, n_routed, rc;
    float tau;
    if ((rc = read_keys(m->gguf, m->cfg.ffn_dim, &S, &tau, &present, err, err_len)) < 0) return rc;
    if ((rc = count_routers(m, &n_routed, err, err_len)) < 0) return rc;
    if (!present && n_routed == 0) return 0; /* a plain dense model */
    if (m->cfg.ffn_dim % S != 0)
        return eng_fail(err, err_len, SS_EBADMODEL, "%s.feed_forward_length %d is not a multiple of lte.expert_size %d",
                     m->desc->name, m->cfg.ffn_dim, S);
    if (o->lte_threshold != 0.0f) {
        if (!(o->lte_threshold > 0.0f && o->lte_threshold < 1.0f))
            return eng_fail(err, err_len, SS_EINVAL, "LTE threshold %g is outside (0, 1)", (double)o->lte_threshold);
        tau = o->lte_threshold;
    }
    lt->expert_size = S;
    lt->n_experts = m->cfg.ffn_dim / S;
    lt->n_routed = n_routed;
    lt->tau = tau;
    lt->logit_tau = (float)log((double)tau / (1.0 - (double)tau));
    lt->enabled = n_routed > 0 && !o->lte_off;
    if (o->lte_path < ENG_LTE_AUTO || o->lte_path > ENG_LTE_DENSE)
        return eng_fail(err, err_len, SS_EINVAL, "LTE path %d: use ENG_LTE_AUTO, _GROUPED or _DENSE", o->lte_path);
    lt->path = o->lte_path;
    lt->layers = calloc((size_t)m->cfg.n_layers, sizeof *lt->layers);
    if (!lt->layers) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    for (int il = 0; il < m->cfg.n_layers; il++)
        if ((rc = bind_router(m, il, lt->enabled, err, err_len)) < 0) return rc;
    if (!lt->enabled) return 0;
    if (!be_has_lte(&m->be))
        return eng_fail(err, err_len, SS_EUNSUPPORTED, "backend '%s' has no LTE sparse FFN (use --lte off)",
                     m->be.ops->name);
    for (int il = 0; il < m->cfg.n_layers; il++)
        if (lt->layers[il].router.data) {
            m->layers[il].ffn = ENG_FFN_LTE;
            m->layers[il].lte = &lt->layers[il];
        }
    return 0;
}

void eng_lte_free(struct eng_model *m) {
    struct eng_lte *lt = &m->lte;
    if (lt->layers)
        for (int il = 0; il < m->cfg.n_layers; il++) {
            free(lt->layers[il].bias);
            free(lt->layers[il].down_mem);
        }
    free(lt->layers);
    free(m->probe_buf);
    m->probe_buf = NULL;
    m->probe = NULL;
    if (m->layers)
        for (int il = 0; il < m->cfg.n_layers; il++) {
            m->layers[il].ffn = ENG_FFN_DENSE;
            m->layers[il].lte = NULL;
        }
    memset(lt, 0, sizeof *lt);
}

/* ---- forward ---- */

/* Path choice of one step (a speed decision only: both paths give the same
 * bits). The grouped path runs each active expert on the rows that chose it;
 * the dense fallback runs gate and up as two plain matmuls over every row.
 * Measured with `bench_kernels lte 1 7 cpu` (dim 1024, ffn 4096, S 32, one
 * thread, process CPU time, shared 2-core machine; README "LTE"): the
 * fallback beat grouped only for decode-sized steps (n <= 4 rows) with nearly
 * every expert on (mean active fraction >= 0.9: Q8_0 0.9 at n 1, Q4_0 0.9 at
 * n 1 and 1.0 at n 4, F16 0.9 at n 1 and 4); from n = 16 on grouped was faster
 * at every fraction up to 1.0 for all three types (its gate/up work shrinks
 * with the fraction while the fallback's does not). The crossover did not
 * depend on the type within the noise, hence one rule. Rechecked after the
 * decode path's prefetch and down-product work (README "LTE"): crossovers at
 * n 1 and 4 between 0.7 and 1.0, grouped ahead at 0.5 for Q8_0/Q4_0. */
static int use_dense(int n, double active_frac) { return n <= 4 && active_frac >= 0.9; }

void eng_lte_ffn(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                 const struct eng_bufs *B, int n) {
    const struct eng_lte *lt = &m->lte;
    struct eng_lte_layer *LL = L->lte;
    const int E = lt->n_experts;
    be_matmul(be, B->rl, B->xb, &LL->router, n);
    be_download(be, B->rlh, B->rl, (size_t)n * E * sizeof(float));
    int64_t active = 0, in_union = 0;
    for (int t = 0; t < n; t++) {
        const float *r = B->rlh + (size_t)t * E;
        uint8_t *mk = B->mask + (size_t)t * E;
        for (int e = 0; e < E; e++) {
            mk[e] = r[e] + LL->bias[e] > lt->logit_tau;
            active += mk[e];
        }
    }
    for (int e = 0; e < E; e++) {
        int on = 0;
        for (int t = 0; t < n && !on; t++) on = B->mask[(size_t)t * E + e];
        in_union += on;
    }
    double frac = (double)active / ((double)n * E), ufrac = (double)in_union / E;
    struct be_lte_ffn p = {.gate = &L->w_gate, .up = &L->w_up, .down = &LL->down_x, .n_experts = E,
                           .expert_size = lt->expert_size, .act = m->desc->act,
                           .dense = lt->path == ENG_LTE_DENSE ||
                                    (lt->path == ENG_LTE_AUTO && use_dense(n, frac))};
    be_lte_ffn(be, B->xb2, B->xb, B->mask, n, &p, B->hb, B->hb2);

    /* bin = ceil(10 f) - 1 in integers (f = in_union / E exactly) */
    int bin = (int)((in_union * ENG_LTE_UNION_BINS + E - 1) / E) - 1;
    bin = bin < 0 ? 0 : bin >= ENG_LTE_UNION_BINS ? ENG_LTE_UNION_BINS - 1 : bin;
    LL->active_sum += frac * n;
    LL->n_tok += n;
    LL->union_hist[bin]++;
    LL->union_sum += ufrac;
}

int eng_model_lte_info(const struct eng_model *m, struct eng_lte_info *out) {
    const struct eng_lte *lt = &m->lte;
    memset(out, 0, sizeof *out);
    if (lt->n_routed == 0) return 0;
    *out = (struct eng_lte_info){.n_routed = lt->n_routed, .n_experts = lt->n_experts,
                                 .expert_size = lt->expert_size, .tau = lt->tau, .enabled = lt->enabled};
    return 1;
}

void eng_model_lte_stats(const struct eng_model *m, struct eng_lte_stats *out) {
    const struct eng_lte *lt = &m->lte;
    memset(out, 0, sizeof *out);
    if (!lt->enabled) return;
    out->n_layers = m->cfg.n_layers < ENG_LTE_STAT_LAYERS ? m->cfg.n_layers : ENG_LTE_STAT_LAYERS;
    for (int il = 0; il < m->cfg.n_layers; il++) {
        const struct eng_lte_layer *LL = &lt->layers[il];
        if (!LL->router.data) continue;
        if (il < out->n_layers) {
            out->routed[il] = 1;
            out->active_frac[il] = LL->n_tok ? LL->active_sum / (double)LL->n_tok : 0.0;
        }
        for (int b = 0; b < ENG_LTE_UNION_BINS; b++) {
            out->union_count[b] += (uint64_t)LL->union_hist[b];
            out->union_steps += (uint64_t)LL->union_hist[b];
        }
        out->union_sum += LL->union_sum;
    }
}

int eng_model_set_ffn_probe(struct eng_model *m, eng_ffn_probe_fn fn, void *ctx) {
    if (fn && m->lp) return SS_EINVAL;
    if (fn && !m->probe_buf) {
        m->probe_buf = malloc((size_t)m->max_batch_tokens * (size_t)m->cfg.dim * sizeof(float));
        if (!m->probe_buf) return SS_ENOMEM;
    }
    m->probe = fn;
    m->probe_ctx = ctx;
    return 0;
}
