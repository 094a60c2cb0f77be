/* Private to the engine's C files: the model object and what model.c, matmul.c and attend.c share. */
#ifndef PLM_MODEL_INTERNAL_H
#define PLM_MODEL_INTERNAL_H

#include <stddef.h>

#include "plm.h"

#define ROW_BLOCK 16 /* rows dequantised at a time for prefill GEMMs */
#define GEMV_MAX 16  /* up to this many tokens per call (decode, batched decode) run the GEMV kernels:
                        exactly the arithmetic of a single sequence's decode, weights read once */
#define GEMV_CHUNK 32 /* rows a thread takes at a time on the GEMV path (a multiple of 8) */
#define GEMM_CHUNK 64 /* and on the prefill path (a multiple of ROW_BLOCK) */
#define ATT_QB 16 /* prompt tokens per attention job (attend.c), times every query head of a kv head */
#define ATT_QVS(group) (((group) * ATT_QB + 15) / 16 * 16) /* its query vectors, rounded up to 16 */

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
    float *att_q, *att_s; /* per thread: a prompt attention job's query vectors (as rows, packed) and scores */
    float *xg, *yd, *route_w, *weight_of, *probs; /* mixture of experts: gathered inputs, expert outputs, routing */
    int32_t *route_e, *tokens_of;
    int wide;                  /* the most columns of any matrix: max(dim, hidden, q_dim) */
    int hidden;                /* the widest MLP: ffn_dim, expert_ffn_dim, shared_ffn_dim */
    float *wscratch;           /* per thread: ROW_BLOCK * wide dequantised weights */
    uint16_t *wscratch_bf16;   /* per thread: the same rounded to bf16 (prefill with gemm_bf16_xt) */
    uint32_t *xp_bf16;         /* round16(max_batch) * wide / 2: a prefill matmul's input packed as bf16 pairs */
    float *xp_f32;             /* round16(max_batch) * wide: the same packed as floats (gemm_xt_avx512.c) */
    plm_qvec *qx;              /* max_batch: a prefill matmul's input quantised per token (integer GEMMs) */
    plm_qvec qv[2][GEMV_MAX];  /* quantised activations per token (two inputs live at once) */
    int profiling;
    double prof[PLM_PROF_N], prof_t;
};

static inline size_t kv_dim(const plm_config *c) { return (size_t)c->n_kv_heads * c->head_dim; }
static inline size_t q_dim(const plm_config *c) { return (size_t)c->n_heads * c->head_dim; }

/* Position pos of a layer's cache: a sliding layer's rolling cache holds position p at p % ring_len
 * (ring_len covers the window, a call's max_batch tokens and kv_rewind: every key a query reads). */
static inline size_t cache_offset(const plm_model *m, int slot, int layer, int pos) {
    return (size_t)slot * m->slot_len + m->layer_off[layer] + (size_t)(pos % m->ring_len[layer]) * kv_dim(&m->cfg);
}

/* ---- matrix products over the pool (matmul.c) ------------------------------------------------- */
typedef struct {
    const plm_matrix *w;
    const float *x;      /* (n_tok, w->cols) float input */
    const plm_qvec *xq;  /* integer weights on the GEMV path, or int8 on the integer GEMM: x quantised per token */
    float *y;            /* (n_tok, w->rows) */
    const uint32_t *xpb; /* GEMM path: x packed as bf16 pairs for gemm_bf16_xt, or NULL */
    const float *xpf;    /* GEMM path: x packed as floats for gemm_f32_xt, or NULL */
} mm_job;

enum { FUSE_NONE, FUSE_GATED, FUSE_ACT };

/* Run jobs (sharing one input) over n_tok tokens on the pool; fuse: FUSE_GATED (jobs 0, 1 = gate,
 * up: act(gate + b0) * (up + b1) into job 0's output) or FUSE_ACT (act(y + b0) on job 0). */
void plm_matmul_ex(plm_model *m, int n_tok, int n_jobs, mm_job *jobs, int fuse, int act, const float *b0, const float *b1);
void plm_matmul(plm_model *m, int n_tok, int n_jobs, mm_job *jobs);
/* On the GEMV path with integer weights, x's n_tok vectors quantised once (into buffer `slot`). */
const plm_qvec *plm_maybe_quantize(plm_model *m, const plm_matrix *w, const float *x, int slot, int n_tok);

/* ---- attention (attend.c) ------------------------------------------------------------------- */
/* Layer `layer`'s attention for the call's n tokens: m->q against the cache into m->att. */
void plm_attend(plm_model *m, int layer, int n);

#endif
