/* One pass over a reference tensor and a candidate's for calibkit.compare.layers.LayerDrift, without the GIL.
 *
 * drift_sums(reference, candidate) -> (noise, dot, energy, max_abs_error, nonfinite) over float32 values:
 * sum((c - r)^2), sum(r * c), sum(c^2), max |c - r| and the count of candidate values that are not finite,
 * which count as 0. The differences are float32 (as NumPy's ``cand - ref``); every product and sum is
 * float64, in a fixed order, so the same inputs give the same sums.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
    double noise, dot, energy;
    float max_abs_error;
    Py_ssize_t nonfinite;
} Sums;

static void add_one(Sums *s, float r, float c) {
    if (c - c != 0.0f) { /* NaN or infinity */
        s->nonfinite++;
        c = 0.0f;
    }
    float d = c - r;
    s->noise += (double)d * d;
    s->dot += (double)r * c;
    s->energy += (double)c * c;
    float a = fabsf(d);
    s->max_abs_error = a > s->max_abs_error ? a : s->max_abs_error;
}

static void sums(const float *ref, const float *cand, Py_ssize_t n, Sums *s) {
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    if (n >= 4) {
        __m128d noise = _mm_setzero_pd(), dot = _mm_setzero_pd(), energy = _mm_setzero_pd();
        __m128 largest = _mm_setzero_ps(), zero = _mm_setzero_ps();
        __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        for (; i + 4 <= n; i += 4) {
            __m128 r = _mm_loadu_ps(ref + i), c = _mm_loadu_ps(cand + i);
            __m128 bad = _mm_cmpneq_ps(_mm_sub_ps(c, c), zero); /* NaN or infinity */
            int mask = _mm_movemask_ps(bad);
            if (mask) {
                s->nonfinite += (mask & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) + ((mask >> 3) & 1);
                c = _mm_andnot_ps(bad, c);
            }
            __m128 d = _mm_sub_ps(c, r);
            largest = _mm_max_ps(largest, _mm_and_ps(d, magnitude));
            __m128d d_lo = _mm_cvtps_pd(d), d_hi = _mm_cvtps_pd(_mm_movehl_ps(d, d));
            __m128d r_lo = _mm_cvtps_pd(r), r_hi = _mm_cvtps_pd(_mm_movehl_ps(r, r));
            __m128d c_lo = _mm_cvtps_pd(c), c_hi = _mm_cvtps_pd(_mm_movehl_ps(c, c));
            noise = _mm_add_pd(noise, _mm_add_pd(_mm_mul_pd(d_lo, d_lo), _mm_mul_pd(d_hi, d_hi)));
            dot = _mm_add_pd(dot, _mm_add_pd(_mm_mul_pd(r_lo, c_lo), _mm_mul_pd(r_hi, c_hi)));
            energy = _mm_add_pd(energy, _mm_add_pd(_mm_mul_pd(c_lo, c_lo), _mm_mul_pd(c_hi, c_hi)));
        }
        double part[2];
        float lanes[4];
        _mm_storeu_pd(part, noise);
        s->noise += part[0] + part[1];
        _mm_storeu_pd(part, dot);
        s->dot += part[0] + part[1];
        _mm_storeu_pd(part, energy);
        s->energy += part[0] + part[1];
        _mm_storeu_ps(lanes, largest);
        for (int k = 0; k < 4; k++) {
            s->max_abs_error = lanes[k] > s->max_abs_error ? lanes[k] : s->max_abs_error;
        }
    }
#endif
    for (; i < n; i++) {
        add_one(s, ref[i], cand[i]);
    }
}

static PyObject *drift_sums(PyObject *self, PyObject *args) {
    Py_buffer ref, cand;
    if (!PyArg_ParseTuple(args, "y*y*", &ref, &cand)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (ref.itemsize != 4 || cand.itemsize != 4 || ref.len != cand.len || ref.len % 4 != 0) {
        PyErr_SetString(PyExc_TypeError, "drift_sums needs two contiguous float32 arrays of one size");
    } else {
        Sums s = {0.0, 0.0, 0.0, 0.0f, 0};
        Py_BEGIN_ALLOW_THREADS
        sums((const float *)ref.buf, (const float *)cand.buf, ref.len / 4, &s);
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("dddfn", s.noise, s.dot, s.energy, s.max_abs_error, s.nonfinite);
    }
    PyBuffer_Release(&ref);
    PyBuffer_Release(&cand);
    return result;
}

static PyMethodDef methods[] = {
    {"drift_sums", drift_sums, METH_VARARGS, "(noise, dot, energy, max_abs_error, nonfinite) of two float32 arrays."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_drift", NULL, -1, methods};

PyMODINIT_FUNC PyInit__drift(void) { return PyModule_Create(&module); }
