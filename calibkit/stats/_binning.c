/* Signed-histogram binning for calibkit.stats.histogram, without the GIL.
 *
 * bin_signed(values, scale, offset, hist) adds one count per float32 value to the int64 array
 * ``hist`` at index trunc(float32(value * scale) + offset), clamped to the array, with exactly the
 * float32 arithmetic of the NumPy path (two roundings, no fused multiply-add), so both paths give
 * identical histograms. Long inputs are counted into four interleaved sub-histograms first, so
 * runs of equal values do not serialise on one counter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline Py_ssize_t bin_index(float value, float scale, float offset, Py_ssize_t last) {
    float scaled = value * scale; /* built with -ffp-contract=off: two roundings, as in NumPy */
    float shifted = scaled + offset;
    Py_ssize_t index = (Py_ssize_t)shifted;
    return index < 0 ? 0 : (index > last ? last : index);
}

static void count(const float *values, Py_ssize_t n, float scale, float offset, int64_t *hist, Py_ssize_t width) {
    Py_ssize_t last = width - 1;
    int64_t *lanes = n >= 4 * width ? calloc((size_t)(3 * width), sizeof(int64_t)) : NULL;
    if (lanes == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            hist[bin_index(values[i], scale, offset, last)]++;
        }
        return;
    }
    int64_t *h1 = lanes, *h2 = lanes + width, *h3 = lanes + 2 * width;
    Py_ssize_t quads = n & ~(Py_ssize_t)3;
    for (Py_ssize_t i = 0; i < quads; i += 4) {
        hist[bin_index(values[i], scale, offset, last)]++;
        h1[bin_index(values[i + 1], scale, offset, last)]++;
        h2[bin_index(values[i + 2], scale, offset, last)]++;
        h3[bin_index(values[i + 3], scale, offset, last)]++;
    }
    for (Py_ssize_t i = quads; i < n; i++) {
        hist[bin_index(values[i], scale, offset, last)]++;
    }
    for (Py_ssize_t k = 0; k < width; k++) {
        hist[k] += h1[k] + h2[k] + h3[k];
    }
    free(lanes);
}

static PyObject *bin_signed(PyObject *self, PyObject *args) {
    Py_buffer values, hist;
    float scale, offset;
    if (!PyArg_ParseTuple(args, "y*ffw*", &values, &scale, &offset, &hist)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (values.itemsize != 4 || values.len % 4 != 0 || hist.itemsize != 8 || hist.len % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "bin_signed needs contiguous float32 values and an int64 histogram");
    } else {
        Py_BEGIN_ALLOW_THREADS
        count((const float *)values.buf, values.len / 4, scale, offset, (int64_t *)hist.buf, hist.len / 8);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&hist);
    return result;
}

static PyMethodDef methods[] = {
    {"bin_signed", bin_signed, METH_VARARGS, "Add float32 values to a signed int64 histogram (GIL released)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_binning", NULL, -1, methods};

PyMODINIT_FUNC PyInit__binning(void) { return PyModule_Create(&module); }
