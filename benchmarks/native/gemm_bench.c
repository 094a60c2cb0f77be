/* The prefill GEMM kernels on one thread, as the engine calls them: the prompt chunk's input
 * packed once, then chunks of 64 rows of a weight matrix against it (gemm_f32_xt / gemm_bf16_xt,
 * gemm_xt_avx512.c). Prints GMAC/s and the share of the instruction's own peak (24 independent
 * FMAs / vdpbf16ps on registers, measured here); correctness is test_native_gemm.py's job.
 * Round 2's row-major kernels ran 47-101 (AVX-512 fp32), 111-217 (bf16) and 14-18 (AVX2) GMAC/s
 * on the shapes below against the packed kernels' 88-115, 184-220 and 50-56 (benchmarks/RESULTS.md).
 *
 *   N=src/pocketlm/engine/native
 *   gcc -O3 -std=gnu11 -pthread -I$N -o /tmp/gemm_bench benchmarks/native/gemm_bench.c \
 *       $N/kernels.c $N/kernels_avx2.c $N/kernels_avx512.c $N/kernels_avx512_bf16.c \
 *       $N/gemm_xt_avx512.c $N/gemm_xt_avx2.c -lm
 *   /tmp/gemm_bench DTYPE ROWS COLS NTOK [ISA]     # DTYPE 0 fp32, 1 bf16
 *   /tmp/gemm_bench 1 4864 896 64                  # Qwen2.5-0.5B's gate, a 64-token chunk */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plm.h"

#ifndef CHUNK
#define CHUNK 64 /* GEMM_CHUNK (-DCHUNK=16: the rows int4 dequantises at a time) */
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64); }

/* GMAC/s of 24 independent accumulators on registers: what the instruction can do on this core. */
/* The same with 8-lane FMAs: the AVX2 kernels' ceiling. */
__attribute__((target("avx2,fma"))) static double peak256(void) {
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_setzero_ps();
    __m256 xf = _mm256_set1_ps(1e-9f), wf = _mm256_set1_ps(1.f);
    const long n = 40000000;
    const double t0 = now();
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(xf, wf, a[j]);
        __asm__ volatile("" : "+v"(xf));
    }
    const double s = now() - t0;
    float sum = 0;
    for (int i = 0; i < 12; i++) sum += a[i][0];
    if (sum == 12345.f) printf(" ");
    return 12.0 * 8 * (double)n / s / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double peak(int bf16) {
    __m512 a[24];
    for (int i = 0; i < 24; i++) a[i] = _mm512_setzero_ps();
    __m512 xf = _mm512_set1_ps(1e-9f), wf = _mm512_set1_ps(1.f);
    __m512bh xb = (__m512bh)_mm512_set1_epi32(0x3f803f80), wb = (__m512bh)_mm512_set1_epi32(0x30003000);
    const long n = 20000000;
    const double t0 = now();
    for (long i = 0; i < n; i++) {
#pragma GCC unroll 24
        for (int j = 0; j < 24; j++) a[j] = bf16 ? _mm512_dpbf16_ps(a[j], xb, wb) : _mm512_fmadd_ps(xf, wf, a[j]);
        __asm__ volatile("" : "+v"(xf), "+v"(xb));
    }
    const double s = now() - t0;
    float sum = 0;
    for (int i = 0; i < 24; i++) sum += _mm512_reduce_add_ps(a[i]);
    if (sum == 12345.f) printf(" ");
    return 24.0 * (bf16 ? 32 : 16) * (double)n / s / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s DTYPE(0 fp32, 1 bf16) ROWS COLS NTOK [ISA]\n", argv[0]);
        return 2;
    }
    const int dt = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]), n_tok = atoi(argv[4]);
    plm_kernels k;
    plm_select_kernels(&k, argc > 5 ? argv[5] : "");
    if (dt ? !k.gemm_bf16_xt : !k.gemm_f32_xt) {
        fprintf(stderr, "%s: no packed %s GEMM on this CPU\n", k.name, dt ? "bf16" : "fp32");
        return 1;
    }
    float *wf = alloc(4 * (size_t)rows * cols), *x = alloc(4 * (size_t)n_tok * cols);
    uint16_t *wb = alloc(2 * (size_t)rows * cols);
    float *xp = alloc(4 * (size_t)(n_tok + 15) * cols), *y = alloc(4 * (size_t)n_tok * rows);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        wf[i] = (float)(rand() % 2001 - 1000) / 1000.f;
        wb[i] = (uint16_t)(0x3c00 + rand() % 256);
    }
    for (size_t i = 0; i < (size_t)n_tok * cols; i++) x[i] = (float)(rand() % 2001 - 1000) / 1000.f;
    double best = 1e30;
    for (int it = 0; it < 10; it++) {
        const double t0 = now();
        if (dt == 0) k.pack_x_f32(x, n_tok, cols, xp);
        else k.pack_x_bf16(x, n_tok, cols, (uint32_t *)xp);
        for (int r0 = 0; r0 < rows; r0 += CHUNK) {
            const int nr = rows - r0 < CHUNK ? rows - r0 : CHUNK;
            if (dt == 0) k.gemm_f32_xt(wf + (size_t)r0 * cols, cols, xp, n_tok, cols, y + r0, rows, nr);
            else k.gemm_bf16_xt(wb + (size_t)r0 * cols, cols, (const uint32_t *)xp, n_tok, cols, y + r0, rows, nr);
        }
        const double s = now() - t0;
        if (s < best) best = s;
    }
    const double gmacs = (double)rows * cols * n_tok / best / 1e9, top = strcmp(k.name, "avx2") ? peak(dt) : peak256();
    printf("%s %s %d x %d, %d tokens: %.1f GMAC/s, %.0f%% of the instruction's %.1f on registers\n", k.name, dt ? "bf16" : "fp32", rows, cols,
           n_tok, gmacs, 100 * gmacs / top, top);
    return 0;
}
