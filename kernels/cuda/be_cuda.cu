/* be_cuda.cu - CUDA side of the backend registry.
 *
 * For now this only detects devices: be_open("cuda") answers SS_ENODEVICE
 * where there is no driver or device, and SS_EUNSUPPORTED ("CUDA backend not
 * yet implemented") where a device exists, so no caller ever gets an ops table
 * whose entries are untested. The compute ops (cuBLAS sgemm, kernels) come with
 * a machine that has a GPU to test them on.
 */
#include <cuda_runtime.h>
#include <stdio.h>

#include "kernels/cuda/kcu.h"

#define KCU_ENODEVICE (-11) /* SS_ENODEVICE (kernels/ss_error.h is C only) */

extern "C" int kcu_probe(int *n_dev, char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    *n_dev = 0;
    if (e != cudaSuccess) {
        const char *kind = e == cudaErrorInsufficientDriver ? "no CUDA driver"
                           : e == cudaErrorNoDevice         ? "no CUDA device"
                                                            : "CUDA runtime error";
        if (why && why_len)
            snprintf(why, why_len, "%s (cudaGetDeviceCount: error %d, %s)", kind, (int)e,
                     cudaGetErrorString(e));
        (void)cudaGetLastError(); /* clear the sticky-free error state */
        return KCU_ENODEVICE;
    }
    if (n <= 0) {
        if (why && why_len)
            snprintf(why, why_len, "no CUDA device (cudaGetDeviceCount returned 0)");
        return KCU_ENODEVICE;
    }
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
        if (why && why_len)
            snprintf(why, why_len, "%d CUDA device(s); device 0: %s (sm_%d%d, %.1f GiB)", n,
                     prop.name, prop.major, prop.minor,
                     (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    } else if (why && why_len) {
        snprintf(why, why_len, "%d CUDA device(s)", n);
    }
    *n_dev = n;
    return 0;
}
