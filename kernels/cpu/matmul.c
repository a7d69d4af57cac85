/* matmul.c - matmul driver (threads, decode vs prefill paths), run-time ISA
 * choice, and the generic C kernels used where no SIMD ISA is available.
 *
 *   n <= KCPU_DECODE_MAX  ("decode"): rows are split across threads; each thread
 *       streams its weight rows once, dequantising in registers (isa->gemv).
 *   n >  KCPU_DECODE_MAX  ("prefill"): each thread owns a range of rows; it
 *       dequantises blocks of rows into its fp32 scratch tile (isa->dequant_rows)
 *       and runs the register-blocked micro-kernel over all tokens
 *       (isa->gemm_tile), so each dequantised weight is reused n times.
 *
 * Both paths produce bitwise identical y[t][r] (determinism contract in kcpu.h):
 * the split of rows across threads and of tokens into groups only decides WHO
 * computes a (row, token) pair, never HOW.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

/* ---------------------------------------------------------------- generic C ISA
 * V = 8 lanes emulated with an array; a single code path (dequantise a piece,
 * then dot8) serves decode and prefill alike. Compiled with -ffp-contract=off. */

#define GV 8
#define GPIECE 256 /* elements dequantised at a time (multiple of every block) */

/* acc[l] += w[k]*x[k] for k = l mod 8, over len elements; only the final piece
 * of a row may have len % 8 != 0 (missing lanes count as 0*0). */
static void g_dot8(float acc[GV], const float *w, const float *x, int64_t len) {
    int64_t k = 0;
    for (; k + GV <= len; k += GV)
        for (int l = 0; l < GV; l++)
            acc[l] = acc[l] + w[k + l] * x[k + l];
    if (k < len)
        for (int l = 0; l < GV; l++)
            acc[l] = acc[l] + (k + l < len ? w[k + l] * x[k + l] : 0.0f * 0.0f);
}

static float g_hsum8(const float a[GV]) {
    float b[4], c[2];
    for (int l = 0; l < 4; l++)
        b[l] = a[l] + a[l + 4];
    for (int l = 0; l < 2; l++)
        c[l] = b[l] + b[l + 2];
    return c[0] + c[1];
}

static void g_piece(const struct kcpu_mm *mm, int64_t r, int64_t k0, int64_t len, float *buf) {
    const struct be_type_info *ti = be_type_get(mm->type);
    size_t off = (size_t)(k0 / ti->blck) * (size_t)ti->size;
    kcpu_dequant_row_scalar(mm->type, mm->w + (size_t)r * mm->nb1 + off, buf, len);
}

static void g_gemv(const struct kcpu_mm *mm, int64_t r0, int64_t r1) {
    float buf[GPIECE];
    for (int64_t r = r0; r < r1; r++) {
        for (int t0 = 0; t0 < mm->n; t0 += KCPU_DECODE_MAX) {
            int nt = mm->n - t0 < KCPU_DECODE_MAX ? mm->n - t0 : KCPU_DECODE_MAX;
            float acc[KCPU_DECODE_MAX][GV] = {{0}};
            for (int64_t k0 = 0; k0 < mm->K; k0 += GPIECE) {
                int64_t len = mm->K - k0 < GPIECE ? mm->K - k0 : GPIECE;
                g_piece(mm, r, k0, len, buf);
                for (int j = 0; j < nt; j++)
                    g_dot8(acc[j], buf, mm->x + (size_t)(t0 + j) * mm->ldx + k0, len);
            }
            for (int j = 0; j < nt; j++) {
                if (mm->yadd)
                    mm->yadd[t0 + j][r] += g_hsum8(acc[j]);
                else
                    mm->y[(size_t)(t0 + j) * mm->ldy + r] = g_hsum8(acc[j]);
            }
        }
    }
}

static void g_dequant_rows(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst, int64_t ldd) {
    for (int64_t i = 0; i < nr; i++) {
        kcpu_dequant_row_scalar(mm->type, mm->w + (size_t)(r0 + i) * mm->nb1, dst + i * ldd, mm->K);
        for (int64_t k = mm->K; k < ldd; k++)
            dst[i * ldd + k] = 0.0f;
    }
}

static void g_gemm_tile(const struct kcpu_mm *mm, const float *wt, int64_t ldw, int64_t r0,
                        int64_t nr, int t0, int t1, float *scr) {
    (void)scr;
    for (int t = t0; t < t1; t++) {
        for (int64_t i = 0; i < nr; i++) {
            float acc[GV] = {0};
            /* same pieces as g_gemv so the final partial chunk falls at the same k */
            for (int64_t k0 = 0; k0 < mm->K; k0 += GPIECE) {
                int64_t len = mm->K - k0 < GPIECE ? mm->K - k0 : GPIECE;
                g_dot8(acc, wt + i * ldw + k0, mm->x + (size_t)t * mm->ldx + k0, len);
            }
            mm->y[(size_t)t * mm->ldy + r0 + i] = g_hsum8(acc);
        }
    }
}

static float g_row(const void *base, size_t off, int d, int f16) {
    return f16 ? kcpu_fp16_to_fp32(((const uint16_t *)base)[off + (size_t)d])
               : ((const float *)base)[off + (size_t)d];
}
static void g_attn_scores(const float *q, int nq, int ldq, const void *base, const size_t *offs,
                          int cnt, int D, int f16, float *out, int ldo) {
    for (int r = 0; r < nq; r++)
        for (int i = 0; i < cnt; i++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++)
                s += q[r * ldq + d] * g_row(base, offs[i], d, f16);
            out[r * ldo + i] = s;
        }
}
static void g_attn_accum(float *o, int nq, int ldo, const float *corr, const float *p, int ldp,
                         const void *base, const size_t *offs, int cnt, int D, int f16) {
    for (int r = 0; r < nq; r++)
        for (int d = 0; d < D; d++) {
            float a = o[r * ldo + d] * corr[r];
            for (int i = 0; i < cnt; i++)
                a += p[r * ldp + i] * g_row(base, offs[i], d, f16);
            o[r * ldo + d] = a;
        }
}
static void g_vexp(float *x, int n) {
    for (int i = 0; i < n; i++)
        x[i] = expf(x[i]);
}
static void g_glu(float *out, const float *g, const float *u, int64_t n, int act) {
    for (int64_t i = 0; i < n; i++) {
        float x = g[i], a;
        if (act == 0)
            a = x / (1.0f + expf(-x));
        else
            a = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        out[i] = a * u[i];
    }
}
static void g_f32_to_f16(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = kcpu_fp32_to_fp16(src[i]);
}

const struct kcpu_isa kcpu_isa_generic = {
    .name = "generic",
    .vlen = GV,
    .gemv = g_gemv,
    .gemv_lte = g_gemv,
    .dequant_rows = g_dequant_rows,
    .gemm_tile = g_gemm_tile,
    .attn_scores = g_attn_scores,
    .attn_accum = g_attn_accum,
    .vexp = g_vexp,
    .glu = g_glu,
    .f32_to_f16 = g_f32_to_f16,
};

/* ---------------------------------------------------------------- ISA choice */

static int isa_usable(const struct kcpu_isa *isa) {
    if (isa == &kcpu_isa_generic)
        return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == &kcpu_isa_avx2)
        return avx2;
    if (isa == &kcpu_isa_avx512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return 0;
}

const struct kcpu_isa *kcpu_isa_find(const char *name) {
    static const struct kcpu_isa *const all[] = {
#if defined(__x86_64__)
        &kcpu_isa_avx512, &kcpu_isa_avx2,
#endif
        &kcpu_isa_generic,
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (name && strcmp(all[i]->name, name) == 0)
            return isa_usable(all[i]) ? all[i] : NULL;
    return NULL;
}

const struct kcpu_isa *kcpu_isa_best(void) {
    const char *env = getenv("SLIMSERVE_CPU_ISA");
    const struct kcpu_isa *isa = env && *env ? kcpu_isa_find(env) : NULL;
    if (isa)
        return isa;
#if defined(__x86_64__)
    if (isa_usable(&kcpu_isa_avx512))
        return &kcpu_isa_avx512;
    if (isa_usable(&kcpu_isa_avx2))
        return &kcpu_isa_avx2;
#endif
    return &kcpu_isa_generic;
}

/* ---------------------------------------------------------------- driver */

/* Per-thread tile buffer of at least n floats (64-byte aligned), or NULL.
 * Called inside the parallel region by thread tid only. */
float *kcpu_thread_buf(struct kcpu_ctx *ctx, int tid, size_t n) {
    if (tid >= ctx->n_threads || !ctx->tbuf)
        return NULL;
    if (ctx->tbuf_len[tid] >= n)
        return ctx->tbuf[tid];
    free(ctx->tbuf[tid]);
    ctx->tbuf[tid] = NULL;
    ctx->tbuf_len[tid] = 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(float)) != 0)
        return NULL;
    ctx->tbuf[tid] = p;
    ctx->tbuf_len[tid] = n;
    return p;
}

/* [r0, r1) of R rows for thread tid of nt, boundaries on multiples of 4 */
static void split_rows(int64_t R, int tid, int nt, int64_t *r0, int64_t *r1) {
    int64_t units = (R + 3) / 4;
    int64_t u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
    *r0 = u0 * 4 < R ? u0 * 4 : R;
    *r1 = u1 * 4 < R ? u1 * 4 : R;
}

/* Rows dequantised per tile: about 512 KiB of fp32 (half the L2 of the cores
 * this was tuned on), a multiple of 12 (the micro-kernel row counts 3 and 4
 * both divide it). */
static int64_t tile_rows(int64_t ldd) {
    int64_t r = (128 * 1024) / ldd;
    r = r / 12 * 12;
    return r < 12 ? 12 : (r > 144 ? 144 : r);
}

static void prefill_rows(struct kcpu_ctx *ctx, const struct kcpu_mm *mm, int tid, int64_t r0, int64_t r1) {
    const struct kcpu_isa *isa = ctx->isa;
    int direct = mm->type == BE_F32 && mm->nb1 % sizeof(float) == 0;
    int64_t ldd = (mm->K + 15) / 16 * 16;
    int64_t rblk = tile_rows(ldd);
    size_t tile = direct ? 0 : (size_t)(rblk * ldd);
    size_t scr_n = mm->K > KCPU_KBLOCK_MIN ? KCPU_SCR_FLOATS(rblk) : 0;
    float *buf = tile + scr_n ? kcpu_thread_buf(ctx, tid, tile + scr_n) : NULL;
    if (!direct && !buf) { /* no scratch: the fused path gives the same values */
        isa->gemv(mm, r0, r1);
        return;
    }
    float *scr = buf && scr_n ? buf + tile : NULL; /* tile is a multiple of 16 floats */
    for (int64_t rb = r0; rb < r1; rb += rblk) {
        int64_t nr = r1 - rb < rblk ? r1 - rb : rblk;
        if (direct) {
            isa->gemm_tile(mm, (const float *)(mm->w + (size_t)rb * mm->nb1),
                           (int64_t)(mm->nb1 / sizeof(float)), rb, nr, 0, mm->n, scr);
        } else {
            isa->dequant_rows(mm, rb, nr, buf, ldd);
            isa->gemm_tile(mm, buf, ldd, rb, nr, 0, mm->n, scr);
        }
    }
}

struct mm_job {
    struct kcpu_ctx *ctx;
    const struct kcpu_mm *mm;
    int64_t R;
};

static void mm_task(void *arg, int tid, int nt) {
    const struct mm_job *J = arg;
    int64_t r0, r1;
    split_rows(J->R, tid, nt, &r0, &r1);
    if (r0 < r1) {
        if (J->mm->n <= KCPU_DECODE_MAX)
            J->ctx->isa->gemv(J->mm, r0, r1);
        else
            prefill_rows(J->ctx, J->mm, tid, r0, r1);
    }
}

void kcpu_matmul(void *vctx, float *y, const float *x, const struct be_tensor *w, int n) {
    struct kcpu_ctx *ctx = vctx;
    int64_t K = w->ne[0], R = w->ne[1];
    if (n <= 0 || R <= 0)
        return;
    if (ctx->q8 && kq8_matmul(ctx, y, x, w, n) == 0)
        return; /* int8 activations (quant_act.c) */
    const uint8_t *data = w->be_data ? w->be_data : w->data;
    size_t rb = be_row_bytes(w->type, K);
    size_t nb1 = w->nb1 ? w->nb1 : rb;
    if (!kcpu_type_supported(w->type) || K <= 0 || rb == 0 || nb1 < rb || !data) {
        /* the engine checks types at load; never read out of bounds here */
        memset(y, 0, sizeof(float) * (size_t)n * (size_t)R);
        return;
    }
    struct kcpu_mm mm = {.y = y, .ldy = R, .x = x, .ldx = K, .w = data, .nb1 = nb1,
                         .type = w->type, .K = K, .n = n};
    int nth = ctx->n_threads;
    /* tiny problems are not worth waking the other threads */
    if ((double)R * (double)K * n < 32768.0 || R < 8)
        nth = 1;
    struct mm_job J = {ctx, &mm, R};
    kcpu_pool_run(ctx->pool, nth, mm_task, &J);
}

void kcpu_get_rows(void *vctx, float *out, const struct be_tensor *w, const int32_t *ids, int n) {
    struct kcpu_ctx *ctx = vctx;
    int64_t K = w->ne[0], R = w->ne[1];
    const uint8_t *data = w->be_data ? w->be_data : w->data;
    size_t rb = be_row_bytes(w->type, K);
    size_t nb1 = w->nb1 ? w->nb1 : rb;
    int ok = kcpu_type_supported(w->type) && K > 0 && rb > 0 && nb1 >= rb && data;
    struct kcpu_mm mm = {.w = data, .nb1 = nb1, .type = w->type, .K = K};
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * (size_t)(K > 0 ? K : 0);
        if (!ok || ids[i] < 0 || ids[i] >= R) /* bad id: zeros, never a stray read */
            memset(o, 0, sizeof(float) * (size_t)(K > 0 ? K : 0));
        else
            ctx->isa->dequant_rows(&mm, ids[i], 1, o, K);
    }
}
