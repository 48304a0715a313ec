/*
 * engine._book: the L2 book (engine.book re-exports L2Book and BookError).
 *
 * Per side a ladder of int64 quantities indexed by price tick: index i is the price
 * base + i * tick. A level update is one store; the best index of a side moves by a
 * short scan only when the best level empties. When a price falls outside the window
 * the window re-centres on all levels and that price, doubling while it is narrower
 * than twice their span.
 *
 * Crossed-book guard: a new best bid at or above the best ask clears the asks at or
 * below it (a missed delete is the usual cause), symmetrically for asks;
 * crossed_fixes counts them.
 *
 * decode(payload, books, kernel_rx_ns, app_in) is MarketDataHandler's whole datagram in
 * one call: it checks the header and every length (the offsets come from engine.protocol.md's
 * declaration, through set_layout), applies the
 * update entries to the book of (venue, instrument), counts gaps, duplicates and regressions in
 * the feed's sequence on that book, and returns the MarketUpdate's fields. A datagram it cannot use raises
 * DatagramError(reason).
 *
 * Prices are int64. Price arithmetic that can leave int64 (placing a window) is done
 * in __int128; a window whose prices would not all fit int64 is refused (BookError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_tsc.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "decode() reads the little-endian wire format with memcpy: little-endian hosts only"
#endif
#if !defined(__SIZEOF_INT128__)
#error "placing a window needs __int128"
#endif
typedef __int128 wide_t;

enum { BID = 1, ASK = 2 };                         /* the book's sides; the WM wire uses the same codes */

/* The WM datagram's layout, from its declaration (engine.protocol.md, WmMarketData.book_layout),
 * given once by engine.book at import: no offset is copied into this file by hand. */
static struct {
    int known;
    Py_ssize_t magic;                                   /* u16 at 0 */
    Py_ssize_t version_at, version, type_at, md_type;
    Py_ssize_t length_at, venue_at, seq_at, instrument_at, n_updates_at, n_trades_at, send_ts_at;
    Py_ssize_t header_size, update_size, trade_size;
    Py_ssize_t side_at, action_at, set_action, price_at, qty_at;   /* in an update entry */
    Py_ssize_t trade_price_at, trade_qty_at;                         /* in a trade entry */
} wm;
#define MAX_WINDOW ((int64_t)(PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(int64_t)))

static PyObject *BookError, *DatagramError;

typedef struct {
    PyObject_HEAD
    int64_t tick;
    int64_t window;            /* levels per ladder */
    int has_base;              /* false until the first non-zero quantity */
    int64_t base;              /* price of ladder index 0 */
    int64_t *ladder[3];        /* by side; [0] unused */
    int64_t best[3];           /* ladder index of the best bid / ask, -1 when empty */
    long long crossed_fixes;
    unsigned long long datagrams;   /* decoded into this book */
    unsigned long long last_seq;    /* the highest so far */
    unsigned long long gaps;        /* datagrams missing from the feed's sequence */
    unsigned long long duplicates;  /* datagrams with the last one's seq again */
    unsigned long long regressions; /* datagrams with a seq below the last one's */
} L2Book;

/* Python's a // b for b > 0 (C's / truncates toward zero). */
static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

static inline wide_t wide_floor_div(wide_t a, wide_t b) {
    wide_t q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

/* -- scans ------------------------------------------------------------------------ */

/* The next best index after `emptied` left a side: below it for bids, above for asks. */
static int64_t scan_from(const L2Book *b, int side, int64_t emptied) {
    const int64_t *ladder = b->ladder[side];
    if (side == BID) {
        for (int64_t i = emptied - 1; i >= 0; i--)
            if (ladder[i]) return i;
    } else {
        for (int64_t i = emptied + 1; i < b->window; i++)
            if (ladder[i]) return i;
    }
    return -1;
}

static int64_t lowest_level(const L2Book *b, int side) {
    for (int64_t i = 0; i < b->window; i++)
        if (b->ladder[side][i]) return i;
    return -1;
}

static int64_t highest_level(const L2Book *b, int side) {
    for (int64_t i = b->window - 1; i >= 0; i--)
        if (b->ladder[side][i]) return i;
    return -1;
}

/* -- crossed-book guard ------------------------------------------------------------- */

/* `side` has a new best at i: clear the opposite levels it crosses, if any. */
static void uncross(L2Book *b, int side, int64_t i) {
    int other = BID + ASK - side;
    int64_t other_best = b->best[other];
    if (other_best < 0 || (side == BID ? other_best > i : other_best < i)) return;
    int64_t *ladder = b->ladder[other];
    if (side == BID) {          /* asks at or below the new bid are stale; none lie below the best ask */
        memset(ladder + other_best, 0, (size_t)(i - other_best + 1) * sizeof(int64_t));
        b->best[ASK] = scan_from(b, ASK, i);
    } else {                    /* bids at or above the new ask; none lie above the best bid */
        memset(ladder + i, 0, (size_t)(other_best - i + 1) * sizeof(int64_t));
        b->best[BID] = scan_from(b, BID, i);
    }
    b->crossed_fixes++;
}

/* -- window placement --------------------------------------------------------------- */

/* Base of a `window` centred on prices low..high: (low + high) // 2 // tick * tick - window // 2 * tick.
 * Fails (BookError) if a price of the window would not fit int64. */
static int window_base(const L2Book *b, int64_t low, int64_t high, int64_t window, int64_t price,
                       int64_t *base) {
    wide_t tick = b->tick;
    wide_t middle = wide_floor_div((wide_t)low + high, 2);
    wide_t new_base = wide_floor_div(middle, tick) * tick - (wide_t)(window / 2) * tick;
    if (new_base < INT64_MIN || (wide_t)high - new_base > INT64_MAX) {
        PyErr_Format(BookError, "price %lld is out of range for a book with tick %lld", (long long)price,
                     (long long)b->tick);
        return -1;
    }
    *base = (int64_t)new_base;
    return 0;
}

/* Move (and if needed grow) the window so that every level and `price` fit. */
static int recentre(L2Book *b, int64_t price) {
    int64_t first[3], last[3];
    int64_t low = price, high = price;
    for (int side = BID; side <= ASK; side++) {
        first[side] = lowest_level(b, side);
        last[side] = highest_level(b, side);
        if (first[side] < 0) continue;
        int64_t first_price = b->base + first[side] * b->tick;   /* prices of real levels: fit int64 */
        int64_t last_price = b->base + last[side] * b->tick;
        if (first_price < low) low = first_price;
        if (last_price > high) high = last_price;
    }
    wide_t span = ((wide_t)high - low) / b->tick + 1;
    int64_t window = b->window;
    while (window < 2 * span) {
        if (window > MAX_WINDOW / 2) {
            PyErr_Format(BookError, "price %lld is too far from the book's levels for one window",
                         (long long)price);
            return -1;
        }
        window *= 2;
    }
    int64_t new_base;
    if (window_base(b, low, high, window, price, &new_base) < 0) return -1;
    int64_t *moved[3] = {NULL, calloc((size_t)window, sizeof(int64_t)), calloc((size_t)window, sizeof(int64_t))};
    if (!moved[BID] || !moved[ASK]) {
        free(moved[BID]);
        free(moved[ASK]);
        PyErr_NoMemory();
        return -1;
    }
    int64_t shift = (int64_t)(((wide_t)b->base - new_base) / b->tick);   /* both on the tick grid */
    for (int side = BID; side <= ASK; side++) {
        if (first[side] >= 0)
            memcpy(moved[side] + first[side] + shift, b->ladder[side] + first[side],
                   (size_t)(last[side] - first[side] + 1) * sizeof(int64_t));
        free(b->ladder[side]);
        b->ladder[side] = moved[side];
        if (b->best[side] >= 0) b->best[side] += shift;
    }
    b->base = new_base;
    b->window = window;
    return 0;
}

/* -- updates ------------------------------------------------------------------------ */

/* Set the quantity at a price; qty 0 deletes the level. 0, or -1 with BookError set. */
static int set_level(L2Book *b, long side, int64_t price, int64_t qty) {
    int64_t tick = b->tick;
    if (side != BID && side != ASK) {
        PyErr_Format(BookError, "side must be 1 (bid) or 2 (ask), got %ld", side);
        return -1;
    }
    if (qty < 0) {
        PyErr_Format(BookError, "negative quantity %lld", (long long)qty);
        return -1;
    }
    if (price % tick) {
        PyErr_Format(BookError, "price %lld is not on the %lld tick grid", (long long)price, (long long)tick);
        return -1;
    }
    if (!b->has_base) {
        if (!qty) return 0;
        if (window_base(b, price, price, b->window, price, &b->base) < 0) return -1;   /* price - window//2*tick */
        b->has_base = 1;
    }
    int64_t offset, i;
    if (__builtin_sub_overflow(price, b->base, &offset) || (i = floor_div(offset, tick)) < 0 || i >= b->window) {
        if (recentre(b, price) < 0) return -1;
        i = (price - b->base) / tick;           /* in the window now: no overflow, not negative */
    }
    b->ladder[side][i] = qty;
    int64_t best = b->best[side];
    if (qty) {
        if (best < 0 || (side == BID ? i > best : i < best)) {
            b->best[side] = i;
            uncross(b, side, i);
        }
    } else if (i == best) {
        b->best[side] = scan_from(b, side, i);
    }
    return 0;
}

/* -- queries ------------------------------------------------------------------------ */

static inline int64_t price_at(const L2Book *b, int64_t i) { return b->base + i * b->tick; }

static PyObject *level_or_none(const L2Book *b, int side) {
    int64_t i = b->best[side];
    if (i < 0) Py_RETURN_NONE;
    return Py_BuildValue("(LL)", (long long)price_at(b, i), (long long)b->ladder[side][i]);
}

/* (bid price, bid qty, ask price, ask qty); 0, 0 for an empty side. Built by hand: Py_BuildValue costs more. */
static PyObject *top_tuple(const L2Book *b) {
    int64_t bid = b->best[BID], ask = b->best[ASK];
    int64_t fields[4] = {bid >= 0 ? price_at(b, bid) : 0, bid >= 0 ? b->ladder[BID][bid] : 0,
                         ask >= 0 ? price_at(b, ask) : 0, ask >= 0 ? b->ladder[ASK][ask] : 0};
    PyObject *top = PyTuple_New(4);
    if (!top) return NULL;
    for (int k = 0; k < 4; k++) {
        PyObject *field = PyLong_FromLongLong(fields[k]);
        if (!field) {
            Py_DECREF(top);
            return NULL;
        }
        PyTuple_SET_ITEM(top, k, field);
    }
    return top;
}

/* -- the Python type ---------------------------------------------------------------- */

static PyObject *book_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tick", "window", NULL};
    long long tick, window = 1 << 14;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L|L:L2Book", kwlist, &tick, &window)) return NULL;
    if (tick <= 0) return PyErr_Format(BookError, "tick must be positive, got %lld", tick);
    if (window <= 0 || window > MAX_WINDOW) return PyErr_Format(BookError, "window must be positive, got %lld", window);
    L2Book *b = (L2Book *)type->tp_alloc(type, 0);
    if (!b) return NULL;
    b->tick = tick;
    b->window = window;
    b->best[0] = b->best[BID] = b->best[ASK] = -1;
    b->ladder[BID] = calloc((size_t)window, sizeof(int64_t));
    b->ladder[ASK] = calloc((size_t)window, sizeof(int64_t));
    if (!b->ladder[BID] || !b->ladder[ASK]) {
        Py_DECREF(b);
        return PyErr_NoMemory();
    }
    return (PyObject *)b;
}

static void book_dealloc(L2Book *b) {
    free(b->ladder[BID]);
    free(b->ladder[ASK]);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* side, price, qty from Python ints: BookError for a side or price beyond any valid value. */
static int update_args(PyObject *const *args, long *side, int64_t *price, int64_t *qty) {
    int overflow;
    *side = PyLong_AsLongAndOverflow(args[0], &overflow);
    if (*side == -1 && PyErr_Occurred()) return -1;
    if (overflow) {
        PyErr_Format(BookError, "side must be 1 (bid) or 2 (ask), got %S", args[0]);
        return -1;
    }
    if (qty) {
        *qty = PyLong_AsLongLong(args[2]);
        if (*qty == -1 && PyErr_Occurred()) return -1;
    }
    *price = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (*price == -1 && PyErr_Occurred()) return -1;
    if (overflow) {
        PyErr_Format(BookError, "price %S is out of the int64 range", args[1]);
        return -1;
    }
    return 0;
}

static PyObject *book_set_level(L2Book *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "set_level takes 3 arguments (%zd given)", nargs);
    long side;
    int64_t price, qty;
    if (update_args(args, &side, &price, &qty) < 0 || set_level(b, side, price, qty) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *book_delete_level(L2Book *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "delete_level takes 2 arguments (%zd given)", nargs);
    long side;
    int64_t price;
    if (update_args(args, &side, &price, NULL) < 0 || set_level(b, side, price, 0) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *book_clear(L2Book *b, PyObject *Py_UNUSED(ignored)) {
    for (int side = BID; side <= ASK; side++) {
        memset(b->ladder[side], 0, (size_t)b->window * sizeof(int64_t));
        b->best[side] = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *book_best_bid(L2Book *b, PyObject *Py_UNUSED(ignored)) { return level_or_none(b, BID); }

static PyObject *book_best_ask(L2Book *b, PyObject *Py_UNUSED(ignored)) { return level_or_none(b, ASK); }

static PyObject *book_top(L2Book *b, PyObject *Py_UNUSED(ignored)) { return top_tuple(b); }

static PyObject *book_depth(L2Book *b, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"side", "levels", NULL};
    long side;
    Py_ssize_t levels = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "l|n:depth", kwlist, &side, &levels)) return NULL;
    if (side != BID && side != ASK) return PyErr_Format(BookError, "side must be 1 (bid) or 2 (ask), got %ld", side);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    const int64_t *ladder = b->ladder[side];
    int64_t step = side == BID ? -1 : 1;
    for (int64_t i = b->best[side]; i >= 0 && i < b->window && PyList_GET_SIZE(out) < levels; i += step) {
        if (!ladder[i]) continue;
        PyObject *level = Py_BuildValue("(LL)", (long long)price_at(b, i), (long long)ladder[i]);
        if (!level || PyList_Append(out, level) < 0) {
            Py_XDECREF(level);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(level);
    }
    return out;
}

static PyObject *book_is_crossed(L2Book *b, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(b->best[BID] >= 0 && b->best[ASK] >= 0 && b->best[BID] >= b->best[ASK]);
}

static PyMethodDef book_methods[] = {
    {"set_level", (PyCFunction)(void (*)(void))book_set_level, METH_FASTCALL,
     "set_level(side, price, qty): set the quantity at a price; qty 0 deletes the level"},
    {"delete_level", (PyCFunction)(void (*)(void))book_delete_level, METH_FASTCALL,
     "delete_level(side, price)"},
    {"clear", (PyCFunction)book_clear, METH_NOARGS, "clear(): remove every level"},
    {"best_bid", (PyCFunction)book_best_bid, METH_NOARGS, "best_bid() -> (price, qty) or None"},
    {"best_ask", (PyCFunction)book_best_ask, METH_NOARGS, "best_ask() -> (price, qty) or None"},
    {"top", (PyCFunction)book_top, METH_NOARGS,
     "top() -> (bid price, bid qty, ask price, ask qty) of the best levels; 0, 0 for an empty side"},
    {"depth", (PyCFunction)(void (*)(void))book_depth, METH_VARARGS | METH_KEYWORDS,
     "depth(side, levels=5) -> the best `levels` (price, qty) pairs, best first"},
    {"is_crossed", (PyCFunction)book_is_crossed, METH_NOARGS, "is_crossed() -> best bid at or above best ask"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef book_members[] = {
    {"tick", T_LONGLONG, offsetof(L2Book, tick), READONLY, "price tick, 1e-8 units"},
    {"window", T_LONGLONG, offsetof(L2Book, window), READONLY, "levels per ladder"},
    {"crossed_fixes", T_LONGLONG, offsetof(L2Book, crossed_fixes), READONLY, "times the crossed-book guard fired"},
    {"datagrams", T_ULONGLONG, offsetof(L2Book, datagrams), READONLY, "datagrams decode() applied to this book"},
    {"last_seq", T_ULONGLONG, offsetof(L2Book, last_seq), READONLY, "the highest feed sequence number of them"},
    {"gaps", T_ULONGLONG, offsetof(L2Book, gaps), READONLY, "datagrams missing from the feed's sequence"},
    {"duplicates", T_ULONGLONG, offsetof(L2Book, duplicates), READONLY, "datagrams with the last one's seq again"},
    {"regressions", T_ULONGLONG, offsetof(L2Book, regressions), READONLY,
     "datagrams with a seq below the last one's (late, or the feed restarted)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject L2BookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.book.L2Book",
    .tp_doc = "L2Book(tick, window=1 << 14): aggregate quantity per price level, per side",
    .tp_basicsize = sizeof(L2Book),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = book_new,
    .tp_dealloc = (destructor)book_dealloc,
    .tp_methods = book_methods,
    .tp_members = book_members,
};

/* -- decode: one market-data datagram ------------------------------------------------ */

#define LOAD(type, p) ({ type value_; memcpy(&value_, (p), sizeof value_); value_; })

/* The reason a datagram cannot be used, or NULL. */
static const char *header_problem(const unsigned char *p, Py_ssize_t size) {
    if (size < wm.header_size) return "short datagram";
    if (LOAD(uint16_t, p) != wm.magic) return "unknown magic";
    if (p[wm.version_at] != wm.version || p[wm.type_at] != wm.md_type) return "unknown version or type";
    Py_ssize_t length = LOAD(uint16_t, p + wm.length_at);
    Py_ssize_t expected = wm.header_size + wm.update_size * LOAD(uint16_t, p + wm.n_updates_at)
                          + wm.trade_size * LOAD(uint16_t, p + wm.n_trades_at);
    if (length != size || expected != length) return "length mismatch";
    return NULL;
}

/* set_layout(fields): the WM layout, as the tuple WmMarketData.book_layout gives it. */
static PyObject *md_set_layout(PyObject *module, PyObject *fields) {
    Py_ssize_t *slot[] = {&wm.magic, &wm.version_at, &wm.version, &wm.type_at, &wm.md_type, &wm.length_at,
                          &wm.venue_at, &wm.seq_at, &wm.instrument_at, &wm.n_updates_at, &wm.n_trades_at,
                          &wm.send_ts_at, &wm.header_size, &wm.update_size, &wm.trade_size, &wm.side_at,
                          &wm.action_at, &wm.set_action, &wm.price_at, &wm.qty_at, &wm.trade_price_at,
                          &wm.trade_qty_at};
    const Py_ssize_t count = sizeof slot / sizeof slot[0];
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != count)
        return PyErr_Format(PyExc_ValueError, "set_layout takes a tuple of %zd integers", count);
    for (Py_ssize_t k = 0; k < count; k++) {
        *slot[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, k));
        if (*slot[k] == -1 && PyErr_Occurred()) return NULL;
        if (*slot[k] < 0) return PyErr_Format(PyExc_ValueError, "set_layout: field %zd is negative", k);
    }
    /* every field read must lie inside its record: (offset, width, record size) */
    Py_ssize_t reads[][3] = {{0, 2, wm.header_size}, {wm.version_at, 1, wm.header_size},
        {wm.type_at, 1, wm.header_size}, {wm.length_at, 2, wm.header_size}, {wm.venue_at, 2, wm.header_size},
        {wm.seq_at, 8, wm.header_size}, {wm.instrument_at, 4, wm.header_size},
        {wm.n_updates_at, 2, wm.header_size}, {wm.n_trades_at, 2, wm.header_size},
        {wm.send_ts_at, 8, wm.header_size}, {wm.side_at, 1, wm.update_size}, {wm.action_at, 1, wm.update_size},
        {wm.price_at, 8, wm.update_size}, {wm.qty_at, 8, wm.update_size}, {wm.trade_price_at, 8, wm.trade_size},
        {wm.trade_qty_at, 8, wm.trade_size}};
    for (size_t k = 0; k < sizeof reads / sizeof reads[0]; k++)
        if (reads[k][0] + reads[k][1] > reads[k][2])
            return PyErr_Format(PyExc_ValueError, "set_layout: a field at %zd runs past its %zd-byte record",
                                reads[k][0], reads[k][2]);
    wm.known = 1;
    Py_RETURN_NONE;
}

/* The book of (venue, instrument) from `books`: a dict (its __missing__ makes new books), or any mapping. */
static L2Book *book_of(PyObject *books, unsigned venue, unsigned long instrument) {
    PyObject *key = Py_BuildValue("(Ik)", venue, instrument);
    if (!key) return NULL;
    PyObject *book = PyDict_CheckExact(books) ? Py_XNewRef(PyDict_GetItemWithError(books, key)) : NULL;
    if (!book && !PyErr_Occurred()) book = PyObject_GetItem(books, key);
    Py_DECREF(key);
    if (book && !PyObject_TypeCheck(book, &L2BookType)) {
        PyErr_Format(PyExc_TypeError, "books[%u, %lu] is not an L2Book", venue, instrument);
        Py_CLEAR(book);
    }
    return (L2Book *)book;
}

static PyObject *tuple_of_int64(const int64_t *fields, int count, int first_unsigned, int last_unsigned) {
    PyObject *out = PyTuple_New(count);
    if (!out) return NULL;
    for (int k = 0; k < count; k++) {
        PyObject *field = (k >= first_unsigned && k <= last_unsigned) ? PyLong_FromUnsignedLongLong((uint64_t)fields[k])
                                                                      : PyLong_FromLongLong(fields[k]);
        if (!field) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, field);
    }
    return out;
}

/* Follows the feed's sequence: last_seq only moves forward, so a duplicate or a late datagram
 * is counted once and never reopens a gap. No arithmetic here can wrap, whatever seq holds. */
static void count_sequence(L2Book *b, uint64_t seq) {
    if (!b->datagrams || seq > b->last_seq) {
        if (b->datagrams) b->gaps += seq - b->last_seq - 1;
        b->last_seq = seq;
    } else if (seq == b->last_seq) {
        b->duplicates++;
    } else {
        b->regressions++;
    }
    b->datagrams++;
}

/* decode(payload, books, kernel_rx_ns, app_in) -> the MarketUpdate fields (engine.messages) */
static PyObject *md_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "decode takes 4 arguments (%zd given)", nargs);
    long long kernel_rx_ns = PyLong_AsLongLong(args[2]);
    if (kernel_rx_ns == -1 && PyErr_Occurred()) return NULL;
    unsigned long long app_in = PyLong_AsUnsignedLongLong(args[3]);
    if (app_in == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf;
    const char *problem = wm.known ? header_problem(p, view.len) : "no layout: engine.book sets it at import";
    if (problem) {
        PyBuffer_Release(&view);
        PyErr_SetString(DatagramError, problem);
        return NULL;
    }
    uint64_t seq = LOAD(uint64_t, p + wm.seq_at);
    unsigned venue = LOAD(uint16_t, p + wm.venue_at);
    unsigned long instrument = LOAD(uint32_t, p + wm.instrument_at);
    L2Book *b = book_of(args[1], venue, instrument);
    if (!b) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *entry = p + wm.header_size;
    for (int k = LOAD(uint16_t, p + wm.n_updates_at); k > 0; k--, entry += wm.update_size) {
        int64_t qty = LOAD(int64_t, entry + wm.qty_at);
        if (set_level(b, entry[wm.side_at], LOAD(int64_t, entry + wm.price_at),
                      entry[wm.action_at] == wm.set_action ? qty : 0) < 0) {
            PyBuffer_Release(&view);             /* the entries before this one stay applied */
            Py_DECREF(b);
            PyErr_SetString(DatagramError, "bad book update");
            return NULL;
        }
    }
    int64_t trade_price = 0, trade_qty = 0;
    if (LOAD(uint16_t, p + wm.n_trades_at)) {   /* the last trade entry */
        const unsigned char *trade = p + view.len - wm.trade_size;
        trade_price = LOAD(int64_t, trade + wm.trade_price_at);
        trade_qty = LOAD(int64_t, trade + wm.trade_qty_at);
    }
    count_sequence(b, seq);
    int64_t bid = b->best[BID], ask = b->best[ASK];
    int64_t fields[13] = {
        (int64_t)app_in, (int64_t)tsc_now(), kernel_rx_ns, (int64_t)seq, LOAD(int64_t, p + wm.send_ts_at), venue,
        (int64_t)instrument, bid >= 0 ? price_at(b, bid) : 0, bid >= 0 ? b->ladder[BID][bid] : 0,
        ask >= 0 ? price_at(b, ask) : 0, ask >= 0 ? b->ladder[ASK][ask] : 0, trade_price, trade_qty};
    PyBuffer_Release(&view);
    Py_DECREF(b);
    return tuple_of_int64(fields, 13, 0, 3);    /* app_in, publish TSC, kernel RX ns, seq: unsigned */
}

static PyMethodDef module_methods[] = {
    {"set_layout", md_set_layout, METH_O,
     "set_layout(fields): the WM datagram's layout (engine.protocol.md WmMarketData.book_layout)"},
    {"decode", (PyCFunction)(void (*)(void))md_decode, METH_FASTCALL,
     "decode(payload, books, kernel_rx_ns, app_in) -> MarketUpdate fields (app_in, publish TSC, kernel_rx_ns, seq, "
     "send_ts_ns, venue, instrument, bid price, bid qty, ask price, ask qty, trade price, trade qty); "
     "DatagramError(reason) if it cannot be used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_book", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__book(void) {
    if (PyType_Ready(&L2BookType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    BookError = PyErr_NewExceptionWithDoc(
        "engine.book.BookError", "An update the book cannot apply (off the tick grid, negative quantity, bad side).",
        PyExc_ValueError, NULL);
    DatagramError = PyErr_NewExceptionWithDoc(
        "engine.book.DatagramError", "A market-data datagram that cannot be used; the message is the drop reason.",
        PyExc_ValueError, NULL);
    if (!BookError || !DatagramError || PyModule_AddObjectRef(m, "BookError", BookError) < 0 ||
        PyModule_AddObjectRef(m, "DatagramError", DatagramError) < 0 ||
        PyModule_AddObjectRef(m, "L2Book", (PyObject *)&L2BookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
