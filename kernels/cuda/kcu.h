/* kcu.h - C interface of the CUDA side (kernels/cuda/), used by registry.c.
 * Compiled in only when HAVE_CUDA. Any thread may call these.
 */
#ifndef SS_KCU_H
#define SS_KCU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Count CUDA devices. Returns 0 with *n_dev >= 1 and a one-line description of
 * device 0 in why, or SS_ENODEVICE (-11) with the reason in why: CUDA error 35
 * (no/insufficient driver), 100 (no device) or any other runtime failure. */
int kcu_probe(int *n_dev, char *why, size_t why_len);

#ifdef __cplusplus
}
#endif

#endif
