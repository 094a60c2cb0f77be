/* The forward pass of the Llama-style decoder: prefill (T tokens, small GEMMs) and decode
 * (1 token, GEMVs), with a float KV cache owned by the model object. */
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
    const float *final_norm;
    plm_layer *layers;
    plm_kernels k;
    plm_pool *pool;
    /* runtime state */
    float *k_cache, *v_cache; /* (n_slots, n_layers, max_seq, kv_dim) */
    const int32_t *pos, *slot; /* of the tokens in the current call */
    float *rope_cos, *rope_sin; /* (max_seq, head_dim / 2) */
    float *x, *xn, *q, *kk, *vv, *att, *hb, *hb2, *scores; /* activations for max_batch tokens */
    int wide;                  /* the most columns of any matrix: max(dim, ffn_dim, q_dim) */
    float *wscratch;           /* per thread: ROW_BLOCK * wide dequantised weights */
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
} mm_job;

typedef struct {
    plm_model *m;
    mm_job jobs[3];
    int n_jobs, n_tok;
    int swiglu; /* jobs are gate and up: silu(gate) * up is applied to each chunk as it is done */
    /* The next chunk of rows to take. Threads take chunks until none is left, so a thread that
       lost its core to another program does less of the work instead of holding everyone up
       (each row's arithmetic is the same whoever computes it: the same results). */
    atomic_int next_chunk;
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
   thread's scratch, then one small GEMM over every token. */
static void gemm_rows(plm_model *m, const mm_task *t, const mm_job *job, int r0, int r1, int ith) {
    const plm_matrix *w = job->w;
    const int cols = w->cols;
    float *scratch = m->wscratch + (size_t)ith * ROW_BLOCK * (size_t)m->wide;
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        const float *wf;
        if (w->dtype == PLM_F32) {
            wf = (const float *)w->data + (size_t)rb * cols;
        } else {
            plm_dequant_rows(w, rb, re, scratch);
            wf = scratch;
        }
        m->k.gemm_f32(wf, cols, job->x, cols, job->y + rb, w->rows, t->n_tok, re - rb, cols);
    }
}

/* Chunks of rows are taken dynamically: chunk c of every job laid end to end, or, fused with
   SwiGLU, chunk c of gate and up together, then silu(gate) * up on it while it is in cache.
   Chunk edges do not depend on the thread count: the same results with any number of threads. */
static void mm_worker(void *p, int ith, int nth) {
    mm_task *t = (mm_task *)p;
    plm_model *m = t->m;
    const int gemv = t->n_tok <= GEMV_MAX;
    const int size = gemv ? GEMV_CHUNK : GEMM_CHUNK;
    (void)nth;
    int chunks = 0;
    for (int j = 0; j < (t->swiglu ? 1 : t->n_jobs); j++) chunks += (t->jobs[j].w->rows + size - 1) / size;
    for (int c; (c = atomic_fetch_add_explicit(&t->next_chunk, 1, memory_order_relaxed)) < chunks;) {
        int j = 0, first = c;
        while (!t->swiglu && first >= (t->jobs[j].w->rows + size - 1) / size) {
            first -= (t->jobs[j].w->rows + size - 1) / size;
            j++;
        }
        const int rows = t->jobs[j].w->rows;
        const int r0 = first * size, r1 = r0 + size < rows ? r0 + size : rows;
        for (int k = j; k < (t->swiglu ? 2 : j + 1); k++) {
            if (gemv) gemv_rows(m, t, &t->jobs[k], r0, r1);
            else gemm_rows(m, t, &t->jobs[k], r0, r1, ith);
        }
        if (!t->swiglu) continue;
        for (int tok = 0; tok < t->n_tok; tok++) {
            float *g = t->jobs[0].y + (size_t)tok * rows, *u = t->jobs[1].y + (size_t)tok * rows;
            for (int r = r0; r < r1; r++) g[r] = g[r] / (1.0f + expf(-g[r])) * u[r];
        }
    }
}

static void matmul_ex(plm_model *m, int n_tok, int n_jobs, mm_job *jobs, int swiglu) {
    mm_task t = {.m = m, .n_jobs = n_jobs, .n_tok = n_tok, .swiglu = swiglu};
    atomic_init(&t.next_chunk, 0);
    for (int j = 0; j < n_jobs; j++) t.jobs[j] = jobs[j];
    plm_pool_run(m->pool, mm_worker, &t);
}

static void matmul(plm_model *m, int n_tok, int n_jobs, mm_job *jobs) { matmul_ex(m, n_tok, n_jobs, jobs, 0); }

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

static size_t cache_offset(const plm_model *m, int slot, int layer, int pos) {
    const plm_config *c = &m->cfg;
    return (((size_t)slot * c->n_layers + layer) * c->max_seq + pos) * kv_dim(c);
}

static void att_worker(void *p, int ith, int nth) {
    att_task *t = (att_task *)p;
    plm_model *m = t->m;
    const plm_config *c = &m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    const size_t kvd = kv_dim(c), qd = q_dim(c);
    const float inv = 1.0f / sqrtf((float)hd);
    const int total = t->n_tok * c->n_heads;
    float *scores = m->scores + (size_t)ith * c->max_seq;
    (void)nth;
    for (int job; (job = atomic_fetch_add_explicit(&t->next_job, 1, memory_order_relaxed)) < total;) {
        const int tok = job / c->n_heads, h = job % c->n_heads, kvh = h / group;
        const int pos = m->pos[tok]; /* attends to keys 0..pos of its own sequence */
        const float *kc = m->k_cache + cache_offset(m, m->slot[tok], t->layer, 0);
        const float *vc = m->v_cache + cache_offset(m, m->slot[tok], t->layer, 0);
        const float *q = m->q + (size_t)tok * qd + (size_t)h * hd;
        float mx = -INFINITY;
        for (int j = 0; j <= pos; j++) {
            float s = m->k.dot(q, kc + (size_t)j * kvd + (size_t)kvh * hd, hd) * inv;
            scores[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.f;
        for (int j = 0; j <= pos; j++) {
            scores[j] = expf(scores[j] - mx);
            sum += scores[j];
        }
        float *out = m->att + (size_t)tok * qd + (size_t)h * hd;
        memset(out, 0, sizeof(float) * (size_t)hd);
        const float norm = 1.0f / sum;
        for (int j = 0; j <= pos; j++) m->k.axpy(out, vc + (size_t)j * kvd + (size_t)kvh * hd, scores[j] * norm, hd);
    }
}

/* ---- elementwise ------------------------------------------------------------------------------ */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

static void rope(const plm_model *m, float *v, int n_heads, int pos) {
    const int half = m->cfg.head_dim / 2;
    const float *cs = m->rope_cos + (size_t)pos * half, *sn = m->rope_sin + (size_t)pos * half;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * m->cfg.head_dim;
        for (int i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cs[i] - b * sn[i];
            x[i + half] = b * cs[i] + a * sn[i];
        }
    }
}

/* ---- forward ---------------------------------------------------------------------------------- */
static void forward_chunk(plm_model *m, const int32_t *tokens, const int32_t *pos, const int32_t *slot, int n, float *logits, int all_logits, int need_logits) {
    const plm_config *c = &m->cfg;
    const int dim = c->dim;
    const size_t kvd = kv_dim(c), qd = q_dim(c);
    m->pos = pos;
    m->slot = slot;
    mark(m, -1);
    for (int t = 0; t < n; t++) plm_dequant_rows(&m->embed, tokens[t], tokens[t] + 1, m->x + (size_t)t * dim);
    mark(m, PLM_PROF_EMBED);
    for (int l = 0; l < c->n_layers; l++) {
        const plm_layer *L = &m->layers[l];
        for (int t = 0; t < n; t++) rmsnorm(m->xn + (size_t)t * dim, m->x + (size_t)t * dim, L->attn_norm, dim, c->norm_eps);
        mark(m, PLM_PROF_NORM);
        const plm_qvec *xq = maybe_quantize(m, &L->wq, m->xn, 0, n);
        mm_job qkv[3] = {{&L->wq, m->xn, xq, m->q}, {&L->wk, m->xn, xq, m->kk}, {&L->wv, m->xn, xq, m->vv}};
        matmul(m, n, 3, qkv);
        mark(m, PLM_PROF_QKV);
        for (int t = 0; t < n; t++) {
            float *q = m->q + (size_t)t * qd, *k = m->kk + (size_t)t * kvd, *v = m->vv + (size_t)t * kvd;
            if (L->bq) for (size_t i = 0; i < qd; i++) q[i] += L->bq[i];
            if (L->bk) for (size_t i = 0; i < kvd; i++) k[i] += L->bk[i];
            if (L->bv) for (size_t i = 0; i < kvd; i++) v[i] += L->bv[i];
            rope(m, q, c->n_heads, pos[t]);
            rope(m, k, c->n_kv_heads, pos[t]);
            memcpy(m->k_cache + cache_offset(m, slot[t], l, pos[t]), k, sizeof(float) * kvd);
            memcpy(m->v_cache + cache_offset(m, slot[t], l, pos[t]), v, sizeof(float) * kvd);
        }
        mark(m, PLM_PROF_ROPE_CACHE);
        att_task at = {.m = m, .layer = l, .n_tok = n};
        atomic_init(&at.next_job, 0);
        plm_pool_run(m->pool, att_worker, &at);
        mark(m, PLM_PROF_ATTENTION);
        const plm_qvec *aq = maybe_quantize(m, &L->wo, m->att, 0, n);
        mm_job o = {&L->wo, m->att, aq, m->xn}; /* xn is free again: reuse it for the projection */
        matmul(m, n, 1, &o);
        for (size_t i = 0; i < (size_t)n * dim; i++) m->x[i] += m->xn[i];
        mark(m, PLM_PROF_OPROJ);
        for (int t = 0; t < n; t++) rmsnorm(m->xn + (size_t)t * dim, m->x + (size_t)t * dim, L->ffn_norm, dim, c->norm_eps);
        mark(m, PLM_PROF_NORM);
        const plm_qvec *fq = maybe_quantize(m, &L->wgate, m->xn, 0, n);
        mm_job gu[2] = {{&L->wgate, m->xn, fq, m->hb}, {&L->wup, m->xn, fq, m->hb2}};
        matmul_ex(m, n, 2, gu, 1); /* hb = silu(gate) * up, fused into the workers */
        mark(m, PLM_PROF_FFN_UP);
        const plm_qvec *dq = maybe_quantize(m, &L->wdown, m->hb, 1, n);
        mm_job d = {&L->wdown, m->hb, dq, m->xn};
        matmul(m, n, 1, &d);
        for (size_t i = 0; i < (size_t)n * dim; i++) m->x[i] += m->xn[i];
        mark(m, PLM_PROF_FFN_DOWN);
    }
    if (!need_logits) return;
    if (all_logits) {
        for (int t = 0; t < n; t++) rmsnorm(m->xn + (size_t)t * dim, m->x + (size_t)t * dim, m->final_norm, dim, c->norm_eps);
        mm_job head = {&m->lm_head, m->xn, NULL, logits};
        head.xq = maybe_quantize(m, &m->lm_head, m->xn, 0, n);
        matmul(m, n, 1, &head);
    } else {
        rmsnorm(m->xn, m->x + (size_t)(n - 1) * dim, m->final_norm, dim, c->norm_eps);
        mm_job head = {&m->lm_head, m->xn, maybe_quantize(m, &m->lm_head, m->xn, 0, 1), logits};
        matmul(m, 1, 1, &head);
    }
    mark(m, PLM_PROF_HEAD);
}

int plm_model_forward(plm_model *m, const int32_t *tokens, const int32_t *positions, const int32_t *slots, int n, float *logits, int all_logits) {
    if (n < 1) return -1;
    for (int i = 0; i < n; i++) {
        if (positions[i] < 0 || positions[i] >= m->cfg.max_seq) return -1;
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab) return -2;
        if (slots[i] < 0 || slots[i] >= m->cfg.n_slots) return -4;
    }
    for (int done = 0; done < n; done += m->cfg.max_batch) {
        int chunk = n - done < m->cfg.max_batch ? n - done : m->cfg.max_batch;
        int last = done + chunk == n;
        float *out = all_logits ? logits + (size_t)done * m->cfg.vocab : logits;
        /* an earlier chunk of a long prompt only fills the KV cache: no logits needed */
        forward_chunk(m, tokens + done, positions + done, slots + done, chunk, out, all_logits, all_logits || last);
    }
    return 0;
}

plm_model *plm_model_create(const plm_config *cfg, const plm_matrix *embed, const plm_matrix *lm_head, const float *final_norm,
                            const plm_layer *layers, int n_threads, const char *isa) {
    plm_model *m = (plm_model *)calloc(1, sizeof(plm_model));
    if (!m) return NULL;
    m->cfg = *cfg;
    m->embed = *embed;
    m->lm_head = *lm_head;
    m->final_norm = final_norm;
    m->layers = (plm_layer *)malloc(sizeof(plm_layer) * (size_t)cfg->n_layers);
    if (!m->layers) {
        free(m);
        return NULL;
    }
    memcpy(m->layers, layers, sizeof(plm_layer) * (size_t)cfg->n_layers);
    plm_select_kernels(&m->k, isa);
    m->pool = plm_pool_acquire(n_threads);
    const size_t kvd = kv_dim(cfg), qd = q_dim(cfg), T = (size_t)cfg->max_batch;
    /* o_proj reads q_dim columns: with an explicit head_dim that can exceed both dim and ffn_dim */
    size_t wide = (size_t)(cfg->dim > cfg->ffn_dim ? cfg->dim : cfg->ffn_dim);
    if (qd > wide) wide = qd;
    m->wide = (int)wide;
    size_t cache_values;
    if (__builtin_mul_overflow((size_t)cfg->n_slots * (size_t)cfg->n_layers, (size_t)cfg->max_seq * kvd, &cache_values) ||
        cache_values > SIZE_MAX / (2 * sizeof(float))) {
        plm_model_destroy(m);
        return NULL;
    }
    m->k_cache = (float *)xalloc(sizeof(float) * cache_values);
    m->v_cache = (float *)xalloc(sizeof(float) * cache_values);
    m->rope_cos = (float *)xalloc(sizeof(float) * (size_t)cfg->max_seq * (cfg->head_dim / 2));
    m->rope_sin = (float *)xalloc(sizeof(float) * (size_t)cfg->max_seq * (cfg->head_dim / 2));
    m->x = (float *)xalloc(sizeof(float) * T * cfg->dim);
    m->xn = (float *)xalloc(sizeof(float) * T * ((size_t)cfg->dim > qd ? (size_t)cfg->dim : qd));
    m->q = (float *)xalloc(sizeof(float) * T * qd);
    m->kk = (float *)xalloc(sizeof(float) * T * kvd);
    m->vv = (float *)xalloc(sizeof(float) * T * kvd);
    m->att = (float *)xalloc(sizeof(float) * T * qd);
    m->hb = (float *)xalloc(sizeof(float) * T * cfg->ffn_dim);
    m->hb2 = (float *)xalloc(sizeof(float) * T * cfg->ffn_dim);
    m->scores = (float *)xalloc(sizeof(float) * (size_t)plm_pool_size(m->pool) * cfg->max_seq);
    m->wscratch = (float *)xalloc(sizeof(float) * (size_t)plm_pool_size(m->pool) * ROW_BLOCK * wide);
    int ok = m->k_cache && m->v_cache && m->rope_cos && m->rope_sin && m->x && m->xn && m->q && m->kk && m->vv && m->att && m->hb &&
             m->hb2 && m->scores && m->wscratch;
    for (int i = 0; ok && i < 2; i++)
        for (int t = 0; ok && t < GEMV_MAX; t++) ok = qvec_alloc(&m->qv[i][t], (int)wide);
    if (!ok) {
        plm_model_destroy(m);
        return NULL;
    }
    const int half = cfg->head_dim / 2;
    for (int p = 0; p < cfg->max_seq; p++)
        for (int i = 0; i < half; i++) {
            /* as torch: inv_freq in float32, angle = float32(pos) * inv_freq rounded to float32 */
            const float inv_freq = 1.0f / powf(cfg->rope_theta, (float)(2 * i) / (float)cfg->head_dim);
            const float angle = (float)p * inv_freq;
            m->rope_cos[(size_t)p * half + i] = cosf(angle);
            m->rope_sin[(size_t)p * half + i] = sinf(angle);
        }
    return m;
}

const char *plm_model_isa(const plm_model *m) { return m->k.name; }

void plm_model_destroy(plm_model *m) {
    if (!m) return;
    plm_pool_release(m->pool);
    free(m->layers);
    free(m->k_cache); free(m->v_cache); free(m->rope_cos); free(m->rope_sin);
    free(m->x); free(m->xn); free(m->q); free(m->kk); free(m->vv); free(m->att); free(m->hb); free(m->hb2);
    free(m->scores); free(m->wscratch);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < GEMV_MAX; t++) qvec_free(&m->qv[i][t]);
    free(m);
}
