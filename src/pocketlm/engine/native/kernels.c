/* Matrix-vector (decode) and small matrix-matrix (prefill) kernels, per instruction set.
 *
 * Decode is memory-bound: each kernel streams its weights once. The integer kernels quantise the
 * activation vector to int8 in blocks of 32 (once per vector, shared by every row) and use
 * AVX-512 VNNI dot products (vpdpbusd) on the raw int8 / int4 weights: no weight is ever
 * converted to float on the decode path. */
#if defined(__x86_64__) || defined(__i386__)
#define PLM_X86 1
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plm.h"

#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,f16c")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,fma,avx2,f16c")))

/* Decode streams each weight matrix once from memory. The hardware prefetchers alone left one core
 * at 15-25 GB/s on a 31 GB/s machine (they stop at page edges and lose short, interleaved rows);
 * asking for the line this many bytes ahead of each row's read point brought int8 from 17 to
 * 28-31 GB/s and every other format a few GB/s (measured 4-32 KiB: 8-16 KiB best everywhere).
 * A prefetch past a matrix's end is harmless (it never faults). */
#define PF_AHEAD 12288
#define PF(p) _mm_prefetch((const char *)(p) + PF_AHEAD, _MM_HINT_T0)

/* ---- portable helpers ----------------------------------------------------------------------- */
float plm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void quantize_tables(plm_qvec *out);

void plm_quantize_vec(const float *x, int n, plm_qvec *out) {
    out->n = n;
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            int q = (int)lrintf(xb[i] * inv);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            out->q[32 * b + i] = (int8_t)q;
            sum += q;
        }
        out->scale[b] = scale;
        out->bsum[b] = sum;
    }
    quantize_tables(out);
}

/* The lane-expanded and reordered views the VNNI kernels read (see plm_qvec). */
static void quantize_tables(plm_qvec *out) {
    const int n = out->n;
    float ssum = 0.f;
    for (int b = 0; b < n / 32; b++) {
        for (int i = 0; i < 8; i++) {
            out->scale8[8 * b + i] = out->scale[b];
            out->ssum8[8 * b + i] = out->scale[b] * (float)out->bsum[b];
        }
        ssum += out->scale[b] * (float)out->bsum[b];
    }
    out->ssum = ssum;
    for (int c = 0; c + 64 <= n; c += 64) { /* the int4 kernel's order, see plm_qvec */
        const int8_t *q = out->q + c;
        int8_t *qp = out->qp + c;
        memcpy(qp, q, 16);
        memcpy(qp + 16, q + 32, 16);
        memcpy(qp + 32, q + 16, 16);
        memcpy(qp + 48, q + 48, 16);
        const int b = c / 32;
        for (int i = 0; i < 16; i++) {
            const int blk = b + ((i / 4) & 1);
            out->scale8p[c / 4 + i] = out->scale[blk];
            out->ssum8p[c / 4 + i] = out->scale[blk] * (float)out->bsum[blk];
        }
    }
}

void plm_dequant_rows(const plm_matrix *w, int r0, int r1, float *out) {
    const int cols = w->cols;
    for (int r = r0; r < r1; r++) {
        float *o = out + (size_t)(r - r0) * cols;
        if (w->dtype == PLM_F32) {
            memcpy(o, (const float *)w->data + (size_t)r * cols, sizeof(float) * cols);
        } else if (w->dtype == PLM_BF16) {
            const uint16_t *src = (const uint16_t *)w->data + (size_t)r * cols;
            for (int c = 0; c < cols; c++) o[c] = bf16_to_f32(src[c]);
        } else if (w->dtype == PLM_I8) {
            const int8_t *src = (const int8_t *)w->data + (size_t)r * cols;
            const float s = w->scale_f32[r];
            for (int c = 0; c < cols; c++) o[c] = s * (float)src[c];
        } else {
            const uint8_t *src = (const uint8_t *)w->data + (size_t)r * (cols / 2);
            const uint16_t *sc = w->scale_f16 + (size_t)r * (cols / w->group);
            for (int b = 0; b < cols / 32; b++) {
                const float d = plm_f16_to_f32(sc[b * 32 / w->group]);
                for (int j = 0; j < 16; j++) {
                    o[32 * b + j] = d * (float)((src[16 * b + j] & 0x0f) - 8);
                    o[32 * b + j + 16] = d * (float)((src[16 * b + j] >> 4) - 8);
                }
            }
        }
    }
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* ---- scalar kernels (any CPU) ---------------------------------------------------------------- */
static float dot_scalar(const float *a, const float *b, int n) {
    float s = 0.f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, const float *x, float a, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void gemv_f32_scalar(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    for (int r = r0; r < r1; r++) y[r] = dot_scalar((const float *)w->data + (size_t)r * w->cols, x, w->cols);
}

static void gemv_bf16_scalar(const plm_matrix *w, const float *x, float *y, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        const uint16_t *row = (const uint16_t *)w->data + (size_t)r * w->cols;
        float s = 0.f;
        for (int c = 0; c < w->cols; c++) s += bf16_to_f32(row[c]) * x[c];
        y[r] = s;
    }
}

static void gemv_i8_scalar(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        const int8_t *row = (const int8_t *)w->data + (size_t)r * w->cols;
        float acc = 0.f;
        for (int b = 0; b < w->cols / 32; b++) {
            int32_t s = 0;
            for (int i = 0; i < 32; i++) s += (int32_t)row[32 * b + i] * x->q[32 * b + i];
            acc += x->scale[b] * (float)s;
        }
        y[r] = acc * w->scale_f32[r];
    }
}

static void gemv_i4_scalar(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1) {
    const int blocks = w->cols / 32, per_group = w->group / 32;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * (w->cols / 2);
        const uint16_t *sc = w->scale_f16 + (size_t)r * (w->cols / w->group);
        float acc = 0.f;
        for (int b = 0; b < blocks; b++) {
            int32_t s = 0;
            for (int j = 0; j < 16; j++) {
                s += ((row[16 * b + j] & 0x0f) - 8) * x->q[32 * b + j];
                s += ((row[16 * b + j] >> 4) - 8) * x->q[32 * b + j + 16];
            }
            acc += plm_f16_to_f32(sc[b / per_group]) * x->scale[b] * (float)s;
        }
        y[r] = acc;
    }
}

static void gemm_f32_scalar(const float *wf, int ldw, const float *x, int ldx, float *y, int ldy, int n_tok, int n_rows, int cols) {
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + r] = dot_scalar(wf + (size_t)r * ldw, x + (size_t)t * ldx, cols);
}

static void scores_scalar(const float *q, const float *k, size_t ldk, int n, int hd, float scale, float *out) {
    for (int i = 0; i < n; i++) out[i] = dot_scalar(q, k + (size_t)i * ldk, hd) * scale;
}

static float exp_sum_scalar(float *x, int n, float mx) {
    float sum = 0.f;
    for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    return sum;
}

static void wsum_scalar(const float *p, const float *v, size_t ldv, int n, int hd, float *out) {
    for (int i = 0; i < n; i++) axpy_scalar(out, v + (size_t)i * ldv, p[i], hd);
}

/* exp(x) as Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial): within
 * 2 ulp of expf for x in [-87, 88]; below that (only x - max of a softmax gets here) it flushes
 * towards 0, as expf does. */
#define EXP_POLY(P, R, MUL, ADD)                                                                 \
    P = ADD(MUL(P, R), 1.3981999507E-3f); P = ADD(MUL(P, R), 8.3334519073E-3f);                 \
    P = ADD(MUL(P, R), 4.1665795894E-2f); P = ADD(MUL(P, R), 1.6666665459E-1f);                 \
    P = ADD(MUL(P, R), 5.0000001201E-1f)

#ifdef PLM_X86
/* ---- AVX2 ------------------------------------------------------------------------------------ */
TARGET_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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
    quantize_tables(out);
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

/* 4 tokens x 4 rows register tile: 16 accumulators, 8 loads per 16 FMAs, then a reduction tree
 * that leaves each token's 4 outputs in one vector (stored contiguously). */
TARGET_AVX512 static void gemm_f32_avx512(const float *wf, int ldw, const float *x, int ldx, float *y, int ldy, int n_tok, int n_rows, int cols) {
    const int c16 = cols & ~15;
    const __mmask16 tail = (__mmask16)((1u << (cols - c16)) - 1);
    int r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *w0 = wf + (size_t)r * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        int t = 0;
        for (; t + 4 <= n_tok; t += 4) {
            const float *x0 = x + (size_t)t * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
            __m512 a[16]; /* a[4 * token + row] */
            for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
            for (int c = 0; c < cols; c += 16) {
                const __mmask16 m = c < c16 ? (__mmask16)0xffff : tail;
                __m512 vw0 = _mm512_maskz_loadu_ps(m, w0 + c), vw1 = _mm512_maskz_loadu_ps(m, w1 + c);
                __m512 vw2 = _mm512_maskz_loadu_ps(m, w2 + c), vw3 = _mm512_maskz_loadu_ps(m, w3 + c);
                __m512 vx0 = _mm512_maskz_loadu_ps(m, x0 + c), vx1 = _mm512_maskz_loadu_ps(m, x1 + c);
                __m512 vx2 = _mm512_maskz_loadu_ps(m, x2 + c), vx3 = _mm512_maskz_loadu_ps(m, x3 + c);
                a[0] = _mm512_fmadd_ps(vx0, vw0, a[0]); a[1] = _mm512_fmadd_ps(vx0, vw1, a[1]);
                a[2] = _mm512_fmadd_ps(vx0, vw2, a[2]); a[3] = _mm512_fmadd_ps(vx0, vw3, a[3]);
                a[4] = _mm512_fmadd_ps(vx1, vw0, a[4]); a[5] = _mm512_fmadd_ps(vx1, vw1, a[5]);
                a[6] = _mm512_fmadd_ps(vx1, vw2, a[6]); a[7] = _mm512_fmadd_ps(vx1, vw3, a[7]);
                a[8] = _mm512_fmadd_ps(vx2, vw0, a[8]); a[9] = _mm512_fmadd_ps(vx2, vw1, a[9]);
                a[10] = _mm512_fmadd_ps(vx2, vw2, a[10]); a[11] = _mm512_fmadd_ps(vx2, vw3, a[11]);
                a[12] = _mm512_fmadd_ps(vx3, vw0, a[12]); a[13] = _mm512_fmadd_ps(vx3, vw1, a[13]);
                a[14] = _mm512_fmadd_ps(vx3, vw2, a[14]); a[15] = _mm512_fmadd_ps(vx3, vw3, a[15]);
            }
            for (int j = 0; j < 4; j++) _mm_storeu_ps(y + (size_t)(t + j) * ldy + r, reduce4(a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]));
        }
        for (; t < n_tok; t++) { /* a lone token: the same accumulation order as in the tile */
            const float *x0 = x + (size_t)t * ldx;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < cols; c += 16) {
                const __mmask16 m = c < c16 ? (__mmask16)0xffff : tail;
                __m512 vx = _mm512_maskz_loadu_ps(m, x0 + c);
                a0 = _mm512_fmadd_ps(vx, _mm512_maskz_loadu_ps(m, w0 + c), a0);
                a1 = _mm512_fmadd_ps(vx, _mm512_maskz_loadu_ps(m, w1 + c), a1);
                a2 = _mm512_fmadd_ps(vx, _mm512_maskz_loadu_ps(m, w2 + c), a2);
                a3 = _mm512_fmadd_ps(vx, _mm512_maskz_loadu_ps(m, w3 + c), a3);
            }
            _mm_storeu_ps(y + (size_t)t * ldy + r, reduce4(a0, a1, a2, a3));
        }
    }
    for (; r < n_rows; r++) { /* trailing rows: one accumulator each, reduced the same way */
        const float *w0 = wf + (size_t)r * ldw;
        for (int t = 0; t < n_tok; t++) {
            const float *x0 = x + (size_t)t * ldx;
            __m512 a0 = _mm512_setzero_ps(), z = _mm512_setzero_ps();
            for (int c = 0; c < cols; c += 16) {
                const __mmask16 m = c < c16 ? (__mmask16)0xffff : tail;
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x0 + c), _mm512_maskz_loadu_ps(m, w0 + c), a0);
            }
            y[(size_t)t * ldy + r] = _mm_cvtss_f32(reduce4(a0, z, z, z));
        }
    }
}

TARGET_AVX2 static void gemm_f32_avx2(const float *wf, int ldw, const float *x, int ldx, float *y, int ldy, int n_tok, int n_rows, int cols) {
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + r] = dot_avx2(wf + (size_t)r * ldw, x + (size_t)t * ldx, cols);
}

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

#endif /* PLM_X86 */

void plm_select_kernels(plm_kernels *k, const char *force) {
#ifdef PLM_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    int bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (force && *force) {
        /* a cap: the best kernel set at or below it ("avx512bf16", "auto" or "" = the best there is) */
        if (!strcmp(force, "portable")) { avx512 = 0; avx2 = 0; bf16 = 0; }
        else if (!strcmp(force, "avx2")) { avx512 = 0; bf16 = 0; }
        else if (!strcmp(force, "avx512")) { bf16 = 0; }
    }
    if (avx512) {
        *k = (plm_kernels){"avx512-vnni", gemv_f32_avx512, gemv_bf16_avx512, gemv_i8_avx512, gemv_i4_avx512, gemm_f32_avx512, NULL, NULL,
                           dot_avx512, quantize_avx512, axpy_avx512, scores_avx512, exp_sum_avx512, wsum_avx512};
        if (bf16) {
            k->name = "avx512-bf16";
            k->gemm_bf16 = gemm_bf16_avx512;
            k->to_bf16 = to_bf16_avx512;
        }
    } else if (avx2) {
        *k = (plm_kernels){"avx2", gemv_f32_avx2, gemv_bf16_avx2, gemv_i8_avx2, gemv_i4_avx2, gemm_f32_avx2, NULL, NULL,
                           dot_avx2, plm_quantize_vec, axpy_avx2, scores_avx2, exp_sum_avx2, wsum_avx2};
    } else {
        *k = (plm_kernels){"portable", gemv_f32_scalar, gemv_bf16_scalar, gemv_i8_scalar, gemv_i4_scalar, gemm_f32_scalar, NULL, NULL,
                           dot_scalar, plm_quantize_vec, axpy_scalar, scores_scalar, exp_sum_scalar, wsum_scalar};
    }
#else
    (void)force;
    *k = (plm_kernels){"portable", gemv_f32_scalar, gemv_bf16_scalar, gemv_i8_scalar, gemv_i4_scalar, gemm_f32_scalar, NULL, NULL,
                       dot_scalar, plm_quantize_vec, axpy_scalar, scores_scalar, exp_sum_scalar, wsum_scalar};
#endif
}
