/* GEMV kernel bandwidth: the engine's decode kernels streaming random weight matrices from memory,
 * on 1..N threads split as the engine splits them (contiguous row ranges with stealing). What the
 * round 2 kernel findings in benchmarks/RESULTS.md were measured with.
 *
 *   N=src/pocketlm/engine/native
 *   gcc -O3 -std=gnu11 -pthread -I$N -o /tmp/gemv_bench benchmarks/native/gemv_bench.c \
 *       $N/kernels.c $N/kernels_avx2.c $N/kernels_avx512.c $N/kernels_avx512_bf16.c \
 *       $N/gemm_xt_avx512.c $N/gemm_xt_avx2.c $N/threadpool.c -lm
 *   /tmp/gemv_bench DTYPE ROWS COLS MATRICES THREADS [ISA]     # DTYPE 0 fp32, 1 bf16, 2 int8, 3 int4
 *   /tmp/gemv_bench 3 1536 576 150 2                            # L's ffn matrices, 66 MB of int4
 *
 * Add -DPF_AHEAD=N to sweep the prefetch distance. Matrices together should exceed the last-level
 * cache (MATRICES x the matrix size), or the figure is the cache's, not memory's. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "plm.h"

#define CHUNK 32 /* rows per chunk, as the engine's GEMV path */

typedef struct {
    const plm_kernels *k;
    const plm_matrix *w;
    const plm_qvec *xq;
    const float *x;
    float *y;
    int n_ranges;
    plm_range ranges[PLM_MAX_THREADS];
} task;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void run_rows(void *arg, int ith, int nth) {
    task *t = (task *)arg;
    (void)nth;
    for (int c; (c = plm_ranges_next(t->ranges, t->n_ranges, ith)) >= 0;) {
        const int r0 = c * CHUNK, r1 = r0 + CHUNK < t->w->rows ? r0 + CHUNK : t->w->rows;
        for (int rb = r0; rb < r1; rb += 8) {
            const int re = rb + 8 < r1 ? rb + 8 : r1;
            switch (t->w->dtype) {
                case PLM_F32: t->k->gemv_f32(t->w, t->x, t->y, rb, re); break;
                case PLM_BF16: t->k->gemv_bf16(t->w, t->x, t->y, rb, re); break;
                case PLM_I8: t->k->gemv_i8(t->w, t->xq, t->y, rb, re); break;
                case PLM_I4: t->k->gemv_i4(t->w, t->xq, t->y, rb, re); break;
            }
        }
    }
}

static void *alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64); }

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s DTYPE(0 fp32,1 bf16,2 int8,3 int4) ROWS COLS MATRICES THREADS [ISA]\n", argv[0]);
        return 2;
    }
    const int dt = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]), n_mat = atoi(argv[4]), threads = atoi(argv[5]);
    plm_kernels k;
    plm_select_kernels(&k, argc > 6 ? argv[6] : "");
    const size_t bytes = dt == 3 ? (size_t)rows * cols / 2 : (size_t)rows * cols * (dt == 0 ? 4 : dt == 1 ? 2 : 1);
    plm_matrix *w = (plm_matrix *)calloc((size_t)n_mat, sizeof(plm_matrix));
    for (int i = 0; i < n_mat; i++) {
        unsigned char *d = (unsigned char *)alloc(bytes);
        for (size_t j = 0; j < bytes; j++) d[j] = (unsigned char)(rand() & 0x3f); /* small values: finite in every format */
        float *s = (float *)alloc(sizeof(float) * (size_t)rows);
        for (int r = 0; r < rows; r++) s[r] = 0.01f;
        uint16_t *h = (uint16_t *)alloc(2 * (size_t)rows * (size_t)cols / 32);
        for (size_t j = 0; j < (size_t)rows * cols / 32; j++) h[j] = 0x2000;
        w[i] = (plm_matrix){.dtype = (plm_dtype)dt, .rows = rows, .cols = cols, .group = 32, .data = d, .scale_f32 = s, .scale_f16 = h};
    }
    float *x = (float *)alloc(sizeof(float) * (size_t)cols), *y = (float *)alloc(sizeof(float) * (size_t)rows);
    for (int c = 0; c < cols; c++) x[c] = (float)(rand() % 100 - 50) / 50.f;
    const size_t nb = (size_t)cols / 32 * 8 + 64;
    plm_qvec q = {.q = alloc(cols), .scale = alloc(4 * nb), .bsum = alloc(4 * nb), .scale8 = alloc(4 * nb), .ssum8 = alloc(4 * nb),
                  .qp = alloc(cols), .scale8p = alloc(4 * nb), .ssum8p = alloc(4 * nb)};
    k.quantize(x, cols, &q);
    plm_pool *pool = plm_pool_acquire(threads);
    static task t;
    double best = 1e30;
    for (int it = 0; it < 20; it++) {
        const double t0 = now();
        for (int i = 0; i < n_mat; i++) {
            t = (task){.k = &k, .w = &w[i], .xq = &q, .x = x, .y = y, .n_ranges = plm_pool_size(pool)};
            plm_ranges_init(t.ranges, t.n_ranges, (rows + CHUNK - 1) / CHUNK);
            plm_pool_run(pool, run_rows, &t);
        }
        const double dt_s = now() - t0;
        if (dt_s < best) best = dt_s;
    }
    printf("%s dtype %d, %d x %d x %d matrices, %d threads: %.3f ms, %.1f GB/s, %.1f GMAC/s\n", k.name, dt, rows, cols, n_mat,
           plm_pool_size(pool), best * 1e3, (double)bytes * n_mat / best / 1e9, (double)rows * cols * n_mat / best / 1e9);
    return 0;
}
