/*
 * engine._native: the few things Python cannot do fast or at all.
 *
 *  - rdtscp() and a bracketed (tsc, CLOCK_REALTIME, tsc) sample for calibration.
 *  - 64-bit atomics on shared memory: load-acquire, store-release, fetch-add (MPMC head).
 *  - Seqlock slot write and read. Done in C because the hot path publishes and polls
 *    one message per call: a Python-level numpy copy plus version stores costs
 *    microseconds per message, this costs well under one.
 *  - RingWriter / RingReader: a whole publish and a whole poll (version check, copy,
 *    re-check, sped-past recovery) in one C call each; engine.queues' Producer and
 *    Consumer subclass them. RingReader.wait_bytes spins in C for the next message.
 *  - SeqlockVector write and read (retrying until a whole value is copied), one call each.
 *  - The latency floor probe: store_tsc, spin_until_changed, spin_ticks.
 *  - recv_spin: polls the feeds until one has datagrams, then every datagram waiting on it, with
 *    its kernel RX stamp, in one recvmmsg call (Linux); socket.recvmsg plus parsing its
 *    ancillary data in Python costs more per datagram than the whole market-data update.
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
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <errno.h>
#include <sys/socket.h>
#endif

#include "_tsc.h"

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

/* Write one message into its slot (version = 2*lap+1 while writing, 2*lap+2 after).
 * Returns 0 without writing if a later lap already owns the slot (MPMC wrap). */
static int slot_write(uint64_t *version, uint64_t lap, const char *data, size_t size) {
    uint64_t writing = 2 * lap + 1;
    uint64_t current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
    for (;;) {
        if (current >= writing) return 0;                 /* lapped: a newer message owns it */
        if (current & 1) {                                /* another producer mid-write (wrap) */
            current = __atomic_load_n(version, __ATOMIC_ACQUIRE);
            continue;
        }
        if (__atomic_compare_exchange_n(version, &current, writing, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(version + 1, data, size);
    __atomic_store_n(version, writing + 1, __ATOMIC_RELEASE);
    return 1;
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
    if (slot_write(version, lap, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]))) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
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

/* vector_write(slot_address, payload: bytes): the next value of a SeqlockVector key (one writer per key) */
static PyObject *py_vector_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *version;
    if (!check_nargs(nargs, 2, "vector_write") || !address_arg(args[0], &version)) return NULL;
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "payload must be bytes");
        return NULL;
    }
    slot_write(version, __atomic_load_n(version, __ATOMIC_ACQUIRE) / 2, PyBytes_AS_STRING(args[1]),
               (size_t)PyBytes_GET_SIZE(args[1]));
    Py_RETURN_NONE;
}

/* vector_read(slot_address, size) -> (writes so far, bytes) of the latest whole value, or None if never written */
static PyObject *py_vector_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *version, size;
    if (!check_nargs(nargs, 2, "vector_read") || !address_arg(args[0], &version) || !u64_arg(args[1], &size))
        return NULL;
    for (;;) {
        uint64_t seen = __atomic_load_n(version, __ATOMIC_ACQUIRE);
        if (seen == 0) Py_RETURN_NONE;
        if (seen & 1) {                                   /* being written */
            cpu_relax();
            continue;
        }
        PyObject *copy = PyBytes_FromStringAndSize((const char *)(version + 1), (Py_ssize_t)size);
        if (!copy) return NULL;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(version, __ATOMIC_RELAXED) == seen)
            return Py_BuildValue("(KN)", (unsigned long long)(seen / 2), copy);
        Py_DECREF(copy);                                  /* overwritten while copying: again */
    }
}

/* -- latency floor probe ---------------------------------------------------------------- */

/* store_tsc(address) -> the TSC count it stored (release) at address */
static PyObject *py_store_tsc(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *word;
    if (!check_nargs(nargs, 1, "store_tsc") || !address_arg(args[0], &word)) return NULL;
    uint64_t now = tsc_now();
    __atomic_store_n(word, now, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(now);
}

/* spin_until_changed(address, old, spins) -> (new value, TSC when seen), or None after spins looks */
static PyObject *py_spin_until_changed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t *word, old, spins;
    if (!check_nargs(nargs, 3, "spin_until_changed") || !address_arg(args[0], &word) || !u64_arg(args[1], &old) ||
        !u64_arg(args[2], &spins))
        return NULL;
    for (; spins; spins--) {
        uint64_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (seen != old) {
            uint64_t now = tsc_now();
            return Py_BuildValue("(KK)", (unsigned long long)seen, (unsigned long long)now);
        }
        cpu_relax();
    }
    Py_RETURN_NONE;
}

/* spin_ticks(ticks): busy-wait until the TSC has advanced by ticks. Keeps the core (and its
 * caches) busy, unlike a sleep; releases the GIL so the caller's other threads can run. */
static PyObject *py_spin_ticks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t ticks;
    if (!check_nargs(nargs, 1, "spin_ticks") || !u64_arg(args[0], &ticks)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    uint64_t until = tsc_now() + ticks;
    while (tsc_now() < until) cpu_relax();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

#if defined(__linux__)
/* -- recv_spin: datagrams with kernel RX stamps (SO_TIMESTAMPING), one syscall per batch -- */

#define RECV_BATCH_MAX 64
#define RECV_DATAGRAM_MAX 65536
/* One buffer per batch slot, allocated on first use, used while holding the GIL. Making the
 * result's objects can run Python code (a collection's finalizers) that calls recv_spin again:
 * recv_busy refuses that instead of overwriting payloads not yet copied. */
static char *recv_buffers;
static int recv_busy;

typedef union {                       /* room for SCM_TIMESTAMPING (three timespecs) and a spare */
    struct cmsghdr align;
    char bytes[CMSG_SPACE(3 * sizeof(struct timespec)) + CMSG_SPACE(64)];
} stamp_control;

static PyObject *rx_stamp(struct msghdr *msg) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING
                && c->cmsg_len >= CMSG_LEN(3 * sizeof(struct timespec))) {
            struct timespec software;               /* ts[0]: the software stamp */
            memcpy(&software, CMSG_DATA(c), sizeof software);
            return PyLong_FromLongLong((long long)software.tv_sec * 1000000000LL + software.tv_nsec);
        }
    }
    return PyLong_FromLong(0);
}

/* Reads the given fd into the batch buffers: recvmmsg's count, 0 if nothing waits, -1 with OSError set. */
static int recv_into(int fd, long want, struct mmsghdr *msgs, struct iovec *iov, stamp_control *control) {
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)want);
    for (long i = 0; i < want; i++) {
        iov[i].iov_base = recv_buffers + (size_t)i * RECV_DATAGRAM_MAX;
        iov[i].iov_len = RECV_DATAGRAM_MAX;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i].bytes;
        msgs[i].msg_hdr.msg_controllen = sizeof control[i].bytes;
    }
    int got = recvmmsg(fd, msgs, (unsigned int)want, MSG_DONTWAIT, NULL);
    if (got >= 0) return got;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* [(payload, kernel RX ns)] from the batch buffers. */
static PyObject *batch_list(int got, struct mmsghdr *msgs, struct iovec *iov) {
    recv_busy = 1;
    PyObject *out = PyList_New(got);
    for (int i = 0; out != NULL && i < got; i++) {
        PyObject *payload = PyBytes_FromStringAndSize(iov[i].iov_base, msgs[i].msg_len);
        PyObject *stamp = payload ? rx_stamp(&msgs[i].msg_hdr) : NULL;
        PyObject *pair = stamp ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(payload);
            Py_XDECREF(stamp);
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(pair, 0, payload);
        PyTuple_SET_ITEM(pair, 1, stamp);
        PyList_SET_ITEM(out, i, pair);
    }
    recv_busy = 0;
    return out;
}

static int batch_ready(long want) {
    if (want < 1 || want > RECV_BATCH_MAX) {
        PyErr_Format(PyExc_ValueError, "recv_spin: need 1 <= max_count <= %d", RECV_BATCH_MAX);
        return 0;
    }
    if (recv_busy) {
        PyErr_SetString(PyExc_RuntimeError, "recv_spin: called again while making its result");
        return 0;
    }
    if (recv_buffers == NULL && (recv_buffers = PyMem_RawMalloc((size_t)RECV_BATCH_MAX * RECV_DATAGRAM_MAX)) == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    return 1;
}

#define SPIN_FDS_MAX 64
/* recv_spin(fds, max_count, spin_ticks) -> (index into fds, [(payload, kernel RX ns)]), or None
 * when nothing came for spin_ticks TSC ticks (0: one look at each fd). The stamp is 0 when the
 * kernel gave none; errors other than "nothing waiting" raise OSError. recvmmsg on each fd in turn, in C: a Python loop
 * between the polls adds microseconds to the datagram's wait and evicts the hot path's caches. */
static PyObject *py_recv_spin(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (!check_nargs(nargs, 3, "recv_spin")) return NULL;
    PyObject *seq = PySequence_Fast(args[0], "recv_spin: fds must be a sequence of ints");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    int fds[SPIN_FDS_MAX];
    if (count < 1 || count > SPIN_FDS_MAX) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "recv_spin: need 1 to %d fds, got %zd", SPIN_FDS_MAX, count);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (fd < 0 || fd > INT_MAX) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "recv_spin: bad fd %ld", fd);
            return NULL;
        }
        fds[i] = (int)fd;
    }
    Py_DECREF(seq);
    long want = PyLong_AsLong(args[1]);
    if (want == -1 && PyErr_Occurred()) return NULL;
    uint64_t ticks;
    if (!u64_arg(args[2], &ticks) || !batch_ready(want)) return NULL;
    struct mmsghdr msgs[RECV_BATCH_MAX];
    struct iovec iov[RECV_BATCH_MAX];
    stamp_control control[RECV_BATCH_MAX];
    uint64_t start = tsc_now();
    do {
        for (Py_ssize_t i = 0; i < count; i++) {
            int got = recv_into(fds[i], want, msgs, iov, control);
            if (got < 0) return NULL;
            if (got > 0) {
                PyObject *batch = batch_list(got, msgs, iov);
                return batch ? Py_BuildValue("(nN)", i, batch) : NULL;
            }
        }
    } while (tsc_now() - start < ticks);
    Py_RETURN_NONE;
}
#endif

/* -- RingWriter and RingReader: one queue's geometry plus a producer's or consumer's state -- */

typedef struct {
    uint64_t *head;           /* next sequence number to claim */
    char *slots;
    uint64_t mask, stride, payload_size;
    int lap_shift;            /* log2(capacity) */
} Ring;

static int ring_init(Ring *ring, unsigned long long head, unsigned long long slots, unsigned long long capacity,
                     unsigned long long stride, unsigned long long payload_size) {
    if (!head || head % 8 || !slots || slots % 8 || !capacity || capacity & (capacity - 1) || stride % 8 ||
        stride < payload_size + 8) {
        PyErr_SetString(PyExc_ValueError, "bad ring geometry");
        return -1;
    }
    ring->head = (uint64_t *)(uintptr_t)head;
    ring->slots = (char *)(uintptr_t)slots;
    ring->mask = capacity - 1;
    ring->stride = stride;
    ring->payload_size = payload_size;
    ring->lap_shift = __builtin_ctzll(capacity);
    return 0;
}

static inline uint64_t *ring_slot(const Ring *ring, uint64_t seq) {
    return (uint64_t *)(ring->slots + (seq & ring->mask) * ring->stride);
}

typedef struct {
    PyObject_HEAD
    Ring ring;
    unsigned long long seq;       /* SPMC: the next sequence number */
    unsigned long long lapped;    /* MPMC: messages dropped because a later lap took the slot */
    char shared;                  /* MPMC: claim sequence numbers with fetch-add on the head */
} RingWriter;

static int writer_init(RingWriter *w, PyObject *args, PyObject *kwds) {
    unsigned long long head, slots, capacity, stride, payload_size, seq;
    int shared;
    if (!PyArg_ParseTuple(args, "KKKKKpK:RingWriter", &head, &slots, &capacity, &stride, &payload_size, &shared,
                          &seq))
        return -1;
    w->shared = (char)shared;
    w->seq = seq;
    w->lapped = 0;
    return ring_init(&w->ring, head, slots, capacity, stride, payload_size);
}

/* One message into the next slot: its sequence number, or NULL (ValueError) if the size is wrong. */
static PyObject *writer_put(RingWriter *w, const char *data, Py_ssize_t size) {
    Ring *ring = &w->ring;
    if ((uint64_t)size != ring->payload_size)
        return PyErr_Format(PyExc_ValueError, "message is %zd bytes; the queue's dtype is %llu", size,
                            (unsigned long long)ring->payload_size);
    uint64_t seq = w->shared ? __atomic_fetch_add(ring->head, 1, __ATOMIC_ACQ_REL) : w->seq++;
    if (!slot_write(ring_slot(ring, seq), seq >> ring->lap_shift, data, ring->payload_size)) w->lapped++;
    if (!w->shared) __atomic_store_n(ring->head, w->seq, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(seq);
}

/* publish(payload) -> sequence number. Bytes go straight in; anything else is first
 * converted by the subclass's _as_bytes(payload). */
static PyObject *writer_publish(RingWriter *w, PyObject *payload) {
    PyObject *converted = NULL;
    if (!PyBytes_CheckExact(payload)) {
        converted = PyObject_CallMethod((PyObject *)w, "_as_bytes", "O", payload);
        if (!converted) return NULL;
        if (!PyBytes_Check(converted)) {
            Py_DECREF(converted);
            PyErr_SetString(PyExc_TypeError, "_as_bytes must return bytes");
            return NULL;
        }
        payload = converted;
    }
    PyObject *seq = writer_put(w, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload));
    Py_XDECREF(converted);
    return seq;
}

/* publish_words(*words) -> sequence number: a message of unsigned 64-bit words, written
 * straight into the slot. The timing queue's records take this path: no bytes object. */
static PyObject *writer_publish_words(RingWriter *w, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t words[8];
    if (nargs > 8) return PyErr_Format(PyExc_TypeError, "publish_words takes at most 8 words (%zd given)", nargs);
    for (Py_ssize_t k = 0; k < nargs; k++)
        if (!u64_arg(args[k], &words[k])) return NULL;
    return writer_put(w, (const char *)words, nargs * (Py_ssize_t)sizeof(uint64_t));
}

static PyMethodDef writer_methods[] = {
    {"publish", (PyCFunction)writer_publish, METH_O,
     "publish(payload) -> sequence number; bytes of the payload size, or whatever _as_bytes converts"},
    {"publish_words", (PyCFunction)(void (*)(void))writer_publish_words, METH_FASTCALL,
     "publish_words(*words) -> sequence number; a message of unsigned 64-bit little-endian words"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef writer_members[] = {
    {"seq", T_ULONGLONG, offsetof(RingWriter, seq), 0, "SPMC: the next sequence number"},
    {"lapped", T_ULONGLONG, offsetof(RingWriter, lapped), 0, "MPMC: messages dropped, their slot taken by a later lap"},
    {"shared", T_BOOL, offsetof(RingWriter, shared), READONLY, "MPMC producer"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RingWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._native.RingWriter",
    .tp_doc = "RingWriter(head_address, slots_address, capacity, stride, payload_size, shared, seq)",
    .tp_basicsize = sizeof(RingWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_methods = writer_methods,
    .tp_members = writer_members,
};

typedef struct {
    PyObject_HEAD
    Ring ring;
    unsigned long long seq;       /* the next message to read */
    unsigned long long missed;    /* messages skipped after being sped past */
} RingReader;

static int reader_init(RingReader *r, PyObject *args, PyObject *kwds) {
    unsigned long long head, slots, capacity, stride, payload_size, seq;
    if (!PyArg_ParseTuple(args, "KKKKKK:RingReader", &head, &slots, &capacity, &stride, &payload_size, &seq))
        return -1;
    r->seq = seq;
    r->missed = 0;
    return ring_init(&r->ring, head, slots, capacity, stride, payload_size);
}

static inline uint64_t expected_version(const RingReader *r) {
    return 2 * (r->seq >> r->ring.lap_shift) + 2;
}

/* Sped past: jump to the oldest message that is still in the ring. */
static void reader_recover(RingReader *r) {
    uint64_t head = __atomic_load_n(r->ring.head, __ATOMIC_ACQUIRE);
    uint64_t capacity = r->ring.mask + 1;
    uint64_t oldest = r->seq + 1;
    if (head + 1 > capacity && head + 1 - capacity > oldest) oldest = head + 1 - capacity;
    r->missed += oldest - r->seq;
    r->seq = oldest;
}

/* One look at the next slot: its bytes (seq advanced), or NULL with *status READ_NOT_READY,
 * READ_SPED_PAST (recovered; also for a copy torn by an overwrite) or -1 (exception). */
static PyObject *reader_take(RingReader *r, int *status) {
    uint64_t *version = ring_slot(&r->ring, r->seq);
    uint64_t expected = expected_version(r);
    uint64_t seen = __atomic_load_n(version, __ATOMIC_ACQUIRE);
    if (seen < expected) {
        *status = READ_NOT_READY;
        return NULL;
    }
    if (seen == expected) {
        PyObject *copy = PyBytes_FromStringAndSize((const char *)(version + 1), (Py_ssize_t)r->ring.payload_size);
        if (!copy) {
            *status = -1;
            return NULL;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(version, __ATOMIC_RELAXED) == seen) {
            r->seq++;
            *status = READ_OK;
            return copy;
        }
        Py_DECREF(copy);
    }
    reader_recover(r);
    *status = READ_SPED_PAST;
    return NULL;
}

/* poll_bytes() -> the next message's bytes, or None when there is none yet */
static PyObject *reader_poll_bytes(RingReader *r, PyObject *noargs) {
    int status;
    PyObject *got = reader_take(r, &status);
    if (got || status < 0) return got;
    Py_RETURN_NONE;
}

/* wait_bytes(spins) -> the next message's bytes, or None after spins looks. Spins in C
 * holding the GIL: for a consumer that owns a core. */
static PyObject *reader_wait_bytes(RingReader *r, PyObject *arg) {
    uint64_t spins;
    if (!u64_arg(arg, &spins)) return NULL;
    for (;;) {
        uint64_t *version = ring_slot(&r->ring, r->seq);
        uint64_t expected = expected_version(r);
        while (__atomic_load_n(version, __ATOMIC_ACQUIRE) < expected) {
            if (spins == 0) Py_RETURN_NONE;
            spins--;
            cpu_relax();
        }
        int status;
        PyObject *got = reader_take(r, &status);
        if (got || status < 0) return got;
        if (spins == 0) Py_RETURN_NONE;                  /* sped past, recovered: keep waiting */
        spins--;
    }
}

static PyMethodDef reader_methods[] = {
    {"poll_bytes", (PyCFunction)reader_poll_bytes, METH_NOARGS,
     "poll_bytes() -> the next message's bytes, or None when there is none yet"},
    {"wait_bytes", (PyCFunction)reader_wait_bytes, METH_O,
     "wait_bytes(spins) -> the next message's bytes, or None after spins looks (spins in C)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef reader_members[] = {
    {"seq", T_ULONGLONG, offsetof(RingReader, seq), 0, "the next message to read"},
    {"missed", T_ULONGLONG, offsetof(RingReader, missed), 0, "messages skipped after being sped past"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RingReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._native.RingReader",
    .tp_doc = "RingReader(head_address, slots_address, capacity, stride, payload_size, seq)",
    .tp_basicsize = sizeof(RingReader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_methods = reader_methods,
    .tp_members = reader_members,
};

/* walk_mold(data, offsets, lengths, header, packet, seq, at, length) -> (written, heartbeats, ends, short, past,
 *                                                                       zero, trailing)
 *
 * Every message block of many MoldUDP64 packets, packet p being data[offsets[p] : offsets[p] + lengths[p]].
 * header = (size, session bytes, sequence offset, count offset, heartbeat count, end-of-session count), from the
 * header's Layout. A packet shorter than the header, or whose session is not printable ASCII, is not MoldUDP64
 * and counts nothing. Walking a packet is sequential by nature (each length says where the next block starts);
 * in numpy the headers alone (two gathers and a check of the session) cost twice this whole loop. With walk_soup,
 * measure() on a 2.1M-packet ITCH + OUCH synth capture went from 2.3M to 4.0M packets/s (best of 5, 2026-12-08,
 * the same outputs).
 * Every length is checked against the packet's end before it is trusted. Fills, per non-empty block, its packet,
 * its sequence number (the header's + its index), where its bytes start and how many; stops filling at the
 * outputs' size. Counts heartbeats, end-of-session packets, a count beyond the blocks present (short), a length
 * past the packet (past, which ends that packet), zero-length blocks, and packets with bytes after their last
 * block (trailing). */
static PyObject *py_walk_mold(PyObject *self, PyObject *args) {
    Py_buffer view[7];
    Py_ssize_t size, session, seq_at, count_at, heartbeat, end_of_session;
    if (!PyArg_ParseTuple(args, "y*y*y*(nnnnnn)w*w*w*w*:walk_mold", &view[0], &view[1], &view[2], &size, &session,
                          &seq_at, &count_at, &heartbeat, &end_of_session, &view[3], &view[4], &view[5], &view[6]))
        return NULL;
    PyObject *result = NULL;
    const uint8_t *data = view[0].buf;
    const int64_t *offsets = view[1].buf, *lengths = view[2].buf;
    int64_t *out_packet = view[3].buf, *out_seq = view[4].buf, *out_at = view[5].buf, *out_length = view[6].buf;
    Py_ssize_t packets = view[1].len / 8, room = view[3].len / 8;
    if (view[2].len / 8 != packets || view[4].len / 8 < room || view[5].len / 8 < room || view[6].len / 8 < room) {
        PyErr_SetString(PyExc_ValueError, "walk_mold: the arrays' lengths disagree");
        goto done;
    }
    if (size < 1 || session > size || seq_at + 8 > size || count_at + 2 > size) {
        PyErr_SetString(PyExc_ValueError, "walk_mold: the header's fields lie outside it");
        goto done;
    }
    Py_ssize_t written = 0, heartbeats = 0, ends = 0, shortfall = 0, past = 0, zero = 0, trailing = 0;
    for (Py_ssize_t p = 0; p < packets; p++) {
        int64_t at = offsets[p], end = at + lengths[p];
        if (at < 0 || lengths[p] < 0 || end > view[0].len) {
            PyErr_SetString(PyExc_ValueError, "walk_mold: a packet outside the data");
            goto done;
        }
        if (end - at < size) continue;
        const uint8_t *header = data + at;
        int printable = 1;
        for (Py_ssize_t i = 0; i < session; i++) printable &= header[i] >= 0x20 && header[i] < 0x7F;
        if (!printable) continue;
        int64_t count = (int64_t)header[count_at] << 8 | header[count_at + 1];
        if (count == heartbeat || count == end_of_session) {      /* no messages: any byte after the header */
            if (count == heartbeat) heartbeats++; else ends++;
            if (end - at > size) trailing++;
            continue;
        }
        uint64_t first = 0;
        for (int i = 0; i < 8; i++) first = first << 8 | header[seq_at + i];
        at += size;
        int64_t k = 0;
        for (; k < count; k++) {
            if (end - at < 2) { shortfall++; break; }
            int64_t length = (int64_t)data[at] << 8 | data[at + 1];
            if (at + 2 + length > end) { past++; at = end; break; }
            if (length == 0) zero++;
            else if (written < room) {
                out_packet[written] = p; out_seq[written] = (int64_t)(first + (uint64_t)k);
                out_at[written] = at + 2; out_length[written] = length;
                written++;
            }
            at += 2 + length;
        }
        if (at < end) trailing++;
    }
    result = Py_BuildValue("(nnnnnnn)", written, heartbeats, ends, shortfall, past, zero, trailing);
done:
    for (int i = 0; i < 7; i++) PyBuffer_Release(&view[i]);
    return result;
}

/* walk_soup(stream, start, types, max_length, offset, length) -> (written, consumed, incomplete)
 *
 * The SoupBinTCP packets of a byte stream from `start`: each a u16 big-endian length (of the type and the
 * payload, 1 to max_length) and a type byte whose entry in the 256-byte table `types` is non-zero. Stops at
 * the first header that is neither (consumed says where), or at a packet that runs past the stream's end
 * (incomplete). In numpy every byte was a candidate header, chained by searchsorted; the loop reads each
 * packet's header only (speed: see walk_mold). */
static PyObject *py_walk_soup(PyObject *self, PyObject *args) {
    Py_buffer stream, types, offset, length;
    Py_ssize_t start, max_length;
    if (!PyArg_ParseTuple(args, "y*ny*nw*w*:walk_soup", &stream, &start, &types, &max_length, &offset, &length))
        return NULL;
    PyObject *result = NULL;
    const uint8_t *data = stream.buf, *valid = types.buf;
    int64_t *out_offset = offset.buf, *out_length = length.buf;
    Py_ssize_t size = stream.len, room = offset.len / 8, written = 0;
    if (types.len != 256 || length.len / 8 < room || start < 0 || start > size) {
        PyErr_SetString(PyExc_ValueError, "walk_soup: a 256-byte type table and a start inside the stream");
        goto done;
    }
    Py_ssize_t at = start;
    int incomplete = 0;
    while (size - at >= 3 && written < room) {
        Py_ssize_t bytes = (Py_ssize_t)data[at] << 8 | data[at + 1];
        if (!valid[data[at + 2]] || bytes < 1 || bytes > max_length) break;
        if (bytes > size - at - 2) { incomplete = 1; break; }
        out_offset[written] = at; out_length[written] = 2 + bytes;
        written++;
        at += 2 + bytes;
    }
    result = Py_BuildValue("(nnO)", written, at, incomplete ? Py_True : Py_False);
done:
    PyBuffer_Release(&stream); PyBuffer_Release(&types); PyBuffer_Release(&offset); PyBuffer_Release(&length);
    return result;
}

static PyMethodDef methods[] = {
    {"walk_soup", py_walk_soup, METH_VARARGS,
     "walk_soup(stream, start, types, max_length, offset, length) -> (written, consumed, incomplete)"},
    {"walk_mold", py_walk_mold, METH_VARARGS,
     "walk_mold(data, offsets, lengths, header, packet, seq, at, length) -> (written, heartbeats, ends, short, past, "
     "zero, trailing)"},
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
    {"vector_write", (PyCFunction)(void (*)(void))py_vector_write, METH_FASTCALL,
     "vector_write(slot_address, payload): the next value of a SeqlockVector key"},
    {"vector_read", (PyCFunction)(void (*)(void))py_vector_read, METH_FASTCALL,
     "vector_read(slot_address, size) -> (writes so far, bytes), or None if never written"},
    {"store_tsc", (PyCFunction)(void (*)(void))py_store_tsc, METH_FASTCALL,
     "store_tsc(address) -> the TSC count it stored at address"},
    {"spin_until_changed", (PyCFunction)(void (*)(void))py_spin_until_changed, METH_FASTCALL,
     "spin_until_changed(address, old, spins) -> (new value, TSC when seen), or None"},
    {"spin_ticks", (PyCFunction)(void (*)(void))py_spin_ticks, METH_FASTCALL,
     "spin_ticks(ticks): busy-wait, without the GIL, until the TSC has advanced by ticks"},
#if defined(__linux__)
    {"recv_spin", (PyCFunction)(void (*)(void))py_recv_spin, METH_FASTCALL,
     "recv_spin(fds, max_count, spin_ticks) -> (fd index, [(payload, kernel RX ns or 0)]) or None: "
     "recvmmsg on each fd in turn until one has datagrams or spin_ticks have passed"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&RingWriterType) < 0 || PyType_Ready(&RingReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RingWriterType);
    Py_INCREF(&RingReaderType);
    if (PyModule_AddObject(m, "RingWriter", (PyObject *)&RingWriterType) < 0 ||
        PyModule_AddObject(m, "RingReader", (PyObject *)&RingReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "HAS_RDTSCP", WIRELAB_HAS_RDTSCP);
    PyModule_AddIntConstant(m, "READ_OK", READ_OK);
    PyModule_AddIntConstant(m, "READ_NOT_READY", READ_NOT_READY);
    PyModule_AddIntConstant(m, "READ_SPED_PAST", READ_SPED_PAST);
    return m;
}
