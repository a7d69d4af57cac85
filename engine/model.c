/* model.c - loading a model: hyper-parameters, tensors, backend, KV pool.
 *
 * The architecture is data: eng_archs[] names each architecture's key prefix,
 * features and RoPE style, and layer_specs[] lists every per-layer tensor with
 * its symbolic shape and the feature it belongs to. Loading walks those tables;
 * nothing below switches on the architecture name.
 *
 * Every tensor is checked for presence, type and exact shape before use; any
 * mismatch is SS_EBADMODEL with a message naming the tensor. Nothing a model
 * file contains can make loading crash or abort.
 */
#include "engine/model_internal.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward_lp.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

/* ---- architectures ---- */

static const struct eng_arch_desc eng_archs[] = {
    /* name      arch              features                                neox act ready emb swa */
    {"llama",  ENG_ARCH_LLAMA,  0,                                         0,   0,  1,    0,  0},
    {"qwen2",  ENG_ARCH_QWEN2,  ENG_FEAT_QKV_BIAS,                         1,   0,  1,    0,  0},
    {"gemma3", ENG_ARCH_GEMMA3, ENG_FEAT_QK_NORM | ENG_FEAT_POST_NORMS,    1,   1,  1,    1,  6},
    {"subllm", ENG_ARCH_SUBLLM, 0,                                         0,   0,  1,    0,  0},
};

const struct eng_arch_desc *eng_arch_find(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof eng_archs / sizeof eng_archs[0]; i++)
        if (strlen(eng_archs[i].name) == len && memcmp(eng_archs[i].name, name, len) == 0)
            return &eng_archs[i];
    return NULL;
}

/* ---- per-layer tensor table ---- */

enum dimsym { D_ONE, D_DIM, D_QDIM, D_KVDIM, D_FFN, D_HD };
enum tkind { TK_MAT, TK_VEC }; /* TK_MAT -> struct be_tensor; TK_VEC -> const float * (fp32, backend) */

struct tensor_spec {
    const char *suffix;  /* blk.N.<suffix> */
    int kind;
    int ne0, ne1;        /* enum dimsym; ne0 = row length */
    size_t off;          /* field in struct eng_layer */
    unsigned feature;    /* 0 = always required; else required iff the arch has it */
};

#define LOFF(f) offsetof(struct eng_layer, f)
static const struct tensor_spec layer_specs[] = {
    {"attn_norm.weight",   TK_VEC, D_DIM,   D_ONE,   LOFF(attn_norm), 0},
    {"attn_q.weight",      TK_MAT, D_DIM,   D_QDIM,  LOFF(wq),        0},
    {"attn_k.weight",      TK_MAT, D_DIM,   D_KVDIM, LOFF(wk),        0},
    {"attn_v.weight",      TK_MAT, D_DIM,   D_KVDIM, LOFF(wv),        0},
    {"attn_output.weight", TK_MAT, D_QDIM,  D_DIM,   LOFF(wo),        0},
    {"ffn_norm.weight",    TK_VEC, D_DIM,   D_ONE,   LOFF(ffn_norm),  0},
    {"ffn_gate.weight",    TK_MAT, D_DIM,   D_FFN,   LOFF(w_gate),    0},
    {"ffn_up.weight",      TK_MAT, D_DIM,   D_FFN,   LOFF(w_up),      0},
    {"ffn_down.weight",    TK_MAT, D_FFN,   D_DIM,   LOFF(w_down),    0},
    {"attn_q.bias",        TK_VEC, D_QDIM,  D_ONE,   LOFF(bq),        ENG_FEAT_QKV_BIAS},
    {"attn_k.bias",        TK_VEC, D_KVDIM, D_ONE,   LOFF(bk),        ENG_FEAT_QKV_BIAS},
    {"attn_v.bias",        TK_VEC, D_KVDIM, D_ONE,   LOFF(bv),        ENG_FEAT_QKV_BIAS},
    {"attn_q_norm.weight", TK_VEC, D_HD,    D_ONE,   LOFF(q_norm),    ENG_FEAT_QK_NORM},
    {"attn_k_norm.weight", TK_VEC, D_HD,    D_ONE,   LOFF(k_norm),    ENG_FEAT_QK_NORM},
    {"post_attention_norm.weight", TK_VEC, D_DIM, D_ONE, LOFF(post_attn_norm), ENG_FEAT_POST_NORMS},
    {"post_ffw_norm.weight", TK_VEC, D_DIM,   D_ONE,   LOFF(post_ffn_norm), ENG_FEAT_POST_NORMS},
};
#undef LOFF

static int64_t dim_value(const struct eng_config *c, int sym) {
    switch (sym) {
    case D_DIM: return c->dim;
    case D_QDIM: return (int64_t)c->n_heads * c->head_dim;
    case D_KVDIM: return (int64_t)c->n_kv_heads * c->head_dim;
    case D_FFN: return c->ffn_dim;
    case D_HD: return c->head_dim;
    default: return 1;
    }
}

/* ---- helpers ---- */

int eng_fail(char *err, size_t len, int code, const char *fmt, ...) {
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Reads <arch>.<suffix> as an int in [lo, hi]. Absent: *out = def and 0, or
 * SS_EBADMODEL when def < 0 (required). */
static int key_int(const struct gguf_file *f, const char *arch, const char *suffix, int def,
                   int lo, int hi, int *out, char *err, size_t err_len) {
    char key[128];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_i64(f, key, &v);
    if (rc == SS_ENOTFOUND) {
        if (def < 0) return eng_fail(err, err_len, SS_EBADMODEL, "missing key %s", key);
        *out = def;
        return 0;
    }
    if (rc < 0) return eng_fail(err, err_len, SS_EBADMODEL, "key %s has a non-integer type", key);
    if (v < lo || v > hi)
        return eng_fail(err, err_len, SS_EBADMODEL, "key %s = %lld out of range [%d, %d]", key,
                    (long long)v, lo, hi);
    *out = (int)v;
    return 0;
}

static int key_float(const struct gguf_file *f, const char *arch, const char *suffix, float def,
                     float *out, char *err, size_t err_len) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_f32(f, key, out);
    if (rc == SS_ENOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc < 0) return eng_fail(err, err_len, SS_EBADMODEL, "key %s has a non-float type", key);
    if (!(*out == *out) || *out < 0.0f || *out > 1e30f)
        return eng_fail(err, err_len, SS_EBADMODEL, "key %s = %g is not a valid value", key, *out);
    return 0;
}

static void copy_gstr(char *dst, size_t cap, struct gguf_str s) {
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    memcpy(dst, s.s, n);
    dst[n] = 0;
}

/* ---- hyper-parameters ---- */

/* Attention scale, embedding scale, final soft-capping and the sliding-window
 * keys (neutral values for architectures without them). */
static int read_gemma_keys(struct eng_model *m, char *err, size_t err_len) {
    struct eng_config *c = &m->cfg;
    const char *a = m->desc->name;
    int rc;
    c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    /* NOTE: llama.cpp scales Gemma 3 27B (62 layers) queries by 1/sqrt(dim/heads)
     * (its query_pre_attn_scalar, which no GGUF key carries); every other size
     * uses 1/sqrt(head_dim). Follow it so the same file gives the same model. */
    if (c->arch == ENG_ARCH_GEMMA3 && c->n_layers == 62)
        c->attn_scale = 1.0f / sqrtf((float)c->dim / (float)c->n_heads);
    c->embd_scale = m->desc->embd_scale_sqrt ? sqrtf((float)c->dim) : 1.0f;
    if ((rc = key_float(m->gguf, a, "final_logit_softcapping", 0.0f, &c->logit_softcap, err,
                        err_len)) < 0)
        return rc;
    c->swa_window = 0;
    c->rope_theta_swa = c->rope_theta;
    if (m->desc->swa_pattern <= 0) return 0;
    if ((rc = key_int(m->gguf, a, "attention.sliding_window", 0, 0, 1 << 24, &c->swa_window, err,
                      err_len)) < 0 ||
        (rc = key_float(m->gguf, a, "rope.freq_base_swa", 10000.0f, &c->rope_theta_swa, err,
                        err_len)) < 0)
        return rc;
    if (!(c->rope_theta_swa > 0.0f))
        return eng_fail(err, err_len, SS_EBADMODEL, "%s.rope.freq_base_swa must be positive", a);
    return 0;
}

/* Marks the local layers (needs m->layers). With a window, the pattern key is
 * either an integer P (layer l local iff P == 0 or l % P < P - 1, default
 * desc->swa_pattern) or an array with one bool/number per layer. */
static int mark_swa_layers(struct eng_model *m, char *err, size_t err_len) {
    struct eng_config *c = &m->cfg;
    c->n_swa_layers = 0;
    if (c->swa_window <= 0) return 0;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", m->desc->name);
    const struct gguf_kv *kv = gguf_find(m->gguf, key);
    int pattern = m->desc->swa_pattern;
    if (kv && kv->type == GGUF_T_ARRAY) {
        if (kv->arr_n < (uint64_t)c->n_layers)
            return eng_fail(err, err_len, SS_EBADMODEL, "%s has %llu entries for %d layers", key,
                        (unsigned long long)kv->arr_n, c->n_layers);
        for (int il = 0; il < c->n_layers; il++) {
            double v;
            if (kv->arr_type == GGUF_T_BOOL) v = kv->data[il] != 0;
            else if (gguf_arr_num(kv, (uint64_t)il, &v) < 0)
                return eng_fail(err, err_len, SS_EBADMODEL, "%s is not a numeric array", key);
            m->layers[il].swa = v != 0.0;
        }
    } else {
        int rc = key_int(m->gguf, m->desc->name, "attention.sliding_window_pattern", pattern, 0,
                         1 << 20, &pattern, err, err_len);
        if (rc < 0) return rc;
        for (int il = 0; il < c->n_layers; il++)
            m->layers[il].swa = pattern == 0 || il % pattern < pattern - 1;
    }
    for (int il = 0; il < c->n_layers; il++) c->n_swa_layers += m->layers[il].swa;
    return 0;
}

static int read_config(struct eng_model *m, const char *path, char *err, size_t err_len) {
    struct eng_config *c = &m->cfg;
    const struct gguf_file *f = m->gguf;
    struct gguf_str s;
    int rc;

    if (gguf_get_str(f, "general.architecture", &s) < 0)
        return eng_fail(err, err_len, SS_EBADMODEL, "missing general.architecture");
    m->desc = eng_arch_find(s.s, (size_t)s.len);
    if (!m->desc) {
        char an[64];
        copy_gstr(an, sizeof an, s);
        return eng_fail(err, err_len, SS_EUNSUPPORTED, "unsupported architecture '%s'", an);
    }
    if (!m->desc->forward_ready)
        return eng_fail(err, err_len, SS_EUNSUPPORTED, "architecture '%s' is not implemented yet",
                    m->desc->name);
    const char *a = m->desc->name;
    c->arch = m->desc->arch;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", a);
    if (gguf_get_str(f, "general.name", &s) == 0 && s.len > 0) {
        copy_gstr(c->name, sizeof c->name, s);
    } else {
        const char *b = strrchr(path, '/');
        snprintf(c->name, sizeof c->name, "%s", b ? b + 1 : path);
    }

    const int big = 1 << 20;
    if ((rc = key_int(f, a, "block_count", -1, 1, 4096, &c->n_layers, err, err_len)) < 0 ||
        (rc = key_int(f, a, "embedding_length", -1, 1, big, &c->dim, err, err_len)) < 0 ||
        (rc = key_int(f, a, "feed_forward_length", -1, 1, 4 * big, &c->ffn_dim, err, err_len)) < 0 ||
        (rc = key_int(f, a, "attention.head_count", -1, 1, 4096, &c->n_heads, err, err_len)) < 0 ||
        (rc = key_int(f, a, "attention.head_count_kv", c->n_heads, 1, 4096, &c->n_kv_heads, err,
                      err_len)) < 0 ||
        (rc = key_int(f, a, "context_length", 2048, 1, 1 << 24, &c->n_ctx_train, err, err_len)) < 0)
        return rc;
    int hd_def = c->dim % c->n_heads == 0 ? c->dim / c->n_heads : -1;
    if ((rc = key_int(f, a, "attention.key_length", hd_def, 2, 1024, &c->head_dim, err, err_len)) < 0)
        return rc;
    int vlen;
    if ((rc = key_int(f, a, "attention.value_length", c->head_dim, 1, 1024, &vlen, err, err_len)) < 0)
        return rc;
    if (vlen != c->head_dim)
        return eng_fail(err, err_len, SS_EUNSUPPORTED, "%s.attention.value_length %d != key_length %d",
                    a, vlen, c->head_dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return eng_fail(err, err_len, SS_EBADMODEL, "head_count %d is not a multiple of head_count_kv %d",
                    c->n_heads, c->n_kv_heads);
    if ((int64_t)c->n_heads * c->head_dim > 4 * big)
        return eng_fail(err, err_len, SS_EBADMODEL, "attention width %d x %d too large", c->n_heads,
                    c->head_dim);
    if ((rc = key_int(f, a, "rope.dimension_count", c->head_dim, 2, c->head_dim, &c->n_rot, err,
                      err_len)) < 0)
        return rc;
    if (c->n_rot % 2)
        return eng_fail(err, err_len, SS_EBADMODEL, "%s.rope.dimension_count %d is odd", a, c->n_rot);
    if ((rc = key_float(f, a, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps, err,
                        err_len)) < 0 ||
        (rc = key_float(f, a, "rope.freq_base", 10000.0f, &c->rope_theta, err, err_len)) < 0)
        return rc;
    if (c->rope_theta <= 0.0f)
        return eng_fail(err, err_len, SS_EBADMODEL, "%s.rope.freq_base must be positive", a);
    c->rope_freq_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (gguf_get_str(f, key, &s) == 0 && gguf_str_eq(s, "linear")) {
        float factor;
        if ((rc = key_float(f, a, "rope.scaling.factor", 1.0f, &factor, err, err_len)) < 0) return rc;
        if (factor > 0.0f) c->rope_freq_scale = 1.0f / factor;
    }
    c->rope_neox = m->desc->rope_neox;
    /* A hint for embeddings only: a value we do not know is no reason to
     * refuse a model that generates fine (the server then pools by mean). */
    int64_t pool;
    snprintf(key, sizeof key, "%s.pooling_type", a);
    c->pooling_type = gguf_get_i64(f, key, &pool) == 0 && pool >= ENG_POOL_NONE && pool <= ENG_POOL_RANK
                          ? (int)pool : ENG_POOL_UNSET;
    return read_gemma_keys(m, err, err_len);
}

/* ---- tensors ---- */

/* Looks up name and checks its type and exact shape [ne0] or [ne0, ne1].
 * vec: 1-D vector to be converted to fp32 (any dequantisable type). */
static int find_checked(struct eng_model *m, const char *name, int vec, int64_t ne0, int64_t ne1,
                        const struct gguf_tensor_info **out, char *err, size_t err_len) {
    const struct gguf_tensor_info *t = gguf_find_tensor(m->gguf, name);
    *out = t;
    if (!t) return eng_fail(err, err_len, SS_EBADMODEL, "missing tensor %s", name);
    uint32_t want_dims = vec ? 1 : 2;
    int shape_ok = t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1 &&
                   (t->n_dims == want_dims || (vec && t->n_dims == 2 && t->ne[1] == 1));
    if (!shape_ok) {
        char want[64];
        if (vec) snprintf(want, sizeof want, "[%lld]", (long long)ne0);
        else snprintf(want, sizeof want, "[%lld, %lld]", (long long)ne0, (long long)ne1);
        return eng_fail(err, err_len, SS_EBADMODEL,
                    "tensor %s has shape [%lld, %lld, %lld, %lld] (%u dims), expected %s", name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    (long long)t->ne[3], t->n_dims, want);
    }
    const struct be_type_info *ti = be_type_get(t->type);
    if (!ti || !be_type_supported(&m->be, t->type) || be_row_bytes(t->type, ne0) == 0)
        return eng_fail(err, err_len, SS_EBADMODEL, "tensor %s has unsupported type %d (%s) for row length %lld",
                    name, t->type, ti && ti->name ? ti->name : "unknown", (long long)ne0);
    size_t need = be_row_bytes(t->type, ne0) * (size_t)ne1;
    if (t->nbytes < need)
        return eng_fail(err, err_len, SS_EBADMODEL, "tensor %s holds %zu bytes, expected %zu", name,
                    t->nbytes, need);
    return 0;
}

int eng_bind_matrix(struct eng_model *m, struct be_tensor *w, const char *name, int64_t ne0,
                    int64_t ne1, char *err, size_t err_len) {
    const struct gguf_tensor_info *t;
    int rc = find_checked(m, name, 0, ne0, ne1, &t, err, err_len);
    if (rc < 0) return rc;
    memset(w, 0, sizeof *w);
    w->type = t->type;
    w->ne[0] = ne0;
    w->ne[1] = ne1;
    w->ne[2] = w->ne[3] = 1;
    w->nb1 = be_row_bytes(t->type, ne0);
    w->data = t->data;
    rc = be_weight_prepare(&m->be, w);
    if (rc < 0) return eng_fail(err, err_len, rc, "backend could not prepare tensor %s (%s)", name, ss_strerror(rc));
    return 0;
}

/* Dequantises the 1-D tensor t (n elements, already checked by find_checked)
 * into dev, backend memory of n floats: the backend's get_rows on a one-row
 * view, so the load path computes with the backend's own kernels. */
static void vector_to_f32(struct eng_model *m, const struct gguf_tensor_info *t, int64_t n,
                          float *dev) {
    const struct be_tensor view = {.type = t->type, .ne = {n, 1, 1, 1},
                                   .nb1 = be_row_bytes(t->type, n), .data = t->data};
    const int32_t row0 = 0;
    be_get_rows(&m->be, dev, &view, &row0, 1);
}

/* Converts a 1-D tensor to fp32 in backend memory. */
static int bind_vector(struct eng_model *m, const float **out, const char *name, int64_t n,
                       char *err, size_t err_len) {
    const struct gguf_tensor_info *t;
    int rc = find_checked(m, name, 1, n, 1, &t, err, err_len);
    if (rc < 0) return rc;
    float *dev = be_alloc(&m->be, (size_t)n * sizeof *dev);
    if (!dev) return eng_fail(err, err_len, SS_ENOMEM, "out of memory loading %s", name);
    vector_to_f32(m, t, n, dev);
    *out = dev;
    return 0;
}

int eng_host_vector(struct eng_model *m, const char *name, int64_t n, float *out, char *err,
                    size_t err_len) {
    const struct gguf_tensor_info *t;
    int rc = find_checked(m, name, 1, n, 1, &t, err, err_len);
    if (rc < 0) return rc;
    float *dev = be_alloc(&m->be, (size_t)n * sizeof *dev);
    if (!dev) return eng_fail(err, err_len, SS_ENOMEM, "out of memory loading %s", name);
    vector_to_f32(m, t, n, dev);
    be_download(&m->be, out, dev, (size_t)n * sizeof *out);
    be_dealloc(&m->be, dev);
    return 0;
}

static int bind_layer(struct eng_model *m, int il, char *err, size_t err_len) {
    struct eng_layer *L = &m->layers[il];
    char name[96];
    for (size_t i = 0; i < sizeof layer_specs / sizeof layer_specs[0]; i++) {
        const struct tensor_spec *sp = &layer_specs[i];
        if (sp->feature && !(m->desc->features & sp->feature)) continue;
        snprintf(name, sizeof name, "blk.%d.%s", il, sp->suffix);
        int64_t ne0 = dim_value(&m->cfg, sp->ne0), ne1 = dim_value(&m->cfg, sp->ne1);
        char *field = (char *)L + sp->off;
        int rc = sp->kind == TK_MAT
                     ? eng_bind_matrix(m, (struct be_tensor *)field, name, ne0, ne1, err, err_len)
                     : bind_vector(m, (const float **)field, name, ne0 * ne1, err, err_len);
        if (rc < 0) return rc;
        if (sp->kind == TK_MAT) {
            const struct be_tensor *w = (const struct be_tensor *)field;
            m->weight_bytes += w->nb1 * (size_t)w->ne[1];
        }
    }
    return 0;
}

static int bind_tensors(struct eng_model *m, char *err, size_t err_len) {
    struct eng_config *c = &m->cfg;
    const struct gguf_tensor_info *te = gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te) return eng_fail(err, err_len, SS_EBADMODEL, "missing tensor token_embd.weight");
    if (te->ne[1] < 1 || te->ne[1] > (1 << 24))
        return eng_fail(err, err_len, SS_EBADMODEL, "tensor token_embd.weight has %lld rows",
                    (long long)te->ne[1]);
    c->n_vocab = (int)te->ne[1];
    int rc = eng_bind_matrix(m, &m->tok_embd, "token_embd.weight", c->dim, c->n_vocab, err, err_len);
    if (rc < 0) return rc;
    if ((rc = bind_vector(m, &m->output_norm, "output_norm.weight", c->dim, err, err_len)) < 0)
        return rc;
    if (gguf_find_tensor(m->gguf, "rope_freqs.weight") &&
        (rc = bind_vector(m, &m->rope_freqs, "rope_freqs.weight", c->n_rot / 2, err, err_len)) < 0)
        return rc;
    c->tied_output = gguf_find_tensor(m->gguf, "output.weight") == NULL;
    if (c->tied_output) {
        m->output = m->tok_embd;
    } else if ((rc = eng_bind_matrix(m, &m->output, "output.weight", c->dim, c->n_vocab, err, err_len)) < 0) {
        return rc;
    }
    m->weight_bytes = m->output.nb1 * (size_t)m->output.ne[1];

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    if ((rc = mark_swa_layers(m, err, err_len)) < 0) return rc;
    for (int il = 0; il < c->n_layers; il++)
        if ((rc = bind_layer(m, il, err, err_len)) < 0) return rc;
    return 0;
}

/* ---- KV pool and scratch ---- */

static size_t kv_elem_bytes(int kv_type) { return kv_type == BE_F32 ? 4 : 2; }

size_t eng_model_kv_bytes_per_token(const struct eng_model *m) {
    return (size_t)m->cfg.n_layers * 2 * (size_t)eng_kvdim(&m->cfg) * kv_elem_bytes(m->kv_type);
}

size_t eng_model_unit_bytes(const struct eng_model *m) {
    return (size_t)BE_PAGE_SLOTS * 2 * (size_t)eng_kvdim(&m->cfg) * kv_elem_bytes(m->kv_type);
}

/* The unit pool: n_pages pages' worth of units (n_pages * n_layers), one
 * allocation for K and one for V (see model_internal.h). */
/* The default context: n_ctx_train capped at ENG_CTX_CAP, except for models
 * with sliding-window layers (and at least one global layer), whose local
 * layers recycle their pages (scheduler/kv.h): those get n_ctx_train where
 * the pool holds one such sequence with every page kept (the admission check
 * is that worst case), never less than the cap. The default pool stays sized
 * for kv_default_seqs sequences of the capped length. */
#define ENG_CTX_CAP 8192
static void default_ctx(struct eng_model *m, int64_t n_pages) {
    const struct eng_config *c = &m->cfg;
    int base = c->n_ctx_train < ENG_CTX_CAP ? c->n_ctx_train : ENG_CTX_CAP;
    m->n_ctx = base;
    if (c->swa_window > 0 && c->n_swa_layers > 0 && c->n_swa_layers < c->n_layers) {
        int64_t fit = n_pages * BE_PAGE_SLOTS;
        m->n_ctx = (int)(fit < c->n_ctx_train ? (fit > base ? fit : base) : c->n_ctx_train);
    }
}

static int alloc_kv(struct eng_model *m, const struct eng_options *o, char *err, size_t err_len) {
    size_t per_page = eng_model_kv_bytes_per_token(m) * BE_PAGE_SLOTS;
    int64_t n_pages;
    int ctx = m->n_ctx > 0 ? m->n_ctx : (m->cfg.n_ctx_train < ENG_CTX_CAP ? m->cfg.n_ctx_train : ENG_CTX_CAP);
    if (o->kv_bytes > 0) {
        n_pages = (int64_t)(o->kv_bytes / per_page);
    } else {
        int seqs = o->kv_default_seqs > 0 ? o->kv_default_seqs : 4;
        n_pages = (int64_t)seqs * ((ctx + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS);
    }
    if (m->n_ctx == 0) default_ctx(m, n_pages);
    if (n_pages < 1)
        return eng_fail(err, err_len, SS_EINVAL, "KV cache of %zu bytes holds no page (one page = %zu bytes)",
                    o->kv_bytes, per_page);
    const int L = m->cfg.n_layers;
    if (n_pages > INT32_MAX / BE_PAGE_SLOTS / L)
        return eng_fail(err, err_len, SS_EINVAL, "KV cache too large (%lld pages of %d layers)", (long long)n_pages, L);
    m->n_pages = (int32_t)n_pages;
    m->n_units = (int32_t)(n_pages * L);
    const size_t unit_half = eng_model_unit_bytes(m) / 2; /* K (or V) bytes of one unit */
    const size_t bytes = (size_t)m->n_units * unit_half;
    m->kv_k = be_alloc(&m->be, bytes);
    m->kv_v = be_alloc(&m->be, bytes);
    if (!m->kv_k || !m->kv_v)
        return eng_fail(err, err_len, SS_ENOMEM, "out of memory for the KV cache (%lld pages, %zu bytes)",
                    (long long)n_pages, 2 * bytes);
    m->kv_pool = (struct be_kv_layer){.k = m->kv_k, .v = m->kv_v, .kv_type = m->kv_type};
    return 0;
}

int eng_bufs_alloc(struct eng_model *m, struct eng_bufs *b) {
    const struct eng_config *c = &m->cfg;
    size_t T = (size_t)m->max_batch_tokens;
    struct { float **p; size_t n; } want[] = {
        {&b->xb, T * c->dim},        {&b->xb2, T * c->dim},      {&b->q, T * eng_qdim(c)},
        {&b->k, T * eng_kvdim(c)},   {&b->v, T * eng_kvdim(c)},  {&b->att, T * eng_qdim(c)},
        {&b->hb, T * c->ffn_dim},    {&b->hb2, T * c->ffn_dim},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!(*want[i].p = be_alloc(&m->be, want[i].n * sizeof(float)))) return SS_ENOMEM;
    if (m->lte.enabled) { /* router logits and masks (lte.c) */
        size_t cells = T * (size_t)m->lte.n_experts;
        b->rl = be_alloc(&m->be, cells * sizeof(float));
        b->rlh = malloc(cells * sizeof(float));
        b->mask = malloc(cells);
        if (!b->rl || !b->rlh || !b->mask) return SS_ENOMEM;
    }
    return 0;
}

void eng_bufs_free(struct eng_model *m, struct eng_bufs *b) {
    float *all[] = {b->xb, b->xb2, b->q, b->k, b->v, b->att, b->hb, b->hb2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be_dealloc(&m->be, all[i]);
    be_dealloc(&m->be, b->rl);
    free(b->rlh);
    free(b->mask);
    memset(b, 0, sizeof *b);
}

static int alloc_scratch(struct eng_model *m, char *err, size_t err_len) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    const size_t T = (size_t)m->max_batch_tokens, f = sizeof(float);
    s->x = be_alloc(&m->be, T * c->dim * f);
    s->logits = be_alloc(&m->be, (size_t)ENG_LOGIT_CHUNK * c->n_vocab * f);
    if (!s->x || !s->logits || eng_bufs_alloc(m, &s->b) < 0)
        return eng_fail(err, err_len, SS_ENOMEM, "out of memory for activations (%d rows)", m->max_batch_tokens);
    return 0;
}

/* ---- public ---- */

static int load_options(struct eng_model *m, const struct eng_options *o, char *err, size_t err_len) {
    if (o->kv_type == 0 || o->kv_type == ENG_KV_F16) m->kv_type = BE_F16;
    else if (o->kv_type == ENG_KV_F32) m->kv_type = BE_F32;
    else return eng_fail(err, err_len, SS_EINVAL, "kv_type %d: use ENG_KV_F16 or ENG_KV_F32", o->kv_type);
    m->max_batch_tokens = o->max_batch_tokens > 0 ? o->max_batch_tokens : 2048;
    if (m->max_batch_tokens > (1 << 20) || (int64_t)m->max_batch_tokens * m->cfg.n_heads > INT_MAX)
        return eng_fail(err, err_len, SS_EINVAL, "max_batch_tokens %d too large", o->max_batch_tokens);
    if (o->n_ctx < 0 || o->n_ctx > (1 << 24))
        return eng_fail(err, err_len, SS_EINVAL, "n_ctx %d out of range", o->n_ctx);
    m->n_ctx = o->n_ctx; /* 0: chosen with the pool (alloc_kv) */
    return 0;
}

const char *eng_backend_choose(const char *want, int device, char *why, size_t why_len) {
    char dev[320] = "";
    if (want && strcmp(want, "auto") != 0) {
        if (why && why_len) snprintf(why, why_len, "backend %s (asked for)", want);
        return want;
    }
    if (be_cuda_device_available(device, dev, sizeof dev)) {
        if (why && why_len) snprintf(why, why_len, "backend auto: cuda (%s)", dev);
        return "cuda";
    }
    if (why && why_len) snprintf(why, why_len, "backend auto: cpu (CUDA not used: %s)", dev);
    return "cpu";
}

int eng_model_load(struct eng_model **out, const char *path, const struct eng_options *opt,
                   char *err, size_t err_len) {
    static const struct eng_options defaults;
    const struct eng_options *o = opt ? opt : &defaults;
    int rc;
    if (err && err_len) err[0] = 0;
    *out = NULL;
    struct eng_model *m = calloc(1, sizeof *m);
    if (!m) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");

    if ((rc = gguf_open(&m->gguf, path, err, err_len)) < 0) goto fail;
    if ((rc = read_config(m, path, err, err_len)) < 0) goto fail;
    if ((rc = eng_subllm_parse(m, err, err_len)) < 0) goto fail;
    if ((rc = load_options(m, o, err, err_len)) < 0) goto fail;
    if ((rc = tok_load(&m->tok, m->gguf, err, err_len)) < 0) goto fail;

    const char *bname = o->backend && o->backend[0] ? o->backend : "cpu";
    char bdev[32];
    if (strcmp(bname, "auto") == 0) bname = eng_backend_choose(bname, o->device, NULL, 0);
    if (strcmp(bname, "cuda") == 0) {
        snprintf(bdev, sizeof bdev, "cuda:%d", o->device);
        bname = bdev;
    }
    if ((rc = be_open(&m->be, bname, o->n_threads)) < 0) {
        char why[320] = "";
        if (strncmp(bname, "cuda", 4) == 0) be_cuda_device_available(o->device, why, sizeof why);
        eng_fail(err, err_len, rc, "cannot open backend '%s': %s%s%s", bname, ss_strerror(rc),
                 why[0] ? ": " : "", why);
        goto fail;
    }
    m->be_open = 1;
    static const int be_act[] = {[ENG_ACT_F32] = BE_ACT_F32, [ENG_ACT_INT8] = BE_ACT_INT8,
                                 [ENG_ACT_AUTO] = BE_ACT_AUTO, [ENG_ACT_MIXED] = BE_ACT_MIXED,
                                 [ENG_ACT_BF16] = BE_ACT_BF16};
    if (o->act_precision < 0 || o->act_precision > ENG_ACT_BF16 ||
        (rc = be_set_act_precision(&m->be, be_act[o->act_precision])) < 0) {
        rc = eng_fail(err, err_len, rc < 0 ? rc : SS_EINVAL, "activation precision %d on backend '%s': %s",
                  o->act_precision, bname, rc < 0 ? ss_strerror(rc) : "unknown value");
        goto fail;
    }
    m->act_precision = rc == BE_ACT_INT8    ? ENG_ACT_INT8
                       : rc == BE_ACT_MIXED ? ENG_ACT_MIXED
                       : rc == BE_ACT_BF16  ? ENG_ACT_BF16
                                            : ENG_ACT_F32;
    if ((rc = bind_tensors(m, err, err_len)) < 0) goto fail;
    if ((rc = eng_subllm_bind(m, err, err_len)) < 0) goto fail;
    if ((rc = eng_lte_load(m, o, err, err_len)) < 0) goto fail;
    if (tok_n_vocab(m->tok) > m->cfg.n_vocab) {
        rc = eng_fail(err, err_len, SS_EBADMODEL, "tokenizer has %d tokens but token_embd.weight only %d rows",
                  (int)tok_n_vocab(m->tok), m->cfg.n_vocab);
        goto fail;
    }
    if ((rc = alloc_kv(m, o, err, err_len)) < 0) goto fail;
    if ((rc = alloc_scratch(m, err, err_len)) < 0) goto fail;
    if ((rc = eng_frames_alloc(m, err, err_len)) < 0) goto fail;
    if ((rc = eng_model_apply_layer_parallel(m, o, err, err_len)) < 0) goto fail;
    *out = m;
    return 0;
fail:
    eng_model_free(m);
    return rc;
}

static void free_layer(struct eng_model *m, struct eng_layer *L) {
    for (size_t i = 0; i < sizeof layer_specs / sizeof layer_specs[0]; i++) {
        if (layer_specs[i].kind != TK_VEC) continue;
        const float **p = (const float **)((char *)L + layer_specs[i].off);
        be_dealloc(&m->be, (void *)*p);
    }
}

void eng_model_free(struct eng_model *m) {
    if (!m) return;
    eng_lp_free(m);
    eng_lte_free(m);
    if (m->be_open) {
        be_dealloc(&m->be, m->kv_k);
        be_dealloc(&m->be, m->kv_v);
        if (m->layers)
            for (int il = 0; il < m->cfg.n_layers; il++) free_layer(m, &m->layers[il]);
        be_dealloc(&m->be, (void *)m->output_norm);
        be_dealloc(&m->be, (void *)m->rope_freqs);
        be_dealloc(&m->be, m->s.x);
        be_dealloc(&m->be, m->s.logits);
        eng_bufs_free(m, &m->s.b);
        /* NOTE: weights prepared by be_weight_prepare are released by be_close. */
        be_close(&m->be);
    }
    eng_subllm_free(m);
    free(m->layers);
    tok_free(m->tok);
    gguf_close(m->gguf);
    free(m);
}

const struct eng_config *eng_model_config(const struct eng_model *m) { return &m->cfg; }
const struct tok *eng_model_tok(const struct eng_model *m) { return m->tok; }
int eng_model_n_ctx(const struct eng_model *m) { return m->n_ctx; }

static const char *const act_names[] = {[ENG_ACT_F32] = "f32", [ENG_ACT_INT8] = "int8",
                                        [ENG_ACT_AUTO] = "auto", [ENG_ACT_MIXED] = "mixed",
                                        [ENG_ACT_BF16] = "bf16"};
#define N_ACT (int)(sizeof act_names / sizeof act_names[0])
int eng_act_parse(const char *s, int *out) {
    for (int i = 0; i < N_ACT; i++)
        if (s && !strcmp(s, act_names[i])) {
            *out = i;
            return 0;
        }
    return -1;
}
const char *eng_act_name(int prec) { return prec >= 0 && prec < N_ACT ? act_names[prec] : "?"; }
int eng_model_act_precision(const struct eng_model *m) { return m->act_precision; }
int32_t eng_model_n_pages(const struct eng_model *m) { return m->n_pages; }
int32_t eng_model_n_units(const struct eng_model *m) { return m->n_units; }
int eng_model_n_levels(const struct eng_model *m) { return m->n_levels; }
int eng_model_layer_level(const struct eng_model *m, int layer) {
    return layer >= 0 && layer < m->cfg.n_layers ? m->layers[layer].level : -1;
}

int eng_model_layer_window(const struct eng_model *m, int layer) {
    if (layer < 0 || layer >= m->cfg.n_layers || !m->layers[layer].swa) return 0;
    return m->cfg.swa_window > 0 ? m->cfg.swa_window : 0;
}

const struct gguf_file *eng_model_gguf(const struct eng_model *m) { return m->gguf; }
size_t eng_model_weight_bytes(const struct eng_model *m) { return m->weight_bytes; }

int eng_kv_identity_tables(struct eng_kv_tables *t, const struct eng_model *m, const int32_t *pages,
                           int32_t n_pages) {
    if (!t) return SS_EINVAL;
    memset(t, 0, sizeof *t);
    if (!m || !pages || n_pages < 1) return SS_EINVAL;
    const int32_t L = m->cfg.n_layers;
    t->units = malloc((size_t)L * (size_t)n_pages * sizeof *t->units);
    t->rows = malloc((size_t)L * sizeof *t->rows);
    if (!t->units || !t->rows) {
        eng_kv_tables_free(t);
        return SS_ENOMEM;
    }
    t->n_layers = L;
    t->n_pages = n_pages;
    for (int32_t l = 0; l < L; l++) {
        int32_t *row = t->units + (size_t)l * n_pages;
        for (int32_t i = 0; i < n_pages; i++)
            row[i] = pages[i] >= 0 && pages[i] < m->n_pages ? pages[i] * L + l : -1; /* < n_units */
        t->rows[l] = row;
    }
    return 0;
}

void eng_kv_tables_free(struct eng_kv_tables *t) {
    if (!t) return;
    free(t->units);
    free((void *)t->rows);
    memset(t, 0, sizeof *t);
}
