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
 * plm_dequant_rows then to_bf16. The 16 values a block can take, (q - 8) * d rounded once in fp32
 * then to bf16 (what q * d - 8 * d gives too), form a table that one vpermw indexes with the
 * nibbles; it is rebuilt only when the scale group changes. */
TARGET_AVX512BF16 static void i4_to_bf16_avx512(const plm_matrix *w, int r0, int r1, uint16_t *out) {
    const int cols = w->cols, blocks = cols / 32, per_group = w->group / 32;
    const __m512 levels = _mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
    const __m256i mask = _mm256_set1_epi16(0x0f);
    for (int r = r0; r < r1; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)r * (cols / 2);
        const uint16_t *sc = w->scale_f16 + (size_t)r * (cols / w->group);
        uint16_t *o = out + (size_t)(r - r0) * cols;
        __m512i table = _mm512_setzero_si512();
        for (int b = 0; b < blocks; b++) {
            if (b % per_group == 0) /* words 0-15: the bf16 of (q - 8) * d for q = 0..15 */
                table = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(levels, _mm512_set1_ps(_cvtsh_ss(sc[b / per_group])))));
            const __m256i q = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + 16 * b))); /* byte j -> word j */
            const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, mask)), _mm256_srli_epi16(q, 4), 1); /* values 0-15, 16-31 */
            _mm512_storeu_si512((void *)(o + 32 * b), _mm512_permutexvar_epi16(idx, table));
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
