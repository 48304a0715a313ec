/* lab.analysis._kernels: the per-packet and per-message loops of `lab measure`.
 *
 * decode(): link layer, IPv4, TCP/UDP and WM market-data headers of every
 * packet of a batch, straight into the columns of a PacketTable.
 * copy_ranges(): TCP payloads out of the capture, one memcpy each.
 * span_times(): per order, the extremes of per-segment values over the pieces
 * of the reassembled stream that hold its bytes.
 *
 * Why C: the numpy decode gathered a ~60-byte header window per packet and then
 * read a dozen columns out of the windows, plus a second gather for the MD
 * header of every UDP payload: ~0.6 s + ~0.45 s for 7M packets, bound by the
 * memory traffic of the copies, while `lab measure` must do >= 5M packets/s
 * end to end. Here each packet's headers are read once, in place, and every
 * column is written in the same pass (~10-20 ns/packet). The layouts stay data:
 * the link types are LINK_LAYERS in decode.py (mirrored in link_layer() below,
 * checked by the tests against scapy/dpkt), the MD header offsets and sizes are
 * passed in from engine.protocol.md. Every length is checked before a byte is
 * read: nothing is read outside [offset, offset + caplen) of a packet, nor
 * outside the data buffer.
 *
 * decode(data, offset, caplen, interface, linktypes, columns, md_seq, md_layout)
 *   data:      uint8 buffer (the capture mapping)
 *   offset:    int64[n], caplen: uint32[n], interface: uint16[n]
 *   linktypes: uint16[k], interface i's link type (an interface >= k is unknown)
 *   columns:   tuple of the output arrays, in COLUMN order below, each n rows
 *   md_seq:    int64[n] or None: the seq of each UDP payload that is a valid WM
 *              market-data datagram, else -1
 *   md_layout: (signature u32 LE at 0, length_at, seq_at, n_updates_at,
 *              n_trades_at, probe_bytes, header_size, update_size, trade_size)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum status { OK, NOT_IPV4, TRUNCATED, UNSUPPORTED_LINKTYPE, BAD_IPV4, IP_FRAGMENT };

#define PROTO_TCP 6
#define PROTO_UDP 17
#define IPV4_HEADER 20
#define TCP_HEADER 20
#define UDP_HEADER 8
/* Packets ahead whose headers are requested from memory while this one is decoded. */
#define PREFETCH_AHEAD 8

/* Output columns, in the order Python passes them, with their item sizes. */
enum column {
    C_LINKTYPE, C_STATUS, C_L3_OFFSET, C_VLAN_TAGS, C_IP_LEN, C_SRC_IP, C_DST_IP, C_PROTO,
    C_SRC_PORT, C_DST_PORT, C_TCP_SEQ, C_TCP_ACK, C_TCP_FLAGS, C_PAYLOAD_OFFSET, C_PAYLOAD_LEN,
    C_PAYLOAD_CAPLEN, N_COLUMNS
};
static const Py_ssize_t COLUMN_ITEMSIZE[N_COLUMNS] = {2, 1, 8, 1, 2, 4, 4, 1, 2, 2, 4, 4, 2, 8, 4, 4};

typedef struct {
    uint16_t *linktype;
    uint8_t *status;
    int64_t *l3_offset;
    uint8_t *vlan_tags;
    uint16_t *ip_len;
    uint32_t *src_ip, *dst_ip;
    uint8_t *proto;
    uint16_t *src_port, *dst_port;
    uint32_t *tcp_seq, *tcp_ack;
    uint16_t *tcp_flags;
    int64_t *payload_offset;
    int32_t *payload_len, *payload_caplen;
} columns_t;

typedef struct {
    uint32_t signature;
    Py_ssize_t length_at, seq_at, n_updates_at, n_trades_at, probe_bytes;
    int64_t header_size, update_size, trade_size;
} md_layout_t;

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline int is_vlan(uint16_t ethertype)
{
    return ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100;
}

/* The link layer of one packet (LINK_LAYERS in decode.py): sets *l3 (bytes before
 * IPv4) and *tags; returns OK, NOT_IPV4, TRUNCATED or UNSUPPORTED_LINKTYPE. */
static inline int link_layer(unsigned linktype, const uint8_t *p, int64_t caplen, int64_t *l3, int *tags)
{
    *tags = 0;
    switch (linktype) {
    case 1: { /* Ethernet, up to two 802.1Q/802.1ad tags */
        *l3 = 14;
        if (caplen < 14)
            return TRUNCATED;
        uint16_t type = be16(p + 12);
        if (is_vlan(type)) {
            *tags = 1;
            *l3 = 18;
            if (caplen < 18)
                return TRUNCATED;
            type = be16(p + 16);
            if (is_vlan(type)) {
                *tags = 2;
                *l3 = 22;
                if (caplen < 22)
                    return TRUNCATED;
                type = be16(p + 20);
            }
        }
        return type == 0x0800 ? OK : NOT_IPV4;
    }
    case 113: /* Linux cooked SLL: protocol at 14 */
        *l3 = 16;
        if (caplen < 16)
            return TRUNCATED;
        return be16(p + 14) == 0x0800 ? OK : NOT_IPV4;
    case 276: /* Linux cooked SLL2: protocol at 0 */
        *l3 = 20;
        if (caplen < 20)
            return TRUNCATED;
        return be16(p) == 0x0800 ? OK : NOT_IPV4;
    case 101: /* raw IP: the version nibble */
    case 228:
        *l3 = 0;
        if (caplen < 1)
            return TRUNCATED;
        return (p[0] >> 4) == 4 ? OK : NOT_IPV4;
    case 0: { /* BSD loopback: AF_INET as a 4-byte word in the writer's byte order */
        *l3 = 4;
        if (caplen < 4)
            return TRUNCATED;
        uint32_t family = le32(p);
        return family == 2u || family == (2u << 24) ? OK : NOT_IPV4;
    }
    default:
        *l3 = 0;
        return UNSUPPORTED_LINKTYPE;
    }
}

/* seq of a WM datagram (the checks of engine.protocol.md.valid_md_headers), else -1. */
static inline int64_t md_seq_of(const uint8_t *payload, int64_t payload_len, int64_t payload_caplen,
                                const md_layout_t *md)
{
    if (payload_caplen < md->probe_bytes || le32(payload) != md->signature)
        return -1;
    int64_t length = le16(payload + md->length_at);
    int64_t n_updates = le16(payload + md->n_updates_at);
    int64_t n_trades = le16(payload + md->n_trades_at);
    if (length != payload_len || n_updates < 2 ||
        md->header_size + md->update_size * n_updates + md->trade_size * n_trades != length)
        return -1;
    return (int64_t)le64(payload + md->seq_at);
}

static void decode_packets(const uint8_t *data, Py_ssize_t size, Py_ssize_t n, const int64_t *offset,
                           const uint32_t *caplens, const uint16_t *interface, const uint16_t *linktypes,
                           Py_ssize_t n_linktypes, const columns_t *c, int64_t *md_seq, const md_layout_t *md)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n && (uint64_t)offset[i + PREFETCH_AHEAD] < (uint64_t)size)
            __builtin_prefetch(data + offset[i + PREFETCH_AHEAD]);
        int64_t start = offset[i];
        int64_t caplen = caplens[i];
        if (start < 0 || start > size)
            start = size, caplen = 0;
        if (caplen > size - start)
            caplen = size - start;
        const uint8_t *p = data + start;
        unsigned linktype = interface[i] < n_linktypes ? linktypes[interface[i]] : 0xFFFFu;
        int64_t l3;
        int tags;
        int status = link_layer(linktype, p, caplen, &l3, &tags);
        uint16_t ip_len = 0, src_port = 0, dst_port = 0, flags = 0;
        uint32_t src_ip = 0, dst_ip = 0, seq = 0, ack = 0;
        uint8_t proto = 0;
        int64_t payload = 0, payload_len = 0, payload_caplen = 0, seq_of_md = -1;

        if (status == OK) { /* IPv4 */
            const uint8_t *ip = p + l3;
            int64_t room = caplen - l3;
            int64_t ihl = room >= IPV4_HEADER ? (int64_t)(ip[0] & 0x0F) << 2 : 0;
            if (room < IPV4_HEADER)
                status = TRUNCATED;
            else if ((ip[0] >> 4) != 4 || ihl < IPV4_HEADER || be16(ip + 2) < ihl)
                status = BAD_IPV4;
            else if (room < ihl)
                status = TRUNCATED;
            else {
                ip_len = be16(ip + 2);
                proto = ip[9];
                src_ip = be32(ip + 12);
                dst_ip = be32(ip + 16);
                if (be16(ip + 6) & 0x3FFF)
                    status = IP_FRAGMENT;
            }
            if (status == OK) { /* TCP / UDP, or the IP payload of other protocols */
                int64_t l4 = l3 + ihl;
                const uint8_t *h = p + l4;
                int64_t header = 0;
                if (proto == PROTO_TCP) {
                    if (caplen < l4 + TCP_HEADER)
                        status = TRUNCATED;
                    else {
                        uint16_t off_flags = be16(h + 12);
                        header = (int64_t)(off_flags >> 12) << 2;
                        if (header < TCP_HEADER)
                            status = BAD_IPV4;
                        else if (caplen < l4 + header)
                            status = TRUNCATED;
                        else {
                            seq = be32(h + 4);
                            ack = be32(h + 8);
                            flags = off_flags & 0x1FF;
                        }
                    }
                } else if (proto == PROTO_UDP) {
                    header = UDP_HEADER;
                    if (caplen < l4 + UDP_HEADER)
                        status = TRUNCATED;
                }
                if (status == OK) {
                    payload = l4 + header;
                    payload_len = (int64_t)ip_len - (payload - l3);
                    if (payload_len < 0) {
                        status = BAD_IPV4;
                        payload = payload_len = seq = ack = flags = 0;
                    } else {
                        payload_caplen = caplen - payload;
                        if (payload_caplen > payload_len)
                            payload_caplen = payload_len;
                        if (proto == PROTO_TCP || proto == PROTO_UDP) {
                            src_port = be16(h);
                            dst_port = be16(h + 2);
                        }
                        if (proto == PROTO_UDP && md_seq)
                            seq_of_md = md_seq_of(p + payload, payload_len, payload_caplen, md);
                        payload += start;
                    }
                }
            }
            if (status != OK && status != IP_FRAGMENT)   /* unknown: no IPv4 fields */
                ip_len = 0, proto = 0, src_ip = dst_ip = 0;
        }
        c->linktype[i] = (uint16_t)linktype;
        c->status[i] = (uint8_t)status;
        c->l3_offset[i] = l3;
        c->vlan_tags[i] = (uint8_t)tags;
        c->ip_len[i] = ip_len;
        c->src_ip[i] = src_ip;
        c->dst_ip[i] = dst_ip;
        c->proto[i] = proto;
        c->src_port[i] = src_port;
        c->dst_port[i] = dst_port;
        c->tcp_seq[i] = seq;
        c->tcp_ack[i] = ack;
        c->tcp_flags[i] = flags;
        c->payload_offset[i] = payload;
        c->payload_len[i] = (int32_t)payload_len;
        c->payload_caplen[i] = (int32_t)payload_caplen;
        if (md_seq)
            md_seq[i] = seq_of_md;
    }
}

/* A buffer of n items of itemsize bytes (contiguous; writable if asked). */
static int get_array(PyObject *obj, Py_buffer *view, Py_ssize_t n, Py_ssize_t itemsize, int writable,
                     const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != itemsize || (n >= 0 && view->len != n * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes", name, n, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static const char decode_doc[] =
    "decode(data, offset, caplen, interface, linktypes, columns, md_seq, md_layout) -> None\n"
    "Fill the PacketTable columns (and md_seq unless None) for every packet.";

static PyObject *decode(PyObject *self, PyObject *args)
{
    PyObject *data_obj, *offset_obj, *caplen_obj, *interface_obj, *linktypes_obj, *columns_obj, *md_obj;
    md_layout_t md;
    unsigned long signature;
    if (!PyArg_ParseTuple(args, "OOOOOO!O(knnnnnLLL)", &data_obj, &offset_obj, &caplen_obj, &interface_obj,
                          &linktypes_obj, &PyTuple_Type, &columns_obj, &md_obj, &signature, &md.length_at,
                          &md.seq_at, &md.n_updates_at, &md.n_trades_at, &md.probe_bytes, &md.header_size,
                          &md.update_size, &md.trade_size))
        return NULL;
    md.signature = (uint32_t)signature;
    if (md.probe_bytes < 4 || md.length_at + 2 > md.probe_bytes || md.seq_at + 8 > md.probe_bytes ||
        md.n_updates_at + 2 > md.probe_bytes || md.n_trades_at + 2 > md.probe_bytes ||
        md.length_at < 0 || md.seq_at < 0 || md.n_updates_at < 0 || md.n_trades_at < 0) {
        PyErr_SetString(PyExc_ValueError, "md_layout: fields must lie inside probe_bytes");
        return NULL;
    }
    if (PyTuple_GET_SIZE(columns_obj) != N_COLUMNS) {
        PyErr_Format(PyExc_ValueError, "columns: expected %d arrays", N_COLUMNS);
        return NULL;
    }
    Py_buffer views[N_COLUMNS + 6];
    int held = 0;
    PyObject *result = NULL;
    Py_buffer *data = &views[held];
    if (PyObject_GetBuffer(data_obj, data, PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    held++;
    Py_buffer *offset = &views[held];
    if (get_array(offset_obj, offset, -1, 8, 0, "offset") < 0)
        goto done;
    held++;
    Py_ssize_t n = offset->len / 8;
    Py_buffer *caplen = &views[held];
    if (get_array(caplen_obj, caplen, n, 4, 0, "caplen") < 0)
        goto done;
    held++;
    Py_buffer *interface = &views[held];
    if (get_array(interface_obj, interface, n, 2, 0, "interface") < 0)
        goto done;
    held++;
    Py_buffer *linktypes = &views[held];
    if (get_array(linktypes_obj, linktypes, -1, 2, 0, "linktypes") < 0)
        goto done;
    held++;
    void *out[N_COLUMNS];
    for (int k = 0; k < N_COLUMNS; k++) {
        if (get_array(PyTuple_GET_ITEM(columns_obj, k), &views[held], n, COLUMN_ITEMSIZE[k], 1, "column") < 0)
            goto done;
        out[k] = views[held].buf;
        held++;
    }
    int64_t *md_seq = NULL;
    if (md_obj != Py_None) {
        if (get_array(md_obj, &views[held], n, 8, 1, "md_seq") < 0)
            goto done;
        md_seq = views[held].buf;
        held++;
    }
    columns_t c = {out[C_LINKTYPE], out[C_STATUS], out[C_L3_OFFSET], out[C_VLAN_TAGS], out[C_IP_LEN],
                   out[C_SRC_IP], out[C_DST_IP], out[C_PROTO], out[C_SRC_PORT], out[C_DST_PORT],
                   out[C_TCP_SEQ], out[C_TCP_ACK], out[C_TCP_FLAGS], out[C_PAYLOAD_OFFSET],
                   out[C_PAYLOAD_LEN], out[C_PAYLOAD_CAPLEN]};
    Py_BEGIN_ALLOW_THREADS
    decode_packets(data->buf, data->len, n, offset->buf, caplen->buf, interface->buf, linktypes->buf,
                   linktypes->len / 2, &c, md_seq, &md);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    return result;
}

static const char copy_ranges_doc[] =
    "copy_ranges(source, starts, lengths, out) -> None\n"
    "Copy source[starts[i]: starts[i] + lengths[i]] for every i, back to back, into out\n"
    "(exactly sum(lengths) bytes). ValueError if a range leaves source.";

/* Why C: one memcpy per range (per run of adjacent ranges), where numpy needs a
 * per-byte index or a window gather per 64-byte piece: the TCP payloads of a
 * batch, and a reassembled stream out of its pieces. */
static PyObject *copy_ranges(PyObject *self, PyObject *args)
{
    PyObject *source_obj, *starts_obj, *lengths_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOO", &source_obj, &starts_obj, &lengths_obj, &out_obj))
        return NULL;
    Py_buffer views[4];
    int held = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(source_obj, &views[0], PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    held++;
    if (get_array(starts_obj, &views[1], -1, 8, 0, "starts") < 0)
        goto done;
    held++;
    Py_ssize_t n = views[1].len / 8;
    if (get_array(lengths_obj, &views[2], n, 8, 0, "lengths") < 0)
        goto done;
    held++;
    if (PyObject_GetBuffer(out_obj, &views[3], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        goto done;
    held++;
    const uint8_t *source = views[0].buf;
    const int64_t *starts = views[1].buf, *lengths = views[2].buf;
    uint8_t *out = views[3].buf;
    Py_ssize_t size = views[0].len, room = views[3].len;
    /* Ranges that follow each other in the source (a stream's pieces, mostly) are
     * copied as one run. */
    int64_t run_start = 0, run_length = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t start = starts[i], length = lengths[i];
        if (length < 0 || start < 0 || start > size || length > size - start || length > room) {
            PyErr_Format(PyExc_ValueError, "range %zd (%lld, %lld) is outside the source or the output", i,
                         (long long)start, (long long)length);
            goto done;
        }
        if (i + PREFETCH_AHEAD < n && (uint64_t)starts[i + PREFETCH_AHEAD] < (uint64_t)size)
            __builtin_prefetch(source + starts[i + PREFETCH_AHEAD]);
        room -= length;
        if (start == run_start + run_length) {
            run_length += length;
            continue;
        }
        if (run_length)
            if (run_length)
        memcpy(out, source + run_start, (size_t)run_length);
        out += run_length;
        run_start = start;
        run_length = length;
    }
    if (run_length)
        memcpy(out, source + run_start, (size_t)run_length);
    if (room != 0) {
        PyErr_SetString(PyExc_ValueError, "out must hold exactly sum(lengths) bytes");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    return result;
}

static const char span_times_doc[] =
    "span_times(piece_start, piece_segment, position, length, first_bit, last_bit,\n"
    "           first_bit_min, segment_max, last_bit_max) -> None\n"
    "For each span [position[i], position[i] + length[i]) (length >= 1) of the sorted\n"
    "pieces: the min of first_bit, the max segment index and the max of last_bit over\n"
    "the segments that first delivered its bytes. last_bit/last_bit_max may be None.";

/* Why C: numpy needs two binary searches per order and a gather plus a reduceat per
 * value (~0.2 s for 1M orders); orders come sorted by position, so one merge-like
 * walk over the pieces does it all (~10 ns per order). Unsorted spans still work:
 * the walk falls back to a binary search when a span starts behind the last one. */
static PyObject *span_times(PyObject *self, PyObject *args)
{
    PyObject *objs[9];
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8]))
        return NULL;
    Py_buffer views[9];
    void *bufs[9] = {NULL};
    int held = 0;
    PyObject *result = NULL;
    static const char *names[9] = {"piece_start", "piece_segment", "position", "length", "first_bit",
                                   "last_bit", "first_bit_min", "segment_max", "last_bit_max"};
    Py_ssize_t pieces = -1, spans = -1, segments = -1;
    for (int k = 0; k < 9; k++) {
        if (objs[k] == Py_None && (k == 5 || k == 8))
            continue;
        Py_ssize_t n = k < 2 ? pieces : k < 4 ? spans : k < 6 ? segments : spans;
        if (get_array(objs[k], &views[held], n, 8, k >= 6, names[k]) < 0)
            goto done;
        bufs[k] = views[held].buf;
        n = views[held].len / 8;
        held++;
        if (k == 0)
            pieces = n;
        else if (k == 2)
            spans = n;
        else if (k == 4)
            segments = n;
    }
    if ((bufs[5] == NULL) != (bufs[8] == NULL)) {
        PyErr_SetString(PyExc_ValueError, "last_bit and last_bit_max: both or neither");
        goto done;
    }
    const int64_t *piece_start = bufs[0], *piece_segment = bufs[1], *position = bufs[2], *length = bufs[3];
    const int64_t *first_bit = bufs[4], *last_bit = bufs[5];
    int64_t *first_bit_min = bufs[6], *segment_max = bufs[7], *last_bit_max = bufs[8];
    for (Py_ssize_t k = 0; k < pieces; k++) {
        if (piece_segment[k] < 0 || piece_segment[k] >= segments || (k && piece_start[k] < piece_start[k - 1])) {
            PyErr_SetString(PyExc_ValueError, "pieces must be sorted and name segments");
            goto done;
        }
    }
    Py_ssize_t at = 0; /* the piece holding the current span's first byte */
    for (Py_ssize_t i = 0; i < spans; i++) {
        int64_t begin = position[i], last = position[i] + length[i] - 1;
        if (length[i] < 1 || pieces == 0 || begin < piece_start[0]) {
            PyErr_Format(PyExc_ValueError, "span %zd is empty or before the first piece", i);
            goto done;
        }
        if (piece_start[at] > begin) { /* behind the previous span: search from the start */
            Py_ssize_t low = 0, high = at;   /* piece_start[low] <= begin < piece_start[high] */
            while (high - low > 1) {
                Py_ssize_t mid = low + (high - low) / 2;
                if (piece_start[mid] <= begin)
                    low = mid;
                else
                    high = mid;
            }
            at = low;
        }
        while (at + 1 < pieces && piece_start[at + 1] <= begin)
            at++;
        int64_t segment = piece_segment[at];
        int64_t low_bit = first_bit[segment], high_segment = segment, high_bit = last_bit ? last_bit[segment] : 0;
        for (Py_ssize_t k = at + 1; k < pieces && piece_start[k] <= last; k++) {
            segment = piece_segment[k];
            if (first_bit[segment] < low_bit)
                low_bit = first_bit[segment];
            if (segment > high_segment)
                high_segment = segment;
            if (last_bit && last_bit[segment] > high_bit)
                high_bit = last_bit[segment];
        }
        first_bit_min[i] = low_bit;
        segment_max[i] = high_segment;
        if (last_bit)
            last_bit_max[i] = high_bit;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    return result;
}

static PyMethodDef methods[] = {
    {"span_times", span_times, METH_VARARGS, span_times_doc},
    {"decode", decode, METH_VARARGS, decode_doc},
    {"copy_ranges", copy_ranges, METH_VARARGS, copy_ranges_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lab.analysis._kernels",
    "Packet header decode into columns (see lab/analysis/decode.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
