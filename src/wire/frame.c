#include "wire/frame.h"

#include <string.h>

#include "qrpc/error.h"
#include "util/varint.h"
#include "wire/metadata.h"
#include "wire/stream_header.h"

/* Every frame type is described by the fields it carries, in wire order.
 * Decoder and encoder both walk this table, so the two cannot disagree about
 * a layout and no type has a hand-written codec of its own. */
enum {
  F_MSGID = 1u << 0,
  F_METHOD = 1u << 1,
  F_TIMEOUT = 1u << 2,
  F_STATUS = 1u << 3, /* Status, Detail Length, Detail */
  F_LAST = 1u << 4,
  F_PAYLOAD = 1u << 5,
  F_STATUS_NONZERO = 1u << 6,
  F_PAIRS = 1u << 7, /* the payload is metadata pairs */
};

static const unsigned layouts[] = {
    [QRPCI_FRAME_REQUEST] = F_MSGID | F_METHOD | F_TIMEOUT | F_PAYLOAD,
    [QRPCI_FRAME_NOTIFY] = F_METHOD | F_PAYLOAD,
    [QRPCI_FRAME_REPLY] = F_MSGID | F_PAYLOAD,
    [QRPCI_FRAME_ERROR] = F_MSGID | F_STATUS | F_STATUS_NONZERO | F_PAYLOAD,
    [QRPCI_FRAME_CANCEL] = F_MSGID,
    [QRPCI_FRAME_ITEM] = F_MSGID | F_PAYLOAD,
    [QRPCI_FRAME_END] = F_MSGID | F_STATUS | F_PAYLOAD,
    [QRPCI_FRAME_GOAWAY] = F_LAST,
    [QRPCI_FRAME_HEADERS] = F_MSGID | F_PAYLOAD | F_PAIRS,
    [QRPCI_FRAME_TRAILERS] = F_MSGID | F_PAYLOAD | F_PAIRS,
};

#define N_TYPES (sizeof(layouts) / sizeof(layouts[0]))

/* Zero for a value that is not a frame type. */
static unsigned layout_of(uint8_t type) {
  return type < N_TYPES ? layouts[type] : 0;
}

static const char *const type_names[N_TYPES] = {
    [QRPCI_FRAME_REQUEST] = "REQUEST", [QRPCI_FRAME_NOTIFY] = "NOTIFY",
    [QRPCI_FRAME_REPLY] = "REPLY",     [QRPCI_FRAME_ERROR] = "ERROR",
    [QRPCI_FRAME_CANCEL] = "CANCEL",   [QRPCI_FRAME_ITEM] = "ITEM",
    [QRPCI_FRAME_END] = "END",         [QRPCI_FRAME_GOAWAY] = "GOAWAY",
    [QRPCI_FRAME_HEADERS] = "HEADERS", [QRPCI_FRAME_TRAILERS] = "TRAILERS",
};

const char *qrpci_frame_type_name(uint8_t type) {
  return layout_of(type) ? type_names[type] : "unknown";
}

/* Reason phrases end up in CONNECTION_CLOSE frames and logs, where a peer's
 * developer reads them, so each names the frame and the problem. They are
 * static strings because the caller keeps them past the decoded bytes. */
enum {
  W_MSGID_TRUNC,
  W_MSGID_ZERO,
  W_METHOD_TRUNC,
  W_TIMEOUT_TRUNC,
  W_STATUS_TRUNC,
  W_STATUS_ZERO,
  W_DLEN_TRUNC,
  W_DETAIL_PAST,
  W_DETAIL_UTF8,
  W_LAST_TRUNC,
  W_TRAILING,
  W_KEY_LEN_TRUNC,
  W_KEY_LEN_BAD,
  W_KEY_PAST,
  W_KEY_CHAR,
  W_VALUE_LEN_TRUNC,
  W_VALUE_PAST,
  W_COUNT
};

#define REASONS(name)                                                          \
  {                                                                            \
    [W_MSGID_TRUNC] = name ": truncated MsgId",                                \
    [W_MSGID_ZERO] = name ": MsgId 0",                                         \
    [W_METHOD_TRUNC] = name ": truncated Method",                              \
    [W_TIMEOUT_TRUNC] = name ": truncated Timeout",                            \
    [W_STATUS_TRUNC] = name ": truncated Status",                              \
    [W_STATUS_ZERO] = name ": status 0",                                       \
    [W_DLEN_TRUNC] = name ": truncated Detail Length",                         \
    [W_DETAIL_PAST] = name ": Detail Length runs past frame",                  \
    [W_DETAIL_UTF8] = name ": Detail is not valid UTF-8",                      \
    [W_LAST_TRUNC] = name ": truncated Last MsgId",                            \
    [W_TRAILING] = name ": trailing bytes",                                    \
    [W_KEY_LEN_TRUNC] = name ": truncated Key Length",                         \
    [W_KEY_LEN_BAD] = name ": Key Length 0 or over 255",                       \
    [W_KEY_PAST] = name ": Key runs past frame",                               \
    [W_KEY_CHAR] = name ": key is not lowercase ASCII",                        \
    [W_VALUE_LEN_TRUNC] = name ": truncated Value Length",                     \
    [W_VALUE_PAST] = name ": Value runs past frame",                           \
  }

static const char *const reasons[N_TYPES][W_COUNT] = {
    [QRPCI_FRAME_REQUEST] = REASONS("REQUEST"),
    [QRPCI_FRAME_NOTIFY] = REASONS("NOTIFY"),
    [QRPCI_FRAME_REPLY] = REASONS("REPLY"),
    [QRPCI_FRAME_ERROR] = REASONS("ERROR"),
    [QRPCI_FRAME_CANCEL] = REASONS("CANCEL"),
    [QRPCI_FRAME_ITEM] = REASONS("ITEM"),
    [QRPCI_FRAME_END] = REASONS("END"),
    [QRPCI_FRAME_GOAWAY] = REASONS("GOAWAY"),
    [QRPCI_FRAME_HEADERS] = REASONS("HEADERS"),
    [QRPCI_FRAME_TRAILERS] = REASONS("TRAILERS"),
};

/* Decoder reasons for each qrpci_md_err, in its order. */
static const int md_reasons[] = {
    [QRPCI_MD_KEY_LEN_TRUNC] = W_KEY_LEN_TRUNC,
    [QRPCI_MD_KEY_LEN_BAD] = W_KEY_LEN_BAD,
    [QRPCI_MD_KEY_PAST] = W_KEY_PAST,
    [QRPCI_MD_KEY_CHAR] = W_KEY_CHAR,
    [QRPCI_MD_VALUE_LEN_TRUNC] = W_VALUE_LEN_TRUNC,
    [QRPCI_MD_VALUE_PAST] = W_VALUE_PAST,
};

/* One static phrase per byte value, so an unknown type is named exactly
 * without formatting into shared or caller-owned memory. */
#define UNKNOWN_TYPE(hi, lo) "unknown frame type 0x" #hi #lo
#define UNKNOWN_ROW(hi)                                                        \
  UNKNOWN_TYPE(hi, 0), UNKNOWN_TYPE(hi, 1), UNKNOWN_TYPE(hi, 2),               \
      UNKNOWN_TYPE(hi, 3), UNKNOWN_TYPE(hi, 4), UNKNOWN_TYPE(hi, 5),           \
      UNKNOWN_TYPE(hi, 6), UNKNOWN_TYPE(hi, 7), UNKNOWN_TYPE(hi, 8),           \
      UNKNOWN_TYPE(hi, 9), UNKNOWN_TYPE(hi, a), UNKNOWN_TYPE(hi, b),           \
      UNKNOWN_TYPE(hi, c), UNKNOWN_TYPE(hi, d), UNKNOWN_TYPE(hi, e),           \
      UNKNOWN_TYPE(hi, f)

static const char *const unknown_type[256] = {
    UNKNOWN_ROW(0), UNKNOWN_ROW(1), UNKNOWN_ROW(2), UNKNOWN_ROW(3),
    UNKNOWN_ROW(4), UNKNOWN_ROW(5), UNKNOWN_ROW(6), UNKNOWN_ROW(7),
    UNKNOWN_ROW(8), UNKNOWN_ROW(9), UNKNOWN_ROW(a), UNKNOWN_ROW(b),
    UNKNOWN_ROW(c), UNKNOWN_ROW(d), UNKNOWN_ROW(e), UNKNOWN_ROW(f),
};

/* ---- decoding ---------------------------------------------------------- */

typedef struct cursor {
  const uint8_t *p;
  const uint8_t *end;
} cursor;

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

/* Returns 0 if the input ends inside the varint. */
static int take(cursor *c, uint64_t *v) {
  size_t n = qrpci_varint_get(c->p, left(c), v);
  c->p += n;
  return n != 0;
}

static int fail(const char **why, const char *reason) {
  if (why) *why = reason;
  return QRPC_EPROTO;
}

/* Status, Detail Length and Detail of ERROR and END. */
static int take_status(cursor *c, qrpci_frame *f, unsigned layout,
                       const char *const *r, const char **why) {
  uint64_t dlen;
  if (!take(c, &f->status)) return fail(why, r[W_STATUS_TRUNC]);
  if ((layout & F_STATUS_NONZERO) && f->status == 0)
    return fail(why, r[W_STATUS_ZERO]);
  if (!take(c, &dlen)) return fail(why, r[W_DLEN_TRUNC]);
  if (dlen > left(c)) return fail(why, r[W_DETAIL_PAST]);
  f->detail = c->p;
  f->detail_len = (size_t)dlen;
  c->p += f->detail_len;
  /* The field is declared UTF-8; passing anything else up would hand the
   * application bytes it may print or embed as text. */
  if (!qrpci_utf8_valid(f->detail, f->detail_len))
    return fail(why, r[W_DETAIL_UTF8]);
  return 0;
}

int qrpci_frame_decode(const uint8_t *body, size_t len, qrpci_frame *f,
                       const char **why) {
  memset(f, 0, sizeof(*f));
  if (len == 0) return fail(why, "frame with Length 0");
  f->type = body[0];
  unsigned layout = layout_of(f->type);
  if (layout == 0) return fail(why, unknown_type[f->type]);
  const char *const *r = reasons[f->type];
  cursor c = {body + 1, body + len};

  if (layout & F_MSGID) {
    if (!take(&c, &f->msgid)) return fail(why, r[W_MSGID_TRUNC]);
    if (f->msgid == 0) return fail(why, r[W_MSGID_ZERO]);
  }
  if ((layout & F_METHOD) && !take(&c, &f->method))
    return fail(why, r[W_METHOD_TRUNC]);
  if ((layout & F_TIMEOUT) && !take(&c, &f->timeout_ms))
    return fail(why, r[W_TIMEOUT_TRUNC]);
  if (layout & F_STATUS) {
    int rc = take_status(&c, f, layout, r, why);
    if (rc != 0) return rc;
  }
  if ((layout & F_LAST) && !take(&c, &f->last_msgid))
    return fail(why, r[W_LAST_TRUNC]);

  if (layout & F_PAYLOAD) {
    f->payload = c.p;
    f->payload_len = left(&c);
    if (layout & F_PAIRS) {
      qrpci_md_err e = qrpci_md_check(f->payload, f->payload_len, NULL, NULL);
      if (e != QRPCI_MD_OK) return fail(why, r[md_reasons[e]]);
    }
  } else if (left(&c) != 0) {
    return fail(why, r[W_TRAILING]);
  }
  return 0;
}

/* ---- encoding ---------------------------------------------------------- */

/* Adds the encoded size of v to *n; returns 0 if v does not fit a varint. */
static int add(size_t *n, uint64_t v) {
  if (v > QRPCI_VARINT_MAX) return 0;
  *n += qrpci_varint_len(v);
  return 1;
}

/* Bytes of Type and fields, Detail included but not the payload, or 0 if f
 * breaks a rule the decoder enforces. */
static size_t fields_len(const qrpci_frame *f) {
  unsigned layout = layout_of(f->type);
  size_t n = 1;
  if (layout == 0) return 0;
  if (!(layout & F_PAYLOAD) && f->payload_len != 0) return 0;
  if ((layout & F_MSGID) && (f->msgid == 0 || !add(&n, f->msgid))) return 0;
  if ((layout & F_METHOD) && !add(&n, f->method)) return 0;
  if ((layout & F_TIMEOUT) && !add(&n, f->timeout_ms)) return 0;
  if ((layout & F_LAST) && !add(&n, f->last_msgid)) return 0;
  if (layout & F_STATUS) {
    if ((layout & F_STATUS_NONZERO) && f->status == 0) return 0;
    if (!add(&n, f->status) || !add(&n, f->detail_len)) return 0;
    if (f->detail_len != 0 && f->detail == NULL) return 0;
    if (!qrpci_utf8_valid(f->detail, f->detail_len)) return 0;
    if (f->detail_len > SIZE_MAX - n) return 0;
    n += f->detail_len;
  }
  return n;
}

/* Size of Length, Type and fields; sets *body to the value of Length.
 * Returns 0 if the frame cannot be sent or its size overflows. */
static size_t header_size(const qrpci_frame *f, uint64_t *body) {
  size_t fl = fields_len(f);
  if (fl == 0 || fl > QRPCI_VARINT_MAX ||
      f->payload_len > QRPCI_VARINT_MAX - fl)
    return 0;
  *body = (uint64_t)fl + f->payload_len;
  size_t h = qrpci_varint_len(*body) + fl;
  if (f->payload_len > SIZE_MAX - h) return 0;
  return h;
}

/* Writes Length, Type and fields; out has room for header_size() bytes. */
static size_t put_header(uint8_t *out, const qrpci_frame *f, uint64_t body) {
  unsigned layout = layout_of(f->type);
  size_t o = qrpci_varint_put(out, body);
  out[o++] = f->type;
  if (layout & F_MSGID) o += qrpci_varint_put(out + o, f->msgid);
  if (layout & F_METHOD) o += qrpci_varint_put(out + o, f->method);
  if (layout & F_TIMEOUT) o += qrpci_varint_put(out + o, f->timeout_ms);
  if (layout & F_STATUS) {
    o += qrpci_varint_put(out + o, f->status);
    o += qrpci_varint_put(out + o, f->detail_len);
    if (f->detail_len != 0) memcpy(out + o, f->detail, f->detail_len);
    o += f->detail_len;
  }
  if (layout & F_LAST) o += qrpci_varint_put(out + o, f->last_msgid);
  return o;
}

/* Size of the whole frame, or 0 if it cannot be sent; *h and *body as for
 * header_size(). */
static size_t frame_size(const qrpci_frame *f, size_t *h, uint64_t *body) {
  *h = header_size(f, body);
  if (*h == 0 || (f->payload_len != 0 && f->payload == NULL)) return 0;
  if ((layout_of(f->type) & F_PAIRS) &&
      qrpci_md_check(f->payload, f->payload_len, NULL, NULL) != QRPCI_MD_OK)
    return 0;
  return *h + f->payload_len;
}

size_t qrpci_frame_encoded_len(const qrpci_frame *f) {
  size_t h;
  uint64_t body;
  return frame_size(f, &h, &body);
}

size_t qrpci_frame_encode(uint8_t *out, size_t cap, const qrpci_frame *f) {
  size_t h;
  uint64_t body;
  size_t total = frame_size(f, &h, &body);
  if (total == 0 || cap < total) return 0;
  put_header(out, f, body);
  if (f->payload_len != 0) memcpy(out + h, f->payload, f->payload_len);
  return total;
}

/* The header path shares the full encoder's checks by describing its frame
 * in a qrpci_frame with the payload left out. Returns 0 for a type whose
 * header is not plain varints before the payload. */
static int header_frame(qrpci_frame *f, uint8_t type, uint64_t msgid,
                        uint64_t method, uint64_t timeout_ms,
                        size_t payload_len) {
  unsigned layout = layout_of(type);
  if (!(layout & F_PAYLOAD) || (layout & (F_STATUS | F_PAIRS))) return 0;
  memset(f, 0, sizeof(*f));
  f->type = type;
  f->msgid = msgid;
  f->method = method;
  f->timeout_ms = timeout_ms;
  f->payload_len = payload_len;
  return 1;
}

size_t qrpci_frame_header_len(uint8_t type, uint64_t msgid, uint64_t method,
                              uint64_t timeout_ms, size_t payload_len) {
  qrpci_frame f;
  uint64_t body;
  if (!header_frame(&f, type, msgid, method, timeout_ms, payload_len)) return 0;
  return header_size(&f, &body);
}

size_t qrpci_frame_encode_header(uint8_t *out, size_t cap, uint8_t type,
                                 uint64_t msgid, uint64_t method,
                                 uint64_t timeout_ms, size_t payload_len) {
  qrpci_frame f;
  uint64_t body;
  if (!header_frame(&f, type, msgid, method, timeout_ms, payload_len)) return 0;
  size_t h = header_size(&f, &body);
  if (h == 0 || cap < h) return 0;
  return put_header(out, &f, body);
}
