/* lab.capture._walk: the record walk over pcap and pcapng files.
 *
 * Why C: every record's length decides where the next record starts, so the
 * walk is sequential and numpy cannot vectorise it. A Python offset walk does
 * about 2M packets/s; `lab measure` must do >= 5M packets/s end to end. This
 * module only frames records and fills column arrays that Python allocated;
 * file headers, SHB/IDB options and damage reports stay in Python
 * (lab/capture/reader.py). Every length is checked before it is used.
 *
 * Both walkers fill out[start:] and return (count, offset, stop[, block_len]):
 * count is the new number of filled rows, offset where the walk stopped, stop
 * one of the STOP_* codes below (exported to Python under the same names).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef __SIZEOF_INT128__
#error "lab.capture._walk needs 128-bit integers (gcc or clang on a 64-bit target)"
#endif

enum stop {
    STOP_END,                 /* clean end of the file */
    STOP_FULL,                /* the output arrays are full */
    STOP_SECTION,             /* pcapng SHB at offset: Python reads it */
    STOP_INTERFACE,           /* pcapng IDB at offset, framing checked: Python reads it */
    /* framing damage: nothing after offset can be framed */
    STOP_TRUNCATED_HEADER,    /* fewer bytes left than a record/block header */
    STOP_TRUNCATED_RECORD,    /* the record/block runs past the end of the file */
    STOP_CAPLEN_OVER_MAX,     /* pcap caplen > the largest for the link type */
    STOP_BAD_BLOCK_LENGTH,    /* pcapng block length < 12 or not a multiple of 4 */
    STOP_TRAILING_MISMATCH,   /* pcapng trailing block length != leading */
    /* content damage: this block is unusable, the walk resumes after it */
    STOP_BAD_PACKET_BLOCK,    /* packet block too short for its header or caplen */
    STOP_UNKNOWN_INTERFACE,   /* packet names an interface the section lacks */
    STOP_BAD_OPTIONS,         /* packet block options overrun the block */
};

/* libpcap's MAXIMUM_SNAPLEN: the largest caplen for most link types (the
 * caller passes the one for the file's link type, see max_caplen() in
 * lab/capture/formats.py). */
#define MAX_PCAP_CAPLEN 262144u

/* Order of the two length fields of a pcap record header. Files of version
 * 2.0-2.2 (and DG/UX's 543.0) have them as (len, caplen); 2.3 was written both
 * ways, so there a caplen > len means they are swapped (libpcap and Wireshark
 * read them so). */
enum pcap_lengths {
    PCAP_LENGTHS_NORMAL,
    PCAP_LENGTHS_SWAPPED,
    PCAP_LENGTHS_MAYBE_SWAPPED,
};
#define NO_TIMESTAMP INT64_MIN
#define UNUSABLE_INTERFACE 0xFFFFu
#define NS_PER_S 1000000000LL

#define PCAPNG_IDB 0x00000001u
#define PCAPNG_PB 0x00000002u
#define PCAPNG_SPB 0x00000003u
#define PCAPNG_EPB 0x00000006u
#define PCAPNG_SHB 0x0A0D0D0Au
#define OPT_FLAGS 2u /* epb_flags, and pack_flags of the obsolete PB */

/* One row per interface of the current section; same layout as
 * INTERFACE_TABLE_DTYPE in lab/capture/formats.py. */
typedef struct {
    int64_t tsoffset_s;
    uint32_t snaplen;       /* 0: no limit */
    uint16_t global_index;  /* index into Capture.interfaces, or UNUSABLE_INTERFACE */
    uint8_t pow2;           /* resolution 2^-exponent s, else 10^-exponent s */
    uint8_t exponent;
} interface_t;

_Static_assert(sizeof(interface_t) == 16, "interface_t must match INTERFACE_TABLE_DTYPE");

typedef struct {
    int64_t *offset;
    uint32_t *caplen;
    uint32_t *wire_len;
    int64_t *ts_ns;
    uint16_t *interface;
    int8_t *direction;
} columns_t;

static inline uint32_t rd32(const uint8_t *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swap ? __builtin_bswap32(v) : v;
}

/* The walk is a chain of dependent loads (each record's length says where the
 * next one starts), so it waits on memory once per cache line it crosses. The
 * records lie back to back, so the lines a fixed distance ahead are requested
 * early. */
#define PREFETCH_BYTES 2048
static inline void prefetch_ahead(const uint8_t *p, const uint8_t **ahead, const uint8_t *end)
{
    if (*ahead < p)
        *ahead = p; /* a long record took the walk past what was requested */
    while (*ahead < end && *ahead - p < PREFETCH_BYTES) {
        __builtin_prefetch(*ahead);
        *ahead += 64;
    }
}

static inline uint16_t rd16(const uint8_t *p, int swap)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return swap ? __builtin_bswap16(v) : v;
}

static const uint64_t POW10[20] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
    100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL,
    1000000000000ULL, 10000000000000ULL, 100000000000000ULL,
    1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
    1000000000000000000ULL, 10000000000000000000ULL,
};

/* Exact integer conversion of a pcapng timestamp to ns since the epoch.
 * Sub-nanosecond parts are truncated (floor); a result outside int64 gives
 * NO_TIMESTAMP. */
static inline int64_t pcapng_ts_ns(const interface_t *itf, uint64_t units)
{
    __int128 ns;
    unsigned e = itf->exponent;
    if (itf->pow2)
        ns = (__int128)(((unsigned __int128)units * NS_PER_S) >> e); /* e <= 127 */
    else if (e <= 9)
        ns = (__int128)units * (int64_t)POW10[9 - e];
    else if (e - 9 < 20)
        ns = (__int128)(units / POW10[e - 9]);
    else
        ns = 0;
    ns += (__int128)itf->tsoffset_s * NS_PER_S;
    if (ns <= (__int128)INT64_MIN || ns > (__int128)INT64_MAX)
        return NO_TIMESTAMP;
    return (int64_t)ns;
}

/* Walk pcapng options in [p, end) looking for the flags option; returns the
 * direction (0 unknown, 1 inbound, 2 outbound) or -1 if an option overruns. */
static inline int packet_direction(const uint8_t *p, const uint8_t *end, int swap)
{
    int direction = 0;
    while (end - p >= 4) {
        uint16_t code = rd16(p, swap);
        uint32_t len = rd16(p + 2, swap);
        uint32_t padded = (len + 3u) & ~3u;
        if (code == 0)
            break;
        if ((size_t)(end - p - 4) < padded)
            return -1;
        if (code == OPT_FLAGS) {
            if (len != 4)
                return -1;
            uint32_t bits = rd32(p + 4, swap) & 3u;
            direction = bits == 3u ? 0 : (int)bits; /* 3 is invalid: unknown */
        }
        p += 4 + padded;
    }
    return direction;
}

static int get_column(PyObject *obj, Py_buffer *view, Py_ssize_t rows, size_t itemsize,
                      const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len < rows * (Py_ssize_t)itemsize || ((uintptr_t)view->buf % itemsize) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: too short or misaligned for %zd rows", name, rows);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void release_all(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
}

/* Bind the column arrays; on failure releases what it bound and returns -1. */
static int bind_columns(PyObject **objs, int n, Py_ssize_t rows, Py_buffer *views, columns_t *c)
{
    static const size_t sizes[6] = {8, 4, 4, 8, 2, 1};
    static const char *names[6] = {"offset", "caplen", "wire_len", "ts_ns", "interface", "direction"};
    for (int i = 0; i < n; i++) {
        if (get_column(objs[i], &views[i], rows, sizes[i], names[i]) < 0) {
            release_all(views, i);
            return -1;
        }
    }
    c->offset = views[0].buf;
    c->caplen = views[1].buf;
    c->wire_len = views[2].buf;
    c->ts_ns = views[3].buf;
    c->interface = n > 4 ? views[4].buf : NULL;
    c->direction = n > 5 ? views[5].buf : NULL;
    return 0;
}

static int check_rows(Py_ssize_t start, Py_ssize_t capacity, Py_ssize_t offset, Py_ssize_t size)
{
    if (start < 0 || start > capacity || offset < 0 || offset > size) {
        PyErr_SetString(PyExc_ValueError, "start/offset out of range");
        return -1;
    }
    return 0;
}

static const char walk_pcap_doc[] =
    "walk_pcap(data, offset, swapped, nanosecond, max_caplen, lengths, offset_out,\n"
    "          caplen_out, wire_len_out, ts_ns_out, start, capacity) -> (count, offset, stop)\n\n"
    "Frame pcap records from `offset` (just after the file header, or where the\n"
    "previous call stopped) into rows [start, capacity) of the output arrays.\n"
    "A caplen above max_caplen stops the walk (STOP_CAPLEN_OVER_MAX); a caplen above\n"
    "the file's snaplen is not checked, as libpcap and Wireshark read such records.\n"
    "lengths is one of the PCAP_LENGTHS_* codes.";

static PyObject *walk_pcap(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t offset, start, capacity;
    int swap, nano, lengths;
    unsigned long max_caplen;
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "y*nppkiOOOOnn", &data, &offset, &swap, &nano, &max_caplen,
                          &lengths, &objs[0], &objs[1], &objs[2], &objs[3], &start, &capacity))
        return NULL;
    if (lengths < PCAP_LENGTHS_NORMAL || lengths > PCAP_LENGTHS_MAYBE_SWAPPED) {
        PyErr_SetString(PyExc_ValueError, "lengths: not a PCAP_LENGTHS_* code");
        PyBuffer_Release(&data);
        return NULL;
    }
    Py_buffer views[4];
    columns_t out;
    if (check_rows(start, capacity, offset, data.len) < 0 ||
        bind_columns(objs, 4, capacity, views, &out) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }

    const uint8_t *buf = data.buf;
    const size_t size = (size_t)data.len;
    size_t off = (size_t)offset;
    Py_ssize_t n = start;
    const int64_t frac_ns = nano ? 1 : 1000;
    enum stop stop;

    const uint8_t *ahead = buf + off;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (n == capacity) { stop = STOP_FULL; break; }
        size_t left = size - off;
        if (left == 0) { stop = STOP_END; break; }
        if (left < 16) { stop = STOP_TRUNCATED_HEADER; break; }
        const uint8_t *p = buf + off;
        prefetch_ahead(p, &ahead, buf + size);
        uint32_t caplen = rd32(p + 8, swap);
        uint32_t wire_len = rd32(p + 12, swap);
        if (lengths == PCAP_LENGTHS_SWAPPED ||
            (lengths == PCAP_LENGTHS_MAYBE_SWAPPED && caplen > wire_len)) {
            uint32_t t = caplen;
            caplen = wire_len;
            wire_len = t;
        }
        /* A caplen above the file's snaplen is read (libpcap, Wireshark): only
         * the link type's largest caplen bounds it. */
        if (caplen > max_caplen) { stop = STOP_CAPLEN_OVER_MAX; break; }
        if (caplen > left - 16) { stop = STOP_TRUNCATED_RECORD; break; }
        out.offset[n] = (int64_t)(off + 16);
        out.caplen[n] = caplen;
        out.wire_len[n] = wire_len;
        out.ts_ns[n] = (int64_t)rd32(p, swap) * NS_PER_S + (int64_t)rd32(p + 4, swap) * frac_ns;
        n++;
        off += 16 + (size_t)caplen;
    }
    Py_END_ALLOW_THREADS

    release_all(views, 4);
    PyBuffer_Release(&data);
    return Py_BuildValue("nni", n, (Py_ssize_t)off, (int)stop);
}

static const char walk_pcapng_doc[] =
    "walk_pcapng(data, offset, big_endian, interfaces, offset_out, caplen_out,\n"
    "            wire_len_out, ts_ns_out, interface_out, direction_out, start, capacity)\n"
    "    -> (count, offset, stop, block_len)\n\n"
    "Walk pcapng blocks of one section from `offset`. `interfaces` holds the\n"
    "section's interface table (INTERFACE_TABLE_DTYPE rows). Packets of EPB, SPB\n"
    "and PB fill rows [start, capacity); NRB, ISB, CB, DCB and unknown blocks are\n"
    "skipped by their length. Stops at an SHB or IDB for Python to read.\n"
    "block_len is the length of the block at `offset` (0 if unknown).";

static PyObject *walk_pcapng(PyObject *self, PyObject *args)
{
    Py_buffer data, table;
    Py_ssize_t offset, start, capacity;
    int swap;
    PyObject *objs[6];
    if (!PyArg_ParseTuple(args, "y*npy*OOOOOOnn", &data, &offset, &swap, &table, &objs[0],
                          &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &start, &capacity))
        return NULL;
    Py_buffer views[6];
    columns_t out;
    if (table.len % (Py_ssize_t)sizeof(interface_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "interfaces: not a whole number of rows");
        goto fail;
    }
    if (check_rows(start, capacity, offset, data.len) < 0 ||
        bind_columns(objs, 6, capacity, views, &out) < 0)
        goto fail;

    const uint8_t *buf = data.buf;
    const size_t size = (size_t)data.len;
    interface_t *itfs = PyMem_Malloc(table.len ? (size_t)table.len : 1);
    if (itfs == NULL) {
        release_all(views, 6);
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(itfs, table.buf, (size_t)table.len); /* aligned copy of the table */
    const uint32_t n_itfs = (uint32_t)(table.len / (Py_ssize_t)sizeof(interface_t));
    size_t off = (size_t)offset;
    uint32_t block_len = 0;
    Py_ssize_t n = start;
    enum stop stop;

    const uint8_t *ahead = buf + off;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        block_len = 0;
        if (n == capacity) { stop = STOP_FULL; break; }
        size_t left = size - off;
        if (left == 0) { stop = STOP_END; break; }
        if (left < 12) { stop = STOP_TRUNCATED_HEADER; break; }
        const uint8_t *p = buf + off;
        prefetch_ahead(p, &ahead, buf + size);
        uint32_t type = rd32(p, swap);
        if (type == PCAPNG_SHB) { stop = STOP_SECTION; break; } /* its byte order may differ */
        uint32_t len = rd32(p + 4, swap);
        if (len < 12 || len % 4 != 0) { stop = STOP_BAD_BLOCK_LENGTH; break; }
        if (len > left) { stop = STOP_TRUNCATED_RECORD; break; }
        if (rd32(p + len - 4, swap) != len) { stop = STOP_TRAILING_MISMATCH; break; }
        block_len = len;
        const uint32_t body = len - 12;

        if (type == PCAPNG_IDB) { stop = STOP_INTERFACE; break; }
        if (type == PCAPNG_EPB || type == PCAPNG_PB) {
            if (body < 20) { stop = STOP_BAD_PACKET_BLOCK; break; }
            uint32_t id = type == PCAPNG_EPB ? rd32(p + 8, swap) : rd16(p + 8, swap);
            uint32_t caplen = rd32(p + 20, swap);
            uint64_t padded = ((uint64_t)caplen + 3u) & ~(uint64_t)3u;
            if (padded > body - 20) { stop = STOP_BAD_PACKET_BLOCK; break; }
            if (id >= n_itfs || itfs[id].global_index == UNUSABLE_INTERFACE) {
                stop = STOP_UNKNOWN_INTERFACE;
                break;
            }
            int direction = packet_direction(p + 28 + padded, p + len - 4, swap);
            if (direction < 0) { stop = STOP_BAD_OPTIONS; break; }
            uint64_t units = ((uint64_t)rd32(p + 12, swap) << 32) | rd32(p + 16, swap);
            out.offset[n] = (int64_t)(off + 28);
            out.caplen[n] = caplen;
            out.wire_len[n] = rd32(p + 24, swap);
            out.ts_ns[n] = pcapng_ts_ns(&itfs[id], units);
            out.interface[n] = itfs[id].global_index;
            out.direction[n] = (int8_t)direction;
            n++;
        } else if (type == PCAPNG_SPB) {
            /* No timestamp; interface 0 of the section; caplen is the smallest
             * of the original length, the snaplen and the block body. */
            if (body < 4) { stop = STOP_BAD_PACKET_BLOCK; break; }
            if (n_itfs == 0 || itfs[0].global_index == UNUSABLE_INTERFACE) {
                stop = STOP_UNKNOWN_INTERFACE;
                break;
            }
            uint32_t wire = rd32(p + 8, swap);
            uint32_t caplen = wire < body - 4 ? wire : body - 4;
            if (itfs[0].snaplen != 0 && itfs[0].snaplen < caplen)
                caplen = itfs[0].snaplen;
            out.offset[n] = (int64_t)(off + 12);
            out.caplen[n] = caplen;
            out.wire_len[n] = wire;
            out.ts_ns[n] = NO_TIMESTAMP;
            out.interface[n] = itfs[0].global_index;
            out.direction[n] = 0;
            n++;
        }
        off += len;
    }
    Py_END_ALLOW_THREADS

    PyMem_Free(itfs);
    release_all(views, 6);
    PyBuffer_Release(&table);
    PyBuffer_Release(&data);
    return Py_BuildValue("nniI", n, (Py_ssize_t)off, (int)stop, block_len);

fail:
    PyBuffer_Release(&table);
    PyBuffer_Release(&data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk_pcap", walk_pcap, METH_VARARGS, walk_pcap_doc},
    {"walk_pcapng", walk_pcapng, METH_VARARGS, walk_pcapng_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lab.capture._walk",
    "Sequential record walk over pcap/pcapng (see the comment at the top of _walk.c).",
    -1, methods,
};

#define EXPORT(m, name) \
    if (PyModule_AddIntConstant(m, #name, name) < 0) goto error

PyMODINIT_FUNC PyInit__walk(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    EXPORT(m, STOP_END);
    EXPORT(m, STOP_FULL);
    EXPORT(m, STOP_SECTION);
    EXPORT(m, STOP_INTERFACE);
    EXPORT(m, STOP_TRUNCATED_HEADER);
    EXPORT(m, STOP_TRUNCATED_RECORD);
    EXPORT(m, STOP_CAPLEN_OVER_MAX);
    EXPORT(m, STOP_BAD_BLOCK_LENGTH);
    EXPORT(m, STOP_TRAILING_MISMATCH);
    EXPORT(m, STOP_BAD_PACKET_BLOCK);
    EXPORT(m, STOP_UNKNOWN_INTERFACE);
    EXPORT(m, STOP_BAD_OPTIONS);
    EXPORT(m, MAX_PCAP_CAPLEN);
    EXPORT(m, PCAP_LENGTHS_NORMAL);
    EXPORT(m, PCAP_LENGTHS_SWAPPED);
    EXPORT(m, PCAP_LENGTHS_MAYBE_SWAPPED);
    EXPORT(m, UNUSABLE_INTERFACE);
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
