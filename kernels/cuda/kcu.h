/* kcu.h - C interface of the CUDA backend (kernels/cuda/), used by
 * registry.c, the conformance runner (tools/cuda_conform.c) and tests.
 * Compiled in only when HAVE_CUDA. Any thread may call kcu_probe; the
 * context functions follow the backend's one-thread-at-a-time rule.
 */
#ifndef SS_KCU_H
#define SS_KCU_H

#include <stddef.h>

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Count CUDA devices and describe device dev. Returns 0 with *n_dev >= 1 and
 * a one-line description of device dev in why, or SS_ENODEVICE (-11) with
 * the reason in why: CUDA error 35 (no/insufficient driver), 100 (no
 * device), any other runtime failure, or dev not in [0, *n_dev). */
int kcu_probe(int dev, int *n_dev, char *why, size_t why_len);

/* The CUDA ops table (be_cuda.c) and a context on device dev (one stream,
 * one cuBLAS handle): 0, SS_ENOMEM or SS_ENODEVICE. */
extern const struct be_ops kcu_ops;
int kcu_ctx_open(void **ctx, int dev);
/* The first CUDA/cuBLAS error the backend `be` met (0 = none; 0 for another
 * backend): the entries return void, so callers that must know ask here. */
int kcu_ctx_error(const struct be *be);
/* Attention's split-K path for long rows (kcu_math.h "split-K attention"):
 * on = 1 (the default) splits rows longer than KCU_SPLIT_KEYS keys, on = 0
 * runs every row unsplit (one block per (row, head): the benchmark's and the
 * conformance runner's baseline). Returns the previous setting, SS_EINVAL for
 * another backend. Takes effect at the next attention call. */
int kcu_ctx_set_attn_split(struct be *be, int on);
/* Device bytes of the weights prepared so far (0 for another backend). */
size_t kcu_ctx_weight_bytes(const struct be *be);

#ifdef __cplusplus
}
#endif

#endif
