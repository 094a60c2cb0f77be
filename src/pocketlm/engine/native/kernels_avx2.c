/* AVX2 + FMA + F16C kernels (see kernels.c for what each computes). */
#include <math.h>

#include "kernels_simd.h"

#ifdef PLM_X86
/* ---- AVX2 ------------------------------------------------------------------------------------ */

TARGET_AVX2 static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

TARGET_AVX2 static void axpy_avx2(float *y, const float *x, float a, int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

TARGET_AVX2 static void gemv_f32_avx2(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    const int n = w->cols;
    for (int r = r0; r < r1; r++) {
        const float *a = (const float *)w->data + (size_t)r * n;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        int c = 0;
        for (; c + 16 <= n; c += 16) {
            PF(a + c);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(x + c), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(x + c + 8), s1);
        }
        float v = hsum256(_mm256_add_ps(s0, s1));
        for (; c < n; c++) v += a[c] * x[c];
        y[r] = v;
    }
}

TARGET_AVX2 static void gemv_bf16_avx2(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    const int n = w->cols;
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = (const uint16_t *)w->data + (size_t)r * n;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        int c = 0;
        for (; c + 16 <= n; c += 16) {
            if (!(c & 31)) PF(row + c);
            __m256i raw = _mm256_loadu_si256((const __m256i *)(row + c));
            __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw)), 16));
            __m256 hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(raw, 1)), 16));
            s0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + c), s0);
            s1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + c + 8), s1);
        }
        float s = hsum256(_mm256_add_ps(s0, s1));
        for (; c < n; c++) s += bf16_to_f32(row[c]) * x[c];
        y[r] = s;
    }
}

TARGET_AVX2 static inline __m256i dot_i8_32_avx2(__m256i w, __m256i xq) {
    /* sum of w*x over 32 int8 pairs, as 8 int32 lanes: |w| * sign(x, w) keeps maddubs unsigned. */
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
    return _mm256_madd_epi16(p16, ones);
}

TARGET_AVX2 static void gemv_i8_avx2(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    /* One row at a time: a two-row version ran 1.5x faster from L2 but 15% slower from memory. */
    const int blocks = w->cols / 32;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = (const int8_t *)w->data + (size_t)r * w->cols;
        __m256 acc = _mm256_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            if (!(b & 1)) PF(row + 32 * b);
            __m256i d = dot_i8_32_avx2(_mm256_loadu_si256((const __m256i *)(row + 32 * b)), _mm256_loadu_si256((const __m256i *)(x->q + 32 * b)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(x->scale[b]), _mm256_cvtepi32_ps(d), acc);
        }
        y[r] = hsum256(acc) * w->scale_f32[r];
    }
}

/* One row's int4 dot products over block b: 32 values 0..15 against the block's activations, as
 * scale_x * (dot(q, x) - 8 * sum(x)) over 8 lanes once summed (each lane takes 1/8 of the
 * -8 * scale_x * sum(x) offset: ssum8's lanes each hold scale_x * sum(x)). */
TARGET_AVX2 static inline __m256 i4_block_avx2(const uint8_t *row, int b, __m256i xq, __m256 s8, __m256 ss8) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i packed = _mm_loadu_si128((const __m128i *)(row + 16 * b));
    const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
    const __m256i d32 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xq), _mm256_set1_epi16(1));
    return _mm256_fmsub_ps(s8, _mm256_cvtepi32_ps(d32), ss8);
}

TARGET_AVX2 static void gemv_i4_avx2(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    const int blocks = w->cols / 32, per_group = w->group / 32;
    const size_t row_bytes = (size_t)w->cols / 2, row_scales = (size_t)(w->cols / w->group);
    int r = r0;
    /* Two rows at a time: the activations and their scale tables are loaded once for both. */
    for (; r + 2 <= r1; r += 2) {
        const uint8_t *ra = (const uint8_t *)w->data + (size_t)r * row_bytes, *rb = ra + row_bytes;
        const uint16_t *sa = w->scale_f16 + (size_t)r * row_scales, *sb = sa + row_scales;
        __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            if (!(b & 3)) { PF(ra + 16 * b); PF(rb + 16 * b); }
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(x->q + 32 * b));
            const __m256 s8 = _mm256_loadu_ps(x->scale8 + 8 * b), ss8 = _mm256_loadu_ps(x->ssum8 + 8 * b);
            acc_a = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(sa[b / per_group])), i4_block_avx2(ra, b, xq, s8, ss8), acc_a);
            acc_b = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(sb[b / per_group])), i4_block_avx2(rb, b, xq, s8, ss8), acc_b);
        }
        y[r] = hsum256(acc_a);
        y[r + 1] = hsum256(acc_b);
    }
    for (; r < r1; r++) {
        const uint8_t *ra = (const uint8_t *)w->data + (size_t)r * row_bytes;
        const uint16_t *sa = w->scale_f16 + (size_t)r * row_scales;
        __m256 acc = _mm256_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            if (!(b & 3)) PF(ra + 16 * b);
            const __m256 s8 = _mm256_loadu_ps(x->scale8 + 8 * b), ss8 = _mm256_loadu_ps(x->ssum8 + 8 * b);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(sa[b / per_group])),
                                  i4_block_avx2(ra, b, _mm256_loadu_si256((const __m256i *)(x->q + 32 * b)), s8, ss8), acc);
        }
        y[r] = hsum256(acc);
    }
}

/* Four 8-lane accumulators -> their four sums, in order. */
TARGET_AVX2 static inline __m128 reduce4_256(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

TARGET_AVX2 static void scores_avx2(const float *q, const float *k, size_t ldk, int n, int hd, float scale, float *out) {
    int i = 0;
    if (hd % 8 == 0) /* four keys at a time: each q load feeds four FMAs */
        for (; i + 4 <= n; i += 4) {
            const float *k0 = k + (size_t)i * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < hd; d += 8) {
                const __m256 vq = _mm256_loadu_ps(q + d);
                a0 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(k3 + d), a3);
            }
            _mm_storeu_ps(out + i, _mm_mul_ps(reduce4_256(a0, a1, a2, a3), _mm_set1_ps(scale)));
        }
    for (; i < n; i++) out[i] = dot_avx2(q, k + (size_t)i * ldk, hd) * scale;
}

#define MUL256(a, b) _mm256_mul_ps(a, b)
#define ADD256(a, c) _mm256_add_ps(a, _mm256_set1_ps(c))
TARGET_AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365447504f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    EXP_POLY(p, r, MUL256, ADD256);
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23); /* 2^n, n >= -126 */
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

TARGET_AVX2 static float exp_sum_avx2(float *x, int n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum256(acc);
    for (; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    return sum;
}

TARGET_AVX2 static void wsum_avx2(const float *p, const float *v, size_t ldv, int n, int hd, float *out) {
    if (hd % 8) {
        for (int i = 0; i < n; i++) axpy_avx2(out, v + (size_t)i * ldv, p[i], hd);
        return;
    }
    for (int d0 = 0; d0 < hd; d0 += 32) { /* up to four 8-lane accumulators per pass over the keys */
        const int nv = hd - d0 >= 32 ? 4 : (hd - d0) / 8;
        __m256 acc[4];
        for (int j = 0; j < nv; j++) acc[j] = _mm256_loadu_ps(out + d0 + 8 * j);
        for (int i = 0; i < n; i++) {
            const __m256 w = _mm256_set1_ps(p[i]);
            const float *vi = v + (size_t)i * ldv + d0;
            for (int j = 0; j < nv; j++) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vi + 8 * j), acc[j]);
        }
        for (int j = 0; j < nv; j++) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
    }
}


/* silu(g) = g * sigmoid(g); gelu_tanh(g) = g * sigmoid(2 * sqrt(2 / pi) * (g + 0.044715 g^3))
 * (0.5 * (1 + tanh(z)) = sigmoid(2z)); exact GELU (erf) stays scalar. */
TARGET_AVX2 static void glu_avx2(float *g, const float *u, int n, int act) {
    int i = 0;
    if (act != PLM_ACT_GELU) {
        const __m256 one = _mm256_set1_ps(1.f), c1 = _mm256_set1_ps(2.f * 0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(g + i);
            __m256 z = v; /* sigmoid's argument */
            if (act == PLM_ACT_GELU_TANH) z = _mm256_mul_ps(c1, _mm256_fmadd_ps(_mm256_mul_ps(c3, v), _mm256_mul_ps(v, v), v));
            const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), z))));
            __m256 out = _mm256_mul_ps(v, sig);
            if (u) out = _mm256_mul_ps(out, _mm256_loadu_ps(u + i));
            _mm256_storeu_ps(g + i, out);
        }
    }
    for (; i < n; i++) g[i] = plm_activate(g[i], act) * (u ? u[i] : 1.0f);
}

void plm_fill_avx2(plm_kernels *k) {
    *k = (plm_kernels){.name = "avx2", .gemv_f32 = gemv_f32_avx2, .gemv_bf16 = gemv_bf16_avx2, .gemv_i8 = gemv_i8_avx2, .gemv_i4 = gemv_i4_avx2,
                       .dot = dot_avx2, .quantize = plm_quantize_vec, .axpy = axpy_avx2, .scores = scores_avx2,
                       .exp_sum = exp_sum_avx2, .wsum = wsum_avx2, .glu = glu_avx2};
    plm_fill_avx2_xt(k);
}
#endif
