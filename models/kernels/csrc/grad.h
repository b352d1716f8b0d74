/* The LIF backward, the x2 resize's adjoint and SDEM's mixing backward, written once for two
 * storage types (included twice by spiking_grad.c, as forward.h by spiking_exact.c). KT is the
 * element type of the incoming and outgoing gradients and of SDEM's inputs; LIF's saved charged
 * membranes h are float32. The arithmetic is float32 either way, each gradient rounded once on
 * its way out. */

static void KNAME(lif_backward_part)(const KT *gs, const float *h, KT *gx, int64_t L, int64_t N, int64_t lo,
                                     int64_t hi, float tau, float v_th, float alpha)
{
    float carry[BLOCK];
    const float keep = 1.0f - 1.0f / tau;
    for (int64_t n0 = lo; n0 < hi; n0 += BLOCK) {
        const int64_t nb = hi - n0 < BLOCK ? hi - n0 : BLOCK;
        for (int64_t j = 0; j < nb; ++j)
            carry[j] = 0.0f;
        for (int64_t t = L - 1; t >= 0; --t) {
            const KT *gt = gs + t * N + n0;
            const float *ht = h + t * N + n0;
            KT *ot = gx + t * N + n0;
            for (int64_t j = 0; j < nb; ++j) {
                const float hv = ht[j];
                const float sig = 1.0f / (1.0f + expf(-alpha * (hv - v_th)));
                const float sg = (1.0f - sig) * sig * alpha;
                const float not_spike = hv >= v_th ? 0.0f : 1.0f;
                const float gh = KLOAD(gt[j]) * sg + carry[j] * (not_spike - hv * sg);
                ot[j] = KSTORE(gh);
                carry[j] = gh * keep;
            }
        }
    }
}

void KNAME(lif_backward)(const KT *gs, const float *h, KT *gx, int64_t L, int64_t N, PARTS, float tau,
                         float v_th, float alpha)
{
    FOR_EACH_PART(k)
        KNAME(lif_backward_part)(gs, h, gx, L, N, LO(k), HI(k), tau, v_th, alpha);
}

/* Adjoint of upsample2x_bilinear: gin [P, h, w] from gout [P, 2h, 2w], planes [lo, hi).
 * A gather, not a scatter: each input row first sums its (up to) four output rows, then each
 * input column its four output columns, with weights 1/4, 3/4, 3/4, 1/4 away from the edges.
 * rows[q] is output row 2y-1+q as float32 (KROW: the row itself for float, a widened copy for
 * bfloat16), NULL outside the plane. */
static void KNAME(upsample2x_bilinear_backward_part)(const KT *gout, KT *gin, int64_t h, int64_t w, int64_t lo,
                                                     int64_t hi)
{
    const int64_t H = 2 * h, W = 2 * w;
    float row[W > 0 ? W : 1], wide[4 * (W > 0 ? W : 1)];
    (void)wide;
    for (int64_t plane = lo; plane < hi; ++plane) {
        const KT *g = gout + plane * H * W;
        for (int64_t y = 0; y < h; ++y) {
            const float *rows[4];
            for (int64_t q = 0; q < 4; ++q) {
                const int64_t Y = 2 * y - 1 + q;
                rows[q] = Y >= 0 && Y < H ? KROW(g + Y * W, wide + q * W, W) : 0;
            }
            if (y >= 1 && y < h - 1) {
                for (int64_t X = 0; X < W; ++X)
                    row[X] = 0.25f * (rows[0][X] + rows[3][X]) + 0.75f * (rows[1][X] + rows[2][X]);
            } else {
                for (int64_t X = 0; X < W; ++X) {
                    float acc = 0.0f;
                    for (int64_t q = 0; q < 4; ++q)
                        if (rows[q])
                            acc += tap_weight(2 * y - 1 + q, y, h) * rows[q][X];
                    row[X] = acc;
                }
            }
            KT *dst = gin + (plane * h + y) * w;
            for (int64_t k = 1; k < w - 1; ++k)
                dst[k] = KSTORE(0.25f * (row[2 * k - 1] + row[2 * k + 2]) + 0.75f * (row[2 * k] + row[2 * k + 1]));
            dst[0] = KSTORE(adjoint_at(row, 0, w, 1));
            if (w > 1)
                dst[w - 1] = KSTORE(adjoint_at(row, w - 1, w, 1));
        }
    }
}

void KNAME(upsample2x_bilinear_backward)(const KT *gout, KT *gin, int64_t h, int64_t w, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(upsample2x_bilinear_backward_part)(gout, gin, h, w, LO(k), HI(k));
}

/* SDEM's mixing out = high * h + low * (u - h) + u * h, backward for the elements [lo, hi):
 * dL/du = g (low + h), dL/dh = g (high - low + u), and the two scalars' partial sums
 * sums[0] = sum g h, sums[1] = sum g (u - h), accumulated in double. */
static void KNAME(sdem_mix_backward_part)(const KT *g, const KT *u, const KT *h, KT *gu, KT *gh, double *sums,
                                          float high, float low, int64_t lo, int64_t hi)
{
    double s_high = 0.0, s_low = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
        const float gv = KLOAD(g[i]), uv = KLOAD(u[i]), hv = KLOAD(h[i]);
        gu[i] = KSTORE(gv * (low + hv));
        gh[i] = KSTORE(gv * (high - low + uv));
        s_high += (double)(gv * hv);
        s_low += (double)(gv * (uv - hv));
    }
    sums[0] = s_high;
    sums[1] = s_low;
}

/* sums: [nparts, 2], the partial sums of each part. */
void KNAME(sdem_mix_backward)(const KT *g, const KT *u, const KT *h, KT *gu, KT *gh, double *sums, float high,
                              float low, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(sdem_mix_backward_part)(g, u, h, gu, gh, sums + 2 * k, high, low, LO(k), HI(k));
}
