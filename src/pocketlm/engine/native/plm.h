/* PocketLM native CPU inference: shared declarations.
 *
 * One forward pass (prefill of T tokens or decode of 1) of the Llama-style decoder, with the model
 * family options of ModelConfig (norms, activations, biases, rotary variants, sliding windows,
 * soft-caps, parallel and sandwich blocks, mixtures of experts), over weights that stay
 * memory-mapped in their final layout. Kernels come in AVX-512, AVX2 and portable
 * variants chosen at run time from the CPU's features. */
#ifndef PLM_H
#define PLM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { PLM_F32 = 0, PLM_BF16 = 1, PLM_I8 = 2, PLM_I4 = 3 } plm_dtype;

/* A weight matrix W of shape (rows=out, cols=in), row-major.
 * F32/BF16: plain values. I8: int8 values, one float scale per row (w = q * scale[row]).
 * I4: per group of `group` values along a row, `group/2` bytes: byte j holds value j in its low
 *     nibble and value j + group/2 in its high nibble (Q4_0 layout for group 32); one fp16 scale
 *     per group (w = (q - 8) * scale). */
typedef struct {
    plm_dtype dtype;
    int rows, cols, group;
    const void *data;
    const float *scale_f32;    /* I8 */
    const uint16_t *scale_f16; /* I4: rows * (cols / group) */
} plm_matrix;

/* A norm's learned vectors: RMSNorm w * x / rms(x) (Gemma's (1 + w) arrives with the 1 folded in),
 * or LayerNorm w * (x - mean) / std + b. */
typedef struct {
    const float *w, *b; /* (n,); b only for LayerNorm */
} plm_norm;

typedef struct {
    plm_norm attn_norm, ffn_norm;            /* ffn_norm unused with a parallel block */
    plm_norm q_norm, k_norm;                 /* (head_dim,) per-head norms, with qk_norm */
    plm_norm attn_out_norm, ffn_out_norm;    /* sandwich norms on each branch's output */
    const float *bq, *bk, *bv, *bo;          /* optional biases or NULL */
    const float *bgate, *bup, *bdown;
    plm_matrix wq, wk, wv, wo, wgate, wup, wdown; /* wgate unused by a plain MLP; MLP unused with experts */
    int window;   /* a sliding layer sees the last `window` keys (itself included); 0 = all */
    int rope_set; /* PLM_ROPE_GLOBAL or PLM_ROPE_LOCAL */
    /* mixture of experts (n_experts > 0) */
    const float *router;                     /* (n_experts, dim) */
    plm_matrix *experts;                     /* (n_experts * 3): gate, up, down of each expert */
    plm_matrix sgate, sup, sdown;            /* the shared expert, with shared_ffn_dim */
    const float *shared_gate;                /* (dim,) its sigmoid gate */
} plm_layer;

/* Activations quantised for the integer kernels: int8 values in blocks of 32 with a float scale. */
typedef struct {
    int8_t *q;      /* (n,) */
    float *scale;   /* (n / 32,) */
    int32_t *bsum;  /* (n / 32,) sum of q per block */
    float *scale8;  /* (n / 32 * 8 + 16,) each block's scale repeated over the 8 int32 lanes its products land in */
    float *ssum8;   /* (n / 32 * 8 + 16,) scale * bsum, repeated likewise (for the +128 / -8 offsets) */
    /* The same, reordered per 64 values as the int4 kernel unpacks nibbles: [block b values 0-15,
     * block b+1 values 0-15, block b values 16-31, block b+1 values 16-31]. */
    int8_t *qp;
    float *scale8p, *ssum8p;
    float ssum; /* sum over blocks of scale * bsum */
    int n;
} plm_qvec;

enum { PLM_ACT_SILU = 0, PLM_ACT_GELU_TANH = 1, PLM_ACT_GELU = 2 };

/* Kernel table filled at start-up for the best instruction set available. */
typedef struct {
    const char *name;
    /* y[r] = dot(W[r, :], x) for r in [r0, r1); x is float (F32/BF16) or quantised (I8/I4). */
    void (*gemv_f32)(const plm_matrix *w, const float *x, float *y, int r0, int r1);
    void (*gemv_bf16)(const plm_matrix *w, const float *x, float *y, int r0, int r1);
    void (*gemv_i8)(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1);
    void (*gemv_i4)(const plm_matrix *w, const plm_qvec *x, float *y, int r0, int r1);
    /* Y[t, r] = dot(Wf[r, :], X[t, :]) for a block of rows held as float (dequantised) weights,
     * row-major input: the portable kernels' prefill GEMM (NULL where gemm_f32_xt is set). */
    void (*gemm_f32)(const float *wf, int ldw, const float *x, int ldx, float *y, int ldy, int n_tok, int n_rows, int cols);
    /* The prefill GEMMs of AVX2 / AVX-512 (gemm_xt_avx*.c), over an input packed once per call as
     * 16-token columns: Y[t, r] = dot(W[r, :], x[t, :]) for rows [0, n_rows) of the row-major w
     * (ldw); pack_x_*: the (n_tok, cols) float input -> round16(n_tok) x cols packed values. The
     * bf16 pair (vdpbf16ps, cols even) is NULL where the CPU lacks AVX512-BF16. */
    void (*pack_x_f32)(const float *x, int n_tok, int cols, float *xp);
    void (*gemm_f32_xt)(const float *w, int ldw, const float *xp, int n_tok, int cols, float *y, int ldy, int n_rows);
    void (*pack_x_bf16)(const float *x, int n_tok, int cols, uint32_t *xp);
    void (*gemm_bf16_xt)(const uint16_t *w, int ldw, const uint32_t *xp, int n_tok, int cols, float *y, int ldy, int n_rows);
    /* C[r][j] (+= when add) sum_c A[r][c] * B[c][j], r < m, j < n (n % 16 == 0), c < k, all
     * row-major: prefill attention's probabilities times values (NULL on the portable kernels). */
    void (*gemm_f32_ab)(const float *a, int lda, const float *b, int ldb, int n, int k, float *c, int ldc, int m, int add);
    void (*to_bf16)(const float *x, uint16_t *out, size_t n); /* round to nearest even */
    void (*i4_to_bf16)(const plm_matrix *w, int r0, int r1, uint16_t *out); /* int4 rows dequantised and rounded to bf16 */
    float (*dot)(const float *a, const float *b, int n);
    void (*quantize)(const float *x, int n, plm_qvec *out); /* plm_quantize_vec, vectorised */
    void (*axpy)(float *y, const float *x, float a, int n); /* y += a * x */
    /* attention over one head: out[i] = scale * dot(q, k + i * ldk) for i < n (head_dim hd) */
    void (*scores)(const float *q, const float *k, size_t ldk, int n, int hd, float scale, float *out);
    float (*exp_sum)(float *x, int n, float mx); /* x[i] = exp(x[i] - mx) in place; returns their sum */
    void (*wsum)(const float *p, const float *v, size_t ldv, int n, int hd, float *out); /* out += sum_i p[i] * v_i */
    /* Prefill over int8 weights with integer dot products, every token's input quantised as for
     * decode (xq[t]): Y[t, r] for r in [r0, r1) at y + t * ldy + r; NULL without VNNI. */
    void (*gemm_i8)(const plm_matrix *w, int r0, int r1, const plm_qvec *xq, int n_tok, float *y, int ldy);
    /* g[i] = act(g[i]) * u[i] (u NULL: act(g[i])) for PLM_ACT_*: the MLP's activation, gated or not */
    void (*glu)(float *g, const float *u, int n, int act);
} plm_kernels;

void plm_select_kernels(plm_kernels *k, const char *force);
float plm_activate(float v, int act); /* PLM_ACT_* of one value, as torch computes it */
void plm_quantize_vec(const float *x, int n, plm_qvec *out);
void plm_dequant_rows(const plm_matrix *w, int r0, int r1, float *out); /* (r1 - r0, cols) */
float plm_f16_to_f32(uint16_t h);

/* ---- thread pool ---------------------------------------------------------------------------- */
typedef void (*plm_task_fn)(void *arg, int ith, int nth);
typedef struct plm_pool plm_pool;
plm_pool *plm_pool_create(int n_threads);
plm_pool *plm_pool_acquire(int n_threads); /* shared per thread count, reference-counted */
void plm_pool_release(plm_pool *pool);
void plm_pool_run(plm_pool *pool, plm_task_fn fn, void *arg);
int plm_pool_size(const plm_pool *pool);
void plm_pool_destroy(plm_pool *pool);

/* Work split for a pool task: chunks [0, total) in one contiguous range per thread (each thread
 * streams its own part of a matrix: interleaving chunks between threads cost the hardware
 * prefetchers up to half the bandwidth), and a thread whose range is done takes chunks from the
 * back of the others' (a thread that lost its core to another program cannot stall a step). */
#define PLM_MAX_THREADS 64
typedef struct {
    _Alignas(64) _Atomic uint64_t front_back; /* (front << 32) | back: the chunks [front, back) left */
} plm_range;
void plm_ranges_init(plm_range *ranges, int n_ranges, int total);
int plm_ranges_next(plm_range *ranges, int n_ranges, int ith); /* a chunk index, or -1 when all are taken */

/* ---- model ---------------------------------------------------------------------------------- */
enum { PLM_NORM_RMS = 0, PLM_NORM_LAYER = 1 };
enum { PLM_ROPE_GLOBAL = 0, PLM_ROPE_LOCAL = 1, PLM_ROPE_LONG = 2, PLM_ROPE_SETS = 3 };

typedef struct {
    int vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, max_seq, max_batch, n_slots;
    float norm_eps;
    /* Family options; the zero / one values are Llama's. */
    int norm_kind, activation, mlp_gated, qk_norm, parallel_block, sandwich_norms;
    int rotary_dim;      /* leading dims of each head that rotate (<= head_dim, even) */
    int rope_long_after; /* longrope: a call whose last position + 1 exceeds this rotates with the long set; 0 = none */
    float rope_scale;    /* cos and sin times this (longrope's attention factor) */
    float embed_scale, attn_scale /* softmax scale (> 0) */, attn_softcap, final_softcap; /* caps: 0 = none */
    int n_experts, top_k, expert_ffn_dim, shared_ffn_dim, router_renormalise;
    int kv_rewind; /* how far back a slot may be truncated: sliding layers keep window + kv_rewind + max_batch positions */
} plm_config;

typedef struct plm_model plm_model;
/* inv_freq[PLM_ROPE_*]: (rotary_dim / 2,) inverse frequencies of each rope set (global required;
 * local and long NULL when unused). lm_head_bias: (vocab,) or NULL. Layers are copied (experts too). */
plm_model *plm_model_create(const plm_config *cfg, const plm_matrix *embed, const plm_matrix *lm_head, plm_norm final_norm,
                            const float *lm_head_bias, const plm_layer *layers, const float *const inv_freq[PLM_ROPE_SETS],
                            int n_threads, const char *isa);
/* Run tokens[0..n): token i sits at position positions[i] of sequence slots[i] (each slot has its
 * own KV cache of max_seq positions; several sequences can share one call: continuous batching).
 * Writes the logits of the last token (or of every token when all_logits) into `logits`.
 * Returns 0; -1 when a position is outside the context; -2 for a bad token id; -4 for a bad slot. */
int plm_model_forward(plm_model *m, const int32_t *tokens, const int32_t *positions, const int32_t *slots, int n, float *logits, int all_logits);
const char *plm_model_isa(const plm_model *m);
/* Profiling: seconds spent per phase since the last reset (when enabled). */
enum { PLM_PROF_EMBED, PLM_PROF_NORM, PLM_PROF_QKV, PLM_PROF_ROPE_CACHE, PLM_PROF_ATTENTION, PLM_PROF_OPROJ, PLM_PROF_FFN_UP, PLM_PROF_SWIGLU, PLM_PROF_FFN_DOWN, PLM_PROF_HEAD, PLM_PROF_N };
void plm_model_profile(plm_model *m, int enable, double *out /* PLM_PROF_N or NULL */);
void plm_model_destroy(plm_model *m);

#endif
