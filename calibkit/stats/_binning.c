/* Min/max and signed-histogram binning for calibkit.stats.histogram, without the GIL.
 *
 * extremes(values) returns (min, max) of float32 values in one pass, or (nan, nan) if any value is not
 * finite (the caller then filters them out).
 *
 * bin_signed(values, scale, offset, hist, low, high) adds one count per float32 value to the int64
 * array ``hist`` at index trunc(float32(value * scale) + offset), clamped to the array, with exactly the
 * float32 arithmetic of the NumPy path (two roundings, no fused multiply-add), so both paths give
 * identical histograms. ``low`` and ``high`` are the values' min and max: only the bins between theirs
 * can be hit. Long inputs have their indices computed a block at a time (a loop the compiler
 * vectorises) and are counted into four interleaved 32-bit sub-histograms over those bins, so runs of
 * equal values do not serialise on one counter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 512
#define LANES 4
/* Values per round of sub-histogram counts: no 32-bit counter can overflow within one round. */
#define ROUND ((Py_ssize_t)1 << 30)

static void find_extremes(const float *values, Py_ssize_t n, float *low, float *high) {
    float lo = values[0], hi = values[0], check = 0.0f;
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    if (n >= 8) {
        /* min/max return their second operand when the first is NaN; any NaN or infinity makes x - x a NaN */
        __m128 lo4 = _mm_set1_ps(lo), hi4 = lo4, check4 = _mm_setzero_ps();
        float part[4];
        for (; i + 4 <= n; i += 4) {
            __m128 x = _mm_loadu_ps(values + i);
            lo4 = _mm_min_ps(x, lo4);
            hi4 = _mm_max_ps(x, hi4);
            check4 = _mm_add_ps(check4, _mm_sub_ps(x, x));
        }
        _mm_storeu_ps(part, lo4);
        for (int k = 0; k < 4; k++) lo = part[k] < lo ? part[k] : lo;
        _mm_storeu_ps(part, hi4);
        for (int k = 0; k < 4; k++) hi = part[k] > hi ? part[k] : hi;
        _mm_storeu_ps(part, check4);
        check = part[0] + part[1] + part[2] + part[3];
    }
#endif
    for (; i < n; i++) {
        float x = values[i];
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        check += x - x;
    }
    if (check != 0.0f) {
        lo = hi = NAN;
    }
    *low = lo;
    *high = hi;
}

static inline Py_ssize_t bin_index(float value, float scale, float offset, Py_ssize_t last) {
    float scaled = value * scale; /* built with -ffp-contract=off: two roundings, as in NumPy */
    float shifted = scaled + offset;
    Py_ssize_t index = (Py_ssize_t)shifted;
    return index < 0 ? 0 : (index > last ? last : index);
}

/* bin_index of each value minus ``first``, for values whose bins lie in [first, last]: clamping to
 * those bins before truncating gives the same index, and keeps every write inside the sub-histograms */
static void block_indices(const float *values, int n, float scale, float offset, float first, float last,
                          int32_t *out) {
    for (int i = 0; i < n; i++) {
        float scaled = values[i] * scale;
        float shifted = scaled + offset;
        shifted = shifted < first ? first : shifted;
        shifted = shifted > last ? last : shifted;
        out[i] = (int32_t)shifted - (int32_t)first;
    }
}

static void count(const float *values, Py_ssize_t n, float scale, float offset, int64_t *hist, Py_ssize_t width,
                  float low, float high) {
    Py_ssize_t last = width - 1;
    Py_ssize_t first = bin_index(low, scale, offset, last);
    Py_ssize_t span = bin_index(high, scale, offset, last) - first + 1;
    uint32_t *lanes = n >= 4 * BLOCK && n >= 8 * span ? calloc((size_t)(LANES * span), sizeof(uint32_t)) : NULL;
    if (lanes == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            hist[bin_index(values[i], scale, offset, last)]++;
        }
        return;
    }
    int32_t index[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += ROUND) {
        Py_ssize_t stop = n - start < ROUND ? n : start + ROUND;
        for (Py_ssize_t block = start; block < stop; block += BLOCK) {
            int m = (int)(stop - block < BLOCK ? stop - block : BLOCK);
            block_indices(values + block, m, scale, offset, (float)first, (float)(first + span - 1), index);
            int quads = m & ~3;
            for (int i = 0; i < quads; i += 4) {
                lanes[index[i]]++;
                lanes[span + index[i + 1]]++;
                lanes[2 * span + index[i + 2]]++;
                lanes[3 * span + index[i + 3]]++;
            }
            for (int i = quads; i < m; i++) {
                lanes[index[i]]++;
            }
        }
        for (Py_ssize_t k = 0; k < span; k++) {
            hist[first + k] += (int64_t)lanes[k] + lanes[span + k] + lanes[2 * span + k] + lanes[3 * span + k];
        }
        memset(lanes, 0, (size_t)(LANES * span) * sizeof(uint32_t));
    }
    free(lanes);
}

static int float_buffer(Py_buffer *buffer) {
    if (buffer->itemsize != 4 || buffer->len % 4 != 0 || buffer->len == 0) {
        PyErr_SetString(PyExc_TypeError, "needs a non-empty contiguous float32 array");
        return 0;
    }
    return 1;
}

static PyObject *extremes(PyObject *self, PyObject *args) {
    Py_buffer values;
    float low = 0.0f, high = 0.0f;
    if (!PyArg_ParseTuple(args, "y*", &values)) {
        return NULL;
    }
    if (!float_buffer(&values)) {
        PyBuffer_Release(&values);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    find_extremes((const float *)values.buf, values.len / 4, &low, &high);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&values);
    return Py_BuildValue("dd", (double)low, (double)high);
}

static PyObject *bin_signed(PyObject *self, PyObject *args) {
    Py_buffer values, hist;
    float scale, offset, low, high;
    if (!PyArg_ParseTuple(args, "y*ffw*ff", &values, &scale, &offset, &hist, &low, &high)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (!float_buffer(&values)) {
        /* error set */
    } else if (hist.itemsize != 8 || hist.len % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "bin_signed needs an int64 histogram");
    } else {
        Py_BEGIN_ALLOW_THREADS
        count((const float *)values.buf, values.len / 4, scale, offset, (int64_t *)hist.buf, hist.len / 8, low,
              high);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&hist);
    return result;
}

static PyMethodDef methods[] = {
    {"extremes", extremes, METH_VARARGS, "(min, max) of float32 values, (nan, nan) if any is not finite."},
    {"bin_signed", bin_signed, METH_VARARGS, "Add float32 values to a signed int64 histogram (GIL released)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_binning", NULL, -1, methods};

PyMODINIT_FUNC PyInit__binning(void) { return PyModule_Create(&module); }
