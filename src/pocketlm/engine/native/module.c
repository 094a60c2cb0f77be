/* Python bindings: pocketlm.engine._native.Model wraps one plm_model. Weights are passed as
 * buffer objects (memory-mapped numpy arrays) that the Model keeps alive; forward() releases the
 * GIL while it runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static const void *hold(NativeModel *self, PyObject *obj, int writable) {
    if (obj == Py_None) return NULL;
    if (self->n_views == self->cap_views) {
        self->cap_views = self->cap_views ? 2 * self->cap_views : 64;
        self->views = (Py_buffer *)realloc(self->views, sizeof(Py_buffer) * (size_t)self->cap_views);
    }
    Py_buffer *v = &self->views[self->n_views];
    if (PyObject_GetBuffer(obj, v, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0) return (const void *)-1;
    self->n_views++;
    return v->buf;
}

/* (dtype, rows, cols, group, data, scales) -> plm_matrix */
static int parse_matrix(NativeModel *self, PyObject *spec, plm_matrix *out) {
    int dtype, rows, cols, group;
    PyObject *data, *scales;
    if (!PyArg_ParseTuple(spec, "iiiiOO", &dtype, &rows, &cols, &group, &data, &scales)) return -1;
    if (dtype < PLM_F32 || dtype > PLM_I4) {
        PyErr_Format(PyExc_ValueError, "unknown weight dtype %d", dtype);
        return -1;
    }
    out->dtype = (plm_dtype)dtype;
    out->rows = rows;
    out->cols = cols;
    out->group = group;
    out->data = hold(self, data, 0);
    if (out->data == (const void *)-1) return -1;
    const void *s = hold(self, scales, 0);
    if (s == (const void *)-1) return -1;
    out->scale_f32 = dtype == PLM_I8 ? (const float *)s : NULL;
    out->scale_f16 = dtype == PLM_I4 ? (const uint16_t *)s : NULL;
    if ((dtype == PLM_I8 || dtype == PLM_I4) && (!s || cols % 32)) {
        PyErr_SetString(PyExc_ValueError, "integer weights need scales and a multiple of 32 columns");
        return -1;
    }
    if (dtype == PLM_I4 && (group < 32 || group % 32 || cols % group)) {
        PyErr_SetString(PyExc_ValueError, "int4 group size must be a multiple of 32 that divides the columns");
        return -1;
    }
    return 0;
}

static const float *parse_vec(NativeModel *self, PyObject *obj, int *err) {
    const void *p = hold(self, obj, 0);
    if (p == (const void *)-1) {
        *err = 1;
        return NULL;
    }
    return (const float *)p;
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
    if (c->n_slots < 1 || c->max_batch < 1 || c->max_seq < 1) {
        PyErr_SetString(PyExc_ValueError, "n_slots, max_batch and max_seq must be >= 1");
        return -1;
    }
    if (!PyList_Check(layers) || PyList_Size(layers) != c->n_layers) {
        PyErr_SetString(PyExc_ValueError, "layers must be a list with one entry per layer");
        return -1;
    }
    plm_matrix em, head;
    if (parse_matrix(self, embed, &em) < 0 || parse_matrix(self, lm_head, &head) < 0) return -1;
    int err = 0;
    const float *fn = parse_vec(self, final_norm, &err);
    if (err) return -1;
    plm_layer *ls = (plm_layer *)calloc((size_t)c->n_layers, sizeof(plm_layer));
    for (int l = 0; l < c->n_layers; l++) {
        PyObject *spec = PyList_GetItem(layers, l);
        PyObject *an, *fnorm, *bq, *bk, *bv, *wq, *wk, *wv, *wo, *wg, *wu, *wd;
        if (!PyArg_ParseTuple(spec, "OOOOOOOOOOOO", &an, &fnorm, &bq, &bk, &bv, &wq, &wk, &wv, &wo, &wg, &wu, &wd)) goto fail;
        plm_layer *L = &ls[l];
        L->attn_norm = parse_vec(self, an, &err);
        L->ffn_norm = parse_vec(self, fnorm, &err);
        L->bq = parse_vec(self, bq, &err);
        L->bk = parse_vec(self, bk, &err);
        L->bv = parse_vec(self, bv, &err);
        if (err) goto fail;
        if (parse_matrix(self, wq, &L->wq) < 0 || parse_matrix(self, wk, &L->wk) < 0 || parse_matrix(self, wv, &L->wv) < 0 ||
            parse_matrix(self, wo, &L->wo) < 0 || parse_matrix(self, wg, &L->wgate) < 0 || parse_matrix(self, wu, &L->wup) < 0 ||
            parse_matrix(self, wd, &L->wdown) < 0)
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
