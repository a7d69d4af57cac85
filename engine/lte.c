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
 * pure speed decision.
 *
 * Thread: engine thread, except eng_model_lte_stats (any thread, mutex).
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

static int lfail(char *err, size_t len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int lfail(char *err, size_t len, int code, const char *fmt, ...) {
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* lte.expert_size and lte.threshold, with their defaults. *present is set when
 * either key is in the file. */
static int read_keys(const struct gguf_file *f, int ffn, int *S, float *tau, int *present, char *err,
                     size_t err_len) {
    int64_t s = 32;
    *present = 0;
    int rc = gguf_get_i64(f, "lte.expert_size", &s);
    if (rc == 0) *present = 1;
    else if (rc != SS_ENOTFOUND)
        return lfail(err, err_len, SS_EBADMODEL, "key lte.expert_size has a non-integer type");
    if (s < 1 || s > ffn)
        return lfail(err, err_len, SS_EBADMODEL, "lte.expert_size = %lld is outside [1, %d] (the FFN size)",
                     (long long)s, ffn);
    *S = (int)s;
    *tau = 0.5f;
    rc = gguf_get_f32(f, "lte.threshold", tau);
    if (rc == 0) *present = 1;
    else if (rc != SS_ENOTFOUND)
        return lfail(err, err_len, SS_EBADMODEL, "key lte.threshold has a non-float type");
    if (!(*tau > 0.0f && *tau < 1.0f))
        return lfail(err, err_len, SS_EBADMODEL, "lte.threshold = %g is outside (0, 1)", (double)*tau);
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
        if (hb && !hw) return lfail(err, err_len, SS_EBADMODEL, "tensor %s without %s", b, w);
        *n_routed += hw;
    }
    return 0;
}

/* The expert-major copy of layer il's ffn_down [ffn -> dim]: row d of expert e
 * is the file's blocks [e*S/blck, (e+1)*S/blck) of row d, moved unchanged. */
static int make_down_x(struct eng_model *m, int il, struct eng_lte_layer *LL, char *err, size_t err_len) {
    const struct be_tensor *down = &m->layers[il].w_down;
    const int S = m->lte.expert_size, E = m->lte.n_experts, dim = m->cfg.dim;
    size_t rbs = be_row_bytes(down->type, S); /* > 0: checked by bind_router */
    size_t per_expert = rbs * (size_t)dim;
    LL->down_mem = be_alloc(&m->be, per_expert * (size_t)E);
    uint8_t *host = malloc(per_expert);
    if (!LL->down_mem || !host) {
        free(host);
        return lfail(err, err_len, SS_ENOMEM, "out of memory for the expert-major ffn_down of layer %d", il);
    }
    const uint8_t *src = down->data;
    for (int e = 0; e < E; e++) {
        size_t col = (size_t)e * rbs; /* byte offset of expert e's blocks in a row */
        for (int d = 0; d < dim; d++) memcpy(host + (size_t)d * rbs, src + (size_t)d * down->nb1 + col, rbs);
        be_upload(&m->be, (uint8_t *)LL->down_mem + (size_t)e * per_expert, host, per_expert);
    }
    free(host);
    LL->down_x = (struct be_tensor){.type = down->type, .ne = {S, (int64_t)E * dim, 1, 1}, .nb1 = rbs,
                                    .data = LL->down_mem};
    int rc = be_weight_prepare(&m->be, &LL->down_x);
    if (rc < 0) return lfail(err, err_len, rc, "backend could not prepare the LTE ffn_down of layer %d", il);
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
    if (!LL->bias) return lfail(err, err_len, SS_ENOMEM, "out of memory");
    snprintf(name, sizeof name, "blk.%d.ffn_router.bias", il);
    if (gguf_find_tensor(m->gguf, name) && (rc = eng_host_vector(m, name, E, LL->bias, err, err_len)) < 0)
        return rc;
    for (int e = 0; e < E; e++)
        if (!isfinite(LL->bias[e])) return lfail(err, err_len, SS_EBADMODEL, "tensor %s holds a non-finite value", name);
    const struct be_type_info *ti = be_type_get(m->layers[il].w_down.type);
    if (be_row_bytes(m->layers[il].w_down.type, m->lte.expert_size) == 0)
        return lfail(err, err_len, SS_EBADMODEL,
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
        return lfail(err, err_len, SS_EBADMODEL, "%s.feed_forward_length %d is not a multiple of lte.expert_size %d",
                     m->desc->name, m->cfg.ffn_dim, S);
    if (o->lte_threshold != 0.0f) {
        if (!(o->lte_threshold > 0.0f && o->lte_threshold < 1.0f))
            return lfail(err, err_len, SS_EINVAL, "LTE threshold %g is outside (0, 1)", (double)o->lte_threshold);
        tau = o->lte_threshold;
    }
    lt->expert_size = S;
    lt->n_experts = m->cfg.ffn_dim / S;
    lt->n_routed = n_routed;
    lt->tau = tau;
    lt->logit_tau = (float)log((double)tau / (1.0 - (double)tau));
    lt->enabled = n_routed > 0 && !o->lte_off;
    lt->layers = calloc((size_t)m->cfg.n_layers, sizeof *lt->layers);
    if (!lt->layers) return lfail(err, err_len, SS_ENOMEM, "out of memory");
    for (int il = 0; il < m->cfg.n_layers; il++)
        if ((rc = bind_router(m, il, lt->enabled, err, err_len)) < 0) return rc;
    if (!lt->enabled) return 0;
    size_t cells = (size_t)m->max_batch_tokens * (size_t)lt->n_experts;
    lt->logits = be_alloc(&m->be, cells * sizeof(float));
    lt->hlogits = malloc(cells * sizeof(float));
    lt->mask = malloc(cells);
    pthread_mutex_t *mu = malloc(sizeof *mu);
    if (!lt->logits || !lt->hlogits || !lt->mask || !mu) {
        free(mu);
        return lfail(err, err_len, SS_ENOMEM, "out of memory for LTE router buffers");
    }
    pthread_mutex_init(mu, NULL);
    lt->stat_mu = mu;
    return 0;
}

void eng_lte_free(struct eng_model *m) {
    struct eng_lte *lt = &m->lte;
    if (lt->layers)
        for (int il = 0; il < m->cfg.n_layers; il++) {
            free(lt->layers[il].bias);
            if (m->be_open) be_dealloc(&m->be, lt->layers[il].down_mem);
        }
    if (m->be_open) be_dealloc(&m->be, lt->logits);
    free(lt->hlogits);
    free(lt->mask);
    free(lt->layers);
    if (lt->stat_mu) {
        pthread_mutex_destroy(lt->stat_mu);
        free(lt->stat_mu);
    }
    memset(lt, 0, sizeof *lt);
}
