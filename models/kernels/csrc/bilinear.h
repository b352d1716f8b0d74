/* Shared by the exact and the gradient kernels: PyTorch's source index for bilinear resizing
 * with align_corners=False (area_pixel_compute_source_index and its neighbours). */
#ifndef SPIKING_BILINEAR_H
#define SPIKING_BILINEAR_H

#include <stdint.h>

static inline void bilinear_index(int64_t dst, int64_t in_size, float scale, int64_t *i0, int64_t *i1, float *l0,
                                  float *l1)
{
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f)
        src = 0.0f;
    *i0 = (int64_t)src;
    *i1 = *i0 + (*i0 < in_size - 1 ? 1 : 0);
    *l1 = src - (float)*i0;
    *l0 = 1.0f - *l1;
}

#endif
