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

int qrpci_pb_field_bytes(const uint8_t *msg, size_t len, uint32_t field,
                         const uint8_t **val, size_t *val_len) {
  static const uint8_t empty[1];
  const uint8_t *found = empty;
  size_t found_len = 0;
  size_t i = 0;
  while (i < len) {
    uint64_t key;
    size_t k = qrpci_pb_varint(msg + i, len - i, &key);
    size_t body = 0;
    size_t n =
        k ? value_size((unsigned)(key & 7), msg + i + k, len - i - k, &body)
          : 0;
    if (!n) return QRPC_EINVAL;
    if (key >> 3 == field) {
      if ((key & 7) != QRPCI_PB_LEN) return QRPC_EINVAL;
      found = msg + i + k + body;
      found_len = n - body;
    }
    i += k + n;
  }
  *val = found;
  *val_len = found_len;
  return 0;
}
