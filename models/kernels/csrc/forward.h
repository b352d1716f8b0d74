/* The forward kernels, written once for two storage types (included twice by spiking_exact.c).
 *
 * KT is the element type of x, the spikes and the resized planes; KLOAD widens one element to
 * float and KSTORE rounds a float back (identities for float; for bfloat16 the exact widening
 * and PyTorch's round-to-nearest-even); KSPIKE stores a spike, which bfloat16 holds exactly (its
 * upper 16 bits: no rounding to do, and about half the time of KSTORE in the NI-LIF loop). All arithmetic is float32 either way, so a bfloat16
 * call computes what the float kernel computes on the widened input; spikes (multiples of
 * 1/4) store exactly. KNAME(f) names the instance. Membranes (v0, v_out, h_out) and masks are
 * float32 / uint8 in both. */

/* NI-LIF forward: s_t = round(clamp(m_t, 0, 4)) / 4, m_t = (m_{t-1} - s_{t-1}) * 0.25 + x_t.
 * mask (may be NULL) receives 0 <= m_t <= 4 for the backward. */
static void KNAME(nilif_forward_part)(const KT *x, KT *s, uint8_t *mask, int64_t L, int64_t N, int64_t lo, int64_t hi)
{
    float m[BLOCK], sp[BLOCK];
    for (int64_t n0 = lo; n0 < hi; n0 += BLOCK) {
        const int64_t nb = hi - n0 < BLOCK ? hi - n0 : BLOCK;
        for (int64_t t = 0; t < L; ++t) {
            const KT *xt = x + t * N + n0;
            KT *st = s + t * N + n0;
            for (int64_t j = 0; j < nb; ++j) {
                const float xv = KLOAD(xt[j]);
                const float mm = t ? (m[j] - sp[j]) * 0.25f + xv : xv;
                const float q = nilif_spike(mm);
                m[j] = mm;
                sp[j] = q;
                st[j] = KSPIKE(q);
            }
            if (mask) {
                uint8_t *mt = mask + t * N + n0;
                for (int64_t j = 0; j < nb; ++j)
                    mt[j] = (m[j] >= 0.0f) & (m[j] <= 4.0f);
            }
        }
    }
}

/* LIF forward as spikingjelly 2.0.0 computes it (decay_input=False, hard reset to 0):
 * h = v - (v - 0) / tau + x; s = h >= v_th; v = s * 0 + (1 - s) * h.
 * h_out (may be NULL) keeps the charged membranes for the backward. */
static void KNAME(lif_forward_part)(const KT *x, const float *v0, KT *s, float *h_out, float *v_out, int64_t L,
                                    int64_t N, int64_t lo, int64_t hi, float tau, float v_th)
{
    float v[BLOCK];
    for (int64_t n0 = lo; n0 < hi; n0 += BLOCK) {
        const int64_t nb = hi - n0 < BLOCK ? hi - n0 : BLOCK;
        for (int64_t j = 0; j < nb; ++j)
            v[j] = v0[n0 + j];
        for (int64_t t = 0; t < L; ++t) {
            const KT *xt = x + t * N + n0;
            KT *st = s + t * N + n0;
            float *ht = h_out ? h_out + t * N + n0 : 0;
            for (int64_t j = 0; j < nb; ++j) {
                const float h = v[j] - (v[j] - 0.0f) / tau + KLOAD(xt[j]);
                const float spike = h >= v_th ? 1.0f : 0.0f;
                v[j] = spike * 0.0f + (1.0f - spike) * h;
                st[j] = KSTORE(spike);
                if (ht)
                    ht[j] = h;
            }
        }
        for (int64_t j = 0; j < nb; ++j)
            v_out[n0 + j] = v[j];
    }
}

/* VLIF's spiking part with the patch-to-time reordering folded in (SPEC 1.3 steps 1-4).
 * x: [T, P, H, W] (P = B*C planes); s and mask: [T, P, r*r, h, w] with h = H/r, w = W/r, which
 * is the pixel-unshuffle layout [T*B, C*r*r, h, w] VLIF resizes. The NI-LIF sequence of the
 * half-resolution position (plane, y, x) walks l = t*r*r + i*r + j over the input pixels
 * x[t, plane, y*r + i, x*r + j]. Handles the half-resolution rows [lo, hi) of P*h. */
static void KNAME(vlif_forward_part)(const KT *x, KT *s, uint8_t *mask, int64_t T, int64_t P, int64_t H, int64_t W,
                                     int64_t r, int64_t lo, int64_t hi)
{
    const int64_t h = H / r, w = W / r, rr = r * r;
    float m[BLOCK], sp[BLOCK];
    for (int64_t row = lo; row < hi; ++row) {
        const int64_t plane = row / h, y = row % h;
        for (int64_t x0 = 0; x0 < w; x0 += BLOCK) {
            const int64_t nb = w - x0 < BLOCK ? w - x0 : BLOCK;
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t p = 0; p < rr; ++p) {
                    const int64_t i = p / r, j = p % r;
                    const KT *xin = x + ((t * P + plane) * H + y * r + i) * W + x0 * r + j;
                    const int64_t o = (((t * P + plane) * rr + p) * h + y) * w + x0;
                    const int first = t == 0 && p == 0;
                    for (int64_t k = 0; k < nb; ++k) {
                        const float xv = KLOAD(xin[k * r]);
                        const float mm = first ? xv : (m[k] - sp[k]) * 0.25f + xv;
                        const float q = nilif_spike(mm);
                        m[k] = mm;
                        sp[k] = q;
                        s[o + k] = KSPIKE(q);
                    }
                    if (mask)
                        for (int64_t k = 0; k < nb; ++k)
                            mask[o + k] = (m[k] >= 0.0f) & (m[k] <= 4.0f);
                }
            }
        }
    }
}

/* Bilinear x2 resize (align_corners=False) of planes [lo, hi) of in [P, h, w] -> out [P, 2h, 2w].
 * Evaluated rows first; for VLIF's spikes (multiples of 1/4 in [0, 1]) every product and sum
 * is exact in float32 (weights 0, 1/4, 3/4, 1), so the result equals F.interpolate bit for
 * bit whatever its evaluation order. All four taps are always summed, as PyTorch does, so
 * NaN propagates identically. */
static void KNAME(upsample2x_bilinear_part)(const KT *in, KT *out, int64_t h, int64_t w, int64_t lo, int64_t hi)
{
    const int64_t H = 2 * h, W = 2 * w;
    float row[w > 0 ? w : 1];
    for (int64_t plane = lo; plane < hi; ++plane) {
        const KT *src = in + plane * h * w;
        for (int64_t Y = 0; Y < H; ++Y) {
            int64_t y0, y1;
            float a0, a1;
            bilinear_index(Y, h, 0.5f, &y0, &y1, &a0, &a1);
            const KT *ra = src + y0 * w, *rb = src + y1 * w;
            for (int64_t k = 0; k < w; ++k)
                row[k] = a0 * KLOAD(ra[k]) + a1 * KLOAD(rb[k]);
            KT *o = out + (plane * H + Y) * W;
            /* columns: 2k -> taps (k-1, k) weights (1/4, 3/4); 2k+1 -> (k, k+1) weights (3/4, 1/4) */
            for (int64_t k = 1; k < w - 1; ++k) {
                o[2 * k] = KSTORE(0.25f * row[k - 1] + 0.75f * row[k]);
                o[2 * k + 1] = KSTORE(0.75f * row[k] + 0.25f * row[k + 1]);
            }
            const int64_t edges[4] = {0, 1, W - 2, W - 1};
            for (int e = 0; e < 4; ++e) {
                const int64_t X = edges[e];
                if (X < 0 || X >= W || (X >= 2 && X < W - 2))
                    continue;
                int64_t x0, x1;
                float b0, b1;
                bilinear_index(X, w, 0.5f, &x0, &x1, &b0, &b1);
                o[X] = KSTORE(b0 * row[x0] + b1 * row[x1]);
            }
        }
    }
}

/* The entry points: the same functions over the parts of a call (parts.h). */
void KNAME(nilif_forward)(const KT *x, KT *s, uint8_t *mask, int64_t L, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(nilif_forward_part)(x, s, mask, L, N, LO(k), HI(k));
}

void KNAME(lif_forward)(const KT *x, const float *v0, KT *s, float *h_out, float *v_out, int64_t L, int64_t N,
                        PARTS, float tau, float v_th)
{
    FOR_EACH_PART(k)
        KNAME(lif_forward_part)(x, v0, s, h_out, v_out, L, N, LO(k), HI(k), tau, v_th);
}

void KNAME(vlif_forward)(const KT *x, KT *s, uint8_t *mask, int64_t T, int64_t P, int64_t H, int64_t W, int64_t r,
                         PARTS)
{
    FOR_EACH_PART(k)
        KNAME(vlif_forward_part)(x, s, mask, T, P, H, W, r, LO(k), HI(k));
}

void KNAME(upsample2x_bilinear)(const KT *in, KT *out, int64_t h, int64_t w, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(upsample2x_bilinear_part)(in, out, h, w, LO(k), HI(k));
}
