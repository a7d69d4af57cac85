/* registry.c - backend registry: be_open / be_close / be_cuda_available.
 *
 * "cpu" is always available. "cuda" / "cuda:N" exist only in HAVE_CUDA
 * builds (kernels/cuda/be_cuda.c). Where no device is present be_open
 * answers SS_ENODEVICE. Where one is, the CUDA backend is still gated: it has
 * never been run on a GPU by its authors, so it opens only when
 * SLIMSERVE_CUDA_UNVERIFIED=1 is set (tools/gpu_check.sh sets it for its own
 * runs and says so when it passes); otherwise SS_EUNSUPPORTED with a message
 * saying how to check the host. be_cuda_available() says why in words.
 * Any thread may call these; a struct be is then used by one thread at a time.
 */
#include <stdio.h>
#include <stdlib.h>
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

#define CUDA_GATE_ENV "SLIMSERVE_CUDA_UNVERIFIED"

int be_cuda_gate_open(char *why, size_t len) {
    const char *gate = getenv(CUDA_GATE_ENV);
    if (gate && strcmp(gate, "1") == 0) {
        say(why, len, "unverified CUDA backend enabled by " CUDA_GATE_ENV "=1");
        return 1;
    }
    say(why, len, "the CUDA backend has not been verified on a GPU yet: run tools/gpu_check.sh "
                  "on this host, then set " CUDA_GATE_ENV "=1 to use it");
    return 0;
}

/* 0 if the CUDA backend could be opened on device dev, else a negative code
 * + reason */
static int cuda_status(int dev, char *why, size_t len) {
#if HAVE_CUDA
    char desc[200];
    int n = 0;
    if (kcu_probe(dev, &n, desc, sizeof desc) < 0) {
        say(why, len, desc);
        return SS_ENODEVICE;
    }
    char gate[200];
    const int open = be_cuda_gate_open(gate, sizeof gate);
    if (why && len) /* the device, then the gate's word; or what to do, then the device */
        snprintf(why, len, "%s (%s)", open ? desc : gate, open ? gate : desc);
    return open ? 0 : SS_EUNSUPPORTED;
#else
    (void)dev;
    say(why, len, "CUDA backend not compiled in (built without HAVE_CUDA)");
    return SS_EUNSUPPORTED;
#endif
}

int be_cuda_device_available(int dev, char *why, size_t why_len) {
    return cuda_status(dev, why, why_len) == 0;
}

int be_cuda_available(char *why, size_t why_len) {
    return cuda_status(0, why, why_len) == 0;
}

/* "cuda" -> 0, "cuda:N" -> N (0 <= N < 1024); -1 for anything else */
static int cuda_device_of(const char *name) {
    if (strcmp(name, "cuda") == 0)
        return 0;
    if (strncmp(name, "cuda:", 5) != 0 || !name[5])
        return -1;
    int dev = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || dev > 100)
            return -1;
        dev = dev * 10 + (*p - '0');
    }
    return dev < 1024 ? dev : -1;
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
    int dev = cuda_device_of(name);
    if (dev < 0)
        return SS_ENOTFOUND;
    int rc = cuda_status(dev, NULL, 0);
    if (rc < 0)
        return rc;
#if HAVE_CUDA
    void *ctx = NULL;
    if ((rc = kcu_ctx_open(&ctx, dev)) < 0)
        return rc;
    be->ops = &kcu_ops;
    be->ctx = ctx;
    return 0;
#else
    return SS_EUNSUPPORTED;
#endif
}

void be_close(struct be *be) {
    if (!be || !be->ops)
        return;
    be->ops->free(be->ctx);
    be->ops = NULL;
    be->ctx = NULL;
}
