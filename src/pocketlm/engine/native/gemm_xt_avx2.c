/* The fp32 prefill GEMMs on AVX2 + FMA: gemm_xt_avx512.c's scheme in 8-lane registers. The same
 * packed input (16-token columns, xp[(g * cols + c) * 16 + i] = x[16 g + i][c]); a register tile
 * of 6 rows x 16 tokens (12 accumulators, 2 input and 1 broadcast register of the 16); columns in
 * blocks that keep a group's packed input in L1/L2. Each output sums its products in column order,
 * block after block: the same bits whichever thread computes it. */
#include "kernels_simd.h"

#ifdef PLM_X86
#define X2_ROWS 6        /* rows per register tile */
#define X2_BLOCK_ROWS 64 /* rows whose outputs wait in the tile buffer */
#define X2_KC 512        /* columns per block: 16 tokens x 512 x 4 B = 32 KiB of packed input */

static inline int round16(int n) { return (n + 15) & ~15; }

static void pack_x_f32_avx2(const float *x, int n_tok, int cols, float *xp) {
    for (int g = 0; g < round16(n_tok) / 16; g++)
        for (int c = 0; c < cols; c++) {
            float *o = xp + ((size_t)g * cols + c) * 16;
            for (int i = 0; i < 16; i++) o[i] = 16 * g + i < n_tok ? x[(size_t)(16 * g + i) * cols + c] : 0.f;
        }
}

/* R rows x 16 tokens over columns [c0, c1), added to (or, first block, stored in) yt[r][16]. */
TARGET_AVX2 static inline __attribute__((always_inline)) void tile_avx2(const float *w, int ldw, const float *xg, size_t cstride, int c0, int c1, float *yt, int first, const int R) {
    __m256 lo[X2_ROWS], hi[X2_ROWS];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        lo[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(yt + 16 * r);
        hi[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(yt + 16 * r + 8);
    }
    for (int c = c0; c < c1; c++) {
        const __m256 x0 = _mm256_loadu_ps(xg + (size_t)c * cstride), x1 = _mm256_loadu_ps(xg + (size_t)c * cstride + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 wv = _mm256_broadcast_ss(w + (size_t)r * ldw + c);
            lo[r] = _mm256_fmadd_ps(wv, x0, lo[r]);
            hi[r] = _mm256_fmadd_ps(wv, x1, hi[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(yt + 16 * r, lo[r]);
        _mm256_storeu_ps(yt + 16 * r + 8, hi[r]);
    }
}

/* As gemm_xt_avx512.c's xt_blocks, one 16-token group at a time: out[t][r] (transposed) or out[r][t]
 * (stored, or added when add) for X(t, c) at x + (t / 16) * gstride + c * cstride + t % 16. */
TARGET_AVX2 static void xt_f32_avx2(const float *w, int ldw, const float *x, size_t gstride, size_t cstride, int n_tok, int cols, float *y, int ldy, int n_rows, int transposed, int add) {
    float yt[X2_BLOCK_ROWS * 16];
    for (int t0 = 0; t0 < n_tok; t0 += 16) {
        const int nt = n_tok - t0 < 16 ? n_tok - t0 : 16;
        const float *xg = x + (size_t)(t0 / 16) * gstride;
        for (int rb = 0; rb < n_rows; rb += X2_BLOCK_ROWS) {
            const int nr = n_rows - rb < X2_BLOCK_ROWS ? n_rows - rb : X2_BLOCK_ROWS;
            for (int c0 = 0; c0 < cols; c0 += X2_KC) {
                const int c1 = c0 + X2_KC < cols ? c0 + X2_KC : cols;
                for (int r = 0; r < nr; r += X2_ROWS) {
                    const float *wr = w + (size_t)(rb + r) * ldw;
                    float *ytr = yt + 16 * r;
                    switch (nr - r < X2_ROWS ? nr - r : X2_ROWS) {
                        case 6: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 6); break;
                        case 5: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 5); break;
                        case 4: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 4); break;
                        case 3: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 3); break;
                        case 2: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 2); break;
                        default: tile_avx2(wr, ldw, xg, cstride, c0, c1, ytr, c0 == 0, 1);
                    }
                }
            }
            for (int r = 0; r < nr; r++)
                for (int t = 0; t < nt; t++) {
                    float *o = transposed ? y + (size_t)(t0 + t) * ldy + rb + r : y + (size_t)(rb + r) * ldy + t0 + t;
                    *o = add ? *o + yt[16 * r + t] : yt[16 * r + t];
                }
        }
    }
}

TARGET_AVX2 static void gemm_f32_xt_avx2(const float *w, int ldw, const float *xp, int n_tok, int cols, float *y, int ldy, int n_rows) {
    xt_f32_avx2(w, ldw, xp, (size_t)cols * 16, 16, n_tok, cols, y, ldy, n_rows, 1, 0);
}

TARGET_AVX2 static void gemm_f32_ab_avx2(const float *a, int lda, const float *b, int ldb, int n, int k, float *c, int ldc, int m, int add) {
    xt_f32_avx2(a, lda, b, 16, (size_t)ldb, n, k, c, ldc, m, 0, add);
}

void plm_fill_avx2_xt(plm_kernels *k) {
    k->pack_x_f32 = pack_x_f32_avx2;
    k->gemm_f32_xt = gemm_f32_xt_avx2;
    k->gemm_f32_ab = gemm_f32_ab_avx2;
}
#endif
