/* AVX512-BF16: float -> bf16 rounding and int4 rows dequantised to bf16, what the bf16 prefill
 * GEMM (gemm_xt_avx512.c, vdpbf16ps) takes. */
#include "kernels_simd.h"

#ifdef PLM_X86
/* ---- AVX-512 BF16: the inputs of the bf16 prefill GEMM (gemm_xt_avx512.c) -------------------- */
TARGET_AVX512BF16 static void to_bf16_avx512(const float *x, uint16_t *out, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(out + i), (__m512i)v);
    }
    for (; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* Rows [r0, r1) of an int4 matrix as bf16 (r1 - r0, cols): (q - 8) * scale per 32-value block, as
 * plm_dequant_rows then to_bf16 (q * d - 8 * d is exact in fp32, then one rounding). */
TARGET_AVX512BF16 static void i4_to_bf16_avx512(const plm_matrix *w, int r0, int r1, uint16_t *out) {
    const int cols = w->cols, blocks = cols / 32, per_group = w->group / 32;
    const __m128i mask = _mm_set1_epi8(0x0f);
    for (int r = r0; r < r1; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)r * (cols / 2);
        const uint16_t *sc = w->scale_f16 + (size_t)r * (cols / w->group);
        uint16_t *o = out + (size_t)(r - r0) * cols;
        for (int b = 0; b < blocks; b++) {
            const __m128i p = _mm_loadu_si128((const __m128i *)(src + 16 * b));
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(sc[b / per_group])), d8 = _mm512_mul_ps(d, _mm512_set1_ps(8.f));
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(p, mask)));                    /* values 0-15 */
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(p, 4), mask))); /* 16-31 */
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_fmsub_ps(hi, d, d8), _mm512_fmsub_ps(lo, d, d8));
            _mm512_storeu_si512((void *)(o + 32 * b), (__m512i)v);
        }
    }
}

void plm_fill_avx512_bf16(plm_kernels *k) {
    k->name = "avx512-bf16";
    k->to_bf16 = to_bf16_avx512;
    k->i4_to_bf16 = i4_to_bf16_avx512;
    plm_fill_avx512_bf16_xt(k);
}
#endif
