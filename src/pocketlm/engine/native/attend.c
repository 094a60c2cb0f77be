/* Attention over the KV cache: (token, head) pairs taken one at a time by the pool's threads;
 * causal, sliding windows (rolling caches), soft-caps. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "model_internal.h"

typedef struct {
    plm_model *m;
    int layer, n_tok;
    atomic_int next_job; /* (token, head) pairs are taken one at a time, as the matmuls' chunks */
} att_task;

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

void plm_attend(plm_model *m, int layer, int n) {
    att_task at = {.m = m, .layer = layer, .n_tok = n};
    atomic_init(&at.next_job, 0);
    plm_pool_run(m->pool, att_worker, &at);
}
