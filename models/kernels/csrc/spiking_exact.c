/* Exact CPU kernels of the spiking neurons (see models/kernels/*.py for the equations).
 *
 * Compiled with -ffp-contract=off and without -ffast-math: every operation rounds exactly as
 * the reference PyTorch operations do, so spikes, membranes and NI-LIF gradients are
 * bit-identical. Tensors are row-major [L, N] float32 (step-major); each function's serial
 * body (suffix _part) handles the columns [lo, hi), and its entry point runs the parts of a call
 * (parts.h) in parallel. Columns are processed in blocks of BLOCK, whose state stays in
 * registers / L1 for all steps. The forward kernels (forward.h) and the NI-LIF and VLIF backward
 * kernels (backward.h) also have bfloat16 instances (suffix _bf16) for mixed precision: bfloat16
 * tensors in and out, float32 arithmetic in between.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "bilinear.h"
#include "parts.h"

#define BLOCK 64

/* NI-LIF's quantiser: membrane mm -> spike round(clamp(mm, 0, 4)) / 4. torch.clamp gives +0 for -0
 * and keeps NaN; nearbyintf rounds half to even, as torch.round. */
static inline float nilif_spike(float mm)
{
    float c = mm <= 0.0f ? 0.0f : mm;
    c = c > 4.0f ? 4.0f : c;
    return nearbyintf(c) / 4.0f;
}

#define KT float
#define KLOAD(v) (v)
#define KSTORE(v) (v)
#define KSPIKE(v) (v)
#define KNAME(f) f
#include "forward.h"
#include "backward.h"
#undef KT
#undef KLOAD
#undef KSTORE
#undef KSPIKE
#undef KNAME

#define KT bf16
#define KLOAD(v) bf16_to_float(v)
#define KSTORE(v) float_to_bf16(v)
#define KSPIKE(v) spike_to_bf16(v)
#define KNAME(f) f##_bf16
#include "forward.h"
#include "backward.h"
#undef KT
#undef KLOAD
#undef KSTORE
#undef KSPIKE
#undef KNAME

/* The attention gates' pooling in bfloat16 inference: mean and max in one pass, float32 sums.
 * max propagates NaN as torch.amax does. */
static inline float max_nan(float m, float v)
{
    return (v > m || v != v) ? v : m;
}

/* Mean and max of each row [lo, hi) of x [R, N]: LANES running sums and maxima per row, each
 * block of LANES elements widened first (so that the compiler vectorises the three loops). */
static void row_mean_max_bf16_part(const bf16 *x, float *mean, float *max, int64_t N, int64_t lo, int64_t hi)
{
    enum { LANES = 32 };
    for (int64_t r = lo; r < hi; ++r) {
        const bf16 *p = x + r * N;
        float s[LANES], m[LANES], v[LANES];
        for (int j = 0; j < LANES; ++j) {
            s[j] = 0.0f;
            m[j] = -INFINITY;
        }
        int64_t k = 0;
        for (; k + LANES <= N; k += LANES) {
            for (int j = 0; j < LANES; ++j)
                v[j] = bf16_to_float(p[k + j]);
            for (int j = 0; j < LANES; ++j)
                s[j] += v[j];
            for (int j = 0; j < LANES; ++j)
                m[j] = max_nan(m[j], v[j]);
        }
        for (int j = 0; k + j < N; ++j) {
            s[j] += bf16_to_float(p[k + j]);
            m[j] = max_nan(m[j], bf16_to_float(p[k + j]));
        }
        float total = 0.0f, peak = -INFINITY;
        for (int j = 0; j < LANES; ++j) {
            total += s[j];
            peak = max_nan(peak, m[j]);
        }
        mean[r] = total / (float)N;
        max[r] = peak;
    }
}

/* Mean and max over the R rows of x [B, R, N] for the columns [lo, hi) of the flattened [B, N]. */
static void col_mean_max_bf16_part(const bf16 *x, float *mean, float *max, int64_t R, int64_t N, int64_t lo,
                                   int64_t hi)
{
    for (int64_t c0 = lo; c0 < hi;) {
        const int64_t b = c0 / N, n0 = c0 % N;
        const int64_t n1 = (b + 1) * N < hi ? N : hi - b * N;
        const bf16 *p = x + b * R * N;
        float *s = mean + b * N, *m = max + b * N;
        for (int64_t n = n0; n < n1; ++n) {
            s[n] = 0.0f;
            m[n] = -INFINITY;
        }
        for (int64_t r = 0; r < R; ++r)
            for (int64_t n = n0; n < n1; ++n) {
                const float v = bf16_to_float(p[r * N + n]);
                s[n] += v;
                m[n] = max_nan(m[n], v);
            }
        for (int64_t n = n0; n < n1; ++n)
            s[n] /= (float)R;
        c0 = b * N + n1;
    }
}

/* The attention gates' max with its index in training (models/kernels/pooling.py, GatePool): the
 * values and the index torch.max(dim) gives, the first of tied maxima, the first NaN where there
 * is one. Max is exact in any order, so each row is reduced in chunks of CHUNK elements with LANES
 * vector maxima, and only the first chunk holding the row's maximum is searched for its index. */
static void row_max_first_part(const float *x, float *peak, int64_t *at, int64_t N, int64_t lo, int64_t hi)
{
    enum { LANES = 64, CHUNK = 4096 };
    for (int64_t r = lo; r < hi; ++r) {
        const float *p = x + r * N;
        float best = p[0];
        int64_t start = 0, found = -1;
        for (int64_t k = 0; k < N && found < 0; k += CHUNK) {
            const int64_t nb = N - k < CHUNK ? N - k : CHUNK;
            float m[LANES];
            for (int j = 0; j < LANES; ++j)
                m[j] = p[k];
            int64_t i = 0;
            for (; i + LANES <= nb; i += LANES)
                for (int j = 0; j < LANES; ++j)
                    m[j] = max_nan(m[j], p[k + i + j]);
            for (int j = 0; i + j < nb; ++j)
                m[j] = max_nan(m[j], p[k + i + j]);
            float bm = m[0];
            for (int j = 1; j < LANES; ++j)
                bm = max_nan(bm, m[j]);
            if (bm != bm) {  /* the first NaN is the result */
                for (int64_t j = k;; ++j)
                    if (p[j] != p[j]) {
                        found = j;
                        break;
                    }
            } else if (bm > best) {
                best = bm;
                start = k;
            }
        }
        for (int64_t i = start; found < 0; i += LANES) {  /* the first block of LANES holding it */
            const int64_t nb = N - i < LANES ? N - i : LANES;
            int hit = 0;
            for (int64_t j = 0; j < nb; ++j)
                hit |= p[i + j] == best;
            if (hit)
                for (int64_t j = i;; ++j)
                    if (p[j] == best) {
                        found = j;
                        break;
                    }
        }
        peak[r] = p[found];
        at[r] = found;
    }
}

/* Max over dim 1 of x [B, R, N] with its index, for the columns [lo, hi) of the flattened [B, N]. */
static void col_max_first_part(const float *x, float *peak, int64_t *at, int64_t R, int64_t N, int64_t lo,
                               int64_t hi)
{
    enum { LANES = 512 };
    for (int64_t c = lo; c < hi;) {
        const int64_t b = c / N, n0 = c % N;
        const int64_t n1 = (b + 1) * N < hi ? N : hi - b * N;
        const int64_t nb = n1 - n0 < LANES ? n1 - n0 : LANES;
        const float *p = x + b * R * N + n0;
        float m[LANES];
        int32_t a[LANES];
        for (int64_t j = 0; j < nb; ++j) {
            m[j] = p[j];
            a[j] = 0;
        }
        for (int64_t r = 1; r < R; ++r)
            for (int64_t j = 0; j < nb; ++j) {
                const float v = p[r * N + j];
                const int take = v > m[j] || (v != v && m[j] == m[j]);
                m[j] = take ? v : m[j];
                a[j] = take ? (int32_t)r : a[j];
            }
        for (int64_t j = 0; j < nb; ++j) {
            peak[b * N + n0 + j] = m[j];
            at[b * N + n0 + j] = a[j];
        }
        c = b * N + n0 + nb;
    }
}

/* SDEM's mixing in bfloat16 inference: out = high * h + low * (u - h) + u * h for the elements
 * [lo, hi), in float32 as PyTorch evaluates the expression on the widened inputs, rounded once. */
static void sdem_mix_bf16_part(const bf16 *u, const bf16 *h, bf16 *out, float high, float low, int64_t lo,
                               int64_t hi)
{
    for (int64_t i = lo; i < hi; ++i) {
        const float uv = bf16_to_float(u[i]), hv = bf16_to_float(h[i]);
        out[i] = float_to_bf16(high * hv + low * (uv - hv) + uv * hv);
    }
}

/* SDEM's mixing in float32: out = high * h + low * (u - h) + u * h for the elements
 * [lo, hi), evaluated as PyTorch evaluates the expression (no contraction): the same bits. */
static void sdem_mix_part(const float *u, const float *h, float *out, float high, float low, int64_t lo, int64_t hi)
{
    for (int64_t i = lo; i < hi; ++i) {
        const float uv = u[i], hv = h[i];
        out[i] = high * hv + low * (uv - hv) + uv * hv;
    }
}

/* The entry points: the functions above over the parts of a call (parts.h). */
void row_mean_max_bf16(const bf16 *x, float *mean, float *max, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        row_mean_max_bf16_part(x, mean, max, N, LO(k), HI(k));
}

void col_mean_max_bf16(const bf16 *x, float *mean, float *max, int64_t R, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        col_mean_max_bf16_part(x, mean, max, R, N, LO(k), HI(k));
}

void row_max_first(const float *x, float *peak, int64_t *at, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        row_max_first_part(x, peak, at, N, LO(k), HI(k));
}

void col_max_first(const float *x, float *peak, int64_t *at, int64_t R, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        col_max_first_part(x, peak, at, R, N, LO(k), HI(k));
}

void sdem_mix_bf16(const bf16 *u, const bf16 *h, bf16 *out, float high, float low, PARTS)
{
    FOR_EACH_PART(k)
        sdem_mix_bf16_part(u, h, out, high, low, LO(k), HI(k));
}

void sdem_mix(const float *u, const float *h, float *out, float high, float low, PARTS)
{
    FOR_EACH_PART(k)
        sdem_mix_part(u, h, out, high, low, LO(k), HI(k));
}

/* 1 where this library was built with OpenMP (its entry points run their parts in parallel). */
int kernels_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
