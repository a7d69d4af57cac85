/* registry.c - backend registry: be_open / be_close / be_cuda_available.
 *
 * "cpu" is always available. "cuda" exists only in HAVE_CUDA builds and, for
 * now, only detects devices (kernels/cuda/be_cuda.cu): where none is present
 * be_open answers SS_ENODEVICE; where one is, SS_EUNSUPPORTED (the CUDA compute
 * backend is not implemented yet). be_cuda_available() says why in words.
 * Any thread may call these; a struct be is then used by one thread at a time.
 */
#include <stdio.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"
#if HAVE_CUDA
#include "kernels/cuda/kcu.h"
#endif

static void say(char *why, size_t len, const char *msg) {
    if (why && len)
        snprintf(why, len, "%s", msg);
}

/* 0 if a CUDA compute backend could be opened, else a negative code + reason */
static int cuda_status(char *why, size_t len) {
#if HAVE_CUDA
    char dev[200];
    int n = 0;
    int rc = kcu_probe(&n, dev, sizeof dev);
    if (rc < 0) {
        say(why, len, dev);
        return SS_ENODEVICE;
    }
    if (why && len)
        snprintf(why, len, "CUDA backend not yet implemented (%s)", dev);
    return SS_EUNSUPPORTED;
#else
    say(why, len, "CUDA backend not compiled in (built without HAVE_CUDA)");
    return SS_EUNSUPPORTED;
#endif
}

int be_cuda_available(char *why, size_t why_len) {
    return cuda_status(why, why_len) == 0;
}

int be_open(struct be *be, const char *name, int n_threads) {
    if (!be)
        return SS_EINVAL;
    memset(be, 0, sizeof *be);
    if (!name || strcmp(name, "cpu") == 0) {
        void *ctx = NULL;
        int rc = kcpu_ops.init(&ctx, n_threads);
        if (rc < 0)
            return rc;
        be->ops = &kcpu_ops;
        be->ctx = ctx;
        return 0;
    }
    if (strcmp(name, "cuda") == 0)
        return cuda_status(NULL, 0);
    return SS_ENOTFOUND;
}

void be_close(struct be *be) {
    if (!be || !be->ops)
        return;
    be->ops->free(be->ctx);
    be->ops = NULL;
    be->ctx = NULL;
}
