#include "util/pbwire.h"

#include "qrpc/error.h"

size_t qrpci_pb_varint(const uint8_t *p, size_t n, uint64_t *v) {
  uint64_t x = 0;
  for (size_t i = 0; i < n && i < QRPCI_PB_VARINT_MAXLEN; i++) {
    x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (!(p[i] & 0x80)) {
      *v = x;
      return i + 1;
    }
  }
  return 0;
}

/* The bytes of the value of a field with wire type wt at p[0..n), its
 * length prefix included; *body is where a length-delimited value's bytes
 * start. 0 when the value is cut short or wt is not read here. */
static size_t value_size(unsigned wt, const uint8_t *p, size_t n,
                         size_t *body) {
  uint64_t v;
  size_t k;
  switch (wt) {
  case QRPCI_PB_VARINT: return qrpci_pb_varint(p, n, &v);
  case QRPCI_PB_I64: return n >= 8 ? 8 : 0;
  case QRPCI_PB_I32: return n >= 4 ? 4 : 0;
  case QRPCI_PB_LEN:
    if (!(k = qrpci_pb_varint(p, n, &v)) || v > n - k) return 0;
    *body = k;
    return k + (size_t)v;
  default: return 0;
  }
}

/* Walks msg[0..len) and finds the last field number field: *wt is its
 * wire type, *val_at where its value starts, *body where a
 * length-delimited value's bytes start past its length prefix, *size the
 * value's size, prefix included. Returns 1 when found, 0 when not, -1 when
 * msg cannot be walked. */
static int find_field(const uint8_t *msg, size_t len, uint32_t field,
                      uint64_t *wt, size_t *val_at, size_t *body,
                      size_t *size) {
  int found = 0;
  size_t i = 0;
  while (i < len) {
    uint64_t key;
    size_t k = qrpci_pb_varint(msg + i, len - i, &key);
    size_t b = 0;
    size_t n =
        k ? value_size((unsigned)(key & 7), msg + i + k, len - i - k, &b) : 0;
    if (!n) return -1;
    if (key >> 3 == field) {
      found = 1;
      *wt = key & 7;
      *val_at = i + k;
      *body = b;
      *size = n;
    }
    i += k + n;
  }
  return found;
}

size_t qrpci_pb_field_next(const uint8_t *p, size_t n, uint32_t *field,
                           unsigned *wt, size_t *body) {
  uint64_t key;
  size_t b = 0;
  size_t k = qrpci_pb_varint(p, n, &key);
  if (!k || key >> 3 == 0 || key >> 3 > 0x1fffffff) return 0;
  size_t v = value_size((unsigned)(key & 7), p + k, n - k, &b);
  if (!v) return 0;
  *field = (uint32_t)(key >> 3);
  *wt = (unsigned)(key & 7);
  *body = k + b;
  return k + v;
}

int qrpci_pb_field_bytes(const uint8_t *msg, size_t len, uint32_t field,
                         const uint8_t **val, size_t *val_len) {
  static const uint8_t empty[1];
  uint64_t wt = 0;
  size_t at = 0, body = 0, size = 0;
  int f = find_field(msg, len, field, &wt, &at, &body, &size);
  if (f < 0 || (f && wt != QRPCI_PB_LEN)) return QRPC_EINVAL;
  *val = f ? msg + at + body : empty;
  *val_len = f ? size - body : 0;
  return 0;
}

int qrpci_pb_field_varint(const uint8_t *msg, size_t len, uint32_t field,
                          uint64_t *val) {
  uint64_t wt = 0;
  size_t at = 0, body = 0, size = 0;
  int f = find_field(msg, len, field, &wt, &at, &body, &size);
  if (f < 0 || (f && wt != QRPCI_PB_VARINT)) return QRPC_EINVAL;
  if (!f) {
    *val = 0;
    return 0;
  }
  qrpci_pb_varint(msg + at, size, val);
  return 0;
}
