/* bfloat16 storage: the upper 16 bits of a float32. Widening is exact; narrowing rounds to
 * nearest even with NaN -> 0x7FC0, as c10::BFloat16 does. The NaN test is on the bits, so that it
 * holds under -ffast-math too (spiking_grad.c). */
#ifndef SPIKING_BF16_H
#define SPIKING_BF16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf16_to_float(bf16 v)
{
    const uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline bf16 float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (bf16)((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded); /* a select, which vectorises */
}

/* n bfloat16 values widened into buffer; returns buffer. */
static inline const float *bf16_row_to_float(const bf16 *row, float *buffer, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        buffer[i] = bf16_to_float(row[i]);
    return buffer;
}

/* A value bfloat16 holds exactly (a spike: 0, 1/4, ..., 1, or NaN): its upper 16 bits. */
static inline bf16 spike_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (bf16)(u >> 16);
}

#endif
