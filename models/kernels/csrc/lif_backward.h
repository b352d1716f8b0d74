/* The LIF backward kernel, written once for two storage types (included twice by spiking_grad.c,
 * as forward.h by spiking_exact.c). KT is the element type of the incoming and outgoing
 * gradients; the saved charged membranes h are float32 and the recurrence runs in float32 either
 * way, each gradient rounded once on its way out. */

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
