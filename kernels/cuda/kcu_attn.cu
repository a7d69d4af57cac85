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
 *
 * Split-K (flash decoding, kcu_launch_attention_split): a row with more than
 * KCU_SPLIT_KEYS keys is cut into partitions (kcu_split_plan in kcu_math.h:
 * the plan depends only on the row's number of keys and the layer's shape);
 * the same walk runs once per (partition, head) and leaves its unnormalised
 * partial {m, l, acc[D]} in the context's scratch, then one combine block per
 * (row, head) merges the partials in increasing partition order
 * (kcu_split_out). The combine launch follows the partial launch on the
 * stream, so a row's q is read before its out is written: out may alias q
 * here too. test_cuda_math (test_attention_split_emulated) runs this walk
 * and combine on the host with the same functions.
 * NOTE: never run on a GPU yet (tools/gpu_check.sh checks it against the CPU).
 */
#include <cuda_runtime.h>

#include "kernels/cuda/kcu_launch.h"
#include "kernels/cuda/kcu_math.h"

#define AT KCU_ATT_THREADS
#define CH KCU_ATT_CHUNK
#define GRID_ROWS_MAX 65535

/* The walk of (row R, head h) over keys [R.lo, R.hi]: on return s holds
 * (m, l) in every thread and acc[0..D) the unnormalised accumulator. qs and
 * acc are the block's shared rows (the q row is loaded here), sc and offs
 * its chunk buffers. Ends with a barrier (everything in acc is written). */
static __device__ __forceinline__ void attn_walk(struct kcu_sm *s, float *qs, float *acc, float *sc,
                                                 size_t *offs, const struct kcu_attn_row R,
                                                 const float *q, const void *kc, const void *vc,
                                                 int kv_type, const int32_t *pages, int h, int g,
                                                 int D, int kv_dim, int qdim, float scale,
                                                 float softcap) {
    const int tid = threadIdx.x;
    const int32_t *pg = pages + R.pages_off;
    const float *qr = q + (size_t)R.row * (size_t)qdim + (size_t)h * D;
    for (int d = tid; d < D; d += AT) {
        qs[d] = qr[d];
        acc[d] = 0.0f;
    }
    kcu_sm_init(s);
    __syncthreads();
    for (int64_t p0 = R.lo; p0 <= R.hi; p0 += CH) {
        const int cnt = R.hi - p0 + 1 < CH ? (int)(R.hi - p0 + 1) : CH;
        if (tid < cnt) {
            const size_t off = kcu_kv_offset(pg, p0 + tid, kv_dim, g, D);
            sc[tid] = kcu_attn_score(qs, kc, kv_type, off, D, scale, softcap);
            offs[tid] = off;
        }
        __syncthreads();
        const float corr = kcu_sm_rescale(s, kcu_chunk_max(sc, cnt));
        __syncthreads(); /* every thread has read the scores before they become weights */
        if (tid < cnt)
            sc[tid] = kcu_sm_weight(s, sc[tid]);
        __syncthreads();
        kcu_sm_add(s, sc, cnt);
        for (int d = tid; d < D; d += AT)
            acc[d] = kcu_attn_accum(acc[d], corr, sc, offs, cnt, vc, kv_type, d);
        __syncthreads(); /* the next chunk overwrites sc and offs */
    }
}

/* One block per (head, row): PART 0 writes out[row] = acc / l (the unsplit
 * kernel); PART 1 treats rows as partitions of split rows and writes record
 * r of head h, dst + (r * n_heads + h) * (D + 2) = {m, l, acc[D]}. */
template <int PART>
__global__ void __launch_bounds__(AT) kcu_attn_kernel(float *dst, const float *q, const void *kc,
                                                      const void *vc, int kv_type,
                                                      const struct kcu_attn_row *rows,
                                                      const int32_t *pages, int n_rows, int group,
                                                      int D, int kv_dim, int qdim, float scale,
                                                      float softcap) {
    __shared__ float qs[KCU_ATT_MAX_HEAD];
    __shared__ float acc[KCU_ATT_MAX_HEAD];
    __shared__ float sc[CH];
    __shared__ size_t offs[CH];
    const int h = blockIdx.x, tid = threadIdx.x;
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const struct kcu_attn_row R = rows[r];
        struct kcu_sm s;
        attn_walk(&s, qs, acc, sc, offs, R, q, kc, vc, kv_type, pages, h, h / group, D, kv_dim,
                  qdim, scale, softcap);
        if (PART) {
            float *rec = dst + ((size_t)r * gridDim.x + h) * kcu_split_rec(D);
            if (tid == 0) {
                rec[0] = s.m;
                rec[1] = s.l;
            }
            for (int d = tid; d < D; d += AT)
                rec[2 + d] = acc[d];
        } else {
            const float inv = kcu_sm_inv(&s);
            float *o = dst + (size_t)R.row * (size_t)qdim + (size_t)h * D;
            for (int d = tid; d < D; d += AT)
                o[d] = kcu_mul(acc[d], inv);
        }
        __syncthreads(); /* the next row overwrites qs and acc */
    }
}

/* One block per (head, split row): out[row] from the records of its
 * partitions (kcu_split_out; record of partition i at (i - base) * n_heads + h). */
__global__ void __launch_bounds__(AT) kcu_attn_combine_kernel(float *out, const float *part,
                                                              const struct kcu_split_row *comb,
                                                              int n_comb, int base, int D,
                                                              int qdim) {
    const int h = blockIdx.x, H = gridDim.x;
    const size_t stride = (size_t)H * kcu_split_rec(D);
    for (int r = blockIdx.y; r < n_comb; r += gridDim.y) {
        const struct kcu_split_row C = comb[r];
        const float *rec = part + (size_t)(C.part0 - base) * stride + (size_t)h * kcu_split_rec(D);
        float *o = out + (size_t)C.row * (size_t)qdim + (size_t)h * D;
        for (int d = threadIdx.x; d < D; d += AT)
            o[d] = kcu_split_out(rec, stride, C.n_part, d);
    }
}

static int attn_shape_ok(const struct be_attn_params *p) {
    return p->n_heads > 0 && p->n_kv_heads > 0 && p->head_dim > 0 &&
           p->head_dim <= KCU_ATT_MAX_HEAD && p->n_heads % p->n_kv_heads == 0;
}

static dim3 attn_grid(const struct be_attn_params *p, int n) {
    return dim3((unsigned)p->n_heads, n < GRID_ROWS_MAX ? (unsigned)n : GRID_ROWS_MAX);
}

extern "C" cudaError_t kcu_launch_attention(cudaStream_t stream, float *out, const float *q,
                                            const void *kc, const void *vc, int kv_type,
                                            const struct kcu_attn_row *rows, const int32_t *pages,
                                            int n_rows, const struct be_attn_params *p) {
    if (n_rows <= 0 || !attn_shape_ok(p))
        return cudaSuccess; /* nonsense shapes: as the CPU backend, nothing written */
    kcu_attn_kernel<0><<<attn_grid(p, n_rows), AT, 0, stream>>>(
        out, q, kc, vc, kv_type, rows, pages, n_rows, p->n_heads / p->n_kv_heads, p->head_dim,
        p->n_kv_heads * p->head_dim, p->n_heads * p->head_dim, p->scale, p->softcap);
    return cudaGetLastError();
}

extern "C" cudaError_t kcu_launch_attention_split(cudaStream_t stream, float *out, const float *q,
                                                  const void *kc, const void *vc, int kv_type,
                                                  const struct kcu_attn_row *parts, int n_parts,
                                                  const struct kcu_split_row *comb, int n_comb,
                                                  int base, const int32_t *pages, float *scratch,
                                                  const struct be_attn_params *p) {
    if (n_parts <= 0 || n_comb <= 0 || !attn_shape_ok(p))
        return cudaSuccess;
    const int D = p->head_dim, qdim = p->n_heads * D;
    kcu_attn_kernel<1><<<attn_grid(p, n_parts), AT, 0, stream>>>(
        scratch, q, kc, vc, kv_type, parts, pages, n_parts, p->n_heads / p->n_kv_heads, D,
        p->n_kv_heads * D, qdim, p->scale, p->softcap);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    kcu_attn_combine_kernel<<<attn_grid(p, n_comb), AT, 0, stream>>>(out, scratch, comb, n_comb,
                                                                     base, D, qdim);
    return cudaGetLastError();
}
