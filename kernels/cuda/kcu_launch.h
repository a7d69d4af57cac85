/* kcu_launch.h - launchers of the CUDA kernels (kcu_rows.cu, kcu_attn.cu, kcu_lte.cu),
 * callable from C (be_cuda.c, the backend table) and from the .cu files.
 *
 * All pointers are device memory unless stated; every launcher enqueues on
 * `stream` and returns at once with the launch status (cudaSuccess, or the
 * error of the launch: bad configuration, no device). Shapes must already be
 * validated by the caller (the backend entry, be_cuda.c), as the CPU backend
 * does. Thread: any host thread that owns the stream.
 *
 * Arithmetic comes from kcu_math.h (the same functions tests/unit/
 * test_cuda_math.c checks on the CPU against the CPU backend):
 *   get_rows: bitwise equal to the CPU backend's dequantiser (kept for a
 *             device-side dequantisation; the table dequantises on the host).
 *   rmsnorm:  the row's sum of squares is a fixed-shape block reduction in
 *             double (KCU_ROWS_THREADS threads): the result depends only on
 *             the row (never on n or the other rows), but the summation order
 *             differs from the CPU's sequential one, so the two may differ in
 *             the last bit of the scale.
 *   glu:      element-wise; CUDA's expf/tanhf are within a few ulp of glibc's.
 *   rope:     angles in double (CUDA's pow/cos/sin), products rounded as the
 *             CPU's.
 *   add, scale, kv_store, the GEMM operand conversions: pure IEEE steps,
 *             bitwise the CPU's.
 *   attention: one block per (query row, head), the CPU's walk over the keys
 *             (chunks of 32, sequential dot products, running-max softmax):
 *             differs from the CPU only through expf/tanhf and, for the SIMD
 *             CPU kernels, their summation order. Rows longer than
 *             KCU_SPLIT_KEYS keys go split-K (partitions merged in order):
 *             the same sums grouped otherwise, so within float rounding of
 *             the CPU (test_cuda_math states the tolerance); still a function
 *             of the row alone.
 *   lte (gate_up, down): the walk of kcu_lte.h, a fixed order per row (a
 *             row's values never depend on the batch); differs from the CPU
 *             through the summation order of the dot products and expf/tanhf.
 *
 * NOTE: nothing here has run on a GPU yet (tools/gpu_check.sh is the first
 * run); compiled for sm_80 and sm_90 + PTX with warnings as errors and
 * checked for register spills and shared memory (meson test cuda_resources).
 */
#ifndef SS_KCU_LAUNCH_H
#define SS_KCU_LAUNCH_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cuda/kcu_lte.h"  /* struct kcu_lte_item, kcu_lte_ent */
#include "kernels/cuda/kcu_math.h" /* struct kcu_attn_row */

#ifdef __cplusplus
extern "C" {
#endif

#define KCU_ROWS_THREADS 256  /* threads per block of every row kernel */
#define KCU_ATT_THREADS 128   /* threads per block of the attention kernel */

/* out[n][K] = rows ids[n] (device ids) of the weight rows at w (R rows of nb1
 * bytes, type with kcu_type_blck(type) dividing K); an id outside [0, R) or
 * an unsupported type gives a row of zeros. */
cudaError_t kcu_launch_get_rows(cudaStream_t stream, float *out, const uint8_t *w, size_t nb1,
                                int type, int64_t K, int64_t R, const int32_t *ids, int n);
/* out[i] = x[i] * (1 / sqrt(mean(x[i]^2) + eps)) * w  (w NULL: no weight);
 * n rows of dim; out may equal x. */
cudaError_t kcu_launch_rmsnorm(cudaStream_t stream, float *out, const float *x, const float *w,
                               int n, int dim, float eps);
/* out[i] = act(gate[i]) * up[i], act 0 = SiLU, 1 = GELU(tanh). */
cudaError_t kcu_launch_glu(cudaStream_t stream, float *out, const float *gate, const float *up,
                           int64_t n, int act);
/* In-place RoPE of x[n][n_heads*head_dim] at positions pos[n] (device);
 * p->freq_factors, if not NULL, is a device array of n_rot/2 floats. */
cudaError_t kcu_launch_rope(cudaStream_t stream, float *x, const int32_t *pos, int n,
                            const struct be_rope_params *p);
/* y[i] += x[i] */
cudaError_t kcu_launch_add(cudaStream_t stream, float *y, const float *x, int64_t n);
/* y[i] *= s */
cudaError_t kcu_launch_scale(cudaStream_t stream, float *y, float s, int64_t n);
/* dst[i] = x[i] as the GEMM operand type gtype (BE_F16: kcu_f32_to_f16_sat,
 * BE_BF16: kcu_f32_to_bf16); dst holds n 16-bit values. */
cudaError_t kcu_launch_to_half(cudaStream_t stream, uint16_t *dst, const float *x, int64_t n,
                               int gtype);
/* Rows i of k, v [n][kv_dim] into slots[i] (device) of the caches (kv_type
 * BE_F16: round to nearest even, else F32 copies); slots[i] < 0: skipped. */
cudaError_t kcu_launch_kv_store(cudaStream_t stream, void *kc, void *vc, int kv_type,
                                const float *k, const float *v, const int32_t *slots, int n,
                                int kv_dim);

/* out[row] = attention of q[row] over the paged caches kc, vc (kv_type) for
 * the n_rows rows (device array, packed by kcu_attn_pack with the block
 * tables at pages, device), every head; out may be q. p as backend.h
 * (head_dim <= KCU_ATT_MAX_HEAD, n_heads a multiple of n_kv_heads). */
cudaError_t kcu_launch_attention(cudaStream_t stream, float *out, const float *q, const void *kc,
                                 const void *vc, int kv_type, const struct kcu_attn_row *rows,
                                 const int32_t *pages, int n_rows, const struct be_attn_params *p);
/* The split-K path (kcu_math.h "split-K attention"): the n_parts partition
 * rows at parts (device; the partitions of the split rows comb[0..n_comb),
 * whose part0 - base index parts) each leave their partial in scratch
 * (device, n_parts * n_heads * kcu_split_rec(head_dim) floats), then each
 * split row's out is merged from them. Two kernels on `stream`; out may be q. */
cudaError_t kcu_launch_attention_split(cudaStream_t stream, float *out, const float *q,
                                       const void *kc, const void *vc, int kv_type,
                                       const struct kcu_attn_row *parts, int n_parts,
                                       const struct kcu_split_row *comb, int n_comb, int base,
                                       const int32_t *pages, float *scratch,
                                       const struct be_attn_params *p);

/* LTE phase A (grouped path, kcu_lte.h): for each of the n_items items
 * (device), h[i][0..S) = act(gate_e x) * (up_e x) for the item's pairs i, x
 * the row tok[i] (device) of x[.][dim]. gate, up: the device weight copies
 * (rows of dim elements of gtg / gtu = kcu_gemm_type of their types); act as
 * glu. h holds P*S floats. */
cudaError_t kcu_launch_lte_gate_up(cudaStream_t stream, float *h, const float *x, const void *gate,
                                   int gtg, const void *up, int gtu, int64_t dim, int S,
                                   const struct kcu_lte_item *items, int n_items,
                                   const int32_t *tok, int act);
/* LTE phase B (both paths): y[t][d] = +0 plus, for t's entries
 * ents[rowoff[t] .. rowoff[t+1]) (device) in order, dot(down row e*dim+d,
 * h[ent.h*S ..]) (down: the device copy of the expert-major down_x, rows of
 * S elements of gtd). Every y row of n is written. */
cudaError_t kcu_launch_lte_down(cudaStream_t stream, float *y, const float *h, const void *down,
                                int gtd, int64_t dim, int S, const int32_t *rowoff,
                                const struct kcu_lte_ent *ents, int n);

#ifdef __cplusplus
}
#endif

#endif
