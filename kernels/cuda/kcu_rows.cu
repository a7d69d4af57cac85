/* kcu_rows.cu - CUDA row kernels: get_rows (dequantisation), rmsnorm, glu, rope,
 * add, scale, the GEMM operand conversion and kv_store.
 *
 * Contracts: kernels/cuda/kcu_launch.h. The arithmetic of every element is
 * a kcu_math.h function, the one tests/unit/test_cuda_math.c checks against
 * the CPU backend on the CPU. Used by the backend table (be_cuda.c); compiled for sm_80 and sm_90 + PTX with warnings as errors
 * and checked for register spills and shared memory by the meson test
 * cuda_resources. Nothing here has run on a GPU yet.
 *
 * Every kernel loops grid-stride, so any n fits a launch of bounded size.
 */
#include <cuda_runtime.h>

#include "kernels/cuda/kcu_launch.h"
#include "kernels/cuda/kcu_math.h"

#define T KCU_ROWS_THREADS
#define GRID_MAX 65535 /* blocks per launch (grid-stride loops cover the rest) */

static unsigned grid_for(int64_t work) {
    int64_t g = (work + T - 1) / T;
    return (unsigned)(g < 1 ? 1 : g > GRID_MAX ? GRID_MAX : g);
}

/* ------------------------------------------------------------ get_rows */

/* grid.y walks the rows, grid.x * T threads the elements of a row */
__global__ void __launch_bounds__(T) kcu_get_rows_kernel(float *out, const uint8_t *w, size_t nb1,
                                                         int type, int64_t K, int64_t R,
                                                         const int32_t *ids, int n) {
    for (int i = blockIdx.y; i < n; i += gridDim.y) {
        const int32_t id = ids[i];
        float *o = out + (size_t)i * (size_t)K;
        for (int64_t k = (int64_t)blockIdx.x * T + threadIdx.x; k < K; k += (int64_t)gridDim.x * T)
            o[k] = id < 0 || id >= R ? 0.0f : kcu_dequant_row_elem(type, w + (size_t)id * nb1, k);
    }
}

extern "C" cudaError_t kcu_launch_get_rows(cudaStream_t stream, float *out, const uint8_t *w, size_t nb1,
                                int type, int64_t K, int64_t R, const int32_t *ids, int n) {
    if (n <= 0 || K <= 0)
        return cudaSuccess;
    dim3 grid(grid_for(K), n < GRID_MAX ? (unsigned)n : GRID_MAX);
    kcu_get_rows_kernel<<<grid, T, 0, stream>>>(out, w, nb1, type, K, R, ids, n);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ rmsnorm */

/* One block per row. Sum of squares: thread t takes elements t, t+T, ...
 * (in order, in double), then a fixed tree over the T partial sums: the same
 * shape for every row, so a row's result never depends on the batch. */
__global__ void __launch_bounds__(T) kcu_rmsnorm_kernel(float *out, const float *x, const float *w,
                                                        int n, int dim, float eps) {
    __shared__ double red[T];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const float *xi = x + (size_t)i * (size_t)dim;
        float *oi = out + (size_t)i * (size_t)dim;
        double ss = 0.0;
        for (int k = threadIdx.x; k < dim; k += T)
            ss += (double)xi[k] * xi[k];
        red[threadIdx.x] = ss;
        __syncthreads();
        for (int h = T / 2; h > 0; h >>= 1) {
            if ((int)threadIdx.x < h)
                red[threadIdx.x] += red[threadIdx.x + h];
            __syncthreads();
        }
        const float sc = kcu_rms_scale(red[0], dim, eps);
        __syncthreads(); /* red[0] read by all before the next row reuses red */
        for (int k = threadIdx.x; k < dim; k += T)
            oi[k] = kcu_rms_apply(xi[k], sc, w, k);
    }
}

extern "C" cudaError_t kcu_launch_rmsnorm(cudaStream_t stream, float *out, const float *x, const float *w,
                               int n, int dim, float eps) {
    if (n <= 0 || dim <= 0)
        return cudaSuccess;
    kcu_rmsnorm_kernel<<<n < GRID_MAX ? n : GRID_MAX, T, 0, stream>>>(out, x, w, n, dim, eps);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ glu */

__global__ void __launch_bounds__(T) kcu_glu_kernel(float *out, const float *g, const float *u,
                                                    int64_t n, int act) {
    for (int64_t i = (int64_t)blockIdx.x * T + threadIdx.x; i < n; i += (int64_t)gridDim.x * T)
        out[i] = kcu_glu(g[i], u[i], act);
}

extern "C" cudaError_t kcu_launch_glu(cudaStream_t stream, float *out, const float *gate, const float *up,
                           int64_t n, int act) {
    if (n <= 0)
        return cudaSuccess;
    kcu_glu_kernel<<<grid_for(n), T, 0, stream>>>(out, gate, up, n, act);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ rope */

/* One thread per (token, pair): the angle once, then that pair in every head. */
__global__ void __launch_bounds__(T) kcu_rope_kernel(float *x, const int32_t *pos, int n, int H,
                                                     int D, int n_rot, float theta_base,
                                                     float freq_scale, int neox, const float *ff) {
    const int half = n_rot / 2;
    for (int64_t it = (int64_t)blockIdx.x * T + threadIdx.x; it < (int64_t)n * half;
         it += (int64_t)gridDim.x * T) {
        const int t = (int)(it / half), i = (int)(it % half);
        float cs, sn;
        kcu_rope_cs(pos[t], freq_scale, kcu_rope_inv_freq(i, n_rot, theta_base, ff), &cs, &sn);
        int i0, i1;
        kcu_rope_pair(neox, i, n_rot, &i0, &i1);
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)t * H + h) * (size_t)D;
            kcu_rope_rotate(&v[i0], &v[i1], cs, sn);
        }
    }
}

extern "C" cudaError_t kcu_launch_rope(cudaStream_t stream, float *x, const int32_t *pos, int n,
                            const struct be_rope_params *p) {
    const int nr = p->n_rot;
    if (n <= 0 || p->n_heads <= 0 || p->head_dim <= 0 || nr <= 1 || nr > p->head_dim || nr % 2)
        return cudaSuccess; /* as the CPU backend: nonsense shapes leave x alone */
    kcu_rope_kernel<<<grid_for((int64_t)n * (nr / 2)), T, 0, stream>>>(
        x, pos, n, p->n_heads, p->head_dim, nr, p->theta_base, p->freq_scale, p->neox,
        p->freq_factors);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ add, scale */

__global__ void __launch_bounds__(T) kcu_add_kernel(float *y, const float *x, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * T + threadIdx.x; i < n; i += (int64_t)gridDim.x * T)
        y[i] = kcu_add(y[i], x[i]);
}

extern "C" cudaError_t kcu_launch_add(cudaStream_t stream, float *y, const float *x, int64_t n) {
    if (n <= 0)
        return cudaSuccess;
    kcu_add_kernel<<<grid_for(n), T, 0, stream>>>(y, x, n);
    return cudaGetLastError();
}

__global__ void __launch_bounds__(T) kcu_scale_kernel(float *y, float s, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * T + threadIdx.x; i < n; i += (int64_t)gridDim.x * T)
        y[i] = kcu_mul(y[i], s);
}

extern "C" cudaError_t kcu_launch_scale(cudaStream_t stream, float *y, float s, int64_t n) {
    if (n <= 0)
        return cudaSuccess;
    kcu_scale_kernel<<<grid_for(n), T, 0, stream>>>(y, s, n);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ GEMM operands */

__global__ void __launch_bounds__(T) kcu_to_half_kernel(uint16_t *dst, const float *x, int64_t n,
                                                        int bf16) {
    for (int64_t i = (int64_t)blockIdx.x * T + threadIdx.x; i < n; i += (int64_t)gridDim.x * T)
        dst[i] = bf16 ? kcu_f32_to_bf16(x[i]) : kcu_f32_to_f16_sat(x[i]);
}

extern "C" cudaError_t kcu_launch_to_half(cudaStream_t stream, uint16_t *dst, const float *x,
                                          int64_t n, int gtype) {
    if (n <= 0)
        return cudaSuccess;
    kcu_to_half_kernel<<<grid_for(n), T, 0, stream>>>(dst, x, n, gtype == BE_BF16);
    return cudaGetLastError();
}

/* ------------------------------------------------------------ kv_store */

/* One thread per element of the n x kv_dim rows. */
__global__ void __launch_bounds__(T) kcu_kv_store_kernel(void *kc, void *vc, int f16, const float *k,
                                                         const float *v, const int32_t *slots,
                                                         int n, int kv_dim) {
    const int64_t total = (int64_t)n * kv_dim;
    for (int64_t it = (int64_t)blockIdx.x * T + threadIdx.x; it < total; it += (int64_t)gridDim.x * T) {
        const int32_t slot = slots[it / kv_dim];
        if (slot < 0)
            continue; /* row not stored */
        const size_t off = (size_t)slot * (size_t)kv_dim + (size_t)(it % kv_dim);
        if (f16) {
            ((uint16_t *)kc)[off] = kcu_f32_to_f16(k[it]);
            ((uint16_t *)vc)[off] = kcu_f32_to_f16(v[it]);
        } else {
            ((float *)kc)[off] = k[it];
            ((float *)vc)[off] = v[it];
        }
    }
}

extern "C" cudaError_t kcu_launch_kv_store(cudaStream_t stream, void *kc, void *vc, int kv_type,
                                           const float *k, const float *v, const int32_t *slots,
                                           int n, int kv_dim) {
    if (n <= 0 || kv_dim <= 0)
        return cudaSuccess;
    kcu_kv_store_kernel<<<grid_for((int64_t)n * kv_dim), T, 0, stream>>>(
        kc, vc, kv_type == BE_F16, k, v, slots, n, kv_dim);
    return cudaGetLastError();
}
