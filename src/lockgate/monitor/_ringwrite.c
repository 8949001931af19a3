/* The ring's writer (lockgate.monitor._ringwrite): one call per model run copies the run into a
 * set of ring columns, on the event loop.
 *
 * Done in Python, the same copy was a dozen numpy and array calls per run, or runs held and
 * copied in groups; either way the loop paid several microseconds a request, most of it the
 * calls' own overhead and the objects kept alive meanwhile (docs/design/monitor-tail-cost.md).
 * Here a run costs a dictionary lookup and a buffer request per monitored tensor and a few
 * integer conversions per request: each tensor's values are cast to float32 into their columns
 * (the cast numpy makes: C's, so float64 beyond float32 becomes inf), the requests' ids are
 * appended to a list and their routes, clients, timings and row counts, and the run's times,
 * written to preallocated int64 and float64 arrays.
 *
 * A run is written whole or not at all: everything is checked and converted into rows past the
 * set's counts before the counts move. `write` returns the rows written, FULL when the run does
 * not fit, or UNSUPPORTED when a tensor is not a C-contiguous array of a native numeric type
 * (the caller converts it with numpy and calls again). A tensor whose values do not fill its
 * columns for the run's rows is written as NaN and counted in `mismatched`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define FULL (-1)
#define UNSUPPORTED (-2)

enum { FROM_INPUTS = 0, FROM_OUTPUTS = 1, FROM_DERIVED = 2 };
/* per-request columns of `requests`, per-run columns of `runs` (ts is its own float64 array) */
enum { ROUTE, CLIENT, RECEIVED, ENQUEUED, ROWS, REQUEST_FIELDS };
enum { STARTED, DONE, RUN_REQUESTS, RUN_FIELDS };

typedef struct {
    int source;       /* FROM_INPUTS, FROM_OUTPUTS or FROM_DERIVED */
    PyObject *key;    /* the tensor's name (FROM_DERIVED: unused) */
    Py_ssize_t index; /* FROM_DERIVED: the position in the run's derived list */
    char *dest;       /* its first column in row 0 */
    Py_ssize_t stride; /* bytes from one row to the next */
    Py_ssize_t width; /* values a row */
} Target;

typedef struct {
    PyObject_HEAD
    Py_buffer matrices[2]; /* inputs, outputs: float32 [capacity, width] */
    Py_buffer requests;    /* int64 [REQUEST_FIELDS, capacity] */
    Py_buffer runs;        /* int64 [RUN_FIELDS, capacity] */
    Py_buffer ts;          /* float64 [capacity] */
    int held;              /* how many of the buffers above are held */
    PyObject *ids;         /* list: the requests' ids */
    Target *targets;
    Py_ssize_t n_targets;
    PyArrayObject **arrays; /* per target, scratch of `write` (which never lets the GIL go) */
    char *kinds;
    Py_ssize_t capacity;
    Py_ssize_t rows, n_requests, n_runs, mismatched;
} Writer;

static void Writer_dealloc(Writer *self) {
    Py_buffer *held[] = {&self->matrices[0], &self->matrices[1], &self->requests, &self->runs,
                         &self->ts};
    for (int i = 0; i < self->held; i++) PyBuffer_Release(held[i]);
    for (Py_ssize_t i = 0; i < self->n_targets; i++) Py_XDECREF(self->targets[i].key);
    PyMem_Free(self->targets);
    PyMem_Free(self->arrays);
    PyMem_Free(self->kinds);
    Py_XDECREF(self->ids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int get_array(PyObject *obj, Py_buffer *view, const char *formats, Py_ssize_t len,
                     const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return -1;
    if (strlen(view->format) != 1 || strchr(formats, view->format[0]) == NULL ||
        view->itemsize != 8 || view->len < len) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: a C-contiguous array of %zd bytes is needed", what,
                     len);
        return -1;
    }
    return 0;
}

static int Writer_init(Writer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"inputs", "outputs", "targets", "requests", "runs", "ts", "ids",
                             NULL};
    PyObject *matrices[2], *targets, *requests, *runs, *ts, *ids;
    if (self->held || self->targets) {
        PyErr_SetString(PyExc_RuntimeError, "a Writer is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO!", kwlist, &matrices[0], &matrices[1],
                                     &targets, &requests, &runs, &ts, &PyList_Type, &ids))
        return -1;
    Py_ssize_t widths[2];
    for (int m = 0; m < 2; m++) {
        Py_buffer *view = &self->matrices[m];
        if (PyObject_GetBuffer(matrices[m], view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                                      PyBUF_WRITABLE) < 0)
            return -1;
        self->held++;
        if (strcmp(view->format, "f") != 0 || view->ndim != 2) {
            PyErr_SetString(PyExc_ValueError, "the matrices must be C-contiguous float32 2-D");
            return -1;
        }
        widths[m] = view->shape[1];
        if (m == 0) self->capacity = view->shape[0];
        else if (view->shape[0] != self->capacity) {
            PyErr_SetString(PyExc_ValueError, "the matrices must have the same rows");
            return -1;
        }
    }
    Py_ssize_t cap = self->capacity;
    if (get_array(requests, &self->requests, "lq", REQUEST_FIELDS * cap * 8, "requests") < 0)
        return -1;
    self->held++;
    if (get_array(runs, &self->runs, "lq", RUN_FIELDS * cap * 8, "runs") < 0) return -1;
    self->held++;
    if (get_array(ts, &self->ts, "d", cap * 8, "ts") < 0) return -1;
    self->held++;
    Py_INCREF(ids);
    self->ids = ids;

    PyObject *seq = PySequence_Fast(targets, "targets must be a sequence");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->targets = PyMem_Calloc(n ? n : 1, sizeof(Target));
    self->arrays = PyMem_Calloc(n ? n : 1, sizeof(PyArrayObject *));
    self->kinds = PyMem_Calloc(n ? n : 1, 1);
    if (self->targets == NULL || self->arrays == NULL || self->kinds == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Target *t = &self->targets[i];
        PyObject *key;
        int matrix;
        Py_ssize_t first;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iOinn;a target is (source, key, "
                              "matrix, first column, width)", &t->source, &key, &matrix, &first,
                              &t->width)) {
            Py_DECREF(seq);
            return -1;
        }
        if (t->source < FROM_INPUTS || t->source > FROM_DERIVED || matrix < 0 || matrix > 1 ||
            first < 0 || t->width < 1 || first + t->width > widths[matrix]) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a target is outside its matrix");
            return -1;
        }
        if (t->source == FROM_DERIVED) {
            t->index = PyLong_AsSsize_t(key);
            if (t->index < 0) {
                Py_DECREF(seq);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a derived target's key is its index");
                return -1;
            }
        } else {
            Py_INCREF(key);
            t->key = key;
        }
        self->n_targets = i + 1;
        t->stride = widths[matrix] * (Py_ssize_t)sizeof(float);
        t->dest = (char *)self->matrices[matrix].buf + first * (Py_ssize_t)sizeof(float);
    }
    Py_DECREF(seq);
    return 0;
}

/* `rows` rows of `width` values from `src` (C-contiguous, of a type `castable` accepted,
 * `size` bytes each) into float32 columns, cast as C (and numpy) cast. */
#define CAST_ROWS(T)                                                                    \
    do {                                                                                \
        const T *s = (const T *)src;                                                    \
        for (Py_ssize_t r = 0; r < rows; r++, s += width) {                            \
            float *d = (float *)(dest + r * stride);                                    \
            for (Py_ssize_t j = 0; j < width; j++) d[j] = (float)s[j];                  \
        }                                                                               \
    } while (0)

static void cast_rows(char *dest, Py_ssize_t stride, Py_ssize_t width, Py_ssize_t rows,
                      const char *src, char kind, Py_ssize_t size) {
    int is_signed = kind == 'b';
    if (kind == 'f') CAST_ROWS(float);
    else if (kind == 'd') CAST_ROWS(double);
    else if (kind == '?' || (!is_signed && size == 1)) CAST_ROWS(uint8_t);
    else if (!is_signed && size == 2) CAST_ROWS(uint16_t);
    else if (!is_signed && size == 4) CAST_ROWS(uint32_t);
    else if (!is_signed) CAST_ROWS(uint64_t);
    else if (size == 1) CAST_ROWS(int8_t);
    else if (size == 2) CAST_ROWS(int16_t);
    else if (size == 4) CAST_ROWS(int32_t);
    else CAST_ROWS(int64_t);
}

/* The type of an array `cast_rows` reads ('f', 'd', '?', 'b'/'B' signed/unsigned integers of
 * any size), or 0: not an array, not C-contiguous and aligned, or not in native byte order. */
static char castable(PyObject *obj) {
    if (!PyArray_Check(obj)) return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a))
        return 0;
    switch (PyArray_TYPE(a)) {
    case NPY_FLOAT: return 'f';
    case NPY_DOUBLE: return 'd';
    case NPY_BOOL: return '?';
    case NPY_BYTE: case NPY_SHORT: case NPY_INT: case NPY_LONG: case NPY_LONGLONG: return 'b';
    case NPY_UBYTE: case NPY_USHORT: case NPY_UINT: case NPY_ULONG: case NPY_ULONGLONG:
        return 'B';
    }
    return 0;
}

static void fill_nan(char *dest, Py_ssize_t stride, Py_ssize_t width, Py_ssize_t rows) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        float *d = (float *)(dest + r * stride);
        for (Py_ssize_t j = 0; j < width; j++) d[j] = NAN;
    }
}

static int as_int64(PyObject *obj, int64_t *out) {
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

/* write(feeds, outputs, derived, metas, rows, enqueued_ns, started_ns, done_ns, ts) */
static PyObject *Writer_write(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "write(feeds, outputs, derived, metas, rows, enqueued_ns, started_ns, "
                        "done_ns, ts)");
        return NULL;
    }
    PyObject *dicts[2] = {args[0], args[1]};
    PyObject *derived = args[2], *metas = args[3], *rows = args[4], *enqueued = args[5];
    if (!PyDict_Check(dicts[0]) || !PyDict_Check(dicts[1]) || !PyList_Check(metas) ||
        !PyList_Check(rows) || !PyList_Check(enqueued)) {
        PyErr_SetString(PyExc_TypeError, "feeds and outputs are dicts; metas, rows and "
                                         "enqueued_ns lists");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(metas);
    if (PyList_GET_SIZE(rows) != n || PyList_GET_SIZE(enqueued) != n) {
        PyErr_SetString(PyExc_ValueError, "metas, rows and enqueued_ns differ in length");
        return NULL;
    }
    Py_ssize_t cap = self->capacity, start = self->rows, at = self->n_requests;
    if (at + n > cap || self->n_runs >= cap) return PyLong_FromLong(FULL);
    int64_t *req = (int64_t *)self->requests.buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t *r = &req[ROWS * cap + at + i];
        if (as_int64(PyList_GET_ITEM(rows, i), r) < 0) return NULL;
        if (*r < 0) {
            PyErr_SetString(PyExc_ValueError, "a request's rows are negative");
            return NULL;
        }
        if (*r > cap - total) return PyLong_FromLong(FULL); /* also: no overflow of the sum */
        total += (Py_ssize_t)*r;
    }
    if (total == 0) return PyLong_FromLong(0);
    if (start + total > cap) return PyLong_FromLong(FULL);

    /* The per-request values, into the rows past the counts. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *meta = PyList_GET_ITEM(metas, i);
        if (!PyTuple_Check(meta) || PyTuple_GET_SIZE(meta) != 4) {
            PyErr_SetString(PyExc_TypeError, "a request's meta is (id, route, received_ns, "
                                             "client)");
            return NULL;
        }
        Py_ssize_t k = at + i;
        if (as_int64(PyTuple_GET_ITEM(meta, 1), &req[ROUTE * cap + k]) < 0 ||
            as_int64(PyTuple_GET_ITEM(meta, 2), &req[RECEIVED * cap + k]) < 0 ||
            as_int64(PyTuple_GET_ITEM(meta, 3), &req[CLIENT * cap + k]) < 0 ||
            as_int64(PyList_GET_ITEM(enqueued, i), &req[ENQUEUED * cap + k]) < 0)
            return NULL;
    }
    int64_t *run = (int64_t *)self->runs.buf;
    Py_ssize_t b = self->n_runs;
    double when = PyFloat_AsDouble(args[8]);
    if ((when == -1.0 && PyErr_Occurred()) || as_int64(args[6], &run[STARTED * cap + b]) < 0 ||
        as_int64(args[7], &run[DONE * cap + b]) < 0)
        return NULL;
    run[RUN_REQUESTS * cap + b] = n;
    ((double *)self->ts.buf)[b] = when;

    /* The tensors: every one checked first, so an unsupported one leaves nothing written. */
    Py_ssize_t nt = self->n_targets;
    PyArrayObject **arrays = self->arrays;
    char *kinds = self->kinds; /* per target: its type; 0 when NaN */
    Py_ssize_t mismatched = 0;
    for (Py_ssize_t i = 0; i < nt; i++) {
        Target *t = &self->targets[i];
        PyObject *src;
        kinds[i] = 0;
        if (t->source == FROM_DERIVED) {
            if (!PyList_Check(derived) || t->index >= PyList_GET_SIZE(derived)) {
                PyErr_SetString(PyExc_TypeError, "a run with summarised inputs needs derived");
                return NULL;
            }
            src = PyList_GET_ITEM(derived, t->index);
            if (src == Py_None) continue; /* a tensor that did not fit its summary: NaN */
        } else {
            src = PyDict_GetItemWithError(dicts[t->source], t->key);
            if (src == NULL) {
                if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, t->key);
                return NULL;
            }
        }
        kinds[i] = castable(src);
        if (kinds[i] == 0) return PyLong_FromLong(UNSUPPORTED);
        arrays[i] = (PyArrayObject *)src; /* borrowed: the run's dicts and list hold it */
    }
    for (Py_ssize_t i = 0; i < nt; i++) {
        Target *t = &self->targets[i];
        char *dest = t->dest + start * t->stride;
        if (kinds[i] == 0 || PyArray_SIZE(arrays[i]) != total * t->width) {
            fill_nan(dest, t->stride, t->width, total);
            mismatched += total;
        } else {
            cast_rows(dest, t->stride, t->width, total, PyArray_DATA(arrays[i]), kinds[i],
                      PyArray_ITEMSIZE(arrays[i]));
        }
    }

    /* The ids last: the one step that allocates. */
    Py_ssize_t before = PyList_GET_SIZE(self->ids);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyList_Append(self->ids, PyTuple_GET_ITEM(PyList_GET_ITEM(metas, i), 0)) < 0) {
            PyList_SetSlice(self->ids, before, PY_SSIZE_T_MAX, NULL);
            return NULL;
        }
    }
    self->rows += total;
    self->mismatched += mismatched;
    self->n_requests += n;
    self->n_runs += 1;
    return PyLong_FromSsize_t(total);
}

static PyObject *Writer_clear(Writer *self, PyObject *Py_UNUSED(ignored)) {
    self->rows = self->n_requests = self->n_runs = self->mismatched = 0;
    Py_RETURN_NONE;
}

/* restore(rows, requests, runs): the counts of a set another process filled (the arrays
 * already hold its values). Checked, since `write` indexes past them without bounds checks. */
static PyObject *Writer_restore(Writer *self, PyObject *args) {
    Py_ssize_t rows, requests, runs;
    if (!PyArg_ParseTuple(args, "nnn", &rows, &requests, &runs)) return NULL;
    Py_ssize_t cap = self->capacity;
    if (rows < 0 || rows > cap || requests < 0 || requests > cap || runs < 0 || runs > cap) {
        PyErr_Format(PyExc_ValueError, "counts (%zd, %zd, %zd) outside a set of %zd rows", rows,
                     requests, runs, cap);
        return NULL;
    }
    self->rows = rows;
    self->n_requests = requests;
    self->n_runs = runs;
    self->mismatched = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Writer_write, METH_FASTCALL,
     "write(feeds, outputs, derived, metas, rows, enqueued_ns, started_ns, done_ns, ts) -> "
     "the rows written, FULL or UNSUPPORTED"},
    {"clear", (PyCFunction)Writer_clear, METH_NOARGS, "clear(): nothing written (the ids' list "
     "is the caller's to clear)"},
    {"restore", (PyCFunction)Writer_restore, METH_VARARGS,
     "restore(rows, requests, runs): the counts of a set filled elsewhere"},
    {NULL, NULL, 0, NULL},
};

/* Read-only: `write` trusts them as indices, so only `clear` and `restore` set them. */
static PyMemberDef Writer_members[] = {
    {"rows", T_PYSSIZET, offsetof(Writer, rows), READONLY, "rows written"},
    {"requests", T_PYSSIZET, offsetof(Writer, n_requests), READONLY, "requests written"},
    {"runs", T_PYSSIZET, offsetof(Writer, n_runs), READONLY, "runs written"},
    {"mismatched", T_PYSSIZET, offsetof(Writer, mismatched), READONLY,
     "rows written as NaN for a tensor that did not fill its columns"},
    {"capacity", T_PYSSIZET, offsetof(Writer, capacity), READONLY, "rows a set holds"},
    {"ids", T_OBJECT, offsetof(Writer, ids), READONLY, "the requests' ids"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lockgate.monitor._ringwrite.Writer",
    .tp_doc = PyDoc_STR("Writes model runs into one set of ring columns (see the module)."),
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_members = Writer_members,
};

/* The layout the callers share, exported so that Python reads it from here alone. */
static const struct {
    const char *name;
    int value;
} CONSTANTS[] = {
    {"FULL", FULL}, {"UNSUPPORTED", UNSUPPORTED},
    {"FROM_INPUTS", FROM_INPUTS}, {"FROM_OUTPUTS", FROM_OUTPUTS}, {"FROM_DERIVED", FROM_DERIVED},
    {"ROUTE", ROUTE}, {"CLIENT", CLIENT}, {"RECEIVED_NS", RECEIVED}, {"ENQUEUED_NS", ENQUEUED},
    {"REQUEST_ROWS", ROWS}, {"REQUEST_FIELDS", REQUEST_FIELDS},
    {"STARTED_NS", STARTED}, {"DONE_NS", DONE}, {"RUN_REQUESTS", RUN_REQUESTS},
    {"RUN_FIELDS", RUN_FIELDS},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lockgate.monitor._ringwrite",
    .m_doc = PyDoc_STR("The ring's writer: one C call per model run (see ring.py)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__ringwrite(void) {
    import_array();
    if (PyType_Ready(&WriterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) goto fail;
    for (size_t i = 0; i < sizeof(CONSTANTS) / sizeof(CONSTANTS[0]); i++)
        if (PyModule_AddIntConstant(m, CONSTANTS[i].name, CONSTANTS[i].value) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
