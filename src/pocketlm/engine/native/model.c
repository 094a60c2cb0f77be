/* The forward pass of the Llama-style decoder and its family options: prefill (T tokens, small
 * GEMMs) and decode (1 token, GEMVs), with a float KV cache owned by the model object. Options
 * cost a branch per layer (or per matmul chunk) when off: a Llama model runs the loops it ran
 * before they existed. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_internal.h"

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
    const plm_qvec *xq = plm_maybe_quantize(m, &L->wq, m->xn, 0, n);
    mm_job qkv[3] = {{&L->wq, m->xn, xq, m->q}, {&L->wk, m->xn, xq, m->kk}, {&L->wv, m->xn, xq, m->vv}};
    plm_matmul(m, n, 3, qkv);
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
    plm_attend(m, l, n);
    mark(m, PLM_PROF_ATTENTION);
    const plm_qvec *aq = plm_maybe_quantize(m, &L->wo, m->att, 0, n);
    mm_job o = {&L->wo, m->att, aq, m->xb};
    plm_matmul(m, n, 1, &o);
    add_bias(m->xb, L->bo, n, c->dim);
}

/* y (n, dim) = down(act(gate(x) + bg) * (up(x) + bu)) + bd, or down(act(up(x) + bu)) + bd without a gate. */
static void ffn(plm_model *m, const plm_matrix *gate, const plm_matrix *up, const plm_matrix *down, const float *bg, const float *bu,
                const float *bd, const float *x, int n, float *y) {
    const plm_qvec *xq = plm_maybe_quantize(m, up, x, 0, n);
    if (gate) {
        mm_job gu[2] = {{gate, x, xq, m->hb}, {up, x, xq, m->hb2}};
        plm_matmul_ex(m, n, 2, gu, FUSE_GATED, m->cfg.activation, bg, bu); /* hb = act(gate) * up, fused into the workers */
    } else {
        mm_job u = {up, x, xq, m->hb};
        plm_matmul_ex(m, n, 1, &u, FUSE_ACT, m->cfg.activation, bu, NULL);
    }
    mark(m, PLM_PROF_FFN_UP);
    const plm_qvec *dq = plm_maybe_quantize(m, down, m->hb, 1, n);
    mm_job d = {down, m->hb, dq, y};
    plm_matmul(m, n, 1, &d);
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
    mm_job head = {&m->lm_head, m->xn, plm_maybe_quantize(m, &m->lm_head, m->xn, 0, rows), logits};
    plm_matmul(m, rows, 1, &head);
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
    const size_t group = (size_t)cfg->n_heads / (size_t)cfg->n_kv_heads, threads = (size_t)plm_pool_size(m->pool);
    m->att_q = (float *)xalloc(sizeof(float) * threads * 2 * ATT_QVS(group) * (size_t)cfg->head_dim);
    m->att_s = (float *)xalloc(sizeof(float) * threads * group * ATT_QB * (size_t)cfg->max_seq);
    m->wscratch = (float *)xalloc(sizeof(float) * (size_t)plm_pool_size(m->pool) * ROW_BLOCK * wide);
    m->wscratch_bf16 = (uint16_t *)xalloc(sizeof(uint16_t) * (size_t)plm_pool_size(m->pool) * ROW_BLOCK * wide);
    const size_t T16 = (T + 15) / 16 * 16; /* the packed inputs pad their last 16 tokens */
    m->xp_bf16 = (uint32_t *)xalloc(sizeof(uint32_t) * T16 * (wide / 2 + 1));
    m->xp_f32 = (float *)xalloc(sizeof(float) * T16 * wide);
    ok = ok && m->k_cache && m->v_cache && m->x && m->xn && m->xb && m->xo && m->q && m->kk && m->vv && m->att && m->hb && m->hb2 &&
         m->scores && m->att_q && m->att_s && m->wscratch && m->wscratch_bf16 && m->xp_bf16 && m->xp_f32;
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
    free(m->scores); free(m->att_q); free(m->att_s); free(m->wscratch); free(m->wscratch_bf16); free(m->xp_bf16); free(m->xp_f32);
    free(m->xg); free(m->weight_of); free(m->yd); free(m->route_w); free(m->route_e); free(m->tokens_of); free(m->probs);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < GEMV_MAX; t++) qvec_free(&m->qv[i][t]);
    for (int t = 0; m->qx && t < m->cfg.max_batch; t++) qvec_free(&m->qx[t]);
    free(m->qx);
    free(m);
}
