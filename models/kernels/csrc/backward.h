/* The NI-LIF and VLIF backward kernels, written once for two storage types (included twice by
 * spiking_exact.c, as forward.h). KT is the element type of the incoming and outgoing gradients;
 * the recurrence runs in float32 either way and each gradient is rounded once on its way out, so
 * a bfloat16 call writes what the float kernel writes, rounded to bfloat16 (what autograd gives
 * when the float kernel runs between conversions). The masks are uint8 in both. */

/* NI-LIF backward: g_t = gs_t * mask_t / 4 + 0.25 * g_{t+1}; dL/dx_t = g_t. */
static void KNAME(nilif_backward_part)(const KT *gs, const uint8_t *mask, KT *gx, int64_t L, int64_t N,
                                       int64_t lo, int64_t hi)
{
    float g[BLOCK];
    for (int64_t n0 = lo; n0 < hi; n0 += BLOCK) {
        const int64_t nb = hi - n0 < BLOCK ? hi - n0 : BLOCK;
        for (int64_t t = L - 1; t >= 0; --t) {
            const KT *gt = gs + t * N + n0;
            const uint8_t *mt = mask + t * N + n0;
            KT *ot = gx + t * N + n0;
            for (int64_t j = 0; j < nb; ++j) {
                const float local = KLOAD(gt[j]) * (float)mt[j] / 4.0f;
                g[j] = t == L - 1 ? local : local + g[j] * 0.25f;
                ot[j] = KSTORE(g[j]);
            }
        }
    }
}

/* Backward of vlif_forward: gs and mask in the spike layout, gx in the input layout. */
static void KNAME(vlif_backward_part)(const KT *gs, const uint8_t *mask, KT *gx, int64_t T, int64_t P,
                                      int64_t H, int64_t W, int64_t r, int64_t lo, int64_t hi)
{
    const int64_t h = H / r, w = W / r, rr = r * r, L = T * rr;
    float g[BLOCK];
    for (int64_t row = lo; row < hi; ++row) {
        const int64_t plane = row / h, y = row % h;
        for (int64_t x0 = 0; x0 < w; x0 += BLOCK) {
            const int64_t nb = w - x0 < BLOCK ? w - x0 : BLOCK;
            for (int64_t l = L - 1; l >= 0; --l) {
                const int64_t t = l / rr, p = l % rr, i = p / r, j = p % r;
                const int64_t o = (((t * P + plane) * rr + p) * h + y) * w + x0;
                KT *gout = gx + ((t * P + plane) * H + y * r + i) * W + x0 * r + j;
                for (int64_t k = 0; k < nb; ++k) {
                    const float local = KLOAD(gs[o + k]) * (float)mask[o + k] / 4.0f;
                    g[k] = l == L - 1 ? local : local + g[k] * 0.25f;
                    gout[k * r] = KSTORE(g[k]);
                }
            }
        }
    }
}

/* The entry points: the same functions over the parts of a call (parts.h). */
void KNAME(nilif_backward)(const KT *gs, const uint8_t *mask, KT *gx, int64_t L, int64_t N, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(nilif_backward_part)(gs, mask, gx, L, N, LO(k), HI(k));
}

void KNAME(vlif_backward)(const KT *gs, const uint8_t *mask, KT *gx, int64_t T, int64_t P, int64_t H, int64_t W,
                          int64_t r, PARTS)
{
    FOR_EACH_PART(k)
        KNAME(vlif_backward_part)(gs, mask, gx, T, P, H, W, r, LO(k), HI(k));
}
