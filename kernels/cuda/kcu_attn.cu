/* kcu_attn.cu - causal paged attention over a ragged batch (CUDA).
 *
 * Contract: kernels/cuda/kcu_launch.h (kcu_launch_attention) and backend.h.
 * One block of KCU_ATT_THREADS threads per (query row, head): a first version
 * written to be obviously right, not fast. The block walks the row's keys
 * [lo, hi] in chunks of KCU_ATT_CHUNK, as the CPU attention does:
 *
 *   threads i < cnt:  score_i = logit(q . k_{p0+i})    (sequential dot, kcu_math.h)
 *   every thread:     corr = rescale(running max)       (same values in every thread)
 *   threads i < cnt:  w_i = e^(score_i - m)
 *   every thread:     l = l*corr + sum_i w_i            (same order in every thread)
 *   thread d:         acc[d] = acc[d]*corr + sum_i w_i v_{p0+i}[d]
 *   at the end:       out[d] = acc[d] / l
 *
 * so a head's result depends only on its q row and the cache (never on the
 * batch). The inner steps are kcu_math.h functions (kcu_attn_score,
 * kcu_attn_accum) and the rows come from kcu_attn_pack: tests/unit/
 * test_cuda_math.c (test_attention_emulated) runs this kernel's walk on the
 * host with them and holds it bitwise to the CPU backend's generic attention;
 * on the device only CUDA's expf/tanhf differ.
 * The q row is copied to shared memory before anything is written, so out
 * may alias q (each block reads and writes only its own (row, head)).
 * NOTE: never run on a GPU yet (tools/gpu_check.sh checks it against the CPU).
 */
#include <cuda_runtime.h>

#include "kernels/cuda/kcu_launch.h"
#include "kernels/cuda/kcu_math.h"

#define AT KCU_ATT_THREADS
#define CH KCU_ATT_CHUNK
#define GRID_ROWS_MAX 65535

__global__ void __launch_bounds__(AT) kcu_attn_kernel(float *out, const float *q, const void *kc,
                                                      const void *vc, int kv_type,
                                                      const struct kcu_attn_row *rows,
                                                      const int32_t *pages, int n_rows, int group,
                                                      int D, int kv_dim, int qdim, float scale,
                                                      float softcap) {
    __shared__ float qs[KCU_ATT_MAX_HEAD];
    __shared__ float acc[KCU_ATT_MAX_HEAD];
    __shared__ float sc[CH];
    __shared__ size_t offs[CH];
    const int h = blockIdx.x, g = h / group, tid = threadIdx.x;
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const struct kcu_attn_row R = rows[r];
        const int32_t *pg = pages + R.pages_off;
        const float *qr = q + (size_t)R.row * (size_t)qdim + (size_t)h * D;
        for (int d = tid; d < D; d += AT) {
            qs[d] = qr[d];
            acc[d] = 0.0f;
        }
        struct kcu_sm s;
        kcu_sm_init(&s);
        __syncthreads();
        for (int64_t p0 = R.lo; p0 <= R.hi; p0 += CH) {
            const int cnt = R.hi - p0 + 1 < CH ? (int)(R.hi - p0 + 1) : CH;
            if (tid < cnt) {
                const size_t off = kcu_kv_offset(pg, p0 + tid, kv_dim, g, D);
                sc[tid] = kcu_attn_score(qs, kc, kv_type, off, D, scale, softcap);
                offs[tid] = off;
            }
            __syncthreads();
            float mx = -INFINITY;
            for (int i = 0; i < cnt; i++)
                mx = sc[i] > mx ? sc[i] : mx;
            const float corr = kcu_sm_rescale(&s, mx);
            __syncthreads(); /* every thread has read the scores before they become weights */
            if (tid < cnt)
                sc[tid] = kcu_sm_weight(&s, sc[tid]);
            __syncthreads();
            for (int i = 0; i < cnt; i++)
                s.l = kcu_add(s.l, sc[i]);
            for (int d = tid; d < D; d += AT)
                acc[d] = kcu_attn_accum(acc[d], corr, sc, offs, cnt, vc, kv_type, d);
            __syncthreads(); /* the next chunk overwrites sc and offs */
        }
        const float inv = kcu_sm_inv(&s);
        float *o = out + (size_t)R.row * (size_t)qdim + (size_t)h * D;
        for (int d = tid; d < D; d += AT)
            o[d] = kcu_mul(acc[d], inv);
        __syncthreads(); /* the next row overwrites qs and acc */
    }
}

extern "C" cudaError_t kcu_launch_attention(cudaStream_t stream, float *out, const float *q,
                                            const void *kc, const void *vc, int kv_type,
                                            const struct kcu_attn_row *rows, const int32_t *pages,
                                            int n_rows, const struct be_attn_params *p) {
    if (n_rows <= 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 || p->head_dim <= 0 ||
        p->head_dim > KCU_ATT_MAX_HEAD || p->n_heads % p->n_kv_heads != 0)
        return cudaSuccess; /* nonsense shapes: as the CPU backend, nothing written */
    dim3 grid((unsigned)p->n_heads, n_rows < GRID_ROWS_MAX ? (unsigned)n_rows : GRID_ROWS_MAX);
    kcu_attn_kernel<<<grid, AT, 0, stream>>>(out, q, kc, vc, kv_type, rows, pages, n_rows,
                                             p->n_heads / p->n_kv_heads, p->head_dim,
                                             p->n_kv_heads * p->head_dim,
                                             p->n_heads * p->head_dim, p->scale, p->softcap);
    return cudaGetLastError();
}
