/* kcpu.h - private interface of the CPU backend (kernels/cpu/ sources only, plus the
 * kernels unit test and the kernels benchmark).
 *
 * Block layouts (ggml/GGUF, little endian; "f16" is an IEEE half):
 *
 *   Q4_0  32 elems, 18 B: f16 d | u8 qs[16]
 *         x[j] = d*((qs[j]&15)-8), x[j+16] = d*((qs[j]>>4)-8)            j < 16
 *   Q5_0  32 elems, 22 B: f16 d | u8 qh[4] (u32 LE) | u8 qs[16]
 *         x[j]    = d*(((qs[j]&15) | bit j of qh      <<4) - 16)
 *         x[j+16] = d*(((qs[j]>>4) | bit (j+16) of qh <<4) - 16)
 *   Q8_0  32 elems, 34 B: f16 d | i8 qs[32]            x[j] = d*qs[j]
 *   Q4_K 256 elems, 144 B: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
 *         8 sub-blocks of 32, each with a 6-bit scale sc and a 6-bit min m
 *         (kcpu_k_scale_min). Sub-block s lives in qs[32*(s/2) .. +32], low
 *         nibbles for even s, high nibbles for odd s:
 *         x = (d*sc)*q - (dmin*m)
 *   Q5_K 256 elems, 176 B: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
 *         as Q4_K, plus q += 16 * bit s of qh[l] (l = index inside the sub-block)
 *   Q6_K 256 elems, 210 B: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
 *         two halves of 128; in half h, element 32*k + l (k < 4, l < 32) is
 *         q = (nibble of ql[64h + 32*(k&1) + l], low for k < 2, high for k >= 2)
 *             | ((qh[32h + l] >> 2k) & 3) << 4
 *         x = (d*scales[8h + l/16 + 2k]) * (q - 32)
 *
 * DETERMINISM CONTRACT of matmul (the engine relies on it): for one ISA table,
 * the value y[t][r] depends only on row r of W and row t of x. Every path
 * (decode gemv, prefill tiles, any thread count, any batch size) computes it as:
 *     acc[0..V) = +0
 *     for each chunk c of V consecutive elements k in [cV, cV+V):
 *         acc[l] = fma(w[cV+l], x[cV+l], acc[l])   (lanes past K: w = x = 0)
 *     y = kcpu hsum tree of acc (fixed pairing, see each ISA file)
 * where w[k] is produced by one shared inline dequantiser per type and ISA.
 * The SIMD files are compiled with -ffp-contract=off so the compiler cannot
 * fuse differently in different call sites.
 */
#ifndef SS_KCPU_H
#define SS_KCPU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/pool.h"

/* Largest batch handled by the fused decode path; larger batches use tiles. */
#define KCPU_DECODE_MAX 4

/* Prefill K-blocking (used when K > KCPU_KBLOCK_MIN): K-blocks of KCPU_KC
 * elements, token blocks of KCPU_TB tokens; scratch for nr tile rows. */
#define KCPU_KC 512
#define KCPU_KBLOCK_MIN 1024
#define KCPU_TB 96
#define KCPU_SCR_FLOATS(nr) ((size_t)(nr) * KCPU_TB * 16)

/* Decode prefetch distance: a whole number of row groups (group = rows read
 * side by side, contiguous in memory), at least KCPU_PF_MIN bytes so that
 * short rows still cover the memory latency. */
#define KCPU_PF_MIN 16384
static inline size_t kcpu_pf_dist(size_t group_bytes) {
    size_t k = (KCPU_PF_MIN + group_bytes - 1) / group_bytes;
    return (k ? k : 1) * group_bytes;
}
/* Prefetch the first bytes of a row range (the part the running prefetch,
 * which starts one distance ahead, never covers). */
static inline void kcpu_prefetch_head(const uint8_t *p, size_t n) {
    if (n > KCPU_PF_MIN + 4096)
        n = KCPU_PF_MIN + 4096;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(p + o, 0, 2);
}

/* Query rows (heads of one KV group) handled together by attention. */
#define KCPU_ATT_NQ 4

/* One matmul call, as seen by the per-ISA kernels. y[t*ldy + r] = x[t*ldx ..] . W[r] */
struct kcpu_mm {
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    const uint8_t *w; /* row 0 */
    size_t nb1;       /* bytes per weight row */
    int type;
    int64_t K;        /* elements per row */
    int n;            /* tokens */
    /* gemv_lte only (NULL = off; gemv ignores them):
     *   yadd    the products are added instead of stored: yadd[t][r] += x[t] . W[r]
     *           (one fp32 add of the very value gemv would store: same bits)
     *   pf_lim  end of the rows being read: the running prefetch (one distance
     *   pf_next ahead of the rows streamed) continues at pf_next instead of
     *           pf_lim (rows of the same nb1), or stops there if pf_next is
     *           NULL (LTE reads a few row ranges of a tensor: prefetching
     *           past them would read bytes for nothing)
     *   pf_warm 1: a previous call's pf_next already prefetched the first rows:
     *           no head prefetch (kcpu_prefetch_head) */
    float *const *yadd;
    const uint8_t *pf_lim, *pf_next;
    int pf_warm;
};

/* The kernels of one instruction set. All function pointers are non-NULL. */
struct kcpu_isa {
    const char *name;
    int vlen; /* V of the determinism contract */
    /* Fused decode for rows [r0, r1), all n tokens (processed in groups of
     * KCPU_DECODE_MAX); streams each weight row once per token group; stores
     * into y. */
    void (*gemv)(const struct kcpu_mm *mm, int64_t r0, int64_t r1);
    /* gemv with the kcpu_mm yadd / pf_* modes honoured (LTE's callers); gemv
     * itself ignores them, so the dense decode loops carry none of it. */
    void (*gemv_lte)(const struct kcpu_mm *mm, int64_t r0, int64_t r1);
    /* Dequantise rows [r0, r0+nr) into dst[nr][ldd] (ldd >= K): exactly the
     * weights the decode path uses, bit for bit; elements [K, ldd) of each row
     * are set to 0 (nothing is written past ldd, so ldd == K is fine). */
    void (*dequant_rows)(const struct kcpu_mm *mm, int64_t r0, int64_t nr, float *dst,
                         int64_t ldd);
    /* y for nr fp32 rows wt[nr][ldw] (weight rows r0..r0+nr) times tokens
     * [t0, t1). Rows need only be readable up to K. scr: NULL, or scratch of
     * KCPU_SCR_FLOATS(nr) floats (64-byte aligned) that lets the kernel split
     * long rows into K-blocks (accumulators parked in scr between blocks,
     * which leaves every per-lane FMA chain, hence the result, unchanged). */
    void (*gemm_tile)(const struct kcpu_mm *mm, const float *wt, int64_t ldw, int64_t r0,
                      int64_t nr, int t0, int t1, float *scr);
    /* attention primitives for nq (<= KCPU_ATT_NQ) query rows q + r*ldq that
     * share cnt cached rows at base + offs[i] elements (f16 != 0: base holds
     * halves, else floats), head_dim D:
     *   attn_scores: out[r*ldo + i] = q_r . row_i   (one fixed fma chain and
     *                reduction per (r, i), whatever nq and cnt are)
     *   attn_accum:  o_r[d] = o_r[d]*corr[r] + sum_i p[r*ldp + i]*row_i[d]
     *                (one fma chain per (r, d), increasing i)
     *   vexp:        x[i] = e^x[i], lane-wise (value independent of n and i) */
    void (*attn_scores)(const float *q, int nq, int ldq, const void *base, const size_t *offs,
                        int cnt, int D, int f16, float *out, int ldo);
    void (*attn_accum)(float *o, int nq, int ldo, const float *corr, const float *p, int ldp,
                       const void *base, const size_t *offs, int cnt, int D, int f16);
    void (*vexp)(float *x, int n);
    /* out[i] = act(g[i]) * u[i], lane-wise (the value of element i does not
     * depend on n or on i's position) */
    void (*glu)(float *out, const float *g, const float *u, int64_t n, int act);
    void (*f32_to_f16)(uint16_t *dst, const float *src, int64_t n);
};

extern const struct kcpu_isa kcpu_isa_generic;
#if defined(__x86_64__)
extern const struct kcpu_isa kcpu_isa_avx2;
extern const struct kcpu_isa kcpu_isa_avx512;
#endif

/* Best ISA this CPU supports, or the one named by SLIMSERVE_CPU_ISA
 * ("generic", "avx2", "avx512") if the CPU supports it. */
const struct kcpu_isa *kcpu_isa_best(void);
/* The named ISA if compiled in and supported by this CPU, else NULL. */
const struct kcpu_isa *kcpu_isa_find(const char *name);

/* 1 if the CPU kernels compute with this type (the CPU backend's
 * type_supported entry; also their own guard); 0 otherwise. types.c. */
int kcpu_type_supported(int type);

/* The CPU ops table (be_cpu.c). */
extern const struct be_ops kcpu_ops;

/* CPU backend context (one per be_open). */
struct kcpu_ctx {
    int n_threads;            /* = kcpu_pool_size(pool) */
    struct kcpu_pool *pool;   /* the worker threads of every parallel op (pool.h) */
    const struct kcpu_isa *isa;
    /* per-thread scratch for dequantised weight tiles, grown on demand */
    float **tbuf;
    size_t *tbuf_len; /* floats */
    /* LTE expert lists (lte.c), grown on demand */
    int32_t *lte_idx;
    size_t lte_idx_len; /* entries */
    int fork_mode;    /* KCPU_FORK_*: when fork2 splits (fork.c) */
    struct kcpu_ctx *half[2]; /* fork2's one-thread halves, made on the first split */
    struct kq8_state *q8; /* int8 activation path (q8.h); NULL = fp32 only */
    struct kcpu_rope_cache *rope; /* RoPE angle tables (be_cpu.c), made on first use */
};
void kcpu_rope_cache_free(struct kcpu_rope_cache *rc);

/* Per-thread scratch of at least n floats (64-byte aligned) for thread tid of
 * a parallel region, or NULL (matmul.c). */
float *kcpu_thread_buf(struct kcpu_ctx *ctx, int tid, size_t n);

/* fork.c: be_ops.fork2 of the CPU backend. */
enum { KCPU_FORK_AUTO = 0, KCPU_FORK_SEQ, KCPU_FORK_SPLIT };
int kcpu_fork_mode_env(void); /* from SLIMSERVE_LP_EXEC: "seq", "split", else auto */
void kcpu_fork2(void *ctx, be_task_fn fn, void *a0, void *a1);
void kcpu_fork_free(struct kcpu_ctx *c); /* releases the halves */

/* Test/bench hooks: switch the ISA or thread count of an open CPU backend.
 * Return 0, or SS_EUNSUPPORTED (-7) if the ISA is not usable here. */
int kcpu_ctx_set_isa(struct be *be, const char *name);
void kcpu_ctx_set_threads(struct be *be, int n_threads);
const char *kcpu_ctx_isa_name(const struct be *be);

/* ops implemented in the cpu/ files */
void kcpu_matmul(void *ctx, float *y, const float *x, const struct be_tensor *w, int n);
void kcpu_get_rows(void *ctx, float *out, const struct be_tensor *w, const int32_t *ids,
                   int n);
void kcpu_lte_ffn(void *ctx, float *y, const float *x, const uint8_t *mask, int n,
                  const struct be_lte_ffn *p, float *scr_a, float *scr_b);
void kcpu_attention(void *ctx, float *out, const float *q, const struct be_kv_layer *kv,
                    const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p);

/* scalar helpers (types.c) */
float kcpu_fp16_to_fp32(uint16_t h);
uint16_t kcpu_fp32_to_fp16(float f); /* round to nearest even */
static inline float kcpu_bf16_to_fp32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t kcpu_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t kcpu_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
/* kcpu_k_scale_min for all 8 sub-blocks at once: w[0] / w[1] = the scales of
 * sub-blocks 0-3 / 4-7, w[2] / w[3] = their mins, one byte each (little
 * endian), from the scales[12] array q. */
static inline void kcpu_k_scale_min_words(const uint8_t *q, uint32_t w[4]) {
    uint32_t a0 = kcpu_rd32(q), a1 = kcpu_rd32(q + 4), a2 = kcpu_rd32(q + 8);
    w[0] = a0 & 0x3f3f3f3fu;
    w[1] = (a2 & 0x0f0f0f0fu) | (((a0 >> 6) & 0x03030303u) << 4);
    w[2] = a1 & 0x3f3f3f3fu;
    w[3] = ((a2 >> 4) & 0x0f0f0f0fu) | (((a1 >> 6) & 0x03030303u) << 4);
}
/* 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K scales[12] array. */
static inline void kcpu_k_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Generic scalar dequantiser of one row (types.c); n multiple of the block. */
void kcpu_dequant_row_scalar(int type, const uint8_t *src, float *dst, int64_t n);

#endif
