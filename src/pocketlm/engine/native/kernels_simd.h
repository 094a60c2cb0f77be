/* Private to the kernel files: target attributes, prefetch, shared inline helpers, and the
 * per-ISA kernel tables (kernels_avx2.c, kernels_avx512.c) that plm_select_kernels picks from. */
#ifndef PLM_KERNELS_SIMD_H
#define PLM_KERNELS_SIMD_H

#include <string.h>

#include "plm.h"

#if defined(__x86_64__) || defined(__i386__)
#define PLM_X86 1
#include <immintrin.h>
#endif

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

void plm_quantize_tables(plm_qvec *out); /* the lane-expanded views of plm_qvec from q, scale, bsum */

/* exp(x) as Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial): within
 * 2 ulp of expf for x in [-87, 88]; below that (only x - max of a softmax gets here) it flushes
 * towards 0, as expf does. */
#define EXP_POLY(P, R, MUL, ADD)                                                                 \
    P = ADD(MUL(P, R), 1.3981999507E-3f); P = ADD(MUL(P, R), 8.3334519073E-3f);                 \
    P = ADD(MUL(P, R), 4.1665795894E-2f); P = ADD(MUL(P, R), 1.6666665459E-1f);                 \
    P = ADD(MUL(P, R), 5.0000001201E-1f)

#ifdef PLM_X86
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,f16c")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma,avx2,f16c")))

/* Decode streams each weight matrix once from memory. The hardware prefetchers alone left one core
 * at 15-25 GB/s on a 31 GB/s machine (they stop at page edges and lose short, interleaved rows);
 * asking for the line this many bytes ahead of each row's read point brought int8 from 17 to
 * 28-31 GB/s and every other format a few GB/s (measured 4-32 KiB: 8-16 KiB best everywhere).
 * A prefetch past a matrix's end is harmless (it never faults). */
#ifndef PF_AHEAD /* -DPF_AHEAD=N to sweep it (benchmarks/native/gemv_bench.c) */
#define PF_AHEAD 12288
#endif
#define PF(p) _mm_prefetch((const char *)(p) + PF_AHEAD, _MM_HINT_T0)

TARGET_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Four 16-lane accumulators -> one __m128 of their four sums, in order (hadd tree, no scalar). */
TARGET_AVX512 static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd); /* per 128-bit lane: [a, b, c, d] partial sums */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

void plm_fill_avx2(plm_kernels *k);
void plm_fill_avx2_xt(plm_kernels *k);          /* its packed-input prefill GEMMs (gemm_xt_avx2.c) */
void plm_fill_avx512(plm_kernels *k, int bf16); /* bf16: add the AVX512-BF16 kernels */
void plm_fill_avx512_bf16(plm_kernels *k);      /* bf16 rounding, int4 -> bf16 rows (kernels_avx512_bf16.c) */
void plm_fill_avx512_xt(plm_kernels *k);        /* the packed-input fp32 GEMMs (gemm_xt_avx512.c) */
void plm_fill_avx512_bf16_xt(plm_kernels *k);   /* and the vdpbf16ps one */
#endif

#endif
