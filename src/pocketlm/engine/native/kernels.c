/* Matrix-vector (decode) and small matrix-matrix (prefill) kernels, per instruction set.
 *
 * Decode is memory-bound: each kernel streams its weights once. The integer kernels quantise the
 * activation vector to int8 in blocks of 32 (once per vector, shared by every row) and use
 * AVX-512 VNNI dot products (vpdpbusd) on the raw int8 / int4 weights: no weight is ever
 * converted to float on the decode path.
 *
 * This file: the portable kernels (any CPU) and the choice of a set at start-up; kernels_avx2.c
 * and kernels_avx512.c hold the vector ones. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_simd.h"

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
    plm_quantize_tables(out);
}

/* The lane-expanded and reordered views the VNNI kernels read (see plm_qvec). */
void plm_quantize_tables(plm_qvec *out) {
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

float plm_activate(float v, int act) {
    if (act == PLM_ACT_SILU) return v / (1.0f + expf(-v));
    if (act == PLM_ACT_GELU_TANH) return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    return v * 0.5f * (1.0f + erff(v * 0.7071067811865476f)); /* exact gelu, as torch */
}

static void glu_scalar(float *g, const float *u, int n, int act) {
    for (int i = 0; i < n; i++) g[i] = plm_activate(g[i], act) * (u ? u[i] : 1.0f);
}

void plm_select_kernels(plm_kernels *k, const char *force) {
    *k = (plm_kernels){.name = "portable", .gemv_f32 = gemv_f32_scalar, .gemv_bf16 = gemv_bf16_scalar, .gemv_i8 = gemv_i8_scalar, .gemv_i4 = gemv_i4_scalar,
                       .gemm_f32 = gemm_f32_scalar, .dot = dot_scalar, .quantize = plm_quantize_vec, .axpy = axpy_scalar, .scores = scores_scalar,
                       .exp_sum = exp_sum_scalar, .wsum = wsum_scalar, .glu = glu_scalar};
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
    if (avx512) plm_fill_avx512(k, bf16);
    else if (avx2) plm_fill_avx2(k);
#else
    (void)force;
#endif
}
