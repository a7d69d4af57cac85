/* kcu_lte.cu - CUDA kernels of the LTE sparse FFN (backend.h lte_ffn):
 * phase A of the grouped path (gate/up of each active expert on the rows that
 * chose it, act(g) * u) and phase B of both paths (the down product over a
 * row's active experts, in increasing expert order).
 *
 * Contracts: kernels/cuda/kcu_launch.h; the walk and the index arrays:
 * kernels/cuda/kcu_lte.h, whose functions compute every value here and are
 * what tests/unit/test_cuda_lte.c runs on the CPU. Compiled for sm_80 and
 * sm_90 + PTX with warnings as errors, checked for spills and shared memory
 * by the meson test cuda_resources. Nothing here has run on a GPU yet.
 */
#include <cuda_runtime.h>

#include "kernels/cuda/kcu_launch.h"
#include "kernels/cuda/kcu_lte.h"

#define T KCU_LTE_THREADS
#define WARPS (T / KCU_LTE_LANES)
#define GRID_MAX 65535 /* grid.y limit (row tiles of phase B: grid-stride beyond it) */

/* One block per item: warp w computes neurons j = w, w + WARPS, ... of the
 * item's expert for the item's rows; lane r writes h[i0 + r][j]. */
__global__ void __launch_bounds__(T) kcu_lte_gate_up_kernel(float *h, const float *x, const void *gate, int gtg,
                                                            const void *up, int gtu, int64_t dim, int S,
                                                            const struct kcu_lte_item *items,
                                                            const int32_t *tok, int act) {
    const struct kcu_lte_item it = items[blockIdx.x];
    const int lane = (int)(threadIdx.x % KCU_LTE_LANES), w = (int)(threadIdx.x / KCU_LTE_LANES);
    const size_t eg = gtg == BE_F32 ? 4 : 2, eu = gtu == BE_F32 ? 4 : 2;
    for (int j = w; j < S; j += WARPS) {
        const size_t row = (size_t)it.e * (size_t)S + (size_t)j;
        float g[KCU_LTE_ROWS], u[KCU_LTE_ROWS];
        kcu_lte_lane_dots((const uint8_t *)gate + row * (size_t)dim * eg, gtg,
                          (const uint8_t *)up + row * (size_t)dim * eu, gtu, dim, x, tok + it.i0, it.cnt,
                          lane, g, u);
        float gl = 0.0f, ul = 0.0f; /* lane r keeps row r's sums */
#pragma unroll
        for (int r = 0; r < KCU_LTE_ROWS; r++) {
            if (r < it.cnt) { /* the same for every lane of the warp: no divergence at the shuffles */
#pragma unroll
                for (int m = KCU_LTE_LANES / 2; m > 0; m >>= 1) {
                    g[r] = kcu_add(g[r], __shfl_xor_sync(0xffffffffu, g[r], m));
                    u[r] = kcu_add(u[r], __shfl_xor_sync(0xffffffffu, u[r], m));
                }
                if (lane == r)
                    gl = g[r], ul = u[r];
            }
        }
        if (lane < it.cnt)
            h[(size_t)(it.i0 + lane) * (size_t)S + (size_t)j] = kcu_glu(gl, ul, act);
    }
}

extern "C" cudaError_t kcu_launch_lte_gate_up(cudaStream_t stream, float *h, const float *x, const void *gate,
                                              int gtg, const void *up, int gtu, int64_t dim, int S,
                                              const struct kcu_lte_item *items, int n_items,
                                              const int32_t *tok, int act) {
    if (n_items <= 0 || S <= 0 || dim <= 0)
        return cudaSuccess;
    kcu_lte_gate_up_kernel<<<(unsigned)n_items, T, 0, stream>>>(h, x, gate, gtg, up, gtu, dim, S, items, tok,
                                                                act);
    return cudaGetLastError();
}

/* grid.y walks the tiles of KCU_LTE_DROWS rows, grid.x * T threads the
 * outputs d of a tile (kcu_lte_down_tile). */
__global__ void __launch_bounds__(T) kcu_lte_down_kernel(float *y, const float *h, const void *down, int gtd,
                                                         int64_t dim, int S, const int32_t *rowoff,
                                                         const struct kcu_lte_ent *ents, int n) {
    const int64_t d = (int64_t)blockIdx.x * T + threadIdx.x;
    if (d >= dim)
        return;
    for (int t0 = (int)blockIdx.y * KCU_LTE_DROWS; t0 < n; t0 += (int)gridDim.y * KCU_LTE_DROWS) {
        const int nr = n - t0 < KCU_LTE_DROWS ? n - t0 : KCU_LTE_DROWS;
        kcu_lte_down_tile(y, h, down, gtd, dim, S, rowoff, ents, t0, nr, d);
    }
}

extern "C" cudaError_t kcu_launch_lte_down(cudaStream_t stream, float *y, const float *h, const void *down,
                                           int gtd, int64_t dim, int S, const int32_t *rowoff,
                                           const struct kcu_lte_ent *ents, int n) {
    if (n <= 0 || dim <= 0)
        return cudaSuccess;
    const int tiles = (n + KCU_LTE_DROWS - 1) / KCU_LTE_DROWS;
    dim3 grid((unsigned)((dim + T - 1) / T), tiles < GRID_MAX ? (unsigned)tiles : GRID_MAX);
    kcu_lte_down_kernel<<<grid, T, 0, stream>>>(y, h, down, gtd, dim, S, rowoff, ents, n);
    return cudaGetLastError();
}
