/* Python bindings: pocketlm.engine._native.Model wraps one plm_model. Weights are passed as
 * buffer objects (memory-mapped numpy arrays) that the Model keeps alive; forward() releases the
 * GIL while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
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

/* A float32 vector of n values, or NULL when optional and None. */
static const float *parse_vec(NativeModel *self, PyObject *obj, int n, int required, const char *what, int layer, int *err) {
    if (*err) return NULL;
    Py_ssize_t len;
    const void *p = hold(self, obj, &len);
    if (p == (const void *)-1) {
        *err = 1;
        return NULL;
    }
    if ((p || required) && len != 4LL * n) {
        bad_size(what, layer, "values", len, 4LL * n);
        *err = 1;
        return NULL;
    }
    return (const float *)p;
}

/* Dims the kernels index with C ints: each positive, heads dividing evenly, products in range. */
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
    return 0;
}

static int NativeModel_init(NativeModel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "embed", "lm_head", "final_norm", "layers", "n_threads", "isa", NULL};
    PyObject *config, *embed, *lm_head, *final_norm, *layers;
    int n_threads = 1;
    const char *isa = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|is", kwlist, &config, &embed, &lm_head, &final_norm, &layers, &n_threads, &isa))
        return -1;
    plm_config *c = &self->cfg;
    if (!PyArg_ParseTuple(config, "iiiiiiiiiiff", &c->vocab, &c->dim, &c->n_layers, &c->n_heads, &c->n_kv_heads, &c->head_dim,
                          &c->ffn_dim, &c->max_seq, &c->max_batch, &c->n_slots, &c->rope_theta, &c->norm_eps))
        return -1;
    if (check_config(c) < 0) return -1;
    if (!PyList_Check(layers) || PyList_Size(layers) != c->n_layers) {
        PyErr_SetString(PyExc_ValueError, "layers must be a list with one entry per layer");
        return -1;
    }
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    plm_matrix em, head;
    if (parse_matrix(self, embed, &em, "embed_tokens", -1, c->vocab, c->dim) < 0 || parse_matrix(self, lm_head, &head, "lm_head", -1, c->vocab, c->dim) < 0)
        return -1;
    int err = 0;
    const float *fn = parse_vec(self, final_norm, c->dim, 1, "final norm", -1, &err);
    if (err) return -1;
    plm_layer *ls = (plm_layer *)calloc((size_t)c->n_layers, sizeof(plm_layer));
    if (!ls) {
        PyErr_NoMemory();
        return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        PyObject *spec = PyList_GetItem(layers, l);
        PyObject *an, *fnorm, *bq, *bk, *bv, *wq, *wk, *wv, *wo, *wg, *wu, *wd;
        if (!PyArg_ParseTuple(spec, "OOOOOOOOOOOO", &an, &fnorm, &bq, &bk, &bv, &wq, &wk, &wv, &wo, &wg, &wu, &wd)) goto fail;
        plm_layer *L = &ls[l];
        L->attn_norm = parse_vec(self, an, c->dim, 1, "input norm", l, &err);
        L->ffn_norm = parse_vec(self, fnorm, c->dim, 1, "post-attention norm", l, &err);
        L->bq = parse_vec(self, bq, qd, 0, "q bias", l, &err);
        L->bk = parse_vec(self, bk, kvd, 0, "k bias", l, &err);
        L->bv = parse_vec(self, bv, kvd, 0, "v bias", l, &err);
        if (err) goto fail;
        if (parse_matrix(self, wq, &L->wq, "q_proj", l, qd, c->dim) < 0 || parse_matrix(self, wk, &L->wk, "k_proj", l, kvd, c->dim) < 0 ||
            parse_matrix(self, wv, &L->wv, "v_proj", l, kvd, c->dim) < 0 || parse_matrix(self, wo, &L->wo, "o_proj", l, c->dim, qd) < 0 ||
            parse_matrix(self, wg, &L->wgate, "gate_proj", l, c->ffn_dim, c->dim) < 0 ||
            parse_matrix(self, wu, &L->wup, "up_proj", l, c->ffn_dim, c->dim) < 0 || parse_matrix(self, wd, &L->wdown, "down_proj", l, c->dim, c->ffn_dim) < 0)
            goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    self->model = plm_model_create(c, &em, &head, fn, ls, n_threads, isa);
    Py_END_ALLOW_THREADS
    free(ls);
    if (!self->model) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
fail:
    free(ls);
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
