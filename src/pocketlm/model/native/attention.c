/* Causal self-attention forward and backward for CPU training: fp32, AVX-512, head sizes that
 * are multiples of 16. PyTorch's CPU flash kernel tiles for long sequences and large heads; at
 * the small heads (32) and contexts (<= a few thousand) of small models it reaches a third of the
 * machine's matmul speed. Here each block of 8 query rows computes its whole causal row of
 * scores at once (8 x T floats stay in L1/L2), so softmax needs no online rescaling, and the
 * five products of the backward pass run as register-blocked AVX-512 loops.
 *
 * Layout: q (B, H, T, D), k and v (B, KV, T, D) given by element strides (b, h, t) with unit
 * stride along D; grouped-query heads share kv head h / (H / KV). The forward returns out and
 * lse = log-sum-exp of each row's scaled scores (B, H, T), which the backward reuses instead of
 * storing probabilities. Work is split over (batch, kv head) pairs, so dK and dV have one writer.
 *
 * Packed rows (several documents one after another in a row) pass starts (B, T): the first
 * position of each query's document, nondecreasing along a row. Query t then sees keys
 * starts[t] .. t only, and a block of 8 query rows computes no score left of its first row's
 * document (rounded down to 16 keys): a row of short documents costs about the sum of their
 * squared lengths, not T squared.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef _OPENMP
#error "build with -fopenmp (setup.py does): the kernels run on torch's OpenMP threads"
#endif
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define ROWS 8 /* query rows per block: 8 x 2 zmm accumulators in every product */
#define AVX512 __attribute__((target("avx512f,avx512dq,fma")))

typedef struct {
    const float *base;
    Py_ssize_t sb, sh, st; /* element strides of batch, head, position */
} view;

typedef struct {
    view q, k, v, o, dout, dq, dk, dv;
    float *lse; /* (B, H, T) contiguous */
    const int32_t *starts; /* (B, T) contiguous: first position of each query's document; NULL: 0 */
    int B, H, KV, T, D;
    float scale;
    int n_threads;
    int backward;
} job;

#define ROW(vw, b, h, t) ((vw).base + (Py_ssize_t)(b) * (vw).sb + (Py_ssize_t)(h) * (vw).sh + (Py_ssize_t)(t) * (vw).st)

#if HAVE_X86

/* e^x for x <= 0 (scores minus their row maximum): Taylor degree 6 on the reduced argument. */
AVX512 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* out[r][j] = sum_d a[r][d] * bt[d][j] for 8 rows and j < n (n a multiple of 16): scores Q K^T
 * and dP = dO V^T, with the right operand transposed (bt is D x ldb) so keys run along lanes. */
AVX512 static void rows_times_t(const float *a, int D, const float *bt, int ldb, int n, float *out, int ldo) {
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        __m512 acc[ROWS][2];
        for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int d = 0; d < D; d++) {
            const __m512 b0 = _mm512_loadu_ps(bt + (size_t)d * ldb + j), b1 = _mm512_loadu_ps(bt + (size_t)d * ldb + j + 16);
            for (int r = 0; r < ROWS; r++) {
                const __m512 av = _mm512_set1_ps(a[r * D + d]);
                acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm512_storeu_ps(out + (size_t)r * ldo + j, acc[r][0]);
            _mm512_storeu_ps(out + (size_t)r * ldo + j + 16, acc[r][1]);
        }
    }
    for (; j < n; j += 16) {
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int d = 0; d < D; d++) {
            const __m512 b0 = _mm512_loadu_ps(bt + (size_t)d * ldb + j);
            for (int r = 0; r < ROWS; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * D + d]), b0, acc[r]);
        }
        for (int r = 0; r < ROWS; r++) _mm512_storeu_ps(out + (size_t)r * ldo + j, acc[r]);
    }
}

/* out[r][c] = sum_{j < n} p[r][j] * b_j[c] for 8 rows, c < D: P V and dS K, with b_j the rows of
 * a strided (T, D) matrix. */
AVX512 static void rows_times(const float *p, int ldp, int n, const float *b, Py_ssize_t ldb, int D, float *out) {
    int c = 0;
    for (; c + 32 <= D; c += 32) {
        __m512 acc[ROWS][2];
        for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int j = 0; j < n; j++) {
            const __m512 b0 = _mm512_loadu_ps(b + j * ldb + c), b1 = _mm512_loadu_ps(b + j * ldb + c + 16);
            for (int r = 0; r < ROWS; r++) {
                const __m512 pv = _mm512_set1_ps(p[(size_t)r * ldp + j]);
                acc[r][0] = _mm512_fmadd_ps(pv, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(pv, b1, acc[r][1]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm512_storeu_ps(out + r * D + c, acc[r][0]);
            _mm512_storeu_ps(out + r * D + c + 16, acc[r][1]);
        }
    }
    if (c < D) { /* one 16-wide column block left */
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int j = 0; j < n; j++) {
            const __m512 b0 = _mm512_loadu_ps(b + j * ldb + c);
            for (int r = 0; r < ROWS; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)r * ldp + j]), b0, acc[r]);
        }
        for (int r = 0; r < ROWS; r++) _mm512_storeu_ps(out + r * D + c, acc[r]);
    }
}

/* acc_j[c] += sum_r p[r][j] * a[r][c] for j < n, c < D: dV += P^T dO and dK += dS^T Q. The 8 x 32
 * block of a stays in registers while j sweeps the keys, four keys at a time so that eight
 * independent accumulators hide the FMA latency (one key alone is a chain of 8 dependent FMAs). */
AVX512 static void add_rows_t_times(const float *p, int ldp, int n, const float *a, int D, float *acc, Py_ssize_t ldacc) {
    for (int c = 0; c < D; c += 32) {
        const int two = c + 32 <= D; /* else one 16-wide column block */
        __m512 a0[ROWS], a1[ROWS];
        for (int r = 0; r < ROWS; r++) {
            a0[r] = _mm512_loadu_ps(a + r * D + c);
            a1[r] = two ? _mm512_loadu_ps(a + r * D + c + 16) : _mm512_setzero_ps();
        }
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            __m512 s0[4], s1[4];
            for (int u = 0; u < 4; u++) {
                s0[u] = _mm512_loadu_ps(acc + (j + u) * ldacc + c);
                s1[u] = two ? _mm512_loadu_ps(acc + (j + u) * ldacc + c + 16) : _mm512_setzero_ps();
            }
            for (int r = 0; r < ROWS; r++) {
                for (int u = 0; u < 4; u++) {
                    const __m512 pv = _mm512_set1_ps(p[(size_t)r * ldp + j + u]);
                    s0[u] = _mm512_fmadd_ps(pv, a0[r], s0[u]);
                    if (two) s1[u] = _mm512_fmadd_ps(pv, a1[r], s1[u]);
                }
            }
            for (int u = 0; u < 4; u++) {
                _mm512_storeu_ps(acc + (j + u) * ldacc + c, s0[u]);
                if (two) _mm512_storeu_ps(acc + (j + u) * ldacc + c + 16, s1[u]);
            }
        }
        for (; j < n; j++) {
            float *dst = acc + j * ldacc + c;
            __m512 s0 = _mm512_loadu_ps(dst), s1 = two ? _mm512_loadu_ps(dst + 16) : _mm512_setzero_ps();
            for (int r = 0; r < ROWS; r++) {
                const __m512 pv = _mm512_set1_ps(p[(size_t)r * ldp + j]);
                s0 = _mm512_fmadd_ps(pv, a0[r], s0);
                s1 = _mm512_fmadd_ps(pv, a1[r], s1);
            }
            _mm512_storeu_ps(dst, s0);
            if (two) _mm512_storeu_ps(dst + 16, s1);
        }
    }
}

/* dst[0:D] = src[0:D] * s (D a multiple of 16): block rows in and out without a libc call. */
AVX512 static inline void copy_scaled(float *dst, const float *src, int D, float s) {
    const __m512 v = _mm512_set1_ps(s);
    for (int d = 0; d < D; d += 16) _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_loadu_ps(src + d), v));
}

AVX512 static inline void zero_floats(float *dst, int n16) {
    for (int d = 0; d < n16; d += 16) _mm512_storeu_ps(dst + d, _mm512_setzero_ps());
}

AVX512 static inline float dot(const float *a, const float *b, int D) {
    __m512 s = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), s);
    return _mm512_reduce_add_ps(s);
}

/* lanes j < left of a 16-lane block (all of them from 16 on, none at 0 or below) */
static inline __mmask16 lanes_below(int left) {
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

AVX512 static float hmax(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
    if (j < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes_below(n - j), x + j));
    return _mm512_reduce_max_ps(m);
}

/* row[j] = e^(scale * row[j] - shift) for lo <= j < valid, 0 for the other j of k0 .. n16 (k0 and
 * n16 multiples of 16); returns the sum. */
AVX512 static float exp_span(float *row, int k0, int lo, int valid, int n16, float scale, float shift) {
    const __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps();
    for (int j = k0; j < n16; j += 16) {
        const __mmask16 live = lanes_below(valid - j) & (__mmask16)~lanes_below(lo - j);
        const __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_fmsub_ps(_mm512_loadu_ps(row + j), vs, vm)));
        _mm512_storeu_ps(row + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

/* ds[j] = p[j] * (dp[j] - delta) * scale, in place in dp. */
AVX512 static void softmax_grad_row(const float *p, float *dp, int n16, float delta, float scale) {
    const __m512 vd = _mm512_set1_ps(delta), vs = _mm512_set1_ps(scale);
    for (int j = 0; j < n16; j += 16)
        _mm512_storeu_ps(dp + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(dp + j), vd)), vs));
}

/* Ask for the rows of the next block ahead of time: rows of a (B, T, H, D) tensor are far apart
 * and the hardware prefetchers do not follow them. */
static inline void prefetch_rows(const view *vw, int b, int h, int t0, int nr, int D) {
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)ROW(*vw, b, h, t0 + r);
        for (int off = 0; off < D * 4; off += 64) __builtin_prefetch(row + off, 0, 3);
    }
}

/* dense (n, D) rows from a strided view: K and V are read by every row block of every query
 * head of the group, and at the row strides of a (B, T, H, D) tensor (1 KB and more) their rows
 * would fight over a few L1 sets. */
AVX512 static void copy_rows(const view *vw, int b, int h, int n, int D, float *dst) {
    for (int t = 0; t < n; t++) {
        if (t + 16 < n) prefetch_rows(vw, b, h, t + 16, 1, D);
        copy_scaled(dst + (size_t)t * D, ROW(*vw, b, h, t), D, 1.0f);
    }
}

/* dst (D x ldt) = the dense (n, D) rows of src transposed, columns n .. ldt zeroed: 16 positions
 * of one column per gather, so every store is a full vector. */
AVX512 static void transpose_rows(const float *src, int n, int D, float *dst, int ldt) {
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(D));
    for (int t = 0; t < ldt; t += 16) {
        const __mmask16 live = lanes_below(n - t);
        for (int d = 0; d < D; d++)
            _mm512_storeu_ps(dst + (size_t)d * ldt + t, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, lanes, src + (size_t)t * D + d, 4));
    }
}

/* 8 rows starting at t0 into a dense (8, D) block, rows past T zeroed. */
AVX512 static void gather_rows(const view *vw, int b, int h, int t0, int nr, int D, float *dst) {
    for (int r = 0; r < ROWS; r++) {
        if (r < nr)
            copy_scaled(dst + r * D, ROW(*vw, b, h, t0 + r), D, 1.0f);
        else
            zero_floats(dst + r * D, D);
    }
}

typedef struct {
    float *kt, *vt, *kc, *vc, *dkc, *dvc, *s, *p, *qb, *gb, *ob;
    int ldt;
} scratch;

AVX512 static void forward_head(const job *J, scratch *w, int b, int h) {
    const int T = J->T, D = J->D, ldt = w->ldt;
    float *lse = J->lse + ((size_t)b * J->H + h) * T;
    const int32_t *starts = J->starts ? J->starts + (size_t)b * T : NULL;
    for (int i0 = 0; i0 < T; i0 += ROWS) {
        const int nr = T - i0 < ROWS ? T - i0 : ROWS, n = i0 + nr, n16 = (n + 15) & ~15;
        const int k0 = starts ? starts[i0] & ~15 : 0; /* no row of the block sees a key before k0 */
        gather_rows(&J->q, b, h, i0, nr, D, w->qb);
        if (i0 + ROWS < T) prefetch_rows(&J->q, b, h, i0 + ROWS, T - i0 - ROWS < ROWS ? T - i0 - ROWS : ROWS, D);
        rows_times_t(w->qb, D, w->kt + k0, ldt, n16 - k0, w->s + k0, ldt);
        float inv_l[ROWS];
        for (int r = 0; r < ROWS; r++) {
            float *row = w->s + (size_t)r * ldt;
            if (r >= nr) {
                zero_floats(row + k0, n16 - k0);
                continue;
            }
            const int lo = starts ? starts[i0 + r] : 0, valid = i0 + r + 1; /* causal: keys lo .. i */
            const float m = hmax(row + lo, valid - lo) * J->scale;
            const float l = exp_span(row, k0, lo, valid, n16, J->scale, m); /* unnormalised: 1/l goes on the output */
            inv_l[r] = 1.0f / l;
            lse[i0 + r] = m + logf(l);
        }
        rows_times(w->s + k0, ldt, n - k0, w->vc + (size_t)k0 * D, D, D, w->ob);
        for (int r = 0; r < nr; r++) copy_scaled((float *)ROW(J->o, b, h, i0 + r), w->ob + r * D, D, inv_l[r]);
    }
}

AVX512 static void backward_head(const job *J, scratch *w, int b, int h) {
    const int T = J->T, D = J->D, ldt = w->ldt;
    const float *lse = J->lse + ((size_t)b * J->H + h) * T;
    const int32_t *starts = J->starts ? J->starts + (size_t)b * T : NULL;
    for (int i0 = 0; i0 < T; i0 += ROWS) {
        const int nr = T - i0 < ROWS ? T - i0 : ROWS, n = i0 + nr, n16 = (n + 15) & ~15;
        const int k0 = starts ? starts[i0] & ~15 : 0;
        gather_rows(&J->q, b, h, i0, nr, D, w->qb);
        gather_rows(&J->dout, b, h, i0, nr, D, w->gb);
        if (i0 + ROWS < T) {
            const int next = T - i0 - ROWS < ROWS ? T - i0 - ROWS : ROWS;
            prefetch_rows(&J->q, b, h, i0 + ROWS, next, D);
            prefetch_rows(&J->dout, b, h, i0 + ROWS, next, D);
            prefetch_rows(&J->o, b, h, i0 + ROWS, next, D);
        }
        rows_times_t(w->qb, D, w->kt + k0, ldt, n16 - k0, w->p + k0, ldt); /* scores */
        rows_times_t(w->gb, D, w->vt + k0, ldt, n16 - k0, w->s + k0, ldt); /* dP = dO V^T */
        for (int r = 0; r < ROWS; r++) {
            float *prow = w->p + (size_t)r * ldt, *dprow = w->s + (size_t)r * ldt;
            if (r >= nr) {
                zero_floats(prow + k0, n16 - k0);
                zero_floats(dprow + k0, n16 - k0);
                continue;
            }
            const int lo = starts ? starts[i0 + r] : 0;
            exp_span(prow, k0, lo, i0 + r + 1, n16, J->scale, lse[i0 + r]); /* P, from the saved lse */
            const float delta = dot(w->gb + r * D, ROW(J->o, b, h, i0 + r), D); /* rowsum(dO * O) = rowsum(P * dP) */
            softmax_grad_row(prow + k0, dprow + k0, n16 - k0, delta, J->scale); /* dS, scaled */
        }
        rows_times(w->s + k0, ldt, n - k0, w->kc + (size_t)k0 * D, D, D, w->ob); /* dQ = dS K */
        for (int r = 0; r < nr; r++) copy_scaled((float *)ROW(J->dq, b, h, i0 + r), w->ob + r * D, D, 1.0f);
        add_rows_t_times(w->p + k0, ldt, n - k0, w->gb, D, w->dvc + (size_t)k0 * D, D); /* dV += P^T dO */
        add_rows_t_times(w->s + k0, ldt, n - k0, w->qb, D, w->dkc + (size_t)k0 * D, D); /* dK += dS^T Q */
    }
}

/* Thread ith's share of the (batch, kv head) pairs; nonzero when its scratch could not be had. */
AVX512 static int run_share(const job *J, int ith) {
    const int items = J->B * J->KV, rep = J->H / J->KV;
    const int lo = (int)((long)items * ith / J->n_threads), hi = (int)((long)items * (ith + 1) / J->n_threads);
    if (lo >= hi) return 0;
    scratch w;
    w.ldt = (J->T + 15) & ~15;
    const size_t block = (size_t)ROWS * w.ldt, tbuf = (size_t)J->D * w.ldt;
    float *mem = (float *)aligned_alloc(64, sizeof(float) * (6 * tbuf + 2 * block + 3 * (size_t)ROWS * J->D + 64));
    if (!mem) return 1;
    w.kt = mem;
    w.vt = w.kt + tbuf;
    w.kc = w.vt + tbuf;
    w.vc = w.kc + tbuf;
    w.dkc = w.vc + tbuf;
    w.dvc = w.dkc + tbuf;
    w.s = w.dvc + tbuf;
    w.p = w.s + block;
    w.qb = w.p + block;
    w.gb = w.qb + ROWS * J->D;
    w.ob = w.gb + ROWS * J->D;
    for (int it = lo; it < hi; it++) {
        const int b = it / J->KV, kvh = it % J->KV;
        copy_rows(&J->k, b, kvh, J->T, J->D, w.kc);
        copy_rows(&J->v, b, kvh, J->T, J->D, w.vc);
        transpose_rows(w.kc, J->T, J->D, w.kt, w.ldt);
        if (J->backward) {
            transpose_rows(w.vc, J->T, J->D, w.vt, w.ldt);
            zero_floats(w.dkc, J->T * J->D);
            zero_floats(w.dvc, J->T * J->D);
        }
        for (int h = kvh * rep; h < (kvh + 1) * rep; h++) {
            if (J->backward)
                backward_head(J, &w, b, h);
            else
                forward_head(J, &w, b, h);
        }
        if (J->backward) {
            for (int t = 0; t < J->T; t++) {
                copy_scaled((float *)ROW(J->dk, b, kvh, t), w.dkc + (size_t)t * J->D, J->D, 1.0f);
                copy_scaled((float *)ROW(J->dv, b, kvh, t), w.dvc + (size_t)t * J->D, J->D, 1.0f);
            }
        }
    }
    free(mem);
    return 0;
}

/* The shares run on OpenMP's threads: loaded after torch, this module shares torch's libgomp (one
 * runtime per soname), so the kernels run on the very threads that spin-wait between torch's
 * own operators instead of competing with them for the cores. */
static int run_job(job *J) {
    int n = J->n_threads < 1 ? 1 : J->n_threads;
    if (n > J->B * J->KV) n = J->B * J->KV;
    J->n_threads = n;
    int err = 0;
#pragma omp parallel num_threads(n) reduction(| : err)
    {
        if (omp_get_num_threads() != n) { /* fewer threads than asked: take every share in turn */
            if (omp_get_thread_num() == 0)
                for (int i = 0; i < n; i++) err |= run_share(J, i);
        } else {
            err |= run_share(J, omp_get_thread_num());
        }
    }
    return err ? -1 : 0;
}

#endif /* HAVE_X86 */

static int supported(void) {
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

static int parse_view(PyObject *spec, view *out) {
    unsigned long long ptr;
    if (!PyArg_ParseTuple(spec, "Knnn", &ptr, &out->sb, &out->sh, &out->st)) return -1;
    out->base = (const float *)(uintptr_t)ptr;
    return 0;
}

/* Check the shapes and the CPU, then run the job with the GIL released. */
static PyObject *run_checked(job *J) {
    if (!supported() || J->D % 16 || J->D <= 0 || J->KV <= 0 || J->H % J->KV) {
        PyErr_SetString(PyExc_ValueError, "native attention needs AVX-512, a head size that is a multiple of 16 and H divisible by KV");
        return NULL;
    }
    int rc = 0;
#if HAVE_X86
    Py_BEGIN_ALLOW_THREADS rc = run_job(J);
    Py_END_ALLOW_THREADS
#endif
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* forward(q, k, v, out, lse_ptr, starts_ptr, (B, H, KV, T, D), scale, n_threads); each view is
 * (data_ptr, batch stride, head stride, position stride) in float elements; starts_ptr 0: none. */
static PyObject *py_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *q, *k, *v, *o;
    unsigned long long lse, starts;
    job J = {0};
    if (!PyArg_ParseTuple(args, "OOOOKK(iiiii)fi", &q, &k, &v, &o, &lse, &starts, &J.B, &J.H, &J.KV, &J.T, &J.D, &J.scale, &J.n_threads)) return NULL;
    if (parse_view(q, &J.q) || parse_view(k, &J.k) || parse_view(v, &J.v) || parse_view(o, &J.o)) return NULL;
    J.lse = (float *)(uintptr_t)lse;
    J.starts = (const int32_t *)(uintptr_t)starts;
    return run_checked(&J);
}

/* backward(q, k, v, out, dout, dq, dk, dv, lse_ptr, starts_ptr, (B, H, KV, T, D), scale, n_threads) */
static PyObject *py_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *q, *k, *v, *o, *g, *dq, *dk, *dv;
    unsigned long long lse, starts;
    job J = {0};
    if (!PyArg_ParseTuple(args, "OOOOOOOOKK(iiiii)fi", &q, &k, &v, &o, &g, &dq, &dk, &dv, &lse, &starts, &J.B, &J.H, &J.KV, &J.T, &J.D, &J.scale,
                          &J.n_threads))
        return NULL;
    J.starts = (const int32_t *)(uintptr_t)starts;
    if (parse_view(q, &J.q) || parse_view(k, &J.k) || parse_view(v, &J.v) || parse_view(o, &J.o) || parse_view(g, &J.dout) ||
        parse_view(dq, &J.dq) || parse_view(dk, &J.dk) || parse_view(dv, &J.dv))
        return NULL;
    J.lse = (float *)(uintptr_t)lse;
    J.backward = 1;
    return run_checked(&J);
}

static PyObject *py_supported(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(supported());
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS, "Causal attention forward into out and lse (see attention.c)."},
    {"backward", py_backward, METH_VARARGS, "Causal attention backward into dq, dk, dv (see attention.c)."},
    {"supported", py_supported, METH_NOARGS, "Whether this CPU runs the kernels (AVX-512 F and DQ)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attention", "Native causal attention for CPU training.", -1, methods};

PyMODINIT_FUNC PyInit__attention(void) { return PyModule_Create(&module); }
