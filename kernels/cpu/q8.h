/* q8.h - private interface of the CPU backend's quantised-activation matmul path
 * (kernels/cpu/ sources, the kernels unit tests and the kernels benchmark).
 *
 * With activation precision int8 (be_set_act_precision), a matmul over a
 * quantised weight type quantises each row of x once into Q8 blocks that match
 * the weight's block structure, and computes integer dot products (AVX512-VNNI
 * vpdpbusd, or AVX2 vpmaddubsw) scaled in fp32. F32/F16/BF16 weights, and CPUs
 * without AVX2, keep the fp32 path (matmul.c), which stays the exact reference.
 *
 * Activation formats (one row of K elements; K a multiple of the block):
 *   KQ8_32  (Q4_0, Q5_0, Q8_0 weights): blocks of 32, fp32 scale d per block
 *   KQ8_256 (Q4_K, Q5_K, Q6_K weights): super-blocks of 256, fp32 scale d per
 *           super-block, plus bsum[16] = sums of the 16 runs of 16 quants
 * Quantisation of a block x[0..B):
 *     amax = max |x[i]|  (NaN ignored),  d = amax / 127,  id = d > 0 ? 1/d : 0
 *     q[i] = round-half-even(x[i] * id) clamped to [-127, 127]  (NaN -> 0)
 * so |x[i] - d*q[i]| <= d/2 (up to one rounding of x*id).
 *
 * DETERMINISM: y[t][r] depends only on row r of W and the quantised row t of x
 * (itself a function of row t of x alone): one kernel computes every (row,
 * token) pair with one fixed sequence of operations whatever n, the grouping
 * of tokens or the thread count is. The integer part of each block's dot
 * product is exact; the fp32 combination follows the lane order documented in
 * matmul_q8_avx512.c / matmul_q8_avx2.c.
 */
#ifndef SS_KCPU_Q8_H
#define SS_KCPU_Q8_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

enum { KQ8_NONE = 0, KQ8_32 = 1, KQ8_256 = 2, KQ8_BF16 = 3 };

/* The int8 activation format a weight type uses (KQ8_NONE: not on the int8 path). */
int kq8_kind(int type);
/* 1 if the BF16 path (BE_ACT_BF16) has a kernel for this weight type. */
int kbf_type(int type);

/* One quantised activation matrix: n rows, each at buf + t*stride:
 *   KQ8_256: float d[nb] | int16 bsum[16*nb] | (64-byte aligned) int8 qs[K]
 *   KQ8_32:  float d[nb2] | (64-byte aligned) uint8 qs[32*nb2], nb2 = nb rounded
 *            up to even (a missing last block: d = 0, quants 0). Quants are
 *            stored as q + 128, blocks interleaved in pairs by 4-byte groups:
 *            byte 64p + 8i + 4h + j = q of block 2p+h, element 4i+j (i < 8,
 *            j < 4), so the int32 lanes of a vpdpbusd alternate between the
 *            pair's two blocks.
 *   KQ8_BF16 (BE_ACT_BF16, K a multiple of 32): uint16 bf[K], the values
 *            rounded to BF16 (nearest even, denormals to zero, NaN kept quiet:
 *            vcvtne2ps2bf16's rule). */
struct kq8_x {
    int kind;
    int64_t K, nb; /* elements per row, blocks per row */
    size_t stride, qs_off, bs_off;
    uint8_t *buf;
};
static inline const float *kq8_d(const struct kq8_x *x, int t) {
    return (const float *)(x->buf + (size_t)t * x->stride);
}
static inline const int16_t *kq8_bs(const struct kq8_x *x, int t) {
    return (const int16_t *)(x->buf + (size_t)t * x->stride + x->bs_off);
}
static inline const int8_t *kq8_qs(const struct kq8_x *x, int t) {
    return (const int8_t *)(x->buf + (size_t)t * x->stride + x->qs_off);
}
static inline const uint8_t *kq8_qu(const struct kq8_x *x, int t) {
    return x->buf + (size_t)t * x->stride + x->qs_off;
}
static inline const uint16_t *kbf_x(const struct kq8_x *x, int t) {
    return (const uint16_t *)(x->buf + (size_t)t * x->stride + x->qs_off);
}
/* Sets the geometry of x for n rows of K elements; returns the bytes buf
 * needs, or 0 if K is not a whole number of blocks. */
size_t kq8_x_layout(struct kq8_x *x, int kind, int64_t K, int n);
/* Quantises rows [t0, t1) of src[n][K] into x (layout set, buf allocated).
 * On x86 it uses AVX2: call it only where an int8 kernel exists (they all
 * need AVX2); kq8_quantize_ref is the portable C, and the two write the same
 * bytes (test_kernels_int8). */
void kq8_quantize(struct kq8_x *x, const float *src, int t0, int t1);
void kq8_quantize_ref(struct kq8_x *x, const float *src, int t0, int t1);
/* One fp32 value rounded to BF16 by the KQ8_BF16 rule (the portable reference
 * of vcvtne2ps2bf16). */
uint16_t kbf_round(float f);

/* One int8 matmul as seen by the kernels: y[t*ldy + r] = W[r] . xq[t] */
struct kq8_mm {
    float *y;
    int64_t ldy;
    const struct kq8_x *x;
    const uint8_t *w;
    size_t nb1;
    int type;
};
/* Kernel of one ISA: rows [r0, r1) times tokens [t0, t1); scr: the calling
 * thread's scratch of scr_len bytes (64-byte aligned; NULL / 0: none), which
 * a kernel may use to unpack the rows once for many tokens. */
typedef void (*kq8_rows_fn)(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr,
                            size_t scr_len);
/* Scratch bytes kq8_rows_avx2 uses for rows rows of K elements: 160 per pair
 * of 32-blocks (a K-quant super-block unpacks into less than 4 pairs' bytes). */
#define KQ8_SCR_BYTES(rows, K) ((size_t)(rows) * (size_t)(((K) / 32 + 1) / 2) * 160)

#if defined(__x86_64__)
void kq8_quantize_avx2(struct kq8_x *x, const float *src, int t0, int t1);
void kq8_rows_vnni(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len);
void kq8_rows_avx2(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len);
/* BF16 path (matmul_bf16_avx512.c): x of kind KQ8_BF16; scr holds the rows'
 * BF16 tile when scr_len >= 2*K*(r1 - r0) bytes. */
void kbf_rows_avx512(const struct kq8_mm *mm, int64_t r0, int64_t r1, int t0, int t1, void *scr, size_t scr_len);
void kbf_convert_avx512(struct kq8_x *x, const float *src, int t0, int t1);
#endif

/* Backend state (struct kcpu_ctx.q8): the precision in effect and the cache of
 * quantised activations (one entry per format, reused while the same x
 * pointer holds the same values: Q/K/V and gate/up share one quantisation). */
struct kq8_state;
/* be_ops.set_act_precision of the CPU backend (ctx: struct kcpu_ctx). */
int kq8_set_precision(void *ctx, int prec);
/* The precision the CPU context ctx computes with: BE_ACT_F32, _INT8, _MIXED or _BF16. */
int kq8_precision(const void *ctx);
void kq8_state_free(struct kq8_state *s);
/* 1 if this CPU has int8 kernels (AVX512-VNNI with BW/VL, or AVX2 with FMA/F16C). */
int kq8_available(void);
/* 1 if this CPU has the BF16 kernels (AVX512-BF16 with BW/VL/DQ). */
int kbf_available(void);
/* Runs y = x . W^T on the int8 path and returns 0, or returns 1 (nothing
 * written) if this matmul stays on the fp32 path (precision f32, weight type
 * without an int8 kernel, no memory for the quantised activations). */
int kq8_matmul(void *ctx, float *y, const float *x, const struct be_tensor *w, int n);

/* Scalar reference (ref.c): quantises x[K] by the rule above with the block
 * of `type`'s activation format, then the dot product with weight row wrow,
 * each block's integer sum exact, combined in double. 0 for other types. */
double kref_dot_q8(int type, const void *wrow, const float *x, int64_t K);

#endif
