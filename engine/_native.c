/*
 * engine._native: the few things Python cannot do fast or at all.
 *
 *  - rdtscp() and a bracketed (tsc, CLOCK_REALTIME, tsc) sample for calibration.
 *  - 64-bit atomics on shared memory: load-acquire, store-release, fetch-add (MPMC head).
 *  - Seqlock slot write and read. Done in C because the hot path publishes and polls
 *    one message per call: a Python-level numpy copy plus version stores costs
 *    microseconds per message, this costs well under one.
 *
 * Slot layout: [u64 version][payload]. For message number s in a ring of N slots,
 * lap = s / N; a writer moves the version to 2*lap+1 while writing and to 2*lap+2 when
 * done. A reader that expects message s waits for 2*lap+2: lower means not yet
 * written, higher means it was sped past.
 *
 * Off x86-64, rdtscp falls back to CLOCK_MONOTONIC_RAW nanoseconds (HAS_RDTSCP = False).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#define WIRELAB_HAS_RDTSCP 1
static inline uint64_t tsc_now(void) {
    unsigned int aux;
    return __rdtscp(&aux);
}
#else
#define WIRELAB_HAS_RDTSCP 0
static inline uint64_t tsc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#endif

enum { READ_OK = 0, READ_NOT_READY = 1, READ_SPED_PAST = 2 };

/* A writable, 8-byte aligned u64 at `offset` inside `buffer`, or NULL with an exception set. */
static uint64_t *word_at(Py_buffer *view, Py_ssize_t offset, Py_ssize_t extra) {
    if (offset < 0 || offset % 8 != 0 || offset + 8 + extra > view->len) {
        PyErr_Format(PyExc_ValueError, "offset %zd (+%zd bytes) outside buffer of %zd bytes or unaligned",
                     offset, extra, view->len);
        return NULL;
    }
    return (uint64_t *)((char *)view->buf + offset);
}

static PyObject *py_rdtscp(PyObject *self, PyObject *noargs) {
    return PyLong_FromUnsignedLongLong(tsc_now());
}

static PyObject *py_paired_sample(PyObject *self, PyObject *noargs) {
    struct timespec ts;
    uint64_t before = tsc_now();
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t after = tsc_now();
    long long real_ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return Py_BuildValue("(KLK)", (unsigned long long)before, real_ns, (unsigned long long)after);
}

static PyObject *py_load_acquire(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*n", &view, &offset)) return NULL;
    uint64_t *word = word_at(&view, offset, 0);
    uint64_t value = word ? __atomic_load_n(word, __ATOMIC_ACQUIRE) : 0;
    PyBuffer_Release(&view);
    return word ? PyLong_FromUnsignedLongLong(value) : NULL;
}

static PyObject *py_store_release(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset;
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "w*nK", &view, &offset, &value)) return NULL;
    uint64_t *word = word_at(&view, offset, 0);
    if (word) __atomic_store_n(word, (uint64_t)value, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    if (!word) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_fetch_add(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset;
    unsigned long long value;
    if (!PyArg_ParseTuple(args, "w*nK", &view, &offset, &value)) return NULL;
    uint64_t *word = word_at(&view, offset, 0);
    uint64_t old = word ? __atomic_fetch_add(word, (uint64_t)value, __ATOMIC_ACQ_REL) : 0;
    PyBuffer_Release(&view);
    return word ? PyLong_FromUnsignedLongLong(old) : NULL;
}

/* seqlock_write(buffer, slot_offset, lap, payload) -> bool
 * False when a later lap already owns the slot (this writer was lapped; the message is dropped). */
static PyObject *py_seqlock_write(PyObject *self, PyObject *args) {
    Py_buffer view, payload;
    Py_ssize_t offset;
    unsigned long long lap;
    if (!PyArg_ParseTuple(args, "w*nKy*", &view, &offset, &lap, &payload)) return NULL;
    uint64_t *version = word_at(&view, offset, payload.len);
    int written = 0;
    if (version) {
        uint64_t writing = 2 * (uint64_t)lap + 1;
        uint64_t current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
        for (;;) {
            if (current >= writing) break;                  /* lapped: a newer message owns it */
            if (current & 1) {                              /* another producer mid-write (wrap) */
                current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
                continue;
            }
            if (__atomic_compare_exchange_n(version, &current, writing, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                __atomic_thread_fence(__ATOMIC_RELEASE);
                memcpy(version + 1, payload.buf, (size_t)payload.len);
                __atomic_store_n(version, writing + 1, __ATOMIC_RELEASE);
                written = 1;
                break;
            }
        }
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&view);
    if (!version) return NULL;
    return PyBool_FromLong(written);
}

/* seqlock_read(buffer, slot_offset, expected_version, out) -> (status, version seen) */
static PyObject *py_seqlock_read(PyObject *self, PyObject *args) {
    Py_buffer view, out;
    Py_ssize_t offset;
    unsigned long long expected;
    if (!PyArg_ParseTuple(args, "w*nKw*", &view, &offset, &expected, &out)) return NULL;
    uint64_t *version = word_at(&view, offset, out.len);
    int status = READ_NOT_READY;
    uint64_t seen = 0;
    if (version) {
        seen = __atomic_load_n(version, __ATOMIC_ACQUIRE);
        if (seen == expected) {
            memcpy(out.buf, version + 1, (size_t)out.len);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            uint64_t again = __atomic_load_n(version, __ATOMIC_RELAXED);
            status = again == seen ? READ_OK : READ_SPED_PAST;
            seen = again;
        } else if (seen > expected) {
            status = READ_SPED_PAST;
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&view);
    if (!version) return NULL;
    return Py_BuildValue("(iK)", status, (unsigned long long)seen);
}

static PyMethodDef methods[] = {
    {"rdtscp", py_rdtscp, METH_NOARGS, "Time-stamp counter (rdtscp); CLOCK_MONOTONIC_RAW ns off x86-64."},
    {"paired_sample", py_paired_sample, METH_NOARGS,
     "(tsc_before, CLOCK_REALTIME ns, tsc_after): one bracketed calibration sample."},
    {"load_acquire", py_load_acquire, METH_VARARGS, "load_acquire(buffer, offset) -> u64"},
    {"store_release", py_store_release, METH_VARARGS, "store_release(buffer, offset, value)"},
    {"fetch_add", py_fetch_add, METH_VARARGS, "fetch_add(buffer, offset, value) -> previous u64"},
    {"seqlock_write", py_seqlock_write, METH_VARARGS,
     "seqlock_write(buffer, slot_offset, lap, payload) -> False if lapped"},
    {"seqlock_read", py_seqlock_read, METH_VARARGS,
     "seqlock_read(buffer, slot_offset, expected_version, out) -> (status, version)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "HAS_RDTSCP", WIRELAB_HAS_RDTSCP);
    PyModule_AddIntConstant(m, "READ_OK", READ_OK);
    PyModule_AddIntConstant(m, "READ_NOT_READY", READ_NOT_READY);
    PyModule_AddIntConstant(m, "READ_SPED_PAST", READ_SPED_PAST);
    return m;
}
