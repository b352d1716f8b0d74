/* LIF backward (surrogate gradient). Compiled with -ffast-math so that expf vectorises: the
 * gradient is compared with a tolerance (1e-5 relative), not bit for bit.
 *
 * h_t = v_{t-1} (1 - 1/tau) + x_t, s_t = H(h_t - v_th) with ds/dh = alpha sig (1 - sig),
 * v_t = (1 - s_t) h_t with the reset not detached:
 * dL/dh_t = dL/ds_t sg_t + dL/dv_t ((1 - s_t) - h_t sg_t); dL/dv_{t-1} = dL/dh_t (1 - 1/tau).
 */
#include <math.h>
#include <stdint.h>

#include "bilinear.h"

#define BLOCK 64

void lif_backward(const float *gs, const float *h, float *gx, int64_t L, int64_t N, int64_t lo, int64_t hi,
                  float tau, float v_th, float alpha)
{
    float carry[BLOCK];
    const float keep = 1.0f - 1.0f / tau;
    for (int64_t n0 = lo; n0 < hi; n0 += BLOCK) {
        const int64_t nb = hi - n0 < BLOCK ? hi - n0 : BLOCK;
        for (int64_t j = 0; j < nb; ++j)
            carry[j] = 0.0f;
        for (int64_t t = L - 1; t >= 0; --t) {
            const float *gt = gs + t * N + n0;
            const float *ht = h + t * N + n0;
            float *ot = gx + t * N + n0;
            for (int64_t j = 0; j < nb; ++j) {
                const float hv = ht[j];
                const float sig = 1.0f / (1.0f + expf(-alpha * (hv - v_th)));
                const float sg = (1.0f - sig) * sig * alpha;
                const float not_spike = hv >= v_th ? 0.0f : 1.0f;
                const float gh = gt[j] * sg + carry[j] * (not_spike - hv * sg);
                ot[j] = gh;
                carry[j] = gh * keep;
            }
        }
    }
}


/* Adjoint of upsample2x_bilinear: gin [P, h, w] from gout [P, 2h, 2w], planes [lo, hi). */
void upsample2x_bilinear_backward(const float *gout, float *gin, int64_t h, int64_t w, int64_t lo, int64_t hi)
{
    const int64_t H = 2 * h, W = 2 * w;
    float row[w > 0 ? w : 1];
    for (int64_t plane = lo; plane < hi; ++plane) {
        float *dst = gin + plane * h * w;
        for (int64_t k = 0; k < h * w; ++k)
            dst[k] = 0.0f;
        for (int64_t Y = 0; Y < H; ++Y) {
            const float *g = gout + (plane * H + Y) * W;
            for (int64_t k = 0; k < w; ++k)
                row[k] = 0.0f;
            for (int64_t X = 0; X < W; ++X) {
                int64_t x0, x1;
                float b0, b1;
                bilinear_index(X, w, 0.5f, &x0, &x1, &b0, &b1);
                row[x0] += b0 * g[X];
                row[x1] += b1 * g[X];
            }
            int64_t y0, y1;
            float a0, a1;
            bilinear_index(Y, h, 0.5f, &y0, &y1, &a0, &a1);
            float *ra = dst + y0 * w, *rb = dst + y1 * w;
            for (int64_t k = 0; k < w; ++k)
                ra[k] += a0 * row[k];
            for (int64_t k = 0; k < w; ++k)
                rb[k] += a1 * row[k];
        }
    }
}
