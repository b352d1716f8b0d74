/* LIF backward (surrogate gradient) and the x2 resize's adjoint, with bfloat16 instances
 * (grad.h); SDEM's mixing and the gated products' backward. Compiled with
 * -ffast-math so that expf vectorises: the gradient is compared with a tolerance (1e-5
 * relative), not bit for bit.
 *
 * h_t = v_{t-1} (1 - 1/tau) + x_t, s_t = H(h_t - v_th) with ds/dh = alpha sig (1 - sig),
 * v_t = (1 - s_t) h_t with the reset not detached:
 * dL/dh_t = dL/ds_t sg_t + dL/dv_t ((1 - s_t) - h_t sg_t); dL/dv_{t-1} = dL/dh_t (1 - 1/tau).
 */
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "bilinear.h"
#include "parts.h"

#define BLOCK 64

/* Weight of source index k in the bilinear sample at destination index X (0 where it is no tap). */
static inline float tap_weight(int64_t X, int64_t k, int64_t size)
{
    int64_t i0, i1;
    float l0, l1;
    bilinear_index(X, size, 0.5f, &i0, &i1, &l0, &l1);
    return (i0 == k ? l0 : 0.0f) + (i1 == k ? l1 : 0.0f);
}

/* Adjoint of one x2 axis at source index k: only destinations 2k-1 .. 2k+2 sample k. */
static inline float adjoint_at(const float *g, int64_t k, int64_t size, int64_t stride)
{
    const int64_t n = 2 * size;
    float acc = 0.0f;
    for (int64_t X = 2 * k - 1; X <= 2 * k + 2; ++X)
        if (X >= 0 && X < n)
            acc += tap_weight(X, k, size) * g[X * stride];
    return acc;
}

#define KT float
#define KLOAD(v) (v)
#define KSTORE(v) (v)
#define KROW(row, buffer, n) (row)
#define KNAME(f) f
#include "grad.h"
#undef KT
#undef KLOAD
#undef KSTORE
#undef KROW
#undef KNAME

#define KT bf16
#define KLOAD(v) bf16_to_float(v)
#define KSTORE(v) float_to_bf16(v)
#define KROW(row, buffer, n) bf16_row_to_float(row, buffer, n)
#define KNAME(f) f##_bf16
#include "grad.h"
#undef KT
#undef KLOAD
#undef KSTORE
#undef KROW
#undef KNAME

/* Backward of the attention's gated product y = gate * x in training (models/kernels/gating.py),
 * x [P, C, S] (P = T*B planes of C channels of S = H*W pixels), for the planes [lo, hi): gx = g * gate
 * (the product autograd forms, the same bits), and the gate's gradient, g * x summed in float64
 * over each plane's share of the gate's broadcast. mode 0 (time gate): one gate value per plane,
 * sums [P]; mode 1 (channel gate, gate [B, C]): sums [P, C]; mode 2 (spatial gate, gate [B, S]):
 * sums [P, S]. Plane p belongs to image p % B; the caller adds the planes of each gate value. */
static void gated_product_backward_part(const float *g, const float *x, const float *gate, float *gx,
                                        double *sums, int64_t B, int64_t C, int64_t S, int64_t mode,
                                        int64_t lo, int64_t hi)
{
    for (int64_t p = lo; p < hi; ++p) {
        const float *gp = g + p * C * S, *xp = x + p * C * S;
        float *op = gx + p * C * S;
        const int64_t b = p % B;
        if (mode == 0) {
            const float gv = gate[p];
            double s = 0.0;
            for (int64_t i = 0; i < C * S; ++i) {
                op[i] = gp[i] * gv;
                s += (double)(gp[i] * xp[i]);
            }
            sums[p] = s;
        } else if (mode == 1) {
            for (int64_t c = 0; c < C; ++c) {
                const float gv = gate[b * C + c];
                double s = 0.0;
                for (int64_t i = c * S; i < (c + 1) * S; ++i) {
                    op[i] = gp[i] * gv;
                    s += (double)(gp[i] * xp[i]);
                }
                sums[p * C + c] = s;
            }
        } else {
            const float *gv = gate + b * S;
            double *sp = sums + p * S;
            for (int64_t i = 0; i < S; ++i)
                sp[i] = 0.0;
            for (int64_t c = 0; c < C; ++c)
                for (int64_t i = 0; i < S; ++i) {
                    op[c * S + i] = gp[c * S + i] * gv[i];
                    sp[i] += (double)(gp[c * S + i] * xp[c * S + i]);
                }
        }
    }
}

/* The entry points: the functions above over the parts of a call (parts.h). */
void gated_product_backward(const float *g, const float *x, const float *gate, float *gx, double *sums, int64_t B,
                            int64_t C, int64_t S, int64_t mode, PARTS)
{
    FOR_EACH_PART(k)
        gated_product_backward_part(g, x, gate, gx, sums, B, C, S, mode, LO(k), HI(k));
}
