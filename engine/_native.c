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

/* The queue functions take raw addresses inside a shared-memory segment that the
 * caller (engine.queues) has mapped and keeps mapped: resolving a buffer object on
 * every call cost more than the work itself. They use METH_FASTCALL for the same reason. */
static int address_arg(PyObject *arg, uint64_t **out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    if (value == 0 || value % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "address must be a non-zero multiple of 8");
        return 0;
    }
    *out = (uint64_t *)(uintptr_t)value;
    return 1;
}

static int u64_arg(PyObject *arg, uint64_t *out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    *out = value;
    return 1;
}

static int check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *name) {
    if (nargs == want) return 1;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, want, nargs);
    return 0;
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

/* load_acquire(address) -> u64 */
static PyObject *py_load_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *word;
    if (!check_nargs(nargs, 1, "load_acquire") || !address_arg(args[0], &word)) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(word, __ATOMIC_ACQUIRE));
}

/* store_release(address, value) */
static PyObject *py_store_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *word, value;
    if (!check_nargs(nargs, 2, "store_release") || !address_arg(args[0], &word) || !u64_arg(args[1], &value))
        return NULL;
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* fetch_add(address, value) -> previous u64 */
static PyObject *py_fetch_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *word, value;
    if (!check_nargs(nargs, 2, "fetch_add") || !address_arg(args[0], &word) || !u64_arg(args[1], &value))
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add(word, value, __ATOMIC_ACQ_REL));
}

/* seqlock_write(slot_address, lap, payload: bytes) -> False if a later lap owns the slot */
static PyObject *py_seqlock_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *version, lap;
    if (!check_nargs(nargs, 3, "seqlock_write") || !address_arg(args[0], &version) || !u64_arg(args[1], &lap))
        return NULL;
    if (!PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "payload must be bytes");
        return NULL;
    }
    uint64_t writing = 2 * lap + 1;
    uint64_t current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
    for (;;) {
        if (current >= writing) Py_RETURN_FALSE;          /* lapped: a newer message owns it */
        if (current & 1) {                                /* another producer mid-write (wrap) */
            current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
            continue;
        }
        if (__atomic_compare_exchange_n(version, &current, writing, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(version + 1, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]));
    __atomic_store_n(version, writing + 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

/* seqlock_read(slot_address, expected_version, size) -> bytes, or READ_NOT_READY / READ_SPED_PAST */
static PyObject *py_seqlock_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *version, expected, size;
    if (!check_nargs(nargs, 3, "seqlock_read") || !address_arg(args[0], &version) ||
        !u64_arg(args[1], &expected) || !u64_arg(args[2], &size))
        return NULL;
    uint64_t seen = __atomic_load_n(version, __ATOMIC_ACQUIRE);
    if (seen < expected) return PyLong_FromLong(READ_NOT_READY);
    if (seen > expected) return PyLong_FromLong(READ_SPED_PAST);
    PyObject *copy = PyBytes_FromStringAndSize((const char *)(version + 1), (Py_ssize_t)size);
    if (!copy) return NULL;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(version, __ATOMIC_RELAXED) != seen) {  /* overwritten while copying: torn */
        Py_DECREF(copy);
        return PyLong_FromLong(READ_SPED_PAST);
    }
    return copy;
}

static PyMethodDef methods[] = {
    {"rdtscp", py_rdtscp, METH_NOARGS, "Time-stamp counter (rdtscp); CLOCK_MONOTONIC_RAW ns off x86-64."},
    {"paired_sample", py_paired_sample, METH_NOARGS,
     "(tsc_before, CLOCK_REALTIME ns, tsc_after): one bracketed calibration sample."},
    {"load_acquire", (PyCFunction)(void (*)(void))py_load_acquire, METH_FASTCALL, "load_acquire(address) -> u64"},
    {"store_release", (PyCFunction)(void (*)(void))py_store_release, METH_FASTCALL, "store_release(address, value)"},
    {"fetch_add", (PyCFunction)(void (*)(void))py_fetch_add, METH_FASTCALL,
     "fetch_add(address, value) -> previous u64"},
    {"seqlock_write", (PyCFunction)(void (*)(void))py_seqlock_write, METH_FASTCALL,
     "seqlock_write(slot_address, lap, payload) -> False if lapped"},
    {"seqlock_read", (PyCFunction)(void (*)(void))py_seqlock_read, METH_FASTCALL,
     "seqlock_read(slot_address, expected_version, size) -> bytes, or a status int"},
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
