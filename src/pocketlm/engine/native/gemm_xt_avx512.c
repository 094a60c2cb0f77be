/* The prefill GEMMs on AVX-512: the call's input packed once as 16-token columns, weights
 * broadcast from their rows (outer products: no horizontal sums, a 6 rows x 64 tokens register
 * tile of 24 accumulators), the columns in blocks that keep the packed input in L2.
 *
 * Packed input, fp32: xp[(g * cols + c) * 16 + i] = x[16 g + i][c]; bf16: the same over pairs of
 * columns, xp[(g * (cols / 2) + k) * 16 + i] = the two bf16 values x[16 g + i][2k, 2k + 1] (the
 * operand vdpbf16ps multiplies pairwise). Tokens past n_tok are zeros. Each output sums its
 * products in column order (one block of columns after another): the same result whichever
 * thread computes it and however the rows are split. The same blocking (xt_blocks) gives the
 * row-major product C = A B (gemm_f32_ab: prompt attention's probabilities x values), B read in
 * place as if packed. */
#include "kernels_simd.h"

#ifdef PLM_X86
#define XT_ROWS 6        /* rows per register tile */
#define XT_GROUPS 4      /* 16-token groups per register tile */
#define XT_BLOCK_ROWS 64 /* rows whose outputs wait in the transposed tile buffer */
#define XT_KC 512        /* packed input elements (columns or pairs) per block: 64 tokens x 512 x 4 B = 128 KiB, in L2 */

static inline int round16(int n) { return (n + 15) & ~15; }

/* 16 x 16 floats: out row j (at out + j * ldo) = column j of the 16 rows at in (+ i * ldi). */
TARGET_AVX512 static void transpose16(const float *in, int ldi, float *out, size_t ldo) {
    __m512 a[16], b[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_loadu_ps(in + i * ldi);
    for (int i = 0; i < 16; i += 2) { /* pairs of rows interleaved by 32-bit lanes */
        b[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
        b[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* then by 64-bit lanes: 4-row columns within each 128-bit lane */
        a[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b[i]), _mm512_castps_pd(b[i + 2])));
        a[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b[i]), _mm512_castps_pd(b[i + 2])));
        a[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b[i + 1]), _mm512_castps_pd(b[i + 3])));
        a[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b[i + 1]), _mm512_castps_pd(b[i + 3])));
    }
    /* a[4 q + s] holds, in 128-bit lane l, column 4 l + s of rows 4 q .. 4 q + 3: gather the lanes */
    for (int s = 0; s < 4; s++) {
        const __m512 lo01 = _mm512_shuffle_f32x4(a[s], a[4 + s], 0x44), hi01 = _mm512_shuffle_f32x4(a[s], a[4 + s], 0xee);
        const __m512 lo23 = _mm512_shuffle_f32x4(a[8 + s], a[12 + s], 0x44), hi23 = _mm512_shuffle_f32x4(a[8 + s], a[12 + s], 0xee);
        _mm512_storeu_ps(out + (size_t)s * ldo, _mm512_shuffle_f32x4(lo01, lo23, 0x88));        /* lane 0 */
        _mm512_storeu_ps(out + (size_t)(4 + s) * ldo, _mm512_shuffle_f32x4(lo01, lo23, 0xdd));  /* lane 1 */
        _mm512_storeu_ps(out + (size_t)(8 + s) * ldo, _mm512_shuffle_f32x4(hi01, hi23, 0x88));  /* lane 2 */
        _mm512_storeu_ps(out + (size_t)(12 + s) * ldo, _mm512_shuffle_f32x4(hi01, hi23, 0xdd)); /* lane 3 */
    }
}

/* y[t][r] = yt[r][t] for rows < n_rows, tokens < n_tok (yt rows are XT_GROUPS * 16 tokens long). */
TARGET_AVX512 static void untranspose(const float *yt, int n_rows, int n_tok, float *y, int ldy) {
    const int ldt = XT_GROUPS * 16, r16 = n_rows & ~15, t16 = n_tok & ~15;
    for (int r = 0; r < r16; r += 16)
        for (int t = 0; t < t16; t += 16) transpose16(yt + r * ldt + t, ldt, y + (size_t)t * ldy + r, (size_t)ldy);
    for (int t = 0; t < n_tok; t++) /* the edges */
        for (int r = t < t16 ? r16 : 0; r < n_rows; r++) y[(size_t)t * ldy + r] = yt[r * ldt + t];
}

/* One value of the packed fp32 input: x[t][c], or 0 for a padding token. */
static inline float xt_value(const float *x, int n_tok, int cols, int t, int c) { return t < n_tok ? x[(size_t)t * cols + c] : 0.f; }

TARGET_AVX512 static void pack_x_f32_avx512(const float *x, int n_tok, int cols, float *xp) {
    const int c16 = cols & ~15;
    for (int g = 0; g < round16(n_tok) / 16; g++) {
        const int whole = 16 * g + 16 <= n_tok;
        for (int c = 0; c < cols; c++) {
            if (whole && c < c16) { /* 16 tokens x 16 columns at once */
                transpose16(x + (size_t)16 * g * cols + c, cols, xp + ((size_t)g * cols + c) * 16, 16);
                c += 15;
                continue;
            }
            for (int i = 0; i < 16; i++) xp[((size_t)g * cols + c) * 16 + i] = xt_value(x, n_tok, cols, 16 * g + i, c);
        }
    }
}

/* R rows x G groups of accumulators over columns [c0, c1), added to (or, first block, stored in) yt. */
TARGET_AVX512 static inline __attribute__((always_inline)) void tile_f32(const float *w, int ldw, const float *xp, size_t gstride, size_t cstride, int c0, int c1, float *yt, int first, const int R, const int G) {
    __m512 acc[XT_ROWS][XT_GROUPS];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) acc[r][g] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(yt + r * XT_GROUPS * 16 + 16 * g);
    for (int c = c0; c < c1; c++) {
        __m512 xv[XT_GROUPS];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) xv[g] = _mm512_loadu_ps(xp + g * gstride + (size_t)c * cstride);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_set1_ps(w[(size_t)r * ldw + c]);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) acc[r][g] = _mm512_fmadd_ps(wv, xv[g], acc[r][g]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) _mm512_storeu_ps(yt + r * XT_GROUPS * 16 + 16 * g, acc[r][g]);
}

/* Every (R, G) a tile can have, each compiled with its loops unrolled and its accumulators in registers. */
#define XT_DISPATCH(TILE, ...)                                                                            \
    switch (G) {                                                                                          \
        case 4: switch (R) { case 6: TILE(__VA_ARGS__, 6, 4); break; case 5: TILE(__VA_ARGS__, 5, 4); break; \
                             case 4: TILE(__VA_ARGS__, 4, 4); break; case 3: TILE(__VA_ARGS__, 3, 4); break; \
                             case 2: TILE(__VA_ARGS__, 2, 4); break; default: TILE(__VA_ARGS__, 1, 4); } break; \
        case 3: switch (R) { case 6: TILE(__VA_ARGS__, 6, 3); break; case 5: TILE(__VA_ARGS__, 5, 3); break; \
                             case 4: TILE(__VA_ARGS__, 4, 3); break; case 3: TILE(__VA_ARGS__, 3, 3); break; \
                             case 2: TILE(__VA_ARGS__, 2, 3); break; default: TILE(__VA_ARGS__, 1, 3); } break; \
        case 2: switch (R) { case 6: TILE(__VA_ARGS__, 6, 2); break; case 5: TILE(__VA_ARGS__, 5, 2); break; \
                             case 4: TILE(__VA_ARGS__, 4, 2); break; case 3: TILE(__VA_ARGS__, 3, 2); break; \
                             case 2: TILE(__VA_ARGS__, 2, 2); break; default: TILE(__VA_ARGS__, 1, 2); } break; \
        default: switch (R) { case 6: TILE(__VA_ARGS__, 6, 1); break; case 5: TILE(__VA_ARGS__, 5, 1); break; \
                              case 4: TILE(__VA_ARGS__, 4, 1); break; case 3: TILE(__VA_ARGS__, 3, 1); break; \
                              case 2: TILE(__VA_ARGS__, 2, 1); break; default: TILE(__VA_ARGS__, 1, 1); } \
    }

/* yt (rows of XT_GROUPS * 16) -> y[r][t] (stored, or added to what y holds), tokens < n_tok. */
TARGET_AVX512 static void store_rows(const float *yt, int n_rows, int n_tok, float *y, int ldy, int add) {
    const __mmask16 tail = (__mmask16)((1u << (n_tok & 15)) - 1);
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_tok; t += 16) {
            const __mmask16 m = t + 16 <= n_tok ? (__mmask16)0xffff : tail;
            __m512 v = _mm512_maskz_loadu_ps(m, yt + r * XT_GROUPS * 16 + t);
            if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, y + (size_t)r * ldy + t));
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + t, m, v);
        }
}

enum { OUT_TRANSPOSED, OUT_ROWS, OUT_ROWS_ADD };

/* One register tile of R rows x G groups at w (a row pointer) over packed columns [k0, k1) of xg
   (groups gstride apart, columns cstride apart, in 4-byte units), into ytr (stored when first). */
typedef void (*xt_tiles)(const void *w, int ldw, const void *xg, size_t gstride, size_t cstride, int k0, int k1, float *ytr, int first, int R, int G);

TARGET_AVX512 static void tiles_f32(const void *w, int ldw, const void *xg, size_t gstride, size_t cstride, int k0, int k1, float *ytr, int first, int R, int G) {
#define CALL_F32(dummy, R_, G_) tile_f32((const float *)w, ldw, (const float *)xg, gstride, cstride, k0, k1, ytr, first, R_, G_)
    XT_DISPATCH(CALL_F32, 0)
}

/* The blocking every packed GEMM shares, over weights of w_bytes per value: out[t][r]
 * (OUT_TRANSPOSED) or out[r][t] (OUT_ROWS: stored; OUT_ROWS_ADD: added) = sum over the n_inner
 * packed columns c of W[r][c] X(t, c), for rows [0, n_rows) of the row-major w and n_tok values
 * of t, X(t, c) at x + (t / 16) * gstride + c * cstride + t % 16 (16 consecutive t at each
 * (group, c), 4-byte units). Tokens in groups of XT_GROUPS * 16, rows in blocks of XT_BLOCK_ROWS
 * waiting in yt, columns in blocks of XT_KC. */
TARGET_AVX512 static void xt_blocks(xt_tiles tiles, size_t w_bytes, const void *w, int ldw, const void *x, size_t gstride, size_t cstride, int n_tok, int n_inner, float *y, int ldy, int n_rows, int out) {
    float yt[XT_BLOCK_ROWS * XT_GROUPS * 16];
    for (int t0 = 0; t0 < n_tok; t0 += XT_GROUPS * 16) {
        const int nt = n_tok - t0 < XT_GROUPS * 16 ? n_tok - t0 : XT_GROUPS * 16, G = round16(nt) / 16;
        const void *xg = (const uint32_t *)x + (size_t)(t0 / 16) * gstride;
        for (int rb = 0; rb < n_rows; rb += XT_BLOCK_ROWS) {
            const int nr = n_rows - rb < XT_BLOCK_ROWS ? n_rows - rb : XT_BLOCK_ROWS;
            for (int k0 = 0; k0 < n_inner; k0 += XT_KC) {
                const int k1 = k0 + XT_KC < n_inner ? k0 + XT_KC : n_inner;
                for (int r = 0; r < nr; r += XT_ROWS) {
                    const int R = nr - r < XT_ROWS ? nr - r : XT_ROWS;
                    tiles((const char *)w + (size_t)(rb + r) * ldw * w_bytes, ldw, xg, gstride, cstride, k0, k1, yt + r * XT_GROUPS * 16, k0 == 0, R, G);
                }
            }
            if (out == OUT_TRANSPOSED) untranspose(yt, nr, nt, y + (size_t)t0 * ldy + rb, ldy);
            else store_rows(yt, nr, nt, y + (size_t)rb * ldy + t0, ldy, out == OUT_ROWS_ADD);
        }
    }
}

/* Y[t, r] = dot(W[r, :], x[t, :]) for rows [0, n_rows) of w (row-major, ldw) and the n_tok tokens
 * packed in xp (pack_x_f32). */
TARGET_AVX512 static void gemm_f32_xt_avx512(const float *w, int ldw, const float *xp, int n_tok, int cols, float *y, int ldy, int n_rows) {
    xt_blocks(tiles_f32, sizeof(float), w, ldw, xp, (size_t)cols * 16, 16, n_tok, cols, y, ldy, n_rows, OUT_TRANSPOSED);
}

/* C[r][j] (+)= sum_c A[r][c] * B[c][j] for rows r < m, j < n (a multiple of 16), c < k: row-major
 * A (lda), B (ldb) and C (ldc). */
TARGET_AVX512 static void gemm_f32_ab_avx512(const float *a, int lda, const float *b, int ldb, int n, int k, float *c, int ldc, int m, int add) {
    xt_blocks(tiles_f32, sizeof(float), a, lda, b, 16, (size_t)ldb, n, k, c, ldc, m, add ? OUT_ROWS_ADD : OUT_ROWS);
}

void plm_fill_avx512_xt(plm_kernels *k) {
    k->pack_x_f32 = pack_x_f32_avx512;
    k->gemm_f32_xt = gemm_f32_xt_avx512;
    k->gemm_f32_ab = gemm_f32_ab_avx512;
}

/* ---- bf16 (vdpbf16ps): pairs of columns -------------------------------------------------------- */
TARGET_AVX512BF16 static void pack_x_bf16_avx512(const float *x, int n_tok, int cols, uint32_t *xp) {
    const int np = cols / 2, p16 = np & ~15;
    uint32_t pairs[16 * 16];
    for (int g = 0; g < round16(n_tok) / 16; g++) {
        const int whole = 16 * g + 16 <= n_tok;
        for (int k = 0; k < np; k++) {
            uint32_t *o = xp + ((size_t)g * np + k) * 16;
            if (whole && k < p16) { /* 16 tokens x 16 pairs: rounded per token, then transposed */
                for (int i = 0; i < 16; i++) {
                    const float *xt = x + (size_t)(16 * g + i) * cols + 2 * k;
                    _mm512_storeu_si512((void *)(pairs + 16 * i), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xt + 16), _mm512_loadu_ps(xt)));
                }
                transpose16((const float *)pairs, 16, (float *)o, 16);
                k += 15;
                continue;
            }
            for (int i = 0; i < 16; i++) {
                const int t = 16 * g + i;
                o[i] = (uint32_t)f32_to_bf16(xt_value(x, n_tok, cols, t, 2 * k)) | (uint32_t)f32_to_bf16(xt_value(x, n_tok, cols, t, 2 * k + 1)) << 16;
            }
        }
    }
}

TARGET_AVX512BF16 static inline __attribute__((always_inline)) void tile_bf16(const uint16_t *w, int ldw, const uint32_t *xp, size_t gstride, int k0, int k1, float *yt, int first, const int R, const int G) {
    __m512 acc[XT_ROWS][XT_GROUPS];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) acc[r][g] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(yt + r * XT_GROUPS * 16 + 16 * g);
    for (int k = k0; k < k1; k++) {
        __m512bh xv[XT_GROUPS];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) xv[g] = (__m512bh)_mm512_loadu_si512((const void *)(xp + g * gstride + (size_t)k * 16));
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, w + (size_t)r * ldw + 2 * k, 4);
            const __m512bh wv = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], wv, xv[g]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) _mm512_storeu_ps(yt + r * XT_GROUPS * 16 + 16 * g, acc[r][g]);
}

TARGET_AVX512BF16 static void tiles_bf16(const void *w, int ldw, const void *xg, size_t gstride, size_t cstride, int k0, int k1, float *ytr, int first, int R, int G) {
    (void)cstride; /* pairs are always packed 16 to a column */
#define CALL_BF16(dummy, R_, G_) tile_bf16((const uint16_t *)w, ldw, (const uint32_t *)xg, gstride, k0, k1, ytr, first, R_, G_)
    XT_DISPATCH(CALL_BF16, 0)
}

/* As gemm_f32_xt over bf16 weights (cols even) and an input packed by pack_x_bf16. */
TARGET_AVX512BF16 static void gemm_bf16_xt_avx512(const uint16_t *w, int ldw, const uint32_t *xp, int n_tok, int cols, float *y, int ldy, int n_rows) {
    xt_blocks(tiles_bf16, sizeof(uint16_t), w, ldw, xp, (size_t)cols / 2 * 16, 16, n_tok, cols / 2, y, ldy, n_rows, OUT_TRANSPOSED);
}

void plm_fill_avx512_bf16_xt(plm_kernels *k) {
    k->pack_x_bf16 = pack_x_bf16_avx512;
    k->gemm_bf16_xt = gemm_bf16_xt_avx512;
}
#endif
