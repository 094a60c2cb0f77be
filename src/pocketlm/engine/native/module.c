/* Python bindings: pocketlm.engine._native.Model wraps one plm_model. Weights are passed as
 * buffer objects (memory-mapped numpy arrays) that the Model keeps alive; forward() releases the
 * GIL while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plm.h"

typedef struct {
    PyObject_HEAD
    plm_model *model;
    plm_config cfg;
    Py_buffer *views;
    int n_views, cap_views;
} NativeModel;

static const void *hold(NativeModel *self, PyObject *obj, Py_ssize_t *len) {
    *len = 0;
    if (obj == Py_None) return NULL;
    if (self->n_views == self->cap_views) {
        const int cap = self->cap_views ? 2 * self->cap_views : 64;
        Py_buffer *views = (Py_buffer *)realloc(self->views, sizeof(Py_buffer) * (size_t)cap);
        if (!views) {
            PyErr_NoMemory();
            return (const void *)-1;
        }
        self->views = views;
        self->cap_views = cap;
    }
    Py_buffer *v = &self->views[self->n_views];
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS) < 0) return (const void *)-1;
    self->n_views++;
    *len = v->len;
    return v->buf;
}

/* Load-time bounds checks (never in the hot loop): every buffer must hold exactly the bytes the
 * kernels will read for the dims the config gives. The Python side validated the file already;
 * this is the second line of defence, so that no caller can hand the kernels a short buffer. */
static int bad_size(const char *what, int layer, const char *part, Py_ssize_t got, long long want) {
    char name[64];
    if (layer >= 0) snprintf(name, sizeof(name), "layer %d %s", layer, what);
    else snprintf(name, sizeof(name), "%s", what);
    PyErr_Format(PyExc_ValueError, "%s: %s holds %zd bytes, the config needs %lld", name, part, got, want);
    return -1;
}

/* (dtype, rows, cols, group, data, scales) -> plm_matrix, checked against the expected shape. */
static int parse_matrix(NativeModel *self, PyObject *spec, plm_matrix *out, const char *what, int layer, int want_rows, int want_cols) {
    int dtype, rows, cols, group;
    PyObject *data, *scales;
    if (!PyArg_ParseTuple(spec, "iiiiOO", &dtype, &rows, &cols, &group, &data, &scales)) return -1;
    if (dtype < PLM_F32 || dtype > PLM_I4) {
        PyErr_Format(PyExc_ValueError, "%s: unknown weight dtype %d", what, dtype);
        return -1;
    }
    if (rows != want_rows || cols != want_cols) {
        PyErr_Format(PyExc_ValueError, "%s (layer %d): shape (%d, %d), the config implies (%d, %d)", what, layer, rows, cols, want_rows, want_cols);
        return -1;
    }
    if ((dtype == PLM_I8 || dtype == PLM_I4) && cols % 32) {
        PyErr_Format(PyExc_ValueError, "%s: integer weights need a multiple of 32 columns, got %d", what, cols);
        return -1;
    }
    if (dtype == PLM_I4 && (group < 32 || group % 32 || cols % group)) {
        PyErr_Format(PyExc_ValueError, "%s: int4 group size %d must be a multiple of 32 that divides the %d columns", what, group, cols);
        return -1;
    }
    out->dtype = (plm_dtype)dtype;
    out->rows = rows;
    out->cols = cols;
    out->group = group;
    Py_ssize_t data_len, scales_len;
    out->data = hold(self, data, &data_len);
    if (out->data == (const void *)-1) return -1;
    const void *s = hold(self, scales, &scales_len);
    if (s == (const void *)-1) return -1;
    static const int bits[] = {32, 16, 8, 4}; /* per value, by plm_dtype */
    const long long values = (long long)rows * cols, want = values * bits[dtype] / 8;
    if (!out->data || data_len != want) return bad_size(what, layer, "weights", data_len, want);
    out->scale_f32 = dtype == PLM_I8 ? (const float *)s : NULL;
    out->scale_f16 = dtype == PLM_I4 ? (const uint16_t *)s : NULL;
    if (dtype == PLM_I8 && (!s || scales_len != 4LL * rows)) return bad_size(what, layer, "scales", scales_len, 4LL * rows);
    if (dtype == PLM_I4 && (!s || scales_len != 2LL * rows * (cols / group)))
        return bad_size(what, layer, "scales", scales_len, 2LL * rows * (cols / group));
    return 0;
}

enum { ABSENT = 0, REQUIRED = 1, OPTIONAL = 2 };

/* A float32 vector of n values: REQUIRED, OPTIONAL (NULL when None) or ABSENT (must be None: the
 * config has no such tensor, so one handed over would be silently unused). */
static const float *parse_vec(NativeModel *self, PyObject *obj, long long n, int presence, const char *what, int layer, int *err) {
    if (*err) return NULL;
    if (presence == ABSENT) {
        if (obj == Py_None) return NULL;
        if (layer >= 0) PyErr_Format(PyExc_ValueError, "layer %d %s: given, but the config has none", layer, what);
        else PyErr_Format(PyExc_ValueError, "%s: given, but the config has none", what);
        *err = 1;
        return NULL;
    }
    Py_ssize_t len;
    const void *p = hold(self, obj, &len);
    if (p == (const void *)-1) {
        *err = 1;
        return NULL;
    }
    if ((p || presence == REQUIRED) && len != 4LL * n) {
        bad_size(what, layer, "values", len, 4LL * n);
        *err = 1;
        return NULL;
    }
    return (const float *)p;
}

/* A norm's weight (n,) and, for LayerNorm, its bias: both present when `present`, else both None. */
static plm_norm parse_norm(NativeModel *self, PyObject *w, PyObject *b, int n, int present, const char *what, int layer, int *err) {
    char bias[64];
    snprintf(bias, sizeof(bias), "%s bias", what);
    plm_norm out;
    out.w = parse_vec(self, w, n, present ? REQUIRED : ABSENT, what, layer, err);
    out.b = parse_vec(self, b, n, present && self->cfg.norm_kind == PLM_NORM_LAYER ? REQUIRED : ABSENT, bias, layer, err);
    return out;
}

static int flag(int v) { return v == 0 || v == 1; }

/* Dims the kernels index with C ints: each positive, heads dividing evenly, products in range; the
 * family options in their ranges and consistent with each other. */
static int check_config(const plm_config *c) {
    const long long qd = (long long)c->n_heads * c->head_dim, kvd = (long long)c->n_kv_heads * c->head_dim;
    if (c->vocab < 1 || c->dim < 1 || c->n_layers < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->head_dim < 2 || c->ffn_dim < 1) {
        PyErr_SetString(PyExc_ValueError, "vocab, dim, n_layers, n_heads, n_kv_heads, head_dim and ffn_dim must be >= 1");
        return -1;
    }
    if (c->n_slots < 1 || c->max_batch < 1 || c->max_seq < 1) {
        PyErr_SetString(PyExc_ValueError, "n_slots, max_batch and max_seq must be >= 1");
        return -1;
    }
    if (c->n_heads % c->n_kv_heads || c->head_dim % 2 || qd > INT_MAX || kvd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "bad attention shape: %d heads, %d kv heads, head_dim %d", c->n_heads, c->n_kv_heads, c->head_dim);
        return -1;
    }
    if ((c->norm_kind != PLM_NORM_RMS && c->norm_kind != PLM_NORM_LAYER) || c->activation < PLM_ACT_SILU || c->activation > PLM_ACT_GELU ||
        !flag(c->mlp_gated) || !flag(c->qk_norm) || !flag(c->parallel_block) || !flag(c->sandwich_norms) || !flag(c->router_renormalise) ||
        (c->parallel_block && c->sandwich_norms)) {
        PyErr_SetString(PyExc_ValueError, "norm_kind, activation or a family flag out of range (or parallel_block with sandwich_norms)");
        return -1;
    }
    if (c->rotary_dim < 2 || c->rotary_dim > c->head_dim || c->rotary_dim % 2 || c->rope_long_after < 0 || c->kv_rewind < 0) {
        PyErr_Format(PyExc_ValueError, "rotary_dim %d must be even and in [2, head_dim %d]; rope_long_after and kv_rewind >= 0", c->rotary_dim,
                     c->head_dim);
        return -1;
    }
    const float fl[] = {c->norm_eps, c->rope_scale, c->embed_scale, c->attn_scale, c->attn_softcap, c->final_softcap};
    for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++)
        if (!isfinite(fl[i]) || (i >= 3 && fl[i] < 0.f)) {
            PyErr_SetString(PyExc_ValueError, "norm_eps, rope_scale, embed_scale, attn_scale and the soft-caps must be finite (scale and caps >= 0)");
            return -1;
        }
    if (c->n_experts < 0 || c->top_k < 0 || c->expert_ffn_dim < 0 || c->shared_ffn_dim < 0 ||
        (c->n_experts ? c->top_k < 1 || c->top_k > c->n_experts || c->expert_ffn_dim < 1 || !c->mlp_gated
                      : c->top_k || c->expert_ffn_dim || c->shared_ffn_dim)) {
        PyErr_Format(PyExc_ValueError, "bad mixture of experts: %d experts, top %d, expert_ffn_dim %d, shared_ffn_dim %d", c->n_experts, c->top_k,
                     c->expert_ffn_dim, c->shared_ffn_dim);
        return -1;
    }
    return 0;
}

static int parse_config(PyObject *config, plm_config *c) {
    static char *kwlist[] = {"vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "max_seq", "max_batch", "n_slots",
                             "norm_eps", "norm_kind", "activation", "mlp_gated", "qk_norm", "parallel_block", "sandwich_norms", "rotary_dim",
                             "rope_long_after", "rope_scale", "embed_scale", "attn_scale", "attn_softcap", "final_softcap", "n_experts", "top_k",
                             "expert_ffn_dim", "shared_ffn_dim", "router_renormalise", "kv_rewind", NULL};
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "config must be a dict");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->mlp_gated = 1;
    c->rope_scale = c->embed_scale = 1.0f;
    c->kv_rewind = INT_MAX / 2; /* not given: every layer keeps every position */
    PyObject *none = PyTuple_New(0);
    if (!none) return -1;
    const int ok = PyArg_ParseTupleAndKeywords(
        none, config, "iiiiiiiiiif|iiiiiiiifffffiiiiii", kwlist, &c->vocab, &c->dim, &c->n_layers, &c->n_heads, &c->n_kv_heads, &c->head_dim,
        &c->ffn_dim, &c->max_seq, &c->max_batch, &c->n_slots, &c->norm_eps, &c->norm_kind, &c->activation, &c->mlp_gated, &c->qk_norm,
        &c->parallel_block, &c->sandwich_norms, &c->rotary_dim, &c->rope_long_after, &c->rope_scale, &c->embed_scale, &c->attn_scale,
        &c->attn_softcap, &c->final_softcap, &c->n_experts, &c->top_k, &c->expert_ffn_dim, &c->shared_ffn_dim, &c->router_renormalise, &c->kv_rewind);
    Py_DECREF(none);
    if (!ok) return -1;
    if (!PyDict_GetItemString(config, "rotary_dim")) c->rotary_dim = c->head_dim;
    return check_config(c);
}

/* One layer's dict: its norms, biases, router and matrices (in weights_spec.layer_matrices' order),
 * each checked against the config. */
static int parse_layer(NativeModel *self, PyObject *spec, int l, plm_layer *L, plm_matrix *experts, int *uses_local) {
    static char *kwlist[] = {"input_norm", "input_norm_bias", "post_attention_norm", "post_attention_norm_bias", "q_norm", "q_norm_bias",
                             "k_norm", "k_norm_bias", "attn_output_norm", "attn_output_norm_bias", "ffn_output_norm",
                             "ffn_output_norm_bias", "q_bias", "k_bias", "v_bias", "o_bias", "gate_bias", "up_bias", "down_bias", "router",
                             "shared_expert_gate", "matrices", "window", "rope_set", NULL};
    PyObject *v[22];
    for (int i = 0; i < 22; i++) v[i] = Py_None;
    if (!PyDict_Check(spec)) {
        PyErr_Format(PyExc_TypeError, "layer %d must be a dict", l);
        return -1;
    }
    PyObject *none = PyTuple_New(0);
    if (!none) return -1;
    const int ok = PyArg_ParseTupleAndKeywords(none, spec, "|OOOOOOOOOOOOOOOOOOOOOOii", kwlist, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                                               &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15], &v[16],
                                               &v[17], &v[18], &v[19], &v[20], &v[21], &L->window, &L->rope_set);
    Py_DECREF(none);
    if (!ok) return -1;
    const plm_config *c = &self->cfg;
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim, moe = c->n_experts > 0;
    if (L->window < 0 || (L->rope_set != PLM_ROPE_GLOBAL && L->rope_set != PLM_ROPE_LOCAL)) {
        PyErr_Format(PyExc_ValueError, "layer %d: window %d must be >= 0 and rope_set 0 (global) or 1 (local)", l, L->window);
        return -1;
    }
    *uses_local |= L->rope_set == PLM_ROPE_LOCAL;
    int err = 0;
    L->attn_norm = parse_norm(self, v[0], v[1], c->dim, 1, "input norm", l, &err);
    L->ffn_norm = parse_norm(self, v[2], v[3], c->dim, !c->parallel_block, "post-attention norm", l, &err);
    L->q_norm = parse_norm(self, v[4], v[5], c->head_dim, c->qk_norm, "q norm", l, &err);
    L->k_norm = parse_norm(self, v[6], v[7], c->head_dim, c->qk_norm, "k norm", l, &err);
    L->attn_out_norm = parse_norm(self, v[8], v[9], c->dim, c->sandwich_norms, "attention output norm", l, &err);
    L->ffn_out_norm = parse_norm(self, v[10], v[11], c->dim, c->sandwich_norms, "MLP output norm", l, &err);
    L->bq = parse_vec(self, v[12], qd, OPTIONAL, "q bias", l, &err);
    L->bk = parse_vec(self, v[13], kvd, OPTIONAL, "k bias", l, &err);
    L->bv = parse_vec(self, v[14], kvd, OPTIONAL, "v bias", l, &err);
    L->bo = parse_vec(self, v[15], c->dim, OPTIONAL, "o bias", l, &err);
    L->bgate = parse_vec(self, v[16], c->ffn_dim, c->mlp_gated && !moe ? OPTIONAL : ABSENT, "gate bias", l, &err);
    L->bup = parse_vec(self, v[17], c->ffn_dim, moe ? ABSENT : OPTIONAL, "up bias", l, &err);
    L->bdown = parse_vec(self, v[18], c->dim, moe ? ABSENT : OPTIONAL, "down bias", l, &err);
    L->router = parse_vec(self, v[19], (long long)c->n_experts * c->dim, moe ? REQUIRED : ABSENT, "router", l, &err);
    L->shared_gate = parse_vec(self, v[20], c->dim, c->shared_ffn_dim ? REQUIRED : ABSENT, "shared expert gate", l, &err);
    if (err) return -1;
    PyObject *mats = v[21];
    const Py_ssize_t want = 4 + (moe ? 3LL * c->n_experts + (c->shared_ffn_dim ? 3 : 0) : (c->mlp_gated ? 3 : 2));
    if (!PyTuple_Check(mats) || PyTuple_GET_SIZE(mats) != want) {
        PyErr_Format(PyExc_ValueError, "layer %d: matrices must be a tuple of %zd matrices", l, want);
        return -1;
    }
#define MAT(i, out, what, rows, cols) \
    if (parse_matrix(self, PyTuple_GET_ITEM(mats, i), out, what, l, rows, cols) < 0) return -1
    MAT(0, &L->wq, "q_proj", qd, c->dim);
    MAT(1, &L->wk, "k_proj", kvd, c->dim);
    MAT(2, &L->wv, "v_proj", kvd, c->dim);
    MAT(3, &L->wo, "o_proj", c->dim, qd);
    L->experts = experts;
    if (moe) {
        for (int e = 0; e < c->n_experts; e++) {
            MAT(4 + 3 * e, &experts[3 * e], "expert gate_proj", c->expert_ffn_dim, c->dim);
            MAT(5 + 3 * e, &experts[3 * e + 1], "expert up_proj", c->expert_ffn_dim, c->dim);
            MAT(6 + 3 * e, &experts[3 * e + 2], "expert down_proj", c->dim, c->expert_ffn_dim);
        }
        if (c->shared_ffn_dim) {
            const int s = 4 + 3 * c->n_experts;
            MAT(s, &L->sgate, "shared expert gate_proj", c->shared_ffn_dim, c->dim);
            MAT(s + 1, &L->sup, "shared expert up_proj", c->shared_ffn_dim, c->dim);
            MAT(s + 2, &L->sdown, "shared expert down_proj", c->dim, c->shared_ffn_dim);
        }
    } else if (c->mlp_gated) {
        MAT(4, &L->wgate, "gate_proj", c->ffn_dim, c->dim);
        MAT(5, &L->wup, "up_proj", c->ffn_dim, c->dim);
        MAT(6, &L->wdown, "down_proj", c->dim, c->ffn_dim);
    } else {
        MAT(4, &L->wup, "up_proj", c->ffn_dim, c->dim);
        MAT(5, &L->wdown, "down_proj", c->dim, c->ffn_dim);
    }
#undef MAT
    return 0;
}

static int NativeModel_init(NativeModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "embed", "lm_head", "final_norm", "layers", "rope", "n_threads", "isa", "final_norm_bias", "lm_head_bias", NULL};
    PyObject *config, *embed, *lm_head, *final_norm, *layers, *rope, *final_bias = Py_None, *head_bias = Py_None;
    int n_threads = 1;
    const char *isa = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|isOO", kwlist, &config, &embed, &lm_head, &final_norm, &layers, &rope, &n_threads,
                                     &isa, &final_bias, &head_bias))
        return -1;
    plm_config *c = &self->cfg;
    if (parse_config(config, c) < 0) return -1;
    if (!PyList_Check(layers) || PyList_Size(layers) != c->n_layers) {
        PyErr_SetString(PyExc_ValueError, "layers must be a list with one entry per layer");
        return -1;
    }
    plm_matrix em, head;
    if (parse_matrix(self, embed, &em, "embed_tokens", -1, c->vocab, c->dim) < 0 || parse_matrix(self, lm_head, &head, "lm_head", -1, c->vocab, c->dim) < 0)
        return -1;
    int err = 0;
    const plm_norm fn = parse_norm(self, final_norm, final_bias, c->dim, 1, "final norm", -1, &err);
    const float *hb = parse_vec(self, head_bias, c->vocab, OPTIONAL, "lm_head bias", -1, &err);
    if (err) return -1;
    if (!PyTuple_Check(rope) || PyTuple_GET_SIZE(rope) != PLM_ROPE_SETS) {
        PyErr_SetString(PyExc_ValueError, "rope must be a tuple (global, local, long) of inverse frequencies");
        return -1;
    }
    plm_layer *ls = (plm_layer *)calloc((size_t)c->n_layers, sizeof(plm_layer));
    plm_matrix *experts = (plm_matrix *)calloc((size_t)c->n_layers * 3 * (size_t)c->n_experts + 1, sizeof(plm_matrix));
    if (!ls || !experts) {
        free(ls);
        free(experts);
        PyErr_NoMemory();
        return -1;
    }
    int uses_local = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (parse_layer(self, PyList_GetItem(layers, l), l, &ls[l], experts + (size_t)l * 3 * c->n_experts, &uses_local) < 0) goto fail;
    const float *inv_freq[PLM_ROPE_SETS];
    static const char *rope_names[PLM_ROPE_SETS] = {"global rope frequencies", "local rope frequencies", "long rope frequencies"};
    const int needed[PLM_ROPE_SETS] = {REQUIRED, uses_local ? REQUIRED : ABSENT, c->rope_long_after ? REQUIRED : ABSENT};
    for (int s = 0; s < PLM_ROPE_SETS; s++) inv_freq[s] = parse_vec(self, PyTuple_GET_ITEM(rope, s), c->rotary_dim / 2, needed[s], rope_names[s], -1, &err);
    if (err) goto fail;
    Py_BEGIN_ALLOW_THREADS
    self->model = plm_model_create(c, &em, &head, fn, hb, ls, inv_freq, n_threads, isa);
    Py_END_ALLOW_THREADS
    free(ls);
    free(experts);
    if (!self->model) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
fail:
    free(ls);
    free(experts);
    return -1;
}

static PyObject *NativeModel_forward(NativeModel *self, PyObject *args) {
    Py_buffer tokens, positions, slots, logits;
    int all_logits = 0;
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "model is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*y*y*w*|p", &tokens, &positions, &slots, &logits, &all_logits)) return NULL;
    const int n = (int)(tokens.len / 4);
    const Py_ssize_t need = (Py_ssize_t)sizeof(float) * self->cfg.vocab * (all_logits ? n : 1);
    int rc = -3;
    if (tokens.len % 4 == 0 && positions.len == tokens.len && slots.len == tokens.len && logits.len >= need && n > 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = plm_model_forward(self->model, (const int32_t *)tokens.buf, (const int32_t *)positions.buf, (const int32_t *)slots.buf, n,
                               (float *)logits.buf, all_logits);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&tokens);
    PyBuffer_Release(&positions);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&logits);
    if (rc == -1) return PyErr_Format(PyExc_ValueError, "a position is outside the context of %d", self->cfg.max_seq);
    if (rc == -2) return PyErr_Format(PyExc_ValueError, "token id out of range (vocabulary %d)", self->cfg.vocab);
    if (rc == -4) return PyErr_Format(PyExc_ValueError, "slot out of range (%d slots)", self->cfg.n_slots);
    if (rc == -3)
        return PyErr_Format(PyExc_ValueError, "tokens, positions and slots must be equal-length int32 buffers and logits a float32 buffer of %zd bytes", need);
    Py_RETURN_NONE;
}

static PyObject *NativeModel_isa(NativeModel *self, PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(self->model ? plm_model_isa(self->model) : "none");
}

static PyObject *NativeModel_profile(NativeModel *self, PyObject *args) {
    int enable = 1;
    if (!PyArg_ParseTuple(args, "|p", &enable)) return NULL;
    double prof[PLM_PROF_N];
    plm_model_profile(self->model, enable, prof);
    static const char *names[PLM_PROF_N] = {"embed", "norm", "qkv", "rope_cache", "attention", "o_proj", "ffn_gate_up", "swiglu", "ffn_down", "lm_head"};
    PyObject *d = PyDict_New();
    for (int i = 0; i < PLM_PROF_N; i++) {
        PyObject *v = PyFloat_FromDouble(prof[i]);
        PyDict_SetItemString(d, names[i], v);
        Py_DECREF(v);
    }
    return d;
}

static void NativeModel_dealloc(NativeModel *self) {
    plm_model_destroy(self->model);
    for (int i = 0; i < self->n_views; i++) PyBuffer_Release(&self->views[i]);
    free(self->views);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef NativeModel_methods[] = {
    {"forward", (PyCFunction)NativeModel_forward, METH_VARARGS,
     "forward(tokens, positions, slots, logits, all_logits=False): int32 buffers; logits float32 (n or 1, vocab)"},
    {"isa", (PyCFunction)NativeModel_isa, METH_NOARGS, "the instruction set the kernels use"},
    {"profile", (PyCFunction)NativeModel_profile, METH_VARARGS, "profile(enable=True) -> seconds per phase since the last call; resets"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NativeModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pocketlm.engine._native.Model",
    .tp_basicsize = sizeof(NativeModel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)NativeModel_init,
    .tp_dealloc = (destructor)NativeModel_dealloc,
    .tp_methods = NativeModel_methods,
    .tp_doc = "A Llama-style decoder over memory-mapped weights, run by native CPU kernels.",
};

static PyObject *cpu_isa(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    plm_kernels k;
    plm_select_kernels(&k, NULL);
    return PyUnicode_FromString(k.name);
}

static PyObject *f16_to_f32(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned int h;
    if (!PyArg_ParseTuple(args, "I", &h)) return NULL;
    return PyFloat_FromDouble(plm_f16_to_f32((uint16_t)h));
}

static PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "best kernel set for this CPU: avx512-vnni, avx2 or portable"},
    {"f16_to_f32", f16_to_f32, METH_VARARGS, "convert one IEEE half (as int bits) to float"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", "PocketLM native CPU kernels.", -1, module_methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&NativeModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&NativeModelType);
    PyModule_AddObject(m, "Model", (PyObject *)&NativeModelType);
    return m;
}
