#include "wire/reassembler.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"

/* A buffer up to this size is kept between split frames: frames a little
 * larger than a packet arrive split all the time, and reallocating for each
 * would put a malloc on the hot path. A larger one serves the frames that
 * follow while they keep coming, and goes back to the heap once the owner
 * finds the stream between frames (qrpci_reasm_trim()), so one big message
 * does not pin memory for the life of the stream. */
#define QRPCI_REASM_KEEP 16384

/* First allocation for a split frame; growth doubles from here. */
#define QRPCI_REASM_MIN_ALLOC 1024

void qrpci_reasm_init(qrpci_reasm *r, size_t max_frame) {
  memset(r, 0, sizeof(*r));
  r->max_frame = max_frame;
}

void qrpci_reasm_free(qrpci_reasm *r) {
  free(r->buf);
  r->buf = NULL;
  r->buf_cap = 0;
}

size_t qrpci_reasm_buffered(const qrpci_reasm *r) { return r->buf_cap; }

uint8_t *qrpci_reasm_take(qrpci_reasm *r, const uint8_t *body) {
  if (!r->buf || body != r->buf) return NULL;
  uint8_t *p = r->buf;
  r->buf = NULL;
  r->buf_cap = 0;
  return p;
}

void qrpci_reasm_trim(qrpci_reasm *r) {
  if (r->buf_cap > QRPCI_REASM_KEEP && !qrpci_reasm_in_frame(r))
    qrpci_reasm_free(r);
}

size_t qrpci_reasm_missing(const qrpci_reasm *r) {
  return r->body_len ? r->body_len - r->body_have : 0;
}

int qrpci_reasm_in_frame(const qrpci_reasm *r) {
  return r->len_have != 0 || r->body_len != 0;
}

int qrpci_reasm_finish(const qrpci_reasm *r) {
  if (r->err != 0) return r->err;
  if (qrpci_reasm_in_frame(r)) return QRPC_EPROTO;
  return 0;
}

static int refuse(const char **why, const char *reason, int err) {
  if (why) *why = reason;
  return err;
}

/* Checks a complete Length and starts reading the body it announces. */
static int start_frame(qrpci_reasm *r, uint64_t length, const char **why) {
  if (length == 0) return refuse(why, "frame with Length 0", QRPC_EPROTO);
  if (length > r->max_frame)
    return refuse(why, "frame Length over the receiver's limit", QRPC_EMSGSIZE);
  r->body_len = (size_t)length;
  r->body_have = 0;
  return 0;
}

/* Collects the Length varint, which may itself arrive split, one byte at a
 * time (it is at most 8 bytes). Sets *used to the bytes consumed. */
static int read_length(qrpci_reasm *r, const uint8_t *p, size_t n, size_t *used,
                       const char **why) {
  uint64_t length;
  size_t i = 0;
  while (i < n) {
    r->len_bytes[r->len_have++] = p[i++];
    if (qrpci_varint_get(r->len_bytes, r->len_have, &length) != 0) {
      r->len_have = 0;
      *used = i;
      return start_frame(r, length, why);
    }
  }
  *used = i;
  return 0;
}

/* Makes room for need body bytes. Growth follows the bytes that actually
 * arrived, so announcing a large Length alone costs the sender nothing on
 * this side; the cap is the frame's own size. */
static int reserve(qrpci_reasm *r, size_t need) {
  if (need <= r->buf_cap) return 0;
  size_t cap = r->buf_cap ? r->buf_cap : QRPCI_REASM_MIN_ALLOC;
  while (cap < need && cap <= r->body_len / 2) cap *= 2;
  if (cap < need) cap = need;
  if (cap > r->body_len) cap = r->body_len;
  uint8_t *nb = realloc(r->buf, cap);
  if (nb == NULL) return QRPC_ENOMEM;
  r->buf = nb;
  r->buf_cap = cap;
  return 0;
}

/* Delivers the body if p holds all of it; otherwise copies what p holds.
 * Sets *used to the bytes consumed. */
static int read_body(qrpci_reasm *r, const uint8_t *p, size_t n, size_t *used,
                     qrpci_reasm_cb cb, void *ctx) {
  size_t want = r->body_len - r->body_have;
  if (r->body_have == 0 && n >= want) {
    *used = want;
    r->body_len = 0;
    return cb(ctx, p, want);
  }
  size_t take = n < want ? n : want;
  int rc = reserve(r, r->body_have + take);
  if (rc != 0) return rc;
  memcpy(r->buf + r->body_have, p, take);
  r->body_have += take;
  *used = take;
  if (r->body_have < r->body_len) return 0;

  size_t len = r->body_len;
  r->body_len = 0;
  r->body_have = 0;
  return cb(ctx, r->buf, len);
}

int qrpci_reasm_feed(qrpci_reasm *r, const uint8_t *data, size_t len,
                     qrpci_reasm_cb cb, void *ctx, const char **why) {
  size_t off = 0;
  while (r->err == 0 && off < len) {
    size_t used = 0;
    if (r->body_len == 0)
      r->err = read_length(r, data + off, len - off, &used, why);
    else
      r->err = read_body(r, data + off, len - off, &used, cb, ctx);
    off += used;
  }
  return r->err;
}
