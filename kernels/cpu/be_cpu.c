/* be_cpu.c - the CPU backend: ops table, memory, and the small ops (rmsnorm,
 * rope, kv_store, glu, add, scale). matmul/get_rows live in matmul.c, attention
 * in attention.c, fork2 in fork.c, the SIMD kernels in matmul_avx2.c /
 * matmul_avx512.c.
 *
 * Memory is host memory: alloc is 64-byte aligned and zeroed, upload/download
 * are memcpy. Threads: each call runs on the context's pool (pool.h) of
 * ctx->n_threads threads, the calling one included; the context itself is
 * used by one thread at a time (the engine thread).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

/* ---------------------------------------------------------------- lifecycle */

/* Frees the per-thread scratch and joins the pool's workers. */
static void free_threads(struct kcpu_ctx *c) {
    if (c->tbuf)
        for (int i = 0; i < c->n_threads; i++)
            free(c->tbuf[i]);
    free(c->tbuf);
    free(c->tbuf_len);
    c->tbuf = NULL;
    c->tbuf_len = NULL;
    kcpu_pool_free(c->pool); /* joins the workers */
    c->pool = NULL;
    c->n_threads = 0;
}

/* n_threads <= 0: one per CPU this process may use (kcpu_pool_init) */
static int set_threads(struct kcpu_ctx *c, int n_threads) {
    free_threads(c);
    if (kcpu_pool_init(&c->pool, n_threads, -1) < 0)
        return SS_ENOMEM;
    c->n_threads = kcpu_pool_size(c->pool);
    c->tbuf = calloc((size_t)c->n_threads, sizeof(float *));
    c->tbuf_len = calloc((size_t)c->n_threads, sizeof(size_t));
    if (!c->tbuf || !c->tbuf_len) {
        free_threads(c);
        return SS_ENOMEM;
    }
    return 0;
}

static int cpu_init(void **out, int n_threads) {
    struct kcpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return SS_ENOMEM;
    if (set_threads(c, n_threads) < 0) {
        free(c);
        return SS_ENOMEM;
    }
    c->isa = kcpu_isa_best();
    c->fork_mode = kcpu_fork_mode_env();
    *out = c;
    return 0;
}

static void cpu_free(void *ctx) {
    struct kcpu_ctx *c = ctx;
    if (!c)
        return;
    kcpu_fork_free(c);
    free_threads(c);
    free(c->lte_idx);
    kq8_state_free(c->q8);
    kcpu_rope_cache_free(c->rope);
    free(c);
}

/* ---------------------------------------------------------------- memory */

/* 64-byte aligned, zeroed memory from calloc, the block's own pointer kept
 * just below the aligned one. calloc is not memset: glibc serves big blocks
 * (the KV pool) from fresh mmap'd pages, zero already and resident only
 * once written, so an idle server does not hold its whole KV pool in RSS. */
static void *cpu_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    size_t n = bytes + 64 + sizeof(void *);
    if (n < bytes)
        return NULL; /* overflow */
    void *base = calloc(1, n);
    if (!base)
        return NULL;
    uintptr_t a = ((uintptr_t)base + sizeof(void *) + 63) & ~(uintptr_t)63;
    ((void **)a)[-1] = base;
    return (void *)a;
}

static void cpu_dealloc(void *ctx, void *p) {
    (void)ctx;
    if (p)
        free(((void **)p)[-1]);
}

static void cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes)
        memmove(dst, src, bytes);
}

static int cpu_weight_prepare(void *ctx, struct be_tensor *w) {
    (void)ctx;
    if (!kcpu_type_supported(w->type))
        return SS_EUNSUPPORTED;
    size_t rb = be_row_bytes(w->type, w->ne[0]);
    if (w->ne[0] <= 0 || w->ne[1] <= 0 || rb == 0 || (w->nb1 && w->nb1 < rb) || !w->data)
        return SS_EINVAL;
    return 0; /* weights are used in place (mmapped) */
}

static int cpu_type_supported(void *ctx, int type) {
    (void)ctx;
    return kcpu_type_supported(type);
}

/* ---------------------------------------------------------------- small ops */

/* number of threads worth using for `work` elementary operations */
static int team(const struct kcpu_ctx *c, double work) {
    return work < 65536.0 ? 1 : c->n_threads;
}

struct rmsnorm_job {
    float *out;
    const float *x, *w;
    int dim;
    float eps;
};

static void rmsnorm_rows(void *arg, int64_t i0, int64_t i1) {
    const struct rmsnorm_job *J = arg;
    float *out = J->out;
    const float *x = J->x, *w = J->w;
    const int dim = J->dim;
    const float eps = J->eps;
    for (int64_t i = i0; i < i1; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        /* eight partial sums in double (fixed order, so per-row results stay
         * the same whatever the batch): one chain was latency-bound, 4% of
         * Gemma's prefill */
        double acc[8] = {0};
        int k = 0;
        for (; k + 8 <= dim; k += 8)
            for (int j = 0; j < 8; j++)
                acc[j] += (double)xi[k + j] * xi[k + j];
        for (; k < dim; k++)
            acc[k % 8] += (double)xi[k] * xi[k];
        double ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        float sc = 1.0f / sqrtf((float)(ss / dim) + eps);
        if (w)
            for (int k = 0; k < dim; k++)
                oi[k] = (xi[k] * sc) * w[k];
        else
            for (int k = 0; k < dim; k++)
                oi[k] = xi[k] * sc;
    }
}

static void cpu_rmsnorm(void *ctx, float *out, const float *x, const float *w, int n, int dim, float eps) {
    struct kcpu_ctx *c = ctx;
    if (n <= 0 || dim <= 0)
        return;
    struct rmsnorm_job J = {out, x, w, dim, eps};
    kcpu_pool_for(c->pool, team(c, (double)n * dim), n, 1, rmsnorm_rows, &J);
}

#define ROPE_MAX_PAIRS 512

/* RoPE angle tables: (cos, sin) of pos*freq_scale*inv[i] for every row of a
 * call, kept for the next call with the same positions and parameters: the
 * q and k of a layer and every layer of the same base share one table, so a
 * forward pass computes the angles once per base instead of twice per layer
 * (double cos/sin were 3% of Gemma's prefill). Two tables: Gemma 3's local and
 * global bases alternate. A table holds exactly the values a fresh
 * computation gives. */
struct kcpu_rope_tab {
    double theta, fscale;
    const float *ff;
    int nrot, n;
    int32_t *pos;
    float *cs; /* [n][half][2] */
    size_t cap; /* rows */
    uint64_t used;
};
struct kcpu_rope_cache {
    struct kcpu_rope_tab t[2];
    uint64_t clock;
};

void kcpu_rope_cache_free(struct kcpu_rope_cache *rc) {
    if (!rc)
        return;
    for (int i = 0; i < 2; i++) {
        free(rc->t[i].pos);
        free(rc->t[i].cs);
    }
    free(rc);
}

/* The table for this call and whether it already holds the angles (*hit), or
 * NULL (no memory: the rows compute their angles on the stack). */
static struct kcpu_rope_tab *rope_table(struct kcpu_ctx *c, const int32_t *pos, int n,
                                        const struct be_rope_params *p, int *hit) {
    if (!c->rope && !(c->rope = calloc(1, sizeof *c->rope)))
        return NULL;
    struct kcpu_rope_cache *rc = c->rope;
    rc->clock++;
    for (int i = 0; i < 2; i++) {
        struct kcpu_rope_tab *t = &rc->t[i];
        if (t->n == n && t->nrot == p->n_rot && t->theta == (double)p->theta_base &&
            t->fscale == (double)p->freq_scale && t->ff == p->freq_factors &&
            memcmp(t->pos, pos, sizeof(int32_t) * (size_t)n) == 0) {
            t->used = rc->clock;
            *hit = 1;
            return t;
        }
    }
    struct kcpu_rope_tab *t = rc->t[0].used <= rc->t[1].used ? &rc->t[0] : &rc->t[1];
    t->n = 0; /* invalid until filled */
    if (t->cap < (size_t)n) {
        free(t->pos);
        free(t->cs);
        t->cap = 0;
        t->pos = malloc(sizeof(int32_t) * (size_t)n);
        t->cs = malloc(sizeof(float) * (size_t)n * (size_t)p->n_rot);
        if (!t->pos || !t->cs)
            return NULL;
        t->cap = (size_t)n;
    }
    memcpy(t->pos, pos, sizeof(int32_t) * (size_t)n);
    t->theta = (double)p->theta_base;
    t->fscale = (double)p->freq_scale;
    t->ff = p->freq_factors;
    t->nrot = p->n_rot;
    t->used = rc->clock;
    *hit = 0;
    return t;
}

struct rope_job {
    float *x;
    const int32_t *pos;
    const struct be_rope_params *p;
    const double *inv; /* [n_rot/2] */
    float *tab;        /* [n][half][2] angles, or NULL */
    int fill;          /* 1: compute the angles into tab first */
};

static void rope_rows(void *arg, int64_t t0, int64_t t1) {
    const struct rope_job *J = arg;
    const struct be_rope_params *p = J->p;
    const int H = p->n_heads, D = p->head_dim, half = p->n_rot / 2;
    const double *inv = J->inv;
    float *x = J->x;
    for (int64_t t = t0; t < t1; t++) {
        float local[2 * ROPE_MAX_PAIRS];
        float *cs = J->tab ? J->tab + (size_t)t * 2 * half : local;
        if (!J->tab || J->fill) {
            double pt = (double)J->pos[t] * (double)p->freq_scale;
            for (int i = 0; i < half; i++) {
                double th = pt * inv[i];
                cs[2 * i] = (float)cos(th);
                cs[2 * i + 1] = (float)sin(th);
            }
        }
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)t * H + h) * D;
            for (int i = 0; i < half; i++) {
                int i0 = p->neox ? i : 2 * i, i1 = p->neox ? i + half : 2 * i + 1;
                float a = v[i0], b = v[i1], co = cs[2 * i], si = cs[2 * i + 1];
                v[i0] = a * co - b * si;
                v[i1] = a * si + b * co;
            }
        }
    }
}

static void cpu_rope(void *ctx, float *x, const int32_t *pos, int n, const struct be_rope_params *p) {
    struct kcpu_ctx *c = ctx;
    const int H = p->n_heads, D = p->head_dim, nr = p->n_rot;
    if (n <= 0 || H <= 0 || D <= 0 || nr <= 1 || nr > D || nr % 2 || nr / 2 > ROPE_MAX_PAIRS)
        return;
    const int half = nr / 2;
    /* inv[i] = base^(-2i/n_rot), in double (exact enough at any position) */
    double inv[ROPE_MAX_PAIRS];
    for (int i = 0; i < half; i++) {
        inv[i] = pow((double)p->theta_base, -2.0 * i / nr);
        if (p->freq_factors)
            inv[i] /= (double)p->freq_factors[i];
    }
    int hit = 0;
    struct kcpu_rope_tab *tab = rope_table(c, pos, n, p, &hit);
    struct rope_job J = {x, pos, p, inv, tab ? tab->cs : NULL, !hit};
    kcpu_pool_for(c->pool, team(c, (double)n * H * D), n, 1, rope_rows, &J);
    if (tab)
        tab->n = n; /* filled (or was) */
}

static void cpu_kv_store(void *ctx, struct be_kv_layer *kv, const float *k, const float *v,
                         const int32_t *slots, int n, int kv_dim) {
    struct kcpu_ctx *c = ctx;
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0)
            continue; /* row not stored (e.g. a token dropped by a subsampler) */
        size_t off = (size_t)slots[i] * (size_t)kv_dim;
        const float *ks = k + (size_t)i * kv_dim, *vs = v + (size_t)i * kv_dim;
        if (kv->kv_type == BE_F16) {
            c->isa->f32_to_f16((uint16_t *)kv->k + off, ks, kv_dim);
            c->isa->f32_to_f16((uint16_t *)kv->v + off, vs, kv_dim);
        } else {
            memcpy((float *)kv->k + off, ks, sizeof(float) * (size_t)kv_dim);
            memcpy((float *)kv->v + off, vs, sizeof(float) * (size_t)kv_dim);
        }
    }
}

/* Elementwise ops split the range in per-thread pieces of whole 64-float lines;
 * values are lane-wise, so the split never changes a result. */
enum { EW_GLU, EW_ADD, EW_SCALE };

struct ew_job {
    int op, act;
    const struct kcpu_isa *isa;
    float *y;
    const float *a, *b;
    float s;
};

static void ew_range(void *arg, int64_t i0, int64_t i1) {
    const struct ew_job *J = arg;
    float *y = J->y;
    switch (J->op) {
    case EW_GLU:
        J->isa->glu(y + i0, J->a + i0, J->b + i0, i1 - i0, J->act);
        break;
    case EW_ADD:
        for (int64_t i = i0; i < i1; i++)
            y[i] += J->a[i];
        break;
    default:
        for (int64_t i = i0; i < i1; i++)
            y[i] *= J->s;
        break;
    }
}

static void ew_run(struct kcpu_ctx *c, const struct ew_job *J, int64_t n) {
    if (n > 0)
        kcpu_pool_for(c->pool, team(c, (double)n), n, 64, ew_range, (void *)J);
}

static void cpu_glu(void *ctx, float *out, const float *g, const float *u, int64_t n, int act) {
    struct kcpu_ctx *c = ctx;
    struct ew_job J = {.op = EW_GLU, .act = act, .isa = c->isa, .y = out, .a = g, .b = u};
    ew_run(c, &J, n);
}

static void cpu_add(void *ctx, float *y, const float *x, int64_t n) {
    struct ew_job J = {.op = EW_ADD, .y = y, .a = x};
    ew_run(ctx, &J, n);
}

static void cpu_scale(void *ctx, float *y, float s, int64_t n) {
    struct ew_job J = {.op = EW_SCALE, .y = y, .s = s};
    ew_run(ctx, &J, n);
}

static void cpu_copy2d(void *ctx, float *dst, int64_t ds, const float *src, int64_t ss, int n, int64_t w) {
    (void)ctx;
    for (int r = 0; r < n; r++)
        memcpy(dst + (size_t)r * (size_t)ds, src + (size_t)r * (size_t)ss, sizeof(float) * (size_t)w);
}

const struct be_ops kcpu_ops = {
    .name = "cpu",
    .init = cpu_init,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .dealloc = cpu_dealloc,
    .upload = cpu_copy,
    .download = cpu_copy,
    .weight_prepare = cpu_weight_prepare,
    .type_supported = cpu_type_supported,
    .matmul = kcpu_matmul,
    .get_rows = kcpu_get_rows,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = kcpu_attention,
    .glu = cpu_glu,
    .add = cpu_add,
    .scale = cpu_scale,
    .lte_ffn = kcpu_lte_ffn,
    .fork2 = kcpu_fork2,
    .copy2d = cpu_copy2d,
    .merge_pairs = 0, /* pairs run branch by branch (fork.c), bitwise the per-layer kernels */
    .set_act_precision = kq8_set_precision,
};

/* ---------------------------------------------------------------- test hooks */

int kcpu_ctx_set_isa(struct be *be, const char *name) {
    if (!be || be->ops != &kcpu_ops)
        return SS_EINVAL;
    const struct kcpu_isa *isa = kcpu_isa_find(name);
    if (!isa)
        return SS_EUNSUPPORTED;
    ((struct kcpu_ctx *)be->ctx)->isa = isa;
    return 0;
}

void kcpu_ctx_set_threads(struct be *be, int n_threads) {
    if (be && be->ops == &kcpu_ops)
        set_threads(be->ctx, n_threads);
}

const char *kcpu_ctx_isa_name(const struct be *be) {
    if (!be || be->ops != &kcpu_ops)
        return NULL;
    return ((const struct kcpu_ctx *)be->ctx)->isa->name;
}
