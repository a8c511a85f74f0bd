#include "util/varint.h"

size_t qrpci_varint_len(uint64_t v) {
  if (v < 64) return 1;
  if (v < 16384) return 2;
  if (v < 1073741824) return 4;
  return 8;
}

size_t qrpci_varint_put(uint8_t *out, uint64_t v) {
  size_t n = qrpci_varint_len(v);
  static const uint8_t prefix[9] = {0, 0x00, 0x40, 0, 0x80, 0, 0, 0, 0xc0};
  for (size_t i = n; i > 0; i--) {
    out[i - 1] = (uint8_t)v;
    v >>= 8;
  }
  out[0] |= prefix[n];
  return n;
}

size_t qrpci_varint_get(const uint8_t *p, size_t len, uint64_t *v) {
  if (len == 0) return 0;
  size_t n = (size_t)1 << (p[0] >> 6);
  if (len < n) return 0;
  uint64_t x = p[0] & 0x3f;
  for (size_t i = 1; i < n; i++) x = (x << 8) | p[i];
  *v = x;
  return n;
}
