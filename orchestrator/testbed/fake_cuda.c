/*
 * Fake CUDA runtime and cuDNN libraries for the testbed, so a probe can read their versions
 * through ctypes exactly as on a real host. fakelibs.py compiles this file once per library and
 * version, with the version compiled in:
 *   -DFAKE_CUDART_VERSION=12050  -> libcudart.so.12: int cudaRuntimeGetVersion(int *)
 *                                   (1000*major + 10*minor, as CUDART_VERSION)
 *   -DFAKE_CUDNN_VERSION=90300   -> libcudnn.so.9:   size_t cudnnGetVersion(void)
 *                                   (cuDNN 9: major*10000 + minor*100 + patch; cuDNN <= 8:
 *                                   major*1000 + minor*100 + patch)
 * Nothing here needs a GPU, as with the real libraries.
 */
#include <stddef.h>

#define API __attribute__((visibility("default")))

#ifdef FAKE_CUDART_VERSION
API int cudaRuntimeGetVersion(int *version) {
    if (!version) return 1; /* cudaErrorInvalidValue */
    *version = FAKE_CUDART_VERSION;
    return 0;
}
#endif

#ifdef FAKE_CUDNN_VERSION
API size_t cudnnGetVersion(void) { return FAKE_CUDNN_VERSION; }
#endif
