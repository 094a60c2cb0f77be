/* The forward pass of the Llama-style decoder and its family options: prefill (T tokens, small
 * GEMMs) and decode (1 token, GEMVs), with a float KV cache owned by the model object. Options
 * cost a branch per layer (or per matmul chunk) when off: a Llama model runs the loops it ran
 * before they existed. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plm.h"

#define ROW_BLOCK 16 /* rows dequantised at a time for prefill GEMMs */
#define GEMV_MAX 16  /* up to this many tokens per call (decode, batched decode) run the GEMV kernels:
                        exactly the arithmetic of a single sequence's decode, weights read once */
#define GEMV_CHUNK 32 /* rows a thread takes at a time on the GEMV path (a multiple of 8) */
#define GEMM_CHUNK 64 /* and on the prefill path (a multiple of ROW_BLOCK) */

struct plm_model {
    plm_config cfg;
    plm_matrix embed, lm_head;
    plm_norm final_norm;
    const float *lm_head_bias;
    plm_layer *layers;
    plm_matrix *expert_mats; /* every layer's expert matrices (the layers point into it) */
    plm_kernels k;
    plm_pool *pool;
    /* runtime state */
    float *k_cache, *v_cache; /* per slot, per layer: ring_len[l] positions of kv_dim values */
    int *ring_len;            /* (n_layers,) max_seq, or fewer for a sliding layer: a rolling cache */
    size_t *layer_off;        /* (n_layers,) where each layer's positions start within a slot */
    size_t slot_len;          /* values one slot holds */
    const int32_t *pos, *slot; /* of the tokens in the current call */
    int rope_long;             /* this call rotates PLM_ROPE_GLOBAL layers with the long set */
    float *rope_cos[PLM_ROPE_SETS], *rope_sin[PLM_ROPE_SETS]; /* (max_seq, rotary_dim / 2) each */
    float *x, *xn, *xb, *xo, *q, *kk, *vv, *att, *hb, *hb2, *scores; /* activations for max_batch tokens */
    float *xg, *yd, *route_w, *weight_of, *probs; /* mixture of experts: gathered inputs, expert outputs, routing */
    int32_t *route_e, *tokens_of;
    int wide;                  /* the most columns of any matrix: max(dim, hidden, q_dim) */
    int hidden;                /* the widest MLP: ffn_dim, expert_ffn_dim, shared_ffn_dim */
    float *wscratch;           /* per thread: ROW_BLOCK * wide dequantised weights */
    uint16_t *wscratch_bf16;   /* per thread: the same rounded to bf16 (prefill with gemm_bf16) */
    uint16_t *x_bf16;          /* max_batch * wide: a prefill matmul's input rounded to bf16 */
    plm_qvec *qx;              /* max_batch: a prefill matmul's input quantised per token (integer GEMMs) */
    plm_qvec qv[2][GEMV_MAX];  /* quantised activations per token (two inputs live at once) */
    int profiling;
    double prof[PLM_PROF_N], prof_t;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Charge the time since the last mark to `phase` (a no-op unless profiling). */
static inline void mark(plm_model *m, int phase) {
    if (!m->profiling) return;
    const double t = now_s();
    if (phase >= 0) m->prof[phase] += t - m->prof_t;
    m->prof_t = t;
}

void plm_model_profile(plm_model *m, int enable, double *out) {
    if (out) memcpy(out, m->prof, sizeof(m->prof));
    memset(m->prof, 0, sizeof(m->prof));
    m->profiling = enable;
}

static size_t kv_dim(const plm_config *c) { return (size_t)c->n_kv_heads * c->head_dim; }
static size_t q_dim(const plm_config *c) { return (size_t)c->n_heads * c->head_dim; }

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (p) memset(p, 0, (n + 63) / 64 * 64);
    return p;
}

static int qvec_alloc(plm_qvec *v, int n) {
    v->q = (int8_t *)xalloc((size_t)n + 64);
    v->scale = (float *)xalloc(sizeof(float) * (size_t)(n / 32 + 2));
    v->bsum = (int32_t *)xalloc(sizeof(int32_t) * (size_t)(n / 32 + 2));
    v->scale8 = (float *)xalloc(sizeof(float) * (size_t)(n / 32 * 8 + 32)); /* masked tails read 16 past the end */
    v->ssum8 = (float *)xalloc(sizeof(float) * (size_t)(n / 32 * 8 + 32));
    v->qp = (int8_t *)xalloc((size_t)n + 64);
    v->scale8p = (float *)xalloc(sizeof(float) * (size_t)(n / 32 * 8 + 32));
    v->ssum8p = (float *)xalloc(sizeof(float) * (size_t)(n / 32 * 8 + 32));
    v->n = n;
    return v->q && v->scale && v->bsum && v->scale8 && v->ssum8 && v->qp && v->scale8p && v->ssum8p;
}

static void qvec_free(plm_qvec *v) {
    free(v->q); free(v->scale); free(v->bsum); free(v->scale8); free(v->ssum8);
    free(v->qp); free(v->scale8p); free(v->ssum8p);
}

/* ---- matrix products over the pool -------------------------------------------------------- */
typedef struct {
    const plm_matrix *w;
    const float *x;      /* (n_tok, w->cols) float input */
    const plm_qvec *xq;  /* GEMV path with integer weights: one quantised vector per token */
    float *y;            /* (n_tok, w->rows) */
    const uint16_t *xb;  /* GEMM path on bf16 kernels: x rounded to bf16, or NULL (float GEMM) */
} mm_job;

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

/* y rows [r0, r1) of one job on the prefill path: dequantise ROW_BLOCK rows at a time into this
   thread's scratch, then one small GEMM over every token (bf16 weights need no copy on the bf16
   kernels; fp32 weights always take the float GEMM). */
static void gemm_rows(plm_model *m, const mm_task *t, const mm_job *job, int r0, int r1, int ith) {
    const plm_matrix *w = job->w;
    const int cols = w->cols;
    float *scratch = m->wscratch + (size_t)ith * ROW_BLOCK * (size_t)m->wide;
    if (job->xq) { /* int8 weights on the integer GEMM */
        m->k.gemm_i8(w, r0, r1, job->xq, t->n_tok, job->y, w->rows);
        return;
    }
    if (job->xb && w->dtype == PLM_BF16) {
        m->k.gemm_bf16((const uint16_t *)w->data + (size_t)r0 * cols, cols, job->xb, cols, job->y + r0, w->rows, t->n_tok, r1 - r0, cols);
        return;
    }
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        if (w->dtype == PLM_F32) {
            m->k.gemm_f32((const float *)w->data + (size_t)rb * cols, cols, job->x, cols, job->y + rb, w->rows, t->n_tok, re - rb, cols);
            continue;
        }
        if (job->xb) {
            uint16_t *wb = m->wscratch_bf16 + (size_t)ith * ROW_BLOCK * (size_t)m->wide;
            if (w->dtype == PLM_I4 && cols % 32 == 0) {
                m->k.i4_to_bf16(w, rb, re, wb);
            } else {
                plm_dequant_rows(w, rb, re, scratch);
                m->k.to_bf16(scratch, wb, (size_t)(re - rb) * cols);
            }
            m->k.gemm_bf16(wb, cols, job->xb, cols, job->y + rb, w->rows, t->n_tok, re - rb, cols);
        } else {
            plm_dequant_rows(w, rb, re, scratch);
            m->k.gemm_f32(scratch, cols, job->x, cols, job->y + rb, w->rows, t->n_tok, re - rb, cols);
        }
    }
}

enum { FUSE_NONE, FUSE_GATED, FUSE_ACT };

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

/* Prefill inputs for the fast GEMMs, converted once per call (the jobs of one call share their
   input): int8 weights meet it quantised per token as in decode (integer GEMM, VNNI); bf16 and
   int4 weights (dequantised) meet it rounded to bf16 (vdpbf16ps) where the CPU has AVX512-BF16.
   Measured on L, 128-token prompt: int8 1.43x and int4 1.34x the float GEMM. */
static void prepare_gemm_inputs(plm_model *m, mm_task *t) {
    const float *x = t->jobs[0].x;
    const int cols = t->jobs[0].w->cols;
    int quantised = 0, rounded = 0;
    for (int j = 0; j < t->n_jobs; j++) {
        mm_job *job = &t->jobs[j];
        const plm_dtype dt = job->w->dtype;
        if (job->x != x || dt == PLM_F32) continue;
        if (dt == PLM_I8 && m->k.gemm_i8) {
            if (!quantised)
                for (int tok = 0; tok < t->n_tok; tok++) m->k.quantize(x + (size_t)tok * cols, cols, &m->qx[tok]);
            quantised = 1;
            job->xq = m->qx;
        } else if (m->k.gemm_bf16) {
            if (!rounded) m->k.to_bf16(x, m->x_bf16, (size_t)t->n_tok * cols);
            rounded = 1;
            job->xb = m->x_bf16;
        }
    }
}

static void matmul_ex(plm_model *m, int n_tok, int n_jobs, mm_job *jobs, int fuse, int act, const float *b0, const float *b1) {
    mm_task t = {.m = m, .n_jobs = n_jobs, .n_tok = n_tok, .fuse = fuse, .act = act, .b0 = b0, .b1 = b1};
    for (int j = 0; j < n_jobs; j++) t.jobs[j] = jobs[j];
    if (n_tok > GEMV_MAX) prepare_gemm_inputs(m, &t);
    t.n_ranges = plm_pool_size(m->pool);
    plm_ranges_init(t.ranges, t.n_ranges, task_chunks(&t));
    plm_pool_run(m->pool, mm_worker, &t);
}

static void matmul(plm_model *m, int n_tok, int n_jobs, mm_job *jobs) { matmul_ex(m, n_tok, n_jobs, jobs, FUSE_NONE, 0, NULL, NULL); }

/* On the GEMV path with integer weights each token's input is quantised once, shared by every row. */
static const plm_qvec *maybe_quantize(plm_model *m, const plm_matrix *w, const float *x, int slot, int n_tok) {
    if (n_tok > GEMV_MAX || (w->dtype != PLM_I8 && w->dtype != PLM_I4)) return NULL;
    for (int t = 0; t < n_tok; t++) m->k.quantize(x + (size_t)t * w->cols, w->cols, &m->qv[slot][t]);
    return m->qv[slot];
}

/* ---- attention ------------------------------------------------------------------------------ */
typedef struct {
    plm_model *m;
    int layer, n_tok;
    atomic_int next_job; /* (token, head) pairs are taken one at a time, as the matmuls' chunks */
} att_task;

/* Position pos of a layer's cache: a sliding layer's rolling cache holds position p at p % ring_len
 * (ring_len covers the window, a call's max_batch tokens and kv_rewind: every key a query reads). */
static size_t cache_offset(const plm_model *m, int slot, int layer, int pos) {
    return (size_t)slot * m->slot_len + m->layer_off[layer] + (size_t)(pos % m->ring_len[layer]) * kv_dim(&m->cfg);
}

static void att_worker(void *p, int ith, int nth) {
    att_task *t = (att_task *)p;
    plm_model *m = t->m;
    const plm_config *c = &m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads, window = m->layers[t->layer].window;
    const size_t kvd = kv_dim(c), qd = q_dim(c);
    const float inv = c->attn_scale > 0.f ? c->attn_scale : 1.0f / sqrtf((float)hd), cap = c->attn_softcap;
    const int total = t->n_tok * c->n_heads;
    float *scores = m->scores + (size_t)ith * c->max_seq;
    (void)nth;
    for (int job; (job = atomic_fetch_add_explicit(&t->next_job, 1, memory_order_relaxed)) < total;) {
        const int tok = job / c->n_heads, h = job % c->n_heads, kvh = h / group;
        const int pos = m->pos[tok]; /* attends to keys first..pos of its own sequence */
        const int first = window && pos >= window ? pos - window + 1 : 0; /* a sliding layer: the last `window` */
        const int n_keys = pos - first + 1;
        /* Key i (position first + i) sits at ring row start + i, wrapping to row i - run1 after
           the ring's end: two contiguous runs (one for a full cache, whose ring is max_seq long). */
        const int ring = m->ring_len[t->layer], start = first % ring, run1 = n_keys < ring - start ? n_keys : ring - start;
        const float *kc = m->k_cache + cache_offset(m, m->slot[tok], t->layer, 0) + (size_t)kvh * hd;
        const float *vc = m->v_cache + cache_offset(m, m->slot[tok], t->layer, 0) + (size_t)kvh * hd;
        const float *q = m->q + (size_t)tok * qd + (size_t)h * hd;
        for (int run = 0; run < 2; run++) {
            const int i0 = run ? run1 : 0, i1 = run ? n_keys : run1, row = run ? -run1 : start; /* key i: row + i */
            if (i1 > i0) m->k.scores(q, kc + (size_t)(row + i0) * kvd, kvd, i1 - i0, hd, inv, scores + i0);
        }
        float mx = -INFINITY;
        if (cap > 0.f) /* Gemma 2: cap * tanh(score / cap) */
            for (int i = 0; i < n_keys; i++) scores[i] = tanhf(scores[i] / cap) * cap;
        for (int i = 0; i < n_keys; i++) mx = scores[i] > mx ? scores[i] : mx;
        const float norm = 1.0f / m->k.exp_sum(scores, n_keys, mx);
        for (int i = 0; i < n_keys; i++) scores[i] *= norm;
        float *out = m->att + (size_t)tok * qd + (size_t)h * hd;
        memset(out, 0, sizeof(float) * (size_t)hd);
        for (int run = 0; run < 2; run++) {
            const int i0 = run ? run1 : 0, i1 = run ? n_keys : run1, row = run ? -run1 : start;
            if (i1 > i0) m->k.wsum(scores + i0, vc + (size_t)(row + i0) * kvd, kvd, i1 - i0, hd, out);
        }
    }
}

/* ---- elementwise ------------------------------------------------------------------------------ */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

/* out may be x: every statistic is taken before the first write. */
static void layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps) {
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    const float r = 1.0f / sqrtf((float)(var / n) + eps), mu = (float)mean;
    for (int i = 0; i < n; i++) out[i] = (x[i] - mu) * r * w[i] + b[i];
}

/* n_vec vectors of n values (stride n), in place allowed. */
static void norm_rows(const plm_model *m, float *out, const float *x, plm_norm nm, int n_vec, int n) {
    for (int v = 0; v < n_vec; v++) {
        if (m->cfg.norm_kind == PLM_NORM_LAYER) layernorm(out + (size_t)v * n, x + (size_t)v * n, nm.w, nm.b, n, m->cfg.norm_eps);
        else rmsnorm(out + (size_t)v * n, x + (size_t)v * n, nm.w, n, m->cfg.norm_eps);
    }
}

static void add_bias(float *y, const float *b, int n_vec, int n) {
    if (!b) return;
    for (int v = 0; v < n_vec; v++)
        for (int i = 0; i < n; i++) y[(size_t)v * n + i] += b[i];
}

/* Rotate the first rotary_dim values of each head (rotate-half layout) by the set's angles at pos. */
static void rope(const plm_model *m, float *v, int n_heads, int pos, int set) {
    const int half = m->cfg.rotary_dim / 2;
    const float *cs = m->rope_cos[set] + (size_t)pos * half, *sn = m->rope_sin[set] + (size_t)pos * half;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * m->cfg.head_dim;
        for (int i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cs[i] - b * sn[i];
            x[i + half] = b * cs[i] + a * sn[i];
        }
    }
}

/* ---- blocks ----------------------------------------------------------------------------------- */
/* Attention of layer l over xn (n tokens) into xb: q/k/v (+ biases, q/k norms, rotary), the cache
 * write, attention, o_proj (+ bias). */
static void attention_block(plm_model *m, int l, int n) {
    const plm_config *c = &m->cfg;
    const plm_layer *L = &m->layers[l];
    const size_t kvd = kv_dim(c), qd = q_dim(c);
    const plm_qvec *xq = maybe_quantize(m, &L->wq, m->xn, 0, n);
    mm_job qkv[3] = {{&L->wq, m->xn, xq, m->q}, {&L->wk, m->xn, xq, m->kk}, {&L->wv, m->xn, xq, m->vv}};
    matmul(m, n, 3, qkv);
    mark(m, PLM_PROF_QKV);
    const int set = L->rope_set == PLM_ROPE_GLOBAL && m->rope_long ? PLM_ROPE_LONG : L->rope_set;
    for (int t = 0; t < n; t++) {
        float *q = m->q + (size_t)t * qd, *k = m->kk + (size_t)t * kvd, *v = m->vv + (size_t)t * kvd;
        if (L->bq) for (size_t i = 0; i < qd; i++) q[i] += L->bq[i];
        if (L->bk) for (size_t i = 0; i < kvd; i++) k[i] += L->bk[i];
        if (L->bv) for (size_t i = 0; i < kvd; i++) v[i] += L->bv[i];
        if (c->qk_norm) {
            norm_rows(m, q, q, L->q_norm, c->n_heads, c->head_dim);
            norm_rows(m, k, k, L->k_norm, c->n_kv_heads, c->head_dim);
        }
        rope(m, q, c->n_heads, m->pos[t], set);
        rope(m, k, c->n_kv_heads, m->pos[t], set);
        memcpy(m->k_cache + cache_offset(m, m->slot[t], l, m->pos[t]), k, sizeof(float) * kvd);
        memcpy(m->v_cache + cache_offset(m, m->slot[t], l, m->pos[t]), v, sizeof(float) * kvd);
    }
    mark(m, PLM_PROF_ROPE_CACHE);
    att_task at = {.m = m, .layer = l, .n_tok = n};
    atomic_init(&at.next_job, 0);
    plm_pool_run(m->pool, att_worker, &at);
    mark(m, PLM_PROF_ATTENTION);
    const plm_qvec *aq = maybe_quantize(m, &L->wo, m->att, 0, n);
    mm_job o = {&L->wo, m->att, aq, m->xb};
    matmul(m, n, 1, &o);
    add_bias(m->xb, L->bo, n, c->dim);
}

/* y (n, dim) = down(act(gate(x) + bg) * (up(x) + bu)) + bd, or down(act(up(x) + bu)) + bd without a gate. */
static void ffn(plm_model *m, const plm_matrix *gate, const plm_matrix *up, const plm_matrix *down, const float *bg, const float *bu,
                const float *bd, const float *x, int n, float *y) {
    const plm_qvec *xq = maybe_quantize(m, up, x, 0, n);
    if (gate) {
        mm_job gu[2] = {{gate, x, xq, m->hb}, {up, x, xq, m->hb2}};
        matmul_ex(m, n, 2, gu, FUSE_GATED, m->cfg.activation, bg, bu); /* hb = act(gate) * up, fused into the workers */
    } else {
        mm_job u = {up, x, xq, m->hb};
        matmul_ex(m, n, 1, &u, FUSE_ACT, m->cfg.activation, bu, NULL);
    }
    mark(m, PLM_PROF_FFN_UP);
    const plm_qvec *dq = maybe_quantize(m, down, m->hb, 1, n);
    mm_job d = {down, m->hb, dq, y};
    matmul(m, n, 1, &d);
    add_bias(y, bd, n, m->cfg.dim);
    mark(m, PLM_PROF_FFN_DOWN);
}

/* The router of one token: the top_k experts (ties to the lower id) and their weights, from the
 * softmax over every expert in fp32, renormalised over the chosen ones when the family does. */
static void route(plm_model *m, const plm_layer *L, const float *x, int32_t *experts, float *weights) {
    const plm_config *c = &m->cfg;
    float mx = -INFINITY, sum = 0.f;
    for (int e = 0; e < c->n_experts; e++) {
        m->probs[e] = m->k.dot(L->router + (size_t)e * c->dim, x, c->dim);
        if (m->probs[e] > mx) mx = m->probs[e];
    }
    for (int e = 0; e < c->n_experts; e++) sum += (m->probs[e] = expf(m->probs[e] - mx));
    for (int e = 0; e < c->n_experts; e++) m->probs[e] /= sum;
    float chosen = 0.f;
    for (int j = 0; j < c->top_k; j++) {
        int best = -1;
        for (int e = 0; e < c->n_experts; e++) {
            if (best >= 0 && m->probs[e] <= m->probs[best]) continue;
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= experts[i] == e;
            if (!taken) best = e;
        }
        experts[j] = best;
        weights[j] = m->probs[best];
        chosen += weights[j];
    }
    if (c->router_renormalise)
        for (int j = 0; j < c->top_k; j++) weights[j] /= chosen;
}

/* Mixture of experts over x (n, dim) into y: each expert (in ascending order) runs once over the
 * tokens routed to it, its outputs added with their weights; then the sigmoid-gated shared expert. */
static void moe_block(plm_model *m, const plm_layer *L, const float *x, int n, float *y) {
    const plm_config *c = &m->cfg;
    const int dim = c->dim, k = c->top_k;
    for (int t = 0; t < n; t++) route(m, L, x + (size_t)t * dim, m->route_e + (size_t)t * k, m->route_w + (size_t)t * k);
    memset(y, 0, sizeof(float) * (size_t)n * dim);
    for (int e = 0; e < c->n_experts; e++) {
        int count = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                if (m->route_e[t * k + j] == e) {
                    m->tokens_of[count] = t;
                    m->weight_of[count] = m->route_w[t * k + j];
                    count++;
                }
        if (!count) continue;
        const float *in = x;
        if (count < n) { /* every token in order needs no gather */
            for (int i = 0; i < count; i++) memcpy(m->xg + (size_t)i * dim, x + (size_t)m->tokens_of[i] * dim, sizeof(float) * dim);
            in = m->xg;
        }
        const plm_matrix *w = L->experts + 3 * (size_t)e;
        ffn(m, &w[0], &w[1], &w[2], NULL, NULL, NULL, in, count, m->yd);
        for (int i = 0; i < count; i++) {
            const float wt = m->weight_of[i], *src = m->yd + (size_t)i * dim;
            float *dst = y + (size_t)m->tokens_of[i] * dim;
            for (int d = 0; d < dim; d++) dst[d] += src[d] * wt;
        }
    }
    if (!c->shared_ffn_dim) return;
    ffn(m, &L->sgate, &L->sup, &L->sdown, NULL, NULL, NULL, x, n, m->yd);
    for (int t = 0; t < n; t++) {
        const float g = 1.0f / (1.0f + expf(-m->k.dot(L->shared_gate, x + (size_t)t * dim, dim)));
        for (int d = 0; d < dim; d++) y[(size_t)t * dim + d] += g * m->yd[(size_t)t * dim + d];
    }
}

static void mlp_block(plm_model *m, const plm_layer *L, const float *x, int n, float *y) {
    if (m->cfg.n_experts) moe_block(m, L, x, n, y);
    else ffn(m, m->cfg.mlp_gated ? &L->wgate : NULL, &L->wup, &L->wdown, L->bgate, L->bup, L->bdown, x, n, y);
}

/* ---- forward ---------------------------------------------------------------------------------- */
static void forward_chunk(plm_model *m, const int32_t *tokens, const int32_t *pos, const int32_t *slot, int n, float *logits, int all_logits, int need_logits) {
    const plm_config *c = &m->cfg;
    const int dim = c->dim;
    const size_t nd = (size_t)n * dim;
    m->pos = pos;
    m->slot = slot;
    mark(m, -1);
    for (int t = 0; t < n; t++) plm_dequant_rows(&m->embed, tokens[t], tokens[t] + 1, m->x + (size_t)t * dim);
    if (c->embed_scale != 1.0f)
        for (size_t i = 0; i < nd; i++) m->x[i] *= c->embed_scale;
    mark(m, PLM_PROF_EMBED);
    for (int l = 0; l < c->n_layers; l++) {
        const plm_layer *L = &m->layers[l];
        norm_rows(m, m->xn, m->x, L->attn_norm, n, dim);
        mark(m, PLM_PROF_NORM);
        attention_block(m, l, n); /* -> xb */
        if (c->parallel_block) { /* Phi-2: the MLP reads the same normed input; x + (attn + mlp) */
            mark(m, PLM_PROF_OPROJ);
            mlp_block(m, L, m->xn, n, m->xo);
            for (size_t i = 0; i < nd; i++) m->x[i] += m->xb[i] + m->xo[i];
            continue;
        }
        if (c->sandwich_norms) norm_rows(m, m->xb, m->xb, L->attn_out_norm, n, dim);
        for (size_t i = 0; i < nd; i++) m->x[i] += m->xb[i];
        mark(m, PLM_PROF_OPROJ);
        norm_rows(m, m->xn, m->x, L->ffn_norm, n, dim);
        mark(m, PLM_PROF_NORM);
        mlp_block(m, L, m->xn, n, m->xo);
        if (c->sandwich_norms) norm_rows(m, m->xo, m->xo, L->ffn_out_norm, n, dim);
        for (size_t i = 0; i < nd; i++) m->x[i] += m->xo[i];
    }
    if (!need_logits) return;
    const int rows = all_logits ? n : 1;
    norm_rows(m, m->xn, m->x + (all_logits ? 0 : (size_t)(n - 1) * dim), m->final_norm, rows, dim);
    mm_job head = {&m->lm_head, m->xn, maybe_quantize(m, &m->lm_head, m->xn, 0, rows), logits};
    matmul(m, rows, 1, &head);
    add_bias(logits, m->lm_head_bias, rows, c->vocab);
    if (c->final_softcap > 0.f) {
        const float cap = c->final_softcap;
        for (size_t i = 0; i < (size_t)rows * c->vocab; i++) logits[i] = tanhf(logits[i] / cap) * cap;
    }
    mark(m, PLM_PROF_HEAD);
}

int plm_model_forward(plm_model *m, const int32_t *tokens, const int32_t *positions, const int32_t *slots, int n, float *logits, int all_logits) {
    if (n < 1) return -1;
    int last_pos = 0;
    for (int i = 0; i < n; i++) {
        if (positions[i] < 0 || positions[i] >= m->cfg.max_seq) return -1;
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab) return -2;
        if (slots[i] < 0 || slots[i] >= m->cfg.n_slots) return -4;
        if (positions[i] > last_pos) last_pos = positions[i];
    }
    /* longrope picks its factors per call, as the torch model does: the long ones for every token
       of a call that reaches past the original context */
    m->rope_long = m->cfg.rope_long_after && last_pos + 1 > m->cfg.rope_long_after;
    for (int done = 0; done < n; done += m->cfg.max_batch) {
        int chunk = n - done < m->cfg.max_batch ? n - done : m->cfg.max_batch;
        int last = done + chunk == n;
        float *out = all_logits ? logits + (size_t)done * m->cfg.vocab : logits;
        /* an earlier chunk of a long prompt only fills the KV cache: no logits needed */
        forward_chunk(m, tokens + done, positions + done, slots + done, chunk, out, all_logits, all_logits || last);
    }
    return 0;
}

plm_model *plm_model_create(const plm_config *cfg, const plm_matrix *embed, const plm_matrix *lm_head, plm_norm final_norm,
                            const float *lm_head_bias, const plm_layer *layers, const float *const inv_freq[PLM_ROPE_SETS],
                            int n_threads, const char *isa) {
    plm_model *m = (plm_model *)calloc(1, sizeof(plm_model));
    if (!m) return NULL;
    m->cfg = *cfg;
    m->embed = *embed;
    m->lm_head = *lm_head;
    m->final_norm = final_norm;
    m->lm_head_bias = lm_head_bias;
    const size_t n_experts = (size_t)cfg->n_layers * 3 * (size_t)cfg->n_experts;
    m->layers = (plm_layer *)malloc(sizeof(plm_layer) * (size_t)cfg->n_layers);
    m->expert_mats = n_experts ? (plm_matrix *)malloc(sizeof(plm_matrix) * n_experts) : NULL;
    if (!m->layers || (n_experts && !m->expert_mats)) {
        free(m->layers);
        free(m);
        return NULL;
    }
    memcpy(m->layers, layers, sizeof(plm_layer) * (size_t)cfg->n_layers);
    for (int l = 0; l < cfg->n_layers && n_experts; l++) {
        plm_matrix *own = m->expert_mats + (size_t)l * 3 * cfg->n_experts;
        memcpy(own, layers[l].experts, sizeof(plm_matrix) * 3 * (size_t)cfg->n_experts);
        m->layers[l].experts = own;
    }
    plm_select_kernels(&m->k, isa);
    m->pool = plm_pool_acquire(n_threads);
    const size_t kvd = kv_dim(cfg), qd = q_dim(cfg), T = (size_t)cfg->max_batch, dim = (size_t)cfg->dim;
    int hidden = cfg->n_experts ? cfg->expert_ffn_dim : cfg->ffn_dim;
    if (cfg->shared_ffn_dim > hidden) hidden = cfg->shared_ffn_dim;
    m->hidden = hidden;
    /* o_proj reads q_dim columns: with an explicit head_dim that can exceed both dim and the MLP */
    size_t wide = dim > (size_t)hidden ? dim : (size_t)hidden;
    if (qd > wide) wide = qd;
    m->wide = (int)wide;
    m->ring_len = (int *)malloc(sizeof(int) * (size_t)cfg->n_layers);
    m->layer_off = (size_t *)malloc(sizeof(size_t) * (size_t)cfg->n_layers);
    if (!m->ring_len || !m->layer_off) {
        plm_model_destroy(m);
        return NULL;
    }
    size_t slot_positions = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        const long long need = (long long)m->layers[l].window + cfg->kv_rewind + cfg->max_batch; /* see cache_offset */
        m->ring_len[l] = m->layers[l].window && need < cfg->max_seq ? (int)need : cfg->max_seq;
        m->layer_off[l] = slot_positions * kvd;
        slot_positions += (size_t)m->ring_len[l];
    }
    size_t cache_values;
    if (__builtin_mul_overflow(slot_positions, kvd, &m->slot_len) || __builtin_mul_overflow(m->slot_len, (size_t)cfg->n_slots, &cache_values) ||
        cache_values > SIZE_MAX / (2 * sizeof(float))) {
        plm_model_destroy(m);
        return NULL;
    }
    const int half = cfg->rotary_dim / 2;
    int ok = 1;
    for (int s = 0; s < PLM_ROPE_SETS; s++) {
        if (!inv_freq[s]) continue;
        m->rope_cos[s] = (float *)xalloc(sizeof(float) * (size_t)cfg->max_seq * half);
        m->rope_sin[s] = (float *)xalloc(sizeof(float) * (size_t)cfg->max_seq * half);
        ok = ok && m->rope_cos[s] && m->rope_sin[s];
    }
    m->k_cache = (float *)xalloc(sizeof(float) * cache_values);
    m->v_cache = (float *)xalloc(sizeof(float) * cache_values);
    m->x = (float *)xalloc(sizeof(float) * T * dim);
    m->xn = (float *)xalloc(sizeof(float) * T * (dim > qd ? dim : qd));
    m->xb = (float *)xalloc(sizeof(float) * T * dim);
    m->xo = (float *)xalloc(sizeof(float) * T * dim);
    m->q = (float *)xalloc(sizeof(float) * T * qd);
    m->kk = (float *)xalloc(sizeof(float) * T * kvd);
    m->vv = (float *)xalloc(sizeof(float) * T * kvd);
    m->att = (float *)xalloc(sizeof(float) * T * qd);
    m->hb = (float *)xalloc(sizeof(float) * T * (size_t)hidden);
    m->hb2 = (float *)xalloc(sizeof(float) * T * (size_t)hidden);
    m->scores = (float *)xalloc(sizeof(float) * (size_t)plm_pool_size(m->pool) * cfg->max_seq);
    m->wscratch = (float *)xalloc(sizeof(float) * (size_t)plm_pool_size(m->pool) * ROW_BLOCK * wide);
    m->wscratch_bf16 = (uint16_t *)xalloc(sizeof(uint16_t) * (size_t)plm_pool_size(m->pool) * ROW_BLOCK * wide);
    m->x_bf16 = (uint16_t *)xalloc(sizeof(uint16_t) * T * wide);
    ok = ok && m->k_cache && m->v_cache && m->x && m->xn && m->xb && m->xo && m->q && m->kk && m->vv && m->att && m->hb && m->hb2 &&
         m->scores && m->wscratch && m->wscratch_bf16 && m->x_bf16;
    if (cfg->n_experts) {
        const size_t tk = T * (size_t)cfg->top_k;
        m->xg = (float *)xalloc(sizeof(float) * T * dim);
        m->weight_of = (float *)xalloc(sizeof(float) * T);
        m->yd = (float *)xalloc(sizeof(float) * T * dim);
        m->route_w = (float *)xalloc(sizeof(float) * tk);
        m->route_e = (int32_t *)xalloc(sizeof(int32_t) * tk);
        m->tokens_of = (int32_t *)xalloc(sizeof(int32_t) * T);
        m->probs = (float *)xalloc(sizeof(float) * (size_t)cfg->n_experts);
        ok = ok && m->xg && m->weight_of && m->yd && m->route_w && m->route_e && m->tokens_of && m->probs;
    }
    for (int i = 0; ok && i < 2; i++)
        for (int t = 0; ok && t < GEMV_MAX; t++) ok = qvec_alloc(&m->qv[i][t], (int)wide);
    m->qx = ok ? (plm_qvec *)calloc(T, sizeof(plm_qvec)) : NULL;
    ok = ok && m->qx;
    for (size_t t = 0; ok && t < T; t++) ok = qvec_alloc(&m->qx[t], (int)wide);
    if (!ok) {
        plm_model_destroy(m);
        return NULL;
    }
    for (int s = 0; s < PLM_ROPE_SETS; s++) {
        if (!inv_freq[s]) continue;
        for (int p = 0; p < cfg->max_seq; p++)
            for (int i = 0; i < half; i++) {
                /* as torch: angle = float32(pos) * inv_freq rounded to float32, cos/sin times the scale */
                const float angle = (float)p * inv_freq[s][i];
                float cs = cosf(angle), sn = sinf(angle);
                if (cfg->rope_scale != 1.0f) {
                    cs *= cfg->rope_scale;
                    sn *= cfg->rope_scale;
                }
                m->rope_cos[s][(size_t)p * half + i] = cs;
                m->rope_sin[s][(size_t)p * half + i] = sn;
            }
    }
    return m;
}

const char *plm_model_isa(const plm_model *m) { return m->k.name; }

void plm_model_destroy(plm_model *m) {
    if (!m) return;
    plm_pool_release(m->pool);
    free(m->layers);
    free(m->expert_mats);
    free(m->k_cache); free(m->v_cache); free(m->ring_len); free(m->layer_off);
    for (int s = 0; s < PLM_ROPE_SETS; s++) { free(m->rope_cos[s]); free(m->rope_sin[s]); }
    free(m->x); free(m->xn); free(m->xb); free(m->xo); free(m->q); free(m->kk); free(m->vv); free(m->att); free(m->hb); free(m->hb2);
    free(m->scores); free(m->wscratch); free(m->wscratch_bf16); free(m->x_bf16);
    free(m->xg); free(m->weight_of); free(m->yd); free(m->route_w); free(m->route_e); free(m->tokens_of); free(m->probs);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < GEMV_MAX; t++) qvec_free(&m->qv[i][t]);
    for (int t = 0; m->qx && t < m->cfg.max_batch; t++) qvec_free(&m->qx[t]);
    free(m->qx);
    free(m);
}
