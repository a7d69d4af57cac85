/* kcu_kernels.cuh - launchers of the CUDA row kernels (kernels/cuda/kcu_rows.cu),
 * for the .cu files of the CUDA backend only (C code never includes this).
 *
 * NOTE: these kernels are compiled and resource-checked in CI (meson test
 * cuda_resources) but are NOT part of any backend table yet: be_open("cuda")
 * still answers "not implemented" until every entry of the table exists on
 * the device and has been run against the CPU backend on a GPU. Nothing here
 * has run on a GPU yet.
 *
 * All pointers are device memory unless stated; every launcher enqueues on
 * `stream` and returns at once with the launch status (cudaSuccess, or the
 * error of the launch: bad configuration, no device). Shapes must already be
 * validated by the caller (the backend entry), as the CPU backend does.
 * Thread: any host thread that owns the stream.
 *
 * Arithmetic comes from kcu_math.h (the same functions the CPU test checks):
 *   get_rows: bitwise equal to the CPU backend's dequantiser.
 *   rmsnorm:  the row's sum of squares is a fixed-shape block reduction in
 *             double (KCU_ROWS_THREADS threads): the result depends only on
 *             the row (never on n or the other rows), but the summation order
 *             differs from the CPU's sequential one, so the two may differ in
 *             the last bit of the scale.
 *   glu:      element-wise; CUDA's expf/tanhf are within a few ulp of glibc's.
 *   rope:     angles in double (CUDA's pow/cos/sin), products rounded as the
 *             CPU's.
 */
#ifndef SS_KCU_KERNELS_CUH
#define SS_KCU_KERNELS_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/backend.h"

#define KCU_ROWS_THREADS 256 /* threads per block of every row kernel */

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

#endif
