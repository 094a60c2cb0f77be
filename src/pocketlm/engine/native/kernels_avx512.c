/* AVX-512 (F/BW/VL/DQ + VNNI) kernels, and the AVX512-BF16 prefill GEMM (see kernels.c for what
 * each computes). */
#include <math.h>

#include "kernels_simd.h"

#ifdef PLM_X86
/* ---- AVX-512 (+VNNI) -------------------------------------------------------------------------- */
TARGET_AVX512 static float dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    if (i < n) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
        i += 16;
        if (i < n) {
            m = (__mmask16)((1u << (n - i)) - 1);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

TARGET_AVX512 static void axpy_avx512(float *y, const float *x, float a, int n) {
    __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

TARGET_AVX512 static void gemv_f32_avx512(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    const int n = w->cols;
    int r = r0;
    for (; r + 4 <= r1 && n % 16 == 0; r += 4) { /* four rows: four streams in flight */
        const float *a0 = (const float *)w->data + (size_t)r * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int c = 0; c < n; c += 16) {
            PF(a0 + c); PF(a1 + c); PF(a2 + c); PF(a3 + c);
            const __m512 xv = _mm512_loadu_ps(x + c);
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a0 + c), xv, s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a1 + c), xv, s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a2 + c), xv, s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a3 + c), xv, s3);
        }
        _mm_storeu_ps(y + r, reduce4(s0, s1, s2, s3));
    }
    /* Two rows at a time: each x load feeds two FMAs. */
    for (; r + 2 <= r1; r += 2) {
        const float *a = (const float *)w->data + (size_t)r * n, *b = a + n;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
        int c = 0;
        for (; c + 32 <= n; c += 32) {
            PF(a + c); PF(a + c + 16); PF(b + c); PF(b + c + 16);
            __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c), x0, s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + c + 16), x1, s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(b + c), x0, s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(b + c + 16), x1, s3);
        }
        float ya = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)), yb = _mm512_reduce_add_ps(_mm512_add_ps(s2, s3));
        for (; c < n; c++) { ya += a[c] * x[c]; yb += b[c] * x[c]; }
        y[r] = ya;
        y[r + 1] = yb;
    }
    for (; r < r1; r++) y[r] = dot_avx512((const float *)w->data + (size_t)r * n, x, n);
}

TARGET_AVX512 static void gemv_bf16_avx512(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    const int n = w->cols;
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = (const uint16_t *)w->data + (size_t)r * n;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int c = 0;
        for (; c + 32 <= n; c += 32) {
            PF(row + c);
            __m512i raw = _mm512_loadu_si512((const void *)(row + c));
            __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
            __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
            s0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + c), s0);
            s1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + c + 16), s1);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        for (; c < n; c++) s += bf16_to_f32(row[c]) * x[c];
        y[r] = s;
    }
}

/* One row's dot product over 32 trailing values (n % 64 == 32): 256-bit VNNI, no masked load
 * (byte-masked loads run several times slower than plain ones on some CPUs: measured 2.3x on Zen 5). */
TARGET_AVX512 static inline float i8_tail32(const int8_t *w, const plm_qvec *x, int c) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + c)), flip),
                                    _mm256_loadu_si256((const __m256i *)(x->q + c)));
    return x->scale[c / 32] * hsum256(_mm256_cvtepi32_ps(d));
}

TARGET_AVX512 static void gemv_i8_avx512(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    const int n = w->cols, n64 = n & ~63;
    /* w is the unsigned operand: (w ^ 0x80) = w + 128, corrected by 128 * sum_b scale_b * bsum_b. */
    const float corr = 128.f * x->ssum;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int r = r0;
    for (; r + 2 <= r1; r += 2) {
        const int8_t *a = (const int8_t *)w->data + (size_t)r * n, *b = a + n;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int c = 0; c < n64; c += 64) {
            PF(a + c); PF(b + c);
            const __m512i xq = _mm512_loadu_si512((const void *)(x->q + c));
            const __m512 sc = _mm512_loadu_ps(x->scale8 + c / 4);
            __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(_mm512_loadu_si512((const void *)(a + c)), flip), xq);
            __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(_mm512_loadu_si512((const void *)(b + c)), flip), xq);
            acc0 = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(da), acc0);
            acc1 = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(db), acc1);
        }
        float ya = _mm512_reduce_add_ps(acc0), yb = _mm512_reduce_add_ps(acc1);
        if (n64 < n) { ya += i8_tail32(a, x, n64); yb += i8_tail32(b, x, n64); }
        y[r] = (ya - corr) * w->scale_f32[r];
        y[r + 1] = (yb - corr) * w->scale_f32[r + 1];
    }
    for (; r < r1; r++) {
        const int8_t *a = (const int8_t *)w->data + (size_t)r * n;
        __m512 acc0 = _mm512_setzero_ps();
        for (int c = 0; c < n64; c += 64) {
            PF(a + c);
            __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(_mm512_loadu_si512((const void *)(a + c)), flip),
                                             _mm512_loadu_si512((const void *)(x->q + c)));
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x->scale8 + c / 4), _mm512_cvtepi32_ps(da), acc0);
        }
        float ya = _mm512_reduce_add_ps(acc0);
        if (n64 < n) ya += i8_tail32(a, x, n64);
        y[r] = (ya - corr) * w->scale_f32[r];
    }
}

/* 32 bytes = two 32-value blocks (Q4_0 layout) -> 64 values 0..15 as [b0 0-15, b1 0-15, b0 16-31,
 * b1 16-31]: no cross-lane shuffle; the activations were reordered to match (plm_qvec.qp). */
TARGET_AVX512 static inline __m512i unpack_q4x64(const uint8_t *p) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, mask)), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask), 1);
}

/* Weight scales for the 16 lanes of one 64-value chunk: [d_b x4, d_b+1 x4, d_b x4, d_b+1 x4]. */
TARGET_AVX512 static inline __m512 q4_scales(const uint16_t *sc, int b, int per_group) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    uint32_t pair;
    if (per_group == 1) {
        memcpy(&pair, sc + b, 4); /* two consecutive fp16 scales */
    } else {
        const uint32_t g0 = sc[b / per_group], g1 = sc[(b + 1) / per_group];
        pair = g0 | (g1 << 16);
    }
    __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)pair));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d));
}

TARGET_AVX512 static void gemv_i4_avx512(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    const int n = w->cols, per_group = w->group / 32, n64 = n & ~63;
    const size_t row_bytes = (size_t)n / 2, row_scales = (size_t)(n / w->group);
    int r = r0;
    /* Two rows at a time: the activations and their scale tables are loaded once for both. */
    for (; r + 2 <= r1; r += 2) {
        const uint8_t *ra = (const uint8_t *)w->data + (size_t)r * row_bytes, *rb = ra + row_bytes;
        const uint16_t *sa = w->scale_f16 + (size_t)r * row_scales, *sb = sa + row_scales;
        __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
        for (int c = 0; c < n64; c += 64) {
            const int b = c / 32;
            const __m512i xq = _mm512_loadu_si512((const void *)(x->qp + c));
            const __m512 s8 = _mm512_loadu_ps(x->scale8p + c / 4), ss8 = _mm512_loadu_ps(x->ssum8p + c / 4);
            PF(ra + c / 2); PF(rb + c / 2);
            __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack_q4x64(ra + c / 2), xq);
            __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack_q4x64(rb + c / 2), xq);
            /* d * (scale * dot - scale * bsum): over a block's 8 lanes, d * scale * (dot - 8 * bsum) */
            acc_a = _mm512_fmadd_ps(q4_scales(sa, b, per_group), _mm512_fmsub_ps(s8, _mm512_cvtepi32_ps(da), ss8), acc_a);
            acc_b = _mm512_fmadd_ps(q4_scales(sb, b, per_group), _mm512_fmsub_ps(s8, _mm512_cvtepi32_ps(db), ss8), acc_b);
        }
        float ya = _mm512_reduce_add_ps(acc_a), yb = _mm512_reduce_add_ps(acc_b);
        for (int c = n64; c < n; c += 32) { /* one trailing 32-value block */
            const int b = c / 32;
            int32_t da = 0, db = 0;
            for (int j = 0; j < 16; j++) {
                da += ((ra[16 * b + j] & 0x0f) - 8) * x->q[c + j] + ((ra[16 * b + j] >> 4) - 8) * x->q[c + j + 16];
                db += ((rb[16 * b + j] & 0x0f) - 8) * x->q[c + j] + ((rb[16 * b + j] >> 4) - 8) * x->q[c + j + 16];
            }
            ya += _cvtsh_ss(sa[b / per_group]) * x->scale[b] * (float)da;
            yb += _cvtsh_ss(sb[b / per_group]) * x->scale[b] * (float)db;
        }
        y[r] = ya;
        y[r + 1] = yb;
    }
    for (; r < r1; r++) {
        const uint8_t *ra = (const uint8_t *)w->data + (size_t)r * row_bytes;
        const uint16_t *sa = w->scale_f16 + (size_t)r * row_scales;
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < n64; c += 64) {
            PF(ra + c / 2);
            __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack_q4x64(ra + c / 2), _mm512_loadu_si512((const void *)(x->qp + c)));
            acc = _mm512_fmadd_ps(q4_scales(sa, c / 32, per_group), _mm512_fmsub_ps(_mm512_loadu_ps(x->scale8p + c / 4), _mm512_cvtepi32_ps(d), _mm512_loadu_ps(x->ssum8p + c / 4)), acc);
        }
        float s = _mm512_reduce_add_ps(acc);
        for (int c = n64; c < n; c += 32) {
            const int b = c / 32;
            int32_t dot = 0;
            for (int j = 0; j < 16; j++) dot += ((ra[16 * b + j] & 0x0f) - 8) * x->q[c + j] + ((ra[16 * b + j] >> 4) - 8) * x->q[c + j + 16];
            s += _cvtsh_ss(sa[b / per_group]) * x->scale[b] * (float)dot;
        }
        y[r] = s;
    }
}

/* plm_quantize_vec with AVX-512: same rounding (to nearest even), same results. */
TARGET_AVX512 static void quantize_avx512(const float *x, int n, plm_qvec *out) {
    out->n = n;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < n / 32; b++) {
        __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
        __m512 vi = _mm512_set1_ps(inv);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vi)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vi));
        const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, lim), nlim);
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, lim), nlim);
        _mm_storeu_si128((__m128i *)(out->q + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(out->q + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        out->scale[b] = scale;
        out->bsum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
    plm_quantize_tables(out);
}


TARGET_AVX512 static void scores_avx512(const float *q, const float *k, size_t ldk, int n, int hd, float scale, float *out) {
    int i = 0;
    if (hd % 16 == 0) /* four keys at a time: each q load feeds four FMAs, one reduction tree for four */
        for (; i + 4 <= n; i += 4) {
            const float *k0 = k + (size_t)i * ldk, *k1 = k0 + ldk, *k2 = k1 + ldk, *k3 = k2 + ldk;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < hd; d += 16) {
                const __m512 vq = _mm512_loadu_ps(q + d);
                a0 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(k0 + d), a0);
                a1 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(k1 + d), a1);
                a2 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(k2 + d), a2);
                a3 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(k3 + d), a3);
            }
            _mm_storeu_ps(out + i, _mm_mul_ps(reduce4(a0, a1, a2, a3), _mm_set1_ps(scale)));
        }
    for (; i < n; i++) out[i] = dot_avx512(q, k + (size_t)i * ldk, hd) * scale;
}

#define MUL512(a, b) _mm512_mul_ps(a, b)
#define ADD512(a, c) _mm512_add_ps(a, _mm512_set1_ps(c))
TARGET_AVX512 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3365447504f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    EXP_POLY(p, r, MUL512, ADD512);
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

TARGET_AVX512 static float exp_sum_avx512(float *x, int n, float mx) {
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    return sum;
}

TARGET_AVX512 static void wsum_avx512(const float *p, const float *v, size_t ldv, int n, int hd, float *out) {
    if (hd % 16) {
        for (int i = 0; i < n; i++) axpy_avx512(out, v + (size_t)i * ldv, p[i], hd);
        return;
    }
    for (int d0 = 0; d0 < hd; d0 += 64) { /* up to four 16-lane accumulators per pass over the keys */
        const int nv = hd - d0 >= 64 ? 4 : (hd - d0) / 16;
        __m512 acc[4];
        for (int j = 0; j < nv; j++) acc[j] = _mm512_loadu_ps(out + d0 + 16 * j);
        for (int i = 0; i < n; i++) {
            const __m512 w = _mm512_set1_ps(p[i]);
            const float *vi = v + (size_t)i * ldv + d0;
            for (int j = 0; j < nv; j++) acc[j] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vi + 16 * j), acc[j]);
        }
        for (int j = 0; j < nv; j++) _mm512_storeu_ps(out + d0 + 16 * j, acc[j]);
    }
}

/* ---- the int8 prefill GEMM (VNNI): every token's activations quantised as for decode ----------- */
/* Y[t, r] for rows [r0, r1) and n_tok tokens (xq[t] each), written at y + t * ldy + r. A 4 rows x
 * 4 tokens register tile: each weight load serves 4 tokens, each activation load 4 rows; the rest
 * (and rows whose length is not a multiple of 64) run the GEMV kernel per token, with the same
 * per-row arithmetic. (An int4 version, the nibbles unpacked and the block scales applied per row
 * and chunk, ran 0.8x the float GEMM after dequantising: removed; int4 prefill takes the bf16 GEMM
 * where the CPU has one.) */
TARGET_AVX512 static void gemm_i8_avx512(const plm_matrix *w, int r0, int r1, const plm_qvec *xq, int n_tok, float *y, int ldy) {
    const int n = w->cols;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int r = r0, t4 = n % 64 ? 0 : n_tok & ~3;
    for (; t4 && r + 4 <= r1; r += 4) {
        const int8_t *a = (const int8_t *)w->data + (size_t)r * n;
        const __m128 row_scale = _mm_loadu_ps(w->scale_f32 + r);
        for (int t = 0; t < t4; t += 4) {
            __m512 acc[16]; /* acc[4 * token + row] */
            for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
            for (int c = 0; c < n; c += 64) {
                __m512i wv[4];
                for (int i = 0; i < 4; i++) wv[i] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(a + (size_t)i * n + c)), flip);
                for (int j = 0; j < 4; j++) {
                    const __m512i xv = _mm512_loadu_si512((const void *)(xq[t + j].q + c));
                    const __m512 sc = _mm512_loadu_ps(xq[t + j].scale8 + c / 4);
                    for (int i = 0; i < 4; i++)
                        acc[4 * j + i] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], xv)), acc[4 * j + i]);
                }
            }
            for (int j = 0; j < 4; j++) { /* (sum - 128 * ssum) * row scale: w + 128 was the unsigned operand */
                const __m128 s = _mm_sub_ps(reduce4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]), _mm_set1_ps(128.f * xq[t + j].ssum));
                _mm_storeu_ps(y + (size_t)(t + j) * ldy + r, _mm_mul_ps(s, row_scale));
            }
        }
    }
    for (int t = 0; t < n_tok; t++) /* rows left over for every token, tokens left over for every row */
        gemv_i8_avx512(w, &xq[t], y + (size_t)t * ldy, t < t4 ? r : r0, r1);
}


/* As glu_avx2, 16 lanes at a time. */
TARGET_AVX512 static void glu_avx512(float *g, const float *u, int n, int act) {
    int i = 0;
    if (act != PLM_ACT_GELU) {
        const __m512 one = _mm512_set1_ps(1.f), c1 = _mm512_set1_ps(2.f * 0.7978845608028654f), c3 = _mm512_set1_ps(0.044715f);
        for (; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_loadu_ps(g + i);
            __m512 z = v; /* sigmoid's argument */
            if (act == PLM_ACT_GELU_TANH) z = _mm512_mul_ps(c1, _mm512_fmadd_ps(_mm512_mul_ps(c3, v), _mm512_mul_ps(v, v), v));
            const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), z))));
            __m512 out = _mm512_mul_ps(v, sig);
            if (u) out = _mm512_mul_ps(out, _mm512_loadu_ps(u + i));
            _mm512_storeu_ps(g + i, out);
        }
    }
    for (; i < n; i++) g[i] = plm_activate(g[i], act) * (u ? u[i] : 1.0f);
}

void plm_fill_avx512(plm_kernels *k, int bf16) {
    *k = (plm_kernels){.name = "avx512-vnni", .gemv_f32 = gemv_f32_avx512, .gemv_bf16 = gemv_bf16_avx512, .gemv_i8 = gemv_i8_avx512, .gemv_i4 = gemv_i4_avx512,
                       .dot = dot_avx512, .quantize = quantize_avx512, .axpy = axpy_avx512, .scores = scores_avx512,
                       .exp_sum = exp_sum_avx512, .wsum = wsum_avx512, .glu = glu_avx512, .gemm_i8 = gemm_i8_avx512};
    plm_fill_avx512_xt(k);
    if (bf16) plm_fill_avx512_bf16(k);
}
#endif
