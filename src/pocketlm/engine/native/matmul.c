/* Matrix products over the thread pool: the GEMV path (decode, batched decode: every row read once
 * for all tokens) and the GEMM path (prefill), with the fused MLP epilogue and the prefill inputs
 * the fast GEMMs take. */
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

typedef struct {
    plm_model *m;
    mm_job jobs[3];
    int n_jobs, n_tok;
    int fuse; /* FUSE_GATED: jobs 0 and 1 are gate and up, act(gate + b0) * (up + b1) is applied to
                 each chunk as it is done; FUSE_ACT: act(y + b0) on job 0's chunks */
    int act;  /* PLM_ACT_* */
    const float *b0, *b1; /* biases of the fused jobs, or NULL */
    /* The chunks of rows left, a contiguous range per thread (see plm_range): a thread that lost
       its core to another program does less of the work instead of holding everyone up (each
       row's arithmetic is the same whoever computes it: the same results). */
    int n_ranges;
    plm_range ranges[PLM_MAX_THREADS];
} mm_task;

/* y rows [r0, r1) of one job on the GEMV path: blocks of 8 rows, each block read from memory
   once and kept in L1 for every token. */
static void gemv_rows(plm_model *m, const mm_task *t, const mm_job *job, int r0, int r1) {
    const plm_matrix *w = job->w;
    for (int rb = r0; rb < r1; rb += 8) {
        const int re = rb + 8 < r1 ? rb + 8 : r1;
        for (int tok = 0; tok < t->n_tok; tok++) {
            const float *x = job->x + (size_t)tok * w->cols;
            float *y = job->y + (size_t)tok * w->rows;
            switch (w->dtype) {
                case PLM_F32: m->k.gemv_f32(w, x, y, rb, re); break;
                case PLM_BF16: m->k.gemv_bf16(w, x, y, rb, re); break;
                case PLM_I8: m->k.gemv_i8(w, &job->xq[tok], y, rb, re); break;
                case PLM_I4: m->k.gemv_i4(w, &job->xq[tok], y, rb, re); break;
            }
        }
    }
}

/* y rows [r0, r1) of one job on the prefill path. Integer GEMM for int8 (VNNI); bf16 and fp32
   weights straight into the packed-input GEMMs; int4 (and int8 without VNNI) dequantised ROW_BLOCK
   rows at a time into this thread's scratch first, as bf16 where the CPU has the bf16 GEMM, as
   float otherwise. The portable kernels take the row-major float GEMM. */
static void gemm_rows(plm_model *m, const mm_task *t, const mm_job *job, int r0, int r1, int ith) {
    const plm_matrix *w = job->w;
    const int cols = w->cols, n = t->n_tok;
    float *scratch = m->wscratch + (size_t)ith * ROW_BLOCK * (size_t)m->wide;
    uint16_t *scratch_bf16 = m->wscratch_bf16 + (size_t)ith * ROW_BLOCK * (size_t)m->wide;
    if (job->xq) { /* int8 weights on the integer GEMM */
        m->k.gemm_i8(w, r0, r1, job->xq, n, job->y, w->rows);
        return;
    }
    if (job->xpb && w->dtype == PLM_BF16) {
        m->k.gemm_bf16_xt((const uint16_t *)w->data + (size_t)r0 * cols, cols, job->xpb, n, cols, job->y + r0, w->rows, r1 - r0);
        return;
    }
    if (job->xpf && w->dtype == PLM_F32) {
        m->k.gemm_f32_xt((const float *)w->data + (size_t)r0 * cols, cols, job->xpf, n, cols, job->y + r0, w->rows, r1 - r0);
        return;
    }
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        if (w->dtype == PLM_F32) { /* no packed GEMM on this CPU */
            m->k.gemm_f32((const float *)w->data + (size_t)rb * cols, cols, job->x, cols, job->y + rb, w->rows, n, re - rb, cols);
        } else if (job->xpb) {
            if (w->dtype == PLM_I4) { /* rows are whole 32-value blocks (the int4 format) */
                m->k.i4_to_bf16(w, rb, re, scratch_bf16);
            } else { /* int8 where a CPU has bf16 but no integer GEMM (none today) */
                plm_dequant_rows(w, rb, re, scratch);
                m->k.to_bf16(scratch, scratch_bf16, (size_t)(re - rb) * cols);
            }
            m->k.gemm_bf16_xt(scratch_bf16, cols, job->xpb, n, cols, job->y + rb, w->rows, re - rb);
        } else {
            plm_dequant_rows(w, rb, re, scratch);
            if (job->xpf) m->k.gemm_f32_xt(scratch, cols, job->xpf, n, cols, job->y + rb, w->rows, re - rb);
            else m->k.gemm_f32(scratch, cols, job->x, cols, job->y + rb, w->rows, n, re - rb, cols);
        }
    }
}

/* The fused epilogue on rows [r0, r1) of every token: biases, then the activation (times up's
   output when gated), vectorised (k.glu). */
static void fused_epilogue(const plm_model *m, const mm_task *t, int r0, int r1) {
    const int rows = t->jobs[0].w->rows;
    for (int tok = 0; tok < t->n_tok; tok++) {
        float *g = t->jobs[0].y + (size_t)tok * rows, *u = NULL;
        if (t->b0)
            for (int r = r0; r < r1; r++) g[r] += t->b0[r];
        if (t->fuse == FUSE_GATED) {
            u = t->jobs[1].y + (size_t)tok * rows;
            if (t->b1)
                for (int r = r0; r < r1; r++) u[r] += t->b1[r];
        }
        m->k.glu(g + r0, u ? u + r0 : NULL, r1 - r0, t->act);
    }
}

/* Chunks of rows are taken dynamically: chunk c of every job laid end to end, or, fused with
   SwiGLU, chunk c of gate and up together, then silu(gate) * up on it while it is in cache.
   Chunk edges do not depend on the thread count: the same results with any number of threads. */
static int chunk_rows(const mm_task *t) { return t->n_tok <= GEMV_MAX ? GEMV_CHUNK : GEMM_CHUNK; }

static int task_chunks(const mm_task *t) {
    const int size = chunk_rows(t);
    int chunks = 0;
    for (int j = 0; j < (t->fuse != FUSE_NONE ? 1 : t->n_jobs); j++) chunks += (t->jobs[j].w->rows + size - 1) / size;
    return chunks;
}

static void mm_worker(void *p, int ith, int nth) {
    mm_task *t = (mm_task *)p;
    plm_model *m = t->m;
    const int gemv = t->n_tok <= GEMV_MAX;
    const int size = chunk_rows(t);
    (void)nth;
    const int paired = t->fuse == FUSE_GATED, one = t->fuse != FUSE_NONE;
    for (int c; (c = plm_ranges_next(t->ranges, t->n_ranges, ith)) >= 0;) {
        int j = 0, first = c;
        while (!one && first >= (t->jobs[j].w->rows + size - 1) / size) {
            first -= (t->jobs[j].w->rows + size - 1) / size;
            j++;
        }
        const int rows = t->jobs[j].w->rows;
        const int r0 = first * size, r1 = r0 + size < rows ? r0 + size : rows;
        for (int k = j; k < (paired ? 2 : j + 1); k++) {
            if (gemv) gemv_rows(m, t, &t->jobs[k], r0, r1);
            else gemm_rows(m, t, &t->jobs[k], r0, r1, ith);
        }
        if (one) fused_epilogue(m, t, r0, r1);
    }
}

/* Prefill inputs for the fast GEMMs, prepared once per call (the jobs of one call share their
   input): int8 weights meet it quantised per token as in decode (integer GEMM, VNNI); bf16 and
   int4 weights meet it packed as bf16 pairs (vdpbf16ps) where the CPU has AVX512-BF16; the rest
   meet it packed as floats where the CPU has AVX2 or AVX-512 (gemm_xt_avx*.c). Measured on L, 128-token
   prompt: int8 1.43x and int4 1.34x the float GEMM. */
static void prepare_gemm_inputs(plm_model *m, mm_task *t) {
    const float *x = t->jobs[0].x;
    const int cols = t->jobs[0].w->cols;
    int quantised = 0, paired = 0, packed = 0;
    for (int j = 0; j < t->n_jobs; j++) {
        mm_job *job = &t->jobs[j];
        const plm_dtype dt = job->w->dtype;
        if (dt == PLM_I8 && m->k.gemm_i8) {
            if (!quantised)
                for (int tok = 0; tok < t->n_tok; tok++) m->k.quantize(x + (size_t)tok * cols, cols, &m->qx[tok]);
            quantised = 1;
            job->xq = m->qx;
        } else if (dt != PLM_F32 && m->k.gemm_bf16_xt && cols % 2 == 0) { /* vdpbf16ps takes pairs */
            if (!paired) m->k.pack_x_bf16(x, t->n_tok, cols, m->xp_bf16);
            paired = 1;
            job->xpb = m->xp_bf16;
        } else if (m->k.gemm_f32_xt) {
            if (!packed) m->k.pack_x_f32(x, t->n_tok, cols, m->xp_f32);
            packed = 1;
            job->xpf = m->xp_f32;
        }
    }
}

void plm_matmul_ex(plm_model *m, int n_tok, int n_jobs, mm_job *jobs, int fuse, int act, const float *b0, const float *b1) {
    mm_task t = {.m = m, .n_jobs = n_jobs, .n_tok = n_tok, .fuse = fuse, .act = act, .b0 = b0, .b1 = b1};
    for (int j = 0; j < n_jobs; j++) t.jobs[j] = jobs[j];
    if (n_tok > GEMV_MAX) prepare_gemm_inputs(m, &t);
    t.n_ranges = plm_pool_size(m->pool);
    plm_ranges_init(t.ranges, t.n_ranges, task_chunks(&t));
    plm_pool_run(m->pool, mm_worker, &t);
}

void plm_matmul(plm_model *m, int n_tok, int n_jobs, mm_job *jobs) { plm_matmul_ex(m, n_tok, n_jobs, jobs, FUSE_NONE, 0, NULL, NULL); }

/* On the GEMV path with integer weights each token's input is quantised once, shared by every row. */
const plm_qvec *plm_maybe_quantize(plm_model *m, const plm_matrix *w, const float *x, int slot, int n_tok) {
    if (n_tok > GEMV_MAX || (w->dtype != PLM_I8 && w->dtype != PLM_I4)) return NULL;
    for (int t = 0; t < n_tok; t++) m->k.quantize(x + (size_t)t * w->cols, w->cols, &m->qv[slot][t]);
    return m->qv[slot];
}

