/* quant_act.c - the reduced-precision activation matmul paths of the CPU
 * backend (int8 and BF16): the activation quantiser (one implementation, used
 * by every ISA), the per-backend cache that lets Q/K/V and gate/up share one
 * quantisation, the precision switch and the driver (threads, row blocks).
 * Kernels: matmul_q8_avx512.c (AVX512-VNNI), matmul_q8_avx2.c (AVX2) and
 * matmul_bf16_avx512.c (AVX512-BF16).
 * Formats and the determinism argument: q8.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

int kq8_kind(int type) {
    switch (type) {
    case BE_Q4_0: case BE_Q5_0: case BE_Q8_0:
        return KQ8_32;
    case BE_Q4_K: case BE_Q5_K: case BE_Q6_K:
        return KQ8_256;
    default:
        return KQ8_NONE;
    }
}

int kbf_type(int type) {
    return kq8_kind(type) != KQ8_NONE || type == BE_F16 || type == BE_BF16;
}

size_t kq8_x_layout(struct kq8_x *x, int kind, int64_t K, int n) {
    int64_t B = kind == KQ8_256 ? 256 : 32;
    if ((kind != KQ8_32 && kind != KQ8_256 && kind != KQ8_BF16) || K <= 0 || K % B || n <= 0)
        return 0;
    if (kind == KQ8_BF16) {
        x->kind = kind;
        x->K = K;
        x->nb = K / B;
        x->bs_off = x->qs_off = 0;
        x->stride = ((size_t)K * sizeof(uint16_t) + 63) / 64 * 64;
        return x->stride * (size_t)n;
    }
    x->kind = kind;
    x->K = K;
    x->nb = K / B;
    int64_t nbd = kind == KQ8_32 ? (x->nb + 1) / 2 * 2 : x->nb; /* d[] entries */
    x->bs_off = (size_t)nbd * sizeof(float);
    size_t head = x->bs_off + (kind == KQ8_256 ? (size_t)x->nb * 16 * sizeof(int16_t) : 0);
    x->qs_off = (head + 63) / 64 * 64;
    x->stride = (x->qs_off + (size_t)nbd * (size_t)B + 63) / 64 * 64;
    return x->stride * (size_t)n;
}

/* round half to even for |v| <= 127 (the default rounding mode does it: adding
 * and removing 1.5*2^23 leaves an integer). Written out so it vectorises and
 * needs no libm call; equal to nearbyintf for these values. */
static inline float round_even(float v) {
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

static void quant_block(const float *x, int B, float *d_out, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < B; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax; /* NaN never wins */
    }
    float d = amax / 127.0f;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < B; i++) {
        float v = x[i] * id;
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        v = v == v ? v : 0.0f; /* NaN (0*inf, NaN input) */
        q[i] = (int8_t)(int)round_even(v);
    }
    *d_out = d;
}

/* KQ8_32 row: blocks quantised, stored +128 and pair-interleaved (q8.h) */
static void quant_row32(const float *s, int64_t nb, float *d, uint8_t *qu) {
    for (int64_t b = 0; b < (nb + 1) / 2 * 2; b++) {
        int8_t q[32] = {0};
        d[b] = 0.0f;
        if (b < nb)
            quant_block(s + b * 32, 32, d + b, q);
        uint8_t *dst = qu + 64 * (b / 2) + 4 * (b % 2);
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 4; j++)
                dst[8 * i + j] = (uint8_t)(q[4 * i + j] + 128);
    }
}

/* vcvtne2ps2bf16's rule: zero and denormal -> signed zero, infinity kept,
 * NaN -> quiet NaN (its top half, bit 6 set), else round to nearest even. */
uint16_t kbf_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t ex = u & 0x7F800000u, mant = u & 0x007FFFFFu;
    if (ex == 0)
        return (uint16_t)((u >> 16) & 0x8000u);
    if (ex == 0x7F800000u)
        return (uint16_t)((u >> 16) | (mant ? 0x40u : 0u));
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

void kq8_quantize_ref(struct kq8_x *x, const float *src, int t0, int t1) {
    int B = x->kind == KQ8_32 ? 32 : 256;
    if (x->kind == KQ8_BF16) {
        for (int t = t0; t < t1; t++) {
            uint16_t *d = (uint16_t *)(x->buf + (size_t)t * x->stride);
            for (int64_t k = 0; k < x->K; k++)
                d[k] = kbf_round(src[(size_t)t * (size_t)x->K + (size_t)k]);
        }
        return;
    }
    for (int t = t0; t < t1; t++) {
        uint8_t *row = x->buf + (size_t)t * x->stride;
        float *d = (float *)row;
        int16_t *bs = (int16_t *)(row + x->bs_off);
        int8_t *qs = (int8_t *)(row + x->qs_off);
        const float *s = src + (size_t)t * (size_t)x->K;
        if (x->kind == KQ8_32) {
            quant_row32(s, x->nb, d, row + x->qs_off);
            continue;
        }
        for (int64_t b = 0; b < x->nb; b++) {
            quant_block(s + b * B, B, d + b, qs + b * B);
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int i = 0; i < 16; i++)
                    sum += qs[b * B + 16 * g + i];
                bs[16 * b + g] = (int16_t)sum;
            }
        }
    }
}

/* ---------------------------------------------------------------- state */

/* One cached quantisation: x (the caller's pointer), n rows, and a copy of the
 * values it was made from (a hit needs the same pointer AND the same values, so
 * a buffer the engine rewrote between two matmuls is never served stale). */
struct q8_entry {
    const float *src;
    int n;
    int64_t K;
    float *copy;
    size_t copy_cap; /* floats */
    struct kq8_x x;
    size_t buf_cap;  /* bytes */
};

struct kq8_state {
    int prec; /* BE_ACT_F32, BE_ACT_INT8 (every quantised type), BE_ACT_MIXED (32-block types) or BE_ACT_BF16 */
    struct q8_entry e[3]; /* [kind - 1] */
};

/* CPU features of the int8 kernels: AVX512-VNNI (with BW/VL), AVX2 (with FMA). */
static int has_vnni(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}
static int has_avx2(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    /* as kcpu_isa_best: every AVX2 + FMA CPU has F16C (clang knows no "f16c" feature string) */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int has_bf16(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

int kq8_available(void) { return has_vnni() || has_avx2(); }
int kbf_available(void) { return has_bf16(); }

void kq8_quantize(struct kq8_x *x, const float *src, int t0, int t1) {
#if defined(__x86_64__)
    if (x->kind == KQ8_BF16) /* only called where the BF16 kernels run */
        kbf_convert_avx512(x, src, t0, t1);
    else
        kq8_quantize_avx2(x, src, t0, t1); /* every int8 kernel implies AVX2 */
#else
    kq8_quantize_ref(x, src, t0, t1);
#endif
}

/* The int8 kernel of a context: the one of its fp32 ISA (kcpu_ctx_set_isa
 * picks it in tests and benchmarks): avx512 -> VNNI where the CPU has it, else
 * the AVX2 kernel; generic -> none (the fp32 path answers). */
static kq8_rows_fn kq8_kernel(const struct kcpu_ctx *ctx, int kind) {
#if defined(__x86_64__)
    if (!ctx->isa || strcmp(ctx->isa->name, "generic") == 0)
        return NULL;
    if (kind == KQ8_BF16) /* BF16: the AVX-512 dequantisers; avx512 contexts only */
        return strcmp(ctx->isa->name, "avx512") == 0 && has_bf16() ? kbf_rows_avx512 : NULL;
    if (strcmp(ctx->isa->name, "avx512") == 0 && has_vnni())
        return kq8_rows_vnni;
    return has_avx2() ? kq8_rows_avx2 : NULL;
#else
    (void)ctx, (void)kind;
    return NULL;
#endif
}

void kq8_state_free(struct kq8_state *s) {
    if (!s)
        return;
    for (int i = 0; i < 3; i++) {
        free(s->e[i].copy);
        free(s->e[i].x.buf);
    }
    free(s);
}

int kq8_precision(const void *vctx) {
    const struct kcpu_ctx *ctx = vctx;
    return ctx->q8 ? ctx->q8->prec : BE_ACT_F32;
}

/* auto, by measurement (README, Activation precision): bf16 where the CPU
 * has AVX512-BF16 and the context's kernels are AVX-512 (Gemma 3 270M:
 * prefill 1.5x, serving at 16/64 streams 1.45x, single-stream decode 0.9-0.95x
 * of fp32, perplexity -0.07%); mixed where the fp32 kernels are AVX2 (decode
 * 1.2x, prefill even, perplexity +0.16%; int8 there reads +0.53%, the K-quants'
 * 256-value activation scales costing +0.36% of it); fp32 on other AVX-512
 * CPUs, where the int8 kernels measured no gain on Gemma (VNNI int8 prefill
 * 0.67x fp32), and where there are no int8 kernels. */
int kq8_set_precision(void *vctx, int prec) {
    struct kcpu_ctx *ctx = vctx;
    if (prec != BE_ACT_F32 && prec != BE_ACT_INT8 && prec != BE_ACT_MIXED && prec != BE_ACT_AUTO &&
        prec != BE_ACT_BF16)
        return SS_EINVAL;
    int want = prec;
    if (prec == BE_ACT_AUTO)
        want = kq8_kernel(ctx, KQ8_BF16) ? BE_ACT_BF16
               : kq8_available() && ctx->isa && strcmp(ctx->isa->name, "avx2") == 0 ? BE_ACT_MIXED
                                                                                    : BE_ACT_F32;
    else if (prec == BE_ACT_BF16 ? !kq8_kernel(ctx, KQ8_BF16) : (prec != BE_ACT_F32 && !kq8_available()))
        return SS_EUNSUPPORTED; /* BF16: AVX512-BF16 CPUs, avx512 contexts */
    if (want != BE_ACT_F32 && !ctx->q8) {
        ctx->q8 = calloc(1, sizeof *ctx->q8);
        if (!ctx->q8)
            return SS_ENOMEM;
    }
    if (ctx->q8)
        ctx->q8->prec = want;
    return want;
}

/* Grows *p to hold `need` units of `unit` bytes (64-byte aligned); 0 or -1. */
static int grow(void **p, size_t *cap, size_t need, size_t unit) {
    if (*cap >= need)
        return 0;
    void *q = NULL;
    if (need > SIZE_MAX / unit || posix_memalign(&q, 64, need * unit) != 0)
        return -1;
    free(*p);
    *p = q;
    *cap = need;
    return 0;
}

/* The entry for this x: a hit (same pointer, shape and values) or a miss (the
 * entry is reset and the caller quantises into it); NULL if out of memory. */
static struct q8_entry *lookup(struct kq8_state *s, int kind, const float *x, int64_t K, int n,
                               int *hit) {
    struct q8_entry *e = &s->e[kind - 1];
    size_t nf = (size_t)n * (size_t)K;
    *hit = e->src == x && e->n == n && e->K == K && memcmp(e->copy, x, nf * sizeof(float)) == 0;
    if (*hit)
        return e;
    e->src = NULL;
    struct kq8_x nx;
    size_t bytes = kq8_x_layout(&nx, kind, K, n);
    if (!bytes || grow((void **)&e->copy, &e->copy_cap, nf, sizeof(float)) < 0 ||
        grow((void **)&e->x.buf, &e->buf_cap, bytes, 1) < 0)
        return NULL;
    nx.buf = e->x.buf;
    e->x = nx;
    memcpy(e->copy, x, nf * sizeof(float));
    e->src = x;
    e->n = n;
    e->K = K;
    return e;
}

/* ---------------------------------------------------------------- driver */

#define KQ8_RB 16 /* rows per block: their weights stay in L1 across token groups */

static void rows_of(int64_t R, int tid, int nt, int64_t *r0, int64_t *r1) {
    int64_t units = (R + 3) / 4, u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
    *r0 = u0 * 4 < R ? u0 * 4 : R;
    *r1 = u1 * 4 < R ? u1 * 4 : R;
}

/* One matmul with int8 activations: the threads quantise their share of
 * the tokens (unless cached), meet at a barrier, then take their rows. */
struct q8_job {
    struct kcpu_ctx *ctx;
    kq8_rows_fn rows;
    const struct kq8_mm *mm;
    struct kq8_x *xq;
    const float *x;
    int n, hit, kind;
    int64_t R, K;
};

static void q8_task(void *arg, int tid, int nt) {
    const struct q8_job *J = arg;
    if (!J->hit) {
        kq8_quantize(J->xq, J->x, (int)((int64_t)J->n * tid / nt), (int)((int64_t)J->n * (tid + 1) / nt));
        kcpu_pool_barrier(J->ctx->pool, nt);
    }
    int64_t r0, r1;
    rows_of(J->R, tid, nt, &r0, &r1);
    size_t scr_len = J->n > 4 ? KQ8_SCR_BYTES(KQ8_RB, J->K) : 0;
    void *scr = scr_len ? kcpu_thread_buf(J->ctx, tid, scr_len / sizeof(float)) : NULL;
    for (int64_t b = r0; b < r1; b += KQ8_RB)
        J->rows(J->mm, b, r1 - b < KQ8_RB ? r1 : b + KQ8_RB, 0, J->n, scr, scr ? scr_len : 0);
}

int kq8_matmul(void *vctx, float *y, const float *x, const struct be_tensor *w, int n) {
    struct kcpu_ctx *ctx = vctx;
    struct kq8_state *s = ctx->q8;
    if (!s || s->prec == BE_ACT_F32 || n <= 0)
        return 1;
    int kind = s->prec == BE_ACT_BF16 ? (kbf_type(w->type) ? KQ8_BF16 : KQ8_NONE) : kq8_kind(w->type);
    kq8_rows_fn kq8_rows = kq8_kernel(ctx, kind);
    if (kind == KQ8_NONE || !kq8_rows || (s->prec == BE_ACT_MIXED && kind != KQ8_32) ||
        (kind == KQ8_BF16 && w->ne[0] % 32))
        return 1;
    int64_t K = w->ne[0], R = w->ne[1];
    const uint8_t *data = w->be_data ? w->be_data : w->data;
    size_t rb = be_row_bytes(w->type, K);
    size_t nb1 = w->nb1 ? w->nb1 : rb;
    if (R <= 0 || K <= 0 || rb == 0 || nb1 < rb || !data)
        return 1; /* the fp32 path answers bad shapes (zeros) */
    int hit;
    struct q8_entry *e = lookup(s, kind, x, K, n, &hit);
    if (!e)
        return 1; /* NOTE: out of memory: this call takes the fp32 path */
    struct kq8_mm mm = {.y = y, .ldy = R, .x = &e->x, .w = data, .nb1 = nb1, .type = w->type};
    int nth = ctx->n_threads;
    if ((double)R * (double)K * n < 32768.0 || R < 8)
        nth = 1;
    struct q8_job J = {.ctx = ctx, .rows = kq8_rows, .mm = &mm, .xq = &e->x, .x = x, .n = n, .hit = hit,
                       .kind = kind, .R = R, .K = K};
    kcpu_pool_run(ctx->pool, nth, q8_task, &J);
    return 0;
}
