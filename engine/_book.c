/*
 * engine._book: the books (engine.book re-exports L2Book, ItchOrders, BookError and the decoders).
 *
 * Per side a ladder of int64 quantities indexed by grid step: index i is the price
 * base + i * grid, where the grid is the coarsest one every price placed so far lies on
 * (the gcd of their differences: a multiple of the tick, often the tick). A level update
 * is one store; the best index of a side moves by a short scan only when the best level
 * empties. When a price falls outside the window, or between its steps, the window
 * re-centres on all levels and that price on the grid they share, doubling while it is
 * narrower than twice their span, up to LADDER_MAX_LEVELS: a price farther from the levels
 * than that allows is refused (BookError, the book unchanged), and decode() drops its
 * datagram as "price out of range".
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
 * decode_itch(payload, books, orders, venue, kernel_rx_ns, app_in) is the same for a MoldUDP64 packet of
 * ITCH 5.0 messages (offsets from engine.protocol.itch50, through set_itch_layout): an L3 book, each
 * live order kept by (stock locate, order ref) in `orders` (ItchOrders: open addressing, bounded at
 * creation) and its shares summed into the ladder of books[venue, locate], with no crossed-book guard.
 * It returns one MarketUpdate per instrument whose top moved or that traded; a message it cannot use
 * is counted in orders.dropped by reason and dropped.
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
/* The most levels a ladder grows to by itself: 8 MiB a side, a span of 2^19 grid steps between the book's
 * lowest and highest levels (5,242.88 at a tick of 0.01). Unbounded, one far price on the grid made a window
 * of 2^28 levels (a second of calloc and scans per datagram, 4 GiB of address space), and levels near both
 * of its ends made each later re-centre copy, and so touch, every page between them (issue 16). The grid
 * keeps a book with a finer tick than its prices use (tick 1, prices in cents) as small as its prices need. */
#define LADDER_MAX_LEVELS ((int64_t)1 << 20)
/* place_level's result for a price it refuses as out of range (BookError set); other failures are -1 */
#define OUT_OF_RANGE (-2)

static PyObject *BookError, *DatagramError;

typedef struct {
    PyObject_HEAD
    int64_t tick;
    int64_t window;            /* levels per ladder */
    int has_base;              /* false until the first non-zero quantity */
    int64_t anchor;            /* the price of that quantity: every price placed is anchor + k * grid */
    int64_t grid;              /* price step of the ladder, a multiple of tick; 0 while only the anchor was placed
                                * (then index window / 2 is the anchor's and base the anchor) */
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
static inline wide_t wide_floor_div(wide_t a, wide_t b) {
    wide_t q = a / b;
    return (a % b < 0) ? q - 1 : q;
}

/* The price of ladder index i (with grid 0, the anchor's: base). */
static inline int64_t price_at(const L2Book *b, int64_t i) { return b->base + i * b->grid; }

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

static wide_t wide_gcd(wide_t a, wide_t b) {           /* a, b >= 0; gcd(0, b) = b */
    while (b) {
        wide_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* Lay the ladder out again so that every level and `price` fit on the grid they share: the window moved,
 * grown (doubling) while narrower than twice their span, its step the gcd of the grid and price - anchor.
 * Only the levels are copied, so no page between them is touched. 0 with *index the price's; OUT_OF_RANGE
 * (BookError, the book unchanged) if that needs more than LADDER_MAX_LEVELS levels or prices beyond int64;
 * -1 if out of memory. */
static int relayout(L2Book *b, int64_t price, int64_t *index) {
    wide_t difference = (wide_t)price - b->anchor;
    wide_t grid = wide_gcd(b->grid, difference < 0 ? -difference : difference);   /* > 0: price != anchor */
    int64_t first[3], last[3];
    wide_t low = price, high = price;
    for (int side = BID; side <= ASK; side++) {
        first[side] = lowest_level(b, side);
        last[side] = highest_level(b, side);
        if (first[side] < 0) continue;
        wide_t first_price = price_at(b, first[side]), last_price = price_at(b, last[side]);   /* real levels */
        if (first_price < low) low = first_price;
        if (last_price > high) high = last_price;
    }
    wide_t span = (high - low) / grid + 1;
    int64_t window = b->window;
    while (window < 2 * span) {
        if (window >= LADDER_MAX_LEVELS || window > MAX_WINDOW / 2) {
            PyErr_Format(BookError, "price %lld is too far from the book's levels: the ladder would need more "
                         "than %lld levels", (long long)price, (long long)LADDER_MAX_LEVELS);
            return OUT_OF_RANGE;
        }
        window *= 2;
    }
    /* centred on low..high, on the grid through the anchor */
    wide_t middle = wide_floor_div(low + high, 2);
    wide_t new_base = b->anchor + (wide_floor_div(middle - b->anchor, grid) - window / 2) * grid;
    if (new_base < INT64_MIN || high - new_base > INT64_MAX) {
        PyErr_Format(BookError, "price %lld is out of range for a book with tick %lld", (long long)price,
                     (long long)b->tick);
        return OUT_OF_RANGE;
    }
    int64_t *moved[3] = {NULL, calloc((size_t)window, sizeof(int64_t)), calloc((size_t)window, sizeof(int64_t))};
    if (!moved[BID] || !moved[ASK]) {
        free(moved[BID]);
        free(moved[ASK]);
        PyErr_NoMemory();
        return -1;
    }
    for (int side = BID; side <= ASK; side++) {
        const int64_t *ladder = b->ladder[side];
        for (int64_t i = first[side]; i >= 0 && i <= last[side]; i++)
            if (ladder[i]) moved[side][(int64_t)((price_at(b, i) - new_base) / grid)] = ladder[i];
        if (b->best[side] >= 0) b->best[side] = (int64_t)((price_at(b, b->best[side]) - new_base) / grid);
        free(b->ladder[side]);
        b->ladder[side] = moved[side];
    }
    b->base = (int64_t)new_base;
    b->grid = (int64_t)grid;
    b->window = window;
    *index = (int64_t)((price - new_base) / grid);
    return 0;
}

/* -- updates ------------------------------------------------------------------------ */

/* Set the quantity at a price; qty 0 deletes the level. With `guard`, a new best that crosses the
 * other side clears what it crosses (an L2 feed's missed delete); the L3 book's levels are sums of
 * live orders, so it places them as they are. 0; OUT_OF_RANGE with BookError set for a price too far
 * from the levels (the book unchanged); -1 with BookError (or MemoryError) set otherwise. */
static inline __attribute__((always_inline)) int place_level(L2Book *b, long side, int64_t price, int64_t qty,
                                                             int guard) {
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
        b->has_base = 1;
        b->anchor = b->base = price;              /* grid 0: the anchor alone, at index window / 2 */
    }
    int64_t grid = b->grid, offset, i;
    if (!grid || __builtin_sub_overflow(price, b->base, &offset) || offset % grid || (i = offset / grid) < 0 ||
        i >= b->window) {
        if (!grid && price == b->anchor) {
            i = b->window / 2;
        } else {
            if (!qty) return 0;                   /* every level lies in the window, on its grid: none here */
            int moved = relayout(b, price, &i);
            if (moved < 0) return moved;
        }
    }
    b->ladder[side][i] = qty;
    int64_t best = b->best[side];
    if (qty) {
        if (best < 0 || (side == BID ? i > best : i < best)) {
            b->best[side] = i;
            if (guard) uncross(b, side, i);
        }
    } else if (i == best) {
        b->best[side] = scan_from(b, side, i);
    }
    return 0;
}

static int set_level(L2Book *b, long side, int64_t price, int64_t qty) { return place_level(b, side, price, qty, 1); }

/* -- queries ------------------------------------------------------------------------ */

static PyObject *level_or_none(const L2Book *b, int side) {
    int64_t i = b->best[side];
    if (i < 0) Py_RETURN_NONE;
    return Py_BuildValue("(LL)", (long long)price_at(b, i), (long long)b->ladder[side][i]);
}

/* (bid price, bid qty, ask price, ask qty) into top; 0, 0 for an empty side. */
static inline void read_top(const L2Book *b, int64_t top[4]) {
    int64_t bid = b->best[BID], ask = b->best[ASK];
    top[0] = bid >= 0 ? price_at(b, bid) : 0;
    top[1] = bid >= 0 ? b->ladder[BID][bid] : 0;
    top[2] = ask >= 0 ? price_at(b, ask) : 0;
    top[3] = ask >= 0 ? b->ladder[ASK][ask] : 0;
}

/* The top as a tuple. Built by hand: Py_BuildValue costs more. */
static PyObject *top_tuple(const L2Book *b) {
    int64_t fields[4];
    read_top(b, fields);
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
    {"grid", T_LONGLONG, offsetof(L2Book, grid), READONLY,
     "price step between ladder levels: the gcd of the prices' differences, a multiple of tick (0: one price)"},
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
    .tp_doc = "L2Book(tick, window=1 << 14): aggregate quantity per price level, per side; the window grows to "
              "at most 1 << 20 levels (a price farther from the levels is refused)",
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
    /* the first two entries are the best bid, then the best ask (engine.protocol.md) */
    if (LOAD(uint16_t, p + wm.n_updates_at) < 2) return "too few updates";
    if (p[wm.header_size + wm.side_at] != BID || p[wm.header_size + wm.update_size + wm.side_at] != ASK)
        return "best bid and ask not first";
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
        int placed = set_level(b, entry[wm.side_at], LOAD(int64_t, entry + wm.price_at),
                               entry[wm.action_at] == wm.set_action ? qty : 0);
        if (placed < 0) {
            PyBuffer_Release(&view);             /* the entries before this one stay applied */
            Py_DECREF(b);
            PyErr_SetString(DatagramError, placed == OUT_OF_RANGE ? "price out of range" : "bad book update");
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
    int64_t fields[13] = {(int64_t)app_in, (int64_t)tsc_now(), kernel_rx_ns, (int64_t)seq,
                          LOAD(int64_t, p + wm.send_ts_at), venue, (int64_t)instrument, 0, 0, 0, 0, trade_price,
                          trade_qty};
    read_top(b, fields + 7);
    PyBuffer_Release(&view);
    Py_DECREF(b);
    return tuple_of_int64(fields, 13, 0, 3);    /* app_in, publish TSC, kernel RX ns, seq: unsigned */
}

/* -- decode_itch: a MoldUDP64 packet of ITCH 5.0 into the L3 book ---------------------------- */

/* What the L3 book does with a message type (ITCH_UNKNOWN: a type it does not know). */
enum { ITCH_UNKNOWN, ITCH_NO_BOOK, ITCH_ADD, ITCH_EXECUTED, ITCH_EXECUTED_PRICE, ITCH_CANCEL, ITCH_DELETE,
       ITCH_REPLACE, ITCH_TRADE };

/* set_itch_layout's messages, in the tuple's order: each is its type byte, its size, then (offset, width)
 * of the stock locate, the timestamp and of the fields below, with the widths this decoder reads. */
static const struct {
    int kind, fields, width[4];
} ITCH_DECLARED[] = {
    {ITCH_ADD, 4, {8, 1, 4, 4}},              /* Add Order: order ref, side, shares, price */
    {ITCH_ADD, 4, {8, 1, 4, 4}},              /* Add Order with MPID: the same */
    {ITCH_EXECUTED, 2, {8, 4}},               /* Order Executed: order ref, executed shares */
    {ITCH_EXECUTED_PRICE, 4, {8, 4, 1, 4}},   /* ... With Price: order ref, executed shares, printable, price */
    {ITCH_CANCEL, 2, {8, 4}},                 /* Order Cancel: order ref, cancelled shares */
    {ITCH_DELETE, 1, {8}},                    /* Order Delete: order ref */
    {ITCH_REPLACE, 4, {8, 8, 4, 4}},          /* Order Replace: original ref, new ref, shares, price */
    {ITCH_TRADE, 2, {4, 4}},                  /* Trade (non-cross): shares, price */
    {ITCH_NO_BOOK, 0, {0}},                   /* System Event */
    {ITCH_NO_BOOK, 0, {0}},                   /* Stock Directory */
};
#define STOCK_LOCATES 65536         /* a u16 */

typedef struct {
    int kind;
    Py_ssize_t size, locate_at, stamp_at, at[4];
} ItchMessage;

/* ITCH 5.0 in MoldUDP64, from its declaration (engine.protocol.itch50, Itch50MarketData.book_layout), given
 * once by engine.book at import. */
static struct {
    int known;
    Py_ssize_t header_size, seq_at, count_at, block_bytes;
    int64_t price_scale;
    unsigned heartbeat, end_of_session;
    unsigned char buy, sell, printable;
    ItchMessage message[256];    /* by type byte */
} itch;

/* Why a message (or the rest of a packet) was dropped; the names are ItchOrders.dropped's keys. */
enum { DROP_COUNT_BEYOND, DROP_PAST_DATAGRAM, DROP_ZERO_LENGTH, DROP_TRAILING_BYTES, DROP_UNKNOWN_TYPE,
       DROP_WRONG_LENGTH, DROP_UNKNOWN_INSTRUMENT, DROP_UNKNOWN_REF, DROP_DUPLICATE_REF, DROP_MAP_FULL,
       DROP_BAD_SIDE, DROP_OFF_GRID, DROP_EXCESS_SHARES, DROP_BOOK_REFUSED, DROP_NOT_MOLD, DROPS };
static const char *const DROP_REASONS[DROPS] = {
    "count beyond messages", "message past datagram", "zero-length message", "bytes after messages",
    "unknown message type", "wrong message length", "unknown instrument", "unknown order ref",
    "duplicate order ref", "order map full", "bad side", "price off the tick grid", "shares beyond the order",
    "book refused the price", "session not printable"};

typedef struct {
    uint64_t ref;
    int64_t price;
    uint32_t shares;
    uint16_t locate;
    uint8_t side;                /* BID or ASK; 0 marks a free slot */
} Order;

typedef struct {
    L2Book *book;                /* books[venue, locate] (a reference), NULL if the config names none */
    uint32_t packet;             /* the packet that last touched it */
    uint32_t touched;            /* its entry in ItchOrders.touched in that packet */
    uint8_t looked_up;
} Instrument;

typedef struct {                 /* an instrument a packet touched */
    L2Book *book;
    uint64_t seq;                /* of the last message applied to it */
    int64_t stamp;               /* that message's Timestamp */
    int64_t top[4];              /* after it */
    int64_t trade_price, trade_qty;
    uint16_t locate;
    uint8_t changed;             /* its top moved or it traded: it has an update */
} Touched;

typedef struct {
    PyObject_HEAD
    Order *orders;               /* open addressing, linear probing; at most half full */
    size_t capacity, count;
    Py_ssize_t max_orders;
    Instrument *instruments;     /* by stock locate, for the books and venue of the last call */
    PyObject *books;
    long venue;
    Touched *touched;            /* the current packet's instruments, in order of first touch */
    uint32_t *changed;           /* indices into touched, in order of first change */
    size_t touched_capacity, n_touched, n_changed;
    uint32_t packet;
    int busy;
    unsigned long long drops[DROPS];
    unsigned long long packets, messages;
    int started;
    uint64_t next_seq, last_seq;
    unsigned long long gaps, duplicates, regressions;
} ItchOrders;

static PyTypeObject ItchOrdersType;

static inline unsigned load_be16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline uint32_t load_be32(const unsigned char *p) { return __builtin_bswap32(LOAD(uint32_t, p)); }
static inline uint64_t load_be64(const unsigned char *p) { return __builtin_bswap64(LOAD(uint64_t, p)); }
static inline int64_t load_be48(const unsigned char *p) {
    int64_t value = 0;
    for (int k = 0; k < 6; k++) value = value << 8 | p[k];
    return value;
}
static inline int64_t price_of(const unsigned char *p) { return (int64_t)load_be32(p) * itch.price_scale; }
static inline int side_of(unsigned char code) { return code == itch.buy ? BID : code == itch.sell ? ASK : 0; }
static inline int drop(ItchOrders *o, int reason) {
    o->drops[reason]++;
    return 0;
}

/* -- the order map -- */

static inline size_t order_slot(const ItchOrders *o, uint64_t ref, unsigned locate) {
    uint64_t x = ref ^ (locate * 0x9E3779B97F4A7C15ULL);     /* splitmix64's finaliser */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return (x ^ (x >> 31)) & (o->capacity - 1);
}

static Order *find_order(ItchOrders *o, uint64_t ref, unsigned locate) {
    for (size_t i = order_slot(o, ref, locate);; i = (i + 1) & (o->capacity - 1)) {
        Order *e = &o->orders[i];
        if (!e->side) return NULL;
        if (e->ref == ref && e->locate == locate) return e;
    }
}

/* Into a free slot; the caller has made room. */
static void put_order(ItchOrders *o, uint64_t ref, unsigned locate, int side, int64_t price, uint32_t shares) {
    size_t i = order_slot(o, ref, locate);
    while (o->orders[i].side) i = (i + 1) & (o->capacity - 1);
    o->orders[i] = (Order){ref, price, shares, (uint16_t)locate, (uint8_t)side};
    o->count++;
}

/* Room for one more order, the table kept at most half full: 0, or -1 if it cannot grow (no exception). */
static int make_room(ItchOrders *o) {
    if (2 * (o->count + 1) <= o->capacity) return 0;
    Order *old = o->orders;
    size_t old_capacity = o->capacity;
    Order *table = calloc(2 * old_capacity, sizeof(Order));
    if (!table) return -1;
    o->orders = table;
    o->capacity = 2 * old_capacity;
    o->count = 0;
    for (size_t i = 0; i < old_capacity; i++)
        if (old[i].side) put_order(o, old[i].ref, old[i].locate, old[i].side, old[i].price, old[i].shares);
    free(old);
    return 0;
}

/* Backward-shift deletion: the entries after it that may move closer to their home slot do, so no
 * tombstones are left. */
static void remove_order(ItchOrders *o, Order *e) {
    size_t mask = o->capacity - 1, hole = (size_t)(e - o->orders);
    for (size_t i = (hole + 1) & mask; o->orders[i].side; i = (i + 1) & mask) {
        size_t home = order_slot(o, o->orders[i].ref, o->orders[i].locate);
        if (((i - hole) & mask) <= ((i - home) & mask)) {     /* the hole lies on its probe path */
            o->orders[hole] = o->orders[i];
            hole = i;
        }
    }
    o->orders[hole].side = 0;
    o->count--;
}

/* -- the levels: sums of the live orders' shares -- */

static int64_t level_qty(const L2Book *b, int side, int64_t price) {
    int64_t offset, i;
    if (!b->has_base) return 0;
    if (!b->grid) return price == b->anchor ? b->ladder[side][b->window / 2] : 0;
    if (__builtin_sub_overflow(price, b->base, &offset) || offset % b->grid) return 0;
    i = offset / b->grid;
    return i >= 0 && i < b->window ? b->ladder[side][i] : 0;
}

/* `delta` shares at a price on the tick grid: 0, or -1 with BookError (or MemoryError) set. */
static int change_level(L2Book *b, int side, int64_t price, int64_t delta) {
    if (!delta) return 0;
    return place_level(b, side, price, level_qty(b, side, price) + delta, 0);
}

static int add_order(ItchOrders *o, L2Book *b, unsigned locate, uint64_t ref, int side, uint32_t shares,
                     int64_t price) {
    if (price % b->tick) return drop(o, DROP_OFF_GRID);
    if (find_order(o, ref, locate)) return drop(o, DROP_DUPLICATE_REF);
    if ((Py_ssize_t)o->count >= o->max_orders || make_room(o) < 0) return drop(o, DROP_MAP_FULL);
    if (change_level(b, side, price, shares) < 0) {
        PyErr_Clear();
        return drop(o, DROP_BOOK_REFUSED);
    }
    put_order(o, ref, locate, side, price, shares);
    return 1;
}

/* `shares` off a live order (executed, cancelled, or all of them deleted); it goes at 0. 1 if applied. */
static int reduce_order(ItchOrders *o, L2Book *b, Order *e, uint32_t shares) {
    if (shares > e->shares) return drop(o, DROP_EXCESS_SHARES);
    if (change_level(b, e->side, e->price, -(int64_t)shares) < 0) {   /* its level holds it: cannot fail */
        PyErr_Clear();
        return drop(o, DROP_BOOK_REFUSED);
    }
    e->shares -= shares;
    if (!e->shares) remove_order(o, e);
    return 1;
}

/* -- the instruments of a venue -- */

/* The instruments table caches books[venue, locate]; other books or another venue start it afresh. */
static void use_books(ItchOrders *o, PyObject *books, long venue) {
    if (books == o->books && venue == o->venue) return;
    for (size_t k = 0; k < STOCK_LOCATES; k++) {
        Py_CLEAR(o->instruments[k].book);
        o->instruments[k].looked_up = 0;
    }
    Py_INCREF(books);
    Py_XSETREF(o->books, books);
    o->venue = venue;
}

/* *book = the locate's book, or NULL for an instrument the config does not name (looked up once).
 * -1 if the books mapping failed otherwise (an exception set). */
static int instrument_book(ItchOrders *o, unsigned locate, L2Book **book) {
    Instrument *in = &o->instruments[locate];
    if (!in->looked_up) {
        L2Book *found = book_of(o->books, (unsigned)o->venue, locate);
        if (!found) {
            if (!PyErr_ExceptionMatches(DatagramError) && !PyErr_ExceptionMatches(PyExc_KeyError)) return -1;
            PyErr_Clear();
        }
        in->book = found;
        in->looked_up = 1;
    }
    *book = in->book;
    return 0;
}

static Touched *touch(ItchOrders *o, unsigned locate, L2Book *b) {
    Instrument *in = &o->instruments[locate];
    if (in->packet != o->packet) {
        in->packet = o->packet;
        in->touched = (uint32_t)o->n_touched;
        Touched *t = &o->touched[o->n_touched++];
        t->book = b;
        t->locate = (uint16_t)locate;
        t->changed = 0;
        t->trade_price = t->trade_qty = 0;
        read_top(b, t->top);
    }
    return &o->touched[in->touched];
}

static void touched_by(ItchOrders *o, Touched *t, uint64_t seq, int64_t stamp, int traded) {
    int64_t top[4];
    t->seq = seq;
    t->stamp = stamp;
    read_top(t->book, top);
    if (traded || memcmp(top, t->top, sizeof top)) {
        memcpy(t->top, top, sizeof top);
        if (!t->changed) {
            t->changed = 1;
            o->changed[o->n_changed++] = (uint32_t)(t - o->touched);
        }
    }
}

/* Room for `n` touched instruments: 0, or -1 with MemoryError. */
static int reserve_touched(ItchOrders *o, size_t n) {
    if (n <= o->touched_capacity) return 0;
    Touched *touched = PyMem_Realloc(o->touched, n * sizeof(Touched));
    if (touched) o->touched = touched;
    uint32_t *changed = touched ? PyMem_Realloc(o->changed, n * sizeof(uint32_t)) : NULL;
    if (!changed) {
        PyErr_NoMemory();
        return -1;
    }
    o->changed = changed;
    o->touched_capacity = n;
    return 0;
}

/* One message, its length checked to lie in the packet, applied to its book; drops are counted.
 * 0, or -1 with an exception set (the books mapping failed: not the feed's fault). */
static int apply_message(ItchOrders *o, const unsigned char *m, Py_ssize_t length, uint64_t seq) {
    const ItchMessage *layout = &itch.message[m[0]];
    if (layout->kind == ITCH_UNKNOWN) return drop(o, DROP_UNKNOWN_TYPE);
    if (length != layout->size) return drop(o, DROP_WRONG_LENGTH);
    if (layout->kind == ITCH_NO_BOOK) return 0;
    unsigned locate = load_be16(m + layout->locate_at);
    L2Book *b;
    if (instrument_book(o, locate, &b) < 0) return -1;
    if (!b) return drop(o, DROP_UNKNOWN_INSTRUMENT);
    Touched *t = touch(o, locate, b);
    const Py_ssize_t *at = layout->at;
    int traded = 0;
    switch (layout->kind) {
    case ITCH_ADD: {
        int side = side_of(m[at[1]]);
        if (!side) return drop(o, DROP_BAD_SIDE);
        if (!add_order(o, b, locate, load_be64(m + at[0]), side, load_be32(m + at[2]), price_of(m + at[3])))
            return 0;
        break;
    }
    case ITCH_EXECUTED:
    case ITCH_EXECUTED_PRICE:
    case ITCH_CANCEL:
    case ITCH_DELETE: {
        Order *e = find_order(o, load_be64(m + at[0]), locate);
        if (!e) return drop(o, DROP_UNKNOWN_REF);
        int64_t price = e->price;
        uint32_t shares = layout->kind == ITCH_DELETE ? e->shares : load_be32(m + at[1]);
        if (!reduce_order(o, b, e, shares)) return 0;
        if (layout->kind == ITCH_EXECUTED || (layout->kind == ITCH_EXECUTED_PRICE && m[at[2]] == itch.printable)) {
            t->trade_price = layout->kind == ITCH_EXECUTED ? price : price_of(m + at[3]);
            t->trade_qty = shares;
            traded = 1;
        }
        break;
    }
    case ITCH_REPLACE: {
        uint64_t original = load_be64(m + at[0]), ref = load_be64(m + at[1]);
        uint32_t shares = load_be32(m + at[2]);
        int64_t price = price_of(m + at[3]);
        Order *e = find_order(o, original, locate);
        if (!e) return drop(o, DROP_UNKNOWN_REF);
        if (price % b->tick) return drop(o, DROP_OFF_GRID);
        if (ref != original && find_order(o, ref, locate)) return drop(o, DROP_DUPLICATE_REF);
        int side = e->side;
        if (!reduce_order(o, b, e, e->shares)) return 0;
        if (change_level(b, side, price, shares) < 0) {    /* the original is gone either way */
            PyErr_Clear();
            drop(o, DROP_BOOK_REFUSED);
        } else {
            put_order(o, ref, locate, side, price, shares);   /* the original's slot: no room needed */
        }
        break;
    }
    case ITCH_TRADE:
        t->trade_price = price_of(m + at[1]);
        t->trade_qty = load_be32(m + at[0]);
        traded = 1;
        break;
    }
    touched_by(o, t, seq, load_be48(m + layout->stamp_at), traded);
    return 0;
}

/* The feed's MoldUDP64 sequence, counted as decode() counts WM's: messages skipped (gaps), the last
 * packet again (duplicates), packets that start below the next expected seq (regressions). Every packet
 * is applied; none of the counts can wrap. */
static void follow_sequence(ItchOrders *o, uint64_t seq, unsigned count) {
    uint64_t end = seq > UINT64_MAX - count ? UINT64_MAX : seq + count;
    if (o->started && seq > o->next_seq) o->gaps += seq - o->next_seq;
    else if (o->started && seq < o->next_seq) {
        if (seq == o->last_seq) o->duplicates++;
        else o->regressions++;
    }
    if (!o->started || end > o->next_seq) o->next_seq = end;
    o->started = 1;
    o->last_seq = seq;
}

static PyObject *changed_updates(ItchOrders *o, long venue, long long kernel_rx_ns, unsigned long long app_in) {
    PyObject *out = PyTuple_New((Py_ssize_t)o->n_changed);
    if (!out) return NULL;
    int64_t published = (int64_t)tsc_now();
    for (size_t k = 0; k < o->n_changed; k++) {
        const Touched *t = &o->touched[o->changed[k]];
        int64_t fields[13] = {(int64_t)app_in, published, kernel_rx_ns, (int64_t)t->seq, t->stamp, venue, t->locate,
                              t->top[0], t->top[1], t->top[2], t->top[3], t->trade_price, t->trade_qty};
        PyObject *update = tuple_of_int64(fields, 13, 0, 3);
        if (!update) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, (Py_ssize_t)k, update);
    }
    return out;
}

/* decode_itch(payload, books, orders, venue, kernel_rx_ns, app_in) -> a tuple of MarketUpdate fields */
static PyObject *itch_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) return PyErr_Format(PyExc_TypeError, "decode_itch takes 6 arguments (%zd given)", nargs);
    if (!PyObject_TypeCheck(args[2], &ItchOrdersType))
        return PyErr_Format(PyExc_TypeError, "decode_itch: orders must be an ItchOrders, not %.100s",
                            Py_TYPE(args[2])->tp_name);
    ItchOrders *o = (ItchOrders *)args[2];
    long venue = PyLong_AsLong(args[3]);
    if (venue == -1 && PyErr_Occurred()) return NULL;
    if (venue < 0 || venue > 0xFFFF)
        return PyErr_Format(PyExc_ValueError, "decode_itch: venue %ld is not a u16", venue);
    long long kernel_rx_ns = PyLong_AsLongLong(args[4]);
    if (kernel_rx_ns == -1 && PyErr_Occurred()) return NULL;
    unsigned long long app_in = PyLong_AsUnsignedLongLong(args[5]);
    if (app_in == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (o->busy) return PyErr_Format(PyExc_RuntimeError, "decode_itch: this ItchOrders is already decoding");
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf, *end = p + view.len;
    const char *problem = !itch.known ? "no layout: engine.book sets it at import"
                          : view.len < itch.header_size ? "short datagram" : NULL;
    if (problem) {
        PyBuffer_Release(&view);
        PyErr_SetString(DatagramError, problem);
        return NULL;
    }
    /* A session that is not printable ASCII is not MoldUDP64 (engine.protocol.itch50.frame_packets): random
     * bytes are not walked, nor is their seq followed (one such datagram made every later packet a regression). */
    int printable = 1;
    for (Py_ssize_t i = 0; i < itch.seq_at; i++) printable &= p[i] >= 0x20 && p[i] < 0x7F;
    unsigned count = load_be16(p + itch.count_at);
    if (!printable || count == itch.heartbeat || count == itch.end_of_session) {
        if (!printable) drop(o, DROP_NOT_MOLD);
        else if (view.len > itch.header_size) drop(o, DROP_TRAILING_BYTES);   /* they carry no blocks */
        PyBuffer_Release(&view);
        return PyTuple_New(0);
    }
    /* a message that can touch a book takes at least block_bytes + 1 bytes: no more of them than this */
    size_t most = (size_t)(view.len - itch.header_size) / (size_t)(itch.block_bytes + 1);
    if (reserve_touched(o, most < count ? most : count) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t seq = load_be64(p + itch.seq_at);
    o->busy = 1;                              /* from here the books mapping may run Python code */
    use_books(o, args[1], venue);
    follow_sequence(o, seq, count);
    o->packets++;
    if (++o->packet == 0) {                   /* the packet mark wrapped: no stale mark may match */
        for (size_t k = 0; k < STOCK_LOCATES; k++) o->instruments[k].packet = 0;
        o->packet = 1;
    }
    o->n_touched = o->n_changed = 0;
    const unsigned char *at = p + itch.header_size;
    int failed = 0;
    unsigned k;
    for (k = 0; k < count; k++) {
        if (end - at < itch.block_bytes) {
            drop(o, DROP_COUNT_BEYOND);            /* the rest of the packet */
            break;
        }
        Py_ssize_t length = load_be16(at);
        at += itch.block_bytes;
        if (length > end - at) {
            drop(o, DROP_PAST_DATAGRAM);           /* the rest of the packet */
            break;
        }
        const unsigned char *message = at;
        at += length;
        if (!length) {
            drop(o, DROP_ZERO_LENGTH);
            continue;
        }
        o->messages++;
        if (apply_message(o, message, length, seq + k) < 0) {
            failed = 1;
            break;
        }
    }
    if (k == count && at < end) drop(o, DROP_TRAILING_BYTES);
    o->busy = 0;
    PyBuffer_Release(&view);
    return failed ? NULL : changed_updates(o, venue, kernel_rx_ns, app_in);
}

/* set_itch_layout(fields): the layout, as the tuple Itch50MarketData.book_layout gives it. */
static int next_field(PyObject *fields, Py_ssize_t *k, Py_ssize_t *value) {
    if (*k >= PyTuple_GET_SIZE(fields)) {
        PyErr_SetString(PyExc_ValueError, "set_itch_layout: the tuple ends too soon");
        return -1;
    }
    *value = PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, *k));
    if (*value == -1 && PyErr_Occurred()) return -1;
    if (*value < 0) {
        PyErr_Format(PyExc_ValueError, "set_itch_layout: field %zd is negative", *k);
        return -1;
    }
    (*k)++;
    return 0;
}

/* The next (offset, width): the width must be `width` and the field inside its `size`-byte record. */
static int next_place(PyObject *fields, Py_ssize_t *k, Py_ssize_t width, Py_ssize_t size, Py_ssize_t *at) {
    Py_ssize_t declared;
    if (next_field(fields, k, at) < 0 || next_field(fields, k, &declared) < 0) return -1;
    if (declared != width || *at + width > size) {
        PyErr_Format(PyExc_ValueError, "set_itch_layout: the field at %zd is %zd bytes (the decoder reads %zd) "
                     "or runs past its %zd-byte record", *at, declared, width, size);
        return -1;
    }
    return 0;
}

static PyObject *itch_set_layout(PyObject *module, PyObject *fields) {
    if (!PyTuple_Check(fields)) return PyErr_Format(PyExc_TypeError, "set_itch_layout takes a tuple of integers");
    Py_ssize_t k = 0, price_scale, heartbeat, end_of_session, buy, sell, printable;
    itch.known = 0;
    memset(itch.message, 0, sizeof itch.message);
    if (next_field(fields, &k, &itch.header_size) < 0 ||
        next_place(fields, &k, 8, itch.header_size, &itch.seq_at) < 0 ||
        next_place(fields, &k, 2, itch.header_size, &itch.count_at) < 0 ||
        next_field(fields, &k, &itch.block_bytes) < 0 || next_field(fields, &k, &price_scale) < 0 ||
        next_field(fields, &k, &heartbeat) < 0 || next_field(fields, &k, &end_of_session) < 0 ||
        next_field(fields, &k, &buy) < 0 || next_field(fields, &k, &sell) < 0 || next_field(fields, &k, &printable) < 0)
        return NULL;
    if (itch.block_bytes != 2 || price_scale < 1 || price_scale > INT64_MAX / UINT32_MAX || heartbeat > 0xFFFF ||
        end_of_session > 0xFFFF || buy > 0xFF || sell > 0xFF || printable > 0xFF || buy == sell)
        return PyErr_Format(PyExc_ValueError, "set_itch_layout: the block length, the price scale or a code is "
                            "out of range");
    itch.price_scale = price_scale;
    itch.heartbeat = (unsigned)heartbeat;
    itch.end_of_session = (unsigned)end_of_session;
    itch.buy = (unsigned char)buy;
    itch.sell = (unsigned char)sell;
    itch.printable = (unsigned char)printable;
    for (size_t n = 0; n < sizeof ITCH_DECLARED / sizeof ITCH_DECLARED[0]; n++) {
        Py_ssize_t type, size;
        if (next_field(fields, &k, &type) < 0 || next_field(fields, &k, &size) < 0) return NULL;
        if (type > 0xFF || itch.message[type].kind || size < 1 || size > 0xFFFF)
            return PyErr_Format(PyExc_ValueError, "set_itch_layout: message %zd: type %zd taken or out of range, "
                                "or size %zd", n, type, size);
        ItchMessage *message = &itch.message[type];
        message->size = size;
        if (next_place(fields, &k, 2, size, &message->locate_at) < 0 ||
            next_place(fields, &k, 6, size, &message->stamp_at) < 0)
            return NULL;
        for (int f = 0; f < ITCH_DECLARED[n].fields; f++)
            if (next_place(fields, &k, ITCH_DECLARED[n].width[f], size, &message->at[f]) < 0) return NULL;
        message->kind = ITCH_DECLARED[n].kind;
    }
    if (k != PyTuple_GET_SIZE(fields))
        return PyErr_Format(PyExc_ValueError, "set_itch_layout: %zd fields left over", PyTuple_GET_SIZE(fields) - k);
    itch.known = 1;
    Py_RETURN_NONE;
}

/* -- ItchOrders, the Python type -- */

static PyObject *orders_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_orders", NULL};
    Py_ssize_t max_orders;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:ItchOrders", kwlist, &max_orders)) return NULL;
    if (max_orders < 1 || (size_t)max_orders > SIZE_MAX / 4 / sizeof(Order))
        return PyErr_Format(PyExc_ValueError, "max_orders must be positive and addressable, got %zd", max_orders);
    ItchOrders *o = (ItchOrders *)type->tp_alloc(type, 0);
    if (!o) return NULL;
    o->max_orders = max_orders;
    o->venue = -1;
    o->capacity = 1 << 12;
    o->orders = calloc(o->capacity, sizeof(Order));
    o->instruments = calloc(STOCK_LOCATES, sizeof(Instrument));
    if (!o->orders || !o->instruments) {
        Py_DECREF(o);
        return PyErr_NoMemory();
    }
    return (PyObject *)o;
}

static void orders_dealloc(ItchOrders *o) {
    if (o->instruments)
        for (size_t k = 0; k < STOCK_LOCATES; k++) Py_XDECREF(o->instruments[k].book);
    Py_XDECREF(o->books);
    free(o->orders);
    free(o->instruments);
    PyMem_Free(o->touched);
    PyMem_Free(o->changed);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static Py_ssize_t orders_length(ItchOrders *o) { return (Py_ssize_t)o->count; }

static PyObject *orders_find(ItchOrders *o, PyObject *args) {
    unsigned int locate;
    unsigned long long ref;
    if (!PyArg_ParseTuple(args, "IK:find", &locate, &ref)) return NULL;
    if (locate >= STOCK_LOCATES) return PyErr_Format(PyExc_ValueError, "find: locate %u is not a u16", locate);
    Order *e = find_order(o, ref, locate);
    if (!e) Py_RETURN_NONE;
    return Py_BuildValue("(iLk)", e->side, (long long)e->price, (unsigned long)e->shares);
}

static PyObject *orders_dropped(ItchOrders *o, void *closure) {
    PyObject *out = PyDict_New();
    for (int reason = 0; out && reason < DROPS; reason++) {
        if (!o->drops[reason]) continue;
        PyObject *count = PyLong_FromUnsignedLongLong(o->drops[reason]);
        if (!count || PyDict_SetItemString(out, DROP_REASONS[reason], count) < 0) Py_CLEAR(out);
        Py_XDECREF(count);
    }
    return out;
}

static PyMethodDef orders_methods[] = {
    {"find", (PyCFunction)orders_find, METH_VARARGS,
     "find(locate, ref) -> (side, price, shares) of a live order, or None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef orders_getset[] = {
    {"dropped", (getter)orders_dropped, NULL, "messages (or rests of packets) dropped, by reason", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef orders_members[] = {
    {"max_orders", T_PYSSIZET, offsetof(ItchOrders, max_orders), READONLY, "the most live orders it holds"},
    {"packets", T_ULONGLONG, offsetof(ItchOrders, packets), READONLY, "packets with messages decode_itch took"},
    {"messages", T_ULONGLONG, offsetof(ItchOrders, messages), READONLY, "messages in them (not all applied)"},
    {"gaps", T_ULONGLONG, offsetof(ItchOrders, gaps), READONLY, "messages missing from the feed's sequence"},
    {"duplicates", T_ULONGLONG, offsetof(ItchOrders, duplicates), READONLY, "packets with the last one's seq again"},
    {"regressions", T_ULONGLONG, offsetof(ItchOrders, regressions), READONLY,
     "packets starting below the next expected seq, other than duplicates"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods orders_sequence = {.sq_length = (lenfunc)orders_length};

static PyTypeObject ItchOrdersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine.book.ItchOrders",
    .tp_doc = "ItchOrders(max_orders): one ITCH feed's live orders by (stock locate, order ref), for decode_itch; "
              "an add past max_orders is dropped as 'order map full'",
    .tp_basicsize = sizeof(ItchOrders),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = orders_new,
    .tp_dealloc = (destructor)orders_dealloc,
    .tp_methods = orders_methods,
    .tp_members = orders_members,
    .tp_getset = orders_getset,
    .tp_as_sequence = &orders_sequence,
};

static PyMethodDef module_methods[] = {
    {"set_layout", md_set_layout, METH_O,
     "set_layout(fields): the WM datagram's layout (engine.protocol.md WmMarketData.book_layout)"},
    {"decode", (PyCFunction)(void (*)(void))md_decode, METH_FASTCALL,
     "decode(payload, books, kernel_rx_ns, app_in) -> MarketUpdate fields (app_in, publish TSC, kernel_rx_ns, seq, "
     "send_ts_ns, venue, instrument, bid price, bid qty, ask price, ask qty, trade price, trade qty); "
     "DatagramError(reason) if it cannot be used"},
    {"set_itch_layout", itch_set_layout, METH_O,
     "set_itch_layout(fields): ITCH 5.0 in MoldUDP64 (engine.protocol.itch50 Itch50MarketData.book_layout)"},
    {"decode_itch", (PyCFunction)(void (*)(void))itch_decode, METH_FASTCALL,
     "decode_itch(payload, books, orders, venue, kernel_rx_ns, app_in) -> a tuple of MarketUpdate fields, one per "
     "instrument whose top of book moved or that traded, in order of first change; bad messages are counted in "
     "orders.dropped and dropped; DatagramError(reason) for a packet shorter than the MoldUDP64 header"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_book", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__book(void) {
    if (PyType_Ready(&L2BookType) < 0 || PyType_Ready(&ItchOrdersType) < 0) return NULL;
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
        PyModule_AddObjectRef(m, "L2Book", (PyObject *)&L2BookType) < 0 ||
        PyModule_AddObjectRef(m, "ItchOrders", (PyObject *)&ItchOrdersType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
