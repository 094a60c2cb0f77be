/* The AVX512-BF16 prefill GEMM (vdpbf16ps) for bf16 weights, and the float -> bf16 rounding of
 * its inputs. */
#include "kernels_simd.h"

#ifdef PLM_X86
/* ---- AVX-512 BF16 (vdpbf16ps): the prefill GEMM for bf16 / int8 / int4 weights ----------------- */
TARGET_AVX512BF16 static void to_bf16_avx512(const float *x, uint16_t *out, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(out + i), (__m512i)v);
    }
    for (; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* 32 bf16 values at p (the first `left` of them when fewer remain: cols is even, so pairs stay whole). */
TARGET_AVX512BF16 static inline __m512bh load_bf16x32(const uint16_t *p, int left) {
    if (left >= 32) return (__m512bh)_mm512_loadu_si512((const void *)p);
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1u << left) - 1), (const void *)p);
}

/* 4 tokens x 4 rows register tile as gemm_f32_avx512, 32 products per instruction: each lane sums
 * the two products of a pair of columns. */
TARGET_AVX512BF16 static void gemm_bf16_avx512(const uint16_t *wb, int ldw, const uint16_t *xb, int ldx, float *y, int ldy, int n_tok, int n_rows, int cols) {
    int r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const uint16_t *w0 = wb + (size_t)r * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        int t = 0;
        for (; t + 4 <= n_tok; t += 4) {
            const uint16_t *x0 = xb + (size_t)t * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
            __m512 a[16]; /* a[4 * token + row] */
            for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
            for (int c = 0; c < cols; c += 32) {
                const int left = cols - c;
                const __m512bh vw0 = load_bf16x32(w0 + c, left), vw1 = load_bf16x32(w1 + c, left);
                const __m512bh vw2 = load_bf16x32(w2 + c, left), vw3 = load_bf16x32(w3 + c, left);
                __m512bh vx = load_bf16x32(x0 + c, left);
                a[0] = _mm512_dpbf16_ps(a[0], vx, vw0); a[1] = _mm512_dpbf16_ps(a[1], vx, vw1);
                a[2] = _mm512_dpbf16_ps(a[2], vx, vw2); a[3] = _mm512_dpbf16_ps(a[3], vx, vw3);
                vx = load_bf16x32(x1 + c, left);
                a[4] = _mm512_dpbf16_ps(a[4], vx, vw0); a[5] = _mm512_dpbf16_ps(a[5], vx, vw1);
                a[6] = _mm512_dpbf16_ps(a[6], vx, vw2); a[7] = _mm512_dpbf16_ps(a[7], vx, vw3);
                vx = load_bf16x32(x2 + c, left);
                a[8] = _mm512_dpbf16_ps(a[8], vx, vw0); a[9] = _mm512_dpbf16_ps(a[9], vx, vw1);
                a[10] = _mm512_dpbf16_ps(a[10], vx, vw2); a[11] = _mm512_dpbf16_ps(a[11], vx, vw3);
                vx = load_bf16x32(x3 + c, left);
                a[12] = _mm512_dpbf16_ps(a[12], vx, vw0); a[13] = _mm512_dpbf16_ps(a[13], vx, vw1);
                a[14] = _mm512_dpbf16_ps(a[14], vx, vw2); a[15] = _mm512_dpbf16_ps(a[15], vx, vw3);
            }
            for (int j = 0; j < 4; j++) _mm_storeu_ps(y + (size_t)(t + j) * ldy + r, reduce4(a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]));
        }
        for (; t < n_tok; t++) { /* a lone token */
            const uint16_t *x0 = xb + (size_t)t * ldx;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < cols; c += 32) {
                const int left = cols - c;
                const __m512bh vx = load_bf16x32(x0 + c, left);
                a0 = _mm512_dpbf16_ps(a0, vx, load_bf16x32(w0 + c, left));
                a1 = _mm512_dpbf16_ps(a1, vx, load_bf16x32(w1 + c, left));
                a2 = _mm512_dpbf16_ps(a2, vx, load_bf16x32(w2 + c, left));
                a3 = _mm512_dpbf16_ps(a3, vx, load_bf16x32(w3 + c, left));
            }
            _mm_storeu_ps(y + (size_t)t * ldy + r, reduce4(a0, a1, a2, a3));
        }
    }
    for (; r < n_rows; r++) { /* trailing rows */
        const uint16_t *w0 = wb + (size_t)r * ldw;
        for (int t = 0; t < n_tok; t++) {
            const uint16_t *x0 = xb + (size_t)t * ldx;
            __m512 a0 = _mm512_setzero_ps(), z = _mm512_setzero_ps();
            for (int c = 0; c < cols; c += 32) a0 = _mm512_dpbf16_ps(a0, load_bf16x32(x0 + c, cols - c), load_bf16x32(w0 + c, cols - c));
            y[(size_t)t * ldy + r] = _mm_cvtss_f32(reduce4(a0, z, z, z));
        }
    }
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
    k->gemm_bf16 = gemm_bf16_avx512;
    k->to_bf16 = to_bf16_avx512;
    k->i4_to_bf16 = i4_to_bf16_avx512;
}
#endif
