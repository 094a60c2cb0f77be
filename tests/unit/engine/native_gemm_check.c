/* The prefill GEMM kernels against a double-precision reference, for test_native_gemm.py: every
 * kernel set this CPU runs (the ISA caps), shapes that leave every edge (rows not a multiple of a
 * register tile, tokens not a multiple of 16, columns over several blocks, odd columns), outputs
 * written only inside (n_tok, n_rows) of y, and the same bits whether the rows are computed at
 * once or in the engine's chunks; and the row-major product (gemm_f32_ab) stored and added. Prints one line per failure; exit status 1 if any. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plm.h"

#define SENTINEL 12345.0f

static int failures = 0;

static uint16_t bf16_round(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static float bf16_value(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static float uniform(void) { return (float)(rand() % 20001 - 10000) / 10000.f; }

/* y (n_tok rows of ldy) from the kernel set k over fp32 (bf16 = 0) or bf16 weights, rows computed
 * in chunks of `chunk` rows as the engine's workers do. Returns 0 when the kernel set lacks it. */
static int run(const plm_kernels *k, int bf16, const float *wf, const uint16_t *wb, const float *x, int rows, int cols, int n_tok, float *y,
               int ldy, int chunk) {
    void *xp = malloc(sizeof(float) * (size_t)((n_tok + 15) / 16 * 16) * (size_t)(cols + 1));
    int ran = 1;
    if (bf16 && k->gemm_bf16_xt) k->pack_x_bf16(x, n_tok, cols, (uint32_t *)xp);
    else if (!bf16 && k->gemm_f32_xt) k->pack_x_f32(x, n_tok, cols, (float *)xp);
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        const int nr = rows - r0 < chunk ? rows - r0 : chunk;
        if (bf16 && k->gemm_bf16_xt) k->gemm_bf16_xt(wb + (size_t)r0 * cols, cols, (const uint32_t *)xp, n_tok, cols, y + r0, ldy, nr);
        else if (!bf16 && k->gemm_f32_xt) k->gemm_f32_xt(wf + (size_t)r0 * cols, cols, (const float *)xp, n_tok, cols, y + r0, ldy, nr);
        else if (!bf16 && k->gemm_f32) k->gemm_f32(wf + (size_t)r0 * cols, cols, x, cols, y + r0, ldy, n_tok, nr, cols);
        else ran = 0;
    }
    free(xp);
    return ran;
}

static void check(const char *isa, int bf16, int rows, int cols, int n_tok) {
    plm_kernels k;
    plm_select_kernels(&k, isa);
    const int ldy = rows + 3; /* a gap after each token's outputs: must stay untouched */
    float *wf = malloc(sizeof(float) * (size_t)rows * cols), *x = malloc(sizeof(float) * (size_t)n_tok * cols);
    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)rows * cols);
    float *y = malloc(sizeof(float) * (size_t)(n_tok + 1) * ldy), *y1 = malloc(sizeof(float) * (size_t)(n_tok + 1) * ldy);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        wf[i] = uniform();
        wb[i] = bf16_round(wf[i]);
    }
    for (size_t i = 0; i < (size_t)n_tok * cols; i++) x[i] = uniform();
    for (size_t i = 0; i < (size_t)(n_tok + 1) * ldy; i++) y[i] = y1[i] = SENTINEL;
    if (!run(&k, bf16, wf, wb, x, rows, cols, n_tok, y, ldy, 64)) goto done;
    run(&k, bf16, wf, wb, x, rows, cols, n_tok, y1, ldy, rows); /* all rows in one call */
    const int paired = bf16 && k.gemm_bf16_xt;
    double worst = 0;
    for (int t = 0; t < n_tok + 1; t++)
        for (int r = 0; r < ldy; r++) {
            const size_t i = (size_t)t * ldy + r;
            if (t == n_tok || r >= rows) {
                if (y[i] != SENTINEL) {
                    printf("%s %s %dx%d, %d tokens: wrote outside the outputs at token %d row %d\n", k.name, bf16 ? "bf16" : "fp32", rows, cols, n_tok, t, r);
                    failures++;
                    goto done;
                }
                continue;
            }
            double ref = 0, mag = 0;
            for (int c = 0; c < cols; c++) {
                const double xv = paired ? bf16_value(bf16_round(x[(size_t)t * cols + c])) : x[(size_t)t * cols + c];
                const double wv = bf16 ? bf16_value(wb[(size_t)r * cols + c]) : wf[(size_t)r * cols + c];
                ref += xv * wv;
                mag += fabs(xv * wv);
            }
            const double err = fabs(y[i] - ref) / (mag + 1e-30);
            worst = err > worst ? err : worst;
            if (memcmp(&y[i], &y1[i], sizeof(float))) {
                printf("%s %s %dx%d, %d tokens: chunked rows differ from one call at token %d row %d (%g vs %g)\n", k.name, bf16 ? "bf16" : "fp32", rows,
                       cols, n_tok, t, r, y[i], y1[i]);
                failures++;
                goto done;
            }
        }
    if (worst > 1e-5) { /* fp32 sums of up to a few thousand products: ~1e-7 relative each */
        printf("%s %s %dx%d, %d tokens: relative error %g\n", k.name, bf16 ? "bf16" : "fp32", rows, cols, n_tok, worst);
        failures++;
    }
done:
    free(wf); free(x); free(wb); free(y); free(y1);
}

/* C (+)= A B for the attention's probabilities x values: row-major A (m, k), B (k, n), C (m, n),
 * each with a wider leading dimension whose extra columns must stay untouched. */
static void check_ab(const char *isa, int m, int n, int k, int add) {
    plm_kernels kt;
    plm_select_kernels(&kt, isa);
    if (!kt.gemm_f32_ab) return;
    const int lda = k + 5, ldb = n + 7, ldc = n + 3;
    float *a = malloc(sizeof(float) * (size_t)m * lda), *b = malloc(sizeof(float) * (size_t)k * ldb), *c = malloc(sizeof(float) * (size_t)(m + 1) * ldc);
    for (size_t i = 0; i < (size_t)m * lda; i++) a[i] = uniform();
    for (size_t i = 0; i < (size_t)k * ldb; i++) b[i] = uniform();
    for (size_t i = 0; i < (size_t)(m + 1) * ldc; i++) c[i] = (size_t)(i % ldc) < (size_t)n && i / ldc < (size_t)m ? uniform() : SENTINEL;
    float *before = malloc(sizeof(float) * (size_t)(m + 1) * ldc);
    memcpy(before, c, sizeof(float) * (size_t)(m + 1) * ldc);
    kt.gemm_f32_ab(a, lda, b, ldb, n, k, c, ldc, m, add);
    for (int r = 0; r < m + 1; r++)
        for (int j = 0; j < ldc; j++) {
            const size_t i = (size_t)r * ldc + j;
            if (r == m || j >= n) {
                if (c[i] != SENTINEL) {
                    printf("%s ab %dx%dx%d add %d: wrote outside C at row %d column %d\n", kt.name, m, n, k, add, r, j);
                    failures++;
                    goto done;
                }
                continue;
            }
            double ref = add ? before[i] : 0, mag = add ? fabs(before[i]) : 0;
            for (int q = 0; q < k; q++) {
                ref += (double)a[(size_t)r * lda + q] * b[(size_t)q * ldb + j];
                mag += fabs((double)a[(size_t)r * lda + q] * b[(size_t)q * ldb + j]);
            }
            if (fabs(c[i] - ref) > 1e-5 * (mag + 1e-30)) {
                printf("%s ab %dx%dx%d add %d: C[%d][%d] = %g, expected %g\n", kt.name, m, n, k, add, r, j, c[i], ref);
                failures++;
                goto done;
            }
        }
done:
    free(a); free(b); free(c); free(before);
}

int main(int argc, char **argv) {
    static const int shapes[][3] = {
        {1, 2, 17}, {5, 30, 17}, {7, 34, 31}, {17, 64, 32}, {70, 96, 33}, {130, 40, 64}, {64, 1030, 65},
        {13, 1600, 48}, {200, 18, 100}, {6, 2, 150}, {96, 515, 20}, {33, 1025, 47},
    };
    for (int a = 1; a < argc; a++) /* the ISA caps to test */
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int bf16 = 0; bf16 < 2; bf16++) {
                const int cols = shapes[s][1];
                if (bf16 && cols % 2) continue; /* the engine pairs columns only when cols is even */
                check(argv[a], bf16, shapes[s][0], cols, shapes[s][2]);
            }
    static const int ab[][3] = {{1, 16, 1}, {7, 64, 33}, {64, 128, 700}, {70, 16, 5}, {13, 48, 1030}};
    for (int a = 1; a < argc; a++)
        for (size_t s = 0; s < sizeof ab / sizeof ab[0]; s++)
            for (int add = 0; add < 2; add++) check_ab(argv[a], ab[s][0], ab[s][1], ab[s][2], add);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
