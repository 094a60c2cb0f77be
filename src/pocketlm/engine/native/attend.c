/* Attention over the KV cache: causal, sliding windows (rolling caches), soft-caps. Decode and
 * batched decode take (token, head) pairs one at a time; a prompt chunk (consecutive positions of
 * one slot) takes (kv head, block of ATT_QB tokens) pairs as two GEMMs, scores and probabilities x
 * values, every query head of the kv head at once. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "model_internal.h"

typedef struct {
    plm_model *m;
    int layer, n_tok;
    atomic_int next_job; /* (token, head) pairs are taken one at a time, as the matmuls' chunks */
} att_task;

/* The first key a query at pos sees: the last `window` positions on a sliding layer. */
static inline int first_key(int window, int pos) { return window && pos >= window ? pos - window + 1 : 0; }

/* Keys first .. first + n_keys - 1 of a layer's cache as ring rows: key i at row `row` + i for i
   in [i0, i1) of each of two runs (the second empty unless the ring wraps; a full cache's ring is
   max_seq long). */
typedef struct {
    int i0[2], i1[2], row[2];
} key_runs;

static key_runs ring_runs(const plm_model *m, int layer, int first, int n_keys) {
    const int ring = m->ring_len[layer], start = first % ring, run1 = n_keys < ring - start ? n_keys : ring - start;
    return (key_runs){.i0 = {0, run1}, .i1 = {run1, n_keys}, .row = {start, -run1}};
}

/* Scaled scores x[0..n) -> probabilities in place: Gemma 2's soft-cap, then a softmax. */
static void softmax_scores(const plm_model *m, float *x, int n) {
    const float cap = m->cfg.attn_softcap;
    float mx = -INFINITY;
    if (cap > 0.f) /* cap * tanh(score / cap) */
        for (int i = 0; i < n; i++) x[i] = tanhf(x[i] / cap) * cap;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    const float norm = 1.0f / m->k.exp_sum(x, n, mx);
    for (int i = 0; i < n; i++) x[i] *= norm;
}

static float score_scale(const plm_config *c) { return c->attn_scale > 0.f ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim); }

static void att_worker(void *p, int ith, int nth) {
    att_task *t = (att_task *)p;
    plm_model *m = t->m;
    const plm_config *c = &m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads, window = m->layers[t->layer].window;
    const size_t kvd = kv_dim(c), qd = q_dim(c);
    const float inv = score_scale(c);
    const int total = t->n_tok * c->n_heads;
    float *scores = m->scores + (size_t)ith * c->max_seq;
    (void)nth;
    for (int job; (job = atomic_fetch_add_explicit(&t->next_job, 1, memory_order_relaxed)) < total;) {
        const int tok = job / c->n_heads, h = job % c->n_heads, kvh = h / group;
        const int pos = m->pos[tok], first = first_key(window, pos), n_keys = pos - first + 1; /* keys first..pos of its sequence */
        const key_runs runs = ring_runs(m, t->layer, first, n_keys);
        const float *kc = m->k_cache + cache_offset(m, m->slot[tok], t->layer, 0) + (size_t)kvh * hd;
        const float *vc = m->v_cache + cache_offset(m, m->slot[tok], t->layer, 0) + (size_t)kvh * hd;
        const float *q = m->q + (size_t)tok * qd + (size_t)h * hd;
        for (int r = 0; r < 2; r++)
            if (runs.i1[r] > runs.i0[r])
                m->k.scores(q, kc + (ptrdiff_t)(runs.row[r] + runs.i0[r]) * (ptrdiff_t)kvd, kvd, runs.i1[r] - runs.i0[r], hd, inv, scores + runs.i0[r]);
        softmax_scores(m, scores, n_keys);
        float *out = m->att + (size_t)tok * qd + (size_t)h * hd;
        memset(out, 0, sizeof(float) * (size_t)hd);
        for (int r = 0; r < 2; r++)
            if (runs.i1[r] > runs.i0[r])
                m->k.wsum(scores + runs.i0[r], vc + (ptrdiff_t)(runs.row[r] + runs.i0[r]) * (ptrdiff_t)kvd, kvd, runs.i1[r] - runs.i0[r], hd, out);
    }
}

/* One (kv head, query block) job's probabilities: row qv of s holds query qv % nq's scores against
   keys first..; each row keeps the keys its position sees (causal, window), the rest become 0. */
static void block_softmax(const plm_model *m, float *s, size_t lds, int n_qv, int nq, int p0, int first, int n_keys, int window) {
    const float inv = score_scale(&m->cfg);
    for (int qv = 0; qv < n_qv; qv++) {
        float *row = s + (size_t)qv * lds;
        const int pos = p0 + qv % nq, lo = first_key(window, pos) - first, hi = pos - first + 1;
        for (int i = lo; i < hi; i++) row[i] *= inv;
        softmax_scores(m, row + lo, hi - lo);
        memset(row, 0, sizeof(float) * (size_t)lo);
        memset(row + hi, 0, sizeof(float) * (size_t)(n_keys - hi));
    }
}

static void att_gemm_worker(void *p, int ith, int nth) {
    att_task *t = (att_task *)p;
    plm_model *m = t->m;
    const plm_config *c = &m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads, window = m->layers[t->layer].window;
    const size_t kvd = kv_dim(c), qd = q_dim(c), lds = (size_t)c->max_seq;
    const int n_blocks = (t->n_tok + ATT_QB - 1) / ATT_QB, total = n_blocks * c->n_kv_heads;
    float *qrows = m->att_q + (size_t)ith * 2 * ATT_QVS(group) * hd, *qpacked = qrows + (size_t)ATT_QVS(group) * hd;
    float *s = m->att_s + (size_t)ith * group * ATT_QB * lds;
    (void)nth;
    for (int job; (job = atomic_fetch_add_explicit(&t->next_job, 1, memory_order_relaxed)) < total;) {
        const int kvh = job % c->n_kv_heads, t0 = job / c->n_kv_heads * ATT_QB;
        const int nq = t->n_tok - t0 < ATT_QB ? t->n_tok - t0 : ATT_QB, n_qv = group * nq, p0 = m->pos[t0];
        const int first = first_key(window, p0), n_keys = p0 + nq - first;
        const key_runs runs = ring_runs(m, t->layer, first, n_keys);
        const float *kc = m->k_cache + cache_offset(m, m->slot[t0], t->layer, 0) + (size_t)kvh * hd;
        const float *vc = m->v_cache + cache_offset(m, m->slot[t0], t->layer, 0) + (size_t)kvh * hd;
        for (int hg = 0; hg < group; hg++) /* query vector hg * nq + i: head kvh * group + hg, token t0 + i */
            for (int i = 0; i < nq; i++)
                memcpy(qrows + (size_t)(hg * nq + i) * hd, m->q + (size_t)(t0 + i) * qd + (size_t)(kvh * group + hg) * hd, sizeof(float) * (size_t)hd);
        m->k.pack_x_f32(qrows, n_qv, hd, qpacked);
        for (int r = 0; r < 2; r++) /* scores: keys as the weight rows, the queries as the packed input */
            if (runs.i1[r] > runs.i0[r])
                m->k.gemm_f32_xt(kc + (ptrdiff_t)(runs.row[r] + runs.i0[r]) * (ptrdiff_t)kvd, (int)kvd, qpacked, n_qv, hd, s + runs.i0[r], (int)lds, runs.i1[r] - runs.i0[r]);
        block_softmax(m, s, lds, n_qv, nq, p0, first, n_keys, window);
        for (int hg = 0; hg < group; hg++) {
            float *out = m->att + (size_t)t0 * qd + (size_t)(kvh * group + hg) * hd;
            for (int r = 0; r < 2; r++)
                if (runs.i1[r] > runs.i0[r])
                    m->k.gemm_f32_ab(s + (size_t)hg * nq * lds + runs.i0[r], (int)lds, vc + (ptrdiff_t)(runs.row[r] + runs.i0[r]) * (ptrdiff_t)kvd, (int)kvd, hd,
                                     runs.i1[r] - runs.i0[r], out, (int)qd, nq, r == 1);
        }
    }
}

/* A prompt chunk: n tokens at consecutive positions of one slot. */
static int one_run(const plm_model *m, int n) {
    for (int i = 1; i < n; i++)
        if (m->slot[i] != m->slot[0] || m->pos[i] != m->pos[0] + i) return 0;
    return 1;
}

void plm_attend(plm_model *m, int layer, int n) {
    att_task at = {.m = m, .layer = layer, .n_tok = n};
    atomic_init(&at.next_job, 0);
    const int gemm = n > GEMV_MAX && m->k.gemm_f32_ab && m->cfg.head_dim % 16 == 0 && one_run(m, n);
    plm_pool_run(m->pool, gemm ? att_gemm_worker : att_worker, &at);
}
